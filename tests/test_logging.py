"""Logs an operator can read, through the CLI: a line per batch, a warning per retry, one line per API call at
debug (no body, no query string, no secret), --quiet, JSON lines with the run id and fields, the global
options before or after the command name and from the environment, -h and shell completion."""

from __future__ import annotations

import json
import math
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode

from .conftest import since, write_config
from .test_cli import cli_env

RUN_COMMANDS = [["sync"], ["backfill", "--since", "2026-01-01"], ["discover-config"], ["status"], ["dlq", "list"],
                ["dlq", "retry", "--all"], ["dlq", "drop", "evt_1"]]
# Stripe: GET /v1/events -> 200 in 3 ms (request req_…)
STRIPE_CALL = re.compile(r"Stripe: (GET|POST|DELETE) (/v1/[^ ?]*) -> (\d{3}|no response) in \d+ ms")
SALESFORCE_CALL = re.compile(r"Salesforce: (GET|POST|PATCH|PUT|DELETE) (/services/[^ ?]*) -> \d{3} in \d+ ms")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cfg(tmp_path: Path, runner: CliRunner, stripe_sb, sf_sb) -> Path:
    """A discovered config with batches of 4 events."""
    path = write_config(tmp_path / "sync.yaml", **{"batch_size: 10000": "batch_size: 4"})
    done = runner.invoke(app, ["discover-config", "--config", str(path), "--write"], env=cli_env(stripe_sb, sf_sb))
    assert done.exit_code == 0, done.output
    return path


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every line of stderr, each parsed on its own: any line that is not one JSON object fails the test."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(p, dict) for p in parsed)
    return parsed


def test_each_batch_logs_one_info_line_with_its_events_outcomes_calls_and_seconds(runner, cfg, stripe_sb, sf_sb,
                                                                                 sc):
    env = cli_env(stripe_sb, sf_sb)
    done = runner.invoke(app, ["sync", "--config", str(cfg), "--since", since(sc), "--log-format", "json"], env=env)
    assert done.exit_code == ExitCode.DEAD_LETTERS, done.output
    lines = json_lines(done.stderr)
    batches = [rec for rec in lines if rec.get("kind") == "batch"]
    assert len(batches) == math.ceil(len(sc.events) / 4)
    assert all(rec["level"] == "info" and rec["message"].startswith("batch: ") for rec in batches)
    assert sum(rec["events"] for rec in batches) == len(sc.events)
    assert sum(rec["dead_lettered"] for rec in batches) == 1
    [summary] = [rec for rec in lines if rec.get("kind") == "summary"]
    assert sum(rec["applied"] for rec in batches) == summary["applied"]
    # the calls of every batch add up to the run's (reading the events is part of the first batch's cost)
    assert sum(rec["stripe_calls"] for rec in batches) == summary["stripe_calls"] > 0
    assert sum(rec["salesforce_calls"] for rec in batches) == summary["salesforce_calls"] > 0
    assert all(rec["duration_s"] >= 0 for rec in batches)

    # plain: the same line, for people
    done = runner.invoke(app, ["sync", "--config", str(cfg), "--log-format", "plain"], env=env)
    assert done.exit_code == ExitCode.OK, done.output
    assert re.search(r" INFO sync finished with exit code 0: 0 events read", done.stderr)


def test_a_dry_run_s_batch_and_summary_lines_say_what_would_happen(runner, cfg, stripe_sb, sf_sb, sc):
    done = runner.invoke(app, ["sync", "--config", str(cfg), "--since", since(sc), "--dry-run", "--log-format",
                               "json"], env=cli_env(stripe_sb, sf_sb))
    lines = [rec for rec in json_lines(done.stderr) if rec.get("kind") in ("batch", "summary")]
    assert [rec["kind"] for rec in lines][-1] == "summary" and len(lines) == 1 + math.ceil(len(sc.events) / 4)
    for rec in lines:
        assert rec["dry_run"] is True and rec["run_id"] is None  # a dry run is not recorded
        assert "would apply" in rec["message"] and "dead-lettered" not in rec["message"]
    assert "would dead-letter 1" in lines[-1]["message"]


def test_a_retry_is_a_warning_with_its_reason_and_attempt_in_every_format(runner, cfg, stripe_sb, sf_sb, sc):
    env = cli_env(stripe_sb, sf_sb)
    stripe_sb.faults.fail_matching("GET", r"^/v1/events", 503)
    sf_sb.faults.fail_matching("*", r"^/services/data/", 503)
    done = runner.invoke(app, ["sync", "--config", str(cfg), "--since", since(sc), "--log-format", "json"], env=env)
    assert done.exit_code == ExitCode.DEAD_LETTERS, done.output
    retries = {rec["edge"]: rec for rec in json_lines(done.stderr) if rec.get("kind") == "retry"}
    assert retries["stripe"]["level"] == "warning" and retries["stripe"]["attempt"] == 2
    assert retries["stripe"]["reason"].startswith("HTTP 503") and retries["stripe"]["path"] == "/v1/events"
    assert retries["salesforce"]["attempt"] == 2 and "HTTP 503" in retries["salesforce"]["reason"]
    assert retries["salesforce"]["max_attempts"] == 5 and retries["salesforce"]["run_id"] is not None

    for fmt in (["--log-format", "plain"], ["--quiet"]):
        stripe_sb.faults.fail_matching("GET", r"^/v1/events", 503)
        done = runner.invoke(app, ["sync", "--config", str(cfg), *fmt], env=env)
        assert done.exit_code == ExitCode.OK, done.output
        assert re.search(r" WARNING Stripe: HTTP 503 \S+ on GET /v1/events; retrying \(attempt 2 of 6\)",
                         done.stderr), done.stderr


def test_debug_logs_each_call_without_bodies_query_strings_or_secrets(runner, cfg, stripe_sb, sf_sb, sc):
    env = cli_env(stripe_sb, sf_sb)
    done = runner.invoke(app, ["sync", "--config", str(cfg), "--since", since(sc), "-v", "--log-format", "json"],
                         env=env)
    assert done.exit_code == ExitCode.DEAD_LETTERS, done.output
    calls = [rec for rec in json_lines(done.stderr) if rec.get("kind") == "api_call"]
    stripe_calls = [c for c in calls if c["edge"] == "stripe"]
    sf_calls = [c for c in calls if c["edge"] == "salesforce"]
    summary = json.loads(runner.invoke(app, ["status", "--config", str(cfg), "--json"]).stdout)["runs"][0]["summary"]
    assert len(stripe_calls) == summary["stripe_calls"] and len(sf_calls) == summary["salesforce_calls"]
    assert {c["path"] for c in stripe_calls} >= {"/v1/events"}
    assert any(c["path"].endswith("/query") or "/composite" in c["path"] for c in sf_calls)
    for c in calls:
        assert c["level"] == "debug" and c["status"] == 200 and c["duration_ms"] >= 0
        assert "?" not in c["path"] and "?" not in c["message"]
    _assert_no_body_query_or_secret(done.stderr, stripe_sb, sf_sb)

    # plain, -v before the command name
    done = runner.invoke(app, ["-v", "--log-format", "plain", "sync", "--config", str(cfg)], env=env)
    assert STRIPE_CALL.search(done.stderr), done.stderr
    _assert_no_body_query_or_secret(done.stderr, stripe_sb, sf_sb)
    done = runner.invoke(app, ["dlq", "retry", "--all", "--config", str(cfg), "--debug", "--log-format", "plain"],
                         env=env)
    assert SALESFORCE_CALL.search(done.stderr), done.stderr
    _assert_no_body_query_or_secret(done.stderr, stripe_sb, sf_sb)


def _assert_no_body_query_or_secret(stderr: str, stripe_sb, sf_sb) -> None:
    for secret in (stripe_sb.api_key, sf_sb.access_token):
        assert secret not in stderr
    # SOQL goes in a query string (GET /query?q=) or a composite body: neither is logged
    for soql in ("SELECT ", " FROM ", "WHERE ", "q=SELECT"):
        assert soql not in stderr
    # bodies: Stripe's and Salesforce's JSON, and the Stripe SDK's own debug lines
    for body in ('"object":', '"livemode"', '"attributes"', "API response body", "Post details",
                 "Request to Stripe api"):
        assert body not in stderr


def test_quiet_shows_warnings_and_errors_only(runner, cfg, stripe_sb, sf_sb, sc):
    env = cli_env(stripe_sb, sf_sb)
    done = runner.invoke(app, ["sync", "--quiet", "--config", str(cfg), "--since", since(sc)], env=env)
    assert done.exit_code == ExitCode.DEAD_LETTERS, done.output
    assert done.stdout == ""  # the summary only with --json
    lines = done.stderr.splitlines()
    assert any(" WARNING dead-lettered " in line for line in lines)
    assert len(sc.unmatched_events) == 1 and "1 event was dead-lettered: see `stripe-sf dlq list`" in done.stderr
    assert not any(" INFO " in line or " DEBUG " in line for line in lines), done.stderr

    done = runner.invoke(app, ["-q", "sync", "--config", str(cfg), "--json"], env=env)
    assert done.exit_code == ExitCode.OK and done.stderr == ""
    assert json.loads(done.stdout)["events_read"] == 0

    done = runner.invoke(app, ["-q", "sync", "-v", "--config", str(cfg)], env=env)
    assert done.exit_code == ExitCode.CONFIG and "choose one" in done.stderr


def test_json_lines_carry_the_run_id_and_fields_and_stdout_only_what_json_asks_for(runner, cfg, stripe_sb, sf_sb,
                                                                                   sc):
    env = cli_env(stripe_sb, sf_sb)
    done = runner.invoke(app, ["sync", "--config", str(cfg), "--since", since(sc), "--log-format", "json"], env=env)
    assert done.exit_code == ExitCode.DEAD_LETTERS
    assert done.stdout == ""
    lines = json_lines(done.stderr)
    run_id = json.loads(runner.invoke(app, ["status", "--config", str(cfg), "--json"]).stdout)["runs"][0]["run_id"]
    assert all(rec["run_id"] == run_id for rec in lines), lines
    assert all({"ts", "level", "logger", "message", "kind"} <= rec.keys() for rec in lines)
    [summary] = [rec for rec in lines if rec["kind"] == "summary"]
    assert summary["exit_code"] == ExitCode.DEAD_LETTERS and summary["events_read"] == len(sc.events)
    assert summary["dead_lettered"] == 1 and summary["command"] == "sync"
    [dead] = [rec for rec in lines if rec["kind"] == "dead_letter"]
    assert dead["code"] == "NO_ACCOUNT" and dead["event_id"] in sc.events and dead["level"] == "warning"
    [advice] = [rec for rec in lines if rec["kind"] == "dead_letters"]
    assert advice["dead_lettered"] == 1 and "dlq retry --all" in advice["message"]

    # --json: the summary on stdout, the log lines still JSON on stderr
    done = runner.invoke(app, ["sync", "--config", str(cfg), "--log-format", "json", "--json"], env=env)
    assert json.loads(done.stdout)["events_read"] == 0
    assert [rec["kind"] for rec in json_lines(done.stderr)] == ["summary"]

    # a failure: the error is a JSON line too, with its exit code, Stripe's request id and the run's id; with -v
    # its traceback is a field, not lines
    stripe_sb.faults.fail_matching("GET", r"^/v1/events", 401, {"error": {"type": "invalid_request_error",
                                                                          "code": "api_key_expired",
                                                                          "message": "Expired API Key"}})
    done = runner.invoke(app, ["sync", "--config", str(cfg), "--log-format", "json", "-v"], env=env)
    assert done.exit_code == ExitCode.UNAVAILABLE
    assert done.stdout == ""
    lines = json_lines(done.stderr)
    [error] = [rec for rec in lines if rec["kind"] == "error"]
    [summary] = [rec for rec in lines if rec["kind"] == "summary"]
    assert error["level"] == "error" and error["exit_code"] == ExitCode.UNAVAILABLE == summary["exit_code"]
    assert error["error"] == "FatalSyncError" and error["request_id"].startswith("req_")
    assert "STRIPE_API_KEY" in error["hint"] and "Stripe rejected the API key" in error["message"]
    assert error["run_id"] == summary["run_id"] == run_id + 2
    assert "Traceback" in error["traceback"]
    assert stripe_sb.api_key not in done.stderr

    # before any run: a config error, one line, no run id
    done = runner.invoke(app, ["status", "--config", str(cfg.parent / "missing.yaml"), "--log-format", "json"])
    [error] = json_lines(done.stderr)
    assert done.exit_code == ExitCode.CONFIG == error["exit_code"] and error["run_id"] is None
    assert error["problems"] == [f"{cfg.parent / 'missing.yaml'} does not exist"]


@pytest.mark.parametrize("cmd", RUN_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_global_options_work_before_or_after_every_command(runner, tmp_path, cmd, before):
    missing = str(tmp_path / "nowhere" / "sync.yaml")
    opts = ["--config", missing, "--log-format", "json", "-v"]
    done = runner.invoke(app, [*opts, *cmd] if before else [*cmd, *opts])
    assert done.exit_code == ExitCode.CONFIG, done.output
    [error] = json_lines(done.stderr)  # --log-format reached the command
    assert f"{missing} does not exist" in error["message"]  # --config did
    assert "Traceback" in error["traceback"]  # -v did
    # --quiet and -v on either side of the name both reach the command: it refuses the pair
    done = runner.invoke(app, ["-q", *cmd, "-v"] if before else ["-v", *cmd, "--quiet"])
    assert done.exit_code == ExitCode.CONFIG and "choose one" in done.output
    # the short -c, after the name and before
    done = runner.invoke(app, ["-c", missing, *cmd] if before else [*cmd, "-c", missing])
    assert done.exit_code == ExitCode.CONFIG and f"{missing} does not exist" in done.output


def test_demo_takes_the_logging_options_before_or_after_its_name(runner):
    done = runner.invoke(app, ["--log-format", "json", "-q", "demo"])
    assert done.exit_code == 0 and "Opportunities" in done.stdout
    assert {rec["level"] for rec in json_lines(done.stderr)} == {"warning"}  # the demo's dead letter
    done = runner.invoke(app, ["demo", "--log-format", "json"])
    assert done.exit_code == 0
    assert any(rec.get("kind") == "summary" for rec in json_lines(done.stderr))


def test_the_environment_sets_the_config_and_the_log_format_and_options_win(runner, tmp_path):
    in_env, on_cli = str(tmp_path / "env.yaml"), str(tmp_path / "cli.yaml")
    env = {"STRIPE_SF_CONFIG": in_env, "STRIPE_SF_LOG_FORMAT": "json"}
    for cmd in (["status"], ["dlq", "list"], ["sync"]):
        done = runner.invoke(app, cmd, env=env)
        [error] = json_lines(done.stderr)
        assert done.exit_code == ExitCode.CONFIG and f"{in_env} does not exist" in error["message"]
    done = runner.invoke(app, ["--config", on_cli, "status", "--log-format", "plain"], env=env)
    assert done.exit_code == ExitCode.CONFIG and f"{on_cli} does not exist" in done.stderr
    assert in_env not in done.output and not done.stderr.startswith("{")
    done = runner.invoke(app, ["status"], env={**env, "STRIPE_SF_LOG_FORMAT": "xml"})
    assert done.exit_code == ExitCode.CONFIG and "xml" in done.output


def test_the_config_s_log_format_applies_when_neither_option_nor_environment_says(runner, tmp_path):
    cfg = write_config(tmp_path / "sync.yaml", **{"log_format: auto": "log_format: json"})
    done = runner.invoke(app, ["dlq", "list", "--config", str(cfg)])
    [error] = json_lines(done.stderr)  # no state yet
    assert done.exit_code == ExitCode.STATE == error["exit_code"]
    done = runner.invoke(app, ["dlq", "list", "--config", str(cfg)], env={"STRIPE_SF_LOG_FORMAT": "plain"})
    assert done.exit_code == ExitCode.STATE and not done.stderr.startswith("{")


def test_stripe_log_set_in_the_environment_is_warned_about(runner, tmp_path):
    """The Stripe SDK prints bodies to stderr by itself when STRIPE_LOG is set: say so, and how to stop it."""
    done = runner.invoke(app, ["status", "--config", str(tmp_path / "sync.yaml")], env={"STRIPE_LOG": "debug"})
    assert "STRIPE_LOG is set" in done.stderr and "Unset it" in done.stderr


@pytest.mark.parametrize("cmd", [[], ["sync"], ["backfill"], ["dlq"], ["dlq", "list"], ["status"], ["demo"]],
                         ids=lambda c: " ".join(c) or "stripe-sf")
def test_h_is_help(runner, cmd):
    done = runner.invoke(app, [*cmd, "-h"])
    assert done.exit_code == 0 and "Usage:" in done.output
    assert done.output == runner.invoke(app, [*cmd, "--help"]).output


def test_shell_completion_is_offered_and_completes_commands_and_choices(tmp_path):
    script = Path(sys.executable).parent / "stripe-sf"
    env = {k: v for k, v in os.environ.items() if not k.startswith("_STRIPE_SF")}
    # Typer detects the shell from the process's ancestors, as in an operator's shell: run it under bash (the
    # trailing `exit` keeps bash from exec-ing it), so a suite started from cron or in the background passes too.
    shown = subprocess.run(["bash", "-c", f"'{script}' --show-completion; exit $?"], env=env, capture_output=True,
                           text=True, timeout=60, check=False)
    assert shown.returncode == 0 and "complete -o default -F _stripe_sf_completion stripe-sf" in shown.stdout

    def complete(words: str) -> list[str]:
        done = subprocess.run([script], env={**env, "_STRIPE_SF_COMPLETE": "complete_bash", "COMP_WORDS": words,
                                             "COMP_CWORD": str(len(words.split(" ")) - 1)},
                              capture_output=True, text=True, timeout=60, check=False)
        return done.stdout.split()

    assert complete("stripe-sf sy") == ["sync"]
    assert complete("stripe-sf status --log-format ") == ["auto", "plain", "json"]
    assert "--quiet" in complete("stripe-sf dlq list --q")


def test_on_a_terminal_the_batch_line_retries_and_summary_are_shown(cfg, stripe_sb, sf_sb, sc):
    """The auto format on a real terminal (a pseudo-terminal as stderr, as an operator's shell has)."""
    import pty

    stripe_sb.faults.fail_matching("GET", r"^/v1/events", 503)
    env = {**os.environ, **cli_env(stripe_sb, sf_sb), "COLUMNS": "400"}
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "stripe_sf_sync", "sync", "--config", str(cfg), "--since",
                             since(sc)], env=env, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not select.select([master], [], [], 1)[0]:
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    stdout = proc.communicate(timeout=60)[0].decode()
    shown = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode())
    assert proc.returncode == ExitCode.DEAD_LETTERS, shown
    assert "Stripe: HTTP 503" in shown and "retrying (attempt 2 of 6)" in shown
    assert "batch: 4 events" in shown and "sync finished with exit code 3" in shown
    assert "events read" in stdout  # the summary for people, on stdout
