"""Error classes, classified by what the caller does next, and the CLI's exit codes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes. Documented in docs/exit-codes.md; cron wrappers branch on them."""

    OK = 0  # finished, nothing newly dead-lettered
    FAILURE = 1  # unexpected internal error (a bug: please report it with --debug output)
    CONFIG = 2  # usage or configuration error, missing secret
    DEAD_LETTERS = 3  # finished, but some events were dead-lettered in this run
    LOCKED = 4  # another run holds the lock
    UNAVAILABLE = 5  # Stripe or Salesforce unreachable or refusing after retries (auth, daily limit)
    CURSOR_EXPIRED = 6  # the stored cursor is older than Stripe's 30-day event retention
    STATE = 7  # the state file or its directory cannot be used: not writable, corrupt, locked, newer version
    UNHEALTHY = 8  # `status --check`: the sync is not healthy (each problem is printed)
    DRIFT = 9  # `reconcile`: Salesforce disagrees with Stripe (each finding is printed)
    INTERRUPTED = 130  # Ctrl-C / SIGINT, as shells expect
    TERMINATED = 143  # SIGTERM (cron's `timeout`, systemd, Kubernetes): 128 + 15, as shells report it


class StripeSfError(Exception):
    """Base of every error the CLI turns into one paragraph and an exit code."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class ConfigError(StripeSfError):
    """The config file or the environment is wrong. Lists every problem at once."""

    exit_code = ExitCode.CONFIG

    def __init__(self, problems: list[str], *, source: str = "configuration", hint: str = "") -> None:
        self.problems = problems
        self.source = source  # "invocation": a mistake in the command line, not a failed run
        joined = "; ".join(problems)
        super().__init__(f"Invalid {source}: {joined}.", hint=hint)


class LockHeldError(StripeSfError):
    """Another stripe-sf run holds the state lock."""

    exit_code = ExitCode.LOCKED


class CursorExpiredError(StripeSfError):
    """The cursor points past Stripe's 30-day event retention."""

    exit_code = ExitCode.CURSOR_EXPIRED


class StateError(StripeSfError):
    """The state store (the SQLite file, or the PostgreSQL database) cannot be used."""

    exit_code = ExitCode.STATE


class NoStateError(StateError):
    """A command that only reads found no state store yet (`status` reports "never run")."""


class StateUnavailableError(StateError):
    """The PostgreSQL state server cannot be reached, or the connection was lost again after one reconnect.
    Nothing of the batch at hand is committed, so the next run repeats it idempotently."""

    exit_code = ExitCode.UNAVAILABLE


@contextlib.contextmanager
def missing_extra(needs: str, extra: str, then: str) -> Iterator[None]:
    """Imports of an optional part: a missing extra is a usage error that says how to install it. `needs` names
    what needs it ("`stripe-sf serve`"), `then` what to do once installed."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("stripe_sf_sync"):
            raise
        raise ConfigError([f"{needs} needs the {extra} extra, and {exc.name} is not installed"],
                          source="installation",
                          hint=f"Install it with `pip install 'stripe-sf-sync[{extra}]'` (from a clone: "
                               f"`pip install -e '.[{extra}]'`), then {then}.") from None


class FatalSyncError(StripeSfError):
    """Stop the run: auth failure, daily API limit, service down after retries.

    Nothing of the current batch is committed, so the next run repeats it idempotently.
    """

    exit_code = ExitCode.UNAVAILABLE

    def __init__(self, message: str, *, hint: str = "", code: str | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.request_id = request_id


class StripeRefusedError(FatalSyncError):
    """Stripe refused a request as invalid (HTTP 400, `invalid_request_error`): trying again sends the same
    request, so the run stops with the usage code and says which request and why."""

    exit_code = ExitCode.CONFIG

    def __init__(self, message: str, *, stripe_message: str, hint: str = "", code: str | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message, hint=hint, code=code, request_id=request_id)
        self.stripe_message = stripe_message  # Stripe's own words, for a caller that words its own message


class BudgetSpent(FatalSyncError):
    """The org's daily API usage reached salesforce.api_budget: nothing more is written in this run. The run
    stops before the batch at hand commits anything, so the next run repeats it."""


class RetriableError(Exception):
    """A transient failure worth retrying with backoff (429, 5xx, UNABLE_TO_LOCK_ROW)."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class SkippableError(Exception):
    """This one event cannot be applied: it goes to the dead-letter queue with this reason."""

    def __init__(self, reason: str, *, code: str = "UNAPPLICABLE") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


TLS_HINT = ("If a proxy inspects TLS on this network, export REQUESTS_CA_BUNDLE=/path/to/bundle.pem (a PEM bundle "
            "with its CA; both edges read it), or fix the system's clock or CA certificates. TLS verification is "
            "never switched off. Nothing was lost.")


def certificate_problem(exc: BaseException) -> str | None:
    """What is wrong with the server's certificate, when `exc` (or what it wraps: requests and urllib3 wrap
    `ssl.SSLCertVerificationError` in their own errors) is a failed certificate check; else None.

    Such a failure does not clear by itself, so it is never retried, unlike a dropped TLS connection."""
    import ssl  # here: a command that never connects starts without it

    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return e.verify_message or str(e)
        todo.extend(x for x in (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
                    if isinstance(x, BaseException))
    text = str(exc)
    return "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in text else None


def tls_error(service: str, what: str, problem: str) -> FatalSyncError:
    """Stop the run: `service`'s TLS certificate is not trusted here (no request reached it)."""
    return FatalSyncError(f"Cannot verify {service}'s TLS certificate while {what}: {problem}.", hint=TLS_HINT,
                          code="TLS_CERTIFICATE")
