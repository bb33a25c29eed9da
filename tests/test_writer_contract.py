"""Contract tests of the batch step's Salesforce ports (pipeline/ports.py), run against each implementation.

RecordWriter: the real writers (sObject Collections and Bulk API 2.0, each made on first use, against the
Salesforce stand-in) and the dry run's PlanRecorder answer one result per op, in the ops' order, and report a
refused op in its own result, never by raising. RecordLookup: the real lookups (SalesforceRecords) find what
the intents name, keep the run's Accounts, and know the org's facts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from simple_salesforce import Salesforce

from stripe_sf_sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox
from stripe_sf_sync.config import FieldNames, load_config
from stripe_sf_sync.pipeline.ports import RecordLookup, RecordWriter
from stripe_sf_sync.records import OrgFacts, SfOp, WriteResult
from stripe_sf_sync.rules import AccountRef, AccountStatusIntent, OpportunityIntent, TaskIntent
from stripe_sf_sync.salesforce.gateway import SalesforceAccess, SalesforceGateway
from stripe_sf_sync.salesforce.lookups import SalesforceRecords
from stripe_sf_sync.salesforce.org import OrgCheck
from stripe_sf_sync.salesforce.recorder import PlanRecorder
from stripe_sf_sync.salesforce.writers import bulk_writer, collections_writer

NAMES = FieldNames()
STATUS = NAMES.subscription_status


def access_to(sf_sb: SalesforceSandbox, org: SalesforceOrg) -> SalesforceAccess:
    """The run's lazy access to the stand-in, as the service builds it (no backoff waits, no bulk polling)."""
    def gateway() -> SalesforceGateway:
        sf = Salesforce(instance_url=sf_sb.instance_url, session_id=org.new_access_token(),
                        session=sf_sb.session(), version="62.0")
        return SalesforceGateway(sf, sleep=lambda s: None, bulk_poll_seconds=0)
    return SalesforceAccess(gateway)


# --- RecordWriter -------------------------------------------------------------------------------------------

WRITERS: dict[str, Callable[[SalesforceAccess], RecordWriter]] = {
    "collections": lambda access: collections_writer(access, workers=2, sleep=lambda s: None),
    "bulk": lambda access: bulk_writer(access, sleep=lambda s: None),
    "dry run": lambda access: PlanRecorder(),
}


@pytest.fixture(params=list(WRITERS))
def writer(request: pytest.FixtureRequest, sf_sb: SalesforceSandbox, org: SalesforceOrg) -> tuple[RecordWriter,
                                                                                                     SalesforceAccess]:
    access = access_to(sf_sb, org)
    return WRITERS[request.param](access), access


@pytest.fixture
def seeded(org: SalesforceOrg) -> dict[str, str]:
    """Two Accounts and an Opportunity tracked by its subscription."""
    ids = {label: org.insert("Account", {"Name": f"Contract {label}", NAMES.customer_id: f"cus_contract{label}",
                                         STATUS: "trialing"}) for label in ("A", "B")}
    ids["opp"] = org.insert("Opportunity", {"Name": "Contract A - Pro", "AccountId": ids["A"],
                                            "StageName": "Prospecting", "CloseDate": "2026-12-31",
                                            NAMES.subscription_id: "sub_contractA",
                                            "RecordTypeId": org.record_type_id("New_Business")})
    return ids


def interleaved(ids: dict[str, str]) -> list[SfOp]:
    """Ops of three kinds and sObjects, interleaved: a writer groups them, its results must not be."""
    return [
        SfOp("update", "Account", ids["A"], {STATUS: "active"}, events=["evt_1"]),
        SfOp("upsert", "Opportunity", "sub_contractA", {"StageName": "Closed Won"}, NAMES.subscription_id,
             events=["evt_2"]),
        SfOp("create", "Task", "evt_3:payment_failed", {"Subject": "Payment failed", "WhatId": ids["B"],
                                                         "Status": "Not Started", "Priority": "High",
                                                         NAMES.task_event_id: "evt_3:payment_failed"},
             events=["evt_3"]),
        SfOp("update", "Account", ids["B"], {STATUS: "past_due"}, events=["evt_4"]),
    ]


def test_no_ops_give_no_results_and_no_connection(writer):
    port, access = writer
    assert port.write([]) == []
    assert access.connected is None  # a run that writes nothing never connects


def test_one_result_per_op_in_the_ops_order(writer, org, seeded):
    port, _ = writer
    ops = interleaved(seeded)
    before = {obj: org.records(obj) for obj in ("Account", "Opportunity", "Task")}
    results = port.write(ops)
    assert len(results) == len(ops) and all(isinstance(r, WriteResult) and r.success for r in results)
    if port.sends:
        assert org.get("Account", seeded["A"])[STATUS] == "active"
        assert org.get("Account", seeded["B"])[STATUS] == "past_due"
        assert org.get("Opportunity", seeded["opp"])["StageName"] == "Closed Won"
        assert [t["Subject"] for t in org.records("Task") if t.get(NAMES.task_event_id) == "evt_3:payment_failed"] \
            == ["Payment failed"]
    else:  # the dry run records the plan, in the ops' order, and changes nothing
        assert isinstance(port, PlanRecorder)
        assert [(p["action"], p["sobject"], p["key"], p["events"]) for p in port.planned] == [
            (op.kind, op.sobject, op.key, op.events) for op in ops]
        assert {obj: org.records(obj) for obj in before} == before


def test_a_refused_op_is_reported_in_its_own_result(writer, org, seeded):
    """A record Salesforce refuses fails alone, with its code; the others are written. The dry run sends
    nothing, so nothing refuses: its plan goes on as if every write had been sent."""
    port, _ = writer
    missing = seeded["A"][:-6] + "ZZZZZZ"  # a well-formed Account Id that no record has
    ops = [SfOp("update", "Account", seeded["A"], {STATUS: "active"}),
           SfOp("update", "Account", missing, {STATUS: "active"}),
           SfOp("update", "Account", seeded["B"], {STATUS: "canceled"})]
    results = port.write(ops)
    assert len(results) == len(ops)
    if port.sends:
        assert [r.success for r in results] == [True, False, True]
        assert results[1].code and results[1].code != "UNKNOWN"
        assert org.get("Account", seeded["B"])[STATUS] == "canceled"
    else:
        assert all(r.success for r in results)


def test_sends_says_whether_writes_reach_salesforce(writer):
    port, _ = writer
    assert port.sends is (not isinstance(port, PlanRecorder))


# --- RecordLookup -------------------------------------------------------------------------------------------

class Meta:
    """The state's key-value store, in memory (where the org check keeps its facts for a day)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get_meta(self, key: str) -> str | None:
        return self.values.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self.values[key] = value


def records(config: Path, sf_sb: SalesforceSandbox, org: SalesforceOrg, meta: Any) -> tuple[RecordLookup,
                                                                                            SalesforceAccess]:
    access = access_to(sf_sb, org)
    return SalesforceRecords(access, OrgCheck(load_config(config), meta, lambda: 1_800_000_000.0)), access


def intents(ids: dict[str, str]) -> list[Any]:
    by_customer = AccountRef("cus_contractA", None)
    return [
        AccountStatusIntent("evt_1", by_customer, "sub_contractA", "active", "trialing", False, "2026-01-05"),
        OpportunityIntent("evt_2", "subscription", "sub_contractA", None, False, by_customer, {"StageName": "Won"},
                          "Contract A - Pro", may_create=True),
        TaskIntent("evt_3", "payment_failed", AccountRef(None, ids["B"]), "owner", "Payment failed", "", "High",
                   "Open", "2026-01-05"),
    ]


def test_find_reads_every_record_the_intents_name(config, sf_sb, org, seeded):
    port, access = records(config, sf_sb, org, Meta())
    assert access.connected is None  # nothing read yet: a quiet run never connects
    found = port.find(NAMES, intents(seeded), task_keyed=True)
    assert found.accounts_by_customer["cus_contractA"].id == seeded["A"]
    assert found.accounts_by_customer["cus_contractA"].status == "trialing"
    assert found.accounts_by_id[seeded["B"]].name == "Contract B"
    assert found.opps_by_subscription["sub_contractA"].id == seeded["opp"]
    assert found.task_keys == set()  # no Task of these events yet


def test_find_keeps_the_run_s_accounts_and_what_was_written_to_them(config, sf_sb, org, seeded):
    port, _ = records(config, sf_sb, org, Meta())
    port.find(NAMES, intents(seeded), task_keyed=False)
    org.update("Account", seeded["A"], {STATUS: "canceled"})  # by hand, during the run
    again = port.find(NAMES, intents(seeded), task_keyed=False)
    assert again.accounts_by_customer["cus_contractA"].status == "trialing"  # the run's copy: not read again
    port.wrote_account(seeded["A"], {STATUS: "active"}, NAMES)
    after = port.find(NAMES, intents(seeded), task_keyed=False)
    assert after.accounts_by_customer["cus_contractA"].status == "active"


def test_org_facts_are_described_once_then_kept_for_the_day(config, sf_sb, org):
    meta = Meta()
    port, _ = records(config, sf_sb, org, meta)
    assert port.described is False
    facts = port.org_facts()
    assert isinstance(facts, OrgFacts) and facts.task_keyed is True
    assert facts.currencies is not None and "USD" in facts.currencies  # the awkward org has several currencies
    assert port.described is True and port.org_facts() is facts
    later, _ = records(config, sf_sb, org, meta)  # the next run of the day
    assert later.org_facts() == facts and later.described is False
