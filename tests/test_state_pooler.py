"""The run lock through a transaction-mode pooler (a real PgBouncer, tests/pgbouncer.py, `pool_mode=transaction`
with one server connection, so that every client's transactions share one backend): a session advisory lock
is re-entrant there and would be granted twice; the lease row is not."""

from __future__ import annotations

import os
import socket
import time

import pytest

from stripe_sf_sync.errors import ConfigError, ExitCode, LockHeldError
from stripe_sf_sync.state import Cursor, Outcome, open_state

from . import pgbouncer, pgserver


def _open(url, tmp_path, **kw):
    return open_state(tmp_path / "unused.sqlite", url, **kw)


def _batch(event_id: str, created: int = 1) -> dict:
    return {"outcomes": [Outcome(event_id, "t", created, "applied")], "cursor": Cursor(event_id, created),
            "versions": {}, "run_id": None}


def test_two_hosts_racing_through_the_pooler_only_one_wins(pooled_url, tmp_path):
    with _open(pooled_url, tmp_path) as holder, _open(pooled_url, tmp_path) as other:
        holder.acquire_lock()
        with pytest.raises(LockHeldError) as info:
            other.acquire_lock()
        assert f"host {socket.gethostname()}, pid {os.getpid()}" in str(info.value)
        assert info.value.exit_code == ExitCode.LOCKED
        assert other.lock_held()  # a reader sees the holder without taking the lock
        holder.release_lock()
        assert not other.lock_held()
        other.acquire_lock()  # released: the next run takes it at once
        with pytest.raises(LockHeldError):
            holder.acquire_lock()


def test_a_holder_that_stops_renewing_loses_the_lock_after_the_lease_and_writes_nothing_more(
        pooled_url, tmp_path, monkeypatch):
    """A vanished holder (its heartbeat stopped) holds the lock for the lease time; then the next run takes
    over, and the old holder's next write stops with the lock code, committing nothing."""
    monkeypatch.setenv("STRIPE_SF_LOCK_LEASE_S", "2")
    with _open(pooled_url, tmp_path) as holder, _open(pooled_url, tmp_path) as other:
        holder.acquire_lock()
        holder._db._stop_heartbeat()  # as if the host froze
        with pytest.raises(LockHeldError):
            other.acquire_lock()
        time.sleep(2.2)
        assert not other.lock_held()
        other.acquire_lock()
        with pytest.raises(LockHeldError) as info:
            holder.commit_batch(**_batch("evt_1"))
        assert "lost the run lock" in str(info.value) and info.value.exit_code == ExitCode.LOCKED
        assert other.cursor() is None and other.outcomes_for(["evt_1"]) == {}


def test_a_holder_that_cannot_renew_in_time_stops_itself_before_its_lease_ends(pooled_url, tmp_path, monkeypatch):
    """The heartbeat hangs or cannot reach the database: at 90% of the lease the run's next store operation
    stops it (once, so that the run can record its end); every later write transaction is refused."""
    monkeypatch.setenv("STRIPE_SF_LOCK_LEASE_S", "2")
    with _open(pooled_url, tmp_path) as holder:
        holder.acquire_lock()
        holder._db._heartbeat._stopping.set()  # renews no more, as if hung
        time.sleep(1.9)
        with pytest.raises(LockHeldError) as info:
            holder.outcomes_for(["evt_1"])
        assert "could not be renewed for 2 s" in str(info.value) and info.value.exit_code == ExitCode.LOCKED
        assert holder.cursor() is None  # the run records its end
        with pytest.raises(LockHeldError):
            holder.commit_batch(**_batch("evt_1"))
        assert holder.outcomes_for(["evt_1"]) == {}


def test_the_heartbeat_keeps_the_lease_past_its_length_and_notices_a_takeover(pooled_url, tmp_path, monkeypatch):
    monkeypatch.setenv("STRIPE_SF_LOCK_LEASE_S", "2")
    with _open(pooled_url, tmp_path) as holder, _open(pooled_url, tmp_path) as other:
        holder.acquire_lock()
        time.sleep(3)  # longer than the lease: the heartbeat renewed it
        with pytest.raises(LockHeldError):
            other.acquire_lock()
        other._conn.execute("UPDATE run_lock SET run_token = 'someone else'")  # another run took it over
        deadline = time.monotonic() + 5
        while holder._db._lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holder._db._lost and "another run" in holder._db._lost
        with pytest.raises(LockHeldError) as info:
            holder.outcomes_for(["evt_1"])  # the run's next step stops it
        assert "lost the run lock" in str(info.value)


def test_a_lost_server_connection_behind_the_pooler_is_retried_and_the_lease_kept(pooled_url, pg_url, tmp_path):
    import psycopg

    with _open(pooled_url, tmp_path) as st, _open(pooled_url, tmp_path) as other:
        st.acquire_lock()
        with psycopg.connect(pg_url, autocommit=True) as admin:  # every server connection of the pooler dies
            pids = [r[0] for r in admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = "
                                                "current_database() AND pid <> pg_backend_pid()")]
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                pgserver.wait_gone(admin, pid)
        st.commit_batch(**_batch("evt_1"))
        assert other.cursor() == Cursor("evt_1", 1)
        with pytest.raises(LockHeldError):  # the lease outlived the connections
            other.acquire_lock()


def test_prepared_statements_are_off_so_the_pooler_never_sees_one(pooled_url, pg_url, tmp_path):
    with _open(pg_url, tmp_path) as direct:  # a direct connection keeps them: a batch commits in half the time
        assert direct._conn.raw.prepare_threshold == 5
    with _open(pooled_url, tmp_path) as st:
        for _ in range(8):  # psycopg prepares a statement from its 5th execution unless told not to
            st.outcomes_for(["evt_1"])
        assert st._conn.raw.prepare_threshold is None
        prepared = st._conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
        assert prepared == 0


def test_a_direct_connection_is_told_from_a_pooled_one(pg_url, pooled_url, tmp_path):
    with _open(pg_url, tmp_path) as direct, _open(pooled_url, tmp_path) as pooled:
        assert direct._db._direct and not pooled._db._direct


def test_direct_and_pooled_hosts_on_one_store_exclude_each_other(pg_url, pooled_url, tmp_path):
    """One host on the direct URL (lease and advisory lock), another through the pooler (lease only)."""
    with _open(pg_url, tmp_path) as direct, _open(pooled_url, tmp_path) as pooled:
        direct.acquire_lock()
        with pytest.raises(LockHeldError) as info:
            pooled.acquire_lock()
        assert "frees the lock with its connection" in str(info.value)
        direct.release_lock()
        pooled.acquire_lock()
        assert direct.lock_held()
        with pytest.raises(LockHeldError) as info:
            direct.acquire_lock()
        assert "lease expires within" in str(info.value)
        pooled.release_lock()
        pooled.acquire_lock()  # the refused direct run left no advisory lock behind to keep pooled runs out
        pooled.release_lock()
        direct.acquire_lock()


def test_a_crashed_direct_holder_frees_the_lock_at_once_for_a_direct_run(pg_url, tmp_path, monkeypatch):
    """On a direct connection the lease does not slow down a takeover: the server freed the crashed holder's
    advisory lock with its connection, and that says its lease is stale."""
    monkeypatch.setenv("STRIPE_SF_LOCK_LEASE_S", "600")
    with _open(pg_url, tmp_path) as holder, _open(pg_url, tmp_path) as other:
        holder.acquire_lock()
        holder._db._stop_heartbeat()
        pid = int(holder._conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        import psycopg

        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            pgserver.wait_gone(admin, pid)
        holder._db._locked = False  # the crashed process is gone; only its row is left
        other.acquire_lock()


def test_the_heartbeat_reconnects_when_its_connection_is_lost(pg_url, tmp_path, monkeypatch):
    import psycopg

    monkeypatch.setenv("STRIPE_SF_LOCK_LEASE_S", "2")
    with _open(pg_url, tmp_path) as holder:
        holder.acquire_lock()
        own = int(holder._conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        with psycopg.connect(pg_url, autocommit=True) as admin:
            time.sleep(0.3)  # the heartbeat has connected
            for (pid,) in admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'stripe-sf' "
                                        "AND datname = current_database() AND pid <> %s", (own,)).fetchall():
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(3)
        assert holder._db._lost is None
        holder.commit_batch(**_batch("evt_1"))  # the lease is still ours


def test_an_older_run_lock_table_gains_the_lease_columns(pg_url, tmp_path):
    """A store created by the previous release (run_lock without the lease, no pg_schema_version) is brought
    up to date when opened; its last holder's row, without an expiry, does not keep a run out."""
    with _open(pg_url, tmp_path):
        pass
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE run_lock DROP COLUMN run_token, DROP COLUMN expires_at, DROP COLUMN direct")
        conn.execute("DELETE FROM meta WHERE key = 'pg_schema_version'")
        conn.execute("INSERT INTO run_lock VALUES (1, 'old-host', 1, 0)")
    with _open(pg_url, tmp_path) as st:
        st._conn.execute("UPDATE run_lock SET lock_key = ?", (st._db._lock_key,))
        st.acquire_lock()
        assert st.get_meta("pg_schema_version") == "1"


def test_the_lease_length_comes_from_the_environment_and_is_checked():
    from stripe_sf_sync.state.postgres_lock import DEFAULT_LEASE_S, lease_seconds

    assert lease_seconds({}) == DEFAULT_LEASE_S == 60
    assert lease_seconds({"STRIPE_SF_LOCK_LEASE_S": "15"}) == 15
    for wrong in ("0", "abc", "86400"):
        with pytest.raises(ConfigError) as info:
            lease_seconds({"STRIPE_SF_LOCK_LEASE_S": wrong})
        assert "STRIPE_SF_LOCK_LEASE_S" in str(info.value) and info.value.exit_code == ExitCode.CONFIG


def test_without_pgbouncer_the_pooler_tests_skip_here_and_fail_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("STRIPE_SF_REQUIRE_POSTGRES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install the pgbouncer package"):
        pgbouncer.unavailable("no pgbouncer")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="PgBouncer is required"):
        pgbouncer.unavailable("no pgbouncer")
