"""What a Salesforce failure means, and the one retry policy of the Salesforce edge.

Every call of the gateway (gateway.py) is tried by `SalesforceGateway.attempt`, its failure classified by
`failure_of` and `classify`, the one table: fatal, retry, renew the session, or skip the record. It is retried
by `RetryPolicy`, the one tenacity policy of the edge: whole calls by `SalesforceGateway.send`, records (row
locks) by the writers (writers.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeVar

import requests
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceError, SalesforceOperationError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from stripe_sf_sync.deadline import Deadline
from stripe_sf_sync.errors import (
    ConnectionProblem,
    FatalSyncError,
    RetriableError,
    SkippableError,
    certificate_problem,
    connection_problem,
    tls_error,
    unreachable_error,
)
from stripe_sf_sync.logs import fields

log = logging.getLogger("stripe_sf_sync")

T = TypeVar("T")

RETRY_ATTEMPTS = 5  # tries of one call, or of one record that a row lock refused
SESSION_HINT = ("With SF_ACCESS_TOKEN, export a fresh token; better, use client credentials or JWT, which "
                "stripe-sf renews by itself.")


# --- what to do about a failure: the one table ----------------------------------------------------

class Verdict(StrEnum):
    """What the caller does next about a Salesforce error."""

    FATAL = "fatal"  # stop the run; nothing of the batch is committed, the next run repeats it
    RETRY = "retry"  # it clears by itself: try again after a backoff
    RENEW = "renew"  # the session expired: log in again (once), then try again
    SKIP = "skip"  # this record's (or call's) data: its events are dead-lettered


# By error code (`errorCode` of a whole call, `errors[].statusCode` of a record); any other code is the
# record's data (Salesforce REST API Developer Guide, "Status Codes and Error Responses").
CODE_VERDICTS: Mapping[str, Verdict] = MappingProxyType({
    "INVALID_SESSION_ID": Verdict.RENEW,
    "REQUEST_LIMIT_EXCEEDED": Verdict.FATAL,  # the daily allowance (the concurrent cap: is_concurrent_limit)
    "INSUFFICIENT_ACCESS": Verdict.FATAL,
    # Row locks clear when the other writer commits ("Record Locking Cheat Sheet").
    "UNABLE_TO_LOCK_ROW": Verdict.RETRY,
    "SERVER_UNAVAILABLE": Verdict.RETRY,
})
# By the HTTP status of a whole call, which decides before its code; any other 4xx is the call's data.
STATUS_VERDICTS: Mapping[int, Verdict] = MappingProxyType({
    401: Verdict.RENEW, 403: Verdict.FATAL, 429: Verdict.RETRY,
})


def is_concurrent_limit(code: str | None, message: str | None) -> bool:
    """REQUEST_LIMIT_EXCEEDED for too many concurrent long requests ("ConcurrentPerOrgLongTxn Limit
    exceeded") clears by itself when they finish; the daily allowance ("TotalRequests Limit exceeded")
    does not. Only the message tells them apart (Salesforce Developer Limits, "API Request Limits")."""
    return code == "REQUEST_LIMIT_EXCEEDED" and "concurrent" in (message or "").lower()


def classify(status: int | None, code: str | None, message: str | None = None) -> Verdict:
    """The verdict on a whole call that failed with HTTP `status`, or on one record (`status` None)."""
    if is_concurrent_limit(code, message):
        return Verdict.RETRY
    if status is not None and status >= 500:
        return Verdict.RETRY
    if status is not None and status in STATUS_VERDICTS:
        return STATUS_VERDICTS[status]
    return CODE_VERDICTS.get(code or "", Verdict.SKIP)


@dataclass(frozen=True)
class Failure:
    """A classified failure of one Salesforce call."""

    verdict: Verdict
    code: str | None
    message: str
    cause: str  # "HTTP 503", "ConnectionError talking to Salesforce"
    tls: bool = False  # Salesforce's certificate is not trusted here: no request reached it
    problem: ConnectionProblem | None = None  # no HTTP answer: why (DNS, refused, TLS, timeout) and from where

    def error(self, what: str) -> Exception:
        """The exception that carries this failure to the caller."""
        if self.tls:
            return tls_error("Salesforce", what, self.message)
        if self.problem is not None and self.verdict is Verdict.FATAL:
            return unreachable(self.problem, what, attempts=1)
        if self.verdict is Verdict.RETRY:
            return CallRetriable(self, what)
        if self.verdict is Verdict.SKIP:
            return SalesforceRejected(self.message, code=self.code or "UNKNOWN")
        if self.verdict is Verdict.RENEW:
            return session_error(self.code)
        hint = ("The org's daily API allowance is spent; the next run continues when usage drops."
                if self.code == "REQUEST_LIMIT_EXCEEDED"
                else "Check the integration user's permissions on Opportunity, Account and Task.")
        return FatalSyncError(f"Salesforce refused the request: {self.code} {self.message}".strip(),
                              code=self.code, hint=hint)


def failure_of(exc: BaseException) -> Failure | None:
    """Classify what a simple-salesforce call raised; None for anything else (a bug: raised as it is)."""
    untrusted = certificate_problem(exc) if isinstance(exc, requests.exceptions.SSLError) else None
    if untrusted is not None:  # a certificate nobody here trusts does not clear by itself: stop, never retry
        return Failure(Verdict.FATAL, None, untrusted, "TLS certificate not trusted", tls=True)
    if isinstance(exc, requests.RequestException):  # no answer: DNS, connection refused or reset, TLS, timeouts
        problem = connection_problem(exc)
        if problem is None:
            return Failure(Verdict.RETRY, None, "", f"{type(exc).__name__} talking to Salesforce")
        # A TLS handshake that fails (not TLS on that port, a proxy in the way) does not clear by itself.
        return Failure(Verdict.FATAL if problem.kind == "tls" else Verdict.RETRY, problem.code, "",
                       problem.describe(), problem=problem)
    if isinstance(exc, SalesforceAuthenticationFailed):  # a login: its content is only the message
        return Failure(Verdict.FATAL, str(exc.code or "UNKNOWN"), exc.auth_message[:300], "login refused")
    if isinstance(exc, SalesforceError):
        code, message = _errors(exc.content)
        return Failure(classify(exc.status, code, message), code, message, f"HTTP {exc.status}")
    if isinstance(exc, SalesforceOperationError):  # a Bulk API 2.0 job that failed or timed out, not HTTP
        return Failure(Verdict.SKIP, None, str(exc)[:300], type(exc).__name__)
    return None


def unreachable(problem: ConnectionProblem, what: str, *, attempts: int, seconds: float = 0.0,
                timeout: float | None = None) -> FatalSyncError:
    """Stop the run: Salesforce gave no HTTP answer, with the cause and the host."""
    return unreachable_error("Salesforce", f"for {what}", problem, attempts=attempts, seconds=seconds, timeout=timeout,
                             address_setting="SF_INSTANCE_URL, or the login domain SF_DOMAIN",
                             timeout_setting="salesforce.timeout_seconds")


def session_error(code: str | None) -> FatalSyncError:
    """The session expired and cannot be renewed (an access token), or a renewed one was refused too."""
    return FatalSyncError("Salesforce rejected the session (INVALID_SESSION_ID) and it could not be renewed.",
                          code=code if code not in (None, "UNKNOWN") else "INVALID_SESSION_ID", hint=SESSION_HINT)


def _errors(content: Any) -> tuple[str, str]:
    """(errorCode, message) from a Salesforce error body, without dumping customer data."""
    if isinstance(content, list) and content and isinstance(content[0], Mapping):
        first = content[0]
        return str(first.get("errorCode") or first.get("statusCode") or "UNKNOWN"), str(first.get("message", ""))[:300]
    if isinstance(content, Mapping):
        return str(content.get("error") or "UNKNOWN"), str(content.get("error_description", ""))[:300]
    return "UNKNOWN", ""


class SalesforceRetriable(RetriableError):
    """Worth another try after a backoff; `reason` says why, for the retry's log line."""

    reason: str = ""
    tried: int = 0  # the attempts made when the policy gave up (set by RetryPolicy.run)


class CallRetriable(SalesforceRetriable):
    """A whole call failed for a reason that clears by itself (5xx, 429, timeout, the concurrent cap)."""

    def __init__(self, failure: Failure, what: str) -> None:
        super().__init__(f"{failure.cause} on {what}", code=failure.code)
        self.failure = failure
        self.what = what
        self.reason = f"{failure.cause}{' ' + failure.code if failure.code else ''} on {what}"

    def kept_failing(self, attempts: int, *, seconds: float = 0.0, timeout: float | None = None) -> FatalSyncError:
        """The retries (or the call's time) are spent: stop the run (the next one repeats the batch)."""
        f = self.failure
        if f.problem is not None:
            return unreachable(f.problem, self.what, attempts=attempts, seconds=seconds, timeout=timeout)
        detail = ", ".join(part for part in (f.cause, f.code, f.message) if part)
        return FatalSyncError(
            f"Salesforce kept failing ({detail}) after {attempts} attempts at {self.what}.", code=f.code,
            hint="Nothing was lost: the next run repeats this batch; check trust.salesforce.com status if it "
                 "persists.")


class SalesforceRejected(SkippableError):
    """Salesforce refused what a call sent (a 4xx that is no session, permission or limit problem)."""


@dataclass(frozen=True)
class RetryPolicy:
    """The one retry policy of the Salesforce edge: `attempts` tries, full-jitter exponential backoff
    (a random wait up to 0.5 s, 1 s, 2 s, … 10 s), each retry logged with its reason and attempt."""

    attempts: int = RETRY_ATTEMPTS
    sleep: Callable[[float], None] = time.sleep
    # The most a call and its retries may take (salesforce.timeout_seconds; deadline.py): a server that accepts
    # the connection and never answers fails in that time.
    deadline_s: float | None = None

    def run(self, attempt: Callable[[], T], deadline: Deadline | None = None) -> T:
        """Call `attempt` until it returns, raises anything but SalesforceRetriable, or the tries (or the time)
        are spent (then the last SalesforceRetriable is raised, its `tried` set)."""
        if deadline is None and self.deadline_s:
            deadline = Deadline(self.deadline_s)
        wait = wait_random_exponential(multiplier=0.5, max=10)
        retrying = Retrying(retry=retry_if_exception_type(SalesforceRetriable),
                            wait=deadline.wait(wait) if deadline else wait,
                            stop=deadline.stop(self.attempts) if deadline else stop_after_attempt(self.attempts),
                            sleep=self.sleep, before_sleep=self._log_retry, reraise=True)
        try:
            return retrying(attempt)
        except SalesforceRetriable as exc:
            exc.tried = int(retrying.statistics.get("attempt_number", self.attempts))
            raise

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        reason = exc.reason if isinstance(exc, SalesforceRetriable) else type(exc).__name__
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        failure = exc.failure if isinstance(exc, CallRetriable) else None
        log.warning("Salesforce: %s; retrying (attempt %d of %d) in %.1f s", reason, state.attempt_number + 1,
                    self.attempts, wait,
                    extra=fields(kind="retry", edge="salesforce", reason=reason, attempt=state.attempt_number + 1,
                                 max_attempts=self.attempts, wait_s=round(wait, 2),
                                 code=getattr(exc, "code", None), cause=failure.cause if failure else None))

