"""Replay the recorded HTTP exchanges of both client layers (record mode `none`: no network)."""

from __future__ import annotations

import json
import re

import pytest

from stripe_sf_sync.config import FieldNames, salesforce_secrets
from stripe_sf_sync.records import SfOp
from stripe_sf_sync.rules import AccountRef, AccountStatusIntent
from stripe_sf_sync.salesforce.gateway import SalesforceGateway, connect
from stripe_sf_sync.salesforce.lookups import AccountCache, SoqlLookups, find
from stripe_sf_sync.stripe.source import StripeSource, build_client

from .cassette_tools import CASSETTES, recorder

# The cassettes never connect anywhere: these addresses only have to parse.
STRIPE_BASE = "http://127.0.0.1:9"
SF_URL = "https://127.0.0.1:9"


def meta(name):
    return json.loads((CASSETTES / f"{name}.json").read_text())


def test_stripe_source_replays_paging_and_hydration():
    m = meta("stripe_source")
    client, http = build_client("sk_test_replay", api_base=STRIPE_BASE, api_version="2026-10-28.endive", timeout=5)
    source = StripeSource(client, http, api_version="2026-10-28.endive")
    with recorder().use_cassette("stripe_source.yaml") as cass:
        assert [e["id"] for e in source.events_after(m["cursor"], page_limit=4)] == m["event_ids"]
        assert source.customer(m["customer"]) is not None  # kept slim: only metadata and name
        if m["failed_invoice"]:
            inv = source.failed_invoice(m["failed_invoice"])
            assert inv["id"] == m["failed_invoice"]
        if m["payment_intent"]:
            source.invoice_of_payment_intent(m["payment_intent"])
        assert cass.all_played


def test_salesforce_sink_replays_lookup_and_per_record_failures():
    m = meta("salesforce_sink")
    secrets = salesforce_secrets({"SF_INSTANCE_URL": SF_URL, "SF_ACCESS_TOKEN": "replay"})
    names = FieldNames()
    with recorder().use_cassette("salesforce_sink.yaml") as cass:
        gw = SalesforceGateway(connect(secrets, api_version="62.0"))
        assert any(f["name"] == names.task_event_id for f in gw.describe("Task")["fields"])
        intents = [AccountStatusIntent("evt_cassette", AccountRef(m["customer"], None), "sub_x", "active", None, False,
                                       "2026-11-20")]
        found = find(SoqlLookups(gw), names, intents, AccountCache(), task_keyed=False)
        acct = found.accounts_by_customer[m["customer"]]
        assert acct.id == m["account"]
        ops = [SfOp("update", "Account", acct.id, {names.subscription_status: m["status"]}),
               SfOp("update", "Account", acct.id[:15] + "ZZZ", {names.subscription_status: "active"}),
               SfOp("upsert", "Task", "evt_cassette:status", {"Subject": "Cassette", "WhatId": acct.id,
                                                             "Status": "Bogus"}, names.task_event_id)]
        got = [gw.write_chunk("update", "Account", None, ops[:2]),
               gw.write_chunk("upsert", "Task", names.task_event_id, ops[2:])]
        assert [[r.__dict__ for r in chunk] for chunk in got] == m["results"]
        assert cass.all_played
    assert gw.usage.used is not None  # Sforce-Limit-Info was read from the recorded responses


@pytest.mark.parametrize("name", ["stripe_source.yaml", "salesforce_sink.yaml"])
def test_cassettes_hold_no_secrets(name):
    text = (CASSETTES / name).read_text()
    assert not re.search(r"(?i)^\s*authorization:", text, re.M)
    assert not re.search(r"\b(?:sk|rk)_(?:test|live)_(?!REDACTED)[A-Za-z0-9]", text)
    assert "Bearer" not in text and "access_token" not in text.replace('access_token":"REDACTED', "")
