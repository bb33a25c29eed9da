"""Error classes, classified by what the caller does next, and the CLI's exit codes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from urllib.parse import urlsplit


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
    IDENTITY = 10  # another Salesforce org or Stripe account than the state's, or a live/test mode mismatch
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


class IdentityError(StripeSfError):
    """The run would cross orgs, accounts or modes: stopped before any write (identity.py)."""

    exit_code = ExitCode.IDENTITY


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
def missing_part(needs: str, part: str, install: str, then: str) -> Iterator[None]:
    """Imports of an optional part: a missing one is a usage error that says how to install it. `needs` names
    what needs it ("`stripe-sf serve`"), `part` the part, `install` how to install it, `then` what to do next."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("stripe_sf_sync"):
            raise
        missing = (exc.name or "a module").partition(".")[0]  # the distribution's package, not a submodule
        raise ConfigError([f"{needs} needs {part}, and {missing} is not installed"], source="installation",
                          hint=f"Install it with {install}, then {then}.") from None


def missing_extra(needs: str, extra: str, then: str) -> contextlib.AbstractContextManager[None]:
    """Imports of an optional extra of this distribution."""
    return missing_part(needs, f"the {extra} extra",
                        f"`pip install 'stripe-sf-sync[{extra}]'` (from a clone: `pip install -e '.[{extra}]'`)", then)


def missing_sandbox(needs: str, then: str) -> contextlib.AbstractContextManager[None]:
    """Imports of the stand-ins, a distribution of their own (`sandbox/` in the repository) that the tool's
    wheel does not ship."""
    return missing_part(needs, "the stand-ins (the stripe-sf-sandbox distribution)",
                        "`pip install -e ./sandbox` from a clone of the stripe-sf repository", then)


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


@dataclass(frozen=True)
class ConnectionProblem:
    """Why a request got no HTTP answer: `kind` is dns, refused, tls, connect_timeout, timeout or connection;
    `host` is host:port as asked for (None when no layer said)."""

    kind: str
    host: str | None
    detail: str = ""

    @property
    def code(self) -> str:
        """The error code a message and a log line carry."""
        return _PROBLEM_CODES[self.kind]

    def describe(self, timeout: float | None = None) -> str:
        """The cause in words, with the host: "cannot resolve api.stripe.com (DNS lookup failed)"."""
        host = self.host or "the server"
        within = f" within {timeout:g} s" if timeout else ""
        return {
            "dns": f"cannot resolve {host} (DNS lookup failed)",
            "refused": f"{host} refused the connection (nothing listens on that port, or a firewall rejects it)",
            "tls": f"the TLS handshake with {host} failed ({self.detail or 'not TLS on that port?'})",
            "connect_timeout": f"connecting to {host} timed out{within} (no reply to the connection request)",
            "timeout": f"{host} accepted the connection but did not answer{within}",
            "connection": f"the connection to {host} failed ({self.detail or 'closed or reset'})",
        }[self.kind]

    def advice(self, address_setting: str, timeout_setting: str) -> str:
        """What to do next, by cause."""
        return {
            "dns": f"Check the address ({address_setting}) and this machine's DNS resolver (/etc/resolv.conf).",
            "refused": f"Check the address ({address_setting}), and any proxy (HTTPS_PROXY) or firewall on the way.",
            "tls": "Check that the address speaks HTTPS on that port (a plain-HTTP server fails so), and any proxy "
                   "that intercepts TLS (then export REQUESTS_CA_BUNDLE).",
            "connect_timeout": "A firewall may drop the packets: check the network route and any proxy "
                               "(HTTPS_PROXY).",
            "timeout": f"{timeout_setting} bounds each request, its retries included; check the service's status, "
                       "the network and any proxy.",
            "connection": "Check the network and any proxy (HTTPS_PROXY).",
        }[self.kind]


_PROBLEM_CODES = {"dns": "DNS_FAILURE", "refused": "CONNECTION_REFUSED", "tls": "TLS_HANDSHAKE",
                  "connect_timeout": "CONNECT_TIMEOUT", "timeout": "TIMEOUT", "connection": "CONNECTION_ERROR"}


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and everything it wraps (requests wraps urllib3's errors, which wrap the socket's; the Stripe SDK
    raises its APIConnectionError `from` the requests error), each once."""
    seen: dict[int, BaseException] = {}
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen[id(e)] = e
        todo.extend(x for x in (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
                    if isinstance(x, BaseException))
    return list(seen.values())


def _host_of(chain: list[BaseException]) -> str | None:
    for e in chain:
        url = getattr(getattr(e, "request", None), "url", None)  # requests' errors carry the request
        if isinstance(url, str) and url:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            return f"{parts.hostname}:{port}"
        for holder in (getattr(e, "pool", None), getattr(e, "conn", None)):  # urllib3's pool or connection
            if holder is not None and getattr(holder, "host", None):
                return f"{holder.host}:{holder.port}" if getattr(holder, "port", None) else str(holder.host)
    return None


def connection_problem(exc: BaseException) -> ConnectionProblem | None:
    """The cause of a request that got no HTTP answer (from the Stripe SDK, requests or simple-salesforce), or
    None when `exc` is no connection failure. An untrusted certificate is `certificate_problem`'s."""
    import socket  # here: a command that never connects starts without them
    import ssl

    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    host = _host_of(chain)
    if any(isinstance(e, socket.gaierror) for e in chain) or "NameResolutionError" in names:
        return ConnectionProblem("dns", host)
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return ConnectionProblem("refused", host)
    tls = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if tls is not None or "SSLError" in names:
        reason = str(getattr(tls, "reason", None) or (str(tls) if tls is not None else str(exc)))[:120]
        if "eof" in reason.lower() or "violation of protocol" in reason.lower():
            # The connection was closed during or after the handshake: it may go through on another try.
            return ConnectionProblem("connection", host, "the TLS connection was closed")
        return ConnectionProblem("tls", host, reason.lower().replace("_", " "))
    if names & {"ConnectTimeout", "ConnectTimeoutError"}:
        return ConnectionProblem("connect_timeout", host)
    if names & {"ReadTimeout", "ReadTimeoutError", "Timeout"} or any(isinstance(e, TimeoutError) for e in chain):
        return ConnectionProblem("timeout", host)
    if names & {"ConnectionError", "APIConnectionError", "ProtocolError", "RemoteDisconnected"} or any(
            isinstance(e, ConnectionError) for e in chain):
        return ConnectionProblem("connection", host, next((type(e).__name__ for e in chain
                                                            if isinstance(e, ConnectionError | OSError)), ""))
    return None


def unreachable_error(service: str, what: str, problem: ConnectionProblem, *, attempts: int, seconds: float,
                      timeout: float | None, address_setting: str, timeout_setting: str) -> FatalSyncError:
    """Stop the run: `service` could not be reached, with the cause, the host and what to do next. `what` says
    for what ("while listing events", "for a query")."""
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    return FatalSyncError(f"Cannot reach {service} {what}: {problem.describe(timeout)}; gave up after {tries} "
                          f"in {seconds:.1f} s.", code=problem.code,
                          hint=f"{problem.advice(address_setting, timeout_setting)} Nothing was lost: the next run "
                               "continues from the saved cursor.")
