"""A first `sync --since` without a backfill: customers are read only when the rules need them, and many
at once when many are needed (issue 14, part 1)."""

from __future__ import annotations

import time

import pytest

from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sync import service

from .conftest import write_config

DAY = 86400


def run(config, env, since_ts: int):
    since = time.strftime("%Y-%m-%d", time.gmtime(since_ts))
    return service.run_sync(config, env, since=since, dry_run=False, max_events=None)


def configured(tmp_path, env, **overrides):
    config = write_config(tmp_path / "sync.yaml", **overrides)
    service.run_discover(config, env, write=True, example=config.read_text())
    return config


def customer_calls(sb, start: int) -> list[str]:
    return [path for _, path, _ in sb.requests_log[start:] if path.startswith("/v1/customers")]


def deal(org, account: str, name: str) -> str:
    return org.insert("Opportunity", {"Name": name, "AccountId": account, "StageName": "Negotiation",
                                      "CloseDate": "2026-12-31", "RecordTypeId": org.record_type_id("New_Business")})


def sync_one_naming(f, cus, opp: str, t: int, tmp_path, env, stripe_sb) -> tuple[dict, list[str]]:
    """An active subscription of `cus` whose metadata names `opp`, synced: (it, the run's customer calls)."""
    sub = f.subscription(cus["id"], [(f.price(4000), 1)], status="active", created=t,
                         metadata={"salesforce_opportunity_id": opp})
    f.subscription_created(sub, t)
    config = configured(tmp_path, env)
    mark = len(stripe_sb.requests_log)
    summary = run(config, env, t - DAY)
    assert (summary.applied, summary.dead_lettered) == (1, 0)
    return sub, customer_calls(stripe_sb, mark)


def test_a_subscription_naming_its_opportunity_is_applied_without_reading_its_customer(tmp_path, env, org,
                                                                                       stripe_sb):
    """The Account is the one the named Opportunity belongs to: it comes with the batch's Opportunity lookup,
    so the customer (old, no event of its own in reach, no Account linked by customer id) is never read."""
    f = StripeFactory(stripe_sb, seed=61)
    t = int(time.time()) - 2 * DAY
    account = org.insert("Account", {"Name": "Kramerica"})
    opp = deal(org, account, "Kramerica deal")
    cus = f.customer("Kramerica", "k@example.com", created=t - 90 * DAY)
    sub, calls = sync_one_naming(f, cus, opp, t, tmp_path, env, stripe_sb)
    assert calls == []
    won = org.get("Opportunity", opp)
    assert won["StageName"] == "Closed Won" and won["Stripe_Subscription_ID__c"] == sub["id"]
    assert org.get("Account", account)["Subscription_Status__c"] == "active"


def test_a_named_opportunity_that_does_not_exist_falls_back_to_the_customer_metadata(tmp_path, env, org,
                                                                                    stripe_sb):
    """Precedence is unchanged: when the object's own metadata resolves nothing (its Opportunity is gone), the
    customer's metadata is next, read then, in the same batch."""
    f = StripeFactory(stripe_sb, seed=62)
    t = int(time.time()) - 2 * DAY
    account = org.insert("Account", {"Name": "Pendant"})
    gone = deal(org, account, "Deleted deal")
    org.delete("Opportunity", gone)
    cus = f.customer("Pendant", "p@example.com", metadata={"salesforce_account_id": account}, created=t - 90 * DAY)
    sub, calls = sync_one_naming(f, cus, gone, t, tmp_path, env, stripe_sb)
    assert calls == [f"/v1/customers/{cus['id']}"]
    [created] = [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == sub["id"]]
    assert created["AccountId"] == account
    assert org.get("Account", account)["Subscription_Status__c"] == "active"


def old_customers(f, org, n: int, created: int, *, linked_by: str, name: str = "Old") -> list[dict]:
    """`n` customers created at `created`, each with an Account linked by customer metadata or customer id."""
    out = []
    for i in range(n):
        account = org.insert("Account", {"Name": f"{name} {i}"})
        meta = {"salesforce_account_id": account} if linked_by == "metadata" else {}
        cus = f.customer(f"{name} {i}", f"{name.lower()}{i}@example.com", metadata=meta, created=created + i)
        if linked_by == "customer_id":
            org.update("Account", account, {"Stripe_Customer_ID__c": cus["id"]})
        out.append(cus)
    return out


def subscribe_each(f, customers: list[dict], t: int) -> None:
    price = f.price(2500)
    for i, cus in enumerate(customers):
        sub = f.subscription(cus["id"], [(price, 1)], status="active", created=t + i)
        f.subscription_created(sub, t + i)


def test_many_unknown_customers_are_listed_a_hundred_at_a_time(tmp_path, env, org, stripe_sb):
    """120 customers named by events and known nowhere: two pages of the customer list, bounded by the
    batch's last event, instead of 120 reads; a deleted one is not listed, so it alone is read on its own."""
    f = StripeFactory(stripe_sb, seed=63)
    t = int(time.time()) - 2 * DAY
    customers = old_customers(f, org, 120, t - 90 * DAY, linked_by="metadata")
    [gone] = old_customers(f, org, 1, t - 80 * DAY, linked_by="customer_id", name="Gone")
    subscribe_each(f, [*customers, gone], t)
    stripe_sb.delete_customer(gone["id"])
    old_customers(f, org, 30, t + DAY, linked_by="customer_id", name="New")  # signed up after the events: not listed
    config = configured(tmp_path, env)
    mark = len(stripe_sb.requests_log)
    summary = run(config, env, t - DAY)
    # The deleted customer's event writes nothing: read as deleted, it is handled as customer.deleted (issue 25).
    assert (summary.applied, summary.dead_lettered) == (120, 0)
    assert customer_calls(stripe_sb, mark) == ["/v1/customers", "/v1/customers", f"/v1/customers/{gone['id']}"]
    listings = [params for _, path, params in stripe_sb.requests_log[mark:] if path == "/v1/customers"]
    assert all(set(p["created"]) == {"lte"} for p in listings)
    status = {a["Name"]: a.get("Subscription_Status__c") for a in org.records("Account")}
    assert all(status[f"Old {i}"] == "active" for i in range(120))


def test_a_few_unknown_customers_are_read_one_by_one(tmp_path, env, org, stripe_sb):
    f = StripeFactory(stripe_sb, seed=64)
    t = int(time.time()) - 2 * DAY
    customers = old_customers(f, org, 3, t - 90 * DAY, linked_by="metadata")
    subscribe_each(f, customers, t)
    config = configured(tmp_path, env)
    mark = len(stripe_sb.requests_log)
    assert run(config, env, t - DAY).applied == 3
    assert sorted(customer_calls(stripe_sb, mark)) == sorted(f"/v1/customers/{c['id']}" for c in customers)


def quiet_customers(f, n: int, created: int) -> None:
    """`n` customers without events or Accounts (a bigger account to list)."""
    for k in range(n):
        f.customer(f"Quiet {k}", f"quiet{k}@example.com", created=created + k)


@pytest.mark.parametrize(("newer", "lists", "reads"), [(150, 2, 0), (1300, 12, 12)])
def test_a_listing_goes_on_while_it_costs_less_than_reading_the_customers_still_missing(
        tmp_path, env, org, stripe_sb, newer, lists, reads):
    """The 12 unknown customers are the account's oldest. Behind 150 newer ones, a page of none of them is not
    the end: the second finds them all. Behind 1,300, 12 pages find none: the listing stops there (it has cost
    what reading them costs), and each is read on its own: 24 calls, never more than twice 12."""
    f = StripeFactory(stripe_sb, seed=65)
    t = int(time.time()) - 2 * DAY
    customers = old_customers(f, org, 12, t - 90 * DAY, linked_by="metadata")
    quiet_customers(f, newer, t - 30 * DAY)
    subscribe_each(f, customers, t)
    config = configured(tmp_path, env)
    mark = len(stripe_sb.requests_log)
    assert run(config, env, t - DAY).applied == 12
    calls = customer_calls(stripe_sb, mark)
    assert calls.count("/v1/customers") == lists and len(calls) == lists + reads


def test_the_named_opportunity_s_account_comes_before_the_customer_s_metadata(tmp_path, env, org, stripe_sb):
    """An object's own metadata wins: the Account of the Opportunity it names, even when its customer is read
    anyway (for a Task's Contact) and names another Account. The result does not depend on whether the
    customer was read."""
    f = StripeFactory(stripe_sb, seed=66)
    t = int(time.time()) - 2 * DAY
    own = org.insert("Account", {"Name": "Own"})
    other = org.insert("Account", {"Name": "Customer's"})
    contact = org.insert("Contact", {"LastName": "Costanza", "AccountId": own})
    opp = deal(org, own, "Own deal")
    cus = f.customer("Split", "s@example.com", metadata={"salesforce_account_id": other,
                                                          "salesforce_contact_id": contact}, created=t - 90 * DAY)
    sub = f.subscription(cus["id"], [(f.price(4000), 1)], status="active", created=t,
                         metadata={"salesforce_opportunity_id": opp})
    f.subscription_created(sub, t)
    f.subscription_updated(sub["id"], {"status": "past_due"}, t + 60)
    config = configured(tmp_path, env)
    mark = len(stripe_sb.requests_log)
    assert run(config, env, t - DAY).applied == 2
    assert customer_calls(stripe_sb, mark) == [f"/v1/customers/{cus['id']}"]  # the Task's Contact needs it
    assert org.get("Account", own)["Subscription_Status__c"] == "past_due"
    assert not org.get("Account", other).get("Subscription_Status__c")
    [task] = [t for t in org.records("Task") if t["Subject"].startswith("Subscription status")]
    assert task["WhatId"] == own and task["WhoId"] == contact
