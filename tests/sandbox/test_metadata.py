"""The stand-in's Metadata API: deploys over REST, permission sets and field-level security."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest

from stripe_sf_sandbox.salesforce_server import FieldDef, SalesforceOrg, SalesforceSandbox

API = "62.0"
MD = '<?xml version="1.0" encoding="UTF-8"?>\n'
XMLNS = 'xmlns="http://soap.sforce.com/2006/04/metadata"'


def package(fields: dict[str, str], permission_sets: dict[str, str] | None = None) -> bytes:
    """A zip: `fields` is "Object.Field__c" -> its <fields> body; `permission_sets` name -> the set's body."""
    permission_sets = permission_sets or {}
    types = ""
    if fields:
        types += "<types>" + "".join(f"<members>{m}</members>" for m in fields) + "<name>CustomField</name></types>"
    if permission_sets:
        types += ("<types>" + "".join(f"<members>{m}</members>" for m in permission_sets)
                  + "<name>PermissionSet</name></types>")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("package.xml", f"{MD}<Package {XMLNS}>{types}<version>{API}</version></Package>")
        by_object: dict[str, str] = {}
        for member, body in fields.items():
            obj, _, name = member.partition(".")
            by_object[obj] = by_object.get(obj, "") + f"<fields><fullName>{name}</fullName>{body}</fields>"
        for obj, body in by_object.items():
            zf.writestr(f"objects/{obj}.object", f"{MD}<CustomObject {XMLNS}>{body}</CustomObject>")
        for name, body in permission_sets.items():
            zf.writestr(f"permissionsets/{name}.permissionset", f"{MD}<PermissionSet {XMLNS}>{body}</PermissionSet>")
    return buf.getvalue()


TEXT_KEY = "<label>Key</label><type>Text</type><length>255</length><externalId>true</externalId><unique>true</unique>"
GRANT = ("<label>Grant</label><fieldPermissions><field>Account.Key__c</field><readable>true</readable>"
         "<editable>true</editable></fieldPermissions>")


@pytest.fixture
def sb() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox(SalesforceOrg(stripe_sf_fields=False)) as sandbox:
        yield sandbox
        assert sandbox.unexpected_errors == []


def deploy(sb: SalesforceSandbox, zipped: bytes, **options: Any) -> dict[str, Any]:
    session = sb.session()
    url = f"{sb.instance_url}/services/data/v{API}/metadata/deployRequest"
    headers = {"Authorization": f"Bearer {sb.access_token}"}
    files = {"json": (None, json.dumps({"deployOptions": options}), "application/json"),
             "file": ("deploy.zip", zipped, "application/zip")}
    started = session.post(url, files=files, headers=headers, timeout=10)
    assert started.status_code == 201, started.text
    assert started.json()["deployResult"]["status"] == "Pending"
    got = session.get(f"{url}/{started.json()['id']}?includeDetails=true", headers=headers, timeout=10)
    assert got.status_code == 200
    return dict(got.json()["deployResult"])


def client(sb: SalesforceSandbox) -> Salesforce:
    return Salesforce(instance_url=sb.instance_url, session_id=sb.access_token, session=sb.session(), version=API)


def test_an_empty_org_lacks_stripe_sf_fields(sb: SalesforceSandbox) -> None:
    names = {f["name"] for f in client(sb).Account.describe()["fields"]}
    assert "Stripe_Customer_ID__c" not in names and "Name" in names


def test_a_deployed_field_stays_hidden_until_a_permission_set_is_assigned(sb: SalesforceSandbox) -> None:
    result = deploy(sb, package({"Account.Key__c": TEXT_KEY}, {"Grant": GRANT}))
    assert result["status"] == "Succeeded" and result["numberComponentsDeployed"] == 2
    assert {c["fullName"] for c in result["details"]["componentSuccesses"]} == {"package.xml", "Account.Key__c",
                                                                                 "Grant"}
    sf = client(sb)
    assert "Key__c" not in {f["name"] for f in sf.Account.describe()["fields"]}
    with pytest.raises(SalesforceMalformedRequest, match="No such column"):
        sf.query("SELECT Key__c FROM Account")
    with pytest.raises(SalesforceMalformedRequest, match="INVALID_FIELD"):
        sf.Account.create({"Name": "A", "Key__c": "k"})
    ps = sf.query("SELECT Id FROM PermissionSet WHERE Name = 'Grant'")["records"][0]["Id"]
    sf.PermissionSetAssignment.create({"AssigneeId": sb.org.integration_user_id, "PermissionSetId": ps})
    with pytest.raises(SalesforceMalformedRequest, match="Duplicate PermissionSetAssignment"):
        sf.PermissionSetAssignment.create({"AssigneeId": sb.org.integration_user_id, "PermissionSetId": ps})
    field = next(f for f in sf.Account.describe()["fields"] if f["name"] == "Key__c")
    assert field["externalId"] and field["unique"] and field["updateable"]
    sf.Account.create({"Name": "A", "Key__c": "k", "OwnerId": sb.org.integration_user_id})
    perms = sf.query("SELECT Field, PermissionsEdit FROM FieldPermissions WHERE Parent.Name = 'Grant'")["records"]
    assert [(p["Field"], p["PermissionsEdit"]) for p in perms] == [("Account.Key__c", True)]


def test_check_only_changes_nothing(sb: SalesforceSandbox) -> None:
    result = deploy(sb, package({"Account.Key__c": TEXT_KEY}), checkOnly=True)
    assert result["status"] == "Succeeded" and result["checkOnly"] is True
    assert "Key__c" not in sb.org.schema["Account"]


def test_refusals_roll_everything_back(sb: SalesforceSandbox) -> None:
    sb.org.schema["Account"]["Dup__c"] = FieldDef("Dup__c", "string", length=20)
    for name in ("A", "B"):
        sb.org.insert("Account", {"Name": name, "OwnerId": sb.org.integration_user_id, "Dup__c": "same"})
    zipped = package({"Account.Dup__c": "<label>D</label><type>Text</type><length>20</length><unique>true</unique>",
                      "Account.Name2__c": "<label>N</label><type>Text</type><length>20</length>",
                      "Nope.X__c": "<label>X</label><type>Text</type><length>20</length>"},
                     {"Bad": "<label>B</label><fieldPermissions><field>Account.Missing__c</field>"
                             "<readable>true</readable><editable>false</editable></fieldPermissions>"})
    result = deploy(sb, zipped)
    assert result["status"] == "Failed" and result["numberComponentErrors"] == 3
    problems = {c["fullName"]: c["problem"] for c in result["details"]["componentFailures"]}
    assert "duplicate values" in problems["Account.Dup__c"]
    assert "no CustomObject named Nope" in problems["Nope.X__c"]
    assert problems["Bad"] == "In field: field - no CustomField named Account.Missing__c found"
    assert "Name2__c" not in sb.org.schema["Account"]  # rollbackOnError, the default
    type_change = deploy(sb, package({"Account.Dup__c": "<label>D</label><type>Currency</type><precision>16</precision>"
                                                        "<scale>2</scale>"}))
    assert "Cannot change type" in type_change["details"]["componentFailures"][0]["problem"]


def test_a_user_without_modify_metadata_is_refused() -> None:
    with SalesforceSandbox(SalesforceOrg(modify_metadata=False)) as sb:
        url = f"{sb.instance_url}/services/data/v{API}/metadata/deployRequest"
        files = {"json": (None, "{}", "application/json"), "file": ("d.zip", package({}), "application/zip")}
        answer = sb.session().post(url, files=files, headers={"Authorization": f"Bearer {sb.access_token}"},
                                   timeout=10)
        assert answer.status_code == 403
        assert answer.json()[0]["errorCode"] == "INSUFFICIENT_ACCESS"


def test_group_by_lists_values_held_by_several_records() -> None:
    with SalesforceSandbox(SalesforceOrg()) as sandbox:
        sandbox.org.schema["Account"]["Stripe_Customer_ID__c"].unique = False
        owner = sandbox.org.integration_user_id
        for name, customer in (("A", "cus_1"), ("B", "CUS_1"), ("C", "cus_2"), ("D", None)):
            sandbox.org.insert("Account", {"Name": name, "OwnerId": owner, "Stripe_Customer_ID__c": customer})
        sf = client(sandbox)
        got = sf.query("SELECT Stripe_Customer_ID__c, COUNT(Id) n FROM Account WHERE Stripe_Customer_ID__c != null "
                       "GROUP BY Stripe_Customer_ID__c HAVING COUNT(Id) > 1")
        assert [(r["Stripe_Customer_ID__c"], r["n"]) for r in got["records"]] == [("cus_1", 2)]
        assert got["records"][0]["attributes"]["type"] == "AggregateResult"
        every = sf.query("SELECT Name, COUNT(Id) FROM Account GROUP BY Name")["records"]
        assert sorted(r["expr0"] for r in every) == [1, 1, 1, 1]
        with pytest.raises(SalesforceMalformedRequest, match="GROUP BY only"):
            sf.query("SELECT Name FROM Account GROUP BY Name")
