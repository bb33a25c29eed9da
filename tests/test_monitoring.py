"""Monitoring through the CLI: `status` where nothing ran, `status --json`'s health, `status --check` and its
exit code, `--metrics-file` (Prometheus text, written atomically) on sync and backfill, and the progress display
of a sync on a terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode

from .conftest import since, write_config
from .reliability.world import ROOT, STATE_NAME, build_world, discover, stripe_sf
from .reliability.world import write_config as world_config


def status(runner: CliRunner, config: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    result = runner.invoke(app, ["status", "--config", str(config), "--json", *args], env=env)
    return result.exit_code, json.loads(result.stdout)


def metrics(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text file, by name and labels."""
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


# --- status ---------------------------------------------------------------------------------------------------

def test_status_where_nothing_has_run_says_never_run_and_check_fails(runner, tmp_path):
    cfg = write_config(tmp_path / "sync.yaml")
    result = runner.invoke(app, ["status", "--config", str(cfg)])
    assert result.exit_code == ExitCode.OK, result.output
    assert "Never run" in result.stdout and "stripe-sf sync --since DATE" in result.stdout
    code, report = status(runner, cfg)
    assert code == ExitCode.OK and report["never_run"] is True and report["runs"] == []
    code, report = status(runner, cfg, "--check")
    assert code == ExitCode.UNHEALTHY and not report["health"]["healthy"]
    assert report["health"]["problems"][0].startswith("never run")
    assert not (tmp_path / STATE_NAME).exists()  # status creates nothing


def test_status_json_reports_health_after_a_sync(runner, config, cli_env, sc):
    synced = runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc), "--json"], env=cli_env)
    summary = json.loads(synced.stdout)
    code, report = status(runner, config, env=cli_env)
    assert code == ExitCode.OK
    last = report["last_run"]
    assert last["command"] == "sync" and last["exit_code"] == ExitCode.DEAD_LETTERS and last["abnormal"] is False
    assert last["finished_at"] >= last["started_at"] and last["finished_iso"].endswith("Z")
    for key in ("events_read", "applied", "dead_lettered", "records_written"):
        assert last[key] == summary[key]
    cursor = report["cursor"]
    assert cursor["event_id"] == sc.events[-1] and cursor["age_s"] > 3600  # the newest event is a day old...
    assert cursor["current_age_s"] < 60  # ...but sync read the whole list just now: the cursor is current
    assert report["dead_letters"] == len(sc.unmatched_events)
    assert report["api_usage"]["used"] > 0 and 0 < report["api_usage"]["fraction"] < report["api_usage"]["budget"]
    assert report["running"] is None and report["never_run"] is False
    health = report["health"]
    assert health["healthy"] and health["problems"] == [] and "1 open dead letter:" in health["warnings"][0]
    assert health["max_cursor_age_s"] == 15 * 60

    result = runner.invoke(app, ["status", "--config", str(config), "--check"], env=cli_env)
    assert result.exit_code == ExitCode.OK and "Health: ok" in result.stdout
    result = runner.invoke(app, ["status", "--config", str(config), "--check", "--max-dead-letters", "0"],
                           env=cli_env)
    assert result.exit_code == ExitCode.UNHEALTHY
    assert "problem: 1 open dead letter, more than 0" in result.stdout


def test_check_fails_while_the_cursor_is_behind_and_passes_once_sync_caught_up(runner, config, cli_env, sc):
    runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc), "--max-events", "3"], env=cli_env)
    code, report = status(runner, config, "--check", "--max-cursor-age", "2h", env=cli_env)
    assert code == ExitCode.UNHEALTHY
    assert report["last_run"]["exit_code"] == 0  # the run itself went well: it is the cursor that is old
    assert any(p.startswith("the cursor is") and "more than 2.0 h" in p for p in report["health"]["problems"])
    runner.invoke(app, ["sync", "--config", str(config)], env=cli_env)
    code, report = status(runner, config, "--check", "--max-cursor-age", "2h", env=cli_env)
    assert code == ExitCode.OK, report["health"]


def test_check_fails_after_a_failed_run(runner, config, cli_env, sc, org):
    runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc), "--max-events", "2"], env=cli_env)
    org.expire_sessions()
    failed = runner.invoke(app, ["sync", "--config", str(config)], env=cli_env)
    assert failed.exit_code == ExitCode.UNAVAILABLE
    result = runner.invoke(app, ["status", "--config", str(config), "--check", "--max-cursor-age", "30d"],
                           env=cli_env)
    assert result.exit_code == ExitCode.UNHEALTHY
    assert "failed with exit code 5" in result.stdout


def test_a_bad_max_cursor_age_is_a_usage_error(runner, tmp_path):
    cfg = write_config(tmp_path / "sync.yaml")
    result = runner.invoke(app, ["status", "--config", str(cfg), "--check", "--max-cursor-age", "soon"])
    assert result.exit_code == ExitCode.CONFIG and "like 90s, 15m, 2h or 1d" in result.output


def test_a_run_in_progress_is_running_and_one_killed_ended_abnormally(tmp_path):
    """A real sync paused inside a commit: `status` says running (the lock is held). SIGKILLed there: it
    recorded no exit code, so once no process holds the lock it ended abnormally, and --check fails."""
    with build_world(int(time.time()), extra=2) as world:
        cfg = discover(world_config(tmp_path), world)
        done = stripe_sf(["sync", "--config", str(cfg), "--since", world.since, "--max-events", "5"], world.cli_env())
        assert done.returncode in (0, 3), done.stderr
        pause = tmp_path / "paused"
        env = world.cli_env(STRIPE_SF_TEST_KILL="pause:commit:2", STRIPE_SF_TEST_PAUSE_FILE=str(pause))
        proc = subprocess.Popen([sys.executable, "-m", "stripe_sf_sync", "sync", "--config", str(cfg)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while not pause.exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert pause.exists(), "the sync never reached its second commit"
            running = stripe_sf(["status", "--config", str(cfg), "--json"], world.cli_env(), timeout=30)
            report = json.loads(running.stdout)
            assert report["running"]["run_id"] == report["runs"][0]["run_id"]
            assert report["runs"][0]["running"] and not report["runs"][0]["abnormal"]
            assert report["last_run"]["run_id"] == report["runs"][1]["run_id"]  # the one before, finished
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
        killed = stripe_sf(["status", "--config", str(cfg), "--json", "--check", "--max-cursor-age", "30d"],
                           world.cli_env(), timeout=30)
        assert killed.returncode == ExitCode.UNHEALTHY, killed.stderr
        report = json.loads(killed.stdout)
        assert report["running"] is None
        assert report["last_run"]["abnormal"] is True and report["last_run"]["exit_code"] is None
        assert any("ended abnormally" in p for p in report["health"]["problems"])
        text = stripe_sf(["status", "--config", str(cfg)], world.cli_env(), timeout=30)
        assert "ended abnormally" in text.stdout and text.returncode == 0
        rerun = stripe_sf(["sync", "--config", str(cfg)], world.cli_env())
        assert rerun.returncode in (0, 3), rerun.stderr
        healthy = stripe_sf(["status", "--config", str(cfg), "--check"], world.cli_env(), timeout=30)
        assert healthy.returncode == ExitCode.OK, healthy.stdout


# --- the metrics file ------------------------------------------------------------------------------------------

def test_sync_writes_its_figures_for_the_textfile_collector_atomically(runner, config, cli_env, sc, tmp_path):
    collector = tmp_path / "textfile"
    collector.mkdir()
    prom = collector / "stripe_sf_sync.prom"
    result = runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc), "--json",
                                 "--metrics-file", str(prom)], env=cli_env)
    assert result.exit_code == ExitCode.DEAD_LETTERS, result.output
    summary = json.loads(result.stdout)
    m = metrics(prom)
    sync = (("account", "default"), ("command", "sync"))
    assert m[("stripe_sf_last_run_exit_code", sync)] == 3
    assert m[("stripe_sf_last_run_events_read", sync)] == summary["events_read"] == len(sc.events)
    assert m[("stripe_sf_last_run_events", (*sync, ("outcome", "applied")))] == summary["applied"]
    assert m[("stripe_sf_last_run_events", (*sync, ("outcome", "dead_lettered")))] == 1
    assert m[("stripe_sf_last_run_api_calls", (sync[0], ("api", "salesforce"), sync[1]))] == \
        summary["salesforce_calls"]
    assert m[("stripe_sf_dead_letters_open", sync)] == 1
    assert m[("stripe_sf_salesforce_api_used", sync)] == summary["salesforce_api_used"]
    assert abs(m[("stripe_sf_last_run_timestamp_seconds", sync)] - time.time()) < 60
    assert m[("stripe_sf_last_success_timestamp_seconds", sync)] == \
        pytest.approx(m[("stripe_sf_last_run_timestamp_seconds", sync)], abs=2)
    assert abs(m[("stripe_sf_cursor_current_timestamp_seconds", sync)] - time.time()) < 60
    assert m[("stripe_sf_cursor_timestamp_seconds", sync)] < time.time() - 3600

    # Replaced by a rename, never rewritten in place: a reader holding the old file still reads it whole.
    first = prom.read_text()
    with prom.open() as reader:
        again = runner.invoke(app, ["sync", "--config", str(config), "--metrics-file", str(prom)], env=cli_env)
        assert again.exit_code == ExitCode.OK, again.output
        assert reader.read() == first
    assert prom.read_text() != first and metrics(prom)[("stripe_sf_last_run_exit_code", sync)] == 0
    assert sorted(p.name for p in collector.iterdir()) == ["stripe_sf_sync.prom"]  # no temporary file left


def test_a_failed_run_writes_its_exit_code_and_keeps_the_last_success(runner, config, cli_env, sc, org, tmp_path):
    prom = tmp_path / "sync.prom"
    first = runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc), "--max-events", "2",
                                "--metrics-file", str(prom)], env=cli_env)
    assert first.exit_code == ExitCode.OK, first.output
    sync = (("account", "default"), ("command", "sync"))
    succeeded = metrics(prom)[("stripe_sf_last_success_timestamp_seconds", sync)]
    inode = prom.stat().st_ino
    org.expire_sessions()
    failed = runner.invoke(app, ["sync", "--config", str(config), "--metrics-file", str(prom)], env=cli_env)
    assert failed.exit_code == ExitCode.UNAVAILABLE, failed.output
    assert prom.stat().st_ino != inode  # a new file renamed into place
    m = metrics(prom)
    assert m[("stripe_sf_last_run_exit_code", (("account", "default"), ("command", "sync")))] == ExitCode.UNAVAILABLE
    assert m[("stripe_sf_last_success_timestamp_seconds", (("account", "default"), ("command", "sync")))] == succeeded


def test_backfill_writes_its_figures_under_its_own_command(runner, config, cli_env, sc, tmp_path):
    prom = tmp_path / "backfill.prom"
    result = runner.invoke(app, ["backfill", "--config", str(config), "--since", since(sc), "--json",
                                 "--metrics-file", str(prom)], env=cli_env)
    assert result.exit_code in (ExitCode.OK, ExitCode.DEAD_LETTERS), result.output
    summary = json.loads(result.stdout)
    m = metrics(prom)
    backfill = (("account", "default"), ("command", "backfill"))
    assert m[("stripe_sf_last_run_exit_code", backfill)] == result.exit_code
    assert m[("stripe_sf_last_run_events_read", backfill)] == summary["events_read"] > 0


@pytest.mark.parametrize("case", ["missing directory", "dry run"])
def test_a_metrics_file_that_cannot_be_written_is_a_usage_error_before_any_call(runner, config, cli_env, sc,
                                                                               stripe_sb, tmp_path, case):
    prom = tmp_path / "nowhere" / "sync.prom" if case == "missing directory" else tmp_path / "sync.prom"
    extra = ["--dry-run"] if case == "dry run" else []
    calls = stripe_sb.request_count
    result = runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc), "--metrics-file", str(prom),
                                 *extra], env=cli_env)
    assert result.exit_code == ExitCode.CONFIG, result.output
    expected = (f"the directory {prom.parent} does not exist" if case == "missing directory" else
                "--metrics-file cannot be combined with --dry-run")
    assert expected in result.output
    assert stripe_sb.request_count == calls and not prom.exists()


# --- progress on a terminal ------------------------------------------------------------------------------------

def test_a_sync_on_a_terminal_shows_progress_like_backfill(runner, config, cli_env, sc):
    result = runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc)],
                           env={**cli_env, "TTY_COMPATIBLE": "1", "COLUMNS": "120"})
    assert result.exit_code == ExitCode.DEAD_LETTERS, result.output
    assert f"{len(sc.events)} read" in result.stderr and "applied" in result.stderr and "/s" in result.stderr
    piped = runner.invoke(app, ["sync", "--config", str(config)], env=cli_env)
    assert "/s" not in piped.stderr  # cron gets no progress display
