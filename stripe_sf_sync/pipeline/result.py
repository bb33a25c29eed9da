"""What one batch did: every event's outcome, and what state should keep of it (planning starts it, the
write stage completes it, the run commits it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stripe_sf_sync.model import CachedCustomer
from stripe_sf_sync.state.records import Outcome

Versions = dict[str, tuple[int, str]]  # Stripe object id -> (newest applied event time, its id)


@dataclass
class BatchResult:
    """What one batch did: every event's outcome, and what state should keep of it."""

    events_read: int = 0
    skipped_duplicate: int = 0
    records_written: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    versions: Versions = field(default_factory=dict)
    customers: list[CachedCustomer] = field(default_factory=list)
    last_event: tuple[str, int] | None = None  # (id, created) of the batch's last event, for the cursor
    # A stop cut the batch short: only its first `cut` events have outcomes (and are to be committed).
    cut: int | None = None
    duplicates: list[str] = field(default_factory=list, repr=False)  # ids skipped as already recorded

    def count(self, kind: str) -> int:
        """Outcomes of one kind (applied, stale, ignored, dead_letter)."""
        return sum(1 for o in self.outcomes if o.kind == kind)


def outcome(change: Any, kind: Any, reason: str | None, *, object_id: bool = True) -> Outcome:
    """The outcome of a parsed change (`object_id`: recorded with its Stripe object's id)."""
    meta = change.meta
    return Outcome(meta.event_id, meta.event_type, meta.created, kind,
                   object_id=change.object_id if object_id else None, reason=reason)
