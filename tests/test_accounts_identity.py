"""A pipeline never reads another Stripe account by mistake (issue 26): the account its key (and a connected
account's Stripe-Account header) reaches must be the one stripe.accounts names. Through the CLI, against the
sandbox's separate and connected accounts."""

from __future__ import annotations

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
from stripe_sf_sync.identity import key_fingerprint

T0 = int(time.time()) - 86400  # within Stripe's 30 days of events
SINCE = time.strftime("%Y-%m-%d", time.gmtime(T0 - 86400))


def with_accounts(config: Path, name: str, accounts: list[dict[str, Any]]) -> Path:
    """The discovered config, naming `accounts`, with a state file of its own (one pipeline's cursor each)."""
    settings = yaml.safe_load(config.read_text())
    settings["stripe"]["accounts"] = accounts
    settings.setdefault("sync", {})["state_path"] = f"{name}.sqlite"
    path = config.with_name(f"{name}.yaml")
    path.write_text(yaml.safe_dump(settings))
    return path


def events_read(account: StripeSandbox) -> int:
    return sum(1 for _, path, _ in account.requests_log if path.startswith("/v1/events"))


def sync(runner: CliRunner, config: Path, env: dict[str, str], account: str) -> tuple[int, str]:
    result = runner.invoke(app, ["sync", "--config", str(config), "--account", account, "--since", SINCE],
                           env=env)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


@pytest.fixture
def accounts(stripe_accounts: dict[str, StripeSandbox]) -> dict[str, StripeSandbox]:
    """The platform, a separate account (Europe) and a connected one, each with a customer and its event."""
    made = {"platform": stripe_accounts["platform"], "europe": stripe_accounts["separate"],
            "connected": stripe_accounts["connected"]}
    for name, account in made.items():
        f = StripeFactory(account, seed=3)
        f.emit("customer.created", f.customer(name.title(), f"{name}@example.com", created=T0), T0)
    return made


def test_each_pipeline_reads_only_its_own_account(runner, config, cli_env, accounts):
    platform, europe, connected = accounts["platform"], accounts["europe"], accounts["connected"]
    entries = [{"id": platform.account_id},
               {"id": europe.account_id, "api_key_env": "STRIPE_API_KEY_EU"},
               {"id": connected.account_id, "connected": True}]
    env = {**cli_env, "STRIPE_API_KEY_EU": europe.api_key}
    for chosen in (europe, connected, platform):
        for account in accounts.values():
            account.requests_log.clear()
        code, out = sync(runner, with_accounts(config, chosen.account_id, entries), env, chosen.account_id)
        assert code in (ExitCode.OK, ExitCode.DEAD_LETTERS), out
        assert events_read(chosen) > 0, out
        assert [events_read(a) for a in accounts.values() if a is not chosen] == [0, 0]


def test_a_key_of_another_account_exits_10_naming_both(runner, config, cli_env, accounts):
    europe = accounts["europe"]
    entries = [{"id": "acct_1Europe", "api_key_env": "STRIPE_API_KEY_EU"}]
    env = {**cli_env, "STRIPE_API_KEY_EU": europe.api_key}
    code, out = sync(runner, with_accounts(config, "wrong", entries), env, "acct_1Europe")
    assert code == ExitCode.IDENTITY, out
    assert f"STRIPE_API_KEY_EU belongs to {europe.account_id}, not acct_1Europe as stripe.accounts says" in out
    assert "api_key_env" in out  # the hint: what to do
    assert events_read(europe) == 0  # nothing of the other account was read


def test_a_connected_account_of_another_platform_is_a_clear_error(runner, config, cli_env, accounts):
    theirs = accounts["europe"].add_account(connected=True)  # connected to Europe, not to STRIPE_API_KEY's platform
    entries = [{"id": theirs.account_id, "connected": True}]
    code, out = sync(runner, with_accounts(config, "foreign", entries), cli_env, theirs.account_id)
    assert code == ExitCode.IDENTITY, out
    assert f"{theirs.account_id} is not a connected account of the platform whose key is in STRIPE_API_KEY" in out
    assert "connected: false" in out  # the hint
    assert events_read(theirs) == 0 and events_read(accounts["platform"]) == 0


def test_a_connected_pipeline_is_bound_apart_from_its_platform():
    key = "sk_test_" + "k" * 24
    assert key_fingerprint(key) != key_fingerprint(key, "acct_1Connected")
    assert key_fingerprint(key, None) == key_fingerprint(key)  # states bound before pipelines keep their binding
