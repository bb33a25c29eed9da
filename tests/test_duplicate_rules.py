"""A create the org's duplicate rules refuse (DUPLICATES_DETECTED) comes back as a failed write naming the rule
and the records it matched, for the dead letter; it is never forced (issue 25)."""

from __future__ import annotations

from simple_salesforce import Salesforce

from stripe_sf_sandbox.duplicates import DuplicateRule
from stripe_sf_sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox
from stripe_sf_sync.records import SfOp
from stripe_sf_sync.salesforce.duplicates import candidates, duplicate_message
from stripe_sf_sync.salesforce.gateway import SalesforceGateway
from stripe_sf_sync.salesforce.writers import CollectionsWriter


def test_a_create_refused_by_a_duplicate_rule_names_the_candidates(sf_sb: SalesforceSandbox,
                                                                   org: SalesforceOrg) -> None:
    acme = org.insert("Account", {"Name": "Acme"})
    wile = org.insert("Contact", {"LastName": "Coyote", "Email": "wile@acme.example", "AccountId": acme})
    org.duplicate_rules.append(DuplicateRule("Contact", ("Email",)))
    sf = Salesforce(instance_url=sf_sb.instance_url, session_id=org.new_access_token(), session=sf_sb.session(),
                    version="62.0")
    gw = SalesforceGateway(sf, sleep=lambda s: None)
    [refused, created] = CollectionsWriter(gw, sleep=lambda s: None).write([
        SfOp("create", "Contact", "c1", {"LastName": "Coyote", "Email": "Wile@Acme.example", "AccountId": acme}),
        SfOp("create", "Contact", "c2", {"LastName": "Runner", "Email": "road@acme.example", "AccountId": acme})])
    assert not refused.success and refused.code == "DUPLICATES_DETECTED"
    assert refused.message == (f"Use one of these records? (duplicate rule Standard_Contact_Duplicate_Rule matched "
                               f"{wile}: link the customer to one of them with `stripe-sf link`, then "
                               "`stripe-sf dlq retry --all`)")
    assert created.success and len([c for c in org.records("Contact") if c["LastName"] == "Coyote"]) == 1


def test_an_error_without_a_duplicate_result_keeps_its_message() -> None:
    assert duplicate_message({"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "message": "no"}) == "no"
    assert candidates({"duplicateResult": {"matchResults": [{"matchRecords": [{"record": {"Id": "003A"}},
                                                                              {"record": {"Id": "003A"}}]}]}}) \
        == ["003A"]
