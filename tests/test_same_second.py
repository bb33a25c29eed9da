"""Two events in the same second, and duplicate Event objects (issue 19 §5; api-facts §4): the newer by
Stripe's list order wins where that order is known; where it is not (late listings, the webhook inbox),
the object's current state is applied. Tasks are keyed by what they are about, not by the event."""

from __future__ import annotations

import time

from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sync import service
from stripe_sf_sync.state import StateStore

from .conftest import write_config

DAY = 86400


def run(config, env, **kw):
    kw.setdefault("since", None)
    kw.setdefault("dry_run", False)
    kw.setdefault("max_events", None)
    return service.run_sync(config, env, **kw)


def a_subscription_world(tmp_path, env, org, stripe_sb, seed=41):
    f = StripeFactory(stripe_sb, seed=seed)
    now = int(time.time())
    cus = f.customer("Same Second", "s@example.com", created=now - 10 * DAY)
    acct = org.insert("Account", {"Name": "Same Second", "Stripe_Customer_ID__c": cus["id"],
                                  "Subscription_Status__c": "active"})
    sub = f.subscription(cus["id"], [(f.price(5000), 1)], created=now - 10 * DAY)
    config = write_config(tmp_path / "sync.yaml")
    service.run_discover(config, env, write=True, example=config.read_text())
    return f, now, acct, sub, config


def since(ts):
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def test_in_one_listing_the_later_of_one_second_wins(tmp_path, env, org, stripe_sb):
    f, now, acct, sub, config = a_subscription_world(tmp_path, env, org, stripe_sb)
    t = now - 3600
    f.subscription_updated(sub["id"], {"status": "past_due"}, t)
    f.subscription_updated(sub["id"], {"status": "unpaid"}, t)  # same second, listed as the newer
    summary = run(config, env, since=since(now - 2 * DAY))
    assert summary.applied == 2 and summary.dead_lettered == 0
    assert org.get("Account", acct)["Subscription_Status__c"] == "unpaid"


def test_an_event_listed_late_in_the_same_second_as_an_applied_one_applies_the_current_state(
        tmp_path, env, org, stripe_sb):
    f, now, acct, sub, config = a_subscription_world(tmp_path, env, org, stripe_sb)
    t = now - 60
    first = f.subscription_updated(sub["id"], {"status": "past_due"}, t)
    f.subscription_updated(sub["id"], {"status": "unpaid"}, t)  # the newer: Stripe holds `unpaid` now
    stripe_sb.delay_listing(first["id"])  # the list is eventually consistent: the older one shows up later
    run(config, env, since=since(now - 2 * DAY))
    assert org.get("Account", acct)["Subscription_Status__c"] == "unpaid"
    stripe_sb.release_listing(first["id"])

    late = run(config, env)

    assert late.listed_late == 1 and late.dead_lettered == 0
    assert org.get("Account", acct)["Subscription_Status__c"] == "unpaid"  # not put back to past_due
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        assert st.outcomes_for([first["id"]]) == {first["id"]: "applied"}


def test_inbox_deliveries_of_one_second_apply_the_current_state_read_once():
    import dataclasses

    from stripe_sf_sync.pipeline.batch import apply_batch

    from .test_batch import SETTINGS, AsIs, held, ports, updated

    class Current(AsIs):
        reads: list[str] = []  # noqa: RUF012

        def current_state(self, held_event, change):
            self.reads.append(change.meta.event_id)
            return dataclasses.replace(change, status="unpaid")  # what Stripe holds now

    p = ports()
    p.hydrator = Current()
    # Delivered newest first: order is not guaranteed (docs.stripe.com/webhooks), and they share a second.
    events = held(updated("evt_1Unpaid000000", 1_790_000_000, "unpaid", "past_due"),
                  updated("evt_1PastDue00000", 1_790_000_000, "past_due", "active"),
                  updated("evt_1Other0000000", 1_790_000_500, "active", "unpaid"))
    result = apply_batch(events, p, SETTINGS, unordered=True)
    assert sorted(Current.reads) == ["evt_1PastDue00000", "evt_1Unpaid000000"]  # not the one of another second
    assert result.count("applied") == 3
    in_order = apply_batch(events[:2], ports(), SETTINGS)  # a listing's order is known: as listed
    assert in_order.count("applied") == 2


def test_duplicate_event_objects_a_backfill_and_an_earlier_key_make_one_task_each(tmp_path, env, org, stripe_sb):
    f, now, acct, sub, config = a_subscription_world(tmp_path, env, org, stripe_sb)
    # An earlier version ran on this state: it has a cursor, and no mark of when Tasks were keyed by subject.
    f.subscription_updated(sub["id"], {"metadata": {"plan": "gold"}}, now - 8000)
    run(config, env, since=since(now - 2 * DAY))
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        st.delete_meta(service.TASK_KEYS_ABOUT_KEY)
    inv = f.invoice(sub["id"], sub["customer"], 5000, created=now - 7200)
    failed = f.invoice_payment_failed(inv["id"], now - 7200)
    f.duplicate(failed)  # one change, two Event objects
    past_due = f.subscription_updated(sub["id"], {"status": "past_due"}, now - 7000)
    f.duplicate(past_due)
    cancel = f.subscription_updated(sub["id"], {"cancel_at_period_end": True}, now - 6000)
    # A Task an earlier version created for this event, keyed by its event id, before the upgrade:
    org.insert("Task", {"Subject": "made before the upgrade", "WhatId": acct, "Status": "Completed",
                        "Stripe_Event_ID__c": f"{cancel['id']}:cancel-warning"})

    summary = run(config, env)

    assert summary.dead_lettered == 0 and summary.applied == 5
    keys = sorted(t["Stripe_Event_ID__c"] for t in org.records("Task"))
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 7000))
    assert keys == sorted([f"{inv['id']}#attempt-1", f"{cancel['id']}:cancel-warning",
                           f"{sub['id']}#status-past_due@{at}"])
    later = service.run_backfill(config, env, since=since(now - 2 * DAY), until=None, objects="invoices",
                                 dry_run=False, resume=False)
    assert later.dead_lettered == 0
    assert len(org.records("Task")) == 3  # the backfill's unpaid invoice is the same attempt: the same Task
