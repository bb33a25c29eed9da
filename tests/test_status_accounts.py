"""`status` and `dlq` on a config with several Stripe accounts (issue 26): a report per account, one verdict
(`status --check` fails when any account is unhealthy, naming it), `dlq list` naming each letter's account, and
`dlq retry --all` that asks which account. Through the CLI, against the sandbox's platform, a separate account and
a connected one."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from stripe_sf_sandbox import scenario
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode

from .conftest import since

EU_KEY = "STRIPE_API_KEY_EU"
NARROW = {"COLUMNS": "80"}


def run(runner: CliRunner, cfg: Path, env: dict[str, str], *args: str) -> Any:
    result = runner.invoke(app, [*args, "--config", str(cfg)], env=env)
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture
def synced(runner, config: Path, cli_env, stripe_accounts: dict[str, StripeSandbox],
           sc: scenario.Scenario) -> tuple[Path, dict[str, str], dict[str, str]]:
    """A config with three accounts: the platform (the scenario: Hooli's event waits as a dead letter) and Europe
    (a subscription of a customer with no Account: a dead letter too) synced; the connected one never run.
    Returns the config, the environment and the account ids by name."""
    europe = stripe_accounts["separate"]
    f = StripeFactory(europe, seed=26)
    t = int(time.time()) - 3600
    cus = f.customer("Eurobrand", "billing@eurobrand.example", created=t - 86400)
    sub = f.subscription(cus["id"], [(f.price(4000), 1)], created=t)
    f.subscription_created(sub, t)
    ids = {name: stripe_accounts[key].account_id
           for name, key in (("platform", "platform"), ("europe", "separate"), ("connected", "connected"))}
    settings = yaml.safe_load(config.read_text())
    settings["stripe"]["accounts"] = [{"id": ids["platform"]}, {"id": ids["europe"], "api_key_env": EU_KEY},
                                      {"id": ids["connected"], "connected": True}]
    config.write_text(yaml.safe_dump(settings))
    env = {**cli_env, EU_KEY: europe.api_key}
    for name in ("platform", "europe"):
        result = run(runner, config, env, "sync", "--account", ids[name], "--since", since(sc))
        assert result.exit_code == ExitCode.DEAD_LETTERS, result.output
    return config, env, ids


def test_status_reports_each_accounts_cursor_and_check_fails_naming_the_unhealthy_one(runner, synced, sc):
    cfg, env, ids = synced
    report = json.loads(run(runner, cfg, env, "status", "--json").stdout)
    by_account = {r["account"]: r for r in report["accounts"]}
    assert list(by_account) == list(ids.values())  # the config's order
    assert by_account[ids["platform"]]["cursor"]["event_id"] == sc.events[-1]
    assert by_account[ids["europe"]]["cursor"]["event_id"] != sc.events[-1]  # its own account's event
    assert by_account[ids["connected"]]["cursor"] is None and by_account[ids["connected"]]["never_run"]
    assert [by_account[a]["dead_letters"] for a in ids.values()] == [1, 1, 0]

    result = run(runner, cfg, env, "status", "--check", "--max-cursor-age", "1h", "--json")
    assert result.exit_code == ExitCode.UNHEALTHY, result.output
    health = json.loads(result.stdout)["health"]
    connected = ids["connected"]
    assert not health["healthy"] and health["problems"]
    assert all(p.startswith(f"{connected}: ") for p in health["problems"])  # only the one never run
    assert f"`stripe-sf --account {connected} sync --since DATE`" in health["problems"][0]
    assert {w.split(":")[0] for w in health["warnings"]} == {ids["platform"], ids["europe"]}  # dead letters
    for name in ("platform", "europe"):
        result = run(runner, cfg, env, "--account", ids[name], "status", "--check", "--max-cursor-age", "1h")
        assert result.exit_code == ExitCode.OK, result.output
        assert result.stdout.startswith(f"Account: {ids[name]}\n")


@pytest.mark.parametrize("terminal", [False, True])
def test_status_for_people_prints_a_row_per_account_within_80_columns(runner, synced, terminal):
    cfg, env, ids = synced
    result = run(runner, cfg, {**env, **NARROW, **({"TTY_COMPATIBLE": "1"} if terminal else {})}, "status",
                 "--check")
    assert result.exit_code == ExitCode.UNHEALTHY, result.output
    table, _, verdict = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout).partition("Health: UNHEALTHY\n")
    assert table.startswith("State: sqlite, 3 accounts\n")
    assert all(len(line) <= 80 for line in table.splitlines()), table
    for account in ids.values():
        [row] = [line for line in table.splitlines() if account in line]
        if terminal:
            assert row.startswith(f"│ {account} ")
    assert [line for line in table.splitlines() if "UNHEALTHY" in line] and table.count("ok") >= 2
    problems = [line for line in verdict.splitlines() if line.startswith("  problem: ")]
    assert problems and all(line.startswith(f"  problem: {ids['connected']}: ") for line in problems)
    assert "stripe-sf status --account ACCT" in verdict


def test_dlq_list_names_each_letters_account_and_account_lists_only_its_own(runner, synced):
    cfg, env, ids = synced
    letters = json.loads(run(runner, cfg, env, "dlq", "list", "--json").stdout)
    assert [row["account"] for row in letters] == [ids["platform"], ids["europe"]]
    # the command a reason suggests is one that works here: it names the account
    for row in letters:
        assert f"`stripe-sf --account {row['account']} dlq retry --all`" in row["reason"], row["reason"]
    text = run(runner, cfg, {**env, **NARROW}, "dlq", "list").stdout
    assert text.startswith("2 open dead letters")
    blocks = text.split("\n\n")[1:]  # a block of lines per letter (piped)
    assert [(b.splitlines()[0], b.splitlines()[1]) for b in blocks] == [
        (f"account:     {r['account']}", f"event:       {r['event_id']}") for r in letters], text
    only = json.loads(run(runner, cfg, env, "--account", ids["europe"], "dlq", "list", "--json").stdout)
    assert [(r["account"], r["event_id"]) for r in only] == [(ids["europe"], letters[1]["event_id"])]
    text = run(runner, cfg, env, "dlq", "list", "--account", ids["connected"]).stdout
    assert text == "No open dead letters.\n"


def test_dlq_retry_all_without_account_asks_which(runner, synced):
    cfg, env, ids = synced
    result = run(runner, cfg, env, "dlq", "retry", "--all")
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert "choose one" in result.output and "--account ACCT" in result.output
    assert all(account in result.output for account in ids.values())
    letters = json.loads(run(runner, cfg, env, "dlq", "list", "--json").stdout)
    assert len(letters) == 2  # nothing was retried
