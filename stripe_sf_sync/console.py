"""Where output goes: results to stdout, logs and progress to stderr (plain or JSON off a TTY)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.logging import RichHandler

_SECRET_ENV = ("STRIPE_API_KEY", "SF_ACCESS_TOKEN", "SF_CONSUMER_SECRET", "SF_PASSWORD", "SF_SECURITY_TOKEN")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers reading cron output."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
                               "level": record.levelname.lower(), "logger": record.name,
                               "message": record.getMessage()}
        return json.dumps(out, ensure_ascii=False)


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


def setup_logging(fmt: str = "auto", *, debug: bool = False, stream: TextIO | None = None,
                  env: dict[str, str] | None = None) -> None:
    """Configure the package logger once per command."""
    stream = stream or sys.stderr
    logger = logging.getLogger("stripe_sf_sync")
    for h in list(logger.handlers):
        logger.removeHandler(h)
    tty = hasattr(stream, "isatty") and stream.isatty()
    handler: logging.Handler
    if fmt == "json":
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    elif fmt == "auto" and tty:
        handler = RichHandler(console=Console(file=stream), show_path=False, rich_tracebacks=False)
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    env = env if env is not None else dict(__import__("os").environ)
    handler.addFilter(RedactingFilter([env.get(k, "") for k in _SECRET_ENV]))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    # simple-salesforce and urllib3 log request URLs at debug; they never need to reach cron mail.
    for noisy in ("simple_salesforce", "urllib3", "stripe"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
