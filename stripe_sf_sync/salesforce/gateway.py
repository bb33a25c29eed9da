"""The Salesforce gateway: the one place HTTP to Salesforce happens.

It holds the simple-salesforce session (renewed when it expires), counts the calls and the org's daily API
usage, and sends every call through the one failure table and the one retry policy (retry.py). Reads: the
one SOQL pager (`pages_after`; `pages` and `query` use it), Composite calls of up to five queries, describes.
Writes: one sObject Collections call (`write_chunk`; the writers in writers.py group and retry them).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError

from stripe_sf_sync.config import SalesforceSecrets
from stripe_sf_sync.deadline import Deadline
from stripe_sf_sync.errors import BudgetSpent, FatalSyncError
from stripe_sf_sync.identity import SalesforceIdentity
from stripe_sf_sync.logs import fields
from stripe_sf_sync.records import SfOp, WriteKind, WriteResult
from stripe_sf_sync.salesforce.duplicates import duplicate_message
from stripe_sf_sync.salesforce.retry import (
    RETRY_ATTEMPTS,
    CallRetriable,
    RetryPolicy,
    SalesforceRejected,
    Verdict,
    failure_of,
    session_error,
    unreachable,
)

log = logging.getLogger("stripe_sf_sync")

T = TypeVar("T")

# Salesforce REST API, "sObject Collections": at most 200 records a call.
COLLECTION_LIMIT = 200
# Salesforce REST API, "Composite": at most 25 subrequests, of which at most 5 queries; billed as one call.
COMPOSITE_QUERIES = 5
QUERY_HINT = "Check the field names under salesforce.fields in the config."
DESCRIBE_HINT = "Give the integration user access to Opportunity, Account and Task."


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
    """The Salesforce edge's one session: counts calls, tracks API usage, and sends every call through the
    one table and the one retry policy."""

    def __init__(self, sf: Salesforce, *, timeout: float = 60.0, budget: float = 0.8,
                 max_attempts: int = RETRY_ATTEMPTS, sleep: Callable[[float], None] = time.sleep,
                 reconnect: Callable[[], Salesforce] | None = None, bulk_poll_seconds: float = 5.0) -> None:
        self.timeout = timeout
        self.budget = budget
        self.usage = ApiUsage()
        self.reached = False  # Salesforce answered a request of this gateway with a success (2xx or 3xx)
        # The org this session was checked to reach (service/identity.py), so that a gateway shared by several
        # runs (`serve`) is checked once per login; a new login clears it.
        self.org_seen: SalesforceIdentity | None = None
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
                self.org_seen = None
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
    def pages(self, soql: str, *, include_archived: bool = False,
              what: str = "a query") -> Iterator[list[dict[str, Any]]]:
        """The records of a SOQL query a page (up to 2,000 records) at a time: its first page, then `pages_after`
        it. `include_archived`: through `queryAll`, which also returns archived activities and deleted records."""
        first = self.send(lambda sf: sf.query(soql, include_deleted=include_archived, timeout=self.attempt_timeout()),
                          what=what, hint=QUERY_HINT)
        yield from self.pages_after(first, what=what)

    def pages_after(self, page: Mapping[str, Any], *, what: str) -> Iterator[list[dict[str, Any]]]:
        """The one SOQL pager: the records of `page` (a query's first page, or a Composite sub-query's), then of
        each page after it, read by simple-salesforce's `query_more` from its `nextRecordsUrl`, as its
        query_all_iter walks them (api-facts.md §11). Each page is one call under the policy, retried on its own."""
        yield list(page.get("records", []))
        while not page.get("done", True) and page.get("nextRecordsUrl"):
            page = self.send(partial(self._next_page, page["nextRecordsUrl"]), what=f"the next page of {what}",
                             hint=QUERY_HINT)
            yield list(page.get("records", []))

    def _next_page(self, url: str, sf: Salesforce) -> Any:
        return sf.query_more(url, identifier_is_url=True, timeout=self.attempt_timeout())

    def query(self, soql: str, *, include_archived: bool = False) -> list[dict[str, Any]]:
        """Every record of a SOQL query (`pages`, joined)."""
        return [record for page in self.pages(soql, include_archived=include_archived) for record in page]

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
            out.extend([r for records in self.pages_after(page, what="a lookup query") for r in records]
                       for _, page in pages)
        return out

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
                                       message=duplicate_message(first)))
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



class SalesforceAccess:
    """Connects to Salesforce only when a batch has something to write (quiet runs cost nothing)."""

    def __init__(self, factory: Callable[[], SalesforceGateway]) -> None:
        self._factory = factory
        self._gw: SalesforceGateway | None = None

    @property
    def connected(self) -> SalesforceGateway | None:
        """The gateway, if one was opened."""
        return self._gw

    def get(self) -> SalesforceGateway:
        """The gateway, connecting on first use."""
        if self._gw is None:
            self._gw = self._factory()
        return self._gw

    def budget_spent(self) -> str | None:
        """Why the run must stop here, when the org's daily usage reached the configured share."""
