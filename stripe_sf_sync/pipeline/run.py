"""A run: for each batch of a source, apply it, commit it by its policy, and add its result to the run's
summary. The summary is only ever the sum of the results (and, at the end, the edges' usage)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stripe_sf_sync.errors import BudgetSpent
from stripe_sf_sync.model import CachedCustomer
from stripe_sf_sync.pipeline.batch import BatchResult, BatchSettings, apply_batch
from stripe_sf_sync.pipeline.cursor import next_cursor
from stripe_sf_sync.pipeline.ports import Ports
from stripe_sf_sync.pipeline.sources import Batch, Source
from stripe_sf_sync.state import Cursor, Outcome

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
    salesforce_calls: int = 0
    salesforce_api_used: int | None = None
    salesforce_api_max: int | None = None
    duration_s: float = 0.0
    cursor: str | None = None
    stopped_early: str | None = None
    interrupted: bool = False  # stopped on request (Ctrl-C) before the end
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # backfill: counts per object type
    planned_writes: list[dict[str, Any]] = field(default_factory=list)

    def add(self, result: BatchResult, batch: Batch) -> None:
        """Count one committed batch."""
        self.events_read += result.events_read
        self.listed_late += result.events_read if batch.policy.late else 0
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
            d.pop("interrupted")
        return d


class CommitStore(Protocol):
    """The state writes a commit makes (a dry run's state makes none)."""

    def cursor(self) -> Cursor | None:
        """The stored cursor."""

    def remember_customers(self, customers: Sequence[CachedCustomer]) -> None:
        """Keep customer details."""

    def commit_batch(self, outcomes: Sequence[Outcome], *, cursor: Cursor | None,
                     versions: dict[str, tuple[int, str]], run_id: int | None, retried: bool = False,
                     meta: dict[str, str] | None = None) -> None:
        """Outcomes, versions, cursor and meta in one transaction."""


def commit(state: CommitStore, batch: Batch, result: BatchResult, run_id: int | None) -> None:
    """Commit a batch by its policy: outcomes, object versions, and the cursor (sync) or a checkpoint
    (backfill) in one transaction, so the cursor never passes an event without a durable outcome."""
    state.remember_customers(result.customers)
    cursor = next_cursor(state.cursor(), result.last_event) if batch.policy.advance_cursor else None
    state.commit_batch(result.outcomes, cursor=cursor, versions=result.versions, run_id=run_id,
                       retried=batch.policy.retried, meta=dict(batch.policy.meta) if batch.policy.meta else None)


def run_batches(source: Source, ports: Ports, settings: BatchSettings, state: CommitStore, summary: RunSummary, *,
                run_id: int | None, budget: Callable[[], str | None] = lambda: None) -> None:
    """Apply and commit every batch of `source`; stop early when `budget()` names a reason, or when a writer
    refuses to send because the API budget is spent (BudgetSpent: that batch is not committed)."""
    for batch in source.batches():
        reason = budget()
        if reason:
            summary.stopped_early = reason
            break
        started = time.monotonic()
        try:
            result = apply_batch(batch.events, ports, settings, retried=batch.policy.retried, bulk=batch.policy.bulk)
        except BudgetSpent as exc:
            # A writer refused to send (the usage, learnt from this batch's lookups, reached the budget): nothing
            # of the batch is committed, and the next run repeats it.
            summary.stopped_early = exc.message
            break
        commit(state, batch, result, run_id)
        summary.add(result, batch)
        source.applied(batch, result)
        log.debug("batch: %d events, %d applied, %d dead-lettered, %d records written in %.1f s",
                 result.events_read, result.count("applied"), result.count("dead_letter"), result.records_written,
                 time.monotonic() - started)
    summary.interrupted = summary.interrupted or source.interrupted
    summary.objects = dict(source.objects)


def finish(summary: RunSummary, *, started: float, stripe_calls: int, usage: Any | None, cursor: Cursor | None,
           planned: Sequence[dict[str, Any]] = ()) -> None:
    """Close the summary however the run ended: duration, the edges' call counts and the org's usage."""
    summary.duration_s = round(time.monotonic() - started, 3)
    summary.stripe_calls = stripe_calls
    if usage is not None:
        summary.salesforce_calls = usage.calls
        summary.salesforce_api_used, summary.salesforce_api_max = usage.used, usage.total
    summary.cursor = summary.cursor or (cursor.event_id if cursor else None)
    summary.planned_writes = list(planned)
