"""Sources: each turns what it reads into batches, each batch with the policy its commit follows.

sync moves the cursor; dead-letter retry closes dead letters and leaves the cursor alone; backfill
(backfill.py) commits a checkpoint; the webhook inbox (`stripe-sf serve`) marks its entries done.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stripe_sf_sync import gc_pause
from stripe_sf_sync.pipeline.batch import BatchResult
from stripe_sf_sync.pipeline.cursor import HANDOFF_SINCE_KEY, CursorState, EventLister, sync_start
from stripe_sf_sync.pipeline.events import HeldEvent
from stripe_sf_sync.pipeline.stop import Stop
from stripe_sf_sync.state import InboxEntry


@dataclass(frozen=True)
class CommitPolicy:
    """How a batch's outcomes are committed."""

    advance_cursor: bool = False  # the cursor moves to the batch's last event, in the same transaction
    retried: bool = False  # dead letters sent again: a success closes them
    bulk: bool = False  # written through Bulk API 2.0
    late: bool = False  # listed late, behind the cursor (counted as such)
    meta: Mapping[str, str] | None = None  # state values committed with the batch (checkpoint, floor)
    inbox: bool = False  # webhook inbox entries: marked done with the batch's outcomes
    # Object versions committed with the batch besides its events' own (backfill: who decides an Account's status)
    versions: Mapping[str, tuple[int, str]] | None = None


@dataclass
class Batch:
    """Events to apply together, and how to commit them."""

    events: list[HeldEvent]
    policy: CommitPolicy = field(default_factory=CommitPolicy)
    # The policy that commits only the first n events, when a stop cut the batch short (backfill: the checkpoint
    # of the pages those events came from). None: the batch's own policy does (sync's cursor follows the last
    # event committed; dead letters and inbox entries are each closed by their own outcome).
    partial: Callable[[int], CommitPolicy] | None = field(default=None, repr=False)

    def first(self, n: int) -> Batch:
        """The batch cut to its first n events, with the policy that commits just them."""
        return Batch(self.events[:n], self.partial(n) if self.partial is not None else self.policy)


class Source(Protocol):
    """Something that yields batches; told what each batch did."""

    # Read-only to the run: a plain attribute satisfies them, and so do backfill's properties.
    @property
    def interrupted(self) -> bool:
        """Stopped on request (Ctrl-C, SIGTERM) before its end."""

    @property
    def objects(self) -> dict[str, dict[str, Any]]:
        """Counts per object type, for sources that keep them (backfill)."""

    def batches(self) -> Iterator[Batch]:
        """The batches, in the order they must be applied."""

    def applied(self, batch: Batch, result: BatchResult) -> None:
        """A batch was applied and committed."""


def in_batches(events: Iterable[Mapping[str, Any]], size: int, policy: CommitPolicy, *,
               more: Callable[[], bool] = lambda: True) -> Iterator[Batch]:
    """Hold events as they arrive and cut them into batches of `size`. `more()` is asked after each
    event; False ends the stream there (a limit was reached), without reading one event too many."""
    stream = iter(events)
    while True:
        with gc_pause.paused():  # resumed while the batch is applied (gc_pause.py)
            held, last = _fill(stream, size, more)
        if held:
            yield Batch(held, policy)
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


@dataclass
class SyncEvents:
    """`stripe-sf sync`: events listed late behind the cursor first (the cursor stays), then every event
    after it, oldest first (the cursor follows)."""

    source: EventLister
    state: CursorState
    since: int | None
    lookback: int
    clock: Callable[[], float]
    batch_size: int
    max_events: int | None = None
    rewind: bool = False  # --since while a cursor exists: re-read from there (the ledger skips what is recorded)
    stop: Stop | None = None  # a signal ends the batch being read, so that what was read is applied and committed
    progress: Callable[[], None] | None = None  # told after each committed batch (the terminal's display)
    interrupted: bool = False
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Every event Stripe listed when the run started was read and committed: only then is the cursor current
    # as of the run's start (status --check's cursor age). A stop (signal, budget, --max-events) leaves it False.
    read_to_end: bool = False

    def __post_init__(self) -> None:
        self._left = self.max_events

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.requested

    def _more(self) -> bool:
        """Count one event read; False once `max_events` have been, or when a stop was asked for."""
        if self._left is not None:
            self._left -= 1
            if self._left <= 0:
                return False
        return not self._stopping()

    def batches(self) -> Iterator[Batch]:
        """Late events, then the new ones."""
        start = sync_start(self.source, self.state, since=self.since, lookback=self.lookback, clock=self.clock,
                           rewind=self.rewind)
        yield from in_batches(start.late, self.batch_size, CommitPolicy(late=True), more=self._more)
        if (self._left is not None and self._left <= 0) or self._stopping():
            return
        found = False
        for batch in in_batches(start.events, self.batch_size, CommitPolicy(advance_cursor=True, meta=start.meta),
                                more=self._more):
            found = True
            yield batch
        if not found and self.since is not None and start.meta is not None:
            # A first `--since` that found no event still records where sync starts, committed like a batch
            # (a dry run's state keeps nothing): the next plain `sync` lists from there.
            yield Batch([], CommitPolicy(meta={**start.meta, HANDOFF_SINCE_KEY: str(self.since)}))
        # Reached only when the run loop asked for a batch after the last one was committed.
        self.read_to_end = not ((self._left is not None and self._left <= 0) or self._stopping())

    def applied(self, batch: Batch, result: BatchResult) -> None:
        """Nothing to track (the cursor is committed with each batch); the progress display is told."""
        if self.progress is not None:
            self.progress()


class DeadLetters:
    """`stripe-sf dlq retry`: dead-lettered events again, oldest first; the cursor does not move."""

    interrupted = False
    objects: dict[str, dict[str, Any]] = {}  # noqa: RUF012 - never written

    def __init__(self, events: Sequence[Mapping[str, Any]], *, batch_size: int) -> None:
        self._events = sorted(events, key=lambda e: int(e.get("created") or 0))
        self._size = batch_size

    def batches(self) -> Iterator[Batch]:
        """The dead letters, in batches."""
        yield from in_batches(self._events, self._size, CommitPolicy(retried=True))

    def applied(self, batch: Batch, result: BatchResult) -> None:
        """Nothing to track: each success closes its dead letter in the commit."""


class InboxStore(Protocol):
    """What the inbox source reads from state."""

    def inbox_pending(self, limit: int) -> Sequence[InboxEntry]:
        """Pending inbox entries, oldest event first."""


class InboxEvents:
    """`stripe-sf serve`'s worker: verified webhook events from the inbox, oldest first, read once per drain
    (at most `limit`); each batch marks its entries done in the transaction that records their outcomes.
    The cursor does not move: the cursor sync that runs as the safety net finds them in the ledger."""

    interrupted = False
    objects: dict[str, dict[str, Any]] = {}  # noqa: RUF012 - never written

    def __init__(self, state: InboxStore, *, batch_size: int, limit: int,
                 applied: Callable[[list[InboxEntry], BatchResult], None] | None = None) -> None:
        self._state = state
        self._size = batch_size
        self._limit = limit
        self._told = applied
        self._entries: dict[str, InboxEntry] = {}

    def batches(self) -> Iterator[Batch]:
        """The pending entries, in batches."""
        entries = list(self._state.inbox_pending(self._limit))
        self._entries = {e.event_id: e for e in entries}
        for start in range(0, len(entries), self._size):
            chunk = entries[start:start + self._size]
            yield Batch([HeldEvent.of(_decoded(e)) for e in chunk], CommitPolicy(inbox=True))

    def applied(self, batch: Batch, result: BatchResult) -> None:
        """Tell the server (its metrics) which entries were committed."""
        if self._told is not None:
            self._told([self._entries[e.id] for e in batch.events if e.id in self._entries], result)


def _decoded(entry: InboxEntry) -> dict[str, Any]:
    """An inbox entry's event (the receiver stored only JSON objects with an id; anything else is held as a
    bare event, to be dead-lettered with a reason rather than dropped)."""
    try:
        event = json.loads(entry.payload)
    except json.JSONDecodeError:
        event = None
    return event if isinstance(event, dict) else {"id": entry.event_id, "created": entry.created}
