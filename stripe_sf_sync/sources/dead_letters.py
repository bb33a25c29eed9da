"""`stripe-sf dlq retry`'s source: dead-lettered events sent again, oldest first; each success closes its dead
letter in the commit that records it, and the cursor does not move."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from stripe_sf_sync.pipeline.batch import BatchResult
from stripe_sf_sync.pipeline.batches import Batch, DeadLetterCommit, NoRunState, in_batches


class DeadLetters(NoRunState):
    """`stripe-sf dlq retry`: dead-lettered events again, oldest first; the cursor does not move."""

    interrupted = False
    objects: dict[str, dict[str, Any]] = {}  # noqa: RUF012 - never written

    def __init__(self, events: Sequence[Mapping[str, Any]], *, batch_size: int) -> None:
        self._events = sorted(events, key=lambda e: int(e.get("created") or 0))
        self._size = batch_size

    def batches(self) -> Iterator[Batch]:
        """The dead letters, in batches."""
        yield from in_batches(self._events, self._size, DeadLetterCommit())

    def applied(self, batch: Batch, result: BatchResult) -> None:
        """Nothing to track: each success closes its dead letter in the commit."""
