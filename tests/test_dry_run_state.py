"""The dry run's state fails closed (issue 21): it implements the store's interface explicitly, its reads go
through to the real store, its writes are no-ops, and it has nothing else, so a write method added to the
store later cannot write during a dry run."""

from __future__ import annotations

import inspect

import pytest

from stripe_sf_sync.state import Cursor, LockAndUpkeep, RunState, RunWrites, StateReads, StateStore
from stripe_sf_sync.state.dry_run import DryRunState

from .state_backends import protocol_members


def _public(cls: type) -> set[str]:
    return {name for name, value in inspect.getmembers(cls) if not name.startswith("_")
            and (callable(value) or isinstance(value, property)) and not isinstance(value, type)}


# The store's constructors (classmethods), which a dry run's state has no use for.
OPENERS = {"open", "open_read_only"}


def test_every_operation_of_the_store_is_a_read_a_write_or_one_a_dry_run_never_makes() -> None:
    """A new store method fails this test until it is in the interface: a read (StateReads), a run's write
    (RunWrites: DryRunState gets a no-op), or LockAndUpkeep (never through a dry run)."""
    classified = (protocol_members(StateReads) | protocol_members(RunWrites) | protocol_members(LockAndUpkeep)
                  | OPENERS)
    assert _public(StateStore) - classified == set(), "add it to state/interface.py (and DryRunState)"


def test_the_dry_run_state_has_every_operation_of_a_run_and_nothing_else() -> None:
    """Each operation of RunState is written out in DryRunState itself (no pass-through); none of the
    operations a dry run never makes is there."""
    own = {name for name in vars(DryRunState) if not name.startswith("_")}
    run_state = protocol_members(RunState)
    assert own == run_state, f"DryRunState must define exactly RunState's operations: {sorted(own ^ run_state)}"
    assert not hasattr(DryRunState, "__getattr__")
    assert not protocol_members(LockAndUpkeep) & set(dir(DryRunState))


def test_reads_go_through_writes_change_nothing_and_others_are_not_there(tmp_path) -> None:
    with StateStore.open(tmp_path / "state.sqlite") as real:
        real.set_meta("k", "real")
        dry = DryRunState(real)
        assert dry.get_meta("k") == "real" and dry.cursor() is None
        dry.set_meta("k", "dry")
        dry.set_cursor(Cursor("evt_1", 1_700_000_000))
        dry.commit_batch([], cursor=Cursor("evt_2", 1_700_000_001), versions={}, run_id=None)
        assert dry.start_run("sync") == 0
        assert real.get_meta("k") == "real" and real.cursor() is None and real.recent_runs(5) == []
        with pytest.raises(AttributeError, match="drop_dead_letter"):
            dry.drop_dead_letter("evt_1")  # type: ignore[attr-defined]
        assert dry.location == real.location and dry.backend == "sqlite"
