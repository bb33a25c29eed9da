"""The run lock through a transaction-mode pooler (a real PgBouncer, tests/pgbouncer.py, `pool_mode=transaction`
with one server connection, so that every client's transactions share one backend): a session advisory lock
is re-entrant there and would be granted twice; the lease row is not."""

from __future__ import annotations

import os
import socket
import time

import pytest

from stripe_sf_sync.errors import ExitCode, LockHeldError
from stripe_sf_sync.state import Cursor, Outcome, open_state

from . import pgserver


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
        holder._stop_heartbeat()  # as if the host froze
        with pytest.raises(LockHeldError):
            other.acquire_lock()
        time.sleep(2.2)
        assert not other.lock_held()
        other.acquire_lock()
        with pytest.raises(LockHeldError) as info:
            holder.commit_batch(**_batch("evt_1"))
        assert "lost the run lock" in str(info.value) and info.value.exit_code == ExitCode.LOCKED
        assert other.cursor() is None and other.outcomes_for(["evt_1"]) == {}


def test_the_heartbeat_keeps_the_lease_past_its_length_and_notices_a_takeover(pooled_url, tmp_path, monkeypatch):
    monkeypatch.setenv("STRIPE_SF_LOCK_LEASE_S", "2")
    with _open(pooled_url, tmp_path) as holder, _open(pooled_url, tmp_path) as other:
        holder.acquire_lock()
        time.sleep(3)  # longer than the lease: the heartbeat renewed it
        with pytest.raises(LockHeldError):
            other.acquire_lock()
        other._conn.execute("UPDATE run_lock SET run_token = 'someone else'")  # another run took it over
        deadline = time.monotonic() + 5
        while holder._lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holder._lost and "another run" in holder._lost
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


def test_prepared_statements_are_off_so_the_pooler_never_sees_one(pooled_url, tmp_path):
    with _open(pooled_url, tmp_path) as st:
        for _ in range(8):  # psycopg prepares a statement from its 5th execution unless told not to
            st.outcomes_for(["evt_1"])
        assert st._conn.raw.prepare_threshold is None
        prepared = st._conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
        assert prepared == 0
