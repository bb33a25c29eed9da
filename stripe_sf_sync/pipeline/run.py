"""A run: begin the source, apply each of its batches, commit it by its kind, add its result to the run's
summary, end the source. The summary is only ever the sum of the results (and, at the end, the edges' usage)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, assert_never

from stripe_sf_sync import gc_pause
from stripe_sf_sync.errors import BudgetSpent
from stripe_sf_sync.logs import fields
from stripe_sf_sync.model import CachedCustomer
from stripe_sf_sync.pipeline.batch import BatchResult, BatchSettings, apply_batch
from stripe_sf_sync.pipeline.batches import (
    Batch,
    CheckpointCommit,
    CursorCommit,
    DeadLetterCommit,
    InboxCommit,
    OutcomesCommit,
    Source,
    next_cursor,
)
from stripe_sf_sync.pipeline.heartbeat import Activity
from stripe_sf_sync.pipeline.ports import Ports
from stripe_sf_sync.pipeline.stop import Abandoned, Stop
from stripe_sf_sync.state.records import Cursor, Outcome
from stripe_sf_sync.words import counted

log = logging.getLogger("stripe_sf_sync")


@dataclass
class RunSummary:
    """What a run did; printed at the end, and stored with the run."""

    command: str
    dry_run: bool = False
    events_read: int = 0
    applied: int = 0
    skipped_stale: int = 0
    skipped_duplicate: int = 0
    listed_late: int = 0  # found behind the cursor by the lookback re-read, not recorded yet
    ignored: int = 0
    dead_lettered: int = 0
    records_written: int = 0
    stripe_calls: int = 0
    stripe_rate_limited: int = 0  # 429s Stripe answered (each retried, and the pace lowered)
    salesforce_calls: int = 0
    salesforce_api_used: int | None = None
    salesforce_api_max: int | None = None
    duration_s: float = 0.0
    cursor: str | None = None
    stopped_early: str | None = None
    interrupted: bool = False  # stopped on request (Ctrl-C, SIGTERM) before the end
    stopped_by: str | None = None  # the signal that asked the run to stop: SIGINT or SIGTERM
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # backfill: counts per object type
    planned_writes: list[dict[str, Any]] = field(default_factory=list)
    reconcile: dict[str, Any] | None = None  # reconcile: counts, totals and what --fix repaired

    def add(self, result: BatchResult, batch: Batch) -> None:
        """Count one committed batch."""
        self.events_read += result.events_read
        self.listed_late += result.events_read if batch.late else 0
        self.skipped_duplicate += result.skipped_duplicate
        self.applied += result.count("applied")
        self.skipped_stale += result.count("stale")
        self.ignored += result.count("ignored")
        self.dead_lettered += result.count("dead_letter")
        self.records_written += result.records_written

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (planned writes only in dry runs, per-type counts only for backfill)."""
        d = dataclasses.asdict(self)
        if not self.dry_run:
            d.pop("planned_writes")
        if self.command != "backfill":
            d.pop("objects")
        if self.reconcile is None:
            d.pop("reconcile")
        return d


class CommitStore(Protocol):
    """The state writes a commit makes (a dry run's state makes none)."""

    def cursor(self) -> Cursor | None:
        """The stored cursor."""

    def remember_customers(self, customers: Sequence[CachedCustomer]) -> None:
        """Keep customer details."""

    def commit_batch(self, outcomes: Sequence[Outcome], *, cursor: Cursor | None,
                     versions: dict[str, tuple[int, str]], run_id: int | None, retried: bool = False,
                     meta: dict[str, str] | None = None, inbox_done: Sequence[str] = ()) -> None:
        """Outcomes, versions, cursor, meta and inbox entries done, in one transaction."""


def commit(state: CommitStore, batch: Batch, result: BatchResult, run_id: int | None) -> None:
    """Commit a batch by its kind: outcomes and object versions, with the cursor (sync), a checkpoint
    (backfill), the inbox entries done (serve) or the dead letters sent again (dlq retry), in one transaction,
    so neither the cursor nor the inbox ever passes an event without a durable outcome."""
    state.remember_customers(result.customers)
    cursor: Cursor | None = None
    versions = result.versions
    meta: Mapping[str, str] | None = None
    retried = False
    extra: dict[str, Any] = {}
    kind = batch.commit
    match kind:
        case CursorCommit():
            cursor = next_cursor(state.cursor(), result.last_event)
            meta = kind.meta
        case CheckpointCommit():
            meta = kind.meta
            if kind.versions:
                versions = {**kind.versions, **result.versions}
        case InboxCommit():
            extra["inbox_done"] = [e.id for e in batch.events if e.id]
        case DeadLetterCommit():
            retried = True
        case OutcomesCommit():
            pass
        case _:
            assert_never(kind)
    state.commit_batch(result.outcomes, cursor=cursor, versions=versions, run_id=run_id, retried=retried,
                       meta=dict(meta) if meta else None, **extra)


def run_batches(source: Source, ports: Ports, settings: BatchSettings, state: CommitStore, summary: RunSummary, *,
                run_id: int | None, budget: Callable[[], str | None] = lambda: None,
                calls: Callable[[], tuple[int, int]] = lambda: (0, 0), stop: Stop | None = None,
                activity: Activity | None = None) -> None:
    """Begin `source`, apply and commit every batch of it, then end it (also when a second signal or a
    Ctrl-C outside a handler aborts the run: what it began is closed as far as it can be). Stop early when
    `budget()` names a reason, or when a writer refuses to send because the API budget is spent (BudgetSpent:
    that batch is not committed), and after the batch just committed when a stop was asked for (a signal): a
    batch still being hydrated `GRACE_S` after the signal is cut there, and its first events committed
    (stop.py). Each batch is logged at info with the Stripe and Salesforce calls (`calls()`: the run's totals
    so far) it took. `activity` is kept told where the run is (the heartbeat's line)."""
    started, before = time.monotonic(), calls()
    activity = activity or Activity()
    activity.note("reading the next batch from Stripe")
    try:
        source.begin()
        _apply_each(source, ports, settings, state, summary, run_id=run_id, budget=budget, calls=calls, stop=stop,
                     activity=activity, started=started, before=before)
    except KeyboardInterrupt:
        source.end(aborted=True)
        raise
    if stop is not None and stop.requested:
        summary.stopped_by = stop.signal
    summary.interrupted = summary.interrupted or source.interrupted or summary.stopped_by is not None
    summary.objects = dict(source.objects)
    source.end(aborted=False)


def _apply_each(source: Source, ports: Ports, settings: BatchSettings, state: CommitStore, summary: RunSummary, *,
                run_id: int | None, budget: Callable[[], str | None], calls: Callable[[], tuple[int, int]],
                stop: Stop | None, activity: Activity, started: float, before: tuple[int, int]) -> None:
    """The run's loop over the source's batches (`started`, `before`: when, and after how many calls, the
    first batch's reading began)."""
    for batch in source.batches():
        reason = budget()
        if reason:
            summary.stopped_early = reason
            break
        try:
            with gc_pause.paused():  # the batch's objects stay until it is applied (gc_pause.py)
                result = apply_batch(batch.events, ports, settings, retried=isinstance(batch.commit, DeadLetterCommit),
                                     bulk=batch.bulk, unordered=batch.unordered, stop=stop, note=activity.note)
        except Abandoned as exc:
            # The stop left a wait (a Bulk API job Salesforce finishes on its own): nothing of the batch is
            # committed, and the next run repeats it (upserts and updates by Id: idempotent).
            log.warning("Left %s to Salesforce on the stop: this batch is not recorded, and the next run repeats "
                        "it (idempotently).", exc.what, extra=fields(kind="batch_abandoned"))
            break
        except BudgetSpent as exc:
            # A writer refused to send (the usage, learnt from this batch's lookups, reached the budget): nothing
            # of the batch is committed, and the next run repeats it.
            summary.stopped_early = exc.message
            break
        if result.cut is not None:
            log.info("batch cut by the stop after %d of its %d events; the next run reads the rest", result.cut,
                     len(batch.events), extra=fields(kind="batch_cut", events=result.cut, of=len(batch.events)))
            batch = batch.first(result.cut)
        activity.note("committing a batch")
        commit(state, batch, result, run_id)
        summary.add(result, batch)
        source.applied(batch, result)
        activity.committed_to(summary.events_read,
                              result.last_event if isinstance(batch.commit, CursorCommit) else None)
        # From the end of the previous batch: reading the batch from Stripe is part of its cost.
        now, after = time.monotonic(), calls()
        log_batch(result, stripe_calls=after[0] - before[0], salesforce_calls=after[1] - before[1],
                  seconds=now - started, dry_run=summary.dry_run)
        started, before = now, after
        if stop is not None and stop.requested:
            break  # before the source reads another batch: everything read so far is committed


def log_batch(result: BatchResult, *, stripe_calls: int, salesforce_calls: int, seconds: float,
              dry_run: bool = False) -> None:
    """One info line per committed batch: its events, their outcomes, the calls and the time it took."""
    counts = {"events": result.events_read, "applied": result.count("applied"), "stale": result.count("stale"),
              "already_done": result.skipped_duplicate, "ignored": result.count("ignored"),
              "dead_lettered": result.count("dead_letter"), "records_written": result.records_written}
    outcomes = ("would apply %d, %d stale, %d already done, %d needing no write, would dead-letter %d; "
                "would write %s" if dry_run else
                "%d applied, %d stale, %d already done, %d needing no write, %d dead-lettered; %s written")
    shown: list[int | str] = [*counts.values()]
    shown[0], shown[-1] = counted(result.events_read, "event"), counted(result.records_written, "record")
    log.info(f"batch{' (dry run)' if dry_run else ''}: %s: {outcomes}; %s, %s; %.1f s", *shown,
             counted(stripe_calls, "Stripe call"), counted(salesforce_calls, "Salesforce call"), seconds,
             extra=fields(kind="batch", dry_run=dry_run, **counts, stripe_calls=stripe_calls,
                          salesforce_calls=salesforce_calls, duration_s=round(seconds, 3)))


def log_summary(summary: RunSummary, exit_code: int) -> None:
    """The run's summary at info, however it ended: its counts as fields (the planned writes of a dry run
    stay out: they hold customer data, and `--json` prints them)."""
    api = (f"{summary.salesforce_api_used}/{summary.salesforce_api_max}"
           if summary.salesforce_api_used is not None else "not contacted")
    counts = {k: v for k, v in summary.as_dict().items() if k != "planned_writes"}
    outcomes = ("would apply %d, %d skipped as stale, %d already done, %d needing no write, would dead-letter %d; "
                "would write %s" if summary.dry_run else
                "%d applied, %d skipped as stale, %d already done, %d needing no write, %d dead-lettered; "
                "%s written")
    calls = f"{counted(summary.stripe_calls, 'Stripe call')}, {counted(summary.salesforce_calls, 'Salesforce call')}"
    if summary.reconcile is not None and not summary.events_read:  # a reconcile that repaired nothing
        found = summary.reconcile
        log.info("%s%s finished with exit code %d: %s checked, %d matched, %s; %s; Salesforce API usage %s; "
                 "%.1f s", summary.command, " (dry run)" if summary.dry_run else "", exit_code,
                 counted(sum((found.get("checked") or {}).values()), "object"), found.get("matched") or 0,
                 counted(found.get("mismatches") or 0, "mismatch", "mismatches"), calls, api, summary.duration_s,
                 extra=fields(kind="summary", exit_code=exit_code, **counts))
        return
    # One of `serve`'s inbox drains: the server goes on, so the drain has no exit code to report (issue 20 §3).
    ended = ("inbox drain done" if summary.command == "serve" else
             f"{summary.command}{' (dry run)' if summary.dry_run else ''} finished with exit code {exit_code}")
    log.info(f"%s: %s read, {outcomes}; %s; Salesforce API usage %s; %.1f s",
             ended, counted(summary.events_read, "event"),
             summary.applied, summary.skipped_stale, summary.skipped_duplicate, summary.ignored,
             summary.dead_lettered, counted(summary.records_written, "record"), calls, api, summary.duration_s,
             extra=fields(kind="drain" if summary.command == "serve" else "summary", exit_code=exit_code, **counts))


def finish(summary: RunSummary, *, started: float, stripe_calls: int, usage: Any | None, cursor: Cursor | None,
           planned: Sequence[dict[str, Any]] = (), stripe_rate_limited: int = 0) -> None:
    """Close the summary however the run ended: duration, the edges' call counts (and Stripe's 429s) and the
    org's usage."""
    summary.duration_s = round(time.monotonic() - started, 3)
    summary.stripe_calls = stripe_calls
    summary.stripe_rate_limited = stripe_rate_limited
    if usage is not None:
        summary.salesforce_calls = usage.calls
        summary.salesforce_api_used, summary.salesforce_api_max = usage.used, usage.total
    summary.cursor = summary.cursor or (cursor.event_id if cursor else None)
    summary.planned_writes = list(planned)
