"""Salesforce edge: sObject Collections writes, batched SOQL, result classification, API usage.

Only this module talks to Salesforce. It takes an injected `simple_salesforce.Salesforce`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any, Literal

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
)
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from stripe_sf_sync.config import SalesforceSecrets
from stripe_sf_sync.errors import FatalSyncError, RetriableError

COLLECTION_LIMIT = 200  # sObject Collections take at most 200 records a call (api-facts.md §7)
COMPOSITE_QUERIES = 5  # a Composite call takes at most 5 query subrequests (api-facts.md §7)
# Per-record codes worth another try: row locks clear when the other writer commits (api-facts.md §9).
RETRIABLE_CODES = frozenset({"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE"})
FATAL_CODES = frozenset({"REQUEST_LIMIT_EXCEEDED", "INVALID_SESSION_ID", "INSUFFICIENT_ACCESS"})

WriteKind = Literal["update", "upsert", "create"]


def is_concurrent_limit(code: str | None, message: str | None) -> bool:
    """REQUEST_LIMIT_EXCEEDED for too many concurrent long requests ("ConcurrentPerOrgLongTxn Limit
    exceeded") clears by itself when they finish; the daily allowance ("TotalRequests Limit exceeded")
    does not. Only the message tells them apart (api-facts.md §8)."""
    return code == "REQUEST_LIMIT_EXCEEDED" and "concurrent" in (message or "").lower()


@dataclass
class SfOp:
    """One record write, possibly coalescing several events' changes to the same record."""

    kind: WriteKind
    sobject: str
    key: str  # the record Id (update), external id value (upsert) or a unique label (create)
    fields: dict[str, Any]
    ext_field: str | None = None
    events: list[str] = field(default_factory=list)  # contributing event ids, in event order
    label: str = ""

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """Writes with the same identity touch the same record and are merged."""
        return (self.kind, self.sobject, self.ext_field or "", self.key)


@dataclass(frozen=True)
class WriteResult:
    """A per-record outcome from Salesforce."""

    success: bool
    record_id: str | None = None
    code: str | None = None
    message: str | None = None
    created: bool | None = None


@dataclass
class ApiUsage:
    """Calls this run made, and the org's daily usage from `Sforce-Limit-Info` (api-facts.md §8)."""

    calls: int = 0
    used: int | None = None
    total: int | None = None

    @property
    def fraction(self) -> float | None:
        """Share of the daily allowance used, if known."""
        if self.used is None or not self.total:
            return None
        return self.used / self.total


class SalesforceRetriable(RetriableError):
    """A transient failure of a whole call (5xx, timeout, connection)."""


_DEC = re.compile(r'"\\u0000dec:(-?[0-9]+(?:\.[0-9]+)?)"')


def dumps(body: Any) -> str:
    """JSON with Decimals written as exact JSON numbers, never through float."""
    def default(o: Any) -> Any:
        if isinstance(o, Decimal):
            return f"\u0000dec:{o:f}"
        raise TypeError(f"cannot serialise {type(o).__name__}")
    return _DEC.sub(r"\1", json.dumps(body, default=default, ensure_ascii=False))


def _errors(content: Any) -> tuple[str, str]:
    """(errorCode, message) from a Salesforce error body, without dumping customer data."""
    if isinstance(content, list) and content and isinstance(content[0], Mapping):
        first = content[0]
        return str(first.get("errorCode") or first.get("statusCode") or "UNKNOWN"), str(first.get("message", ""))[:300]
    if isinstance(content, Mapping):
        return str(content.get("error") or "UNKNOWN"), str(content.get("error_description", ""))[:300]
    return "UNKNOWN", ""


class SalesforceGateway:
    """Counts calls, tracks API usage, retries transient failures and raises fatal ones."""

    def __init__(self, sf: Salesforce, *, timeout: float = 60.0, budget: float = 0.8,
                 max_attempts: int = 4, sleep: Callable[[float], None] = time.sleep,
                 reconnect: Callable[[], Salesforce] | None = None, bulk_poll_seconds: float = 5.0) -> None:
        self.timeout = timeout
        self.budget = budget
        self.usage = ApiUsage()
        self._usage_lock = threading.Lock()  # collections calls of one phase run on a few threads
        self.max_attempts = max_attempts
        self._sleep = sleep
        self._reconnect = reconnect
        self.bulk_poll_seconds = bulk_poll_seconds
        self.sf = sf
        self._hook(sf)

    def _hook(self, sf: Salesforce) -> None:
        """Count every HTTP call on the session (REST and Bulk 2.0 alike) and read the org's usage
        from `Sforce-Limit-Info`, which simple-salesforce's bulk2 does not parse (api-facts.md §11)."""
        def on_response(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            if "/services/oauth2/" in response.url:
                return  # token requests are not API calls
            info = response.headers.get("Sforce-Limit-Info", "")
            m = re.search(r"api-usage=(\d+)/(\d+)", info)
            with self._usage_lock:
                self.usage.calls += 1
                if m:
                    self.usage.used, self.usage.total = int(m.group(1)), int(m.group(2))
        sf.session.hooks.setdefault("response", []).append(on_response)

    def renew(self) -> None:
        """Log in again (bulk2 never refreshes an expired session by itself; api-facts.md §10)."""
        if self._reconnect is None:
            raise FatalSyncError(
                "Salesforce rejected the session (INVALID_SESSION_ID) and it could not be renewed.",
                code="INVALID_SESSION_ID",
                hint="With SF_ACCESS_TOKEN, export a fresh token; better, use client credentials or JWT, which "
                     "stripe-sf renews by itself.")
        self.sf = self._reconnect()
        self._hook(self.sf)

    # --- the one place HTTP happens --------------------------------------------------------
    def _request(self, path: str, *, method: str = "GET", params: dict[str, Any] | None = None,
                 body: Any = None) -> Any:
        def attempt() -> Any:
            kwargs: dict[str, Any] = {"timeout": self.timeout}
            if body is not None:
                kwargs["data"] = dumps(body).encode("utf-8")
                kwargs["headers"] = {"Content-Type": "application/json"}
            try:
                result = self.sf.restful(path, params=params, method=method, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise SalesforceRetriable(f"{type(exc).__name__} talking to Salesforce") from None
            except SalesforceGeneralError as exc:
                if exc.status >= 500 or exc.status == 429:
                    raise SalesforceRetriable(f"HTTP {exc.status}", code=_errors(exc.content)[0]) from None
                raise
            except SalesforceRefusedRequest as exc:
                code, msg = _errors(exc.content)
                if is_concurrent_limit(code, msg):
                    raise SalesforceRetriable(f"HTTP 403 {msg}".strip(), code=code) from None
                raise
            return result

        retrying = Retrying(retry=retry_if_exception_type(SalesforceRetriable),
                            wait=wait_random_exponential(multiplier=0.5, max=10),
                            stop=stop_after_attempt(self.max_attempts), sleep=self._sleep, reraise=True)
        try:
            return retrying(attempt)
        except SalesforceRetriable as exc:
            raise FatalSyncError(
                f"Salesforce kept failing ({exc}{', ' + exc.code if exc.code else ''}) after "
                f"{self.max_attempts} attempts.", code=exc.code,
                hint="Nothing was lost: the next run repeats this batch; check trust.salesforce.com "
                     "status if it persists.") from None
        except SalesforceExpiredSession as exc:
            code, _ = _errors(exc.content)
            raise FatalSyncError(
                "Salesforce rejected the session (INVALID_SESSION_ID) and it could not be renewed.",
                code=code, hint="With SF_ACCESS_TOKEN, export a fresh token; better, use client credentials "
                                "or JWT, which stripe-sf renews by itself.") from None
        except SalesforceRefusedRequest as exc:
            code, msg = _errors(exc.content)
            hint = ("The org's daily API allowance is spent; the next run continues when usage drops."
                    if code == "REQUEST_LIMIT_EXCEEDED"
                    else "Check the integration user's permissions on Opportunity, Account and Task.")
            raise FatalSyncError(f"Salesforce refused the request: {code} {msg}".strip(), code=code,
                                 hint=hint) from None

    def over_budget(self) -> bool:
        """True when the org's daily usage has reached the configured share."""
        frac = self.usage.fraction
        return frac is not None and frac >= self.budget

    # --- reads ------------------------------------------------------------------------------
    def query(self, soql: str) -> Iterator[dict[str, Any]]:
        """Every record of a SOQL query, following `nextRecordsUrl` lazily."""
        result = self._request("query/", params={"q": soql})
        while True:
            yield from result.get("records", [])
            nxt = result.get("nextRecordsUrl")
            if result.get("done", True) or not nxt:
                return
            # nextRecordsUrl is absolute from the host: /services/data/vXX.X/query/01g...
            result = self._request(nxt.split(f"/v{self.sf.sf_version}/", 1)[-1])

    def query_many(self, soqls: Sequence[str]) -> list[list[dict[str, Any]]]:
        """Several SOQL queries, five to a Composite call, which Salesforce bills as one API call
        (api-facts.md §7: at most 5 of its 25 subrequests may be queries)."""
        from urllib.parse import quote

        out: list[list[dict[str, Any]]] = []
        prefix = f"/services/data/v{self.sf.sf_version}"
        for start in range(0, len(soqls), COMPOSITE_QUERIES):
            group = soqls[start:start + COMPOSITE_QUERIES]
            if len(group) == 1:
                out.append(list(self.query(group[0])))
                continue
            body = {"allOrNone": False, "compositeRequest": [
                {"method": "GET", "url": f"{prefix}/query?q={quote(q, safe='')}", "referenceId": f"q{i}"}
                for i, q in enumerate(group)]}
            result = self._request("composite", method="POST", body=body)
            for sub in (result or {}).get("compositeResponse", []):
                status = int(sub.get("httpStatusCode", 500))
                if status >= 300:
                    code, msg = _errors(sub.get("body"))
                    if status >= 500:
                        raise FatalSyncError(f"Salesforce failed a lookup: {code} {msg}".strip(), code=code,
                                             hint="Nothing was lost: the next run repeats this batch.")
                    raise FatalSyncError(f"Salesforce rejected a lookup query: {code} {msg}".strip(), code=code,
                                         hint="Check the field names under salesforce.fields in the config.")
                page = sub.get("body") or {}
                records = list(page.get("records", []))
                nxt = page.get("nextRecordsUrl")
                while not page.get("done", True) and nxt:
                    page = self._request(nxt.split(f"/v{self.sf.sf_version}/", 1)[-1])
                    records.extend(page.get("records", []))
                    nxt = page.get("nextRecordsUrl")
                out.append(records)
        return out

    def describe_many(self, sobjects: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Several describes in one Composite call (one API call instead of one each)."""
        if len(sobjects) == 1:
            return {sobjects[0]: self.describe(sobjects[0])}
        prefix = f"/services/data/v{self.sf.sf_version}"
        body = {"allOrNone": False, "compositeRequest": [
            {"method": "GET", "url": f"{prefix}/sobjects/{name}/describe", "referenceId": name} for name in sobjects]}
        result = self._request("composite", method="POST", body=body)
        out: dict[str, dict[str, Any]] = {}
        for sub in (result or {}).get("compositeResponse", []):
            if int(sub.get("httpStatusCode", 500)) >= 300:
                code, msg = _errors(sub.get("body"))
                raise FatalSyncError(f"Salesforce refused to describe {sub.get('referenceId')}: {code} {msg}".strip(),
                                     code=code, hint="Give the integration user access to Opportunity, Account "
                                                     "and Task.")
            out[str(sub.get("referenceId"))] = dict(sub.get("body") or {})
        return out

    def describe(self, sobject: str) -> dict[str, Any]:
        """The sObject's describe result."""
        return dict(self._request(f"sobjects/{sobject}/describe/"))

    def limits(self) -> dict[str, Any]:
        """GET /limits."""
        return dict(self._request("limits/"))

    # --- writes -----------------------------------------------------------------------------
    def write_chunk(self, kind: WriteKind, sobject: str, ext_field: str | None,
                    ops: Sequence[SfOp]) -> list[WriteResult]:
        """One sObject Collections call for up to 200 records, allOrNone=false."""
        if len(ops) > COLLECTION_LIMIT:
            raise ValueError("a collections call takes at most 200 records")
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
        try:
            if kind == "create":
                raw = self._request("composite/sobjects", method="POST", body=body)
            elif kind == "update":
                raw = self._request("composite/sobjects", method="PATCH", body=body)
            else:
                raw = self._request(f"composite/sobjects/{sobject}/{ext_field}", method="PATCH", body=body)
        except SalesforceMalformedRequest as exc:
            # A whole-request 400 (e.g. INVALID_FIELD): every record of the call fails with it.
            code, msg = _errors(exc.content)
            return [WriteResult(False, code=code, message=msg) for _ in ops]
        except SalesforceError as exc:
            code, msg = _errors(exc.content)
            return [WriteResult(False, code=code, message=msg) for _ in ops]
        # A 200 is not success: per-record failures come back inside it (api-facts.md §11).
        out = []
        for item in raw or []:
            errs = item.get("errors") or []
            if item.get("success"):
                out.append(WriteResult(True, record_id=item.get("id"), created=item.get("created")))
            else:
                first = errs[0] if errs else {}
                out.append(WriteResult(False, record_id=item.get("id"),
                                       code=str(first.get("statusCode") or "UNKNOWN"),
                                       message=str(first.get("message", ""))[:300]))
        if len(out) != len(ops):
            raise FatalSyncError("Salesforce returned a different number of results than records sent.",
                                 hint="Report this with --debug output.")
        return out


def connect(secrets: SalesforceSecrets, *, api_version: str, session: requests.Session | None = None) -> Salesforce:
    """Log in with one of the four modes. TLS verification stays on; REQUESTS_CA_BUNDLE is honoured
    because requests reads it for every session that trusts the environment."""
    v = secrets.values
    common: dict[str, Any] = {"version": api_version, "session": session or requests.Session()}
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
    except SalesforceError as exc:
        code, msg = _errors(getattr(exc, "content", None))
        raise FatalSyncError(f"Salesforce login failed ({secrets.mode} mode): {code} {msg}".strip(), code=code,
                             hint="Check the SF_* variables, the Connected App's policies, and SF_DOMAIN "
                                  "(test for sandboxes).") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise FatalSyncError(f"Cannot reach Salesforce to log in: {type(exc).__name__}.",
                             hint="Check the network and SF_DOMAIN / SF_INSTANCE_URL.") from None


def apply_writes(gw: SalesforceGateway, ops: Sequence[SfOp], *, lock_retries: int = 4,
                 sleep: Callable[[float], None] = time.sleep, workers: int = 1) -> list[WriteResult]:
    """Write every op through sObject Collections and return one result per op, in order.

    Ops are grouped by (kind, sObject, external id field) and sent 200 at a time, the groups one after
    another (Opportunities, Tasks, then Accounts: the order crash safety relies on). Within a group, up
    to `workers` calls run at once; records are sorted by their parent Account first, so that two calls
    in flight rarely touch the same Account (Salesforce locks the parent of a child it writes). Records
    that fail with a retriable code (row locks) are sent again with backoff; a fatal code stops the run.
    """
    results: list[WriteResult | None] = [None] * len(ops)
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, op in enumerate(ops):
        groups.setdefault((op.kind, op.sobject, op.ext_field or ""), []).append(i)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="stripe-sf-write") as pool:
        for (kind, sobject, ext), indexes in groups.items():
            pending = sorted(indexes, key=lambda i: _parent_of(ops[i])) if workers > 1 else list(indexes)
            for attempt in range(lock_retries + 1):
                chunks = [pending[start:start + COLLECTION_LIMIT]
                          for start in range(0, len(pending), COLLECTION_LIMIT)]
                retry: list[int] = []
                for chunk_results in pool.map(partial(_write_chunk, gw, kind, sobject, ext, ops), chunks):
                    for i, res in chunk_results:
                        concurrent = not res.success and is_concurrent_limit(res.code, res.message)
                        # A concurrency limit is retried like a row lock; if it outlasts the retries, the
                        # run stops (nothing lost) rather than dead-lettering events that did nothing wrong.
                        if not res.success and res.code in FATAL_CODES and not (concurrent and attempt < lock_retries):
                            raise FatalSyncError(f"Salesforce refused a {sobject} write: {res.code} {res.message}",
                                                 code=res.code, hint="The next run repeats this batch.")
                        if (not res.success and (res.code in RETRIABLE_CODES or concurrent)
                                and attempt < lock_retries):
                            retry.append(i)
                        results[i] = res
                if not retry:
                    break
                sleep(min(0.5 * 2 ** attempt, 8.0))
                pending = retry
    return [r if r is not None else WriteResult(False, code="UNKNOWN", message="no result") for r in results]


def _parent_of(op: SfOp) -> str:
    """The Account a record hangs from (its own Id for an Account), for grouping writes by parent."""
    if op.sobject == "Account":
        return op.key
    return str(op.fields.get("WhatId") or op.fields.get("AccountId") or "")


def _write_chunk(gw: SalesforceGateway, kind: str, sobject: str, ext: str, ops: Sequence[SfOp],
                 chunk: list[int]) -> list[tuple[int, WriteResult]]:
    """One chunk of up to 200 records: one call, or two when an external id repeats in it."""
    # Duplicate external ids in one call fail both rows (DUPLICATE_VALUE): coalescing already merged
    # them, and this split is the guard if coalescing is off.
    seen: set[str] = set()
    first, later = [], []
    for i in chunk:
        (later if ops[i].key in seen and kind != "create" else first).append(i)
        seen.add(ops[i].key)
    out: list[tuple[int, WriteResult]] = []
    for part in (first, later):
        if part:
            out.extend(zip(part, gw.write_chunk(kind, sobject, ext or None,  # type: ignore[arg-type]
                                                [ops[j] for j in part]), strict=True))
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


def apply_writes_bulk(gw: SalesforceGateway, ops: Sequence[SfOp]) -> list[WriteResult]:
    """Write ops through Bulk API 2.0 ingest jobs, one job per (operation, sObject, external id).

    Salesforce does the work on its own servers (api-facts.md §7: use it above ~2,000 rows). Failed
    rows are read back from `failedResults` and returned with Salesforce's error, row by row.
    simple-salesforce's bulk2 never re-authenticates (issue #619), so an expired session is renewed
    here and the job sent again: upserts and updates by Id are idempotent.
    """
    import csv
    import io

    from simple_salesforce.exceptions import SalesforceOperationError

    results: list[WriteResult | None] = [None] * len(ops)
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, op in enumerate(ops):
        if op.kind == "create":
            raise ValueError("Bulk writes take updates and upserts only: a failed insert row has no key to report")
        groups.setdefault((op.kind, op.sobject, op.ext_field or ""), []).append(i)
    for (kind, sobject, ext), indexes in groups.items():
        key_col = "Id" if kind == "update" else ext
        columns: list[str] = []
        for i in indexes:
            for name in ops[i].fields:
                if name not in columns:
                    columns.append(name)
        rows = []
        for i in indexes:
            row = {key_col: ops[i].key, **{c: "" for c in columns}}
            row.update({k: _csv_value(v) for k, v in ops[i].fields.items()})
            rows.append(row)
        for attempt in range(2):
            handler = getattr(gw.sf.bulk2, sobject)
            try:
                if kind == "upsert":
                    jobs = handler.upsert(records=rows, external_id_field=ext, wait=gw.bulk_poll_seconds)
                else:
                    jobs = handler.update(records=rows, wait=gw.bulk_poll_seconds)
                break
            except SalesforceExpiredSession:
                if attempt:
                    raise
                gw.renew()
            except SalesforceRefusedRequest as exc:
                code, msg = _errors(exc.content)
                raise FatalSyncError(f"Salesforce refused a Bulk API job: {code} {msg}".strip(), code=code,
                                     hint="The next run repeats this chunk.") from None
            except (SalesforceOperationError, SalesforceError, requests.RequestException) as exc:
                raise FatalSyncError(f"A Bulk API 2.0 {kind} job on {sobject} failed: {type(exc).__name__}.",
                                     hint="Nothing was lost: `stripe-sf backfill --resume` repeats this "
                                          "chunk.") from None
        failed: dict[str, tuple[str, str]] = {}
        for job in jobs:
            if int(job.get("numberRecordsFailed", 0)):
                text = handler.get_failed_records(job["job_id"])
                for rec in csv.DictReader(io.StringIO(text)):
                    ident = rec.get(key_col) or rec.get("sf__Id") or ""
                    failed[ident] = _parse_bulk_error(rec.get("sf__Error", ""))
        for i in indexes:
            ident = ops[i].key
            if ident in failed:
                code, msg = failed[ident]
                results[i] = WriteResult(False, code=code, message=msg)
            else:
                results[i] = WriteResult(True)
    return [r if r is not None else WriteResult(False, code="UNKNOWN") for r in results]
