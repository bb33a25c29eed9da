"""The writers of the Salesforce edge (RecordWriters, pipeline/ports.py): sObject Collections
(`CollectionsWriter`, 200 records a call, a few calls in flight) and Bulk API 2.0 (`BulkWriter`, for
backfills), both through the gateway; `LazyWriter` makes one on first use, so that a run that writes nothing
never connects. Records refused by a row lock are sent again under the one RetryPolicy (retry.py).
"""

from __future__ import annotations

import contextlib
import csv
import io
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from functools import partial
from typing import Any

from simple_salesforce import Salesforce

from stripe_sf_sync.errors import FatalSyncError
from stripe_sf_sync.records import SfOp, WriteKind, WriteResult
from stripe_sf_sync.salesforce.gateway import COLLECTION_LIMIT, SalesforceAccess, SalesforceGateway
from stripe_sf_sync.salesforce.retry import (
    CallRetriable,
    RetryPolicy,
    SalesforceRetriable,
    Verdict,
    classify,
    is_concurrent_limit,
)

RESUME_HINT = "Nothing was lost: `stripe-sf backfill --resume` repeats this chunk."

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


class LazyWriter:
    """A writer of the Salesforce edge, made on first use: a run that writes nothing never connects."""

    sends = True

    def __init__(self, access: SalesforceAccess,
                 make: Callable[[SalesforceGateway], CollectionsWriter | BulkWriter]) -> None:
        self._access = access
        self._make = make

    def write(self, ops: Sequence[SfOp]) -> list[WriteResult]:
        """One result per op."""
        if not ops:
            return []
        return self._make(self._access.get()).write(ops)


def collections_writer(access: SalesforceAccess, *, workers: int,
                       sleep: Callable[[float], None] = time.sleep) -> LazyWriter:
    """sObject Collections, up to `workers` calls in flight within one kind of write."""
    return LazyWriter(access, lambda gw: CollectionsWriter(gw, workers=workers, sleep=sleep))


def bulk_writer(access: SalesforceAccess, *, sleep: Callable[[float], None] = time.sleep,
                waiting: Callable[[str], contextlib.AbstractContextManager[None]] | None = None) -> LazyWriter:
    """Bulk API 2.0 for updates and upserts, collections for creates; `waiting`: around each job (a stop's)."""
    return LazyWriter(access, lambda gw: BulkWriter(gw, sleep=sleep, waiting=waiting))
