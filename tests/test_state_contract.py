"""The state store's contract (issue 21): one suite of the interface's behaviour (state/interface.py), run on
each implementation — the SQLite store, the PostgreSQL store (a real throwaway server; skipped without its
binaries, failed instead when STRIPE_SF_REQUIRE_POSTGRES=1) and, for its reads, the dry run's state over each:
it answers every read as the store does, and its writes change nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stripe_sf_sync.config import masked_url
from stripe_sf_sync.errors import LockHeldError, StateError
from stripe_sf_sync.model import CachedCustomer
from stripe_sf_sync.state import (
    LEDGER_RETENTION_S,
    Cursor,
    Outcome,
    RunState,
    RunWrites,
    StateReads,
    StateStore,
)
from stripe_sf_sync.state.dry_run import DryRunState

from .state_backends import STATE_NAME, Backend, protocol_members

T0 = 1_700_000_000


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return Backend(request.param, tmp_path / STATE_NAME, url)


@pytest.fixture
def store(backend: Backend) -> Iterator[StateStore]:
    with backend.open() as st:
        yield st


def _applied(event_id: str, created: int, object_id: str | None = None) -> Outcome:
    return Outcome(event_id, "customer.subscription.updated", created, "applied", object_id=object_id)


def _dead(event_id: str, created: int, code: str = "NO_ACCOUNT") -> Outcome:
    return Outcome(event_id, "invoice.paid", created, "dead_letter", reason="no Account", code=code,
                   payload=f'{{"id": "{event_id}"}}')


# --- the contract: each test runs on both stores -------------------------------------------------

def test_it_names_its_backend_and_location_and_checks_itself(store: StateStore, backend: Backend) -> None:
    assert store.backend == backend.name and store.integrity_check() == "ok"
    assert store.location == (str(backend.path) if backend.url is None else masked_url(backend.url))


def test_meta_round_trip(store: StateStore) -> None:
    assert store.get_meta("k") is None
    store.set_meta("k", "1")
    store.set_meta("k", "2")
    assert store.get_meta("k") == "2"
    store.delete_meta("k")
    assert store.get_meta("k") is None


def test_cursor_round_trip_never_goes_back(store: StateStore) -> None:
    assert store.cursor() is None
    store.set_cursor(Cursor("evt_2", T0 + 2), meta={"handed_off": "yes"})
    assert store.cursor() == Cursor("evt_2", T0 + 2) and store.get_meta("handed_off") == "yes"
    with pytest.raises(StateError, match="back"):
        store.set_cursor(Cursor("evt_1", T0 + 1), meta={"handed_off": "again"})
    assert store.cursor() == Cursor("evt_2", T0 + 2) and store.get_meta("handed_off") == "yes"  # all or nothing
    store.commit_batch([_applied("evt_3", T0 + 3)], cursor=None, versions={}, run_id=None)
    assert store.cursor() == Cursor("evt_2", T0 + 2)  # a commit without a cursor leaves it


def test_commit_batch_records_outcomes_versions_cursor_and_meta_together(store: StateStore) -> None:
    store.commit_batch([_applied("evt_1", T0 + 1, "sub_1"), _dead("evt_2", T0 + 2)], cursor=Cursor("evt_2", T0 + 2),
                       versions={"sub_1": (T0 + 1, "evt_1")}, run_id=None, meta={"checkpoint": "c1"})
    assert store.outcomes_for(["evt_1", "evt_2", "evt_9"]) == {"evt_1": "applied", "evt_2": "dead_letter"}
    assert store.versions_for(["sub_1", "sub_9"]) == {"sub_1": T0 + 1}
    assert store.version_events_for(["sub_1"]) == {"sub_1": (T0 + 1, "evt_1")}
    assert store.cursor() == Cursor("evt_2", T0 + 2) and store.get_meta("checkpoint") == "c1"
    store.commit_batch([], cursor=None, versions={"sub_1": (T0, "evt_0")}, run_id=None)
    assert store.version_events_for(["sub_1"]) == {"sub_1": (T0 + 1, "evt_1")}  # an older version never wins
    with pytest.raises(StateError):  # a cursor going back rolls the whole batch back
        store.commit_batch([_applied("evt_5", T0 + 5)], cursor=Cursor("evt_0", T0), versions={}, run_id=None)
    assert store.outcomes_for(["evt_5"]) == {}


def test_many_keys_are_read_in_chunks(store: StateStore) -> None:
    outcomes = [_applied(f"evt_{i}", T0 + i, f"sub_{i}") for i in range(1200)]
    store.commit_batch(outcomes, cursor=None, versions={o.object_id or "": (o.created, o.event_id)
                                                        for o in outcomes}, run_id=None)
    assert len(store.outcomes_for([o.event_id for o in outcomes])) == 1200
    assert len(store.versions_for(f"sub_{i}" for i in range(1200))) == 1200


def test_dead_letters_count_attempts_resolve_and_drop(store: StateStore) -> None:
    store.commit_batch([_dead("evt_1", T0 + 1), _dead("evt_2", T0 + 2)], cursor=None, versions={}, run_id=None)
    store.commit_batch([_dead("evt_1", T0 + 1, "STILL")], cursor=None, versions={}, run_id=None)
    letter = store.dead_letter("evt_1")
    assert letter is not None and letter.attempts == 2 and letter.error_code == "STILL" and letter.status == "open"
    assert [d.event_id for d in store.dead_letters()] == ["evt_1", "evt_2"] and store.dead_letter_count() == 2
    assert [d.event_id for d in store.dead_letters(limit=1)] == ["evt_1"]
    store.commit_batch([_applied("evt_1", T0 + 1)], cursor=None, versions={}, run_id=None, retried=True)
    assert store.dead_letters(status="resolved")[0].event_id == "evt_1" and store.dead_letter_count() == 1
    assert store.drop_dead_letter("evt_2") and not store.drop_dead_letter("evt_2")
    assert store.dead_letter_count() == 0 and [d.event_id for d in store.dead_letters(status="dropped")] == ["evt_2"]
    assert store.dead_letter("evt_9") is None


def test_the_inbox_keeps_an_event_once_and_a_batch_marks_it_done(store: StateStore) -> None:
    assert store.inbox_add("evt_b", T0 + 2, '{"id": "evt_b"}', 2.0)
    assert store.inbox_add("evt_a", T0 + 1, '{"id": "evt_a"}', 3.0)
    assert not store.inbox_add("evt_a", T0 + 1, "{}", 4.0)  # Stripe delivers at least once
    pending = store.inbox_pending(10)
    assert [e.event_id for e in pending] == ["evt_a", "evt_b"] and pending[0].payload == '{"id": "evt_a"}'
    assert store.inbox_depth() == 2 and len(store.inbox_pending(1)) == 1
    store.commit_batch([_applied("evt_a", T0 + 1)], cursor=None, versions={}, run_id=None, inbox_done=["evt_a"])
    assert [e.event_id for e in store.inbox_pending(10)] == ["evt_b"] and store.inbox_depth() == 1
    assert store.prune_inbox(now=T0) == 0  # applied, but not past the ledger's retention yet
    assert store.prune_inbox(now=T0 + LEDGER_RETENTION_S + 10) == 1 and store.inbox_depth() == 1


def test_customers_are_kept_and_never_replaced_by_an_older_copy(store: StateStore) -> None:
    store.remember_customers([CachedCustomer("cus_1", {"sf": "001A"}, "Acme", False, T0 + 5)])
    store.remember_customers([CachedCustomer("cus_1", {"sf": "001B"}, "Old", False, T0 + 1)])
    store.remember_customers([])
    assert store.customers_for(["cus_1", "cus_9"]) == {
        "cus_1": CachedCustomer("cus_1", {"sf": "001A"}, "Acme", False, T0 + 5)}


def test_a_customers_email_is_kept_none_when_not_known_and_empty_when_it_has_none(store: StateStore) -> None:
    store.remember_customers([CachedCustomer("cus_1", {}, "Acme", False, T0, "ap@acme.test"),
                              CachedCustomer("cus_2", {}, None, False, T0, ""),
                              CachedCustomer("cus_3", {}, None, False, T0)])
    got = store.customers_for(["cus_1", "cus_2", "cus_3"])
    assert {c: got[c].email for c in got} == {"cus_1": "ap@acme.test", "cus_2": "", "cus_3": None}
    # A newer copy's email replaces it; a newer copy that does not know it keeps the one known.
    store.remember_customers([CachedCustomer("cus_1", {}, "Acme", False, T0 + 2, "billing@acme.test"),
                              CachedCustomer("cus_2", {}, None, False, T0 + 2)])
    got = store.customers_for(["cus_1", "cus_2"])
    assert got["cus_1"].email == "billing@acme.test" and got["cus_2"].email == ""


def test_the_ledger_is_pruned_past_its_retention(store: StateStore) -> None:
    store.commit_batch([_applied("evt_old", T0)], cursor=None, versions={}, run_id=None)
    assert store.prune_ledger(now=T0) == 0
    assert store.prune_ledger(now=int(time.time()) + LEDGER_RETENTION_S + 10) == 1
    assert store.outcomes_for(["evt_old"]) == {}


def test_runs_are_recorded_listed_pruned_and_discarded(store: StateStore) -> None:
    first = store.start_run("sync")
    store.finish_run(first, 0, {"applied": 2})
    failed = store.start_run("sync")
    store.finish_run(failed, 1, {"error": "x"})
    mistaken = store.start_run("backfill")
    store.discard_run(mistaken)
    runs = store.recent_runs(5)
    assert [r["run_id"] for r in runs] == [failed, first] and runs[1]["summary"] == {"applied": 2}
    assert runs[0]["command"] == "sync" and runs[0]["exit_code"] == 1
    last = store.last_run_of("sync")
    assert last is not None and last["run_id"] == failed and last["summary"] == {"error": "x"}
    assert store.last_run_of("backfill") is None and store.last_success("backfill") is None
    assert store.last_success("sync") is not None
    for _ in range(3):
        store.finish_run(store.start_run("sync"), 1, {})
    assert store.prune_runs("sync", keep=2) == 2  # the newest two and the newest that did its work stay
    assert [r["run_id"] for r in store.recent_runs(10)][-1] == first


def test_the_run_lock_is_exclusive_and_probed_without_taking_it(backend: Backend) -> None:
    with backend.open() as holder, backend.open() as other:
        assert not other.lock_held()
        holder.acquire_lock()
        assert other.lock_held() and holder.lock_held()
        with pytest.raises(LockHeldError):
            other.acquire_lock()
        holder.release_lock()
        assert not other.lock_held()
        other.acquire_lock()
        other.release_lock()


# --- the dry run's state over each store -----------------------------------------------------------

def _fill(store: StateStore) -> None:
    """A little of everything, for the dry run to read."""
    store.set_meta("k", "v")
    store.remember_customers([CachedCustomer("cus_1", {"sf": "001A"}, "Acme", False, T0)])
    store.commit_batch([_applied("evt_1", T0 + 1, "sub_1"), _dead("evt_2", T0 + 2)], cursor=Cursor("evt_2", T0 + 2),
                       versions={"sub_1": (T0 + 1, "evt_1")}, run_id=None)
    store.inbox_add("evt_3", T0 + 3, "{}", 1.0)
    store.finish_run(store.start_run("sync"), 0, {"applied": 1})


# Every read of the interface, with its arguments: the dry run must answer each as the store does.
READS: dict[str, Callable[[StateReads], Any]] = {
    "backend": lambda s: s.backend,
    "location": lambda s: s.location,
    "lock_held": lambda s: s.lock_held(),
    "get_meta": lambda s: (s.get_meta("k"), s.get_meta("missing")),
    "cursor": lambda s: s.cursor(),
    "outcomes_for": lambda s: s.outcomes_for(["evt_1", "evt_2", "evt_9"]),
    "versions_for": lambda s: s.versions_for(["sub_1", "sub_9"]),
    "version_events_for": lambda s: s.version_events_for(["sub_1"]),
    "customers_for": lambda s: s.customers_for(["cus_1", "cus_9"]),
    "inbox_pending": lambda s: s.inbox_pending(10),
    "inbox_depth": lambda s: s.inbox_depth(),
    "dead_letters": lambda s: (s.dead_letters(), s.dead_letters(status="resolved", limit=5)),
    "dead_letter": lambda s: (s.dead_letter("evt_2"), s.dead_letter("evt_9")),
    "dead_letter_count": lambda s: s.dead_letter_count(),
    "last_success": lambda s: s.last_success("sync"),
    "recent_runs": lambda s: s.recent_runs(5),
    "last_run_of": lambda s: s.last_run_of("sync"),
    "integrity_check": lambda s: s.integrity_check(),
}

# Every write a run makes: the dry run must make none of them.
WRITES: dict[str, Callable[[RunWrites], Any]] = {
    "set_meta": lambda s: s.set_meta("k", "dry"),
    "delete_meta": lambda s: s.delete_meta("k"),
    "set_cursor": lambda s: s.set_cursor(Cursor("evt_9", T0 + 9), meta={"k": "dry"}),
    "remember_customers": lambda s: s.remember_customers([CachedCustomer("cus_1", {}, "Dry", True, T0 + 9)]),
    "commit_batch": lambda s: s.commit_batch([_applied("evt_9", T0 + 9, "sub_1"), _dead("evt_8", T0 + 8)],
                                             cursor=Cursor("evt_9", T0 + 9), versions={"sub_1": (T0 + 9, "evt_9")},
                                             run_id=None, retried=True, meta={"k": "dry"}, inbox_done=["evt_3"]),
    "prune_ledger": lambda s: s.prune_ledger(now=int(time.time()) + 10 * LEDGER_RETENTION_S),
    "start_run": lambda s: s.start_run("sync"),
    "finish_run": lambda s: s.finish_run(1, 1, {"dry": True}),
    "discard_run": lambda s: s.discard_run(1),
}


def test_the_suite_covers_every_operation_of_a_run() -> None:
    assert set(READS) == protocol_members(StateReads) and set(WRITES) == protocol_members(RunWrites)
    assert set(READS) | set(WRITES) == protocol_members(RunState)


def test_the_dry_run_reads_what_the_store_holds_and_its_writes_change_nothing(store: StateStore) -> None:
    _fill(store)
    dry = DryRunState(store)
    before = {name: read(store) for name, read in READS.items()}
    assert {name: read(dry) for name, read in READS.items()} == before
    for write in WRITES.values():
        write(dry)
    assert dry.start_run("sync") == 0 and dry.prune_ledger() == 0
    assert {name: read(store) for name, read in READS.items()} == before


def test_the_interface_satisfies_every_protocol_its_consumers_declare() -> None:
    """mypy on tests/state_ports_typing.py: a pipeline protocol that asks state for more than the interface
    offers (or with another signature) fails here."""
    typing_file = Path(__file__).with_name("state_ports_typing.py")
    # Errors in the package itself are CI's mypy step's (at the newest versions); here only the assignments of
    # this file count, whatever mypy and stubs the lowest allowed versions bring.
    done = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", "--follow-imports=silent",
                           str(typing_file)],
                          capture_output=True, text=True, cwd=typing_file.parent.parent, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
