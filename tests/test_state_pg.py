"""The PostgreSQL store's own behaviour, on a real throwaway server (tests/pgserver.py): the advisory lock, a
connection lost and retried once, the password never shown, the missing extra."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from stripe_sf_sync.config import masked_url, state_url
from stripe_sf_sync.config import parse_settings as settings_of
from stripe_sf_sync.errors import ConfigError, ExitCode, LockHeldError, StateError, StateUnavailableError
from stripe_sf_sync.state import Cursor, Outcome, open_state

from . import pgserver

# No importorskip here: the pg_server fixture skips without psycopg or the server, and fails instead in CI.


def _open(url, tmp_path, **kw):
    return open_state(tmp_path / "unused.sqlite", url, **kw)


def _backend_pid(store) -> int:
    return int(store._conn.execute("SELECT pg_backend_pid()").fetchone()[0])


def _terminate(url: str, pid: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        pgserver.wait_gone(conn, pid)  # the signal is sent; the session ends a moment later


def test_the_schema_is_created_once_and_versioned(pg_url, tmp_path):
    with _open(pg_url, tmp_path) as st:
        assert st.backend == "postgresql" and st.get_meta("schema_version") == "5"
    with _open(pg_url, tmp_path, create=False) as st:  # a second open changes nothing
        assert st.integrity_check() == "ok"
    assert not (tmp_path / "unused.sqlite").exists()


def test_the_loser_is_told_the_holders_host_and_pid_and_a_crashed_holder_frees_the_lock(pg_url, tmp_path):
    with _open(pg_url, tmp_path) as holder, _open(pg_url, tmp_path) as other:
        holder.acquire_lock()
        with pytest.raises(LockHeldError) as info:
            other.acquire_lock()
        assert f"host {socket.gethostname()}, pid {os.getpid()}" in str(info.value)
        assert info.value.exit_code == ExitCode.LOCKED and "next scheduled run" in str(info.value)
        _terminate(pg_url, _backend_pid(holder))  # the holder's connection dies (a crashed host)
        other.acquire_lock()  # its lock went with it
        assert other.lock_held()


def test_stores_in_two_databases_do_not_share_a_lock(pg_server, pg_url, tmp_path):
    name = pg_server.create_database()
    try:
        with _open(pg_url, tmp_path) as a, _open(pg_server.url(name), tmp_path) as b:
            a.acquire_lock()
            b.acquire_lock()
            assert a._db._lock_key != b._db._lock_key
    finally:
        pg_server.drop_database(name)


def test_a_lost_connection_is_reconnected_once_and_the_batch_repeated(pg_url, tmp_path, caplog):
    with _open(pg_url, tmp_path) as st, _open(pg_url, tmp_path) as other:
        st.acquire_lock()
        _terminate(pg_url, _backend_pid(st))
        st.commit_batch([Outcome("evt_1", "t", 1, "applied")], cursor=Cursor("evt_1", 1), versions={}, run_id=None)
        assert other.cursor() == Cursor("evt_1", 1)
        assert "reconnecting once" in caplog.text
        with pytest.raises(LockHeldError):  # the new connection took the run lock again
            other.acquire_lock()


def test_a_connection_lost_twice_stops_with_the_unavailable_code_and_commits_nothing(pg_server, pg_url, tmp_path):
    with _open(pg_url, tmp_path) as st:
        st.acquire_lock()
        pg_server.stop()
        try:
            with pytest.raises(StateUnavailableError) as info:
                st.commit_batch([Outcome("evt_1", "t", 1, "applied")], cursor=Cursor("evt_1", 1), versions={},
                                run_id=None)
        finally:
            pg_server.start()
    assert info.value.exit_code == ExitCode.UNAVAILABLE and "Nothing was written" in str(info.value)
    with _open(pg_url, tmp_path) as st:
        assert st.cursor() is None and st.outcomes_for(["evt_1"]) == {}


def test_the_password_is_masked_everywhere_it_is_shown(pg_server, pg_url, tmp_path):
    assert masked_url("postgresql://sf:s3cr%40t@db:5432/state?sslmode=require") == (
        "postgresql://sf:***@db:5432/state?sslmode=require")
    assert masked_url("postgres://sf@db/state") == "postgres://sf@db/state"
    wrong = pg_server.url("no_such_db", password="hunter2")
    with pytest.raises(StateUnavailableError) as info:
        _open(wrong, tmp_path)
    assert "hunter2" not in str(info.value)
    assert "postgres:***@127.0.0.1" in str(info.value)


def test_the_state_url_is_validated_and_the_environment_wins():
    with pytest.raises(ConfigError) as info:
        settings_of({"state": {"url": "mysql://u@h/db"}})
    assert "state.url" in str(info.value) and "postgresql://" in str(info.value)
    settings = settings_of({"state": {"url": "postgresql://a@h/db"}})
    assert state_url(settings, {}) == "postgresql://a@h/db"
    assert state_url(settings, {"STRIPE_SF_STATE_URL": "postgres://b@h/db"}) == "postgres://b@h/db"
    with pytest.raises(ConfigError) as info:
        state_url(settings, {"STRIPE_SF_STATE_URL": "sqlite:///x"})
    assert "STRIPE_SF_STATE_URL" in str(info.value) and info.value.exit_code == ExitCode.CONFIG


def test_a_refused_statement_is_a_state_error_naming_the_store(pg_url, tmp_path):
    with _open(pg_url, tmp_path) as st:
        st._conn.execute("DROP TABLE events")
        with pytest.raises(StateError) as info:
            st.outcomes_for(["evt_1"])
    assert info.value.exit_code == ExitCode.STATE and "postgres@127.0.0.1" in str(info.value)


def test_without_psycopg_a_postgres_url_says_how_to_install_the_extra(tmp_path):
    """psycopg hidden from the child (a None entry in sys.modules makes its import fail, as when not installed)."""
    cfg = tmp_path / "sync.yaml"
    cfg.write_text("{}\n")
    code = ("import sys; sys.modules['psycopg'] = None; from stripe_sf_sync.cli import main; "
            "sys.argv = ['stripe-sf', 'dlq', 'list', '--config', sys.argv[1]]; main()")
    env = {**os.environ, "STRIPE_SF_STATE_URL": "postgresql://u:pw@127.0.0.1:1/db"}
    done = subprocess.run([sys.executable, "-c", code, str(cfg)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == ExitCode.CONFIG, done.stderr
    assert "needs the postgres extra" in done.stderr and "stripe-sf-sync[postgres]" in done.stderr
    assert "pw" not in done.stderr and "Traceback" not in done.stderr


def test_the_core_import_path_does_not_import_psycopg():
    code = ("import sys; import stripe_sf_sync.cli, stripe_sf_sync.service, stripe_sf_sync.state; "
            "print('psycopg' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_without_postgresql_the_tests_skip_here_and_fail_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("STRIPE_SF_REQUIRE_POSTGRES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install the postgresql package"):
        pgserver.unavailable("no initdb")
    monkeypatch.setenv("STRIPE_SF_REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL is required"):
        pgserver.unavailable("no initdb")
