"""What a source hands the run: batches of held events, each with a commit from a closed set, and the Source
protocol (a run's begin and end, its batches, what each did).

The sources themselves live in `stripe_sf_sync/sources/` (sync events, the webhook inbox, dead letters,
backfill, reconcile's repairs); the pipeline knows only these types, never a source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from stripe_sf_sync import gc_pause
from stripe_sf_sync.pipeline.batch import BatchResult
from stripe_sf_sync.pipeline.events import HeldEvent
from stripe_sf_sync.state.records import Cursor


@dataclass(frozen=True)
class CursorCommit:
    """sync: the cursor moves to the batch's last committed event (never back), with `meta` in the same
    transaction (where sync's history starts: its lookback floor, a first `--since`'s start)."""

    meta: Mapping[str, str] | None = None


@dataclass(frozen=True)
class CheckpointCommit:
    """backfill: `meta` (the checkpoint, on a chunk's last batch) and `versions` (object versions besides the
    events' own: the status ranks the batch's subscriptions decide) with the outcomes."""

    meta: Mapping[str, str] | None = None
    versions: Mapping[str, tuple[int, str]] | None = None


@dataclass(frozen=True)
class InboxCommit:
    """serve: the batch's webhook inbox entries are marked done with their outcomes."""


@dataclass(frozen=True)
class DeadLetterCommit:
    """dlq retry: dead letters sent again; a success closes its dead letter. The cursor does not move."""


@dataclass(frozen=True)
class OutcomesCommit:
    """The outcomes alone: nothing else moves (events listed late, behind the cursor; reconcile's repairs)."""


# The closed set: `pipeline/run.py`'s `commit` matches every kind (a new one fails mypy there until handled).
Commit = CursorCommit | CheckpointCommit | InboxCommit | DeadLetterCommit | OutcomesCommit


@dataclass
class Batch:
    """Events to apply together, how to commit them, and what the run must know of them."""

    events: list[HeldEvent]
    commit: Commit
    late: bool = False  # listed late, behind the cursor: counted as such, and Stripe's order of them is unknown
    bulk: bool = False  # written through Bulk API 2.0 (backfill above its threshold)
    # The commit of only the first n events, when a stop cut the batch short (backfill: the checkpoint of the
    # pages those events came from). None: the batch's own commit does (sync's cursor follows the last event
    # committed; dead letters and inbox entries are each closed by their own outcome).
    partial: Callable[[int], Commit] | None = field(default=None, repr=False)

    def first(self, n: int) -> Batch:
        """The batch cut to its first n events, with the commit that commits just them."""
        return Batch(self.events[:n], self.partial(n) if self.partial is not None else self.commit,
                     late=self.late, bulk=self.bulk)

    @property
    def unordered(self) -> bool:
        """Whether Stripe's order of the events is unknown: webhook deliveries (not ordered), events listed
        late behind the cursor, dead letters sent again (both sorted by time only)."""
        return self.late or isinstance(self.commit, InboxCommit | DeadLetterCommit)


class Source(Protocol):
    """A way in: begins and ends a run (its run-level state writes), yields batches, is told what each did."""

    # Read-only to the run: a plain attribute satisfies them, and so do backfill's properties.
    @property
    def interrupted(self) -> bool:
        """Stopped on request (Ctrl-C, SIGTERM) before its end."""

    @property
    def objects(self) -> dict[str, dict[str, Any]]:
        """Counts per object type, for sources that keep them (backfill)."""

    def begin(self) -> None:
        """Before the first batch is read: the run-level state a source starts from (backfill's hand-off and
        checkpoint); a refusal (nothing to resume) is raised here."""

    def batches(self) -> Iterator[Batch]:
        """The batches, in the order they must be applied."""

    def applied(self, batch: Batch, result: BatchResult) -> None:
        """A batch was applied and committed."""

    def end(self, *, aborted: bool) -> None:
        """After the last batch the run committed (`aborted`: a second signal or a Ctrl-C outside a handler
        ended it): the run-level state a source leaves (sync's start, ledger pruning, read-through; backfill's
        finished checkpoint)."""


class NoRunState:
    """A source with no run-level state: its begin and end do nothing."""

    def begin(self) -> None:
        """Nothing to set up."""

    def end(self, *, aborted: bool) -> None:
        """Nothing to leave."""


def next_cursor(current: Cursor | None, last_event: tuple[str, int] | None) -> Cursor | None:
    """The cursor after a batch whose outcomes are committed with it: its last event, never going back."""
    if last_event is None:
        return None
    candidate = Cursor(*last_event)
    if current is not None and candidate.created < current.created:
        return None
    return candidate


def in_batches(events: Iterable[Mapping[str, Any]], size: int, commit: Commit, *, late: bool = False,
               more: Callable[[], bool] = lambda: True) -> Iterator[Batch]:
    """Hold events as they arrive and cut them into batches of `size`. `more()` is asked after each
    event; False ends the stream there (a limit was reached), without reading one event too many."""
    stream = iter(events)
    while True:
        with gc_pause.paused():  # resumed while the batch is applied (gc_pause.py)
            held, last = _fill(stream, size, more)
        if held:
            yield Batch(held, commit, late=late)
        if last:
            return


def _fill(stream: Iterator[Mapping[str, Any]], size: int, more: Callable[[], bool]) -> tuple[list[HeldEvent], bool]:
    """Up to `size` events of `stream`, held; and whether the stream ended (or `more()` said stop)."""
    held: list[HeldEvent] = []
    for event in stream:
        held.append(HeldEvent.of(event))
        if not more():
            return held, True
        if len(held) >= size:
            return held, False
    return held, True
