"""A customer deleted in Stripe (issue 25): its Account and records stay, marked in
salesforce.fields.account_customer_deleted, and none of its later events writes them; a customer read as
deleted during hydration is handled the same way. Through the rules, sync and serve."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from stripe_sf_sandbox.salesforce_server import FieldDef, SalesforceOrg
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync import model, rules, service
from stripe_sf_sync.config import FieldNames, load_yaml
from stripe_sf_sync.state import StateStore

from . import payloads as p
from .conftest import EXAMPLE, since, write_config
from .test_serve import deliver, event_of, eventually, serving

FIELD = "Stripe_Customer_Deleted__c"


def deleted_event(metadata: dict[str, str] | None = None) -> dict[str, Any]:
    customer = {"id": "cus_PdeletedXYZ", "object": "customer", "name": "Acme", "email": "a@acme.example",
                "metadata": metadata or {}}
    return p.event("customer.deleted", customer)


def test_customer_deleted_marks_the_account_when_the_field_is_named() -> None:
    change = model.parse_event(deleted_event({"salesforce_account_id": "0018d00000AbCdEAAV"}))
    assert isinstance(change, model.CustomerDeletedChange)
    plan = rules.plan(rules.RuleContext("Won", FieldNames(account_customer_deleted=FIELD)), change)
    (intent,) = plan.intents
    assert isinstance(intent, rules.AccountFieldsIntent) and intent.fields == {FIELD: True}
    assert (intent.account.customer_id, intent.account.account_id) == ("cus_PdeletedXYZ", "0018d00000AbCdEAAV")


def test_without_the_field_nothing_is_marked() -> None:
    plan = rules.plan(rules.RuleContext("Won", FieldNames()), model.parse_event(deleted_event()))
    assert not plan.intents and "account_customer_deleted is not set" in (plan.ignored or "")


def test_the_example_config_documents_the_field() -> None:
    assert load_yaml(EXAMPLE)["salesforce"]["fields"]["account_customer_deleted"] is None


@pytest.fixture
def marked_config(tmp_path: Path, env: service.Environment, org: SalesforceOrg) -> Path:
    org.schema["Account"][FIELD] = FieldDef(FIELD, "boolean")
    path = write_config(tmp_path / "sync.yaml",
                        **{"account_customer_deleted: null": f"account_customer_deleted: {FIELD}"})
    service.run_discover(path, env, write=True, example=EXAMPLE)
    return path


def outcomes(config: Path, *event_ids: str) -> dict[str, str]:
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as state:
        return state.outcomes_for(list(event_ids))


def test_sync_marks_the_account_keeps_its_records_and_ignores_the_customers_later_events(
        marked_config: Path, env: service.Environment, org: SalesforceOrg, sc: Any, stripe_sb: StripeSandbox) -> None:
    service.run_sync(marked_config, env, since=since(sc), dry_run=False, max_events=None)
    acme = sc.accounts["acme"]
    before = dict(org.get("Account", acme))
    opportunities = [o["Id"] for o in org.records("Opportunity") if o["AccountId"] == acme]
    assert before["Subscription_Status__c"] == "active" and opportunities and not before.get(FIELD)

    f = StripeFactory(stripe_sb, seed=11)
    now = int(time.time())
    deleted = f.customer_deleted(sc.customers["acme"], at=now - 120)
    later = f.subscription_updated(sc.subscriptions["acme"], {"status": "past_due"}, now - 60)
    second = service.run_sync(marked_config, env, since=None, dry_run=False, max_events=None)

    after = org.get("Account", acme)
    assert after[FIELD] is True and after["Subscription_Status__c"] == "active"  # marked, not written
    assert [o["Id"] for o in org.records("Opportunity") if o["AccountId"] == acme] == opportunities
    assert outcomes(marked_config, deleted["id"], later["id"]) == {deleted["id"]: "applied", later["id"]: "ignored"}
    assert second.dead_lettered == 0

    # Remembered in state: a later run ignores the customer's events without reading the customer again.
    reads = sum(1 for _, path, _ in stripe_sb.requests_log if path.startswith("/v1/customers/"))
    again = f.subscription_updated(sc.subscriptions["acme"], {"status": "canceled"}, int(time.time()) - 1)
    service.run_sync(marked_config, env, since=None, dry_run=False, max_events=None)
    assert outcomes(marked_config, again["id"]) == {again["id"]: "ignored"}
    assert org.get("Account", acme)["Subscription_Status__c"] == "active"
    assert sum(1 for _, path, _ in stripe_sb.requests_log if path.startswith("/v1/customers/")) == reads


def test_an_event_before_the_deletion_is_still_applied(
        marked_config: Path, env: service.Environment, org: SalesforceOrg, sc: Any, stripe_sb: StripeSandbox) -> None:
    f = StripeFactory(stripe_sb, seed=12)
    now = int(time.time())
    earlier = f.subscription_updated(sc.subscriptions["initech"], {"status": "active"}, now - 300)
    f.customer_deleted(sc.customers["initech"], at=now - 200)
    service.run_sync(marked_config, env, since=since(sc), dry_run=False, max_events=None)
    assert outcomes(marked_config, earlier["id"]) == {earlier["id"]: "applied"}
    assert org.get("Account", sc.accounts["initech"])[FIELD] is True


def test_serve_handles_a_customer_read_as_deleted_as_a_deleted_customer(
        marked_config: Path, env: service.Environment, org: SalesforceOrg, sc: Any, stripe_sb: StripeSandbox) -> None:
    """The subscription's event is delivered; its customer.deleted never is. Hydration reads the customer, finds
    it deleted, and marks its Account instead of writing the event."""
    f = StripeFactory(stripe_sb, seed=13)
    now = int(time.time())
    customer = f.customer("Wonka", "charlie@wonka.example", created=now - 900)
    account = org.insert("Account", {"Name": "Wonka", "Stripe_Customer_ID__c": customer["id"],
                                     "OwnerId": org.user_id("Ava Owner")})
    price = f.price(1000, "usd", "month", product_name="Bars")
    created = f.subscription_created(f.subscription(customer["id"], [(price, 1)], status="active",
                                                    created=now - 600), now - 600)
    f.customer_deleted(customer, at=now - 300)
    with serving(marked_config, env) as (url, _srv):
        assert deliver(url, event_of(stripe_sb, created["id"])).status_code == 200
        eventually(lambda: org.get("Account", account).get(FIELD) is True)
        eventually(lambda: outcomes(marked_config, created["id"]).get(created["id"]) == "applied")
    assert org.get("Account", account).get("Subscription_Status__c") is None
    assert not [o for o in org.records("Opportunity") if o["AccountId"] == account]
