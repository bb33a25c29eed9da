"""Merged Accounts (issue 25): a link that names a merged-away Account (a metadata Id, or the customer id the
loser held) is followed through MasterRecordId (queryAll) to the survivor, which is written and linked; a
survivor linked to another customer keeps its link, and the event is a dead letter naming both. Found by
sync, backfill and reconcile --fix, inside the batch's own lookups."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from stripe_sf_sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync import service
from stripe_sf_sync.state import StateStore

from .conftest import since

FIELD = "Stripe_Customer_ID__c"


def opportunity_of(org: SalesforceOrg, subscription_id: str) -> dict[str, Any]:
    [opp] = [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == subscription_id]
    return opp


def survivor_of(org: SalesforceOrg, loser: str, name: str, **fields: Any) -> str:
    survivor = org.insert("Account", {"Name": name, "OwnerId": org.user_id("Ava Owner"), **fields})
    org.merge("Account", survivor, [loser])
    return survivor


def test_sync_follows_a_merged_account_of_the_customer_id_to_the_survivor_and_links_it(
        config: Path, env: service.Environment, org: SalesforceOrg, sc: Any, sf_sb: SalesforceSandbox,
        caplog: pytest.LogCaptureFixture) -> None:
    loser = sc.accounts["acme"]
    survivor = survivor_of(org, loser, "Acme Holdings")
    with caplog.at_level(logging.INFO, logger="stripe_sf_sync"):
        summary = service.run_sync(config, env, since=since(sc), dry_run=False, max_events=None)
    assert summary.dead_lettered == 1  # Hooli, which has no Account at all
    assert opportunity_of(org, sc.subscriptions["acme"])["AccountId"] == survivor
    account = org.get("Account", survivor)
    assert (account[FIELD], account["Subscription_Status__c"]) == (sc.customers["acme"], "active")
    assert f"Account {loser} was merged into {survivor} (Acme Holdings): writing there" in caplog.text
    # The merged-away Accounts rode along in the batch's Composite lookup call (it had room), each with its
    # survivor's row in the same statement (MasterRecord.*): no queryAll call of their own.
    assert [p for m, p in sf_sb.requests_log if "/queryAll" in p] == []


def test_sync_follows_a_metadata_account_id_to_the_survivor(
        config: Path, env: service.Environment, org: SalesforceOrg, sc: Any, stripe_sb: StripeSandbox) -> None:
    service.run_sync(config, env, since=since(sc), dry_run=False, max_events=None)
    loser = org.insert("Account", {"Name": "Wonka Ltd", "OwnerId": org.user_id("Ava Owner")})
    survivor = survivor_of(org, loser, "Wonka Group")
    f = StripeFactory(stripe_sb, seed=21)
    now = int(time.time())
    customer = f.customer("Wonka", "c@wonka.example", metadata={"salesforce_account_id": loser}, created=now - 900)
    price = f.price(2000, "usd", "month", product_name="Bars")
    sub = f.subscription(customer["id"], [(price, 1)], status="active", created=now - 600)
    f.subscription_created(sub, now - 600)
    second = service.run_sync(config, env, since=None, dry_run=False, max_events=None)
    assert (second.applied, second.dead_lettered) == (1, 0)
    assert opportunity_of(org, sub["id"])["AccountId"] == survivor
    assert org.get("Account", survivor)[FIELD] == customer["id"]


def test_a_survivor_linked_to_another_customer_keeps_its_link_and_the_event_is_a_dead_letter_naming_both(
        config: Path, env: service.Environment, org: SalesforceOrg, sc: Any) -> None:
    acme, umbrella = sc.accounts["acme"], sc.accounts["umbrella"]
    org.merge("Account", umbrella, [acme])
    summary = service.run_sync(config, env, since=since(sc), dry_run=False, max_events=None)
    assert summary.dead_lettered == 2  # Acme's event, and Hooli's
    assert org.get("Account", umbrella)[FIELD] == sc.customers["umbrella"]
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as state:
        letters = {d.error_code: d.reason for d in state.dead_letters()}
    reason = letters["MERGED_ACCOUNT_CONFLICT"]
    assert f"Account {acme}, linked to {sc.customers['acme']}, was merged into {umbrella}" in reason
    assert f"which is linked to {sc.customers['umbrella']}" in reason and "dlq retry --all" in reason


def test_backfill_writes_on_the_survivor(config: Path, env: service.Environment, org: SalesforceOrg, sc: Any) -> None:
    survivor = survivor_of(org, sc.accounts["acme"], "Acme Group")
    summary = service.run_backfill(config, env, since=time.strftime("%Y-%m-%d", time.gmtime(sc.start - 86400 * 60)),
                                   until=None, objects="subscriptions", dry_run=False, resume=False)
    assert summary.dead_lettered <= 1  # Hooli's subscription: no Account
    assert opportunity_of(org, sc.subscriptions["acme"])["AccountId"] == survivor
    account = org.get("Account", survivor)
    assert (account[FIELD], account["Subscription_Status__c"]) == (sc.customers["acme"], "active")


def test_reconcile_finds_the_survivor_and_fix_writes_there(
        config: Path, env: service.Environment, org: SalesforceOrg, sc: Any) -> None:
    service.run_sync(config, env, since=since(sc), dry_run=False, max_events=None)
    survivor = survivor_of(org, sc.accounts["acme"], "Acme Holdings", Subscription_Status__c="canceled")
    _, report = service.run_reconcile(config, env, since=None, objects="subscriptions,payment_intents,accounts",
                                      fix=False, dry_run=False, csv_path=None)
    drift = [x for x in report.findings if x.salesforce_id == survivor]
    assert [(x.kind, x.stripe_id) for x in drift] == [("status_mismatch", sc.subscriptions["acme"])], report.findings
    service.run_reconcile(config, env, since=None, objects="subscriptions,payment_intents,accounts", fix=True,
                          dry_run=False, csv_path=None)
    account = org.get("Account", survivor)
    assert (account["Subscription_Status__c"], account[FIELD]) == ("active", sc.customers["acme"])


def test_doctor_says_what_a_unique_customer_id_field_means_for_merges(config: Path,
                                                                       env: service.Environment) -> None:
    report = service.run_doctor(config, env).as_dict()
    [check] = [c for c in report["checks"] if c["name"] == "Account merges"]
    assert check["status"] == "ok" and "Account.Stripe_Customer_ID__c is Unique" in check["message"]
    assert "clear Stripe_Customer_ID__c on the Account whose customer does not belong to the survivor" \
        in check["message"]
