"""`sync --all` (issue 26): every pipeline, at most N at once, each failure its own, the worst exit code."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sync import service
from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.state import StateStore

from .conftest import since

CONFIG_ACCOUNTS = "  accounts: []\n"
DAY = 86400


def with_accounts(config, *accounts: str) -> None:
    """Name `accounts` under stripe.accounts in the config at `config` (each line `{id: ..., ...}`)."""
    text = config.read_text()
    listed = "".join(f"    - {a}\n" for a in accounts)
    assert CONFIG_ACCOUNTS in text
    config.write_text(text.replace(CONFIG_ACCOUNTS, "  accounts:\n" + listed, 1))


@pytest.mark.parametrize(("codes", "worst"), [
    ([], 0), ([0, 0], 0), ([0, 3], 3), ([3, 5], 5), ([5, 10], 10), ([4, 2], 2), ([3, 143, 1], 143),
    ([0, 42], 42),
])
def test_the_worst_exit_code_wins(codes, worst):
    assert service.worst_exit_code(codes) == worst


def test_sync_all_on_a_single_pipeline_config_runs_it(runner, config, cli_env, sc):
    env = cli_env
    result = runner.invoke(app, ["sync", "--all", "--since", since(sc), "--json", "--config", str(config)], env=env)
    assert result.exit_code == ExitCode.DEAD_LETTERS, result.output  # the scenario has one unmatched customer
    doc = json.loads(result.stdout)
    (run,) = doc["accounts"]
    assert doc["exit_code"] == 3 and run["account"] == "default" and run["summary"]["applied"] > 0
    again = runner.invoke(app, ["sync", "--all", "--since", since(sc), "--json", "--config", str(config)], env=env)
    assert json.loads(again.stdout)["accounts"][0]["summary"]["applied"] == 0  # --since: only a new pipeline starts


def test_every_missing_key_is_named_before_any_call(runner, config, cli_env, stripe_sb):
    with_accounts(config, "{id: acct_1Brand}", "{id: acct_1Europe, api_key_env: STRIPE_API_KEY_EU}",
                  "{id: acct_1Asia, api_key_env: STRIPE_API_KEY_ASIA}")
    env = cli_env
    before = stripe_sb.request_count if hasattr(stripe_sb, "request_count") else None
    result = runner.invoke(app, ["sync", "--all", "--config", str(config)], env=env)
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert "STRIPE_API_KEY_EU is not set" in result.output and "STRIPE_API_KEY_ASIA is not set" in result.output
    if before is not None:
        assert stripe_sb.request_count == before


def test_all_refuses_what_only_one_account_can_take(runner, config, cli_env, tmp_path):
    env = cli_env
    for extra in (["--account", "acct_1X"], ["--rewind"]):
        result = runner.invoke(app, ["sync", "--all", *extra, "--config", str(config)], env=env)
        assert result.exit_code == ExitCode.CONFIG and "--all cannot be combined with" in result.output, extra


def test_a_command_on_a_config_with_several_accounts_asks_which(runner, config, cli_env, stripe_sb):
    with_accounts(config, "{id: acct_1Brand}", "{id: acct_1Europe, api_key_env: STRIPE_API_KEY_EU}")
    result = runner.invoke(app, ["sync", "--config", str(config)], env=cli_env)
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert "choose one" in result.output and "--account" in result.output
    unknown = runner.invoke(app, ["sync", "--account", "acct_1Nope", "--config", str(config)],
                            env=cli_env)
    assert unknown.exit_code == ExitCode.CONFIG and "acct_1Nope is not in stripe.accounts" in unknown.output


def test_metrics_carry_the_account_and_a_pipeline_turned_away_is_in_them(runner, config, cli_env, sc, tmp_path):


    prom = tmp_path / "all.prom"
    args = ["sync", "--all", "--since", since(sc), "--metrics-file", str(prom), "--config", str(config)]
    assert runner.invoke(app, args, env=cli_env).exit_code == ExitCode.DEAD_LETTERS

    def exit_codes() -> dict[tuple[str, str], float]:
        return {(s.labels["account"], s.labels["command"]): s.value
                for f in text_string_to_metric_families(prom.read_text()) for s in f.samples
                if s.name == "stripe_sf_last_run_exit_code"}

    assert exit_codes() == {("default", "sync"): 3}
    holder = StateStore.open(config.parent / "stripe-sf-state.sqlite")
    holder.acquire_lock()  # another run of the pipeline
    try:
        result = runner.invoke(app, args, env=cli_env)
    finally:
        holder.close()
    assert result.exit_code == ExitCode.LOCKED, result.output
    assert exit_codes() == {("default", "sync"): 4}  # an alert on the exit code sees the pipeline turned away


def two_account_config(config, stripe_accounts) -> tuple[dict, list]:
    """The config names the platform and the separate account (its key in STRIPE_API_KEY_EU): the environment's
    additions, and the two accounts."""
    platform, europe = stripe_accounts["platform"], stripe_accounts["separate"]
    with_accounts(config, f"{{id: {platform.account_id}}}",
                  f"{{id: {europe.account_id}, api_key_env: STRIPE_API_KEY_EU}}")
    return {"STRIPE_API_KEY_EU": europe.api_key}, [platform, europe]


def subscribe(account, org, name: str, seed: int) -> str:
    t = int(time.time()) - 2 * DAY
    f = StripeFactory(account, seed=seed)
    cus = f.customer(name, f"billing@{name.lower()}.example", created=t - 30 * DAY)
    org.insert("Account", {"Name": name, "Stripe_Customer_ID__c": cus["id"]})
    sub = f.subscription(cus, [(f.price(4000), 1)], created=t)
    f.subscription_created(sub, t)
    return str(sub["id"])


def test_two_accounts_side_by_side_each_from_its_own_cursor(runner, config, cli_env, stripe_accounts, org):
    extra, accounts = two_account_config(config, stripe_accounts)
    subs = [subscribe(a, org, name, seed) for a, name, seed in zip(accounts, ("Brandco", "Euroco"), (61, 62),
                                                                    strict=True)]
    first = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 3 * DAY))
    result = runner.invoke(app, ["sync", "--all", "--parallel", "2", "--since", first, "--json", "--config",
                                 str(config)], env={**cli_env, **extra})
    assert result.exit_code == ExitCode.OK, result.output
    doc = json.loads(result.stdout)
    assert [r["account"] for r in doc["accounts"]] == [a.account_id for a in accounts]
    won = {o["Stripe_Subscription_ID__c"] for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c")}
    assert set(subs) <= won
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as store:
        cursors = {a.account_id: store.for_pipeline(a.account_id).cursor() for a in accounts}
    for a in accounts:  # each pipeline's cursor is an event of its own account
        assert cursors[a.account_id] is not None
        assert cursors[a.account_id].event_id in {e["id"] for e in a.events}
    status = json.loads(runner.invoke(app, ["status", "--json", "--config", str(config)]).stdout)
    assert [r["account"] for r in status["accounts"]] == [a.account_id for a in accounts]
    assert [r["cursor"]["event_id"] for r in status["accounts"]] == [cursors[a.account_id].event_id
                                                                     for a in accounts]


def test_the_orgs_api_budget_is_shared_by_every_account(runner, config, cli_env, stripe_accounts, org):
    """salesforce.api_budget is a share of the org's daily allowance, which Salesforce reports org-wide: a
    budget the org has spent stops every pipeline, whichever used it."""
    extra, accounts = two_account_config(config, stripe_accounts)
    for a, name, seed in zip(accounts, ("Brandco", "Euroco"), (63, 64), strict=True):
        subscribe(a, org, name, seed)
    org.api_used = int(org.daily_api_limit * 0.85)  # over the default budget of 80%: other integrations used it
    first = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 3 * DAY))
    result = runner.invoke(app, ["sync", "--all", "--since", first, "--json", "--config", str(config)],
                           env={**cli_env, **extra})
    assert result.exit_code == ExitCode.UNAVAILABLE, result.output
    doc = json.loads(result.stdout)
    assert [r["exit_code"] for r in doc["accounts"]] == [ExitCode.UNAVAILABLE] * 2
    assert all("budget" in (r["summary"]["stopped_early"] or "") for r in doc["accounts"])
    assert not [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c")]
