"""The mapping's `customer.email` for events (issue 23's headline example): an event names its customer by id, so
the email comes from state's customers (state version 4), kept from customer.* events and the customer reads
hydration makes; a customer kept before version 4 is read once. Through the CLI against the stand-ins."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from stripe_sf_sandbox import scenario
from stripe_sf_sandbox.salesforce_server import FieldDef, SalesforceOrg, ValidationRule
from stripe_sf_sandbox.stripe_factory import StripeFactory

from .test_mapping_e2e import DAY, NOW, cli, configured, opportunity, since

EMAIL_MAPPING = """
  mapping:
    Opportunity:
      Billing_Email__c: {from: customer.email, write: if_empty}
"""


@pytest.fixture
def org() -> SalesforceOrg:
    """An org with a custom email field on Opportunity for the customer's billing email."""
    org = SalesforceOrg(won_stage=scenario.WON_STAGE, won_stage_label=scenario.WON_STAGE_LABEL,
                        require_record_type=True, csm_field="CSM__c")
    org.add_field("Opportunity", FieldDef("Billing_Email__c", "email", length=80))
    return org


def world(stripe_sb, org):
    """Acme (billing@acme.example), an Account, and its monthly subscription won 20 days ago, by events."""
    f = StripeFactory(stripe_sb, seed=29)
    cus = f.customer("Acme Corp", "billing@acme.example", created=NOW - 40 * DAY)
    org.insert("Account", {"Name": "Acme Corp", "Stripe_Customer_ID__c": cus["id"]})
    pro, seat = f.price(99900, "usd", "month"), f.price(1500, "usd", "month")
    sub = f.subscription(cus["id"], [(pro, 1)], status="active", created=NOW - 20 * DAY)
    f.subscription_created(sub, NOW - 20 * DAY)
    return f, cus, sub, pro, seat


def customer_reads(stripe_sb, mark: int, cus) -> int:
    return sum(1 for _, path, _ in stripe_sb.requests_log[mark:] if path == f"/v1/customers/{cus['id']}")


def kept_email(config: str, cus) -> str | None:
    con = sqlite3.connect(config.rsplit("/", 1)[0] + "/stripe-sf-state.sqlite")
    try:
        return con.execute("SELECT email FROM customers WHERE customer_id = ?", (cus["id"],)).fetchone()[0]
    finally:
        con.close()


def test_sync_of_events_writes_the_customers_email_read_once_then_kept_in_state(tmp_path, runner, cli_env,
                                                                                stripe_sb, org):
    f, cus, sub, pro, seat = world(stripe_sb, org)
    config = configured(tmp_path, runner, cli_env, EMAIL_MAPPING)
    mark = len(stripe_sb.requests_log)
    cli(runner, cli_env, "sync", "--config", config, "--since", since(25))
    opp = opportunity(org, sub)
    assert opp["Billing_Email__c"] == "billing@acme.example"
    assert customer_reads(stripe_sb, mark, cus) == 1 and kept_email(config, cus) == "billing@acme.example"

    # if_empty: the rep empties it; the next event fills it from state, with no customer read.
    org.update("Opportunity", opp["Id"], {"Billing_Email__c": None})
    f.subscription_updated(sub["id"], {"items": [(pro, 1), (seat, 2)]}, NOW - 10 * DAY)
    mark = len(stripe_sb.requests_log)
    cli(runner, cli_env, "sync", "--config", config)
    assert org.get("Opportunity", opp["Id"])["Billing_Email__c"] == "billing@acme.example"
    assert customer_reads(stripe_sb, mark, cus) == 0

    # A customer.updated event carries the new email: kept (it is newer than the read), and the next emptied
    # field gets it.
    cus["email"] = "ap@acme.example"
    now = int(time.time())
    f.emit("customer.updated", cus, now + 1, previous_attributes={"email": "billing@acme.example"})
    org.update("Opportunity", opp["Id"], {"Billing_Email__c": None})
    f.subscription_updated(sub["id"], {"items": [(pro, 1), (seat, 3)]}, now + 2)
    mark = len(stripe_sb.requests_log)
    cli(runner, cli_env, "sync", "--config", config)
    assert org.get("Opportunity", opp["Id"])["Billing_Email__c"] == "ap@acme.example"
    assert customer_reads(stripe_sb, mark, cus) == 0 and kept_email(config, cus) == "ap@acme.example"

    # A rep's value stands (if_empty).
    org.update("Opportunity", opp["Id"], {"Billing_Email__c": "rep@acme.example"})
    f.subscription_updated(sub["id"], {"items": [(pro, 1), (seat, 4)]}, now + 3)
    cli(runner, cli_env, "sync", "--config", config)
    assert org.get("Opportunity", opp["Id"])["Billing_Email__c"] == "rep@acme.example"


def test_a_customer_kept_before_state_version_4_is_read_once_for_its_email(tmp_path, runner, cli_env, stripe_sb,
                                                                          org):
    f, cus, sub, pro, seat = world(stripe_sb, org)
    config = configured(tmp_path, runner, cli_env, EMAIL_MAPPING)
    cli(runner, cli_env, "sync", "--config", config, "--since", since(25))
    opp = opportunity(org, sub)
    con = sqlite3.connect(config.rsplit("/", 1)[0] + "/stripe-sf-state.sqlite")
    con.execute("UPDATE customers SET email = NULL")  # as an upgraded version 3 state holds it
    con.commit()
    con.close()

    for step, at in enumerate((NOW - 10 * DAY, NOW - 9 * DAY)):
        org.update("Opportunity", opp["Id"], {"Billing_Email__c": None})
        f.subscription_updated(sub["id"], {"items": [(pro, 1), (seat, 2 + step)]}, at)
        mark = len(stripe_sb.requests_log)
        cli(runner, cli_env, "sync", "--config", config)
        assert org.get("Opportunity", opp["Id"])["Billing_Email__c"] == "billing@acme.example"
        assert customer_reads(stripe_sb, mark, cus) == (1 if step == 0 else 0)  # then state keeps it
    assert kept_email(config, cus) == "billing@acme.example"


def test_a_dead_letter_retry_writes_the_customers_email(tmp_path, runner, cli_env, stripe_sb, org):
    _, _, sub, _, _ = world(stripe_sb, org)
    org.validation_rules.append(ValidationRule("Type_Required", "Opportunity", "Type", "Choose a Type."))
    config = configured(tmp_path, runner, cli_env, EMAIL_MAPPING)
    out = cli(runner, cli_env, "sync", "--config", config, "--since", since(25))
    assert "1 dead-lettered" in out, out
    org.validation_rules.pop()
    out = cli(runner, cli_env, "dlq", "retry", "--all", "--config", config)
    assert "1 applied" in out, out
    assert opportunity(org, sub)["Billing_Email__c"] == "billing@acme.example"


@pytest.mark.parametrize("mapping", ["", EMAIL_MAPPING])
def test_the_customer_is_read_for_its_email_only_when_the_mapping_names_it(tmp_path, runner, cli_env, stripe_sb,
                                                                          org, mapping):
    f, _, sub, pro, seat = world(stripe_sb, org)
    config = configured(tmp_path, runner, cli_env, mapping)
    cli(runner, cli_env, "sync", "--config", config, "--since", since(25))
    opp = opportunity(org, sub)
    # The subscription's metadata names its Opportunity: no rule needs its customer. A new customer's
    # subscription, so that state has not kept the customer yet.
    other = f.customer("Beta LLC", "ap@beta.example", created=NOW - 30 * DAY)
    later = f.subscription(other["id"], [(pro, 1)], status="active", created=NOW - 10 * DAY,
                           metadata={"salesforce_opportunity_id": opp["Id"]})
    f.subscription_updated(later, {"items": [(pro, 1), (seat, 2)]}, NOW - 9 * DAY)
    mark = len(stripe_sb.requests_log)
    cli(runner, cli_env, "sync", "--config", config)
    assert customer_reads(stripe_sb, mark, other) == (1 if mapping else 0)


PRODUCT_MAPPING = """
  mapping:
    Opportunity:
      Plan__c: {from: "items[0].price.product.name"}
"""


def price_reads(stripe_sb, mark: int) -> list[dict]:
    return [params for _, path, params in stripe_sb.requests_log[mark:] if path.startswith("/v1/prices/")]


@pytest.mark.parametrize("mapping", ["", PRODUCT_MAPPING])
def test_a_path_through_the_prices_product_reads_each_price_once_with_its_product(tmp_path, runner, cli_env,
                                                                                 stripe_sb, org, mapping):
    org.add_field("Opportunity", FieldDef("Plan__c", "string", length=80))
    f, _, sub, pro, seat = world(stripe_sb, org)
    config = configured(tmp_path, runner, cli_env, mapping)
    mark = len(stripe_sb.requests_log)
    cli(runner, cli_env, "sync", "--config", config, "--since", since(25))
    f.subscription_updated(sub["id"], {"items": [(pro, 1), (seat, 2)]}, NOW - 10 * DAY)
    cli(runner, cli_env, "sync", "--config", config)
    opp = opportunity(org, sub)
    reads = price_reads(stripe_sb, mark)
    if not mapping:  # unchanged: a flat Price is never read
        assert opp["Plan__c"] is None and reads == []
        return
    assert opp["Plan__c"] == "Pro plan"  # the factory's default product name
    # items[0]'s Price only, once per run (two runs), its Product expanded in the same call.
    assert len(reads) == 2 and all(p["expand"] == ["tiers", "currency_options", "product"] for p in reads), reads


def test_a_backfill_keeps_the_expanded_customers_email_without_reading_it(tmp_path, runner, cli_env, stripe_sb,
                                                                         org):
    _, cus, sub, _, _ = world(stripe_sb, org)
    config = configured(tmp_path, runner, cli_env, EMAIL_MAPPING)
    mark = len(stripe_sb.requests_log)
    cli(runner, cli_env, "backfill", "--config", config, "--since", since(60), "--objects", "subscriptions")
    assert opportunity(org, sub)["Billing_Email__c"] == "billing@acme.example"
    assert customer_reads(stripe_sb, mark, cus) == 0  # the list expands it (expand[]=data.customer)
    assert kept_email(config, cus) == "billing@acme.example"


def test_serve_writes_the_customers_email_of_a_delivered_event(tmp_path, runner, cli_env, env, stripe_sb, org):
    from pathlib import Path

    from .test_serve import deliver, eventually, serving

    _, _, sub, _, _ = world(stripe_sb, org)
    config = configured(tmp_path, runner, cli_env, EMAIL_MAPPING)
    event = json.loads(json.dumps(stripe_sb.events[-1]))  # the subscription's created event, as delivered
    assert event["type"] == "customer.subscription.created"
    with serving(Path(config), env) as (url, _srv):
        assert deliver(url, event).status_code == 200
        opp = eventually(lambda: [o for o in org.records("Opportunity")
                                  if o.get("Stripe_Subscription_ID__c") == sub["id"]])[0]
    assert opp["Billing_Email__c"] == "billing@acme.example"
