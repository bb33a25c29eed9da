"""`stripe-sf serve`'s source: verified webhook events from the inbox; each batch marks its entries done in
the transaction that records their outcomes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from stripe_sf_sync.pipeline.batch import BatchResult
from stripe_sf_sync.pipeline.batches import Batch, InboxCommit, NoRunState
from stripe_sf_sync.pipeline.events import HeldEvent
from stripe_sf_sync.state.records import InboxEntry


class InboxStore(Protocol):
    """What the inbox source reads from state."""

    def inbox_pending(self, limit: int) -> Sequence[InboxEntry]:
        """Pending inbox entries, oldest event first."""


class InboxEvents(NoRunState):
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
            yield Batch([HeldEvent.of(_decoded(e)) for e in chunk], InboxCommit())

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
