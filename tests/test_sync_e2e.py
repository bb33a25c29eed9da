"""The sync pipeline end to end against the sandbox stand-ins: the rules, idempotency, the
order guard, and a cursor that never passes an event whose outcome is not stored."""

from __future__ import annotations

import json
import sqlite3
import time
from decimal import Decimal

import pytest

from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sync import service
from stripe_sf_sync.errors import ConfigError, CursorExpiredError, ExitCode, FatalSyncError, LockHeldError
from stripe_sf_sync.pipeline import RunSummary
from stripe_sf_sync.sources import DeadLetters
from stripe_sf_sync.state import Cursor, StateStore

from .conftest import crash_before_commit_then_rerun, since, snapshot, write_config


def run(config, env, **kw):
    kw.setdefault("since", None)
    kw.setdefault("dry_run", False)
    kw.setdefault("max_events", None)
    return service.run_sync(config, env, **kw)


def by(records, field, value):
    found = [r for r in records if r.get(field) == value]
    assert len(found) == 1, (field, value, found)
    return found[0]


def test_renamed_stage_and_required_record_type_write_exactly_the_rules(config, env, org, sc):
    summary = run(config, env, since=since(sc))
    assert summary.events_read == len(sc.events)
    assert summary.dead_lettered == 1 and summary.applied == len(sc.events) - 1
    rt = org.record_type_id("New_Business")
    opps = org.records("Opportunity")
    assert len(opps) == 4  # Globex's existing one was updated, not duplicated

    acme = by(opps, "Stripe_Subscription_ID__c", sc.subscriptions["acme"])
    assert (acme["StageName"], acme["RecordTypeId"]) == ("Closed Won", rt)  # the API name, not the label "Won"
    assert Decimal(str(acme["Amount"])) == Decimal("999.00")
    assert Decimal(str(acme["MRR__c"])) == Decimal("999.00") and Decimal(str(acme["ARR__c"])) == Decimal("11988.00")
    assert acme["AccountId"] == sc.accounts["acme"]
    assert acme["Stripe_Customer_ID__c"] == sc.customers["acme"]

    globex = org.get("Opportunity", sc.opportunities["globex"])
    assert globex["StageName"] == "Closed Won" and globex["Stripe_Subscription_ID__c"] == sc.subscriptions["globex"]
    assert Decimal(str(globex["ARR__c"])) == Decimal("10000.00")

    initech = by(opps, "Stripe_Subscription_ID__c", sc.subscriptions["initech"])
    # Amount is the first period's value and stays (issue 22 §4); MRR follows the plan change (8 seats).
    assert Decimal(str(initech["Amount"])) == Decimal("124.00")
    assert Decimal(str(initech["MRR__c"])) == Decimal("169.00")

    umbrella = by(opps, "Stripe_Payment_Intent_ID__c", sc.payments["umbrella"])
    assert Decimal(str(umbrella["Amount"])) == Decimal("500000") and umbrella.get("MRR__c") in (None, "")

    statuses = {a["Name"]: a.get("Subscription_Status__c") for a in org.records("Account")}
    assert statuses == {"Acme Corp": "active", "Globex": "active", "Initech": "canceled", "Umbrella KK": None}

    tasks = org.records("Task")
    subjects = sorted(t["Subject"] for t in tasks)
    assert subjects == sorted([
        "Subscription status: trialing → active", "Payment Failed - Immediate Action Required",
        "Subscription status: active → past_due", "Subscription status: past_due → canceled",
        "Subscription cancelled - follow up with the customer",
        next(s for s in subjects if s.startswith("Cancellation scheduled: subscription ends ")),
    ])
    failed = by(tasks, "Subject", "Payment Failed - Immediate Action Required")
    assert failed["Priority"] == "High" and failed["Status"] == "Not Started"
    assert failed["OwnerId"] == org.user_id("Ava Owner") and failed["WhatId"] == sc.accounts["initech"]
    assert "169.00 USD" in failed["Description"] and "card_declined (insufficient_funds)" in failed["Description"]
    follow = by(tasks, "Subject", "Subscription cancelled - follow up with the customer")
    assert follow["OwnerId"] == org.user_id("Cara CSM")  # the CSM, not the owner
    assert all(t["Stripe_Event_ID__c"].startswith(("sub_", "in_")) for t in tasks)  # keyed by what it is about

    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        [dead] = st.dead_letters()
        assert dead.event_id == sc.unmatched_events[0] and dead.error_code == "NO_ACCOUNT"
        assert json.loads(dead.payload)["id"] == dead.event_id  # the payload is kept for the retry


def test_second_sync_writes_nothing(config, env, org, sc, sf_sb):
    run(config, env, since=since(sc))
    before = snapshot(org)
    calls = len(sf_sb.requests_log)
    again = run(config, env)
    assert again.events_read == 0 and again.salesforce_calls == 0
    assert len(sf_sb.requests_log) == calls
    assert snapshot(org) == before
    # re-reading the same window (--since with a cursor needs --rewind) is deduplicated by the ledger
    overlap = run(config, env, since=since(sc), rewind=True)
    assert overlap.skipped_duplicate == len(sc.events) and overlap.applied == 0
    assert snapshot(org) == before


def test_dry_run_changes_nothing(config, env, org, sc):
    before = snapshot(org)
    summary = run(config, env, since=since(sc), dry_run=True)
    assert summary.planned_writes and snapshot(org) == before
    assert {w["sobject"] for w in summary.planned_writes} == {"Opportunity", "Account", "Task"}
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        assert st.cursor() is None and st.dead_letter_count() == 0


def test_batched_writes_cost_few_calls(config, env, sc):
    summary = run(config, env, since=since(sc))
    # 1 Composite of 3 describes + 2 Composites of 6 lookups + 5 collection writes, for every rule at once
    assert summary.salesforce_calls == 8
    assert summary.records_written == 13


def test_first_run_needs_since(config, env, sc):
    with pytest.raises(ConfigError) as info:
        run(config, env)
    assert "--since" in str(info.value)


def test_expired_cursor_names_the_backfill(config, env, sc):
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        st.set_cursor(Cursor("evt_old", int(time.time()) - 40 * 86400))
    with pytest.raises(CursorExpiredError) as info:
        run(config, env)
    assert "stripe-sf backfill --since" in str(info.value)
    assert info.value.exit_code == ExitCode.CURSOR_EXPIRED


def test_since_past_retention_is_refused(config, env, sc):
    old = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 45 * 86400))
    with pytest.raises(CursorExpiredError):
        run(config, env, since=old)


def test_lock_held_by_another_run(config, env, sc):
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as other:
        other.acquire_lock()
        with pytest.raises(LockHeldError):
            run(config, env, since=since(sc))


def test_fatal_error_mid_run_commits_nothing_of_that_batch_and_rerun_converges(tmp_path, env, org, sc, sf_sb):
    """Invariant 1: the cursor never passes an event without a durable outcome."""
    config = write_config(tmp_path / "sync.yaml")
    service.run_discover(config, env, write=True, example=config.read_text())
    # The daily limit runs out on the first collections write.
    sf_sb.faults.fail_matching("PATCH", r"composite/sobjects", 403,
                               [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    with pytest.raises(FatalSyncError) as info:
        run(config, env, since=since(sc))
    assert info.value.code == "REQUEST_LIMIT_EXCEEDED" and info.value.exit_code == ExitCode.UNAVAILABLE
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        assert st.cursor() is None
        assert st.outcomes_for(sc.events) == {}
    run(config, env, since=since(sc))
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        assert set(st.outcomes_for(sc.events)) == set(sc.events)
        assert st.cursor().event_id == sc.events[-1]
    assert len(org.records("Task")) == 6


def test_crash_between_salesforce_write_and_state_commit_is_repaired_by_rerun(config, env, org, sc, monkeypatch):
    """Every write is idempotent: no duplicate Task after a crash and a rerun."""
    seen = {}

    def crashed() -> None:
        seen["written"] = snapshot(org)
        assert len(org.records("Task")) == 6

    summary = crash_before_commit_then_rerun(monkeypatch, lambda: run(config, env, since=since(sc)), crashed)
    written = seen["written"]
    assert summary.applied == len(sc.events) - 1
    assert snapshot(org) == written
    assert len(org.records("Task")) == 6 and len(org.records("Opportunity")) == 4


def test_older_event_never_overwrites_newer_state(config, env, org, sc, stripe_sb):
    """Invariant 3: the order guard, keyed by Stripe object id, ordered by event time."""
    run(config, env, since=since(sc))
    initech = sc.accounts["initech"]
    assert org.get("Account", initech)["Subscription_Status__c"] == "canceled"
    old = next(e for e in stripe_sb.events if e["type"] == "customer.subscription.updated"
               and e["data"]["object"]["id"] == sc.subscriptions["initech"]
               and e["data"]["object"]["status"] == "past_due")
    replay = json.loads(json.dumps(old))
    replay["id"] = "evt_replayedOutOfOrder000"  # same time, new id: as a late webhook delivery would be
    replay["created"] = old["created"] - 1
    runtime = service.Runtime(config, env)
    summary = RunSummary("test")
    with service.recorded_run(runtime, summary, *service.clients(runtime)) as recorded:
        recorded.apply(DeadLetters([replay], batch_size=10))  # through the batch step, the cursor left alone
    assert summary.skipped_stale == 1 and summary.applied == 0
    assert org.get("Account", initech)["Subscription_Status__c"] == "canceled"


def test_hostile_metadata_never_reaches_soql_or_a_url(config, env, org, sc, stripe_sb, sf_sb):
    """Invariant 5."""
    f = StripeFactory(stripe_sb, seed=99)
    cus = f.customer("Mallory", "m@example.com", metadata={
        "salesforce_account_id": "../../sobjects/User", "salesforce_opportunity_id": "' OR Name != '"})
    org.insert("Account", {"Name": "Mallory", "Stripe_Customer_ID__c": cus["id"]})
    price = f.price(1000)
    sub = f.subscription(cus["id"], [(price, 1)], metadata={"salesforce_opportunity_id": "001Hs00000CmAbc"})
    ev = f.subscription_created(sub, int(time.time()) - 60)
    sc.events.append(ev["id"])
    run(config, env, since=since(sc))
    for _method, path, *_ in sf_sb.requests_log:
        assert ".." not in path and "sobjects/User" not in path
    assert by(org.records("Opportunity"), "Stripe_Subscription_ID__c", sub["id"])["Name"].startswith("Mallory")


def test_secrets_never_reach_the_state_file(config, env, sc, caplog):
    """Invariant 6."""
    caplog.set_level("DEBUG")
    run(config, env, since=since(sc))
    data = (config.parent / "stripe-sf-state.sqlite").read_bytes()
    for secret in (env.env["STRIPE_API_KEY"], env.env["SF_ACCESS_TOKEN"]):
        assert secret.encode() not in data
        assert secret not in caplog.text


def test_validation_error_dead_letters_with_its_code(tmp_path, env, org, sc):
    """Without discover-config: no record type is configured and the org requires one."""
    config = write_config(tmp_path / "sync.yaml", **{"won_stage: null": "won_stage: Closed Won"})
    summary = run(config, env, since=since(sc))
    assert summary.dead_lettered >= 2
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        codes = {d.error_code for d in st.dead_letters()}
    assert "REQUIRED_FIELD_MISSING" in codes
    # fix the config, retry the dead letters through the same pipeline
    service.run_discover(config, env, write=True, example=config.read_text())
    retried = service.run_dlq_retry(config, env, event_ids=[], retry_all=True)
    assert retried.applied >= 2
    assert len([o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c")]) >= 2


def test_dead_letter_retry_after_fixing_the_account(config, env, org, sc):
    run(config, env, since=since(sc))
    org.insert("Account", {"Name": "Hooli", "Stripe_Customer_ID__c": sc.customers["hooli"]})
    summary = service.run_dlq_retry(config, env, event_ids=[sc.unmatched_events[0]], retry_all=False)
    assert summary.applied == 1 and summary.dead_lettered == 0
    by(org.records("Opportunity"), "Stripe_Subscription_ID__c", sc.subscriptions["hooli"])
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        assert st.dead_letter_count() == 0


def test_row_locks_are_retried(config, env, org, sc, sf_sb):
    sf_sb.faults.lock_rows("Account", sc.accounts["acme"], times=2)
    summary = run(config, env, since=since(sc))
    assert summary.dead_lettered == 1  # only Hooli
    assert org.get("Account", sc.accounts["acme"])["Subscription_Status__c"] == "active"


def test_transient_5xx_is_retried(config, env, org, sc, sf_sb):
    sf_sb.faults.fail_matching("GET", r"/query", 503, [{"message": "busy", "errorCode": "SERVER_UNAVAILABLE"}],
                               times=2)
    summary = run(config, env, since=since(sc))
    assert summary.applied == len(sc.events) - 1


def test_expired_access_token_is_fatal_with_advice(config, env, org, sc):
    org.expire_sessions()
    with pytest.raises(FatalSyncError) as info:
        run(config, env, since=since(sc))
    assert "INVALID_SESSION_ID" in str(info.value) and "client credentials" in str(info.value)


def test_org_without_task_event_id_field_creates_tasks(tmp_path, stripe_sb, sc):
    from stripe_sf_sandbox import scenario
    from stripe_sf_sandbox.demo import sandbox_environment
    from stripe_sf_sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox

    plain = SalesforceOrg(won_stage="Won", require_record_type=True, task_event_id_field=False)
    for name, cus in sc.customers.items():
        if name != "hooli":
            plain.insert("Account", {"Name": name, "Stripe_Customer_ID__c": cus})
    del scenario
    with SalesforceSandbox(plain) as sb:
        env = sandbox_environment(stripe_sb, sb)
        config = write_config(tmp_path / "sync.yaml")
        service.run_discover(config, env, write=True, example=config.read_text())
        run(config, env, since=since(sc))
        assert len(plain.records("Task")) >= 5
        assert run(config, env).events_read == 0


def test_many_pages_and_small_batches(tmp_path, env, org, stripe_sb):
    f = StripeFactory(stripe_sb, seed=5)
    now = int(time.time())
    start = now - 3 * 86400
    price = f.price(2000)
    subs = []
    for i in range(60):
        cus = f.customer(f"Cust {i}", f"c{i}@example.com")
        org.insert("Account", {"Name": f"Cust {i}", "Stripe_Customer_ID__c": cus["id"]})
        sub = f.subscription(cus["id"], [(price, 1)], created=start + i * 60)
        f.subscription_created(sub, start + i * 60)
        f.subscription_updated(sub["id"], {"status": "past_due"}, start + 86400 + i * 60)
        f.subscription_updated(sub["id"], {"status": "active"}, start + 2 * 86400 + i * 60)
        subs.append(sub["id"])
    config = write_config(tmp_path / "sync.yaml", **{"batch_size: 10000": "batch_size: 70"})
    service.run_discover(config, env, write=True, example=config.read_text())
    summary = run(config, env, since=time.strftime("%Y-%m-%d", time.gmtime(start - 86400)))
    assert summary.events_read == 180 and summary.applied == 180
    assert len(org.records("Opportunity")) == 60
    assert all(a.get("Subscription_Status__c") == "active" for a in org.records("Account"))
    assert len(org.records("Task")) == 120  # two transitions per subscription, no duplicates
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        assert st.cursor().event_id == stripe_sb.events[-1]["id"]
        runs = st.recent_runs(1)
    assert runs[0]["exit_code"] == 0
    con = sqlite3.connect(config.parent / "stripe-sf-state.sqlite")
    assert con.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 180


def test_pre_basil_payloads_are_understood(tmp_path, env, org, stripe_sb):
    """Events rendered in an API version before 2025-03-31.basil go through the same rules."""
    f = StripeFactory(stripe_sb, seed=11, api_version="2024-06-20")
    now = int(time.time())
    t = now - 2 * 86400
    cus = f.customer("Oldco", "o@example.com")
    acct = org.insert("Account", {"Name": "Oldco", "Stripe_Customer_ID__c": cus["id"]})
    price = f.price(12000, "usd", "year")
    sub = f.subscription(cus["id"], [(price, 1)], created=t)
    f.subscription_created(sub, t)
    inv = f.invoice(sub["id"], cus["id"], 12000, "usd", created=t + 3600)
    f.invoice_payment_failed(inv["id"], t + 3600, decline_code="expired_card")
    config = write_config(tmp_path / "sync.yaml")
    service.run_discover(config, env, write=True, example=config.read_text())
    summary = run(config, env, since=time.strftime("%Y-%m-%d", time.gmtime(t - 86400)))
    assert summary.applied == 2 and summary.dead_lettered == 0
    opp = by(org.records("Opportunity"), "Stripe_Subscription_ID__c", sub["id"])
    assert Decimal(str(opp["MRR__c"])) == Decimal("10.00") and Decimal(str(opp["ARR__c"])) == Decimal("120.00")
    task = by(org.records("Task"), "WhatId", acct)
    assert "card_declined (expired_card)" in task["Description"] and "120.00 USD" in task["Description"]


def test_invoice_payment_intent_is_not_a_one_time_win(tmp_path, env, org, stripe_sb):
    f = StripeFactory(stripe_sb, seed=12)
    t = int(time.time()) - 86400
    cus = f.customer("Paying", "p@example.com")
    org.insert("Account", {"Name": "Paying", "Stripe_Customer_ID__c": cus["id"]})
    sub = f.subscription(cus["id"], [(f.price(5000), 1)], created=t - 40 * 86400)
    pi = f.payment_intent(cus["id"], 5000, "usd", status="requires_payment_method", created=t)
    f.invoice(sub["id"], cus["id"], 5000, "usd", created=t, payment_intent=pi["id"])
    f.payment_succeeded(pi["id"], t + 10)
    config = write_config(tmp_path / "sync.yaml")
    service.run_discover(config, env, write=True, example=config.read_text())
    summary = run(config, env, since=time.strftime("%Y-%m-%d", time.gmtime(t - 86400)))
    assert summary.ignored == 1 and summary.applied == 0
    assert org.records("Opportunity") == []


def test_stripe_rate_limit_without_should_retry_is_backed_off(config, env, sc, stripe_sb):
    """The SDK does not retry a plain 429; stripe-sf does."""
    body = {"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests"}}
    stripe_sb.faults.fail_matching("GET", r"^/v1/events", 429, body, times=2)
    summary = run(config, env, since=since(sc))
    assert summary.applied == len(sc.events) - 1


def test_concurrent_request_limit_clears_by_itself_and_is_retried(config, env, org, sc, sf_sb):
    """REQUEST_LIMIT_EXCEEDED "ConcurrentPerOrgLongTxn" is not the daily limit: back off and go on
    (Salesforce REST API: Status Codes and Error Responses). Once on a whole call (a lookup), twice on a
    collections write."""
    sf_sb.faults.concurrent_long_requests("POST", r"/composite$", times=1)
    sf_sb.faults.concurrent_long_requests("PATCH", r"composite/sobjects", times=2)
    summary = run(config, env, since=since(sc))
    assert summary.dead_lettered == 1 and summary.applied == len(sc.events) - 1  # only Hooli, as always
    assert org.get("Account", sc.accounts["acme"])["Subscription_Status__c"] == "active"


def test_the_daily_limit_still_stops_the_run(config, env, sc, sf_sb):
    sf_sb.faults.fail_matching("PATCH", r"composite/sobjects", 403,
                               [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}],
                               times=10)
    with pytest.raises(FatalSyncError) as info:
        run(config, env, since=since(sc))
    assert info.value.code == "REQUEST_LIMIT_EXCEEDED" and info.value.exit_code == ExitCode.UNAVAILABLE
