"""What the stand-ins learned for `stripe-sf link` (issue 25): Account websites and merges in Salesforce;
customer updates, restricted keys and deleted customers in Stripe."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import stripe
from simple_salesforce import Salesforce

from stripe_sf_sandbox import scenario
from stripe_sf_sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox


@pytest.fixture
def org() -> SalesforceOrg:
    return scenario.awkward_org()


@pytest.fixture
def sf(org: SalesforceOrg) -> Iterator[Salesforce]:
    with SalesforceSandbox(org) as sb:
        yield Salesforce(instance_url=sb.instance_url, session_id=org.new_access_token(), session=sb.session(),
                         version="62.0")


def test_a_merge_deletes_the_loser_names_the_survivor_and_moves_the_children(org: SalesforceOrg,
                                                                             sf: Salesforce) -> None:
    survivor = org.insert("Account", {"Name": "Acme", "Website": "https://acme.example"})
    loser = org.insert("Account", {"Name": "ACME Inc", "Stripe_Customer_ID__c": "cus_1"})
    contact = org.insert("Contact", {"LastName": "Coyote", "Email": "wile@acme.example", "AccountId": loser})
    assert org.merge("Account", survivor, [loser]) == [contact]
    assert org.get("Account", loser) is None and org.get("Contact", contact)["AccountId"] == survivor
    assert sf.query("SELECT Id FROM Account WHERE IsDeleted = true")["totalSize"] == 0
    merged = sf.query_all("SELECT Id, MasterRecordId, Stripe_Customer_ID__c FROM Account WHERE IsDeleted = true "
                          "AND MasterRecordId != null", include_deleted=True)["records"]
    assert [(r["Id"], r["MasterRecordId"], r["Stripe_Customer_ID__c"]) for r in merged] == [(loser, survivor,
                                                                                              "cus_1")]
    with pytest.raises(ValueError, match="ENTITY_IS_DELETED"):
        org.merge("Account", survivor, [loser])
    others = [org.insert("Account", {"Name": f"A{i}"}) for i in range(3)]
    with pytest.raises(ValueError, match="two or three"):
        org.merge("Account", survivor, others)


def test_contacts_and_websites_are_queryable_as_salesforce_compares_them(org: SalesforceOrg, sf: Salesforce) -> None:
    acme = org.insert("Account", {"Name": "Acme", "Website": "https://www.acme.example/about"})
    org.insert("Contact", {"LastName": "Coyote", "Email": "Wile@Acme.example", "AccountId": acme})
    rows = sf.query("SELECT Id, Account.Website FROM Contact WHERE Email IN ('wile@acme.example', 'x@y.example')")
    assert [r["Account"]["Website"] for r in rows["records"]] == ["https://www.acme.example/about"]
    rows = sf.query("SELECT Id FROM Account WHERE Website LIKE '%acme.example%' OR Website LIKE '%globex%'")
    assert [r["Id"] for r in rows["records"]] == [acme]


@pytest.fixture
def stripe_sb() -> Iterator[StripeSandbox]:
    with StripeSandbox() as sb:
        yield sb


def test_a_customer_update_merges_metadata_and_an_empty_value_deletes_a_key(stripe_sb: StripeSandbox) -> None:
    customer = StripeFactory(stripe_sb).customer("Acme", "a@acme.example", metadata={"a": "1", "b": "2"})
    client = stripe_sb.client()
    updated = client.v1.customers.update(customer["id"], {"metadata": {"a": "", "c": "3"}})
    assert updated.to_dict()["metadata"] == {"b": "2", "c": "3"}
    event = stripe_sb.events[-1]
    assert event["type"] == "customer.updated"
    assert event["data"]["previous_attributes"] == {"metadata": {"a": "1", "c": None}}
    assert event["data"]["object"]["metadata"] == {"b": "2", "c": "3"}
    assert client.v1.customers.update(customer["id"], {"metadata": ""}).to_dict()["metadata"] == {}
    with pytest.raises(stripe.InvalidRequestError, match="does not implement the update parameter `phone`"):
        client.v1.customers.update(customer["id"], {"phone": "+1"})


def test_a_restricted_key_is_refused_what_its_permissions_do_not_allow(stripe_sb: StripeSandbox) -> None:
    customer = StripeFactory(stripe_sb).customer("Acme", "a@acme.example")

    def client(key: str) -> stripe.StripeClient:
        return stripe.StripeClient(key, base_addresses={"api": stripe_sb.base_url}, max_network_retries=0)

    reader = client(stripe_sb.restricted_key(customer="read"))
    assert reader.v1.customers.retrieve(customer["id"]).email == "a@acme.example"
    with pytest.raises(stripe.PermissionError, match="'rak_customer_write' permission") as refused:
        reader.v1.customers.update(customer["id"], {"metadata": {"k": "v"}})
    assert refused.value.http_status == 403 and refused.value.error.type == "invalid_request_error"
    with pytest.raises(stripe.PermissionError, match="'rak_event_read' permission"):
        reader.v1.events.list()
    writer = client(stripe_sb.restricted_key(customer="write"))
    assert writer.v1.customers.update(customer["id"], {"metadata": {"k": "v"}}).metadata["k"] == "v"


def test_a_deleted_customer_is_a_stub_unlisted_and_not_updatable(stripe_sb: StripeSandbox) -> None:
    factory = StripeFactory(stripe_sb)
    customer = factory.customer("Acme", "a@acme.example")
    event = factory.customer_deleted(customer, at=customer["created"] + 1)
    assert event["type"] == "customer.deleted" and event["data"]["object"]["id"] == customer["id"]
    client = stripe_sb.client()
    assert client.v1.customers.retrieve(customer["id"]).to_dict() == {"id": customer["id"], "object": "customer",
                                                                      "deleted": True}
    assert [c.id for c in client.v1.customers.list().auto_paging_iter()] == []
    with pytest.raises(stripe.InvalidRequestError, match="No such customer"):
        client.v1.customers.update(customer["id"], {"metadata": {"k": "v"}})


def test_a_duplicate_rule_refuses_a_create_and_names_the_records_it_matched(org: SalesforceOrg,
                                                                              sf: Salesforce) -> None:
    """Duplicate Management (Object Reference: DuplicateError, DuplicateResult, MatchResult, MatchRecord)."""
    from simple_salesforce.exceptions import SalesforceMalformedRequest

    from stripe_sf_sandbox.duplicates import DuplicateRule

    acme = org.insert("Account", {"Name": "Acme"})
    org.insert("Account", {"Name": "ACME "})  # seeded as an admin's import: rules are not applied
    org.duplicate_rules.append(DuplicateRule("Account", ("Name",)))
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.Account.create({"Name": "acme"})
    [error] = refused.value.content
    assert error["errorCode"] == "DUPLICATES_DETECTED" and error["message"] == "Use one of these records?"
    result = error["duplicateResult"]
    assert (result["allowSave"], result["duplicateRule"]) == (False, "Standard_Account_Duplicate_Rule")
    [match] = result["matchResults"]
    assert match["size"] == 2 and match["matchRecords"][0]["record"]["Id"] == acme
    rows = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": [
        {"attributes": {"type": "Account"}, "Name": "Acme"}, {"attributes": {"type": "Account"}, "Name": "Globex"}]})
    assert rows[0]["success"] is False and rows[0]["errors"][0]["statusCode"] == "DUPLICATES_DETECTED"
    assert rows[0]["errors"][0]["duplicateResult"]["matchResults"][0]["matchRecords"][0]["record"]["Id"] == acme
    assert rows[1]["success"] is True
