"""`stripe-sf sync`'s source: where a sync starts (`--since`, the stored cursor, or backfill's hand-off),
the lookback re-read behind the cursor, the batches (late events, then the new ones, the cursor moving with
them: only forward, and only with the outcomes it passes), and what a run leaves behind at its end."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from stripe_sf_sync.errors import ConfigError, CursorExpiredError
from stripe_sf_sync.pipeline.batch import BatchResult
from stripe_sf_sync.pipeline.batches import Batch, CursorCommit, OutcomesCommit, in_batches, next_cursor
from stripe_sf_sync.pipeline.stop import Stop
from stripe_sf_sync.state.records import Cursor, Outcome
from stripe_sf_sync.stripe.source import RETENTION_S

HANDOFF_SINCE_KEY = "handoff_since"
READ_THROUGH_KEY = "sync_read_through"  # start of the last sync that read Stripe's event list to its end
# The oldest `created` sync's history covers (`sync --since`, or just after backfill's hand-off event): the
# lookback never re-reads before it, so events from before the history began are never applied.
SYNC_FLOOR_KEY = "sync_floor"

Event = dict[str, Any]


class EventLister(Protocol):
    """The event reads a sync needs (the Stripe edge)."""

    def check_cursor_age(self, cursor_created: int) -> None:
        """Raise CursorExpiredError when Stripe no longer lists events after the cursor."""

    def events_after(self, cursor_id: str) -> Iterator[Event]:
        """Every event newer than the cursor, oldest first."""

    def event_pages(self, since: int, until: int | None = None) -> Iterator[list[Event]]:
        """Pages of events created in [since, until], newest first."""

    def oldest_event_since(self, since: int) -> tuple[str, int] | None:
        """The newest event created before `since`, as a cursor."""

    def first_event_since(self, since: int) -> Event | None:
        """The oldest event created at or after `since`."""


class CursorState(Protocol):
    """What the cursor logic reads from state."""

    def cursor(self) -> Cursor | None:
        """The stored cursor."""

    def get_meta(self, key: str) -> str | None:
        """A stored value."""

    def outcomes_for(self, event_ids: Sequence[str]) -> dict[str, str]:
        """Recorded outcomes of these events."""


@dataclass
class SyncStart:
    """What a sync run reads, in order."""

    late: list[Event]  # listed late, behind the cursor, with no recorded outcome: applied first, oldest first
    events: Iterable[Event]  # after the cursor (or from --since), oldest first
    meta: dict[str, str] | None  # committed with the run's batches: where a new history starts


def sync_start(source: EventLister, state: CursorState, *, since: int | None, lookback: int,
               clock: Callable[[], float], rewind: bool = False) -> SyncStart:
    """Where this run starts: `since` on a first run (or with `rewind`), else the stored cursor (with the
    lookback re-read), else the time a backfill, or a first `--since` that found nothing, handed over at."""
    if since is not None:
        return SyncStart([], _events_since(source, since), _since_meta(state, since, clock=clock, rewind=rewind))
    cursor = state.cursor()
    if cursor is not None:
        source.check_cursor_age(cursor.created)
        floor = state.get_meta(SYNC_FLOOR_KEY)
        late, events = _lookback(source, state, cursor, lookback, int(floor) if floor is not None else 0)
        return SyncStart(late, events, None)
    handoff = state.get_meta(HANDOFF_SINCE_KEY)
    if handoff is not None:  # nothing was listed when sync's history began: start from when it began
        return SyncStart([], _events_since(source, int(handoff)), {SYNC_FLOOR_KEY: handoff})
    raise ConfigError(["there is no saved cursor yet"], source="invocation",
                      hint="For the first run, say where to start: `stripe-sf sync --since 2026-11-01` "
                           "(within the last 30 days), or run `stripe-sf backfill --since DATE` first.")


def _since_meta(state: CursorState, since: int, *, clock: Callable[[], float], rewind: bool) -> dict[str, str]:
    """Check a `--since` (not in the future, within Stripe's retention, `--rewind` when a cursor exists, never
    after the cursor) and return the lookback floor to commit with the run's batches.

    A rewind lowers the floor to `since` when that is earlier, and never raises it: the lookback keeps covering
    what it covered, and history now also starts at `since`."""
    day = datetime.fromtimestamp(since, tz=UTC).isoformat().replace("+00:00", "Z")
    if since > clock():
        raise ConfigError([f"--since {day} is in the future"], source="invocation",
                          hint="Give a date within the last 30 days, e.g. today's: sync then applies events "
                               "from then on.")
    if since < clock() - RETENTION_S:
        day = day[:10]
        raise CursorExpiredError(
            f"--since {day} is past Stripe's 30-day event retention.",
            hint=f"Run `stripe-sf backfill --since {day}` for the older history, then `stripe-sf sync`.")
    cursor = state.cursor()
    if cursor is None:
        return {SYNC_FLOOR_KEY: str(since)}
    at = datetime.fromtimestamp(cursor.created, tz=UTC).isoformat().replace("+00:00", "Z")
    if not rewind:
        raise ConfigError(
            [f"--since {day} would rewind the saved cursor ({cursor.event_id}, {at})"], source="invocation",
            hint="A plain `stripe-sf sync` continues from the cursor. To re-read events from that date, add "
                 "--rewind: events whose outcome is already recorded are not applied again, only unrecorded "
                 "ones (for example those deleted from the state file).")
    if since > cursor.created:
        raise ConfigError(
            [f"--since {day} is after the saved cursor ({cursor.event_id}, {at}): starting there would skip "
             "the events in between"], source="invocation",
            hint="Run `stripe-sf sync` without --since: it continues from the cursor with no gap.")
    floor = state.get_meta(SYNC_FLOOR_KEY)
    return {SYNC_FLOOR_KEY: str(min(int(floor), since) if floor is not None else since)}


class HandOffState(Protocol):
    """The state writes of a hand-off."""

    def cursor(self) -> Cursor | None:
        """The stored cursor."""

    def set_cursor(self, cursor: Cursor, *, meta: dict[str, str] | None = None) -> None:
        """Move the cursor forward, with `meta` in the same transaction."""

    def set_meta(self, key: str, value: str) -> None:
        """Store a value."""


def hand_off(state: HandOffState, newest: tuple[str, int] | None, *, now: int) -> None:
    """Backfill's hand-off to sync: Stripe's newest event becomes the cursor (unless a newer one is stored),
    or, when Stripe lists no event at all, the time sync starts from.

    Sync's history then starts after that event's second: the lookback must not re-apply the events the
    backfill's lists already cover. An event of that same second listed late is the one thing this gives
    up, rather than re-applying the second's other events."""
    current = state.cursor()
    if newest is not None:
        cursor = next_cursor(current, newest)
        if cursor is not None and (current is None or cursor.created > current.created):
            state.set_cursor(cursor, meta={SYNC_FLOOR_KEY: str(newest[1] + 1)})
    elif current is None:
        state.set_meta(HANDOFF_SINCE_KEY, str(now))


def _events_since(source: EventLister, since: int) -> Iterator[Event]:
    before = source.oldest_event_since(since)
    if before is not None:
        yield from source.events_after(before[0])
        return
    first = source.first_event_since(since)
    if first is None:
        return
    yield first
    yield from source.events_after(first["id"])


def _lookback(source: EventLister, state: CursorState, cursor: Cursor, lookback: int,
              floor: int) -> tuple[list[Event], Iterable[Event]]:
    """(The events behind the cursor whose outcome is not recorded, oldest first; the events after it.)

    Stripe's event list is eventually consistent: an event can become listable after newer ones were
    listed, behind the cursor, where `ending_before` never returns it. So each run re-reads the events
    created `lookback` seconds before the cursor's (never before `floor`) and keeps those the ledger has no
    outcome for; the order guard then decides stale or applied as usual.

    One listing from the window's start, newest first, usually answers both: when the cursor is on its
    first page, the events listed before it are every event after the cursor, so a quiet run still costs
    one call. With more than a page of new events, the window is listed on its own and the new events are
    walked from the cursor, oldest first (holding them all would grow with the backlog), up to that first
    page, which ends the walk.
    """
    start = max(cursor.created - lookback, floor)
    if lookback == 0 or start > cursor.created:
        return [], source.events_after(cursor.event_id)
    pages = source.event_pages(start)
    first = next(pages, [])
    at = next((i for i, e in enumerate(first) if e.get("id") == cursor.event_id), None)
    if at is not None:
        late = _unrecorded(state, itertools.chain([first[at + 1:]], pages))
        return late, list(reversed(first[:at]))
    window = source.event_pages(start, until=cursor.created)
    return _unrecorded(state, window, behind=cursor.event_id), _walk_to(source, cursor, first)


def _walk_to(source: EventLister, cursor: Cursor, newest: list[Event]) -> Iterator[Event]:
    """The events after the cursor, oldest first, walked until `newest` (a first page, newest first,
    already read) begins, then `newest` itself: its page is not read twice. Without meeting it (the cursor
    sat inside it after all), the walk goes on to the end and `newest` adds nothing."""
    stop = newest[-1].get("id") if newest else None
    for event in source.events_after(cursor.event_id):
        if stop is not None and event.get("id") == stop:
            # Events listed since then are newer than `newest` (or late, and the next lookback finds them).
            yield from reversed(newest)
            return
        yield event


def _unrecorded(state: CursorState, pages: Iterable[list[Event]], *, behind: str | None = None) -> list[Event]:
    """The events of `pages` (newest first) without a recorded outcome, oldest first. With `behind`, only
    those listed after that event: the ones before it sort after it, and `events_after` returns them.
    Each page is checked against the ledger as it comes, so only what is missing is held."""
    found: list[Event] = []
    for page in pages:
        # An event without an id cannot be matched to its outcome: it was dead-lettered as malformed when
        # the cursor passed it, and re-reading it would dead-letter it again on every run.
        ids = [e["id"] for e in page if isinstance(e.get("id"), str)]
        known = state.outcomes_for(ids)
        for event in page:
            eid = event.get("id")
            if eid == behind:
                found.clear()
            elif isinstance(eid, str) and eid not in known:
                found.append(event)
    found.reverse()
    return found


class SyncState(CursorState, Protocol):
    """What a sync run writes besides its batches' commits: its start and its end."""

    def commit_batch(self, outcomes: Sequence[Outcome], *, cursor: Cursor | None,
                     versions: dict[str, tuple[int, str]], run_id: int | None,
                     meta: dict[str, str] | None = None) -> None:
        """Outcomes, cursor and meta in one transaction."""

    def prune_ledger(self, now: int | None = None) -> int:
        """Forget outcomes older than the ledger keeps."""

    def set_meta(self, key: str, value: str) -> None:
        """Store a value."""


@dataclass
class SyncEvents:
    """`stripe-sf sync`: events listed late behind the cursor first (the cursor stays), then every event
    after it, oldest first (the cursor follows). Its end keeps a first `--since`'s start, prunes the ledger
    and, when it read Stripe's list to the end, records that the cursor is current as of the run's start."""

    source: EventLister
    state: SyncState
    since: int | None
    lookback: int
    clock: Callable[[], float]
    batch_size: int
    max_events: int | None = None
    rewind: bool = False  # --since while a cursor exists: re-read from there (the ledger skips what is recorded)
    stop: Stop | None = None  # a signal ends the batch being read, so that what was read is applied and committed
    progress: Callable[[], None] | None = None  # told after each committed batch (the terminal's display)
    run_id: int | None = None  # the run a first `--since`'s start is committed with (None: a dry run's)
    # At the end of a run not stopped, before it counts as read to the end: one light Salesforce call when none
    # was made lately (service.prove_salesforce_contact); its failure ends the run there.
    prove_contact: Callable[[], None] | None = None
    interrupted: bool = False
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Every event Stripe listed when the run started was read and committed: only then is the cursor current
    # as of the run's start (status --check's cursor age). A stop (signal, budget, --max-events) leaves it False.
    read_to_end: bool = False

    def __post_init__(self) -> None:
        self._left = self.max_events
        self._started = 0

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.requested

    def _more(self) -> bool:
        """Count one event read; False once `max_events` have been, or when a stop was asked for."""
        if self._left is not None:
            self._left -= 1
            if self._left <= 0:
                return False
        return not self._stopping()

    def begin(self) -> None:
        """Note when the run started: what a read to the end makes the cursor current as of."""
        self._started = int(self.clock())

    def batches(self) -> Iterator[Batch]:
        """Late events, then the new ones."""
        start = sync_start(self.source, self.state, since=self.since, lookback=self.lookback, clock=self.clock,
                           rewind=self.rewind)
        yield from in_batches(start.late, self.batch_size, OutcomesCommit(), late=True, more=self._more)
        if (self._left is not None and self._left <= 0) or self._stopping():
            return
        found = False
        for batch in in_batches(start.events, self.batch_size, CursorCommit(meta=start.meta), more=self._more):
            found = True
            yield batch
        if not found and self.since is not None and start.meta is not None:
            # A first `--since` that found no event still records where sync starts, committed like a batch
            # (a dry run's state keeps nothing): the next plain `sync` lists from there.
            yield Batch([], CursorCommit(meta={**start.meta, HANDOFF_SINCE_KEY: str(self.since)}))
        # Reached only when the run loop asked for a batch after the last one was committed.
        self.read_to_end = not ((self._left is not None and self._left <= 0) or self._stopping())

    def applied(self, batch: Batch, result: BatchResult) -> None:
        """Nothing to track (the cursor is committed with each batch); the progress display is told."""
        if self.progress is not None:
            self.progress()

    def end(self, *, aborted: bool) -> None:
        """Keep a first `--since`'s start (also when aborted); then prune the ledger, prove the Salesforce
        contact and record the read-through, unless a stop came."""
        self._keep_start()
        if aborted:
            return
        self.state.prune_ledger(int(self.clock()))
        if not self._stopping() and self.prove_contact is not None:
            self.prove_contact()
        if self.read_to_end and not self._stopping():
            # Read to the end of the list: every event created before this run started is applied, so the
            # cursor is current as of then, even when no new event came (status --check's cursor age). A run
            # stopped before the end (a signal, the API budget, --max-events) leaves it: the cursor's own time is
            # then how current Salesforce is, and the backlog shows in status and the metrics (issue 20).
            self.state.set_meta(READ_THROUGH_KEY, str(self._started))

    def _keep_start(self) -> None:
        """A first `sync --since` that committed no event (stopped by a signal or the API budget before its first
        commit) still records where sync's history starts: the next plain `sync` lists from there."""
        since = self.since
        if since is None or self.state.cursor() is not None or self.state.get_meta(HANDOFF_SINCE_KEY) == str(since):
            return
        self.state.commit_batch([], cursor=None, versions={}, run_id=self.run_id,
                                meta={SYNC_FLOOR_KEY: str(since), HANDOFF_SINCE_KEY: str(since)})
