"""`stripe-sf link` against the two stand-ins: proposals from Contacts, websites and names in the org; the
reviewed file applied in batches; the Stripe metadata; the dead letters that were waiting."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import stripe
from simple_salesforce import Salesforce

from stripe_sf_sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync.link import run_link, run_link_apply
from stripe_sf_sync.link.csvfile import LinkFileError, parse_links
from stripe_sf_sync.link.read import client_pages
from stripe_sf_sync.salesforce.gateway import SalesforceGateway
from stripe_sf_sync.salesforce.writers import CollectionsWriter
from stripe_sf_sync.state.records import Outcome
from stripe_sf_sync.state.store import StateStore

from .conftest import since

FIELD = "Stripe_Customer_ID__c"


def gateway(sf_sb: SalesforceSandbox, org: SalesforceOrg) -> SalesforceGateway:
    sf = Salesforce(instance_url=sf_sb.instance_url, session_id=org.new_access_token(), session=sf_sb.session(),
                    version="62.0")
    return SalesforceGateway(sf, sleep=lambda s: None)


def propose(stripe_sb: StripeSandbox, gw: SalesforceGateway, **kw: Any) -> tuple[Any, str]:
    out = io.StringIO()
    result = run_link(customer_pages=client_pages(stripe_sb.client()), gw=gw, customer_field=FIELD, out=out,
                      csv_path="links.csv", **kw)
    return result, out.getvalue()


def rows(text: str) -> dict[str, dict[str, str]]:
    return {r["customer_id"]: r for r in csv.DictReader(io.StringIO(text))}


@pytest.fixture
def factory(stripe_sb: StripeSandbox) -> StripeFactory:
    return StripeFactory(stripe_sb)


def test_it_proposes_exactly_the_unambiguous_matches(stripe_sb: StripeSandbox, sf_sb: SalesforceSandbox,
                                                     org: SalesforceOrg, factory: StripeFactory) -> None:
    acme = org.insert("Account", {"Name": "Acme Rockets"})
    org.insert("Contact", {"LastName": "Coyote", "Email": "Wile@Acme-Rockets.example", "AccountId": acme})
    globex = org.insert("Account", {"Name": "Globex", "Website": "https://www.globex.example/"})
    initech = org.insert("Account", {"Name": "Initech"})
    org.insert("Account", {"Name": "Hooli"})
    org.insert("Account", {"Name": "HOOLI"})
    org.insert("Account", {"Name": "Gmail lovers", "Website": "gmail.com"})
    linked = org.insert("Account", {"Name": "Linked Ltd", FIELD: "cus_placeholder"})
    c_acme = factory.customer("W. Coyote", "wile@acme-rockets.example")
    c_globex = factory.customer("Hank Scorpio", "hank@globex.example")
    c_initech = factory.customer("Initech", "bill@initech-mail.example")
    c_hooli = factory.customer("Hooli", None)  # type: ignore[arg-type]
    c_gmail = factory.customer("Someone", "someone@gmail.com")
    factory.customer("Already", "a@x.example", metadata={"salesforce_account_id": initech})
    org.update("Account", linked, {FIELD: (c_linked := factory.customer("Linked", "l@linked.example"))["id"]})
    gone = factory.customer("Gone", "gone@acme-rockets.example")
    factory.customer_deleted(gone, at=gone["created"] + 10)

    result, text = propose(stripe_sb, gateway(sf_sb, org))
    got = rows(text)
    assert {cid: (r["account_id"], r["evidence"], r["confidence"]) for cid, r in got.items()} == {
        c_acme["id"]: (acme, "contact_email", "high"),
        c_globex["id"]: (globex, "website_domain", "medium"),
        c_initech["id"]: (initech, "account_name", "low"),
        c_hooli["id"]: ("", "account_name", ""),
        c_gmail["id"]: ("", "", ""),
    }
    assert got[c_hooli["id"]]["note"].startswith("ambiguous: 2 Accounts")
    assert c_linked["id"] not in got and gone["id"] not in got
    assert result.as_dict() | {"salesforce_calls": 0, "stripe_calls": 0} == {
        "customers": 7, "linked_in_metadata": 1, "linked_in_salesforce": 1, "unlinked": 5, "no_email_or_name": 0,
        "matched": 3,
        "ambiguous": 1, "taken": 0, "none": 1, "csv": "links.csv", "salesforce_calls": 0,
        "stripe_calls": 0}
    assert all(len(line) <= 80 for line in result.lines())
    assert "`stripe-sf link --apply links.csv`" in " ".join(result.lines())


def test_reads_are_batched_for_hundreds_of_customers(stripe_sb: StripeSandbox, sf_sb: SalesforceSandbox,
                                                     org: SalesforceOrg, factory: StripeFactory) -> None:
    for i in range(450):
        account = org.insert("Account", {"Name": f"Company {i}", "Website": f"company{i}.example"})
        if i % 2:
            org.insert("Contact", {"LastName": f"P{i}", "Email": f"p{i}@mail{i}.example", "AccountId": account})
        factory.customer(f"Person {i}", f"p{i}@mail{i}.example" if i % 2 else f"boss@company{i}.example")
    gw = gateway(sf_sb, org)
    result, _ = propose(stripe_sb, gw)
    assert result.outcomes["matched"] == 450
    # 450 customers, one batch, statements of 200 values or 6,000 characters, five to a Composite call: first
    # 3 linked-check + 3 Contact statements (2 calls); then, for the 225 no Contact names, 14 website (12
    # spellings a domain) + 2 name statements (4 calls). Never one a customer. Plus 5 Stripe pages of 100.
    assert result.salesforce_calls == 6
    assert sum(1 for method, path, _ in stripe_sb.requests_log if path == "/v1/customers") == 5
    assert result.read.stripe_pages == 5


def apply(tmp_path: Path, text: str, sf_sb: SalesforceSandbox, org: SalesforceOrg, **kw: Any) -> Any:
    path = tmp_path / "links.csv"
    path.write_text(text)
    gw = gateway(sf_sb, org)
    return run_link_apply(path, gw=gw, writer=CollectionsWriter(gw, sleep=lambda s: None), customer_field=FIELD,
                          **kw)


def test_apply_writes_the_links_in_batches(tmp_path: Path, stripe_sb: StripeSandbox, sf_sb: SalesforceSandbox,
                                           org: SalesforceOrg) -> None:
    accounts = [org.insert("Account", {"Name": f"Company {i}"}) for i in range(450)]
    text = "customer_id,account_id\n" + "".join(f"cus_{i:05d},{a}\n" for i, a in enumerate(accounts))
    result = apply(tmp_path, text, sf_sb, org)
    assert result.ok and len(result.outcome.linked) == 450
    assert [org.get("Account", a)[FIELD] for a in accounts[:2]] == ["cus_00000", "cus_00001"]
    writes = [p for m, p in sf_sb.requests_log if m == "PATCH" and p.endswith("/composite/sobjects")]
    assert len(writes) == 3  # 200 + 200 + 50
    assert result.salesforce_calls <= 6  # + the checks: 3 + 3 + 3 statements, five to a Composite call
    again = apply(tmp_path, text, sf_sb, org)
    assert (len(again.outcome.linked), len(again.outcome.already)) == (0, 450)


def test_apply_refuses_and_names_an_account_linked_to_another_customer(
        tmp_path: Path, sf_sb: SalesforceSandbox, org: SalesforceOrg) -> None:
    taken = org.insert("Account", {"Name": "Taken Inc", FIELD: "cus_owner"})
    free = org.insert("Account", {"Name": "Free Inc"})
    other = org.insert("Account", {"Name": "Other Inc", FIELD: "cus_b"})
    survivor = org.insert("Account", {"Name": "Survivor"})
    loser = org.insert("Account", {"Name": "Loser"})
    org.merge("Account", survivor, [loser])
    text = f"customer_id,account_id\ncus_a,{taken}\ncus_b,{free}\ncus_c,{loser}\n"
    result = apply(tmp_path, text, sf_sb, org)
    assert [(r.line, r.reason) for r in result.outcome.refused] == [
        (2, f"Account {taken} (Taken Inc) is already linked to cus_owner"),
        (3, f"cus_b is already linked to Account {other}"),
        (4, f"Account {loser} was merged into {survivor}: put that Id in the file"),
    ]
    assert not result.ok and org.get("Account", free)[FIELD] is None
    assert all(len(line) <= 80 for line in result.lines())


def test_a_malformed_file_is_refused_before_any_call(tmp_path: Path, sf_sb: SalesforceSandbox,
                                                     org: SalesforceOrg) -> None:
    before = len(sf_sb.requests_log)
    with pytest.raises(LinkFileError, match="line 2: customer_id 'x'"):
        apply(tmp_path, "customer_id,account_id\nx,001000000000001\n", sf_sb, org)
    assert len(sf_sb.requests_log) == before


def test_to_stripe_writes_the_account_into_the_customer_metadata(
        tmp_path: Path, stripe_sb: StripeSandbox, sf_sb: SalesforceSandbox, org: SalesforceOrg,
        factory: StripeFactory) -> None:
    account = org.insert("Account", {"Name": "Acme"})
    customer = factory.customer("Acme", "a@acme.example", metadata={"plan_owner": "ops"})
    result = apply(tmp_path, f"customer_id,account_id\n{customer['id']},{account}\n", sf_sb, org,
                   stripe_client=stripe_sb.client())
    assert result.ok and result.outcome.stripe_written == 1
    assert stripe_sb.get(customer["id"])["metadata"] == {"plan_owner": "ops", "salesforce_account_id": account}
    updated = [e for e in stripe_sb.events if e["type"] == "customer.updated"]
    assert updated[-1]["data"]["previous_attributes"] == {"metadata": {"salesforce_account_id": None}}


def test_a_restricted_key_without_customer_write_is_refused_and_says_which_permission(
        tmp_path: Path, stripe_sb: StripeSandbox, sf_sb: SalesforceSandbox, org: SalesforceOrg,
        factory: StripeFactory) -> None:
    account = org.insert("Account", {"Name": "Acme"})
    customer = factory.customer("Acme", "a@acme.example")
    key = stripe_sb.restricted_key(customer="read", event="read")
    client = stripe.StripeClient(key, base_addresses={"api": stripe_sb.base_url}, max_network_retries=0)
    with pytest.raises(stripe.PermissionError) as refused:
        client.v1.customers.update(customer["id"], {"metadata": {"k": "v"}})
    assert refused.value.http_status == 403
    assert "Having the 'rak_customer_write' permission would allow this request" in str(refused.value)
    result = apply(tmp_path, f"customer_id,account_id\n{customer['id']},{account}\n", sf_sb, org,
                   stripe_client=client)
    assert len(result.outcome.linked) == 1 and not result.ok
    assert "rak_customer_write" in (result.outcome.stripe_stopped or "")
    assert "salesforce_account_id" not in stripe_sb.get(customer["id"])["metadata"]


def test_a_deleted_customer_is_reported_not_written(tmp_path: Path, stripe_sb: StripeSandbox,
                                                    sf_sb: SalesforceSandbox, org: SalesforceOrg,
                                                    factory: StripeFactory) -> None:
    account = org.insert("Account", {"Name": "Acme"})
    customer = factory.customer("Acme", "a@acme.example")
    event = factory.customer_deleted(customer, at=customer["created"] + 5)
    assert event["type"] == "customer.deleted" and event["data"]["object"]["email"] == "a@acme.example"
    assert stripe_sb.client().v1.customers.retrieve(customer["id"]).to_dict() == {
        "id": customer["id"], "object": "customer", "deleted": True}
    result = apply(tmp_path, f"customer_id,account_id\n{customer['id']},{account}\n", sf_sb, org,
                   stripe_client=stripe_sb.client())
    [refusal] = result.outcome.stripe_refused
    assert f"No such customer: '{customer['id']}'" in refusal.reason and refusal.line == 2
    assert result.outcome.stripe_stopped is None


def _letter(event_id: str, obj: dict[str, Any], code: str = "NO_ACCOUNT") -> Outcome:
    payload = json.dumps({"id": event_id, "type": "invoice.paid", "data": {"object": obj}})
    return Outcome(event_id, "invoice.paid", 100, "dead_letter", reason="No Salesforce Account", code=code,
                   payload=payload)


def test_apply_counts_the_dead_letters_waiting_and_gives_the_command(tmp_path: Path, sf_sb: SalesforceSandbox,
                                                                      org: SalesforceOrg) -> None:
    account = org.insert("Account", {"Name": "Acme"})
    state = StateStore.open(tmp_path / "state.db")
    state.commit_batch([_letter("evt_1", {"object": "invoice", "customer": "cus_a"}),
                        _letter("evt_2", {"object": "customer", "id": "cus_a"}),
                        _letter("evt_3", {"object": "invoice", "customer": {"id": "cus_a"}}),
                        _letter("evt_4", {"object": "invoice", "customer": "cus_z"}),
                        _letter("evt_5", {"object": "invoice", "customer": "cus_a"}, code="INVALID_FIELD")],
                       cursor=None, versions={}, run_id=None)
    result = apply(tmp_path, f"customer_id,account_id\ncus_a,{account}\n", sf_sb, org, state=state)
    assert result.outcome.waiting_letters == 3 and result.retry_command == "stripe-sf dlq retry --all"
    assert "3 dead letters waited for these Accounts: run `stripe-sf dlq retry --all`." in result.lines()
    assert result.as_dict()["dead_letters_waiting"] == 3
    state.close()


def test_the_file_proposed_is_the_file_applied(tmp_path: Path, stripe_sb: StripeSandbox, sf_sb: SalesforceSandbox,
                                               org: SalesforceOrg, factory: StripeFactory) -> None:
    acme = org.insert("Account", {"Name": "Acme"})
    org.insert("Contact", {"LastName": "X", "Email": "x@acme.example", "AccountId": acme})
    customer = factory.customer("X", "X@acme.example")
    _, text = propose(stripe_sb, gateway(sf_sb, org))
    assert [(link.customer_id, link.account_id) for link in parse_links(io.StringIO(text))] == [
        (customer["id"], acme)]
    assert apply(tmp_path, text, sf_sb, org).ok and org.get("Account", acme)[FIELD] == customer["id"]
    result, _ = propose(stripe_sb, gateway(sf_sb, org))
    assert result.read.linked_in_salesforce == 1 and result.read.unlinked == 0


def test_unlinked_customers_are_linked_and_their_dead_letters_then_apply(
        tmp_path: Path, config: Path, env: Any, org: SalesforceOrg, sc: Any, stripe_sb: StripeSandbox,
        sf_sb: SalesforceSandbox) -> None:
    """The issue's "done when": sync dead-letters an unlinked customer's events; `link` proposes exactly the
    unambiguous match, `--apply` links it and counts the waiting letter, and `dlq retry --all` applies it."""
    from stripe_sf_sync import service

    first = service.run_sync(config, env, since=since(sc), dry_run=False, max_events=None)
    assert first.dead_lettered == 1
    hooli = org.insert("Account", {"Name": "Hooli XYZ", "OwnerId": org.user_id("Ava Owner")})
    org.insert("Contact", {"LastName": "Belson", "Email": "Billing@Hooli.example", "AccountId": hooli})
    result, text = propose(stripe_sb, gateway(sf_sb, org))
    assert result.outcomes == {"matched": 1}
    assert result.read.linked_in_salesforce + result.read.linked_in_metadata == len(sc.customers) - 1
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as state:
        applied = apply(tmp_path, text, sf_sb, org, state=state)
    assert applied.ok and applied.outcome.waiting_letters == 1
    retried = service.run_dlq_retry(config, env, event_ids=[], retry_all=True)
    assert (retried.applied, retried.dead_lettered) == (1, 0)
    assert [o["AccountId"] for o in org.records("Opportunity") if o["Stripe_Subscription_ID__c"]
            == sc.subscriptions["hooli"]] == [hooli]


def test_the_cli_reads_customers_through_the_paced_stripe_source(stripe_sb: StripeSandbox, sf_sb: SalesforceSandbox,
                                                                 org: SalesforceOrg, factory: StripeFactory) -> None:
    from stripe_sf_sync.stripe.source import StripeSource, build_client

    acme = org.insert("Account", {"Name": "Acme"})
    for i in range(150):
        factory.customer(f"Nobody {i}", f"n{i}@nowhere{i}.example")
    customer = factory.customer("Acme", "a@acme.example")
    client, http = build_client(stripe_sb.api_key, api_base=stripe_sb.base_url, api_version="2026-10-28.endive",
                                timeout=30)
    source = StripeSource(client, http, api_version="2026-10-28.endive")
    result = run_link(customer_pages=source.customer_pages(created={"lte": int(customer["created"]) + 1}),
                      gw=gateway(sf_sb, org), customer_field=FIELD, batch_size=100)
    assert (result.read.customers, result.outcomes["matched"], result.read.stripe_pages) == (151, 1, 2)
    assert source.calls == 2 and org.get("Account", acme)[FIELD] is None  # proposing writes nothing


def test_stripe_writes_are_paced_and_a_429_is_tried_again(tmp_path: Path, stripe_sb: StripeSandbox,
                                                          sf_sb: SalesforceSandbox, org: SalesforceOrg,
                                                          factory: StripeFactory) -> None:
    from stripe_sf_sync.link.apply import write_stripe
    from stripe_sf_sync.link.csvfile import Link
    from stripe_sf_sync.link.run import ApplyOutcome

    class Pace:
        def __init__(self) -> None:
            self.waits = self.throttles = self.successes = 0

        def wait(self) -> None:
            self.waits += 1

        def throttled(self, reason: str = "rate") -> None:
            self.throttles += 1

        def succeeded(self) -> None:
            self.successes += 1

    account = org.insert("Account", {"Name": "Acme"})
    customer = factory.customer("Acme", "a@acme.example")
    stripe_sb.faults.fail_matching("POST", r"^/v1/customers/", 429, {"error": {"type": "invalid_request_error",
                                                                               "message": "Too many requests"}},
                                   times=2, headers={"Stripe-Rate-Limited-Reason": "endpoint-rate"})
    pace, outcome, slept = Pace(), ApplyOutcome(), []
    client = stripe.StripeClient(stripe_sb.api_key, base_addresses={"api": stripe_sb.base_url},
                                 max_network_retries=0)
    write_stripe([Link(customer["id"], account, 2)], client, outcome, pace=pace, sleep=slept.append)
    assert (outcome.stripe_written, pace.waits, pace.throttles, pace.successes) == (1, 3, 2, 1)
    assert slept == [1.0, 2.0] and stripe_sb.get(customer["id"])["metadata"]["salesforce_account_id"] == account
