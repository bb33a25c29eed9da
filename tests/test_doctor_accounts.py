"""`stripe-sf doctor` on a config with several Stripe accounts (issue 26): Salesforce checked once, then each
pipeline with its own key variable, its own cursor and dead letters, and the account its key really reaches;
each of those lines names its account. Through the CLI, against the sandbox's platform, a separate account
and a connected one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.state import open_state

from .conftest import since

EU_KEY = "STRIPE_API_KEY_EU"


def with_accounts(config: Path, accounts: list[dict[str, Any]]) -> Path:
    """The discovered config, naming `accounts` under stripe.accounts."""
    settings = yaml.safe_load(config.read_text())
    settings["stripe"]["accounts"] = accounts
    config.write_text(yaml.safe_dump(settings))
    return config


def doctor(cfg: Path, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    """`stripe-sf doctor` as JSON and as text: the exit code, the report and the text."""
    runner = CliRunner()
    as_json = runner.invoke(app, ["doctor", "--config", str(cfg), "--json", *args], env=env)
    text = runner.invoke(app, ["doctor", "--config", str(cfg), *args], env=env)
    assert "Traceback" not in as_json.output + text.output, as_json.output + text.output
    assert as_json.exit_code == text.exit_code, text.output
    return as_json.exit_code, json.loads(as_json.stdout), text.stdout


def of(report: dict[str, Any], name: str) -> dict[str | None, dict[str, Any]]:
    """The checks called `name`, by the account each names (None: not a pipeline's)."""
    found = [c for c in report["checks"] if c["name"] == name]
    by_account = {c.get("account"): c for c in found}
    assert len(by_account) == len(found), found  # one a pipeline
    return by_account


@pytest.fixture
def accounts(stripe_accounts: dict[str, StripeSandbox]) -> dict[str, StripeSandbox]:
    """The platform (STRIPE_API_KEY's own), Europe (a key of its own) and a connected account; Europe has a
    customer and its event."""
    europe = stripe_accounts["separate"]
    f = StripeFactory(europe, seed=3)
    now = int(time.time()) - 3600
    f.emit("customer.created", f.customer("Europe", "europe@example.com", created=now), now)
    return {"platform": stripe_accounts["platform"], "europe": europe, "connected": stripe_accounts["connected"]}


@pytest.fixture
def cfg(config: Path, accounts: dict[str, StripeSandbox]) -> Path:
    return with_accounts(config, [{"id": accounts["platform"].account_id},
                                  {"id": accounts["europe"].account_id, "api_key_env": EU_KEY},
                                  {"id": accounts["connected"].account_id, "connected": True}])


def test_each_pipeline_is_checked_with_its_own_key_and_names_its_account(cfg, cli_env, accounts):
    ids = [a.account_id for a in accounts.values()]
    code, report, text = doctor(cfg, cli_env)  # STRIPE_API_KEY_EU is not set
    keys = of(report, "key")
    assert code == ExitCode.CONFIG, text
    assert set(keys) == set(ids)
    europe = keys[accounts["europe"].account_id]
    assert europe["status"] == "error" and europe["message"] == f"{EU_KEY} is not set" and europe["subject"] == EU_KEY
    assert [keys[a]["status"] for a in (ids[0], ids[2])] == ["ok", "ok"]
    assert any(line.startswith(f"error    stripe      {ids[1]}: key: {EU_KEY} is not set. Fix: export a key")
               for line in text.splitlines()), text
    # Salesforce is one org: checked once, its lines name no account
    assert list(of(report, "login")) == [None] and list(of(report, "won stage")) == [None]
    # each pipeline's cursor and identity, the connected one read with its Stripe-Account header
    assert set(of(report, "cursor")) == set(ids)
    accounts_seen = of(report, "account")
    assert set(accounts_seen) == {ids[0], ids[2]}  # Europe's key could not be tried
    assert accounts_seen[ids[2]]["status"] == "ok" and ids[2] in accounts_seen[ids[2]]["message"]

    code, report, text = doctor(cfg, {**cli_env, EU_KEY: accounts["europe"].api_key})
    assert code == ExitCode.OK, text
    assert {a: c["status"] for a, c in of(report, "key").items()} == dict.fromkeys(ids, "ok")
    assert ids[1] in of(report, "account")[ids[1]]["message"]


def test_each_pipelines_cursor_and_dead_letters_come_from_its_own_state(cfg, cli_env, accounts, sc, runner,
                                                                        backend):
    platform, europe, connected = (a.account_id for a in accounts.values())
    env = {**cli_env, EU_KEY: accounts["europe"].api_key, **backend.env()}
    for account, expected in ((platform, ExitCode.DEAD_LETTERS), (europe, ExitCode.OK)):  # Hooli has no Account
        result = runner.invoke(app, ["sync", "--config", str(cfg), "--account", account, "--since", since(sc)],
                               env=env)
        assert result.exit_code == expected, result.output
    code, report, text = doctor(cfg, env)
    assert code == ExitCode.OK, text
    cursors, dead = of(report, "cursor"), of(report, "dead letters")
    assert sc.events[-1] in cursors[platform]["message"]
    assert accounts["europe"].events[-1]["id"] in cursors[europe]["message"]
    assert cursors[connected]["message"].startswith("none yet")  # never run
    assert dead[platform]["status"] == "warning" and dead[platform]["message"] == "1 open dead letter"
    assert f"`stripe-sf --account {platform} dlq list`" in dead[platform]["fix"]
    assert [dead[a]["message"] for a in (europe, connected)] == ["none open", "none open"]
    assert list(of(report, "state")) == [None]  # one store
    assert f"warning  local       {platform}: dead letters: 1 open dead letter." in text

    code, report, text = doctor(cfg, env, "--account", europe)  # one pipeline
    assert code == ExitCode.OK, text
    assert list(of(report, "key")) == [europe] and list(of(report, "dead letters")) == [europe]
    if backend.url:  # PostgreSQL says which pipeline's run holds its lock (doctor takes none)
        with open_state(backend.path, backend.url, pipeline=europe, create=False) as store:
            store.acquire_lock()
            code, report, text = doctor(cfg, env)
        assert code == ExitCode.OK, text
        assert of(report, "state")[None]["message"].endswith(f"answers (a run holds the run lock of {europe} now)")


def test_a_separate_account_whose_key_reaches_another_is_an_identity_error_naming_both(cfg, cli_env, accounts):
    europe = accounts["europe"]
    with_accounts(cfg, [{"id": accounts["platform"].account_id},
                        {"id": "acct_1Europe", "api_key_env": EU_KEY}])
    code, report, text = doctor(cfg, {**cli_env, EU_KEY: europe.api_key})
    assert code == ExitCode.IDENTITY, text
    found = of(report, "account")
    wrong = found["acct_1Europe"]
    assert wrong["status"] == "error" and wrong["exit_code"] == ExitCode.IDENTITY
    assert wrong["message"] == f"{EU_KEY} belongs to {europe.account_id}, not acct_1Europe as stripe.accounts says"
    assert "api_key_env" in wrong["fix"]
    assert found[accounts["platform"].account_id]["status"] == "ok"


def test_a_config_without_accounts_prints_no_account(config, cli_env):
    code, report, text = doctor(config, cli_env)
    assert code == ExitCode.OK, text
    assert all("account" not in c for c in report["checks"])
