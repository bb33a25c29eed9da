"""backfill: history beyond the 30-day event window, the hand-off to sync, Bulk API 2.0, resume."""

from __future__ import annotations

import sqlite3
import time
from decimal import Decimal

import pytest

from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sync import service
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.state import StateStore

from .conftest import snapshot, write_config

DAY = 86400
NOW = int(time.time())


def history(stripe_sb, org, *, subs: int = 12, seed: int = 3):
    """Objects created 40 to 400 days ago, with no events (they are past Stripe's retention)."""
    f = StripeFactory(stripe_sb, seed=seed)
    out = {"subs": [], "accounts": {}, "pis": [], "invoices": []}
    plan = f.price(5000, "usd", "month")
    statuses = ["active", "trialing", "past_due", "canceled", "active", "unpaid"]
    for i in range(subs):
        created = NOW - (40 + (i * 359) // max(subs - 1, 1)) * DAY  # spread over 40..399 days ago
        cus = f.customer(f"Hist {i}", f"h{i}@example.com", created=created)
        out["accounts"][cus["id"]] = org.insert("Account", {"Name": f"Hist {i}", "Stripe_Customer_ID__c": cus["id"]})
        sub = f.subscription(cus["id"], [(plan, 1 + i % 3)], status=statuses[i % len(statuses)], created=created)
        out["subs"].append(sub)
    cus0 = out["subs"][0]["customer"]
    pi = f.payment_intent(cus0, 120000, "usd", created=NOW - 100 * DAY)
    out["pis"].append(pi)
    f.payment_intent(cus0, 999, "usd", status="requires_payment_method", created=NOW - 90 * DAY)  # not succeeded
    past_due = out["subs"][2]
    inv = f.invoice(past_due["id"], past_due["customer"], 5000 * 3, "usd", attempt_count=2, created=NOW - 50 * DAY)
    out["invoices"].append(inv)
    return f, out


def backfill(config, env, **kw):
    kw.setdefault("until", None)
    kw.setdefault("objects", "subscriptions,payment_intents,invoices")
    kw.setdefault("dry_run", False)
    kw.setdefault("resume", False)
    return service.run_backfill(config, env, **kw)


def committed_backfill_events(tmp_path) -> int:
    """Backfill's synthetic events with a committed outcome (0 before the state file has any)."""
    path = tmp_path / "stripe-sf-state.sqlite"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT COUNT(*) FROM events WHERE event_id LIKE 'evt_bf%'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:  # not created yet
        return 0


def since_days(days: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(NOW - days * DAY))


def configured(tmp_path, env, **overrides):
    config = write_config(tmp_path / "sync.yaml", **overrides)
    service.run_discover(config, env, write=True, example=config.read_text())
    return config


def test_history_is_backfilled_as_current_state(tmp_path, env, org, stripe_sb):
    _, h = history(stripe_sb, org)
    config = configured(tmp_path, env)
    summary = backfill(config, env, since=since_days(400))
    assert summary.dead_lettered == 0
    opps = {o.get("Stripe_Subscription_ID__c"): o for o in org.records("Opportunity")}
    for sub in h["subs"]:
        won = sub["status"] in ("active", "trialing", "past_due", "unpaid")
        assert (sub["id"] in opps) is won, sub["status"]
        acct = org.get("Account", h["accounts"][sub["customer"]])
        assert acct["Subscription_Status__c"] == sub["status"]
    first = opps[h["subs"][0]["id"]]
    assert first["StageName"] == "Closed Won"  # the API name; people see the label "Won"
    assert first["CloseDate"] == time.strftime("%Y-%m-%d", time.gmtime(h["subs"][0]["created"]))  # not today
    pi_opp = next(o for o in org.records("Opportunity") if o.get("Stripe_Payment_Intent_ID__c") == h["pis"][0]["id"])
    assert Decimal(str(pi_opp["Amount"])) == Decimal("1200.00")
    tasks = org.records("Task")
    assert [t["Subject"] for t in tasks] == ["Payment Failed - Immediate Action Required"]  # no history Tasks
    assert "Found by stripe-sf backfill" in tasks[0]["Description"]
    # a second backfill changes nothing and finds the same Task
    before = snapshot(org)
    backfill(config, env, since=since_days(400))
    assert snapshot(org) == before


def test_handoff_then_sync_has_no_gap_and_no_regression(tmp_path, env, org, stripe_sb):
    f, h = history(stripe_sb, org)
    sub = h["subs"][0]
    # a recent event, within retention, before the backfill: it becomes the sync cursor
    f.subscription_updated(sub["id"], {"metadata": {"note": "x"}}, NOW - 2 * DAY)
    config = configured(tmp_path, env)
    backfill(config, env, since=since_days(400))
    with StateStore.open(tmp_path / "stripe-sf-state.sqlite") as st:
        assert st.cursor().event_id == stripe_sb.events[-1]["id"]
        read_at = st.versions_for([sub["id"]])[sub["id"]]
    # An event from before the backfill read it, delivered late: stale, must not regress the status.
    f.subscription_updated(h["subs"][2]["id"], {"status": "active"}, read_at - 30)
    assert org.get("Account", h["accounts"][h["subs"][2]["customer"]])["Subscription_Status__c"] == "past_due"
    # Then something really happens after the backfill: picked up with no --since.
    f.subscription_updated(sub["id"], {"status": "past_due"}, read_at + 5)
    summary = service.run_sync(config, env, since=None, dry_run=False, max_events=None)
    assert summary.events_read == 2 and summary.skipped_stale == 1 and summary.applied == 1
    assert org.get("Account", h["accounts"][h["subs"][2]["customer"]])["Subscription_Status__c"] == "past_due"
    assert org.get("Account", h["accounts"][sub["customer"]])["Subscription_Status__c"] == "past_due"
    assert any(t["Subject"] == "Subscription status: active → past_due" for t in org.records("Task"))


def test_backfill_with_no_events_at_all_hands_off_by_time(tmp_path, env, org, stripe_sb):
    f, h = history(stripe_sb, org, subs=3)
    config = configured(tmp_path, env)
    backfill(config, env, since=since_days(400), objects="subscriptions")
    f.subscription_updated(h["subs"][0]["id"], {"status": "canceled"}, int(time.time()) + 5)
    summary = service.run_sync(config, env, since=None, dry_run=False, max_events=None)
    assert summary.applied == 1
    assert org.get("Account", h["accounts"][h["subs"][0]["customer"]])["Subscription_Status__c"] == "canceled"


def test_above_threshold_writes_through_bulk_api_and_dead_letters_failed_rows(tmp_path, env, org, stripe_sb, sf_sb):
    f, h = history(stripe_sb, org, subs=30)
    # One subscription whose ARR overflows Currency(16, 2): a row-level failure in the bulk job.
    cus = f.customer("Huge", "huge@example.com", created=NOW - 60 * DAY)
    org.insert("Account", {"Name": "Huge", "Stripe_Customer_ID__c": cus["id"]})
    f.subscription(cus["id"], [(f.price(10**15, "usd", "month"), 1)], created=NOW - 60 * DAY)
    config = configured(tmp_path, env, **{"bulk_threshold: 2000": "bulk_threshold: 10",
                                          "bulk_poll_seconds: 5": "bulk_poll_seconds: 0"})
    summary = backfill(config, env, since=since_days(400), objects="subscriptions")
    assert summary.objects["subscriptions"]["bulk"] is True
    assert any("jobs/ingest" in path for _, path, *_ in sf_sb.requests_log)
    assert not any("composite/sobjects" in path for _, path, *_ in sf_sb.requests_log)
    assert summary.dead_lettered == 1
    with StateStore.open(tmp_path / "stripe-sf-state.sqlite") as st:
        [dead] = st.dead_letters()
    assert dead.error_code == "NUMBER_OUTSIDE_VALID_RANGE" and ("MRR__c" in dead.reason or "ARR__c" in dead.reason)
    won = [s for s in h["subs"] if s["status"] in ("active", "trialing", "past_due", "unpaid")]
    assert len([o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c")]) == len(won)
    assert summary.salesforce_calls < 40  # a few jobs, not 31 records' worth of calls
    # Issue 20 §5: the same backfill again (a later second: a new run tag) counts an attempt, not a new letter.
    time.sleep(1.05)
    again = backfill(config, env, since=since_days(400), objects="subscriptions")
    assert again.dead_lettered == 1
    with StateStore.open(tmp_path / "stripe-sf-state.sqlite") as st:
        [rerun] = st.dead_letters()
    assert rerun.attempts == 2 and rerun.event_id != dead.event_id and rerun.first_failed_at == dead.first_failed_at


def test_interrupted_backfill_resumes_and_converges(tmp_path, env, org, stripe_sb, sf_sb):
    _, h = history(stripe_sb, org, subs=250)
    config = configured(tmp_path, env, **{"bulk_threshold: 2000": "bulk_threshold: 10",
                                          "bulk_chunk: 5000": "bulk_chunk: 100",
                                          "bulk_poll_seconds: 5": "bulk_poll_seconds: 0"})
    calls = {"n": 0}

    def crash_after_first_chunk(kind, counts):
        calls["n"] += 1
        if counts.written >= 100:
            raise KeyboardInterrupt  # the process dies at a page boundary after one committed chunk

    with pytest.raises(KeyboardInterrupt):
        service.run_backfill(config, env, since=since_days(400), until=None, objects="subscriptions",
                             dry_run=False, resume=False, progress=crash_after_first_chunk)
    partial = len(org.records("Opportunity"))
    assert 0 < partial < 200
    committed = committed_backfill_events(tmp_path)
    assert 100 <= committed < 250
    resumed = backfill(config, env, since=since_days(400), objects="subscriptions", resume=True)
    # Only what the checkpoint does not cover is read again: each slice from its own last committed page.
    assert resumed.objects["subscriptions"]["read"] == 250 - committed
    assert committed_backfill_events(tmp_path) == 250
    won = [s for s in h["subs"] if s["status"] in ("active", "trialing", "past_due", "unpaid")]
    assert len(org.records("Opportunity")) == len(won)
    statuses = {a["Stripe_Customer_ID__c"]: a.get("Subscription_Status__c") for a in org.records("Account")}
    assert all(statuses[s["customer"]] == s["status"] for s in h["subs"])
    with pytest.raises(ConfigError):
        backfill(config, env, since=since_days(400), resume=True)
    assert service.status_report(config, env)["backfill"]["finished"] is True


def test_dry_run_backfill_changes_nothing(tmp_path, env, org, stripe_sb):
    history(stripe_sb, org, subs=4)
    config = configured(tmp_path, env)
    before = snapshot(org)
    summary = backfill(config, env, since=since_days(400), dry_run=True)
    assert summary.planned_writes and snapshot(org) == before
    with StateStore.open(tmp_path / "stripe-sf-state.sqlite") as st:
        assert st.cursor() is None


def test_bad_objects_are_a_usage_error(tmp_path, env):
    config = configured(tmp_path, env)
    with pytest.raises(ConfigError) as info:
        backfill(config, env, since="2025-01-01", objects="subscriptions,charges")
    assert "charges" in str(info.value)
    with pytest.raises(ConfigError):
        backfill(config, env, since="2025-01-01", until="2024-01-01")


def test_cli_backfill_prints_per_type_counts(tmp_path, stripe_sb, sf_sb, org):
    from typer.testing import CliRunner

    from stripe_sf_sync.cli import app

    from .test_cli import cli_env
    history(stripe_sb, org, subs=3)
    env = cli_env(stripe_sb, sf_sb)
    config = write_config(tmp_path / "sync.yaml")
    runner = CliRunner()
    runner.invoke(app, ["discover-config", "--config", str(config), "--write"], env=env)
    result = runner.invoke(app, ["backfill", "--config", str(config), "--since", since_days(400)], env=env)
    assert result.exit_code == 0, result.output
    assert "subscriptions: 3 read" in result.output and "invoices:" in result.output


def test_a_running_subscription_decides_the_account_status_over_an_ended_one(tmp_path, env, org, stripe_sb):
    f = StripeFactory(stripe_sb, seed=21)
    price = f.price(1000)
    a = f.customer("Two subs A", "a@example.com", created=NOW - 300 * DAY)
    b = f.customer("Two subs B", "b@example.com", created=NOW - 300 * DAY)
    acct_a = org.insert("Account", {"Name": "A", "Stripe_Customer_ID__c": a["id"]})
    acct_b = org.insert("Account", {"Name": "B", "Stripe_Customer_ID__c": b["id"]})
    f.subscription(a["id"], [(price, 1)], status="active", created=NOW - 200 * DAY)
    f.subscription(a["id"], [(price, 1)], status="canceled", created=NOW - 100 * DAY)  # newer, but ended
    f.subscription(b["id"], [(price, 1)], status="canceled", created=NOW - 200 * DAY)
    f.subscription(b["id"], [(price, 1)], status="past_due", created=NOW - 100 * DAY)
    config = configured(tmp_path, env)
    backfill(config, env, since=since_days(400), objects="subscriptions")
    assert org.get("Account", acct_a)["Subscription_Status__c"] == "active"
    assert org.get("Account", acct_b)["Subscription_Status__c"] == "past_due"


def test_bulk_jobs_renew_an_expired_session(sf_sb, org):
    """simple-salesforce's bulk2 never re-authenticates; the sink renews and sends the job again."""
    from simple_salesforce import Salesforce

    from stripe_sf_sync.records import SfOp
    from stripe_sf_sync.salesforce.gateway import SalesforceGateway
    from stripe_sf_sync.salesforce.writers import BulkWriter

    acct = org.insert("Account", {"Name": "Renew", "Stripe_Customer_ID__c": "cus_renew0001"})

    def login():
        return Salesforce(instance_url=sf_sb.instance_url, session_id=org.new_access_token(),
                          session=sf_sb.session(), version="62.0")

    gw = SalesforceGateway(login(), reconnect=login, bulk_poll_seconds=0)
    org.expire_sessions()
    [res] = BulkWriter(gw).write([SfOp("update", "Account", acct, {"Subscription_Status__c": "active"})])
    assert res.success
    assert org.get("Account", acct)["Subscription_Status__c"] == "active"
    gw_no_renew = SalesforceGateway(login(), bulk_poll_seconds=0)
    org.expire_sessions()
    from stripe_sf_sync.errors import FatalSyncError
    with pytest.raises(FatalSyncError) as info:
        BulkWriter(gw_no_renew).write([SfOp("update", "Account", acct, {"Subscription_Status__c": "past_due"})])
    assert info.value.code == "INVALID_SESSION_ID"


def two_subscriptions(f, org, *, newer_days: int, older_days: int):
    """A customer whose newer subscription is active and older one past due: both running, so the newer decides."""
    price = f.price(2000)
    cus = f.customer("Two running", "two@example.com", created=NOW - 399 * DAY)
    acct = org.insert("Account", {"Name": "Two running", "Stripe_Customer_ID__c": cus["id"]})
    f.subscription(cus["id"], [(price, 1)], status="past_due", created=NOW - older_days * DAY)
    f.subscription(cus["id"], [(price, 1)], status="active", created=NOW - newer_days * DAY)
    return acct


def test_the_newest_running_subscription_decides_when_an_older_slice_is_listed_first(tmp_path, env, org, stripe_sb):
    f = StripeFactory(stripe_sb, seed=31)
    history(stripe_sb, org, subs=20)
    acct = two_subscriptions(f, org, newer_days=10, older_days=300)
    config = configured(tmp_path, env, **{"parallel_slices: 4": "parallel_slices: 2"})

    def newest_slice_late(n: int, method: str, path: str) -> None:
        created = stripe_sb.requests_log[n - 1][2].get("created") or {}
        if path == "/v1/subscriptions" and "lt" not in created:
            time.sleep(1.0)  # the open-ended (newest) slice answers after every older one
    stripe_sb.faults.on_request = newest_slice_late
    backfill(config, env, since=since_days(400), objects="subscriptions")
    stripe_sb.faults.clear()
    listed = [p["created"] for m, path, p in stripe_sb.requests_log if path == "/v1/subscriptions"]
    assert sum("lt" not in created for created in listed) == 1 and len(listed) > 2  # one open-ended slice of many
    assert org.get("Account", acct)["Subscription_Status__c"] == "active"


SMALL_CHUNKS = {"bulk_threshold: 2000": "bulk_threshold: 10", "bulk_chunk: 5000": "bulk_chunk: 100",
                "bulk_poll_seconds: 5": "bulk_poll_seconds: 0"}


def two_running_among_many(tmp_path, env, org, stripe_sb, *, seed: int, **overrides):
    """250 customers and one with two running subscriptions, 5 and 399 days old; chunks of 100."""
    f = StripeFactory(stripe_sb, seed=seed)
    history(stripe_sb, org, subs=250)
    acct = two_subscriptions(f, org, newer_days=5, older_days=399)
    return acct, configured(tmp_path, env, **SMALL_CHUNKS, **overrides)


def test_a_resumed_backfill_keeps_the_status_a_newer_subscription_decided(tmp_path, env, org, stripe_sb, sf_sb):
    acct, config = two_running_among_many(tmp_path, env, org, stripe_sb, seed=32)

    def crash_after_first_chunk(kind, counts):
        if counts.written >= 100:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        service.run_backfill(config, env, since=since_days(400), until=None, objects="subscriptions",
                             dry_run=False, resume=False, progress=crash_after_first_chunk)
    assert org.get("Account", acct)["Subscription_Status__c"] == "active"  # the newer one, committed
    backfill(config, env, since=since_days(400), objects="subscriptions", resume=True)
    # The older subscription, listed only after the resume, does not take the status back.
    assert org.get("Account", acct)["Subscription_Status__c"] == "active"


def test_a_later_chunk_keeps_the_status_an_earlier_chunk_decided(tmp_path, env, org, stripe_sb, sf_sb):
    # One slice at a time, newest first: the newer subscription is in the first chunk, the older in the last.
    acct, config = two_running_among_many(tmp_path, env, org, stripe_sb, seed=33,
                                          **{"parallel_slices: 4": "parallel_slices: 1"})
    summary = backfill(config, env, since=since_days(400), objects="subscriptions")
    assert summary.objects["subscriptions"]["read"] == 252 and summary.dead_lettered == 0
    assert org.get("Account", acct)["Subscription_Status__c"] == "active"
