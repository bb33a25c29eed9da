"""A Task is created once and never rewritten (an upsert would re-send every field it carries): what a person did to
it (completed, reassigned, re-dated) stands through every rerun, dead-letter retry and second backfill, and
no rerun duplicates it. Every test runs against each way an admin may have made Task.Stripe_Event_ID__c:
External ID and Unique, External ID only (an upsert on it would need "View All Data"), Unique only, or a
plain Text field."""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import pytest

from stripe_sf_sandbox import scenario
from stripe_sf_sandbox.salesforce_server import SalesforceOrg
from stripe_sf_sync import service
from stripe_sf_sync.state import StateStore

from .conftest import crash_before_commit_then_rerun, since, snapshot, write_config
from .test_backfill import backfill, configured, history, since_days

KINDS = ["external_unique", "external", "unique", "text"]
REP_DATE = "2031-03-14"


@pytest.fixture(params=KINDS)
def org(request: pytest.FixtureRequest) -> SalesforceOrg:
    """The demo's awkward org, with the Task key field made one way or another."""
    return SalesforceOrg(won_stage=scenario.WON_STAGE, require_record_type=True, csm_field="CSM__c",
                         task_event_id_kind=request.param, currencies=scenario.ORG_CURRENCIES)


def run(config, env, **kw):
    kw.setdefault("since", None)
    kw.setdefault("dry_run", False)
    kw.setdefault("max_events", None)
    return service.run_sync(config, env, **kw)


def tasks_by_id(org: SalesforceOrg) -> dict[str, dict[str, Any]]:
    return {t["Id"]: t for t in org.records("Task")}


def work_the_tasks(org: SalesforceOrg) -> dict[str, dict[str, Any]]:
    """A rep completes every open Task, takes every Task over and moves its due date, in the org's UI."""
    rep = org.user_id("Ben Owner")
    tasks = org.records("Task")
    assert tasks
    for t in tasks:
        org.update("Task", t["Id"], {"Status": "Completed", "OwnerId": rep, "ActivityDate": REP_DATE}, as_user=rep)
    worked = tasks_by_id(org)
    assert all((t["Status"], t["OwnerId"], t["ActivityDate"], t["LastModifiedById"]) == ("Completed", rep, REP_DATE,
                                                                                         rep) for t in worked.values())
    return worked


def assert_one_task_per_key(org: SalesforceOrg) -> None:
    keys = [t["Stripe_Event_ID__c"] for t in org.records("Task")]
    assert all(keys) and len(keys) == len(set(keys)), "duplicate Task"


def test_rerun_after_a_crash_leaves_the_reps_tasks_as_they_left_them(config, env, org, sc, monkeypatch):
    """(a) A crash between the Salesforce write and the state commit: the rerun reaches every Task again."""
    worked = {}

    def rep_at_work() -> None:
        assert len(org.records("Task")) == 6
        worked.update(work_the_tasks(org))

    summary = crash_before_commit_then_rerun(monkeypatch, lambda: run(config, env, since=since(sc)), rep_at_work)
    assert summary.applied == len(sc.events) - 1 and summary.dead_lettered == 1  # only Hooli, as before
    assert tasks_by_id(org) == worked  # not one field rewritten, not even LastModifiedById
    assert_one_task_per_key(org)


def test_rerun_from_an_old_cursor_leaves_the_tasks_alone(config, env, org, sc, sf_sb):
    """(a) The same events again through a fresh state file (a cursor reset): every Task exists, none is
    created or written, and the events count as applied."""
    run(config, env, since=since(sc))
    worked = work_the_tasks(org)
    (config.parent / "stripe-sf-state.sqlite").unlink()
    before = len(sf_sb.requests_log)
    again = run(config, env, since=since(sc))
    assert again.applied == len(sc.events) - 1 and again.dead_lettered == 1
    assert tasks_by_id(org) == worked
    task_writes = [(m, p) for m, p in sf_sb.requests_log[before:] if "composite/sobjects/Task" in p]
    assert task_writes == []


def test_dlq_retry_leaves_the_tasks_of_the_retried_events_alone(config, env, org, sc, sf_sb):
    """(b) Initech's status events created their Tasks but their Account write failed (a row lock that never
    cleared), so they were dead-lettered; `dlq retry --all` applies them without touching those Tasks."""
    sf_sb.faults.lock_rows("Account", sc.accounts["initech"], times=100)
    first = run(config, env, since=since(sc))
    assert first.dead_lettered > 1
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        codes = {d.event_id: d.error_code for d in st.dead_letters()}
    locked = {e for e, c in codes.items() if c == "UNABLE_TO_LOCK_ROW"}
    assert len(locked) >= 2 and set(codes) == locked | set(sc.unmatched_events)
    assert len(org.records("Task")) == 6  # the Tasks went in before the Account write failed
    worked = work_the_tasks(org)
    sf_sb.faults.clear()

    retried = service.run_dlq_retry(config, env, event_ids=[], retry_all=True)
    # The cancellation applies (its Tasks exist: done); the older status events are stale by now, since the
    # scheduled-cancel event, which needed no Account write, was applied after them.
    assert retried.applied >= 1 and retried.applied + retried.skipped_stale == len(locked)
    assert retried.dead_lettered == 1  # Hooli still has no Account
    assert org.get("Account", sc.accounts["initech"])["Subscription_Status__c"] == "canceled"
    assert tasks_by_id(org) == worked
    assert_one_task_per_key(org)
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        assert {d.event_id for d in st.dead_letters()} == set(sc.unmatched_events)


@pytest.mark.parametrize("bulk", [False, True], ids=["collections", "bulk"])
def test_second_backfill_leaves_the_failed_payment_task_alone(tmp_path, env, org, stripe_sb, sf_sb, bulk):
    """(c) Failure Tasks of a backfill are keyed by invoice and attempt (in_…#attempt-N): a second backfill over
    the same range finds the Task and leaves it as the rep left it, with Bulk API 2.0 too."""
    history(stripe_sb, org)
    overrides = {"bulk_threshold: 2000": "bulk_threshold: 1", "bulk_poll_seconds: 5": "bulk_poll_seconds: 0"}
    config = configured(tmp_path, env, **(overrides if bulk else {}))
    first = backfill(config, env, since=since_days(400))
    assert first.dead_lettered == 0 and first.objects["invoices"]["bulk"] is bulk
    [task] = org.records("Task")
    assert re.fullmatch(r"in_\w+#attempt-\d+", task["Stripe_Event_ID__c"])
    worked = work_the_tasks(org)
    others = {k: v for k, v in snapshot(org).items() if k != "Task"}

    later = env.clock
    env.clock = lambda: later() + 3600  # an hour later: new synthetic events, not the first run's again
    second = backfill(config, env, since=since_days(400))
    assert second.dead_lettered == 0 and second.objects["invoices"]["written"] == 1  # applied: the Task exists
    assert tasks_by_id(org) == worked
    assert {k: v for k, v in snapshot(org).items() if k != "Task"} == others


@pytest.mark.parametrize("org", ["external_unique", "unique"], indirect=True)
def test_a_task_that_appears_between_the_lookup_and_the_create_counts_as_done(config, env, org, sc, sf_sb):
    """A Unique key field turns a Task made by someone else after the lookup (or one the integration user
    could not see) into DUPLICATE_VALUE: that Task exists, so the event is applied, not dead-lettered."""
    plan = run(config, env, since=since(sc), dry_run=True)
    key = next(w["fields"]["Stripe_Event_ID__c"] for w in plan.planned_writes
               if w["sobject"] == "Task" and w["fields"]["Subject"].startswith("Payment Failed"))
    theirs: dict[str, str] = {}

    def someone_else_creates_it(n: int, method: str, path: str) -> None:
        if method == "POST" and path.endswith("/composite/sobjects") and not theirs:
            theirs["id"] = org.insert("Task", {"Subject": "Made by hand", "Status": "In Progress",
                                               "Priority": "Low", "Stripe_Event_ID__c": key,
                                               "WhatId": sc.accounts["initech"]})

    sf_sb.faults.on_request = someone_else_creates_it
    summary = run(config, env, since=since(sc))
    assert theirs and summary.dead_lettered == 1 and summary.applied == len(sc.events) - 1
    assert org.get("Task", theirs["id"])["Subject"] == "Made by hand"
    assert_one_task_per_key(org)
    assert len(org.records("Task")) == 6


def test_no_task_is_ever_upserted(config, env, org, sc, sf_sb):
    """Tasks go through sObject Collections create only: no upsert exists that could reset a Task, and none
    needs "View All Data" or a Unique field."""
    summary = run(config, env, since=since(sc))
    assert summary.dead_lettered == 1 and len(org.records("Task")) == 6
    assert not [p for _m, p in sf_sb.requests_log if "/Task/" in p or p.rstrip("/").endswith("/Task")]
    assert_one_task_per_key(org)
    assert all(t["Stripe_Event_ID__c"].startswith(("sub_", "in_")) for t in org.records("Task"))


@pytest.mark.parametrize("org", ["external_unique"], indirect=True)
def test_task_field_that_is_not_text_is_a_config_error(tmp_path, env, org, sc):
    """The key is looked up with SOQL `IN (...)`: a field that cannot hold or filter it is named up front."""
    from stripe_sf_sandbox.salesforce_server import FieldDef
    from stripe_sf_sync.errors import ConfigError

    org.schema["Task"]["Stripe_Event_ID__c"] = FieldDef("Stripe_Event_ID__c", "textarea", length=32000)
    config = write_config(tmp_path / "sync.yaml")
    service.run_discover(config, env, write=True, example=config.read_text())
    with pytest.raises(ConfigError) as info:
        run(config, env, since=since(sc))
    assert "Task.Stripe_Event_ID__c" in str(info.value) and "Text(255)" in str(info.value)
    assert org.records("Task") == []


@pytest.mark.parametrize("org", ["text"], indirect=True)
def test_warning_names_the_missing_task_field(tmp_path, env, stripe_sb, sc, caplog):
    """Without the field there is nothing to look Tasks up by: they are created without a key, as before,
    and the run says what to add."""
    from stripe_sf_sandbox.demo import sandbox_environment
    from stripe_sf_sandbox.salesforce_server import SalesforceSandbox

    plain = SalesforceOrg(won_stage="Won", require_record_type=True, task_event_id_field=False)
    for name, cus in sc.customers.items():
        if name != "hooli":
            plain.insert("Account", {"Name": name, "Stripe_Customer_ID__c": cus})
    with SalesforceSandbox(plain) as sb:
        environment = sandbox_environment(stripe_sb, sb)
        config = write_config(tmp_path / "sync.yaml")
        service.run_discover(config, environment, write=True, example=config.read_text())
        caplog.set_level("WARNING")
        run(config, environment, since=since(sc))
    assert len(plain.records("Task")) >= 5
    assert "Task.Stripe_Event_ID__c" in caplog.text and "Text(255)" in caplog.text
    assert "Unique is not needed" in caplog.text


def test_tasks_are_due_and_assigned_as_the_rules_say(config, env, org, sc):
    """Creating instead of upserting changes none of the values a new Task gets."""
    run(config, env, since=since(sc))
    failed = next(t for t in org.records("Task") if t["Subject"] == "Payment Failed - Immediate Action Required")
    assert (failed["Status"], failed["Priority"], failed["OwnerId"]) == ("Not Started", "High",
                                                                         org.user_id("Ava Owner"))
    assert failed["ActivityDate"] > time.strftime("%Y-%m-%d", time.gmtime(sc.start))


@pytest.mark.parametrize("coalesce", [True, False])
def test_one_create_per_missing_key_and_none_for_a_key_that_exists(coalesce):
    """The resolver, without I/O: a key found by the lookup gives no write at all; two intents with one
    missing key in a batch give one create (later values win), even with coalescing off; the key travels in
    the create's body."""
    from stripe_sf_sync.config import FieldNames
    from stripe_sf_sync.pipeline.materialize import Materializer, WriteSettings
    from stripe_sf_sync.records import AccountRow, Lookups
    from stripe_sf_sync.rules import AccountRef, TaskIntent

    ref = AccountRef("cus_1", None)
    row = AccountRow("001Hs00000CmAbcIAF", "Acme", "005Hs00000AbCdEIAV", None, "active", "cus_1")
    lookups = Lookups(accounts_by_id={row.id: row}, accounts_by_customer={"cus_1": row},
                      task_keys={"evt_old:payment-failed"})

    def task(event_id: str, subject: str, key_base: str | None = None) -> TaskIntent:
        return TaskIntent(event_id, "payment-failed", ref, "owner", subject, "d", "High", "Not Started",
                          "2031-01-02", key_base=key_base)

    mat = Materializer(lookups, WriteSettings(FieldNames(), None, task_keyed=True, coalesce=coalesce))
    assert mat.add_event("evt_old", [task("evt_old", "first")]) is None
    assert mat.add_event("evt_bf_a", [task("evt_bf_a", "a", key_base="evt_backfill_in_1")]) is None
    assert mat.add_event("evt_bf_b", [task("evt_bf_b", "b", key_base="evt_backfill_in_1")]) is None
    [op] = mat.result()
    assert (op.kind, op.sobject, op.ext_field) == ("create", "Task", None)
    assert op.fields["Stripe_Event_ID__c"] == "evt_backfill_in_1:payment-failed" and op.fields["Subject"] == "b"
    assert op.events == ["evt_bf_a", "evt_bf_b"]
    # Keyed by what it is about (an invoice and its attempt): a Task made before under its event's key is found
    # by that key; two Event objects of one fact (different ids) make one Task.
    about = {"about": "in_1#attempt-1"}
    mat = Materializer(lookups, WriteSettings(FieldNames(), None, task_keyed=True, coalesce=coalesce))
    assert mat.add_event("evt_old", [dataclasses.replace(task("evt_old", "first"), **about)]) is None
    assert mat.result() == []  # found under its earlier key: no write
    mat = Materializer(lookups, WriteSettings(FieldNames(), None, task_keyed=True, coalesce=coalesce))
    assert mat.add_event("evt_dup1", [dataclasses.replace(task("evt_dup1", "one"), **about)]) is None
    assert mat.add_event("evt_dup2", [dataclasses.replace(task("evt_dup2", "two"), **about)]) is None
    [op] = mat.result()
    assert op.fields["Stripe_Event_ID__c"] == "in_1#attempt-1" and op.events == ["evt_dup1", "evt_dup2"]


def test_the_task_lookup_rides_in_the_batch_composite_call(config, env, org, sc, sf_sb):
    """Looking the Task keys up adds no API call: it travels with the batch's other lookups."""
    start = len(sf_sb.requests_log)
    summary = run(config, env, since=since(sc))
    # As test_sync_e2e.test_batched_writes_cost_few_calls: 1 describe + 2 lookup Composites + 5 writes.
    assert summary.salesforce_calls == 8
    assert len(org.queried_keys["Task.Stripe_Event_ID__c"]) == 6  # a new state: no earlier version made a Task
    assert not [p for m, p in sf_sb.requests_log[start:] if m == "GET" and "/query" in p]


def test_an_archived_task_is_found_through_query_all_and_never_created_again(config, env, org, sc, sf_sb):
    """Salesforce archives a Task closed with a due date over a year ago: `query` stops returning it, `queryAll`
    does (api-facts §12). The key lookup goes through queryAll in the same Composite call, so replaying the
    same events (here: a lost state file) finds every such Task and creates none."""
    run(config, env, since=since(sc))
    rep = org.user_id("Ben Owner")
    for t in org.records("Task"):  # done long ago: archived
        org.update("Task", t["Id"], {"Status": "Completed", "ActivityDate": "2023-01-02"}, as_user=rep)
    before = tasks_by_id(org)
    (config.parent / "stripe-sf-state.sqlite").unlink()
    start = len(sf_sb.requests_log)

    again = run(config, env, since=since(sc))

    assert again.dead_lettered == 1  # Hooli's, as on the first run
    assert tasks_by_id(org) == before  # not one Task created again, none rewritten
    assert not [p for m, p in sf_sb.requests_log[start:] if m == "GET" and "/query" in p]  # inside Composite calls
    assert_one_task_per_key(org)


def test_the_stand_in_archives_old_closed_tasks(org):
    acct = org.insert("Account", {"Name": "Archive"})
    old = org.insert("Task", {"Subject": "old", "WhatId": acct, "Status": "Completed", "ActivityDate": "2020-05-01"})
    org.insert("Task", {"Subject": "open", "WhatId": acct, "Status": "Not Started", "ActivityDate": "2020-05-01"})
    soql = "SELECT Id, Subject, IsArchived FROM Task WHERE Subject IN ('old', 'open')"
    live = org.run_query(soql, version="62.0")["records"]
    every = org.run_query(soql, version="62.0", include_deleted=True)["records"]
    assert [r["Subject"] for r in live] == ["open"]
    assert {r["Subject"]: r["IsArchived"] for r in every} == {"old": True, "open": False} and old
