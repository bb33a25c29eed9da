"""`stripe-sf serve` on a config with stripe.accounts (issue 26): a platform and its connected accounts, over real
HTTP on loopback against the sandbox. The platform's events go to its pipeline, a configured connected account's
(`account` set) to that account's pipeline, each drained by its own worker under its own run lock; an account
the config does not name is acknowledged, counted and never applied."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from stripe_sf_sandbox.salesforce_server import SalesforceOrg
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync import serve, service
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.state import StateStore

from .state_backends import Backend
from .test_serve import acme_opportunities, deliver, event_of, eventually, serving, state_path, with_secrets
from .test_sync_all import with_accounts

DAY = 86400


def subscription_event(account: StripeSandbox, org: SalesforceOrg, name: str, seed: int) -> tuple[dict, str]:
    """A `customer.subscription.created` of a customer that a Salesforce Account is linked to, in `account`
    (its objects and events are that account's): the event as delivered, and the subscription's id."""
    t = int(time.time()) - DAY
    f = StripeFactory(account, seed=seed)
    cus = f.customer(name, f"billing@{name.lower()}.example", created=t - 30 * DAY)
    org.insert("Account", {"Name": name, "Stripe_Customer_ID__c": cus["id"]})
    sub = f.subscription(cus["id"], [(f.price(4000), 1)], created=t)
    event = f.subscription_created(sub, t)
    return json.loads(json.dumps(next(e for e in account.events if e["id"] == event["id"]))), str(sub["id"])


def opportunities(org: SalesforceOrg, sub: str) -> list[dict[str, Any]]:
    return [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == sub]


def inbox_of(state: Backend) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for pipeline, event_id, status in state.execute("SELECT pipeline, event_id, status FROM inbox ORDER BY event_id"):
        out.setdefault(pipeline, []).append((event_id, status))
    return out


def ledger_of(state: Backend) -> dict[str, tuple[str, str]]:
    return {r[0]: (r[1], r[2]) for r in state.execute("SELECT event_id, pipeline, outcome FROM events")}


def sqlite(config: Path) -> Backend:
    return Backend("sqlite", state_path(config))


@pytest.fixture
def platform_and_connected(config, stripe_sb: StripeSandbox) -> dict[str, StripeSandbox]:
    """The platform (STRIPE_API_KEY's account) and one connected account, both in stripe.accounts; a second
    connected account of the platform that the config does not name."""
    accounts = {"platform": stripe_sb, "connected": stripe_sb.add_account(connected=True),
                "unconfigured": stripe_sb.add_account(connected=True)}
    with_accounts(config, f"{{id: {stripe_sb.account_id}}}",
                  f"{{id: {accounts['connected'].account_id}, connected: true}}")
    return accounts


@pytest.mark.parametrize(("backend", "chosen"), [("sqlite", None), ("sqlite", "platform"), ("postgresql", None)])
def test_each_accounts_event_is_applied_by_its_own_pipeline(request, config, env, org, sc, stripe_sb,
                                                            platform_and_connected, backend, chosen):
    """Fails before issue 26's routing: `serve` on this config asked which account (exit 2), and with
    --account it acknowledged the connected account's event as `connected account` and applied nothing."""
    platform, connected = stripe_sb.account_id, platform_and_connected["connected"].account_id
    state = Backend(backend, state_path(config), request.getfixturevalue("pg_url") if backend == "postgresql" else None)
    env = dataclasses.replace(env, env={**env.env, **state.env()},
                              account=platform if chosen else None)  # `serve --account <platform>`: the same
    unconfigured = platform_and_connected["unconfigured"]
    own = event_of(stripe_sb, sc.events[0])  # Acme's subscription: a won Opportunity
    theirs, theirs_sub = subscription_event(platform_and_connected["connected"], org, "Connectedco", 61)
    stranger, stranger_sub = subscription_event(unconfigured, org, "Strangerco", 62)
    assert "account" not in own and theirs["account"] == connected and stranger["account"] == unconfigured.account_id
    with serving(config, env) as (url, _srv):
        assert deliver(url, own).json() == {"received": True, "duplicate": False}
        assert deliver(url, theirs).json() == {"received": True, "duplicate": False}
        assert deliver(url, stranger).json() == {"received": True, "ignored": "unconfigured account"}
        eventually(lambda: acme_opportunities(org, sc) and opportunities(org, theirs_sub))
        eventually(lambda: inbox_of(state) == {platform: [(own["id"], "done")], connected: [(theirs["id"], "done")]})
        ready = eventually(lambda: (r := requests.get(url + "/readyz", timeout=5).json())["accounts"][connected][
            "last_salesforce_success"] and r)
        metrics = requests.get(url + "/metrics", timeout=5).text
    assert opportunities(org, stranger_sub) == []
    assert ready["inbox_depth"] == 0 and set(ready["accounts"]) == {platform, connected}
    assert 'stripe_sf_webhook_ignored_total{reason="unconfigured account"} 1.0' in metrics
    for account in (platform, connected):
        assert f'stripe_sf_inbox_depth{{account="{account}"}} 0.0' in metrics
        assert f'stripe_sf_events_applied_total{{account="{account}"}} 1.0' in metrics
    # Each event's ledger row is its own pipeline's (event ids are Stripe's, unique across accounts).
    assert ledger_of(state) == {own["id"]: (platform, "applied"), theirs["id"]: (connected, "applied")}
    with state.open() as store:
        mine, its = store.for_pipeline(platform), store.for_pipeline(connected)
        for pipeline in (mine, its):
            [run] = [r for r in pipeline.recent_runs(10) if r["command"] == "serve" and r["summary"]["applied"]]
            assert run["exit_code"] == 0 and run["summary"]["applied"] == 1
        assert store.for_pipeline(unconfigured.account_id).recent_runs(10) == []
    # The connected account's objects were read with the platform's key and its Stripe-Account header.
    assert platform_and_connected["connected"].requests_log
    assert not unconfigured.requests_log


def test_one_pipelines_held_lock_does_not_hold_up_the_other(config, env, org, sc, stripe_sb, platform_and_connected):
    connected = platform_and_connected["connected"].account_id
    own = event_of(stripe_sb, sc.events[0])
    theirs, theirs_sub = subscription_event(platform_and_connected["connected"], org, "Lockedco", 63)
    with StateStore.open(state_path(config)) as blocker:
        held = blocker.for_pipeline(connected)
        held.acquire_lock()  # a `sync --account <connected>` is running
        try:
            with serving(config, env) as (url, _srv):
                assert deliver(url, theirs).status_code == 200
                assert deliver(url, own).status_code == 200
                eventually(lambda: acme_opportunities(org, sc))  # the platform's drain went on
                assert opportunities(org, theirs_sub) == []
                assert inbox_of(sqlite(config))[connected] == [(theirs["id"], "pending")]
                held.release_lock()
                eventually(lambda: opportunities(org, theirs_sub))  # retried once the lock is free
        finally:
            held.release_lock()


def test_which_accounts_serve_serves(config, env, stripe_sb):
    settings = service.Runtime(config, env).loaded.settings
    alone = serve.served(settings, None)
    assert [p.name for p in alone.pipelines] == ["default"] and not alone.named
    # As before accounts: a connected account's event on a config without them is not applied.
    assert alone.route({"id": "evt_1", "account": "acct_1X"}) == (None, "connected account")
    with pytest.raises(ConfigError, match="this config names no accounts"):
        serve.served(settings, "acct_1X")  # --account on such a config: refused, as by every command
    with_accounts(config, "{id: acct_1Brand}", "{id: acct_1Europe, api_key_env: STRIPE_API_KEY_EU}",
                  "{id: acct_1Shop, connected: true}", "{id: acct_1EuShop, connected: true, "
                  "api_key_env: STRIPE_API_KEY_EU}")
    settings = service.Runtime(config, env).loaded.settings
    with pytest.raises(ConfigError) as ambiguous:
        serve.served(settings, None)
    assert "2 Stripe accounts of their own (acct_1Brand, acct_1Europe)" in str(ambiguous.value)
    assert "one `stripe-sf serve --account ACCT` per account" in (ambiguous.value.hint or "")
    brand, europe = serve.served(settings, "acct_1Brand"), serve.served(settings, "acct_1Europe")
    assert [p.name for p in brand.pipelines] == ["acct_1Brand", "acct_1Shop"]
    assert [p.name for p in europe.pipelines] == ["acct_1Europe", "acct_1EuShop"]
    assert europe.key_env == "STRIPE_API_KEY_EU"
    assert brand.route({"id": "evt_1"}) == ("acct_1Brand", None)
    assert brand.route({"id": "evt_1", "account": "acct_1Shop"}) == ("acct_1Shop", None)
    assert brand.route({"id": "evt_1", "account": "acct_1EuShop"}) == (None, "unconfigured account")
    with pytest.raises(ConfigError) as connected:
        serve.served(settings, "acct_1Shop")
    assert "is a connected account" in str(connected.value)
    assert "stripe-sf serve --account acct_1Brand" in (connected.value.hint or "")


def test_a_config_of_connected_accounts_only_serves_them_and_ignores_the_platforms_own(config, env):
    with_accounts(config, "{id: acct_1Shop, connected: true}", "{id: acct_1Cafe, connected: true}")
    targets = serve.served(service.Runtime(config, env).loaded.settings, None)
    assert targets.home is None and [p.name for p in targets.pipelines] == ["acct_1Shop", "acct_1Cafe"]
    assert targets.route({"id": "evt_1"}) == (None, "unconfigured account")
    assert targets.route({"id": "evt_1", "account": "acct_1Cafe"}) == ("acct_1Cafe", None)


def test_serve_on_two_accounts_of_their_own_is_a_usage_error_before_it_listens(config, env):
    with_accounts(config, "{id: acct_1Brand}", "{id: acct_1Europe, api_key_env: STRIPE_API_KEY_EU}")
    with pytest.raises(ConfigError) as caught:
        serve.prepare(config, with_secrets(env, "whsec_test"))
    assert caught.value.source == "invocation" and "each has its own webhook endpoints" in str(caught.value)
