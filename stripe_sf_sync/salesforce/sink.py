"""Salesforce edge: lookups (batched SOQL), writes (sObject Collections, Bulk API 2.0), one policy.

Only this module talks to Salesforce, through an injected `simple_salesforce.Salesforce`. Every call
goes through `SalesforceGateway.attempt` (one try, its failure classified by `classify`, the one table:
fatal, retry, renew the session, or skip the record) and is retried by `RetryPolicy`, the one tenacity
policy of this edge: whole calls by `SalesforceGateway.send`, records (row locks) by the writers.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from functools import partial
from types import MappingProxyType
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlsplit

import requests
from simple_salesforce import Salesforce, format_soql
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceError, SalesforceOperationError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from stripe_sf_sync.config import FieldNames, SalesforceSecrets
from stripe_sf_sync.deadline import Deadline
from stripe_sf_sync.errors import (
    BudgetSpent,
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
from stripe_sf_sync.salesforce.lookups import (
    AccountRow,
    LookupRequest,
    Lookups,
    OpportunityRow,
    SfOp,
    WriteKind,
    WriteResult,
)
from stripe_sf_sync.salesforce_ids import to_18

log = logging.getLogger("stripe_sf_sync")

T = TypeVar("T")

# Salesforce REST API, "sObject Collections": at most 200 records a call.
COLLECTION_LIMIT = 200
# Salesforce REST API, "Composite": at most 25 subrequests, of which at most 5 queries; billed as one call.
COMPOSITE_QUERIES = 5
IN_CHUNK = 200  # values per IN (...): keeps the GET query URL well under Salesforce's limit
RETRY_ATTEMPTS = 5  # tries of one call, or of one record that a row lock refused
QUERY_HINT = "Check the field names under salesforce.fields in the config."
DESCRIBE_HINT = "Give the integration user access to Opportunity, Account and Task."
SESSION_HINT = ("With SF_ACCESS_TOKEN, export a fresh token; better, use client credentials or JWT, which "
                "stripe-sf renews by itself.")
RESUME_HINT = "Nothing was lost: `stripe-sf backfill --resume` repeats this chunk."


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


# --- the gateway: one place HTTP happens -------------------------------------------------------------

def _log_call(response: requests.Response) -> None:
    """One debug line per HTTP call: method, path, status, duration. The path only: a query's SOQL in the
    query string is customer data, and bodies and headers (the session token) are never logged."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    path = urlsplit(response.url).path
    method = (response.request.method or "") if response.request is not None else ""
    ms = response.elapsed.total_seconds() * 1000
    log.debug("Salesforce: %s %s -> %d in %.0f ms", method, path, response.status_code, ms,
              extra=fields(kind="api_call", edge="salesforce", method=method, path=path,
                           status=response.status_code, duration_ms=round(ms, 1)))


@dataclass
class ApiUsage:
    """Calls this run made, and the org's daily usage from `Sforce-Limit-Info` (REST API Developer
    Guide, "Limit Info Header")."""

    calls: int = 0
    used: int | None = None
    total: int | None = None

    @property
    def fraction(self) -> float | None:
        """Share of the daily allowance used, if known."""
        if self.used is None or not self.total:
            return None
        return self.used / self.total


_DEC = re.compile(r'"\\u0000dec:(-?[0-9]+(?:\.[0-9]+)?)"')


def dumps(body: Any) -> str:
    """JSON with Decimals written as exact JSON numbers, never through float."""
    def default(o: Any) -> Any:
        if isinstance(o, Decimal):
            return f"\u0000dec:{o:f}"
        raise TypeError(f"cannot serialise {type(o).__name__}")
    return _DEC.sub(r"\1", json.dumps(body, default=default, ensure_ascii=False))


class SalesforceGateway:
    """The Salesforce edge (a RecordLookup): counts calls, tracks API usage, and sends every call
    through the one table and the one retry policy."""

    def __init__(self, sf: Salesforce, *, timeout: float = 60.0, budget: float = 0.8,
                 max_attempts: int = RETRY_ATTEMPTS, sleep: Callable[[float], None] = time.sleep,
                 reconnect: Callable[[], Salesforce] | None = None, bulk_poll_seconds: float = 5.0) -> None:
        self.timeout = timeout
        self.budget = budget
        self.usage = ApiUsage()
        self.reached = False  # Salesforce answered a request of this gateway with a success (2xx or 3xx)
        self._usage_lock = threading.Lock()  # collections calls of one phase run on a few threads
        self._renew_lock = threading.Lock()
        self.max_attempts = max_attempts
        self.policy = RetryPolicy(max_attempts, sleep, deadline_s=timeout)
        self._call_deadline = threading.local()  # this thread's end of the call at hand (`send`)
        self._reconnect = reconnect
        self.bulk_poll_seconds = bulk_poll_seconds
        self.sf = sf
        self._hook(sf)

    def _hook(self, sf: Salesforce) -> None:
        """Count every HTTP call on the session (REST and Bulk 2.0 alike) and read the org's usage
        from `Sforce-Limit-Info`, which simple-salesforce's bulk2 does not parse (its bulk2.py)."""
        def on_response(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            _log_call(response)
            if "/services/oauth2/" in response.url:
                return  # token requests are not API calls
            if response.status_code < 400:
                self.reached = True
            info = response.headers.get("Sforce-Limit-Info", "")
            m = re.search(r"api-usage=(\d+)/(\d+)", info)
            with self._usage_lock:
                self.usage.calls += 1
                if m:
                    self.usage.used, self.usage.total = int(m.group(1)), int(m.group(2))
        sf.session.hooks.setdefault("response", []).append(on_response)

    def _renewed(self, expired: Salesforce, code: str | None) -> Salesforce:
        """A fresh session in place of `expired` (one login, however many threads found it expired). The
        SDK renews REST sessions itself when it has credentials, but bulk2 never does (simple-salesforce
        issue #619), and an access token cannot be renewed at all."""
        with self._renew_lock:
            if self.sf is expired:
                if self._reconnect is None:
                    raise session_error(code)
                self.sf = self._reconnect()
                self._hook(self.sf)
            return self.sf

    def over_budget(self) -> bool:
        """True when the org's daily usage has reached the configured share."""
        frac = self.usage.fraction
        return frac is not None and frac >= self.budget

    def budget_reason(self) -> str | None:
        """Why nothing more may be written, when the org's daily usage has reached the configured share."""
        if not self.over_budget():
            return None
        return (f"Salesforce API usage reached {self.usage.used}/{self.usage.total}, the configured budget of "
                f"{self.budget:.0%}")

    def require_budget(self, sobject: str) -> None:
        """Refuse a write once the org's usage has reached the budget (raise BudgetSpent). Every response
        tells the usage (`Sforce-Limit-Info`; REST API Developer Guide, "Limit Info Header"), so a batch's
        lookups have told it before its first write; a write that no response preceded asks first, with the
        lightest call on the sObject it writes."""
        if self.usage.fraction is None:
            self.send(self._rest(f"sobjects/{sobject}/"), what=f"the basic information of {sobject}",
                      hint=DESCRIBE_HINT)
        reason = self.budget_reason()
        if reason:
            raise BudgetSpent(reason, code="API_BUDGET",
                              hint="Nothing of this batch was written or committed: the next run repeats it once "
                                   "the rolling 24-hour usage drops (or raise salesforce.api_budget).")

    def attempt(self, call: Callable[[Salesforce], T], what: str) -> T:
        """One try of `call`, after renewing an expired session once if need be. A failure is raised
        classified: CallRetriable (try again), SalesforceRejected (the data), FatalSyncError (stop)."""
        sf = self.sf
        renewed = False
        while True:
            try:
                return call(sf)
            except Exception as exc:
                failure = failure_of(exc)
                if failure is None:
                    raise
            if failure.verdict is not Verdict.RENEW or renewed:
                raise failure.error(what) from None
            sf, renewed = self._renewed(sf, failure.code), True

    def send(self, call: Callable[[Salesforce], T], *, what: str, hint: str) -> T:
        """`call` under the one policy: retried while it fails transiently; `hint` is the advice when
        Salesforce rejects what it sent."""
        outer = getattr(self._call_deadline, "at", None)
        deadline = Deadline(self.timeout) if outer is None else outer
        self._call_deadline.at = deadline
        try:
            return self.policy.run(lambda: self.attempt(call, what), deadline)
        except CallRetriable as exc:
            raise exc.kept_failing(exc.tried or self.policy.attempts, seconds=deadline.elapsed(),
                                   timeout=self.timeout) from None
        except SalesforceRejected as exc:
            detail = " ".join(part for part in (exc.code if exc.code != "UNKNOWN" else "", exc.reason) if part)
            raise FatalSyncError(f"Salesforce rejected {what}: {detail}", code=exc.code, hint=hint) from None
        finally:
            self._call_deadline.at = outer

    def attempt_timeout(self) -> float:
        """The timeout of the next HTTP attempt on this thread: what is left of the call's time (see `send`)."""
        deadline: Deadline | None = getattr(self._call_deadline, "at", None)
        return self.timeout if deadline is None else min(self.timeout, deadline.attempt_timeout())

    def _rest(self, path: str, *, method: str = "GET", body: Any = None) -> Callable[[Salesforce], Any]:
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["data"] = dumps(body).encode("utf-8")
            kwargs["headers"] = {"Content-Type": "application/json"}
        return lambda sf: sf.restful(path, method=method, timeout=self.attempt_timeout(), **kwargs)

    # --- reads ------------------------------------------------------------------------------
    def query(self, soql: str, *, include_archived: bool = False) -> list[dict[str, Any]]:
        """Every record of a SOQL query: simple-salesforce's query_all_iter follows `nextRecordsUrl`; a
        retry reads the query again from its first page. `include_archived`: through `queryAll`, which also
        returns archived activities and deleted records."""
        return self.send(lambda sf: list(sf.query_all_iter(soql, include_deleted=include_archived,
                                                           timeout=self.attempt_timeout())),
                         what="a query", hint=QUERY_HINT)

    def query_many(self, soqls: Sequence[str], *, archived: Collection[int] = ()) -> list[list[dict[str, Any]]]:
        """Several SOQL queries, five to a Composite call, which Salesforce bills as one API call. The
        statements at the indexes in `archived` go to `queryAll` (archived and deleted records too)."""
        out: list[list[dict[str, Any]]] = []
        prefix = f"/services/data/v{self.sf.sf_version}"
        for start in range(0, len(soqls), COMPOSITE_QUERIES):
            group = soqls[start:start + COMPOSITE_QUERIES]
            every = [start + i in archived for i in range(len(group))]
            if len(group) == 1:
                out.append(self.query(group[0], include_archived=every[0]))
                continue
            pages = self._composite([(f"q{i}", f"{prefix}/{'queryAll' if every[i] else 'query'}?q={quote(q, safe='')}")
                                     for i, q in enumerate(group)], what="a lookup query", hint=QUERY_HINT)
            out.extend(self._with_next_pages(page) for _, page in pages)
        return out

    def _with_next_pages(self, page: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The records of a Composite sub-query result and of the pages after it, which simple-salesforce's
        query_more reads by their `nextRecordsUrl` (as its query_all_iter does)."""
        if page.get("done", True) or not page.get("nextRecordsUrl"):
            return list(page.get("records", []))

        def read(sf: Salesforce) -> list[dict[str, Any]]:
            records, current = list(page.get("records", [])), page
            while not current.get("done", True) and current.get("nextRecordsUrl"):
                current = sf.query_more(current["nextRecordsUrl"], identifier_is_url=True,
                                        timeout=self.attempt_timeout())
                records.extend(current.get("records", []))
            return records
        return self.send(read, what="the next page of a lookup query", hint=QUERY_HINT)

    def _composite(self, subrequests: Sequence[tuple[str, str]], *, what: str, hint: str,
                   optional: frozenset[str] = frozenset()) -> list[tuple[str, dict[str, Any]]]:
        """GET subrequests (referenceId, URL) in one Composite call; a failed sub-response is classified
        as a call of its own, so a transient one sends the Composite call again. An `optional` one that fails
        with a 4xx answers an empty body instead."""
        body = {"allOrNone": False, "compositeRequest": [
            {"method": "GET", "url": url, "referenceId": ref} for ref, url in subrequests]}
        post = self._rest("composite", method="POST", body=body)

        def call(sf: Salesforce) -> list[tuple[str, dict[str, Any]]]:
            subs = (post(sf) or {}).get("compositeResponse", [])
            for sub in subs:
                status = int(sub.get("httpStatusCode", 500))
                if sub.get("referenceId") in optional and 400 <= status < 500:
                    log.info("Salesforce: %s refused (HTTP %d); going on without it", sub.get("referenceId"), status)
                    sub["body"] = {}
                elif status >= 300:
                    raise SalesforceError(f"composite:{sub.get('referenceId')}", int(sub.get("httpStatusCode", 500)),
                                          "composite", sub.get("body"))
            return [(str(sub.get("referenceId")), dict(sub.get("body") or {})) for sub in subs]
        return self.send(call, what=what, hint=hint)

    def describe_many(self, sobjects: Sequence[str], *,
                      queries: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
        """Several describes in one Composite call (one API call instead of one each), plus `queries` (name ->
        SOQL; first page only) in the same call. A query Salesforce refuses answers an empty body (its
        reader falls back), so that it never fails the describes."""
        queries = queries or {}
        if len(sobjects) == 1 and not queries:
            return {sobjects[0]: self.describe(sobjects[0])}
        prefix = f"/services/data/v{self.sf.sf_version}"
        subrequests = [(name, f"{prefix}/sobjects/{name}/describe") for name in sobjects]
        subrequests += [(name, f"{prefix}/query?q={quote(q, safe='')}") for name, q in queries.items()]
        return dict(self._composite(subrequests, what=f"the describe of {', '.join(sobjects)}", hint=DESCRIBE_HINT,
                                    optional=frozenset(queries)))

    def describe(self, sobject: str) -> dict[str, Any]:
        """The sObject's describe result."""
        return dict(self.send(self._rest(f"sobjects/{sobject}/describe/"), what=f"the describe of {sobject}",
                              hint=DESCRIBE_HINT))

    def ping(self) -> None:
        """The lightest call that proves the session and the TLS path work: the basic information of
        Opportunity (`GET sobjects/Opportunity/`, which the integration user can read; GET /limits would need
        "View Setup and Configuration"). Its `Sforce-Limit-Info` refreshes the usage seen too."""
        self.send(self._rest("sobjects/Opportunity/"), what="the daily reachability check", hint=DESCRIBE_HINT)

    def limits(self) -> dict[str, Any]:
        """GET /limits."""
        return dict(self.send(self._rest("limits/"), what="the org's limits", hint=DESCRIBE_HINT))

    def lookup(self, request: LookupRequest, names: FieldNames) -> Lookups:
        """What `request` asks for: one SOQL `IN (...)` per kind and 200 values, the statements of a batch
        together, five to a Composite call."""
        statements = lookup_statements(request, names)
        # Task keys through queryAll: a Task closed with a due date over a year ago is archived, and `query`
        # no longer returns it (SOAP API Developer Guide: Task, IsArchived; api-facts §12). Found, it is never
        # created again.
        results = self.query_many([soql for _, soql in statements],
                                  archived={i for i, (kind, _) in enumerate(statements) if kind == "task"})
        return lookups_of(zip((kind for kind, _ in statements), results, strict=True), names)

    # --- writes -----------------------------------------------------------------------------
    def write_chunk(self, kind: WriteKind, sobject: str, ext_field: str | None,
                    ops: Sequence[SfOp]) -> list[WriteResult]:
        """One sObject Collections call for up to 200 records, allOrNone=false, tried once: a transient
        failure of the whole call raises CallRetriable, for the writer's policy to send it again."""
        if len(ops) > COLLECTION_LIMIT:
            raise ValueError("a collections call takes at most 200 records")
        self.require_budget(sobject)
        records = []
        for op in ops:
            rec: dict[str, Any] = {"attributes": {"type": op.sobject}}
            if kind == "update":
                rec["id"] = op.key
            elif kind == "upsert":
                assert ext_field
                rec[ext_field] = op.key
            rec.update(op.fields)
            records.append(rec)
        body = {"allOrNone": False, "records": records}
        path = f"composite/sobjects/{sobject}/{ext_field}" if kind == "upsert" else "composite/sobjects"
        try:
            raw = self.attempt(self._rest(path, method="POST" if kind == "create" else "PATCH", body=body),
                               f"{sobject} {kind}s")
        except SalesforceRejected as exc:  # a whole-call 4xx (e.g. INVALID_FIELD): every record fails with it
            return [WriteResult(False, code=exc.code, message=exc.reason) for _ in ops]
        # A 200 is not success: per-record failures come back inside it (REST API, "sObject Collections").
        out = []
        for item in raw or []:
            if item.get("success"):
                out.append(WriteResult(True, record_id=item.get("id"), created=item.get("created")))
            else:
                first = (item.get("errors") or [{}])[0]
                out.append(WriteResult(False, record_id=item.get("id"), code=str(first.get("statusCode") or "UNKNOWN"),
                                       message=str(first.get("message", ""))[:300]))
        if len(out) != len(ops):
            raise FatalSyncError("Salesforce returned a different number of results than records sent.",
                                 hint="Report this with --debug output.")
        return out


class DefaultTimeout(requests.adapters.BaseAdapter):
    """A transport adapter that gives every request without a timeout this one, around the session's own
    adapter. simple-salesforce's logins (login.py: `session.post(...)`, JWT, client credentials, password)
    pass none, so a token endpoint that never answers would hold a run for ever."""

    def __init__(self, inner: requests.adapters.BaseAdapter, timeout: float) -> None:
        super().__init__()
        self.inner = inner
        self.timeout = timeout

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        """The inner adapter's send, with the default timeout when none was given."""
        return self.inner.send(request, stream=stream, timeout=timeout if timeout is not None else self.timeout,
                               verify=verify, cert=cert, proxies=proxies)

    def close(self) -> None:
        """Close the inner adapter."""
        self.inner.close()


def with_default_timeout(session: requests.Session, timeout: float) -> requests.Session:
    """`session`, its adapters wrapped in DefaultTimeout (the transport-adapter hook requests offers)."""
    for prefix, adapter in list(session.adapters.items()):
        if not isinstance(adapter, DefaultTimeout):
            session.mount(prefix, DefaultTimeout(adapter, timeout))
    return session


def connect(secrets: SalesforceSecrets, *, api_version: str, session: requests.Session | None = None,
            timeout: float = 60.0) -> Salesforce:
    """Log in with one of the four modes. TLS verification stays on; REQUESTS_CA_BUNDLE is honoured
    because requests reads it for every session that trusts the environment. A login is tried once, and
    ends within `timeout` (salesforce.timeout_seconds)."""
    v = secrets.values
    common: dict[str, Any] = {"version": api_version,
                              "session": with_default_timeout(session or requests.Session(), timeout)}
    try:
        if secrets.mode == "token":
            return Salesforce(instance_url=v["SF_INSTANCE_URL"], session_id=v["SF_ACCESS_TOKEN"], **common)
        if secrets.mode == "client_credentials":
            return Salesforce(consumer_key=v["SF_CONSUMER_KEY"], consumer_secret=v["SF_CONSUMER_SECRET"],
                              domain=secrets.domain, **common)
        if secrets.mode == "jwt":
            return Salesforce(username=v["SF_USERNAME"], consumer_key=v["SF_CONSUMER_KEY"],
                              privatekey_file=v["SF_PRIVATE_KEY_FILE"], domain=secrets.domain, **common)
        return Salesforce(username=v["SF_USERNAME"], password=v["SF_PASSWORD"],
                          security_token=v["SF_SECURITY_TOKEN"], domain=secrets.domain, **common)
    except Exception as exc:
        failure = failure_of(exc)
        if failure is None:
            raise
    if failure.tls:
        raise failure.error("logging in")
    if failure.problem is not None:  # no answer: the cause and the host
        raise unreachable(failure.problem, "the login", attempts=1, timeout=timeout)
    if failure.code is None:  # no answer at all
        raise FatalSyncError(f"Cannot reach Salesforce to log in: {failure.cause.split()[0]}.",
                             hint="Check the network and SF_DOMAIN / SF_INSTANCE_URL.")
    raise FatalSyncError(f"Salesforce login failed ({secrets.mode} mode): {failure.code} {failure.message}".strip(),
                         code=failure.code, hint="Check the SF_* variables, the Connected App's policies, and "
                                                 "SF_DOMAIN (test for sandboxes).")


# --- lookups: SOQL statements and their rows -------------------------------------------------------

LookupKind = Literal["account", "opportunity", "contact", "task"]


def _selects(fields: str, sobject: str, where_field: str, values: Iterable[str]) -> list[str]:
    """SELECT … WHERE field IN (…) statements, IN_CHUNK values each, literals escaped by
    simple_salesforce.format_soql (never pasted into the statement)."""
    uniq = sorted({v for v in values if v})
    # Field and object names come from validated config (an identifier pattern), never from Stripe.
    return [format_soql(f"SELECT {fields} FROM {sobject} WHERE {where_field} IN {{values}}",  # noqa: S608
                        values=uniq[i:i + IN_CHUNK]) for i in range(0, len(uniq), IN_CHUNK)]


def lookup_statements(request: LookupRequest, names: FieldNames) -> list[tuple[LookupKind, str]]:
    """The SOQL statements of a LookupRequest, in the order they are sent: Accounts, Opportunities,
    Contacts, Tasks."""
    a_fields = ["Id", "Name", "OwnerId", names.subscription_status, names.customer_id]
    if names.account_csm:
        a_fields.append(names.account_csm)
    a_select = ", ".join(dict.fromkeys(a_fields))
    o_select = ", ".join(dict.fromkeys(["Id", "AccountId", "IsClosed", "CreatedDate", names.subscription_id,
                                        names.payment_intent_id, names.customer_id]))
    accounts = (_selects(a_select, "Account", "Id", request.account_ids)
                + _selects(a_select, "Account", names.customer_id, request.customer_ids))
    # Opportunities named in metadata bring their Account (parent relationship fields, in the same
    # statement): an object naming only its Opportunity resolves its Account without its customer.
    by_id_select = ", ".join([o_select, *(f"Account.{f}" for f in dict.fromkeys(a_fields))])
    opportunities = (_selects(by_id_select, "Opportunity", "Id", request.opportunity_ids)
                     + _selects(o_select, "Opportunity", names.subscription_id, request.subscription_ids)
                     + _selects(o_select, "Opportunity", names.payment_intent_id, request.payment_intent_ids)
                     + _selects(o_select, "Opportunity", names.customer_id, request.opportunity_customer_ids))
    contacts = _selects("Id", "Contact", "Id", request.contact_ids)
    # Whether a Task exists is asked by SOQL, never by an upsert: an upsert re-sends every field and would
    # undo what a person did to the Task, and on a non-Unique External ID it needs "View All Data"; a plain
    # query works whatever the field is (REST API, "Insert or Update (Upsert) a Record Using an External ID").
    tasks = _selects(names.task_event_id, "Task", names.task_event_id, request.task_keys)
    kinds: list[tuple[LookupKind, list[str]]] = [("account", accounts), ("opportunity", opportunities),
                                                  ("contact", contacts), ("task", tasks)]
    return [(kind, soql) for kind, statements in kinds for soql in statements]


def _account_row(r: Mapping[str, Any], names: FieldNames) -> AccountRow:
    return AccountRow(to_18(r["Id"]), r.get("Name") or "", r.get("OwnerId"),
                      r.get(names.account_csm) if names.account_csm else None,
                      r.get(names.subscription_status), r.get(names.customer_id))


def lookups_of(results: Iterable[tuple[LookupKind, list[dict[str, Any]]]], names: FieldNames) -> Lookups:
    """Index the rows each statement returned."""
    found = Lookups()
    for kind, records in results:
        for r in records:
            if kind == "account":
                found.add_account(_account_row(r, names))
            elif kind == "opportunity":
                if isinstance(r.get("Account"), Mapping) and r["Account"].get("Id"):
                    found.add_account(_account_row(r["Account"], names))
                found.add_opportunity(OpportunityRow(
                    to_18(r["Id"]), r.get("AccountId"), r.get(names.subscription_id), r.get(names.payment_intent_id),
                    r.get(names.customer_id), bool(r.get("IsClosed")), str(r.get("CreatedDate") or "")))
            elif kind == "contact":
                found.contacts.add(to_18(r["Id"]))
            elif r.get(names.task_event_id):
                found.task_keys.add(str(r[names.task_event_id]))
    return found


# --- writers ----------------------------------------------------------------------------------------

Group = tuple[WriteKind, str, str]  # (kind, sObject, external id field or "")


def _groups(ops: Sequence[SfOp]) -> dict[Group, list[int]]:
    """The ops' indexes by (kind, sObject, external id field), groups in order of first appearance."""
    groups: dict[Group, list[int]] = {}
    for i, op in enumerate(ops):
        groups.setdefault((op.kind, op.sobject, op.ext_field or ""), []).append(i)
    return groups


def _parent_of(op: SfOp) -> str:
    """The Account a record hangs from (its own Id for an Account), for grouping writes by parent."""
    if op.sobject == "Account":
        return op.key
    return str(op.fields.get("WhatId") or op.fields.get("AccountId") or "")


class RecordsRetriable(SalesforceRetriable):
    """Records of one group to send again: refused by a row lock (or the like), or in a call that failed
    as a whole for a reason that clears by itself."""

    def __init__(self, sobject: str) -> None:
        super().__init__(f"{sobject} records to send again")
        self.sobject = sobject
        self.indexes: list[int] = []
        self.codes: Counter[str] = Counter()
        self.concurrent: WriteResult | None = None  # a record refused by the concurrent-request cap
        self.call: CallRetriable | None = None

    def add_record(self, index: int, result: WriteResult) -> None:
        """A record refused for a reason that clears by itself."""
        self.indexes.append(index)
        self.codes[str(result.code)] += 1
        if is_concurrent_limit(result.code, result.message):
            self.concurrent = result

    def add_call(self, indexes: Sequence[int], exc: CallRetriable) -> None:
        """The records of a call that failed as a whole."""
        self.indexes.extend(indexes)
        self.call = exc

    @property
    def reason(self) -> str:  # type: ignore[override]
        """E.g. "UNABLE_TO_LOCK_ROW on 3 Account records"."""
        parts = [f"{code} on {n} {self.sobject} record{'s' if n > 1 else ''}" for code, n in self.codes.items()]
        return ", ".join(parts + ([self.call.reason] if self.call else []))

    def settle(self, attempts: int, *, seconds: float = 0.0, timeout: float | None = None) -> None:
        """The tries are spent. A call that kept failing or the concurrent-request cap stops the run
        (nothing is lost; the events did nothing wrong); records still locked keep their results and are
        dead-lettered with their code."""
        if self.call is not None:
            raise self.call.kept_failing(attempts, seconds=seconds, timeout=timeout)
        if self.concurrent is not None:
            raise FatalSyncError(f"Salesforce refused a {self.sobject} write: {self.concurrent.code} "
                                 f"{self.concurrent.message}", code=self.concurrent.code,
                                 hint="The next run repeats this batch.")


class CollectionsWriter:
    """Writes through sObject Collections, 200 records a call (a RecordWriter).

    Ops are grouped by (kind, sObject, external id field) and the groups sent one after another
    (Opportunities, Tasks, then Accounts: the order crash safety relies on). Within a group, up to
    `workers` calls run at once; records are sorted by their parent Account first, so that two calls in
    flight rarely touch the same Account (Salesforce locks the parent of a child it writes). Records
    refused by a row lock, and calls that fail as a whole for a transient reason, are sent again under
    the one RetryPolicy; a fatal code stops the run.
    """

    def __init__(self, gw: SalesforceGateway, *, workers: int = 1, sleep: Callable[[float], None] = time.sleep) -> None:
        self.gw = gw
        self.workers = max(1, workers)
        self.policy = RetryPolicy(gw.max_attempts, sleep, deadline_s=getattr(gw, "timeout", None))

    def write(self, ops: Sequence[SfOp]) -> list[WriteResult]:
        """One result per op, in the ops' order."""
        results: list[WriteResult | None] = [None] * len(ops)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="stripe-sf-write") as pool:
            for group, indexes in _groups(ops).items():
                if self.workers > 1:
                    indexes = sorted(indexes, key=lambda i: _parent_of(ops[i]))
                self._write_group(pool, ops, group, indexes, results)
        return [r if r is not None else WriteResult(False, code="UNKNOWN", message="no result") for r in results]

    def _write_group(self, pool: ThreadPoolExecutor, ops: Sequence[SfOp], group: Group, indexes: list[int],
                     results: list[WriteResult | None]) -> None:
        pending = indexes

        def attempt() -> None:
            nonlocal pending
            try:
                self._send_round(pool, ops, group, pending, results)
            except RecordsRetriable as exc:
                pending = exc.indexes
                raise

        started = time.monotonic()
        try:
            self.policy.run(attempt)
        except RecordsRetriable as exc:
            exc.settle(exc.tried or self.policy.attempts, seconds=time.monotonic() - started,
                       timeout=self.policy.deadline_s)

    def _send_round(self, pool: ThreadPoolExecutor, ops: Sequence[SfOp], group: Group, pending: list[int],
                    results: list[WriteResult | None]) -> None:
        """Send the pending records of a group once, up to `workers` calls at a time."""
        sobject = group[1]
        chunks = [pending[start:start + COLLECTION_LIMIT] for start in range(0, len(pending), COLLECTION_LIMIT)]
        retry = RecordsRetriable(sobject)
        for chunk, outcome in zip(chunks, pool.map(partial(self._send_chunk, ops, group), chunks), strict=True):
            if isinstance(outcome, CallRetriable):
                retry.add_call(chunk, outcome)
                continue
            for i, res in outcome:
                results[i] = res
                verdict = None if res.success else classify(None, res.code, res.message)
                if verdict in (Verdict.FATAL, Verdict.RENEW):
                    raise FatalSyncError(f"Salesforce refused a {sobject} write: {res.code} {res.message}",
                                         code=res.code, hint="The next run repeats this batch.")
                if verdict is Verdict.RETRY:
                    retry.add_record(i, res)
        if retry.indexes:
            raise retry

    def _send_chunk(self, ops: Sequence[SfOp], group: Group,
                    chunk: list[int]) -> list[tuple[int, WriteResult]] | CallRetriable:
        """One chunk of up to 200 records: one call, or two when an external id repeats in it."""
        kind, sobject, ext = group
        # Duplicate external ids in one call fail both rows (DUPLICATE_VALUE): coalescing already merged
        # them, and this split is the guard if coalescing is off.
        seen: set[str] = set()
        first: list[int] = []
        later: list[int] = []
        for i in chunk:
            (later if ops[i].key in seen and kind != "create" else first).append(i)
            seen.add(ops[i].key)
        out: list[tuple[int, WriteResult]] = []
        try:
            for part in (first, later):
                if part:
                    out.extend(zip(part, self.gw.write_chunk(kind, sobject, ext or None, [ops[j] for j in part]),
                                   strict=True))
        except CallRetriable as exc:
            return exc
        return out


BULK_NULL = "#N/A"  # Bulk API 2.0 CSV: an empty cell leaves a field alone; #N/A sets it to null


def _csv_value(value: Any) -> str:
    if value is None:
        return BULK_NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return f"{value:f}"
    return str(value)


def _parse_bulk_error(text: str) -> tuple[str, str]:
    """`sf__Error` looks like `REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --`."""
    code, _, rest = (text or "UNKNOWN").partition(":")
    return code.strip() or "UNKNOWN", rest.rstrip(" -").strip()[:300]


def _bulk_rows(key_col: str, ops: Sequence[SfOp]) -> list[dict[str, str]]:
    """CSV rows with the same columns each: the key, then every field any op sets."""
    columns = list(dict.fromkeys(name for op in ops for name in op.fields))
    rows = []
    for op in ops:
        row = {key_col: op.key, **{c: "" for c in columns}}
        row.update({k: _csv_value(v) for k, v in op.fields.items()})
        rows.append(row)
    return rows


class BulkWriter:
    """Updates and upserts through Bulk API 2.0 ingest jobs, one job per (operation, sObject, external id);
    creates through sObject Collections (a RecordWriter).

    Salesforce does the work on its own servers (Bulk API 2.0 Developer Guide: for more than 2,000
    records). A failed bulk insert row carries no key to report it by, so creates (Tasks, created once and
    never upserted) go through collections. Failed rows are read back from `failedResults`, with
    Salesforce's error, row by row. simple-salesforce's bulk2 never re-authenticates (its issue #619): the
    gateway renews an expired session and sends the job again, as upserts and updates by Id are idempotent.
    """

    def __init__(self, gw: SalesforceGateway, *, sleep: Callable[[float], None] = time.sleep,
                 waiting: Callable[[str], contextlib.AbstractContextManager[None]] | None = None) -> None:
        self.gw = gw
        self.collections = CollectionsWriter(gw, sleep=sleep)
        # Around each job (sent, then polled until Salesforce finishes it): a stop may leave it (pipeline/stop.py).
        self.waiting = waiting or (lambda what: contextlib.nullcontext())

    def write(self, ops: Sequence[SfOp]) -> list[WriteResult]:
        """One result per op, in the ops' order: the bulk jobs first, then the creates."""
        results: list[WriteResult | None] = [None] * len(ops)
        for group, indexes in _groups(ops).items():
            if group[0] != "create":
                for i, res in zip(indexes, self._job(group, [ops[i] for i in indexes]), strict=True):
                    results[i] = res
        creates = [i for i, op in enumerate(ops) if op.kind == "create"]
        for i, res in zip(creates, self.collections.write([ops[i] for i in creates]), strict=True):
            results[i] = res
        return [r if r is not None else WriteResult(False, code="UNKNOWN") for r in results]

    def _job(self, group: Group, ops: Sequence[SfOp]) -> list[WriteResult]:
        """One ingest job (simple-salesforce splits it at 100 MB) and its failed rows."""
        kind, sobject, ext = group
        self.gw.require_budget(sobject)  # a job's calls count against the daily allowance like any other
        key_col = "Id" if kind == "update" else ext
        rows = _bulk_rows(key_col, ops)

        def run(sf: Salesforce) -> list[str]:
            handler = getattr(sf.bulk2, sobject)
            with self.waiting(f"a Bulk API 2.0 {kind} job on {sobject}"):
                if kind == "upsert":
                    jobs = handler.upsert(records=rows, external_id_field=ext, wait=self.gw.bulk_poll_seconds)
                else:
                    jobs = handler.update(records=rows, wait=self.gw.bulk_poll_seconds)
                return [handler.get_failed_records(job["job_id"]) for job in jobs
                        if int(job.get("numberRecordsFailed", 0))]

        failed: dict[str, tuple[str, str]] = {}
        for text in self.gw.send(run, what=f"a Bulk API 2.0 {kind} job on {sobject}", hint=RESUME_HINT):
            for rec in csv.DictReader(io.StringIO(text)):
                failed[rec.get(key_col) or rec.get("sf__Id") or ""] = _parse_bulk_error(rec.get("sf__Error", ""))
        return [WriteResult(False, code=failed[op.key][0], message=failed[op.key][1]) if op.key in failed
                else WriteResult(True) for op in ops]
