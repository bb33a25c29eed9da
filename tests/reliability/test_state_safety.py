"""State store safety: mode 0600, the schema-version check, corrupt and locked files (clear errors at the CLI,
never a traceback), and WAL: a reader never blocks a running sync."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stripe_sf_sync.errors import ExitCode, StateError
from stripe_sf_sync.state import SCHEMA_VERSION, StateStore

from .world import ROOT, STATE_NAME, build_world, discover, state_rows, stripe_sf, sync, write_config

NOW = int(time.time())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def synced(tmp_path):
    with build_world(NOW, extra=2) as world:
        cfg = discover(write_config(tmp_path), world)
        old = os.umask(0o022)
        try:
            sync(cfg, world.env(), since=world.since)
        finally:
            os.umask(old)
        yield world, cfg


def test_state_file_and_lock_are_created_0600(synced):
    _, cfg = synced
    state = cfg.parent / STATE_NAME
    assert mode(state) == 0o600
    assert mode(Path(f"{state}.lock")) == 0o600


def test_wal_and_shm_are_0600_and_status_reads_while_a_sync_holds_a_commit_open(tmp_path):
    """A real sync paused inside its third commit's open transaction: `status` answers at once (WAL) with the
    cursor of the last committed batch; then the sync is killed there and a rerun converges."""
    with build_world(NOW, extra=2) as world:
        cfg = discover(write_config(tmp_path), world)
        pause = tmp_path / "paused"
        env = world.cli_env(STRIPE_SF_TEST_KILL="pause:commit:3", STRIPE_SF_TEST_PAUSE_FILE=str(pause))
        proc = subprocess.Popen([sys.executable, "-m", "stripe_sf_sync", "sync", "--config", str(cfg), "--since",
                                 world.since], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while not pause.exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert pause.exists(), proc.stderr.read() if proc.poll() is not None else "not paused"
            state = cfg.parent / STATE_NAME
            for side in ("-wal", "-shm"):
                assert mode(Path(f"{state}{side}")) == 0o600
            started = time.monotonic()
            done = stripe_sf(["status", "--config", str(cfg), "--json"], world.cli_env(), timeout=30)
            assert done.returncode == 0, done.stderr
            assert time.monotonic() - started < 8  # well under the 5 s busy timeout plus start-up
            assert '"cursor"' in done.stdout and '"event_id"' in done.stdout  # two batches are committed
            locked = stripe_sf(["sync", "--config", str(cfg)], world.cli_env(), timeout=30)
            assert locked.returncode == ExitCode.LOCKED
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
        again = stripe_sf(["sync", "--config", str(cfg)], world.cli_env())
        assert again.returncode in (0, 3), again.stderr
        assert state_rows(cfg.parent / STATE_NAME)["integrity"] == "ok"


def test_a_long_read_transaction_never_blocks_sync(tmp_path):
    with build_world(NOW, extra=2) as world:
        cfg = discover(write_config(tmp_path), world)
        sync(cfg, world.env(), since=world.since)  # creates the file (WAL)
        reader = sqlite3.connect(cfg.parent / STATE_NAME, isolation_level=None)
        reader.execute("BEGIN")
        before = reader.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        from stripe_sf_sandbox.stripe_factory import StripeFactory
        f = StripeFactory(world.stripe, seed=5)
        for i in range(12):
            cus = f.customer(f"Wal {i}", f"w{i}@example.com")
            world.org.insert("Account", {"Name": f"Wal {i}", "Stripe_Customer_ID__c": cus["id"]})
            f.subscription_created(f.subscription(cus["id"], [(f.price(100), 1)]), NOW - 60 + i)
        started = time.monotonic()
        summary = sync(cfg, world.env())
        assert summary.applied == 12 and time.monotonic() - started < 5
        assert reader.execute("SELECT COUNT(*) FROM events").fetchone()[0] == before  # its snapshot
        reader.execute("COMMIT")
        assert reader.execute("SELECT COUNT(*) FROM events").fetchone()[0] == before + 12
        reader.close()


def test_newer_schema_is_refused_with_a_clear_message(synced):
    world, cfg = synced
    state = cfg.parent / STATE_NAME
    con = sqlite3.connect(state)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(StateError) as info:
        StateStore.open(state)
    assert "newer" in str(info.value) and "Upgrade" in str(info.value)
    for args in (["status"], ["sync"], ["dlq", "list"]):
        done = stripe_sf([*args, "--config", str(cfg)], world.cli_env())
        assert done.returncode == ExitCode.STATE, (args, done.stderr)
        assert "newer than this stripe-sf" in done.stderr and "Traceback" not in done.stderr + done.stdout


def test_garbage_state_file_is_a_clear_error(synced):
    world, cfg = synced
    state = cfg.parent / STATE_NAME
    state.write_bytes(b"not a database " * 500)
    for args in (["status"], ["sync"], ["dlq", "list"]):
        done = stripe_sf([*args, "--config", str(cfg)], world.cli_env())
        assert done.returncode == ExitCode.STATE, (args, done.stderr)
        assert "move it aside" in done.stderr and "Traceback" not in done.stderr + done.stdout


def _corrupt_pages(state: Path) -> None:
    data = bytearray(state.read_bytes())
    for i in range(4096 * 2, min(len(data), 4096 * 2 + 3000)):
        data[i] = 0x5A
    state.write_bytes(bytes(data))


@pytest.mark.parametrize("command", ["status", "sync"])
def test_corrupt_pages_are_a_clear_state_error(synced, command):
    world, cfg = synced
    _corrupt_pages(cfg.parent / STATE_NAME)
    done = stripe_sf([command, "--config", str(cfg)], world.cli_env())
    assert "Traceback" not in done.stderr + done.stdout
    assert done.returncode == ExitCode.STATE, done.stderr


def test_state_locked_by_another_program_is_a_clear_state_error(synced):
    world, cfg = synced
    holder = sqlite3.connect(cfg.parent / STATE_NAME, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        status = stripe_sf(["status", "--config", str(cfg)], world.cli_env())
        assert status.returncode == 0  # readers are never blocked (WAL)
        done = stripe_sf(["sync", "--config", str(cfg)], world.cli_env())
        assert "Traceback" not in done.stderr
        assert done.returncode == ExitCode.STATE, done.stderr
    finally:
        holder.execute("ROLLBACK")
        holder.close()
