"""salesforce.mapping, pure: its validation at load (naming the key), path resolution, and who owns each field."""

from __future__ import annotations

import pytest

from stripe_sf_sync.config import load_yaml, parse_settings
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.fields import FieldNames
from stripe_sf_sync.mapping import (
    COMPUTED,
    FieldMapping,
    WriteContext,
    default_fields,
    from_problem,
    owned_fields,
    path_values,
    resolve_path,
)


def settings(mapping: str):
    return parse_settings(load_yaml("salesforce:\n  mapping:\n" + mapping))


def problems(mapping: str) -> str:
    with pytest.raises(ConfigError) as exc:
        settings(mapping)
    return str(exc.value)


def test_the_issues_example_loads():
    s = settings("""
    Opportunity:
      Type: {value: New Business, write: once}
      LeadSource: {value: Stripe, write: once}
      Billing_Email__c: {from: customer.email, write: if_empty}
      CloseDate: {write: once}
""")
    opp = s.salesforce.mapping.Opportunity
    assert opp["Type"].value == "New Business" and opp["Type"].write == "once"
    assert opp["Billing_Email__c"].from_ == "customer.email"
    assert s.salesforce.mapping.read_fields("Opportunity") == ("Billing_Email__c",)


@pytest.mark.parametrize(("mapping", "said"), [
    ("    Opportunity:\n      X__c: {from: amout}\n",
     "salesforce.mapping.Opportunity.X__c: Value error, unknown `from` 'amout'"),
    ("    Opportunity:\n      X__c: {from: nonsense.path}\n", "unknown `from` 'nonsense.path'"),
    ("    Opportunity:\n      X__c: {from: customer.phone}\n",
     "unknown `from` 'customer.phone': stripe-sf keeps a customer's customer, customer.name, customer.email and "
     "customer.metadata.<key>"),
    ("    Opportunity:\n      Type: {value: New Business, from: amount}\n",
     "salesforce.mapping.Opportunity.Type: Value error, give `from` or `value`, not both"),
    ("    Opportunity:\n      Type: {value: New Business, write: sometimes}\n",
     "salesforce.mapping.Opportunity.Type.write: Input should be 'always', 'once', 'if_empty' or 'never'"),
    ("    Opportunity:\n      Type: {value: A}\n      type: {value: B}\n", "Opportunity.type is listed twice"),
    ("    Opportunity:\n      Type: {write: once}\n",
     "salesforce.mapping.Opportunity.Type: stripe-sf does not write Type by default: give it `from` or `value`"),
    ("    Opportunity:\n      Stripe_Subscription_ID__c: {write: once}\n",
     "salesforce.mapping.Opportunity.Stripe_Subscription_ID__c: stripe-sf finds records by this field"),
    ("    Lead:\n      Company: {value: X}\n", "salesforce.mapping.Lead: unknown key"),
    ("    Opportunity:\n      Type: {value: X, owner: me}\n", "salesforce.mapping.Opportunity.Type.owner: unknown key"),
])
def test_a_bad_mapping_is_refused_at_load_naming_the_key(mapping, said):
    assert said in problems(mapping)


def test_a_field_listed_twice_in_yaml_is_refused_naming_it(tmp_path):
    from stripe_sf_sync.config import load_config

    path = tmp_path / "sync.yaml"
    path.write_text("salesforce:\n  mapping:\n    Opportunity:\n      Type: {value: A}\n      Type: {value: B}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert 'duplicate key "Type"' in str(exc.value)


@pytest.mark.parametrize("source", [*COMPUTED, "customer.email", "customer.name", "metadata.plan",
                                    "customer.metadata.segment", "items[0].price.nickname",
                                    "items[0].price.product.name", "description"])
def test_every_documented_from_is_accepted(source):
    assert from_problem(source) is None


OBJ = {"id": "sub_1", "metadata": {"plan": "gold"}, "customer": "cus_1",
       "items": {"object": "list", "data": [{"price": {"nickname": "Pro monthly", "product": "prod_1"}},
                                            {"price": {"nickname": "Seats", "product": {"id": "prod_2",
                                                                                         "name": "Seat"}}}]}}


@pytest.mark.parametrize(("path", "value"), [
    ("metadata.plan", "gold"), ("metadata.missing", None), ("items[0].price.nickname", "Pro monthly"),
    ("items[1].price.product.name", "Seat"), ("items[0].price.product", "prod_1"),
    ("items[1].price.product", "prod_2"), ("items[5].price.nickname", None), ("id", "sub_1"),
    ("metadata", None),
])
def test_paths_resolve_into_the_stripe_object(path, value):
    assert resolve_path(OBJ, path) == value


def test_customer_paths_come_from_hydration_or_an_expanded_customer():
    got = path_values(frozenset({"customer.name", "customer.metadata.segment", "customer.email"}), OBJ,
                      customer_name="Acme", customer_metadata={"segment": "smb"})
    assert got == {"customer.name": "Acme", "customer.metadata.segment": "smb", "customer.email": None}
    expanded = {**OBJ, "customer": {"id": "cus_1", "email": "billing@acme.example"}}
    assert path_values(frozenset({"customer.email"}), expanded, customer_name=None,
                       customer_metadata=None) == {"customer.email": "billing@acme.example"}
    # An event's customer email, as hydration filled it in from state: "" (it has none) leaves the field alone.
    for email, value in (("ap@acme.example", "ap@acme.example"), ("", None), (None, None)):
        assert path_values(frozenset({"customer.email"}), OBJ, customer_name=None, customer_metadata=None,
                           customer_email=email) == {"customer.email": value}


def test_a_path_through_an_items_product_reads_the_product_hydration_expanded():
    products = {"prod_1": {"id": "prod_1", "name": "Pro", "metadata": {"tier": "gold"}}}
    paths = frozenset({"items[0].price.product.name", "items[0].price.product.metadata.tier",
                       "items[0].price.product"})
    assert path_values(paths, OBJ, customer_name=None, customer_metadata=None, products=products) == {
        "items[0].price.product.name": "Pro", "items[0].price.product.metadata.tier": "gold",
        "items[0].price.product": "prod_1"}
    mapping = FieldMapping.model_validate({"Opportunity": {
        "Plan__c": {"from": "items[0].price.product.name"}, "Seat__c": {"from": "items[2].price.product.name"},
        "Id__c": {"from": "items[1].price.product"}, "Email__c": {"from": "customer.email"}}})
    assert mapping.product_items() == frozenset({0, 2}) and mapping.reads_customer_email()
    assert not FieldMapping().reads_customer_email() and FieldMapping().product_items() == frozenset()


COMPUTED_OPP = {"Name": "Acme - Subscription sub_1", "StageName": "Closed Won", "CloseDate": "2026-12-01",
                "Amount": 99, "MRR__c": 99, "AccountId": "001x"}


def owned(mapping: FieldMapping, ctx: WriteContext, sources=None):
    return owned_fields("Opportunity", COMPUTED_OPP, mapping, ctx, sources=sources or {"amount": 99})


def test_default_ownership_keeps_a_reps_name_and_close_date_after_the_win():
    none = FieldMapping()
    created, _ = owned(none, WriteContext(True))
    assert created == COMPUTED_OPP
    won, _ = owned(none, WriteContext(False, winning=True))
    assert won == COMPUTED_OPP
    later, why = owned(none, WriteContext(False))
    assert later == {"Amount": 99, "MRR__c": 99}
    assert why["CloseDate"] == "left alone: once, written when created or won"
    assert why["MRR__c"] == "written: always (Stripe owns it)"


def test_each_write_mode():
    mapping = FieldMapping.model_validate({"Opportunity": {
        "Type": {"value": "New Business", "write": "once"},
        "Billing_Email__c": {"from": "customer.email", "write": "if_empty"},
        "Plan__c": {"from": "metadata.plan"},
        "Amount_Copy__c": {"from": "amount", "write": "always"},
        "CloseDate": {"write": "never"},
        "Amount": {"write": "if_empty"},
    }})
    sources = {"customer.email": "b@acme.example", "metadata.plan": None, "amount": 99}
    created, _ = owned(mapping, WriteContext(True), sources)
    assert created["Type"] == "New Business" and created["Billing_Email__c"] == "b@acme.example"
    assert "CloseDate" not in created and "Plan__c" not in created  # never; a path with no value is left alone
    assert created["Amount_Copy__c"] == 99
    empty = WriteContext(False, current={"Billing_Email__c": None, "Amount": 10})
    update, why = owned(mapping, empty, sources)
    assert update == {"Billing_Email__c": "b@acme.example", "MRR__c": 99, "Amount_Copy__c": 99}
    assert why["Amount"] == "left alone: if_empty, Salesforce's field holds a value"
    assert why["Type"] == "left alone: once, written when created or won"
    assert why["CloseDate"] == "left alone: write: never"
    held = WriteContext(False, current={"Billing_Email__c": "rep@acme.example", "Amount": None})
    update, _ = owned(mapping, held, sources)
    assert "Billing_Email__c" not in update and update["Amount"] == 99


def test_a_forced_stage_is_written_unless_never():
    update, _ = owned(FieldMapping(), WriteContext(False, forced=frozenset({"StageName"})))
    assert update["StageName"] == "Closed Won"
    never = FieldMapping.model_validate({"Opportunity": {"StageName": {"write": "never"}}})
    update, _ = owned(never, WriteContext(False, forced=frozenset({"StageName"})))
    assert "StageName" not in update


def test_an_accounts_once_is_written_while_empty():
    mapping = FieldMapping.model_validate({"Account": {"Customer_Since__c": {"from": "close_date",
                                                                             "write": "once"}}})
    assert mapping.read_fields("Account") == ("Customer_Since__c",)
    fields, _ = owned_fields("Account", {"Subscription_Status__c": "active"}, mapping,
                             WriteContext(False, current={"Customer_Since__c": None}),
                             sources={"close_date": "2026-01-01"})
    assert fields == {"Subscription_Status__c": "active", "Customer_Since__c": "2026-01-01"}
    fields, _ = owned_fields("Account", {"Subscription_Status__c": "active"}, mapping,
                             WriteContext(False, current={"Customer_Since__c": "2025-05-05"}),
                             sources={"close_date": "2026-01-01"})
    assert fields == {"Subscription_Status__c": "active"}


def test_the_default_mapping_names_every_field_stripe_sf_writes():
    names = FieldNames(opportunity_refunded="Refunded__c", account_mrr="Account_MRR__c")
    assert set(default_fields("Opportunity", names)) >= {"Name", "StageName", "CloseDate", "Amount", "MRR__c",
                                                         "ARR__c", "Refunded__c", "CurrencyIsoCode"}
    assert set(default_fields("Account", names)) == {"Subscription_Status__c", "Stripe_Customer_ID__c",
                                                     "Account_MRR__c"}


def test_if_empty_fields_are_read_as_columns_of_the_lookups_a_batch_already_makes():
    from stripe_sf_sync.records import FieldReads, LookupRequest
    from stripe_sf_sync.salesforce.lookups import lookup_statements, lookups_of

    request = LookupRequest(customer_ids=frozenset({"cus_1"}), subscription_ids=frozenset({"sub_1"}))
    plain = lookup_statements(request, FieldNames())
    reads = FieldReads(opportunity=("LeadSource",), account=("Description",))
    mapped = lookup_statements(LookupRequest(customer_ids=frozenset({"cus_1"}), subscription_ids=frozenset({"sub_1"}),
                                             reads=reads), FieldNames())
    assert len(mapped) == len(plain)  # no more statements, so no more calls
    assert "Description" in mapped[0][1] and "LeadSource" in mapped[1][1]
    found = lookups_of([("account", [{"Id": "001000000000001AAA", "Name": "Acme", "description": "ours",
                                      "Stripe_Customer_ID__c": "cus_1"}]),
                        ("opportunity", [{"Id": "006000000000001AAA", "Stripe_Subscription_ID__c": "sub_1"}])],
                       FieldNames(), reads)
    assert found.accounts_by_customer["cus_1"].values == {"Description": "ours"}
    assert found.opps_by_subscription["sub_1"].values == {"LeadSource": None}  # read, and empty
