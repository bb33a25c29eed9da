"""The lookback re-read: Stripe's event list is eventually consistent (reported by integrators), so an event can
become listable behind a cursor already past it. Each sync re-reads a window behind the cursor, end to end
against the stand-ins (the Stripe one lists such an event late: StripeSandbox.delay_listing)."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime

import pytest

from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sync import service
from stripe_sf_sync.config import MAX_LOOKBACK_S, parse_settings
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.sources import SYNC_FLOOR_KEY
from stripe_sf_sync.state import LEDGER_RETENTION_S, Outcome, StateStore
from stripe_sf_sync.stripe.source import RETENTION_S

from .conftest import since, snapshot, write_config
from .test_backfill import backfill


def run(config, env, **kw):
    kw.setdefault("since", None)
    kw.setdefault("dry_run", False)
    kw.setdefault("max_events", None)
    return service.run_sync(config, env, **kw)


def status(org, sc, label):
    return org.get("Account", sc.accounts[label])["Subscription_Status__c"]


def state(config):
    return StateStore.open(config.parent / "stripe-sf-state.sqlite")


@pytest.fixture
def late(stripe_sb, sc):
    """Acme goes past_due two minutes ago, but Stripe lists that event only after Globex's newer one."""
    f = StripeFactory(stripe_sb, seed=99)
    now = int(time.time())
    event = f.subscription_updated(sc.subscriptions["acme"], {"status": "past_due"}, now - 120)
    stripe_sb.delay_listing(event["id"])
    f.subscription_updated(sc.subscriptions["globex"], {"metadata": {"seats": "5"}}, now - 60)
    return event


def test_an_event_listed_late_behind_the_cursor_is_applied_by_the_next_run(config, env, org, sc, stripe_sb,
                                                                           sf_sb, late):
    first = run(config, env, since=since(sc))
    assert first.events_read == len(sc.events) + 1  # Globex's update; Acme's is not listed yet
    assert status(org, sc, "acme") == "active"
    with state(config) as st:
        cursor = st.cursor()
    assert cursor.event_id == stripe_sb.events[-1]["id"] and late["created"] == cursor.created - 60

    stripe_sb.release_listing(late["id"])  # now listed, behind the cursor: `ending_before` never returns it
    second = run(config, env)
    assert (second.listed_late, second.events_read, second.applied) == (1, 1, 1)
    assert status(org, sc, "acme") == "past_due"
    assert any(t["Subject"] == "Subscription status: active → past_due" and t["WhatId"] == sc.accounts["acme"]
               for t in org.records("Task"))
    with state(config) as st:
        assert st.cursor() == cursor  # the late event is older: the cursor stays where it was
        assert st.outcomes_for([late["id"]]) == {late["id"]: "applied"}

    # Recorded now: the next run re-reads it in the window and drops it, so nothing is applied twice.
    before, calls = snapshot(org), len(sf_sb.requests_log)
    third = run(config, env)
    assert (third.listed_late, third.events_read, third.applied, third.salesforce_calls) == (0, 0, 0, 0)
    assert snapshot(org) == before and len(sf_sb.requests_log) == calls
    assert third.stripe_calls == 1  # a quiet run: one listing covers the window and what follows the cursor


def test_late_and_new_events_in_one_run_keep_their_order_and_move_the_cursor_forward(config, env, org, sc,
                                                                                      stripe_sb, late):
    run(config, env, since=since(sc))
    stripe_sb.release_listing(late["id"])
    newer = StripeFactory(stripe_sb, seed=98).subscription_updated(sc.subscriptions["acme"], {"status": "active"},
                                                                   int(time.time()) - 10)
    summary = run(config, env)
    assert (summary.listed_late, summary.events_read, summary.applied, summary.skipped_stale) == (1, 2, 2, 0)
    assert status(org, sc, "acme") == "active"  # past_due (late, older) first, then active (newer)
    with state(config) as st:
        assert st.cursor().event_id == newer["id"]


def test_more_than_a_page_of_new_events_still_finds_the_late_one(config, env, org, sc, stripe_sb, late):
    run(config, env, since=since(sc))
    stripe_sb.release_listing(late["id"])
    f = StripeFactory(stripe_sb, seed=97)
    now = int(time.time())
    for i in range(150):  # the cursor is no longer on the first page of the window listing
        at = now - 30 + i // 10
        f.emit("customer.created", f.customer(f"New {i}", f"n{i}@example.com", created=at), at)
    summary = run(config, env)
    assert (summary.listed_late, summary.events_read, summary.skipped_duplicate) == (1, 151, 0)  # each once
    assert status(org, sc, "acme") == "past_due"
    with state(config) as st:
        assert st.cursor().event_id == stripe_sb.events[-1]["id"]
    # the first page (the newest 100, without the cursor) + the window + the walk from the cursor up to that
    # first page (one page of 100 here), where it stops: one call more than without the re-read
    assert summary.stripe_calls == 3


def test_a_dry_run_shows_the_late_event_and_records_nothing(config, env, org, sc, stripe_sb, late):
    run(config, env, since=since(sc))
    stripe_sb.release_listing(late["id"])
    with state(config) as st:
        cursor = st.cursor()
    before = snapshot(org)
    dry = run(config, env, dry_run=True)
    assert dry.listed_late == 1 and any(late["id"] in w["events"] for w in dry.planned_writes)
    assert snapshot(org) == before
    with state(config) as st:
        assert st.cursor() == cursor and st.outcomes_for([late["id"]]) == {}
    assert run(config, env).applied == 1 and status(org, sc, "acme") == "past_due"


def test_lookback_zero_turns_the_re_read_off(tmp_path, env, org, sc, stripe_sb, late):
    config = write_config(tmp_path / "sync.yaml", **{"lookback_seconds: 300": "lookback_seconds: 0"})
    service.run_discover(config, env, write=True, example=config.read_text())
    run(config, env, since=since(sc))
    stripe_sb.release_listing(late["id"])
    assert run(config, env).events_read == 0 and status(org, sc, "acme") == "active"


def test_the_re_read_never_goes_before_the_first_since(config, env, org, sc, stripe_sb):
    f = StripeFactory(stripe_sb, seed=96)
    now = int(time.time())
    f.subscription_updated(sc.subscriptions["acme"], {"status": "past_due"}, now - 120)  # before --since
    f.subscription_updated(sc.subscriptions["globex"], {"metadata": {"seats": "5"}}, now - 60)
    start = datetime.fromtimestamp(now - 90, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert run(config, env, since=start).events_read == 1
    with state(config) as st:
        assert st.get_meta(SYNC_FLOOR_KEY) == str(now - 90)
    # Acme's event is inside the 5-minute window behind the cursor, but before where the history starts.
    again = run(config, env)
    assert again.events_read == 0 and status(org, sc, "acme") is None  # never written


def test_the_re_read_never_goes_before_the_backfill_hand_off(config, env, org, sc, stripe_sb):
    f = StripeFactory(stripe_sb, seed=95)
    now = int(time.time())
    f.subscription_updated(sc.subscriptions["acme"], {"status": "past_due"}, now - 120)
    last = f.subscription_updated(sc.subscriptions["globex"], {"metadata": {"seats": "5"}}, now - 60)
    backfill(config, env, since=since(sc), objects="payment_intents")  # a list that leaves Acme alone
    with state(config) as st:
        assert st.cursor().event_id == last["id"] and st.get_meta(SYNC_FLOOR_KEY) == str(last["created"] + 1)
    # Both events are before the hand-off: the backfill's lists own that history, sync starts after it.
    summary = run(config, env)
    assert summary.events_read == 0 and status(org, sc, "acme") is None  # never written


def test_lookback_seconds_is_validated():
    assert parse_settings({}).stripe.lookback_seconds == 300
    assert parse_settings({"stripe": {"lookback_seconds": 0}}).stripe.lookback_seconds == 0
    for bad in (-1, MAX_LOOKBACK_S + 1, "five minutes"):
        with pytest.raises(ConfigError) as info:
            parse_settings({"stripe": {"lookback_seconds": bad}})
        assert any(p.startswith("stripe.lookback_seconds:") for p in info.value.problems)


def test_the_ledger_keeps_every_event_the_re_read_can_reach(tmp_path):
    """A cursor is usable while Stripe still lists its event (30 days); the window behind it reaches
    MAX_LOOKBACK_S further back. Pruning must keep those outcomes, or a re-read would apply them again."""
    assert RETENTION_S + MAX_LOOKBACK_S < LEDGER_RETENTION_S
    recorded = int(time.time())
    prune_at = recorded + LEDGER_RETENTION_S + 86400  # the outcomes were recorded long before this prune
    cursor_created = prune_at - RETENTION_S  # the oldest cursor a sync at prune_at still accepts
    edge = cursor_created - MAX_LOOKBACK_S  # the oldest event its window re-reads
    old = prune_at - LEDGER_RETENTION_S - 1
    with StateStore.open(tmp_path / "state.sqlite") as st:
        st.commit_batch([Outcome("evt_edge", "customer.subscription.updated", edge, "applied"),
                         Outcome("evt_old", "customer.subscription.updated", old, "applied")],
                        cursor=None, versions={}, run_id=None)
        assert st.prune_ledger(now=prune_at) == 1
        assert st.outcomes_for(["evt_edge", "evt_old"]) == {"evt_edge": "applied"}


def test_a_dry_run_does_not_prune_the_ledger(config, env, sc):
    run(config, env, since=since(sc))
    long_ago = int(time.time()) - LEDGER_RETENTION_S - 86400
    with state(config) as st:
        st.commit_batch([Outcome("evt_long_ago", "customer.subscription.updated", long_ago, "applied")],
                        cursor=None, versions={}, run_id=None)
    with sqlite3.connect(config.parent / "stripe-sf-state.sqlite") as db:
        db.execute("UPDATE events SET recorded_at = ? WHERE event_id = 'evt_long_ago'", (long_ago,))
    run(config, env, dry_run=True)
    with state(config) as st:
        assert st.outcomes_for(["evt_long_ago"]) == {"evt_long_ago": "applied"}
    run(config, env)
    with state(config) as st:
        assert st.outcomes_for(["evt_long_ago"]) == {}  # pruned by a real run
