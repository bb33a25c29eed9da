"""The state a dry run sees: it reads the real store and writes nothing, failing closed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from stripe_sf_sync.model import CachedCustomer
from stripe_sf_sync.state.interface import StateReads
from stripe_sf_sync.state.records import Cursor, DeadLetter, InboxEntry, Outcome

if TYPE_CHECKING:
    from stripe_sf_sync.state.interface import RunState


class DryRunState:
    """The state a dry run sees (`RunState`): every read of the interface goes to the real store, and every
    write is a no-op written out below.

    It fails closed: it has the interface's methods and nothing else (no pass-through), so an operation added
    to the store but not here is not there in a dry run. mypy checks that this class has every operation of
    `RunState` (the end of this module), and tests/test_dry_run_state.py that every operation of the store is
    a read, a no-op here, or one a dry run never makes (`LockAndUpkeep`)."""

    def __init__(self, state: StateReads) -> None:
        self._state = state

    # --- reads: the real store's ------------------------------------------------------------
    @property
    def backend(self) -> str:
        """The real store's."""
        return self._state.backend

    @property
    def location(self) -> str:
        """The real store's."""
        return self._state.location

    def lock_held(self) -> bool:
        """The real store's."""
        return self._state.lock_held()

    def get_meta(self, key: str) -> str | None:
        """The real store's."""
        return self._state.get_meta(key)

    def cursor(self) -> Cursor | None:
        """The real store's."""
        return self._state.cursor()

    def outcomes_for(self, event_ids: Sequence[str]) -> dict[str, str]:
        """The real store's."""
        return self._state.outcomes_for(event_ids)

    def versions_for(self, object_ids: Iterable[str]) -> dict[str, int]:
        """The real store's."""
        return self._state.versions_for(object_ids)

    def version_events_for(self, object_ids: Iterable[str]) -> dict[str, tuple[int, str | None]]:
        """The real store's."""
        return self._state.version_events_for(object_ids)

    def customers_for(self, customer_ids: Iterable[str]) -> dict[str, CachedCustomer]:
        """The real store's."""
        return self._state.customers_for(customer_ids)

    def inbox_pending(self, limit: int) -> list[InboxEntry]:
        """The real store's."""
        return self._state.inbox_pending(limit)

    def inbox_depth(self) -> int:
        """The real store's."""
        return self._state.inbox_depth()

    def dead_letters(self, *, status: str = "open", limit: int | None = None) -> list[DeadLetter]:
        """The real store's."""
        return self._state.dead_letters(status=status, limit=limit)

    def dead_letter(self, event_id: str) -> DeadLetter | None:
        """The real store's."""
        return self._state.dead_letter(event_id)

    def dead_letter_count(self) -> int:
        """The real store's."""
        return self._state.dead_letter_count()

    def last_success(self, command: str) -> int | None:
        """The real store's."""
        return self._state.last_success(command)

    def recent_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        """The real store's."""
        return self._state.recent_runs(limit)

    def last_run_of(self, command: str) -> dict[str, Any] | None:
        """The real store's."""
        return self._state.last_run_of(command)

    def integrity_check(self) -> str:
        """The real store's."""
        return self._state.integrity_check()

    # --- writes: none ------------------------------------------------------------------------
    def set_meta(self, key: str, value: str) -> None:
        """Nothing is stored."""

    def delete_meta(self, key: str) -> None:
        """Nothing is stored."""

    def set_cursor(self, cursor: Cursor, *, meta: dict[str, str] | None = None) -> None:
        """Nothing is stored."""

    def remember_customers(self, customers: Iterable[CachedCustomer]) -> None:
        """Nothing is stored."""

    def commit_batch(self, outcomes: Sequence[Outcome], *, cursor: Cursor | None,
                     versions: dict[str, tuple[int, str]], run_id: int | None,
                     retried: bool = False, meta: dict[str, str] | None = None,
                     inbox_done: Sequence[str] = ()) -> None:
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


if TYPE_CHECKING:
    def _is_run_state(dry: DryRunState) -> RunState:
        """mypy checks here that a dry run's state has every operation of `RunState`, with its signature."""
        return dry
