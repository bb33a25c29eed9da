"""The state a dry run sees: it reads the real store and writes nothing, failing closed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from stripe_sf_sync.model import CachedCustomer
from stripe_sf_sync.state import Cursor, Outcome, StateStore


class DryRunState:
    """The state a dry run sees: everything reads as it is, and nothing is written.

    It fails closed: the store's reads named in READS go through, each write is a no-op defined below, and any
    other method of the store is refused, so a write method added to the store later cannot write during a dry
    run (tests/test_dry_run_state.py makes every new method be classified here)."""

    READS = frozenset({
        "location", "lock_held", "get_meta", "cursor", "outcomes_for", "versions_for", "version_events_for",
        "customers_for", "inbox_pending", "inbox_depth", "dead_letters", "dead_letter", "dead_letter_count",
        "last_success", "recent_runs", "last_run_of", "integrity_check",
    })

    def __init__(self, state: StateStore) -> None:
        self._state = state

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._state, name)
        if name in self.READS or not callable(value):
            return value
        raise AttributeError(f"a dry run's state has no {name}(): it is not a known read, and a dry run writes "
                             "nothing. Add it to DryRunState.READS if it only reads, else a no-op to DryRunState.")

    def set_meta(self, key: str, value: str) -> None:
        """Nothing is stored."""

    def delete_meta(self, key: str) -> None:
        """Nothing is stored."""

    def set_cursor(self, cursor: Cursor, *, meta: dict[str, str] | None = None) -> None:
        """Nothing is stored."""

    def remember_customers(self, customers: Iterable[CachedCustomer]) -> None:
        """Nothing is stored."""

    def commit_batch(self, outcomes: Sequence[Outcome], **kwargs: Any) -> None:
        """Nothing is stored."""

    def prune_ledger(self, now: int | None = None) -> int:
        """Nothing is pruned."""
        return 0

    def start_run(self, command: str) -> int:
        """A dry run is not recorded."""
        return 0

    def finish_run(self, run_id: int, exit_code: int, summary: dict[str, Any]) -> None:
        """A dry run is not recorded."""

    def discard_run(self, run_id: int) -> None:
        """A dry run is not recorded."""
