"""The CLI: exit codes, messages, --help examples, JSON output. Runs the real commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from stripe_sf_sandbox.scenario import WON_STAGE
from stripe_sf_sync import __version__
from stripe_sf_sync.cli import app
from stripe_sf_sync.config import example_config, load_config, require_org_values
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.state import StateStore

from .conftest import since, write_config

COMMANDS = [["sync"], ["discover-config"], ["status"], ["demo"], ["dlq", "list"], ["dlq", "retry"],
            ["dlq", "drop"]]


@pytest.fixture
def runner():
    return CliRunner()


def cli_env(stripe_sb, sf_sb):
    return {"STRIPE_API_KEY": stripe_sb.api_key, "STRIPE_API_BASE": stripe_sb.base_url,
            "SF_INSTANCE_URL": sf_sb.instance_url, "SF_ACCESS_TOKEN": sf_sb.access_token,
            "REQUESTS_CA_BUNDLE": sf_sb.ca_path}


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help_with_an_example(runner, cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output


def test_version(runner):
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_bad_config_is_one_paragraph_with_the_config_exit_code(runner, tmp_path):
    cfg = tmp_path / "sync.yaml"
    cfg.write_text("sync:\n  batch_size: -3\nbogus: 1\n")
    result = runner.invoke(app, ["sync", "--config", str(cfg)], env={"STRIPE_API_KEY": ""})
    assert result.exit_code == ExitCode.CONFIG
    assert "sync.batch_size" in result.output and "bogus: unknown key" in result.output
    assert "Traceback" not in result.output


def test_missing_secrets_are_all_named(runner, tmp_path):
    cfg = write_config(tmp_path / "sync.yaml", **{"won_stage: null": "won_stage: Won"})
    clean = {k: "" for k in os.environ if k.startswith(("SF_", "STRIPE_"))}
    result = runner.invoke(app, ["sync", "--config", str(cfg), "--since", "2026-11-01"], env=clean)
    assert result.exit_code == ExitCode.CONFIG
    assert "STRIPE_API_KEY" in result.output and "no Salesforce credentials" in result.output
    assert "Traceback" not in result.output


def test_unset_won_stage_points_to_discover_config(runner, tmp_path):
    cfg = write_config(tmp_path / "sync.yaml")
    result = runner.invoke(app, ["sync", "--config", str(cfg)])
    assert result.exit_code == ExitCode.CONFIG and "discover-config --write" in result.output


def test_bad_since_is_a_usage_error(runner, tmp_path):
    cfg = write_config(tmp_path / "sync.yaml", **{"won_stage: null": "won_stage: Won"})
    env = {"STRIPE_API_KEY": "sk_test_x1234567", "SF_INSTANCE_URL": "https://x.example", "SF_ACCESS_TOKEN": "t"}
    result = runner.invoke(app, ["sync", "--config", str(cfg), "--since", "last tuesday"], env=env)
    assert result.exit_code == ExitCode.CONFIG and "YYYY-MM-DD" in result.output


def test_full_cycle_through_the_cli(runner, tmp_path, stripe_sb, sf_sb, sc, org):
    env = cli_env(stripe_sb, sf_sb)
    cfg = write_config(tmp_path / "sync.yaml")
    # discover-config --write keeps the comments and every other key
    result = runner.invoke(app, ["discover-config", "--config", str(cfg), "--write"], env=env)
    assert result.exit_code == 0, result.output
    text = cfg.read_text()
    assert "won_stage: Closed Won" in text and "# Share of the org's daily API allowance" in text
    assert "account_csm: CSM__c" in text and "New Business: 012" in text

    result = runner.invoke(app, ["sync", "--config", str(cfg), "--since", since(sc), "--json"], env=env)
    assert result.exit_code == ExitCode.DEAD_LETTERS, result.output
    summary = json.loads(result.stdout)
    for key in ("events_read", "applied", "skipped_stale", "dead_lettered", "stripe_calls", "salesforce_calls",
                "salesforce_api_used", "duration_s"):
        assert key in summary
    assert summary["dead_lettered"] == 1

    result = runner.invoke(app, ["sync", "--config", str(cfg)], env=env)
    assert result.exit_code == ExitCode.OK and "0 events read" in result.output

    result = runner.invoke(app, ["dlq", "list", "--config", str(cfg), "--json"], env=env)
    [dead] = json.loads(result.stdout)
    assert dead["error_code"] == "NO_ACCOUNT" and dead["attempts"] == 1

    result = runner.invoke(app, ["status", "--config", str(cfg), "--json"], env=env)
    report = json.loads(result.stdout)
    assert report["dead_letters"] == 1 and report["cursor"]["event_id"] == sc.events[-1]
    assert report["api_usage"]["used"] > 0 and len(report["runs"]) == 2

    result = runner.invoke(app, ["dlq", "retry", "--config", str(cfg), "--all"], env=env)
    assert result.exit_code == ExitCode.DEAD_LETTERS  # still no Account for Hooli
    org.insert("Account", {"Name": "Hooli", "Stripe_Customer_ID__c": sc.customers["hooli"]})
    result = runner.invoke(app, ["dlq", "retry", dead["event_id"], "--config", str(cfg)], env=env)
    assert result.exit_code == ExitCode.OK, result.output
    result = runner.invoke(app, ["dlq", "drop", dead["event_id"], "--config", str(cfg)], env=env)
    assert result.exit_code == ExitCode.CONFIG and "not an open dead letter" in result.output

    result = runner.invoke(app, ["status", "--config", str(cfg)], env=env)
    assert result.exit_code == 0 and "Open dead letters: 0" in result.output


def test_dry_run_prints_the_planned_writes(runner, tmp_path, stripe_sb, sf_sb, sc, org):
    env = cli_env(stripe_sb, sf_sb)
    cfg = write_config(tmp_path / "sync.yaml")
    runner.invoke(app, ["discover-config", "--config", str(cfg), "--write"], env=env)
    result = runner.invoke(app, ["sync", "--config", str(cfg), "--since", since(sc), "--dry-run"], env=env)
    assert "Planned writes" in result.output and "dry run" in result.output
    assert org.records("Task") == []


def test_second_concurrent_run_exits_with_the_lock_code(tmp_path, stripe_sb, sf_sb, sc):
    """A real second process, as cron would start it."""
    env = {**os.environ, **cli_env(stripe_sb, sf_sb)}
    cfg = write_config(tmp_path / "sync.yaml", **{"won_stage: null": "won_stage: Won"})
    with StateStore.open(tmp_path / "stripe-sf-state.sqlite") as held:
        held.acquire_lock()
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "stripe_sf_sync", "sync", "--config", str(cfg)], env=env,
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == ExitCode.LOCKED, proc.stderr
    assert "Another stripe-sf run" in proc.stderr
    assert time.monotonic() - started < 20


def test_status_without_state_says_what_to_do(runner, tmp_path):
    cfg = write_config(tmp_path / "sync.yaml")
    result = runner.invoke(app, ["status", "--config", str(cfg)])
    assert result.exit_code == ExitCode.OK and "Never run" in result.output and "sync --since" in result.output


def test_corrupt_state_is_a_clear_error(runner, tmp_path):
    cfg = write_config(tmp_path / "sync.yaml")
    (tmp_path / "stripe-sf-state.sqlite").write_bytes(b"garbage" * 1000)
    result = runner.invoke(app, ["status", "--config", str(cfg)])
    assert result.exit_code == ExitCode.STATE and "move it aside" in result.output
    assert "Traceback" not in result.output


def test_secrets_never_printed_even_on_failure_at_debug(runner, tmp_path, stripe_sb, sf_sb, sc, org):
    env = cli_env(stripe_sb, sf_sb)
    cfg = write_config(tmp_path / "sync.yaml")
    runner.invoke(app, ["discover-config", "--config", str(cfg), "--write"], env=env)
    org.expire_sessions()
    result = runner.invoke(app, ["sync", "--config", str(cfg), "--since", since(sc), "--debug"], env=env)
    assert result.exit_code == ExitCode.UNAVAILABLE
    for secret in (stripe_sb.api_key, sf_sb.access_token):
        assert secret not in result.output
        assert secret.encode() not in (tmp_path / "stripe-sf-state.sqlite").read_bytes()


def test_demo_runs(runner):
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    for text in ("Opportunities", "Accounts", "Tasks", "Payment Failed - Immediate Action Required", "NO_ACCOUNT",
                 "0 events read"):
        assert text in result.output


def test_demo_without_the_sandbox_says_how_to_install_it():
    # A fresh interpreter in which the stand-ins cannot be imported, as after `pip install stripe-sf-sync`.
    code = ("import sys; sys.modules['stripe_sf_sandbox'] = None; sys.argv = ['stripe-sf', 'demo']; "
            "from stripe_sf_sync.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == ExitCode.CONFIG, done.stderr
    assert "needs the stand-ins (the stripe-sf-sandbox distribution), and stripe_sf_sandbox is not installed" \
        in " ".join(done.stderr.split())
    assert "pip install -e ./sandbox" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_discover_config_write_creates_sync_yaml_from_the_packaged_example(runner, tmp_path, monkeypatch, stripe_sb,
                                                                          sf_sb):
    """The README's set-up step as written: no sync.yaml yet, `stripe-sf discover-config --write` in its folder."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["discover-config", "--write"], env=cli_env(stripe_sb, sf_sb))
    assert result.exit_code == 0, result.output
    written = (tmp_path / "sync.yaml").read_text()
    assert f"won_stage: {WON_STAGE}" in written
    first_comment = example_config().splitlines()[0]
    assert written.startswith(first_comment)  # the example's comments document every key
    loaded = load_config(tmp_path / "sync.yaml")
    require_org_values(loaded.settings, "sync.yaml")
    assert loaded.settings.salesforce.record_types


def test_json_log_lines_off_a_tty_and_max_events(runner, tmp_path, stripe_sb, sf_sb, sc):
    env = cli_env(stripe_sb, sf_sb)
    cfg = write_config(tmp_path / "sync.yaml", **{"log_format: auto": "log_format: json"})
    runner.invoke(app, ["discover-config", "--config", str(cfg), "--write"], env=env)
    result = runner.invoke(app, ["sync", "--config", str(cfg), "--since", since(sc), "--max-events", "3",
                                 "--json"], env=env)
    assert json.loads(result.stdout)["events_read"] == 3
    result = runner.invoke(app, ["sync", "--config", str(cfg), "--json"], env=env)
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(rec["level"] == "warning" and "dead-lettered" in rec["message"] for rec in lines)
    assert json.loads(result.stdout)["events_read"] == len(sc.events) - 3


@pytest.mark.parametrize("command", ["sync", "backfill"])
def test_since_in_the_future_is_a_usage_error_for_sync_and_backfill(runner, tmp_path, stripe_sb, sf_sb, command):
    """Issue 20 §5: `backfill --since` in the future exited 0 while `sync` exited 2."""
    cfg = write_config(tmp_path / "sync.yaml", **{"won_stage: null": "won_stage: Won"})
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 2 * 86400))
    result = runner.invoke(app, [command, "--config", str(cfg), "--since", tomorrow], env=cli_env(stripe_sb, sf_sb))
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert f"--since {tomorrow}" in result.output and "is in the future" in result.output


# What a command imports when it runs. Typer itself imports pydantic to coerce parameters (typer/_adapters.py)
# and rich to format --help; the rest is ours to leave out until a command needs it.
HEAVY = ("stripe", "simple_salesforce", "requests", "urllib3", "psycopg", "starlette", "uvicorn",
         "prometheus_client", "ruamel", "ssl")


def _imported(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `code` (which ends by calling what it tests) and print the top-level modules loaded, on stderr."""
    report = ("import sys, atexit; atexit.register(lambda: print(sorted({m.split('.')[0] for m in sys.modules}), "
              "file=sys.stderr)); ")
    return subprocess.run([sys.executable, "-c", report + code], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, check=False)


def test_the_cli_starts_without_what_its_commands_use():
    """Issue 20 §5: every command (and every TAB completion) took 0.6 s to start, importing the Stripe SDK,
    simple-salesforce, pydantic and the rest before parsing its arguments."""
    imported = _imported("import stripe_sf_sync.cli")
    loaded = set(eval(imported.stderr.strip().splitlines()[-1]))  # noqa: S307 (our own subprocess's list)
    # What Typer itself loads on import is not ours to defer (older Typer versions, which pyproject.toml allows
    # and CI's lowest-versions run installs, import rich at once).
    typer_alone = set(eval(_imported("import typer").stderr.strip().splitlines()[-1]))  # noqa: S307
    ours = loaded - typer_alone
    assert not ours & {*HEAVY, "pydantic", "rich"}, ours & {*HEAVY, "pydantic", "rich"}
    metadata = _imported("import stripe_sf_sync.cli; print('importlib.metadata' in sys.modules)")
    assert metadata.stdout.strip() == "False"  # --version reads the installed version when asked
    completion = _imported("sys.argv[0] = 'stripe-sf'; from stripe_sf_sync.cli import main; main()",
                           {"_STRIPE_SF_COMPLETE": "complete_bash", "COMP_WORDS": "stripe-sf sy", "COMP_CWORD": "1"})
    assert completion.stdout.split() == ["sync"], completion
    loaded = set(eval(completion.stderr.strip().splitlines()[-1])) - typer_alone  # noqa: S307
    assert not loaded & {*HEAVY, "rich"}, loaded & {*HEAVY, "rich"}


def test_a_command_still_loads_what_it_uses(runner, tmp_path):
    cfg = write_config(tmp_path / "sync.yaml")
    result = runner.invoke(app, ["status", "--config", str(cfg), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["never_run"] is True
    assert f"stripe-sf {__version__}" in runner.invoke(app, ["--version"]).output


@pytest.mark.parametrize(("columns", "terminal"), [(80, False), (80, True), (120, True)])
def test_demo_fits_the_terminal_width(runner, columns, terminal):
    """Issue 20 §5: the demo printed 150 columns whatever the terminal's width."""
    env = {"COLUMNS": str(columns), **({"TTY_COMPATIBLE": "1", "NO_COLOR": "1"} if terminal else {})}
    result = runner.invoke(app, ["demo"], env=env)
    assert result.exit_code == 0, result.output
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    # A block's `key: value` line keeps a long value whole (render/tables.py): the terminal wraps it, a pipe never does.
    too_wide = [line for line in plain.splitlines()
                if len(line) > columns and not re.match(r"^[A-Za-z_ ]+: +\S", line)]
    assert not too_wide, too_wide
    assert ("┃" in plain) == terminal  # tables on a terminal where they fit; blocks of lines in a pipe


def test_help_at_80_columns_cuts_nothing_short():
    """Issue 20 §5: at 80 columns `backfill --help` showed its default as `subscriptions,payment_inte…`."""
    script = ("import sys; from typer.testing import CliRunner; from stripe_sf_sync.cli import app; "
              "sys.stdout.write(CliRunner().invoke(app, sys.argv[1:] + ['--help']).output)")
    for cmd in [[], *COMMANDS, ["backfill"], ["reconcile"], ["doctor"], ["serve"], ["sandbox"], ["state", "migrate"]]:
        done = subprocess.run([sys.executable, "-c", script, *cmd], env={**os.environ, "COLUMNS": "80"},
                              capture_output=True, text=True, check=True)
        assert "Usage" in done.stdout and "…" not in done.stdout, (cmd, done.stdout)
        assert max(len(line) for line in done.stdout.splitlines()) <= 80, cmd
