import os
import sqlite3
import stat
import time

import pytest

from stripe_sf_sync.errors import ExitCode, LockHeldError, StateError
from stripe_sf_sync.model import CachedCustomer
from stripe_sf_sync.state import SCHEMA_VERSION, Cursor, Outcome, StateStore


def test_created_private_with_wal(tmp_path):
    path = tmp_path / "s.sqlite"
    with StateStore.open(path) as st:
        assert st.integrity_check() == "ok"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_is_refused(backend):
    backend.open().close()
    backend.set_schema_version(SCHEMA_VERSION + 1)
    with pytest.raises(StateError) as info:
        backend.open()
    assert "newer" in str(info.value) and "Upgrade" in str(info.value)
    assert info.value.exit_code == ExitCode.STATE


def _as_version_3(backend) -> None:
    """Turn a new store into what version 3 left: customers without their email column."""
    backend.execute("ALTER TABLE customers DROP COLUMN email")
    backend.set_schema_version(3)


def test_a_version_3_state_gains_the_customers_email_and_keeps_its_rows(backend):
    with backend.open() as st:
        st.remember_customers([CachedCustomer("cus_1", {"sf": "001A"}, "Acme", False, 10, "ap@acme.test")])
        st.commit_batch([Outcome("evt_1", "t", 10, "applied", object_id="sub_1")], cursor=Cursor("evt_1", 10),
                        versions={"sub_1": (10, "evt_1")}, run_id=None)
    _as_version_3(backend)
    with pytest.raises(Exception, match="email"):  # either driver's error
        backend.execute("SELECT email FROM customers")
    with backend.open() as st:
        # Kept before version 4: its email is not known (None), everything else is as it was.
        assert st.customers_for(["cus_1"]) == {"cus_1": CachedCustomer("cus_1", {"sf": "001A"}, "Acme", False, 10)}
        assert st.cursor() == Cursor("evt_1", 10) and st.outcomes_for(["evt_1"]) == {"evt_1": "applied"}
        st.remember_customers([CachedCustomer("cus_1", {"sf": "001A"}, "Acme", False, 11, "ap@acme.test")])
        assert st.customers_for(["cus_1"])["cus_1"].email == "ap@acme.test"
    if backend.url is None:
        assert backend.execute("PRAGMA user_version") == [(SCHEMA_VERSION,)]
    else:
        assert backend.execute("SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    with backend.open() as st:  # opened again: nothing left to upgrade
        assert st.customers_for(["cus_1"])["cus_1"].email == "ap@acme.test"


def test_a_version_3_file_whose_upgrade_fails_keeps_version_3(tmp_path, monkeypatch):
    from stripe_sf_sync.state import schema, sqlite

    path = tmp_path / "s.sqlite"
    StateStore.open(path).close()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("ALTER TABLE customers DROP COLUMN email")
    con.execute("PRAGMA user_version = 3")
    con.close()
    monkeypatch.setattr(sqlite, "ADDED_COLUMNS", (*schema.ADDED_COLUMNS, ("no_such_table", "x", "TEXT")))
    with pytest.raises(StateError):
        StateStore.open(path)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 3  # the bump rolled back with the ALTER
    assert "email" not in {r[1] for r in con.execute("PRAGMA table_info(customers)")}
    con.close()


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError) as info:
        StateStore.open(path)
    assert "move it aside" in str(info.value)


def test_second_lock_holder_is_refused_at_once(backend):
    with backend.open() as a, backend.open() as b:
        a.acquire_lock()
        assert b.lock_held()
        with pytest.raises(LockHeldError) as info:
            b.acquire_lock()
        assert str(os.getpid()) in str(info.value)
        a.release_lock()
        assert not b.lock_held()
        b.acquire_lock()


def test_batch_commit_is_atomic_and_cursor_never_goes_back(backend):
    with backend.open() as st:
        outs = [Outcome("evt_1", "t", 10, "applied", object_id="sub_1"),
                Outcome("evt_2", "t", 11, "dead_letter", reason="NO_ACCOUNT", code="NO_ACCOUNT", payload="{}")]
        st.commit_batch(outs, cursor=Cursor("evt_2", 11), versions={"sub_1": (10, "evt_1")}, run_id=None)
        assert st.cursor() == Cursor("evt_2", 11)
        assert st.outcomes_for(["evt_1", "evt_2", "evt_3"]) == {"evt_1": "applied", "evt_2": "dead_letter"}
        assert st.versions_for(["sub_1"]) == {"sub_1": 10}
        assert st.dead_letter_count() == 1
        with pytest.raises(StateError):
            st.commit_batch([Outcome("evt_0", "t", 5, "applied")], cursor=Cursor("evt_0", 5), versions={},
                            run_id=None)
        # the failed transaction left nothing behind
        assert "evt_0" not in st.outcomes_for(["evt_0"])
        # versions only move forward
        st.commit_batch([], cursor=None, versions={"sub_1": (5, "evt_old")}, run_id=None)
        assert st.versions_for(["sub_1"]) == {"sub_1": 10}


def test_dead_letter_attempts_and_resolution(backend):
    with backend.open() as st:
        dl = Outcome("evt_9", "invoice.payment_failed", 9, "dead_letter", reason="r", code="C", payload='{"id":1}')
        st.commit_batch([dl], cursor=None, versions={}, run_id=None)
        st.commit_batch([dl], cursor=None, versions={}, run_id=None, retried=True)
        assert st.dead_letter("evt_9").attempts == 2
        st.commit_batch([Outcome("evt_9", "invoice.payment_failed", 9, "applied")], cursor=None, versions={},
                        run_id=None, retried=True)
        assert st.dead_letter("evt_9").status == "resolved"
        assert st.dead_letter_count() == 0


def _corrupt_after_page_one(path):
    data = bytearray(path.read_bytes())
    data[4096 * 2:4096 * 2 + 3000] = b"Z" * len(data[4096 * 2:4096 * 2 + 3000])
    path.write_bytes(bytes(data))


def test_sqlite_errors_after_opening_are_state_errors_naming_the_file(tmp_path):
    path = tmp_path / "s.sqlite"
    with StateStore.open(path) as st:
        outs = [Outcome(f"evt_{i:05d}", "t", i, "applied", object_id=f"sub_{i}") for i in range(2000)]
        st.commit_batch(outs, cursor=Cursor("evt_01999", 1999), versions={}, run_id=None)
    _corrupt_after_page_one(path)
    with StateStore.open(path) as st:  # page one (the schema) is intact: the damage shows on the first read
        with pytest.raises(StateError) as info:
            st.cursor()
    assert str(path) in str(info.value) and "malformed" in str(info.value)
    assert "Move it aside" in str(info.value) and info.value.exit_code == ExitCode.STATE


def test_a_lock_held_by_another_program_is_a_state_error_naming_the_file(tmp_path):
    path = tmp_path / "s.sqlite"
    with StateStore.open(path) as st:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StateError) as info:  # after SQLite's busy timeout (5 s)
                st.commit_batch([Outcome("evt_1", "t", 1, "applied")], cursor=None, versions={}, run_id=None)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert st.outcomes_for(["evt_1"]) == {}  # nothing half-written
    assert f"{path} is locked by another program" in str(info.value) and "Close whatever" in str(info.value)


def test_schema_2_gains_the_inbox(tmp_path):
    path = tmp_path / "s.sqlite"
    StateStore.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE inbox")
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    with StateStore.open(path) as st:
        assert st.inbox_add("evt_1", 100, '{"id": "evt_1"}', 1.5)
        assert st.inbox_depth() == 1
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5


def test_inbox_keeps_an_event_once_and_its_batch_marks_it_done(backend):
    with backend.open() as st:
        assert st.inbox_add("evt_b", 200, '{"id": "evt_b"}', 2.0)
        assert st.inbox_add("evt_a", 100, '{"id": "evt_a"}', 3.0)
        assert not st.inbox_add("evt_a", 100, '{"id": "evt_a", "again": true}', 4.0)  # a redelivery
        assert [e.event_id for e in st.inbox_pending(10)] == ["evt_a", "evt_b"]  # oldest event first
        assert st.inbox_pending(10)[0].payload == '{"id": "evt_a"}'
        st.commit_batch([Outcome("evt_a", "customer.updated", 100, "ignored")], cursor=None, versions={},
                        run_id=None, inbox_done=["evt_a"])
        assert [e.event_id for e in st.inbox_pending(10)] == ["evt_b"] and st.inbox_depth() == 1
        assert st.outcomes_for(["evt_a"]) == {"evt_a": "ignored"}
        assert st.cursor() is None  # the inbox never moves the cursor


def test_inbox_insert_waits_for_another_writer_and_works_under_the_run_lock(tmp_path):
    import threading

    path = tmp_path / "s.sqlite"
    with StateStore.open(path) as runner, StateStore.open(path) as receiver:
        runner.acquire_lock()  # a run (sync, or serve's worker) holds the lock
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # and is in the middle of committing a batch
        threading.Timer(0.3, lambda: other.execute("COMMIT")).start()
        assert receiver.inbox_add("evt_1", 100, "{}", 1.0)  # waits for the commit (busy timeout), then writes
        other.close()
        assert runner.inbox_depth() == 1


def test_runs_customers_and_pruning(backend):
    with backend.open() as st:
        first, second = st.start_run("sync"), st.start_run("backfill")
        assert second > first
        st.finish_run(first, 3, {"applied": 2})
        assert st.last_success("sync") is not None and st.last_success("backfill") is None
        assert [r["run_id"] for r in st.recent_runs()] == [second, first]
        assert st.recent_runs()[1]["summary"] == {"applied": 2}
        st.remember_customers([CachedCustomer("cus_1", {"a": "1"}, "Ada", False, 5)])
        st.remember_customers([CachedCustomer("cus_1", {"a": "0"}, "Old", False, 4)])  # older: ignored
        assert st.customers_for(["cus_1", "cus_2"]) == {"cus_1": CachedCustomer("cus_1", {"a": "1"}, "Ada", False, 5)}
        st.commit_batch([Outcome("evt_old", "t", 1, "applied")], cursor=None, versions={}, run_id=first)
        assert st.prune_ledger(now=10**10) == 1 and st.outcomes_for(["evt_old"]) == {}
        assert st.integrity_check() == "ok"


def test_a_reader_never_waits_for_an_open_write_transaction(backend):
    """`status` and `dlq list` read while a run is inside a batch's transaction: they see the last commit."""
    with backend.open() as runner, backend.open() as reader:
        runner.acquire_lock()
        runner.commit_batch([Outcome("evt_1", "t", 1, "applied")], cursor=Cursor("evt_1", 1), versions={}, run_id=None)
        with runner._tx():
            runner._conn.execute("INSERT INTO meta(key, value) VALUES ('k', 'v')")
            started = time.monotonic()
            assert reader.cursor() == Cursor("evt_1", 1) and reader.get_meta("k") is None
            assert reader.dead_letters() == [] and reader.lock_held()
            assert time.monotonic() - started < 1
        assert reader.get_meta("k") == "v"


def test_a_rerun_backfill_keeps_one_dead_letter_per_object_and_reason(backend):
    """Issue 20 §5: the synthetic event id holds the run's time; a rerun counts an attempt, not a new letter."""
    def letter(tag: int, code: str = "NUMBER_OUTSIDE_VALID_RANGE", obj: str = "in_1") -> Outcome:
        return Outcome(f"evt_bf{tag}_{obj}", "invoice.updated", tag, "dead_letter", object_id=obj,
                       reason=f"ARR too large ({tag})", code=code, payload=f'{{"id": "evt_bf{tag}_{obj}"}}')
    with backend.open() as st:
        st.commit_batch([letter(100), letter(100, obj="in_2")], cursor=None, versions={}, run_id=None)
    # Rows written before this rule: two runs already left two letters for in_1.
    backend.execute("INSERT INTO dead_letters(event_id, event_type, created, payload, reason, error_code, attempts, "
                    "first_failed_at, last_failed_at, status) VALUES ('evt_bf150_in_1', 'invoice.updated', 150, "
                    "'{}', 'r', 'NUMBER_OUTSIDE_VALID_RANGE', 1, 5, 150, 'open')")
    with backend.open() as st:
        st.commit_batch([letter(200)], cursor=None, versions={}, run_id=None)
        st.commit_batch([letter(300)], cursor=None, versions={}, run_id=None)
        st.commit_batch([letter(400, code="NO_ACCOUNT")], cursor=None, versions={}, run_id=None)  # another reason
        open_letters = {d.event_id: d for d in st.dead_letters()}
        assert sorted(open_letters) == ["evt_bf100_in_2", "evt_bf300_in_1", "evt_bf400_in_1"]
        assert st.dead_letter_count() == 3
        kept = open_letters["evt_bf300_in_1"]
        assert kept.attempts == 4 and kept.first_failed_at == 5 and kept.reason == "ARR too large (300)"
        assert kept.error_code == "NUMBER_OUTSIDE_VALID_RANGE" and "evt_bf300_in_1" in kept.payload
