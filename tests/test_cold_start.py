"""A first `sync --since` without a backfill: customers are read only when the rules need them, and many
at once when many are needed (issue 14, part 1)."""

from __future__ import annotations

import time

from stripe_sf_sync import service
from stripe_sf_sync.sandbox.stripe_factory import StripeFactory

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


def test_a_subscription_naming_its_opportunity_is_applied_without_reading_its_customer(tmp_path, env, org,
                                                                                       stripe_sb):
    """The Account is the one the named Opportunity belongs to: it comes with the batch's Opportunity lookup,
    so the customer (old, no event of its own in reach, no Account linked by customer id) is never read."""
    f = StripeFactory(stripe_sb, seed=61)
    t = int(time.time()) - 2 * DAY
    account = org.insert("Account", {"Name": "Kramerica"})
    opp = deal(org, account, "Kramerica deal")
    cus = f.customer("Kramerica", "k@example.com", created=t - 90 * DAY)
    sub = f.subscription(cus["id"], [(f.price(4000), 1)], status="active", created=t,
                         metadata={"salesforce_opportunity_id": opp})
    f.subscription_created(sub, t)
    config = configured(tmp_path, env)
    mark = len(stripe_sb.requests_log)
    summary = run(config, env, t - DAY)
    assert (summary.applied, summary.dead_lettered) == (1, 0)
    assert customer_calls(stripe_sb, mark) == []
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
    sub = f.subscription(cus["id"], [(f.price(4000), 1)], status="active", created=t,
                         metadata={"salesforce_opportunity_id": gone})
    f.subscription_created(sub, t)
    config = configured(tmp_path, env)
    mark = len(stripe_sb.requests_log)
    summary = run(config, env, t - DAY)
    assert (summary.applied, summary.dead_lettered) == (1, 0)
    assert customer_calls(stripe_sb, mark) == [f"/v1/customers/{cus['id']}"]
    [created] = [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == sub["id"]]
    assert created["AccountId"] == account
    assert org.get("Account", account)["Subscription_Status__c"] == "active"
