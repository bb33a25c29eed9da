"""The reliability suite's PostgreSQL half: two working directories ("hosts") racing for one store, and a
connection dropped mid-batch (pg_terminate_backend from a second connection, on a real server). The kill
points on PostgreSQL are in test_crash.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from stripe_sf_sync import service
from stripe_sf_sync.errors import ExitCode, StateUnavailableError

from ..state_backends import Backend
from . import crash
from .world import ROOT, assert_converged, build_world, discover, stripe_sf, write_config

EXTRA = 2


@pytest.fixture(scope="module")
def reference() -> crash.Reference:
    return crash.reference_run(crash.now(), extra=EXTRA)


def _wait_idle(url: str) -> None:
    import psycopg

    from ..pgserver import wait_gone

    with psycopg.connect(url, autocommit=True) as conn:
        wait_gone(conn, database=conn.info.dbname)


def _terminate(url: str, pid: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_two_runs_from_two_directories_one_runs_and_the_other_exits_with_the_lock_code(reference, pg_url, tmp_path):
    """Host A pauses inside its third batch's transaction; host B's `status` answers at once, its `sync` exits
    with the lock code naming A's host and pid; A is killed there, B continues and converges."""
    with build_world(reference.now, extra=EXTRA) as world:
        cfg_a, cfg_b = (discover(write_config(tmp_path / d), world) for d in ("host-a", "host-b"))
        pause = tmp_path / "paused"
        env_a = world.cli_env(STRIPE_SF_STATE_URL=pg_url, STRIPE_SF_TEST_KILL="pause:commit:3",
                              STRIPE_SF_TEST_PAUSE_FILE=str(pause))
        proc = subprocess.Popen([sys.executable, "-m", "stripe_sf_sync", "sync", "--config", str(cfg_a), "--since",
                                 world.since], env=env_a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        env_b = world.cli_env(STRIPE_SF_STATE_URL=pg_url)
        try:
            deadline = time.monotonic() + 60
            while not pause.exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert pause.exists(), proc.stderr.read() if proc.poll() is not None else "not paused"
            started = time.monotonic()
            status = stripe_sf(["status", "--config", str(cfg_b), "--json"], env_b, timeout=30)
            assert status.returncode == 0, status.stderr
            assert time.monotonic() - started < 8 and '"running": {' in status.stdout
            assert '"state_backend": "postgresql"' in status.stdout
            locked = stripe_sf(["sync", "--config", str(cfg_b)], env_b, timeout=30)
            assert locked.returncode == ExitCode.LOCKED, locked.stderr
            assert f"host {socket.gethostname()}, pid {proc.pid}" in locked.stderr
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
        _wait_idle(pg_url)
        again = stripe_sf(["sync", "--config", str(cfg_b)], env_b)
        assert again.returncode in (0, 3), again.stderr
        assert_converged(world, Backend("postgresql", tmp_path / "unused", pg_url), reference.as_expected())


def _drop_inside_commit(monkeypatch: pytest.MonkeyPatch, url: str, nth: int, drops: int) -> dict[str, list[str]]:
    """In the `nth` batch commit, terminate the store's server process right after the first row of each
    attempt's transaction, `drops` times. Returns the event ids that commit carried."""
    from stripe_sf_sync.state.postgres import PgStateStore, _PgConnection

    seen: dict[str, list[str]] = {"batch": []}
    counts = {"commit": 0, "statements": 0, "drops": 0}
    real_execute, real_commit = _PgConnection.execute, PgStateStore.commit_batch

    def execute(self, sql, params=()):  # type: ignore[no-untyped-def]
        if sql == "BEGIN":
            counts["statements"] = 0
        cur = real_execute(self, sql, params)
        counts["statements"] += 1
        if counts["commit"] == nth and counts["statements"] == 2 and counts["drops"] < drops:
            counts["drops"] += 1
            _terminate(url, self.raw.info.backend_pid)
        return cur

    def commit_batch(self, outcomes, **kw):  # type: ignore[no-untyped-def]
        counts["commit"] += 1
        if counts["commit"] == nth:
            seen["batch"] = [o.event_id for o in outcomes]
        return real_commit(self, outcomes, **kw)

    monkeypatch.setattr(_PgConnection, "execute", execute)
    monkeypatch.setattr(PgStateStore, "commit_batch", commit_batch)
    return seen


def _sync(cfg, world, url, since=None):  # type: ignore[no-untyped-def]
    environment = world.env()
    environment.env = {**environment.env, "STRIPE_SF_STATE_URL": url}
    return service.run_sync(cfg, environment, since=since, dry_run=False, max_events=None)


def test_a_connection_dropped_mid_batch_is_retried_once_with_the_same_batch(reference, pg_url, tmp_path,
                                                                            monkeypatch, caplog):
    with build_world(reference.now, extra=EXTRA) as world:
        cfg = discover(write_config(tmp_path), world)
        seen = _drop_inside_commit(monkeypatch, pg_url, nth=3, drops=1)
        summary = _sync(cfg, world, pg_url, since=world.since)
        assert seen["batch"] and not summary.stopped_early
        assert "reconnecting once" in caplog.text
        assert_converged(world, Backend("postgresql", tmp_path / "unused", pg_url), reference.as_expected())


def test_a_connection_dropped_twice_stops_with_the_unavailable_code_and_nothing_half_committed(
        reference, pg_url, tmp_path, monkeypatch):
    state = Backend("postgresql", tmp_path / "unused", pg_url)
    with build_world(reference.now, extra=EXTRA) as world:
        cfg = discover(write_config(tmp_path), world)
        seen = _drop_inside_commit(monkeypatch, pg_url, nth=3, drops=2)
        with pytest.raises(StateUnavailableError) as info:
            _sync(cfg, world, pg_url, since=world.since)
        assert info.value.exit_code == ExitCode.UNAVAILABLE and "again after reconnecting once" in str(info.value)
        rows = state.rows()
        assert seen["batch"] and not set(seen["batch"]) & set(rows["events"])  # none of that batch's outcomes
        assert rows["cursor"] not in seen["batch"]
        last = state.execute("SELECT exit_code FROM runs ORDER BY run_id DESC LIMIT 1")
        assert last == [(ExitCode.UNAVAILABLE,)]  # the run's end is recorded (a later reconnect worked)
        monkeypatch.undo()
        _sync(cfg, world, pg_url)  # the next run repeats the batch
        assert_converged(world, state, reference.as_expected())


def test_a_newer_schema_is_refused_by_every_command_with_the_state_code(pg_url, tmp_path):
    state = Backend("postgresql", tmp_path / "unused", pg_url)
    with build_world(crash.now(), extra=0) as world:
        cfg = discover(write_config(tmp_path), world)
        state.open().close()
        state.set_schema_version(99)
        for args in (["status"], ["sync", "--since", world.since], ["dlq", "list"], ["doctor"]):
            done = stripe_sf([*args, "--config", str(cfg)], world.cli_env(STRIPE_SF_STATE_URL=pg_url))
            assert "newer than this stripe-sf" in done.stderr + done.stdout, (args, done.stderr)
            assert "Traceback" not in done.stderr + done.stdout
            if args[0] != "doctor":
                assert done.returncode == ExitCode.STATE, (args, done.stderr)


def test_two_hosts_through_a_transaction_pooler_never_overlap_and_a_killed_holder_frees_it_after_its_lease(
        reference, pg_pooler, pg_url, tmp_path):
    """Through PgBouncer in transaction mode (one server connection, so both hosts share a backend): host A
    pauses between batches; host B's `status` names it running and B's `sync` exits with the lock code naming
    A. A is killed: B is still turned away while A's lease runs, then takes over and converges."""
    url = pg_pooler.url(pg_url.rsplit("/", 1)[1])
    lease = "3"
    with build_world(reference.now, extra=EXTRA) as world:
        cfg_a, cfg_b = (discover(write_config(tmp_path / d), world) for d in ("host-a", "host-b"))
        pause = tmp_path / "paused"
        env_a = world.cli_env(STRIPE_SF_STATE_URL=url, STRIPE_SF_LOCK_LEASE_S=lease,
                              STRIPE_SF_TEST_KILL="pause:commit:3:before", STRIPE_SF_TEST_PAUSE_FILE=str(pause))
        proc = subprocess.Popen([sys.executable, "-m", "stripe_sf_sync", "sync", "--config", str(cfg_a), "--since",
                                 world.since], env=env_a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        env_b = world.cli_env(STRIPE_SF_STATE_URL=url, STRIPE_SF_LOCK_LEASE_S=lease)
        try:
            deadline = time.monotonic() + 60
            while not pause.exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert pause.exists(), proc.stderr.read() if proc.poll() is not None else "not paused"
            time.sleep(4)  # longer than the lease: A's heartbeat keeps it
            status = stripe_sf(["status", "--config", str(cfg_b), "--json"], env_b, timeout=30)
            assert status.returncode == 0 and '"running": {' in status.stdout, status.stderr
            dlq = stripe_sf(["dlq", "list", "--config", str(cfg_b)], env_b, timeout=30)
            assert dlq.returncode == 0, dlq.stderr  # readers never take the lock
            locked = stripe_sf(["sync", "--config", str(cfg_b)], env_b, timeout=30)
            assert locked.returncode == ExitCode.LOCKED, locked.stderr
            assert f"host {socket.gethostname()}, pid {proc.pid}" in locked.stderr
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
        killed_at = time.monotonic()
        early = stripe_sf(["sync", "--config", str(cfg_b)], env_b, timeout=30)
        if time.monotonic() - killed_at < 2.5:  # still inside A's lease (a slow machine may be past it)
            assert early.returncode == ExitCode.LOCKED and "lease expires within" in early.stderr, early.stderr
        time.sleep(max(0.0, killed_at + 3.5 - time.monotonic()))
        again = stripe_sf(["sync", "--config", str(cfg_b)], env_b)
        assert again.returncode in (0, 3), again.stderr
        assert_converged(world, Backend("postgresql", tmp_path / "unused", pg_url), reference.as_expected())


def test_a_run_whose_lease_is_taken_over_stops_with_the_lock_code_and_commits_nothing_more(
        reference, pg_pooler, pg_url, tmp_path, monkeypatch):
    """Through the pooler: another run takes the lease over while this one is in its third batch (its host
    froze past the lease); that batch is not committed, the run ends with the lock code and records it, and
    the next run repeats the batch and converges."""
    from stripe_sf_sync.errors import LockHeldError
    from stripe_sf_sync.state.postgres import PgStateStore

    url = pg_pooler.url(pg_url.rsplit("/", 1)[1])
    state = Backend("postgresql", tmp_path / "unused", pg_url)
    seen: dict[str, list[str]] = {"batch": []}
    real_commit, commits = PgStateStore.commit_batch, [0]

    def commit_batch(self, outcomes, **kw):  # type: ignore[no-untyped-def]
        commits[0] += 1
        if commits[0] == 3:
            seen["batch"] = [o.event_id for o in outcomes]
            state.execute("UPDATE run_lock SET run_token = 'another run', host = 'host-b'")
        return real_commit(self, outcomes, **kw)

    with build_world(reference.now, extra=EXTRA) as world:
        cfg = discover(write_config(tmp_path), world)
        monkeypatch.setattr(PgStateStore, "commit_batch", commit_batch)
        with pytest.raises(LockHeldError) as info:
            _sync(cfg, world, url, since=world.since)
        assert "lost the run lock" in str(info.value) and info.value.exit_code == ExitCode.LOCKED
        rows = state.rows()
        assert seen["batch"] and not set(seen["batch"]) & set(rows["events"])
        assert state.execute("SELECT exit_code FROM runs ORDER BY run_id DESC LIMIT 1") == [(ExitCode.LOCKED,)]
        monkeypatch.undo()
        state.execute("UPDATE run_lock SET expires_at = '-infinity'")  # "host-b" has finished
        _sync(cfg, world, url)
        assert_converged(world, state, reference.as_expected())
