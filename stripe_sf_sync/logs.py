"""Where output goes: results to stdout, logs and progress to stderr (plain or JSON off a TTY).

Levels: info shows one line per batch, every retry (a warning) and the run's summary; debug (`-v`) adds one
line per API call (method, path, status, duration: never a body, a query string or a secret); quiet shows
warnings and errors only. With the json format every line on stderr is one JSON object carrying the run id
and the record's structured fields (`fields(...)`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TextIO

PACKAGE = "stripe_sf_sync"
_SECRET_ENV = ("STRIPE_API_KEY", "SF_ACCESS_TOKEN", "SF_CONSUMER_SECRET", "SF_PASSWORD", "SF_SECURITY_TOKEN")
_STRIPE_SECRET = re.compile(r"^(sk|rk)_(live|test)_|^whsec_")
# Third-party loggers that log request URLs (urllib3: the SOQL in a query string) or bodies (the Stripe SDK at
# debug, stripe/_api_requestor.py "API response body"): kept at warning whatever the level asked for.
_THIRD_PARTY = ("simple_salesforce", "urllib3", "stripe", "requests", "tenacity")
# LogRecord attributes a record's structured fields may not replace in the JSON object.
_BASE_KEYS = frozenset({"ts", "level", "logger", "message", "run_id", "account", "traceback"})


class LogFormat(StrEnum):
    """How log lines are written on stderr."""

    AUTO = "auto"  # pretty on a terminal, plain otherwise
    PLAIN = "plain"
    JSON = "json"


@dataclass(frozen=True)
class LogSettings:
    """What `setup_logging` chose for this command: the CLI reads it to keep stdout and stderr consistent."""

    format: str  # "rich", "plain" or "json" (auto resolved)
    debug: bool = False
    quiet: bool = False

    @property
    def json(self) -> bool:
        """Every line on stderr is a JSON object: nothing may be printed there except through the logger."""
        return self.format == "json"


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call: structured fields the JSON format writes as keys next to the message."""
    return {"fields": values}


# The run (its id in the state) and the pipeline (a Stripe account; None for the single `default` one) of the
# code logging, per thread: `sync --all` runs several pipelines at once, each on its own thread.
_RUN: contextvars.ContextVar[tuple[int | None, str | None] | None] = contextvars.ContextVar("stripe_sf_run",
                                                                                          default=None)


class RunContext(logging.Filter):
    """Stamps every record with the run it belongs to (its id in the state file), once the run is recorded, and
    the pipeline's Stripe account when the config names several (`account`; plain lines start `[acct_…]`)."""

    def __init__(self) -> None:
        super().__init__()
        self.run_id: int | None = None  # the process's last bound run: lines logged after the run name it too
        self.account: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _RUN.get()
        run_id, account = bound if bound is not None else (self.run_id, self.account)
        record.run_id, record.account = run_id, account
        record.account_tag = f"[{account}] " if account else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers reading cron output: the message, the run id and the
    record's structured fields as keys (`jq 'select(.kind == "batch")'`), every value redacted."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self.secrets = [s for s in (secrets or []) if s and len(s) >= 6]

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
                               "level": record.levelname.lower(), "logger": record.name,
                               "message": record.getMessage(), "run_id": getattr(record, "run_id", None)}
        account = getattr(record, "account", None)
        if account:
            out["account"] = account
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update({k: v for k, v in extra.items() if k not in _BASE_KEYS and v is not None})
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(self._redacted(out), ensure_ascii=False, default=str)

    def _redacted(self, value: Any) -> Any:
        if isinstance(value, str):
            for s in self.secrets:
                value = value.replace(s, "***")
            return value
        if isinstance(value, dict):
            return {k: self._redacted(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._redacted(v) for v in value]
        return value


class RedactingFilter(logging.Filter):
    """Last line of defence: blank out any secret value that reaches a log record."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            msg = record.getMessage()
            if any(s in msg for s in self.secrets):
                for s in self.secrets:
                    msg = msg.replace(s, "***")
                record.msg, record.args = msg, None
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (as logging's last-resort handler does), so a handler
    left installed never writes to a stream that was swapped out and closed."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:
        return sys.stderr


class _Settings(logging.Filter):
    """Carries the LogSettings on the handler that `setup_logging` installed (it filters nothing)."""

    def __init__(self, settings: LogSettings) -> None:
        super().__init__()
        self.settings = settings


def _handler(kind: str, stream: TextIO | None, secrets: list[str], run: RunContext,
             settings: LogSettings) -> logging.Handler:
    handler: logging.Handler
    if kind == "json":
        handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
        handler.setFormatter(JsonFormatter(secrets))
    elif kind == "rich":
        from rich.console import Console  # here: TAB completion starts without rich
        from rich.logging import RichHandler

        console = Console(file=stream) if stream is not None else Console(stderr=True)
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(account_tag)s%(message)s"))
    else:
        handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(account_tag)s%(message)s",
                                               "%Y-%m-%dT%H:%M:%S"))
    handler.addFilter(RedactingFilter(secrets))
    handler.addFilter(run)
    handler.addFilter(_Settings(settings))
    return handler


def setup_logging(fmt: str = "auto", *, debug: bool = False, quiet: bool = False, stream: TextIO | None = None,
                  env: dict[str, str] | None = None) -> LogSettings:
    """Configure logging once per command: the package's records at the chosen level, and the warnings of the
    libraries below it in the same format (so that a JSON log holds JSON lines only)."""
    target = stream if stream is not None else sys.stderr
    tty = hasattr(target, "isatty") and target.isatty()
    kind = "json" if fmt == "json" else ("rich" if fmt == "auto" and tty else "plain")
    settings = LogSettings(kind, debug=debug, quiet=quiet)
    env = env if env is not None else dict(os.environ)
    # Each pipeline's Stripe key sits in the variable its `api_key_env` names (issue 26): every value shaped like
    # a Stripe key or webhook secret is redacted, whatever its variable.
    secrets = [env.get(k, "") for k in _SECRET_ENV] + [v for v in env.values() if _STRIPE_SECRET.match(v)]
    run = RunContext()
    _RUN.set(None)  # a new command (tests run several in one thread): no run bound yet
    package = logging.getLogger(PACKAGE)
    root = logging.getLogger()
    for h in list(package.handlers):  # an earlier set-up of this process (tests call it again)
        package.removeHandler(h)
    for h in list(root.handlers):  # only ours: the root logger may carry other handlers (pytest's)
        if any(isinstance(f, _Settings) for f in h.filters):
            root.removeHandler(h)
    package.addHandler(_handler(kind, stream, secrets, run, settings))
    package.setLevel(logging.WARNING if quiet else logging.DEBUG if debug else logging.INFO)
    package.propagate = False
    # The libraries' own warnings (urllib3's full connection pool, say) in the same format; never their debug
    # lines, which carry request URLs and bodies.
    for name in _THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    library = _handler(kind, stream, secrets, run, settings)
    library.setLevel(logging.WARNING)
    root.addHandler(library)
    if kind == "json":
        logging.captureWarnings(True)  # Python warnings, too, as JSON lines
    if env.get("STRIPE_LOG"):
        # The Stripe SDK prints request and response bodies to stderr itself when STRIPE_LOG is set
        # (stripe/_util.py log_debug), bypassing logging.
        package.warning(
            "STRIPE_LOG is set: the Stripe SDK then prints request and response bodies (customer data) to "
            "stderr by itself. Unset it; use -v for stripe-sf's own call lines.")
    return settings


def active_settings() -> LogSettings:
    """The settings of the installed set-up (plain, info level, when there is none)."""
    for h in logging.getLogger(PACKAGE).handlers:
        for f in h.filters:
            if isinstance(f, _Settings):
                return f.settings
    return LogSettings("plain")


def bind_run(run_id: int | None, account: str | None = None) -> None:
    """From now on, every log line of this thread carries `run_id` and the pipeline's `account` (and, for the
    errors printed after the run, every line of the command)."""
    _RUN.set((run_id, account))
    for logger in (logging.getLogger(PACKAGE), logging.getLogger()):
        for h in logger.handlers:
            for f in h.filters:
                if isinstance(f, RunContext):
                    f.run_id, f.account = run_id, account
