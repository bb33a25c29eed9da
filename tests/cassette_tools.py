"""Recording and replaying the two HTTP edges with vcrpy, secrets scrubbed.

Record (against the sandbox stand-ins, the default, or a real test-mode account and sandbox org):

    .venv/bin/python -m tests.cassette_tools            # sandbox
    .venv/bin/python -m tests.cassette_tools --live     # STRIPE_API_KEY (sk_test_…) + SF_* of a sandbox org

Replayed with record mode `none` by tests/test_cassettes.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import vcr

CASSETTES = Path(__file__).resolve().parents[1] / "cassettes"
SCRUB_HEADERS = ["authorization", "cookie", "set-cookie", "x-sfdc-session", "stripe-account"]
_SECRET_BODY = re.compile(
    r'("?(?:access_token|refresh_token|client_secret|password|id_token|signature)"?\s*[:=]\s*"?)[^"&,\s}]+')
_KEYS = re.compile(r"\b(?:sk|rk|pk)_(?:test|live)_[A-Za-z0-9_]+")


def scrub_text(text: str) -> str:
    """Blank tokens, passwords and Stripe keys in a body."""
    return _KEYS.sub("sk_test_REDACTED", _SECRET_BODY.sub(r"\1REDACTED", text))


def _scrub_request(request: Any) -> Any:
    for h in list(request.headers):
        if h.lower() in SCRUB_HEADERS:
            del request.headers[h]
    if request.body:
        body = request.body.decode() if isinstance(request.body, bytes) else request.body
        request.body = scrub_text(body).encode()
    return request


def _scrub_response(response: dict[str, Any]) -> dict[str, Any]:
    headers = response.get("headers", {})
    for h in list(headers):
        if h.lower() in SCRUB_HEADERS:
            del headers[h]
    body = response.get("body", {}).get("string")
    if isinstance(body, bytes):
        response["body"]["string"] = scrub_text(body.decode("utf-8", "replace")).encode()
    return response


def recorder(record_mode: str = "none") -> vcr.VCR:
    """A VCR that matches on method, path and query (the host differs between recording and replay)."""
    return vcr.VCR(cassette_library_dir=str(CASSETTES), record_mode=record_mode,
                   match_on=["method", "path", "query"], filter_headers=SCRUB_HEADERS,
                   before_record_request=_scrub_request, before_record_response=_scrub_response,
                   decode_compressed_response=True)


def record(stripe_key: str, stripe_base: str | None, sf_secrets: Any, sf_session: Any, *, cursor: str,
           customer: str, failed_invoice: str | None, payment_intent: str | None, against: str) -> None:
    """Record the Stripe edge (events paging and hydration) and the Salesforce edge (describe, lookup,
    collections writes with per-record failures). Writes touch only one Account's status and a Task
    whose Status is invalid, so nothing is created."""
    from stripe_sf_sync.config import FieldNames
    from stripe_sf_sync.records import SfOp
    from stripe_sf_sync.rules import AccountRef, AccountStatusIntent
    from stripe_sf_sync.salesforce.gateway import SalesforceGateway, connect
    from stripe_sf_sync.salesforce.lookups import AccountCache, SoqlLookups, find
    from stripe_sf_sync.stripe.source import StripeSource, build_client

    v = recorder("all")
    client, http = build_client(stripe_key, api_base=stripe_base, api_version="2026-10-28.endive", timeout=30)
    source = StripeSource(client, http, api_version="2026-10-28.endive")
    with v.use_cassette("stripe_source.yaml"):
        ids = [e["id"] for e in source.events_after(cursor, page_limit=4)]
        source.customer(customer)
        if failed_invoice:
            source.failed_invoice(failed_invoice)
        if payment_intent:
            source.invoice_of_payment_intent(payment_intent)
    meta = {"recorded_against": against, "cursor": cursor, "event_ids": ids, "customer": customer,
            "failed_invoice": failed_invoice, "payment_intent": payment_intent}
    (CASSETTES / "stripe_source.json").write_text(json.dumps(meta, indent=2) + "\n")

    names = FieldNames()
    with v.use_cassette("salesforce_sink.yaml"):
        gw = SalesforceGateway(connect(sf_secrets, api_version="62.0", session=sf_session))
        gw.describe("Task")
        intents = [AccountStatusIntent("evt_cassette", AccountRef(customer, None), "sub_x", "active", None, False,
                                       "2026-11-20")]
        found = find(SoqlLookups(gw), names, intents, AccountCache(), task_keyed=False)
        acct = found.accounts_by_customer[customer]
        ops = [SfOp("update", "Account", acct.id, {names.subscription_status: acct.status or "active"}),
               SfOp("update", "Account", acct.id[:15] + "ZZZ", {names.subscription_status: "active"}),
               SfOp("upsert", "Task", "evt_cassette:status", {"Subject": "Cassette", "WhatId": acct.id,
                                                             "Status": "Bogus"}, names.task_event_id)]
        results = [gw.write_chunk("update", "Account", None, ops[:2]),
                   gw.write_chunk("upsert", "Task", names.task_event_id, ops[2:])]
    meta = {"recorded_against": against, "customer": customer, "account": acct.id,
            "status": acct.status or "active", "results": [[r.__dict__ for r in chunk] for chunk in results]}
    (CASSETTES / "salesforce_sink.json").write_text(json.dumps(meta, indent=2) + "\n")


def record_sandbox() -> None:
    """Record against the sandbox stand-ins, loaded with the demo scenario."""
    from stripe_sf_sandbox import scenario
    from stripe_sf_sandbox.salesforce_server import SalesforceSandbox
    from stripe_sf_sandbox.stripe_server import StripeSandbox
    from stripe_sf_sync.config import salesforce_secrets

    with StripeSandbox() as stripe_sb, SalesforceSandbox(scenario.awkward_org()) as sf_sb:
        sc = scenario.load(stripe_sb, sf_sb.org, now=int(time.time()))
        failed = next(e for e in stripe_sb.events if e["type"] == "invoice.payment_failed")
        paid = next(e for e in stripe_sb.events if e["type"] == "payment_intent.succeeded")
        secrets = salesforce_secrets({"SF_INSTANCE_URL": sf_sb.instance_url, "SF_ACCESS_TOKEN": sf_sb.access_token})
        record(stripe_sb.api_key, stripe_sb.base_url, secrets, sf_sb.session(), cursor=sc.events[0],
               customer=sc.customers["acme"], failed_invoice=failed["data"]["object"]["id"],
               payment_intent=paid["data"]["object"]["id"],
               against="the stripe_sf_sandbox stand-ins (stripe_server, salesforce_server)")


def record_live() -> None:
    """Record against the Stripe test-mode account and Salesforce sandbox org of the environment.

    Needs STRIPE_SF_CUSTOMER: a test-mode customer whose id is in an Account's Stripe_Customer_ID__c.
    """
    import requests
    import stripe

    from stripe_sf_sync.config import salesforce_secrets, stripe_secrets

    keys = stripe_secrets()
    if not keys.api_key.startswith(("sk_test_", "rk_test_")):
        raise SystemExit("--live records only against a test-mode key (sk_test_… or rk_test_…).")
    customer = os.environ.get("STRIPE_SF_CUSTOMER", "")
    if not customer.startswith("cus_"):
        raise SystemExit("Set STRIPE_SF_CUSTOMER to a test-mode customer linked to a sandbox-org Account.")
    client = stripe.StripeClient(keys.api_key, stripe_version="2026-10-28.endive")
    recent = client.v1.events.list({"limit": 10}).data
    if not recent:
        raise SystemExit("The test-mode account has no events in the last 30 days.")
    failed = next((e.data.object.id for e in recent if e.type == "invoice.payment_failed"), None)
    paid = next((e.data.object.id for e in recent if e.type == "payment_intent.succeeded"), None)
    record(keys.api_key, keys.api_base, salesforce_secrets(), requests.Session(), cursor=recent[-1].id,
           customer=customer, failed_invoice=failed, payment_intent=paid,
           against="a Stripe test-mode account and a Salesforce sandbox org")


def main() -> None:
    """Entry point: record the cassettes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--live", action="store_true",
                        help="record against the test-mode account and sandbox org of the environment")
    args = parser.parse_args()
    if args.live:
        record_live()
    else:
        record_sandbox()
    print(f"recorded into {CASSETTES}")


if __name__ == "__main__":
    main()
