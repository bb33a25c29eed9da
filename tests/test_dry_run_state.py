"""The dry run's state fails closed (issue 21): its reads go through to the real store, its writes are no-ops,
and a method it does not know is refused, so a write method added to the store later cannot write during a
dry run."""

from __future__ import annotations

import inspect

import pytest

from stripe_sf_sync.state import Cursor, StateStore
from stripe_sf_sync.state.dry_run import DryRunState
from stripe_sf_sync.state.postgres import PgStateStore

# The store's methods a dry run never calls through its state: opening and closing the store, the lock (taken
# on the real store before it is wrapped), and the writes of commands that have no dry run.
REFUSED = {"open", "open_read_only", "close", "acquire_lock", "release_lock", "inbox_add", "prune_inbox",
           "drop_dead_letter", "prune_runs", "wrapper", "migrate_from", "connect", "execute", "executemany",
           "keys", "make", "start", "stop", "renewed", "overdue"}


def _public_methods(cls: type) -> set[str]:
    return {name for name, value in inspect.getmembers(cls) if not name.startswith("_") and callable(value)
            and not isinstance(value, type)}


@pytest.mark.parametrize("store", [StateStore, PgStateStore], ids=["sqlite", "postgres"])
def test_every_method_of_a_store_is_a_read_a_no_op_or_refused(store: type) -> None:
    """A new state method fails this test until it is classified in DryRunState (a read, or a no-op)."""
    no_ops = _public_methods(DryRunState) - {"READS"}
    unclassified = _public_methods(store) - DryRunState.READS - no_ops - REFUSED
    assert unclassified == set(), f"classify in DryRunState: {sorted(unclassified)}"


def test_reads_go_through_writes_change_nothing_and_others_are_refused(tmp_path) -> None:
    with StateStore.open(tmp_path / "state.sqlite") as real:
        real.set_meta("k", "real")
        dry = DryRunState(real)
        assert dry.get_meta("k") == "real" and dry.cursor() is None
        dry.set_meta("k", "dry")
        dry.set_cursor(Cursor("evt_1", 1_700_000_000))
        dry.commit_batch([], cursor=Cursor("evt_2", 1_700_000_001), versions={})
        assert dry.start_run("sync") == 0
        assert real.get_meta("k") == "real" and real.cursor() is None and real.recent_runs(5) == []
        with pytest.raises(AttributeError, match="drop_dead_letter"):
            dry.drop_dead_letter("evt_1")
        assert dry.location == real.location  # a plain attribute, not a method: read through
