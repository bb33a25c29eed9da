"""`stripe-sf setup`'s plan and packages: pure, from describe-shaped fixtures."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

import pytest

from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.model import SUBSCRIPTION_STATUSES
from stripe_sf_sync.salesforce.org import field_needs
from stripe_sf_sync.setup.package import metadata_files, metadata_zip, sfdx_files, write_sfdx
from stripe_sf_sync.setup.plan import (
    OBJECT_GRANTS,
    PERMISSION_SET,
    ExistingPermissionSet,
    FieldDefinition,
    field_spec,
    make_plan,
    needed_grants,
    unique_candidates,
)

NS = "{http://soap.sforce.com/2006/04/metadata}"
NAMES = FieldNames(account_csm="CSM__c")
NEEDS = field_needs(NAMES)
DESCRIBE_TYPES = {"Text": "string", "Currency": "currency", "Picklist": "picklist", "Lookup": "reference"}


def described(spec: FieldDefinition, **overrides: Any) -> dict[str, Any]:
    """The describe entry of a field defined as `spec`."""
    f = {"name": spec.name, "label": spec.label, "type": DESCRIBE_TYPES[spec.type], "length": spec.length or 0,
         "externalId": spec.external_id, "unique": spec.unique, "caseSensitive": False,
         "picklistValues": [{"value": v, "active": True} for v in spec.values],
         "restrictedPicklist": spec.restricted, "referenceTo": [spec.reference_to] if spec.reference_to else [],
         "createable": True, "updateable": True, "nillable": True}
    f.update(overrides)
    return f


def org_with(**overrides: dict[str, Any] | None) -> dict[str, dict[str, dict[str, Any]]]:
    """A describe of an org set up as stripe-sf wants it; `overrides` by "Object.Field" (None: the field is
    missing)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for need in NEEDS:
        change = overrides.get(need.subject.replace(".", "__"), {})
        if change is not None:
            out.setdefault(need.sobject, {})[need.name.lower()] = described(field_spec(need), **change)
    return out


def full_set() -> ExistingPermissionSet:
    return ExistingPermissionSet(True, "Stripe SF Sync", needed_grants(NEEDS), {g.sobject: g for g in OBJECT_GRANTS})


def parse(data: bytes) -> ET.Element:
    return ET.fromstring(data)  # noqa: S314 - the tool's own output


def test_an_empty_org_gets_every_field_and_the_permission_set() -> None:
    plan = make_plan(NEEDS, {}, ExistingPermissionSet())
    created = {s.subject: s for s in plan.fields}
    assert set(created) == {n.subject for n in NEEDS}
    assert [c.kind for c in plan.changes].count("create_field") == len(NEEDS)
    key = created["Opportunity.Stripe_Subscription_ID__c"]
    assert (key.type, key.length, key.external_id, key.unique) == ("Text", 255, True, True)
    task_key = created["Task.Stripe_Event_ID__c"]
    assert (task_key.external_id, task_key.unique) == (True, False)  # Unique on an Activity field is not confirmed
    mrr = created["Opportunity.MRR__c"]
    assert (mrr.type, mrr.precision, mrr.scale) == ("Currency", 18, 2)
    status = created["Account.Subscription_Status__c"]
    assert status.type == "Picklist" and status.restricted and set(status.values) == SUBSCRIPTION_STATUSES
    assert created["Account.CSM__c"].reference_to == "User"
    assert plan.permission_set is not None and plan.changes[-1].kind == "permission_set"
    grants = {name: (read, edit) for name, read, edit in plan.permission_set.fields}
    assert grants["Account.CSM__c"] == (True, False)  # read only: stripe-sf never writes the CSM
    assert grants["Opportunity.MRR__c"] == (True, True)
    assert not plan.refusals and plan.deploys


def test_an_org_set_up_has_nothing_to_do() -> None:
    plan = make_plan(NEEDS, org_with(), full_set())
    assert plan.nothing_to_do and not plan.deploys


def test_every_configured_field_can_be_created() -> None:
    names = FieldNames(account_csm="CSM__c", opportunity_refunded="Refunded__c", account_mrr="Customer_MRR__c")
    specs = {field_spec(n).subject: field_spec(n) for n in field_needs(names)}
    assert specs["Opportunity.Refunded__c"].type == specs["Account.Customer_MRR__c"].type == "Currency"


def test_a_type_that_differs_is_refused_and_left_alone() -> None:
    plan = make_plan(NEEDS, org_with(Opportunity__MRR__c={"type": "string", "length": 20}), full_set())
    assert [r.subject for r in plan.refusals] == ["Opportunity.MRR__c"]
    assert "is a string field" in plan.refusals[0].problem and "never changes a field's type" in plan.refusals[0].fix
    assert not plan.fields and not plan.changes


def test_a_lookup_to_another_object_is_refused() -> None:
    plan = make_plan(NEEDS, org_with(Account__CSM__c={"referenceTo": ["Contact"]}), full_set())
    assert [r.subject for r in plan.refusals] == ["Account.CSM__c"]


def test_unique_is_added_when_no_value_repeats() -> None:
    org = org_with(Account__Stripe_Customer_ID__c={"unique": False, "externalId": False, "label": "Stripe Cust",
                                                   "inlineHelpText": "Set by billing", "nillable": False})
    [need] = unique_candidates(NEEDS, org)
    assert need.subject == "Account.Stripe_Customer_ID__c"
    plan = make_plan(NEEDS, org, full_set(), duplicates={need.subject: []})
    [spec] = plan.fields
    assert (spec.unique, spec.external_id, spec.label, spec.length) == (True, True, "Stripe Cust", 255)
    assert (spec.help_text, spec.required) == ("Set by billing", True)  # a deploy replaces the definition: kept
    account = parse(metadata_files(plan, "62.0")["objects/Account.object"])
    assert account.findtext(f"{NS}fields/{NS}inlineHelpText") == "Set by billing"
    assert account.findtext(f"{NS}fields/{NS}required") == "true"
    assert plan.changes[0].description == ("Account.Stripe_Customer_ID__c: mark it External ID; mark it Unique")


def test_unique_is_refused_while_duplicates_exist_and_they_are_named() -> None:
    org = org_with(Account__Stripe_Customer_ID__c={"unique": False})
    plan = make_plan(NEEDS, org, full_set(), duplicates={"Account.Stripe_Customer_ID__c": [("cus_a", 3), ("cus_b", 2)]})
    [refusal] = plan.refusals
    assert "2 values are held by several records: 'cus_a' (3 records), 'cus_b' (2 records)" in refusal.problem
    assert not plan.fields


def test_a_restricted_picklist_is_extended_and_keeps_its_values() -> None:
    values = [{"value": v, "active": True} for v in ("legacy", "active", "canceled")]
    plan = make_plan(NEEDS, org_with(Account__Subscription_Status__c={"picklistValues": values}), full_set())
    [spec] = plan.fields
    assert spec.values[:3] == ("legacy", "active", "canceled")
    assert set(spec.values) == SUBSCRIPTION_STATUSES | {"legacy"}
    assert spec.restricted and "add the picklist values trialing, past_due" in plan.changes[0].description


def test_an_unrestricted_picklist_is_refused() -> None:
    org = org_with(Account__Subscription_Status__c={"restrictedPicklist": False,
                                                    "picklistValues": [{"value": "active", "active": True}]})
    plan = make_plan(NEEDS, org, full_set())
    assert [r.subject for r in plan.refusals] == ["Account.Subscription_Status__c"]
    assert "not restricted" in plan.refusals[0].problem and not plan.fields


def test_text_is_widened_never_narrowed() -> None:
    status_text = {"type": "string", "length": 20, "picklistValues": [], "restrictedPicklist": False}
    plan = make_plan(NEEDS, org_with(Account__Subscription_Status__c=status_text,
                                     Opportunity__Stripe_Customer_ID__c={"length": 1000}), full_set())
    [spec] = plan.fields
    assert (spec.subject, spec.type, spec.length) == ("Account.Subscription_Status__c", "Text", 40)


def test_the_permission_set_is_extended_never_narrowed() -> None:
    grants = dict(needed_grants(NEEDS))
    grants["Opportunity.MRR__c"] = (True, False)  # read only: must become editable
    grants["Account.Other__c"] = (True, True)  # granted by someone else: kept
    objects = {g.sobject: g for g in OBJECT_GRANTS if g.sobject != "Contact"}
    plan = make_plan(NEEDS, org_with(), ExistingPermissionSet(True, "Ours", grants, objects))
    ps = plan.permission_set
    assert ps is not None and ps.label == "Ours"
    fields = {name: (read, edit) for name, read, edit in ps.fields}
    assert fields["Opportunity.MRR__c"] == (True, True) and fields["Account.Other__c"] == (True, True)
    assert {g.sobject for g in ps.objects} == {"Opportunity", "Account", "Task", "Contact"}
    assert "extend the permission set Stripe_SF_Sync: access to 1 field, and access to Contact" in (
        plan.changes[0].description)


def test_the_zip_holds_package_xml_the_objects_and_the_permission_set() -> None:
    plan = make_plan(NEEDS, {}, ExistingPermissionSet())
    files = metadata_files(plan, "62.0")
    assert set(files) == {"package.xml", "objects/Opportunity.object", "objects/Account.object",
                          "objects/Activity.object", f"permissionsets/{PERMISSION_SET}.permissionset"}
    package = parse(files["package.xml"])
    members = {t.findtext(NS + "name"): [m.text for m in t.findall(NS + "members")]
               for t in package.findall(NS + "types")}
    assert "Activity.Stripe_Event_ID__c" in members["CustomField"] and members["PermissionSet"] == [PERMISSION_SET]
    assert package.findtext(NS + "version") == "62.0"
    account = parse(files["objects/Account.object"])
    status = next(f for f in account.findall(NS + "fields") if f.findtext(NS + "fullName") == "Subscription_Status__c")
    assert status.findtext(f"{NS}valueSet/{NS}restricted") == "true"
    assert [v.findtext(NS + "fullName") for v in status.iter(NS + "value")][:2] == ["active", "trialing"]
    ps = parse(files[f"permissionsets/{PERMISSION_SET}.permissionset"])
    assert "Activity.Stripe_Event_ID__c" in [f.findtext(NS + "field") for f in ps.findall(NS + "fieldPermissions")]
    with zipfile.ZipFile(io.BytesIO(metadata_zip(plan, "62.0"))) as zf:
        assert sorted(zf.namelist()) == sorted(files)
    assert metadata_zip(plan, "62.0") == metadata_zip(plan, "62.0")  # the same plan, the same bytes


def test_the_sfdx_project_holds_the_same_components(tmp_path: Path) -> None:
    plan = make_plan(NEEDS, {}, ExistingPermissionSet())
    written = write_sfdx(plan, tmp_path, "62.0")
    rel = {p.relative_to(tmp_path).as_posix() for p in written}
    base = "force-app/main/default"
    assert {"sfdx-project.json", f"{base}/objects/Opportunity/fields/Stripe_Subscription_ID__c.field-meta.xml",
            f"{base}/objects/Activity/fields/Stripe_Event_ID__c.field-meta.xml",
            f"{base}/permissionsets/{PERMISSION_SET}.permissionset-meta.xml"} <= rel
    assert len(rel) == len(NEEDS) + 2
    project = json.loads((tmp_path / "sfdx-project.json").read_text())
    assert project["packageDirectories"] == [{"path": "force-app", "default": True}]
    assert project["sourceApiVersion"] == "62.0"
    field_file = tmp_path / base / "objects/Opportunity/fields/Stripe_Subscription_ID__c.field-meta.xml"
    field = parse(field_file.read_bytes())
    assert field.tag == NS + "CustomField"
    assert {c.tag.removeprefix(NS): c.text for c in field} == {
        "fullName": "Stripe_Subscription_ID__c", "caseSensitive": "false", "externalId": "true",
        "label": "Stripe Subscription ID", "length": "255", "required": "false", "type": "Text", "unique": "true"}
    # The same definitions as the zip's, and the same permission set file.
    zipped = metadata_files(plan, "62.0")
    assert sfdx_files(plan, "62.0")[f"{base}/permissionsets/{PERMISSION_SET}.permissionset-meta.xml"] == zipped[
        f"permissionsets/{PERMISSION_SET}.permissionset"]


@pytest.mark.parametrize("kind", ["Formula(Text)", "Number(18, 0)"])
def test_an_unknown_kind_is_a_clear_error(kind: str) -> None:
    need = NEEDS[0].__class__("Opportunity", "X__c", kind, frozenset({"string"}))
    with pytest.raises(ValueError, match="cannot create a field of kind"):
        field_spec(need)


def test_a_field_the_permission_set_grants_but_describe_hides_is_not_created_again() -> None:
    plan = make_plan(NEEDS, org_with(Opportunity__MRR__c=None), full_set())
    assert plan.hidden == ("Opportunity.MRR__c",) and plan.nothing_to_do and not plan.deploys


def test_a_missing_standard_field_is_refused_not_created() -> None:
    plan = make_plan(field_needs(FieldNames(account_csm="CSM__c", mrr="MRR")), {}, ExistingPermissionSet())
    assert [r.subject for r in plan.refusals] == ["Opportunity.MRR"] and "end in __c" in plan.refusals[0].problem
    assert "Opportunity.MRR" not in {s.subject for s in plan.fields}
