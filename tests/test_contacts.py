"""Tasks name their Contact (WhoId) from `metadata.salesforce_contact_id`, the integration guide's
convention: on the object first, then on its customer. A bad or missing Contact is a warning, never a
dead letter."""

from __future__ import annotations

import time

from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sync import service

from .conftest import since


def _run(config, env, sc):
    return service.run_sync(config, env, since=since(sc), dry_run=False, max_events=None)


def _task(org, subject_start: str, account_id: str) -> dict:
    [task] = [t for t in org.records("Task") if t["Subject"].startswith(subject_start) and t["WhatId"] == account_id]
    return task


def test_tasks_name_the_contact_from_metadata_object_first(config, env, org, sc, stripe_sb):
    f = StripeFactory(stripe_sb, seed=31)
    now = int(time.time())
    account = org.insert("Account", {"Name": "Soylent"})
    on_customer = org.insert("Contact", {"LastName": "Billing", "AccountId": account})
    on_subscription = org.insert("Contact", {"LastName": "Champion", "AccountId": account})
    cus = f.customer("Soylent", "ap@soylent.example", metadata={
        "salesforce_account_id": account, "salesforce_contact_id": on_customer})
    price = f.price(5000, "usd", "month")
    sub = f.subscription(cus["id"], [(price, 1)], status="active", created=now - 3600,
                         metadata={"salesforce_contact_id": on_subscription})
    sc.events.append(f.subscription_created(sub, now - 3600)["id"])
    sc.events.append(f.subscription_updated(sub["id"], {"status": "past_due"}, now - 1800)["id"])
    inv = f.invoice(None, cus["id"], 5000, "usd", created=now - 900, billing_reason="manual")
    sc.events.append(f.invoice_payment_failed(inv["id"], now - 900)["id"])

    summary = _run(config, env, sc)
    assert summary.dead_lettered == 1  # Hooli, as always
    assert _task(org, "Subscription status: active → past_due", account)["WhoId"] == on_subscription
    assert _task(org, "Payment Failed", account)["WhoId"] == on_customer


def test_a_bad_or_missing_contact_leaves_whoid_empty_with_a_warning(config, env, org, sc, stripe_sb, caplog):
    f = StripeFactory(stripe_sb, seed=32)
    now = int(time.time())
    malformed = org.insert("Account", {"Name": "Malformed"})
    gone = org.insert("Account", {"Name": "Gone"})
    deleted = org.insert("Contact", {"LastName": "Left", "AccountId": gone})
    org.delete("Contact", deleted)
    for account, contact in ((malformed, "' OR Name != '"), (gone, deleted)):
        cus = f.customer("c", "c@example.com", metadata={"salesforce_account_id": account,
                                                         "salesforce_contact_id": contact})
        inv = f.invoice(None, cus["id"], 1200, "usd", created=now - 600, billing_reason="manual")
        sc.events.append(f.invoice_payment_failed(inv["id"], now - 600)["id"])

    caplog.set_level("WARNING")
    summary = _run(config, env, sc)
    assert summary.dead_lettered == 1  # Hooli only: neither Task is lost
    assert _task(org, "Payment Failed", malformed).get("WhoId") is None
    assert _task(org, "Payment Failed", gone).get("WhoId") is None
    assert "is not a Contact Id (003…): its Tasks are created without WhoId" in caplog.text
    assert f"Contact {deleted} (metadata.salesforce_contact_id) does not exist in Salesforce" in caplog.text


def test_the_customers_contact_is_read_when_the_object_names_everything_else(config, env, org, sc, stripe_sb):
    """A subscription whose metadata names its Opportunity and Account still needs its customer's
    metadata for a Task's Contact."""
    f = StripeFactory(stripe_sb, seed=33)
    now = int(time.time())
    account = org.insert("Account", {"Name": "Vandelay"})
    contact = org.insert("Contact", {"LastName": "Art", "AccountId": account})
    opp = org.insert("Opportunity", {"Name": "Vandelay deal", "AccountId": account, "StageName": "Negotiation",
                                     "CloseDate": "2026-12-31", "RecordTypeId": org.record_type_id("New_Business")})
    cus = f.customer("Vandelay", "art@vandelay.example", metadata={"salesforce_contact_id": contact},
                     created=now - 90 * 86400)  # long before the window: no customer event to learn it from
    price = f.price(5000, "usd", "month")
    sub = f.subscription(cus["id"], [(price, 1)], status="active", created=now - 3600,
                         metadata={"salesforce_opportunity_id": opp, "salesforce_account_id": account})
    sc.events.append(f.subscription_created(sub, now - 3600)["id"])
    sc.events.append(f.subscription_updated(sub["id"], {"status": "past_due"}, now - 1800)["id"])
    _run(config, env, sc)
    assert _task(org, "Subscription status: active → past_due", account)["WhoId"] == contact
