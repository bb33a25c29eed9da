"""The Salesforce stand-in, exercised with the real simple_salesforce client over real HTTPS."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from simple_salesforce import Salesforce, format_soql
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceMoreThanOneRecord,
    SalesforceOperationError,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from stripe_sf_sandbox import sfids
from stripe_sf_sandbox.salesforce_server import FieldDef, SalesforceOrg, SalesforceSandbox, ValidationRule

API = "62.0"


@pytest.fixture
def sandbox() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox() as sb:
        yield sb
        assert sb.unexpected_errors == []


def client(sb: SalesforceSandbox, token: str | None = None) -> Salesforce:
    return Salesforce(
        instance_url=sb.instance_url, session_id=token or sb.access_token, session=sb.session(), version=API
    )


def create(sf: Salesforce, *records: dict[str, Any], all_or_none: bool = False) -> list[dict[str, Any]]:
    result = sf.restful(
        "composite/sobjects", method="POST", json={"allOrNone": all_or_none, "records": list(records)}
    )
    assert isinstance(result, list)
    return result


def acct(**fields: Any) -> dict[str, Any]:
    return {"attributes": {"type": "Account"}, "Name": "Acme", **fields}


def opp(**fields: Any) -> dict[str, Any]:
    return {
        "attributes": {"type": "Opportunity"},
        "Name": "Deal",
        "StageName": "Prospecting",
        "CloseDate": "2025-01-31",
        **fields,
    }


def error_of(result: dict[str, Any]) -> tuple[str, list[str]]:
    assert result["success"] is False, result
    return result["errors"][0]["statusCode"], result["errors"][0]["fields"]


def rest_error(exc: pytest.ExceptionInfo[Any]) -> dict[str, Any]:
    content = exc.value.content
    return content[0] if isinstance(content, list) else content


# ------------------------------------------------------------------------------------------ Ids


def test_id_checksum_matches_salesforce_algorithm() -> None:
    # Hand-computed: the last 5-char chunk "VALDt" has upper-case letters at positions 0-3 -> 0b01111 -> "P".
    assert sfids.checksum_suffix("0015000000VALDt") == "AAP"
    assert sfids.to18("0015000000VALDt") == "0015000000VALDtAAP"
    assert sfids.is_valid_id("0015000000VALDtAAP")
    assert sfids.is_valid_id("0015000000VALDtaap")  # suffix is case-insensitive, as in real orgs
    assert not sfids.is_valid_id("0015000000VALDtAAA")  # wrong checksum
    assert not sfids.is_valid_id("0015000000VALD")  # 14 chars
    assert not sfids.is_valid_id("0015000000VALD-t")


def test_generated_ids_look_real(sandbox: SalesforceSandbox) -> None:
    org = sandbox.org
    aid = org.insert("Account", {"Name": "Acme"})
    assert len(aid) == 18 and aid.startswith("001") and sfids.is_valid_id(aid)
    assert org.integration_user_id.startswith("005")
    assert org.record_type_id("New_Business").startswith("012")
    assert org.get("Account", aid[:15])["Id"] == aid  # 15-char lookups work
    assert any(c.isupper() for c in aid[5:15])  # mixed case, so the suffix matters


# ------------------------------------------------------------------------------------------ auth, limits


def test_bad_token_and_expired_sessions_get_401(sandbox: SalesforceSandbox) -> None:
    with pytest.raises(SalesforceExpiredSession) as exc:
        client(sandbox, token="00Dbogus!token").query("SELECT Id FROM Account")
    assert rest_error(exc)["errorCode"] == "INVALID_SESSION_ID"
    sf = client(sandbox)
    sf.query("SELECT Id FROM Account")
    used = sandbox.org.api_used
    sandbox.org.expire_sessions()
    with pytest.raises(SalesforceExpiredSession):
        sf.query("SELECT Id FROM Account")
    assert sandbox.org.api_used == used  # rejected requests are not billed
    fresh = sandbox.org.new_access_token()
    assert client(sandbox, token=fresh).query("SELECT COUNT() FROM Account")["totalSize"] == 0


def test_usage_header_and_request_limit(sandbox: SalesforceSandbox) -> None:
    sf = client(sandbox)
    sf.query("SELECT Id FROM Account")
    usage = sf.api_usage["api-usage"]
    assert (usage.used, usage.total) == (sandbox.org.api_used, 100_000)
    sandbox.org.daily_api_limit = sandbox.org.api_used + 1
    sf.query("SELECT Id FROM Account")
    with pytest.raises(SalesforceRefusedRequest) as exc:
        sf.query("SELECT Id FROM Account")
    assert rest_error(exc) == {
        "message": "TotalRequests Limit exceeded.",
        "errorCode": "REQUEST_LIMIT_EXCEEDED",
    }
    assert sandbox.org.api_used == sandbox.org.daily_api_limit
    sandbox.org.daily_api_limit = 10**6
    limits = sf.limits()
    assert limits["DailyApiRequests"]["Max"] == 10**6
    assert limits["DailyApiRequests"]["Remaining"] == 10**6 - sandbox.org.api_used


def test_oauth_token_endpoint(sandbox: SalesforceSandbox) -> None:
    s = sandbox.session()
    url = f"{sandbox.instance_url}/services/oauth2/token"
    used = sandbox.org.api_used
    r = s.post(url, data={"grant_type": "client_credentials"}, auth=("sandbox-key", "sandbox-secret"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["instance_url"] == sandbox.instance_url
    assert client(sandbox, token=body["access_token"]).query("SELECT COUNT() FROM User")["totalSize"] == 4

    bad = s.post(url, data={"grant_type": "client_credentials"}, auth=("sandbox-key", "wrong"))
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_client"

    pw = s.post(
        url,
        data={
            "grant_type": "password",
            "client_id": "sandbox-key",
            "client_secret": "sandbox-secret",
            "username": "integration@stripe-sf.sandbox",
            "password": "sandbox-password",
        },
    )
    assert pw.status_code == 200
    bad_pw = s.post(
        url,
        data={
            "grant_type": "password",
            "client_id": "sandbox-key",
            "client_secret": "sandbox-secret",
            "username": "x@y.z",
            "password": "no",
        },
    )
    assert bad_pw.json()["error"] == "invalid_grant"

    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {
        "iss": "sandbox-key",
        "sub": "integration@stripe-sf.sandbox",
        "aud": "https://login.salesforce.com",
        "exp": int(time.time()) + 300,
    }
    assertion = f"{seg({'alg': 'RS256'})}.{seg(claims)}.{seg({'sig': 1})}"
    jwt = s.post(
        url, data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
    )
    assert jwt.status_code == 200 and jwt.json()["access_token"]
    junk = s.post(url, data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "abc"})
    assert junk.status_code == 400
    assert sandbox.org.api_used == used + 1  # only the query counted: token requests are not API calls


def test_session_ignores_environment_ca_bundle(
    sandbox: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")
    assert sandbox.session().get(f"{sandbox.instance_url}/services/data/").status_code == 200
    plain = requests.Session()
    plain.trust_env = False
    with pytest.raises(requests.exceptions.SSLError):  # the sandbox CA is not trusted by default
        plain.get(f"{sandbox.instance_url}/services/data/")


# ------------------------------------------------------------------------------------------ SOQL


def test_soql_escaping_defeats_injection(sandbox: SalesforceSandbox) -> None:
    org = sandbox.org
    org.insert("Account", {"Name": "Acme"})
    org.insert("Account", {"Name": "O'Brien & Sons"})
    tricky = 'back\\slash "quoted" 100%_done\nline2\ttab'
    org.insert("Account", {"Name": tricky})
    sf = client(sandbox)
    injection = "' OR Name != '"
    assert sf.query(format_soql("SELECT Id FROM Account WHERE Name = {}", injection))["totalSize"] == 0
    # Unescaped, the same input rewrites the filter and matches every Account: why escaping matters.
    assert sf.query(f"SELECT Id FROM Account WHERE Name = '{injection}'")["totalSize"] == 3
    assert sf.query(format_soql("SELECT Id FROM Account WHERE Name = {}", "O'Brien & Sons"))["totalSize"] == 1
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.query("SELECT Id FROM Account WHERE Name = 'O'Brien & Sons'")
    assert rest_error(exc)["errorCode"] == "MALFORMED_QUERY"
    with pytest.raises(SalesforceMalformedRequest):
        sf.query("SELECT Id FROM Account WHERE Name = 'unterminated")
    with pytest.raises(SalesforceMalformedRequest):
        sf.query("SELECT Id FROM Account WHERE Name = 'bad \\q escape'")
    found = sf.query(format_soql("SELECT Name FROM Account WHERE Name = {}", tricky))
    assert [r["Name"] for r in found["records"]] == [tricky]
    like = sf.query(
        format_soql("SELECT Name FROM Account WHERE Name LIKE '{:like}%'", 'back\\slash "quoted" 100%_')
    )
    assert like["totalSize"] == 1
    assert sf.query("SELECT Name FROM Account WHERE Name LIKE '100\\%%'")["totalSize"] == 0


def test_soql_subset_semantics(sandbox: SalesforceSandbox) -> None:
    org = sandbox.org
    ava = org.user_id("Ava Owner")
    a1 = org.insert(
        "Account", {"Name": "Acme", "Stripe_Customer_ID__c": "cus_A", "Subscription_Status__c": "active"}
    )
    a2 = org.insert("Account", {"Name": "Beta", "Stripe_Customer_ID__c": "cus_B", "OwnerId": ava})
    org.insert("Account", {"Name": "Gamma"})
    org.insert(
        "Opportunity",
        {
            "Name": "Acme deal",
            "AccountId": a1,
            "StageName": "Closed Won",
            "CloseDate": "2025-02-01",
            "Amount": 1200.5,
        },
    )
    sf = client(sandbox)

    res = sf.query("select id, NAME, stripe_customer_id__c from ACCOUNT where name = 'acme'")
    rec = res["records"][0]
    assert list(rec) == ["attributes", "Id", "Name", "Stripe_Customer_ID__c"]  # schema casing
    assert rec["attributes"] == {"type": "Account", "url": f"/services/data/v{API}/sobjects/Account/{a1}"}

    def names(q: str) -> list[str]:
        return [r["Name"] for r in sf.query(q)["records"]]

    assert names("SELECT Name FROM Account WHERE Stripe_Customer_ID__c != null ORDER BY Name DESC") == [
        "Beta",
        "Acme",
    ]
    assert names("SELECT Name FROM Account WHERE Stripe_Customer_ID__c != 'cus_A' ORDER BY Name") == [
        "Beta",
        "Gamma",
    ]
    assert names("SELECT Name FROM Account WHERE Stripe_Customer_ID__c NOT IN ('cus_A') ORDER BY Name") == [
        "Beta",
        "Gamma",
    ]
    assert names("SELECT Name FROM Account WHERE Stripe_Customer_ID__c = null") == ["Gamma"]
    assert names(f"SELECT Name FROM Account WHERE Id IN ('{a1[:15]}', '{a2}') ORDER BY Name LIMIT 1") == [
        "Acme"
    ]
    assert names(
        f"SELECT Name FROM Account WHERE (OwnerId = '{ava}' OR Name = 'Gamma') AND Name != 'Zed' "
        "ORDER BY Name"
    ) == ["Beta", "Gamma"]
    assert sf.query("SELECT COUNT() FROM Account WHERE Subscription_Status__c = 'active'")["totalSize"] == 1
    won = sf.query(
        "SELECT Id, Amount, IsWon, Account.Stripe_Customer_ID__c FROM Opportunity "
        "WHERE Account.Stripe_Customer_ID__c = 'cus_A' AND IsWon = true AND CloseDate = 2025-02-01"
    )
    assert won["records"][0]["Amount"] == 1200.5
    assert won["records"][0]["Account"]["Stripe_Customer_ID__c"] == "cus_A"
    rts = sf.query(
        "SELECT Id, DeveloperName FROM RecordType WHERE SobjectType = 'Opportunity' AND IsActive = true"
    )
    assert {r["DeveloperName"] for r in rts["records"]} == {"New_Business", "Renewal"}

    def code(q: str) -> str:
        with pytest.raises(SalesforceMalformedRequest) as exc:
            sf.query(q)
        return str(rest_error(exc)["errorCode"])

    assert code("SELECT Id, Foo__c FROM Account") == "INVALID_FIELD"
    assert code("SELECT Id FROM Acount") == "INVALID_TYPE"
    assert code("SELECT Id FROM Account WHERE Id IN ('001xyz')") == "INVALID_QUERY_FILTER_OPERATOR"
    assert code("SELECT Id FROM Account WHERE Name = 'a' AND Name = 'b' OR Name = 'c'") == "MALFORMED_QUERY"
    assert code("SELECT Id FROM Opportunity WHERE IsWon = 'true'") == "INVALID_QUERY_FILTER_OPERATOR"
    assert code("SELECT Id FROM Opportunity WHERE Amount = '5'") == "INVALID_QUERY_FILTER_OPERATOR"
    assert code("SELECT Id FROM Opportunity WHERE Description = 'x'") == "INVALID_FIELD"
    assert code("SELECT Id, COUNT() FROM Account") == "MALFORMED_QUERY"
    assert code("SELECT Id FROM Account WHERE") == "MALFORMED_QUERY"
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.query("SELECT Id FROM Account WHERE Id = 'nope'")
    assert "invalid ID field: nope" in rest_error(exc)["message"]


def test_query_paging_over_2500_records(sandbox: SalesforceSandbox) -> None:
    for i in range(2500):
        sandbox.org.insert("Account", {"Name": f"Account {i:04d}"})
    sf = client(sandbox)
    first = sf.query("SELECT Id, Name FROM Account")
    assert (first["totalSize"], first["done"], len(first["records"])) == (2500, False, 2000)
    assert first["nextRecordsUrl"].startswith(f"/services/data/v{API}/query/01g")
    before = len(sandbox.requests_log)
    names = [r["Name"] for r in sf.query_all_iter("SELECT Id, Name FROM Account ORDER BY Name DESC")]
    assert len(names) == 2500 and len(set(names)) == 2500 and names[0] == "Account 2499"
    assert len(sandbox.requests_log) - before == 2
    small = list(
        sf.query_all_iter("SELECT Id FROM Account", headers={"Sforce-Query-Options": "batchSize=500"})
    )
    assert len(small) == 2500 and len(sandbox.requests_log) - before == 2 + 5
    quoted = [f"'{r['Id']}'" for r in small[:800]]
    with pytest.raises(Exception) as exc:  # like a real org, a URI over 16,384 bytes is refused
        sf.query(f"SELECT Id FROM Account WHERE Id IN ({','.join(quoted)})")
    assert exc.value.status == 414
    assert sf.query(f"SELECT COUNT() FROM Account WHERE Id IN ({','.join(quoted[:500])})")["totalSize"] == 500


# ------------------------------------------------------------------------------------------ validation


def test_unknown_field_rejects_the_whole_request(sandbox: SalesforceSandbox) -> None:
    sf = client(sandbox)
    with pytest.raises(SalesforceMalformedRequest) as exc:
        create(sf, opp(), opp(Foo__c="x"))
    assert rest_error(exc) == {
        "errorCode": "INVALID_FIELD",
        "message": "No such column 'Foo__c' on sobject of type Opportunity",
    }
    assert sandbox.org.records("Opportunity") == []


def test_collection_validation_errors(sandbox: SalesforceSandbox) -> None:
    org = sandbox.org
    account_id = org.insert("Account", {"Name": "Live"})
    deleted_id = org.insert("Account", {"Name": "Gone"})
    org.delete("Account", deleted_id)
    inactive = org.insert(
        "User", {"Name": "Old Rep", "Username": "old@x.sandbox", "Email": "old@x.com", "IsActive": False}
    )
    never = sfids.to18("001" + "8d" + "ZZZZZZZZZZ")
    bad_checksum = account_id[:15] + ("AAB" if account_id[15:] != "AAB" else "AAC")
    cases: list[tuple[dict[str, Any], str, list[str]]] = [
        (opp(IsWon=True), "INVALID_FIELD_FOR_INSERT_UPDATE", ["IsWon"]),
        (opp(AccountId="not-an-id"), "MALFORMED_ID", ["AccountId"]),
        (opp(AccountId=bad_checksum), "MALFORMED_ID", ["AccountId"]),
        (opp(AccountId=org.integration_user_id), "FIELD_INTEGRITY_EXCEPTION", ["AccountId"]),
        (opp(AccountId=never), "INVALID_CROSS_REFERENCE_KEY", ["AccountId"]),
        (opp(AccountId=deleted_id), "ENTITY_IS_DELETED", ["AccountId"]),
        (
            {"attributes": {"type": "Opportunity"}, "Name": "No stage"},
            "REQUIRED_FIELD_MISSING",
            ["StageName", "CloseDate"],
        ),
        (opp(StageName="Won"), "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", ["StageName"]),
        (opp(Name="x" * 121), "STRING_TOO_LONG", ["Name"]),
        (opp(CloseDate="2025/01/31"), "INVALID_TYPE_ON_FIELD_IN_RECORD", ["CloseDate"]),
        (opp(CloseDate="2025-02-30"), "INVALID_TYPE_ON_FIELD_IN_RECORD", ["CloseDate"]),
        (opp(Amount="lots"), "INVALID_TYPE_ON_FIELD_IN_RECORD", ["Amount"]),
        (opp(MRR__c=1e15), "NUMBER_OUTSIDE_VALID_RANGE", ["MRR__c"]),
        (opp(OwnerId=inactive), "INACTIVE_OWNER_OR_USER", []),
        (opp(Id=account_id), "INVALID_FIELD_FOR_INSERT_UPDATE", ["Id"]),
        (
            acct(Subscription_Status__c="Active"),
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            ["Subscription_Status__c"],
        ),
        ({"Name": "no attributes"}, "INVALID_TYPE", []),
    ]
    results = create(client(sandbox), *(c[0] for c in cases), opp(Amount="12.345", AccountId=account_id[:15]))
    for (record, code, fields), result in zip(cases, results, strict=False):
        assert error_of(result) == (code, fields), record
    good = results[-1]
    assert good["success"] is True
    stored = org.get("Opportunity", good["id"])
    assert stored["Amount"] == 12.35  # numeric strings accepted; extra decimals rounded like a real org
    assert stored["AccountId"] == account_id  # 15-char Id stored as 18
    assert stored["OwnerId"] == org.integration_user_id and stored["IsWon"] is False
    assert stored["CreatedDate"].endswith("+0000")
    assert len(org.records("Opportunity")) == 1


def test_updates_of_deleted_missing_and_read_only(sandbox: SalesforceSandbox) -> None:
    org = sandbox.org
    live = org.insert("Account", {"Name": "Live"})
    gone = org.insert("Account", {"Name": "Gone"})
    org.delete("Account", gone)
    never = sfids.to18("0018d0000Zzzzzz")
    sf = client(sandbox)
    results = sf.restful(
        "composite/sobjects",
        method="PATCH",
        json={
            "allOrNone": False,
            "records": [
                {"attributes": {"type": "Account"}, "id": gone, "Name": "x"},
                {"attributes": {"type": "Account"}, "id": never, "Name": "x"},
                {"attributes": {"type": "Account"}, "Name": "no id"},
                {"attributes": {"type": "Account"}, "id": "garbage", "Name": "x"},
                {"attributes": {"type": "Account"}, "id": live, "Name": None},
                {"attributes": {"type": "Account"}, "id": live, "CreatedDate": "2020-01-01T00:00:00Z"},
                {"attributes": {"type": "Account"}, "Id": live[:15], "Name": "Renamed"},
            ],
        },
    )
    assert [r["errors"][0]["statusCode"] if r["errors"] else "OK" for r in results] == [
        "ENTITY_IS_DELETED",
        "INVALID_CROSS_REFERENCE_KEY",
        "MISSING_ARGUMENT",
        "MALFORMED_ID",
        "REQUIRED_FIELD_MISSING",
        "INVALID_FIELD_FOR_INSERT_UPDATE",
        "OK",
    ]
    assert org.get("Account", live)["Name"] == "Renamed"
    with pytest.raises(SalesforceResourceNotFound) as exc:
        sf.Account.update(never, {"Name": "x"})
    assert rest_error(exc)["errorCode"] == "NOT_FOUND"
    assert sf.Account.update(live, {"Name": "Again"}) == 204
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Account.update(live, {"Name": "y" * 256})
    assert rest_error(exc)["errorCode"] == "STRING_TOO_LONG"  # single-resource errors use errorCode


def test_a_validation_rule_and_a_required_field_refuse_a_create() -> None:
    """ISNEW() && ISBLANK(Type) refuses a create only; a rule on every save refuses an update that leaves the
    field empty too; an admin's required field refuses both (Metadata API: ValidationRule)."""
    rule = ValidationRule("Type_Required", "Opportunity", "Type", "Choose a Type.")
    with SalesforceSandbox(SalesforceOrg(validation_rules=[rule], required_fields=["Opportunity.Region__c"])) as sb:
        sf = client(sb)
        refused = create(sf, opp(Region__c="EMEA"))[0]
        assert error_of(refused) == ("FIELD_CUSTOM_VALIDATION_EXCEPTION", ["Type"])
        assert refused["errors"][0]["message"] == "Choose a Type."
        assert error_of(create(sf, opp(Type="New Business"))[0]) == ("REQUIRED_FIELD_MISSING", ["Region__c"])
        made = create(sf, opp(Type="New Business", Region__c="EMEA"))[0]
        assert made["success"], made
        assert sf.Opportunity.update(made["id"], {"Type": None}) == 204  # on create only
        sb.org.validation_rules.append(ValidationRule("Type_Always", "Opportunity", "Type", "Keep a Type.",
                                                      on_create=False))
        with pytest.raises(SalesforceMalformedRequest) as exc:
            sf.Opportunity.update(made["id"], {"Amount": 5})
        assert rest_error(exc)["errorCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"


def test_collection_size_limit(sandbox: SalesforceSandbox) -> None:
    with pytest.raises(SalesforceMalformedRequest) as exc:
        create(client(sandbox), *(acct(Name=f"A{i}") for i in range(201)))
    assert rest_error(exc)["errorCode"] == "EXCEEDED_ID_LIMIT"


def test_unique_external_id_and_insert_validation(sandbox: SalesforceSandbox) -> None:
    org = sandbox.org
    first = org.insert("Account", {"Name": "Acme", "Stripe_Customer_ID__c": "cus_1"})
    result = create(client(sandbox), acct(Stripe_Customer_ID__c="cus_1"))[0]
    assert error_of(result) == ("DUPLICATE_VALUE", [])
    assert result["errors"][0]["message"] == (
        f"duplicate value found: Stripe_Customer_ID__c duplicates value on record with id: {first}"
    )
    with pytest.raises(ValueError, match="REQUIRED_FIELD_MISSING"):
        org.insert("Account", {"Stripe_Customer_ID__c": "cus_2"})
    with pytest.raises(ValueError, match="INVALID_FIELD"):
        org.insert("Account", {"Name": "x", "Nope__c": 1})


# ------------------------------------------------------------------------------------------ upsert


def upsert(
    sf: Salesforce, sobject: str, ext: str, *records: dict[str, Any], all_or_none: bool = False
) -> Any:
    return sf.restful(
        f"composite/sobjects/{sobject}/{ext}",
        method="PATCH",
        json={"allOrNone": all_or_none, "records": list(records)},
    )


def test_upsert_collection_created_updated_and_duplicates(sandbox: SalesforceSandbox) -> None:
    org = sandbox.org
    account_id = org.insert("Account", {"Name": "Acme"})
    existing = org.insert(
        "Opportunity",
        {
            "Name": "Old",
            "StageName": "Prospecting",
            "CloseDate": "2025-01-01",
            "Stripe_Subscription_ID__c": "sub_1",
        },
    )
    sf = client(sandbox)
    results = upsert(
        sf,
        "Opportunity",
        "Stripe_Subscription_ID__c",
        opp(Stripe_Subscription_ID__c="sub_1", StageName="Closed Won", AccountId=account_id),
        opp(Stripe_Subscription_ID__c="sub_2"),
        opp(Stripe_Subscription_ID__c="sub_3", Name="first"),
        opp(Stripe_Subscription_ID__c="sub_3", Name="second"),
        opp(Name="no key"),
    )
    assert [(r["success"], r["created"]) for r in results[:2]] == [(True, False), (True, True)]
    assert results[0]["id"] == existing
    for r in results[2:4]:
        assert error_of(r) == ("DUPLICATE_VALUE", [])
        assert r["errors"][0]["message"] == "Duplicate external id specified: sub_3"
    assert error_of(results[4])[0] == "MISSING_ARGUMENT"
    won = org.get("Opportunity", existing)
    assert (won["IsWon"], won["IsClosed"], won["AccountId"]) == (True, True, account_id)

    with pytest.raises(SalesforceMalformedRequest) as exc:
        upsert(sf, "Opportunity", "Stripe_Customer_ID__c", opp(Stripe_Customer_ID__c="cus_1"))
    assert rest_error(exc)["errorCode"] == "INVALID_FIELD"
    assert "is not an External ID or indexed field" in rest_error(exc)["message"]
    with_id = upsert(
        sf, "Opportunity", "Stripe_Subscription_ID__c", opp(Stripe_Subscription_ID__c="sub_9", Id=existing)
    )
    assert error_of(with_id[0])[0] == "INVALID_FIELD"


def test_upsert_non_unique_external_id_matching_twice(sandbox: SalesforceSandbox) -> None:
    org = sandbox.org
    org.view_all_data = True  # an upsert on a non-Unique External ID needs it (see the test below)
    org.schema["Account"]["Legacy_Key__c"] = FieldDef("Legacy_Key__c", "string", length=50, external_id=True)
    org.insert("Account", {"Name": "One", "Legacy_Key__c": "K"})
    org.insert("Account", {"Name": "Two", "Legacy_Key__c": "k"})  # case-insensitive match, like a real org
    sf = client(sandbox)
    result = upsert(sf, "Account", "Legacy_Key__c", acct(Legacy_Key__c="K"))[0]
    assert error_of(result) == ("DUPLICATE_EXTERNAL_ID", ["Legacy_Key__c"])
    with pytest.raises(SalesforceMoreThanOneRecord):
        sf.Account.upsert("Legacy_Key__c/K", {"Name": "x"})


def task(**fields: Any) -> dict[str, Any]:
    return {"attributes": {"type": "Task"}, "Subject": "Call", "Status": "Not Started", "Priority": "Normal",
            **fields}


@pytest.mark.parametrize(
    ("kind", "external", "unique"),
    [("external_unique", True, True), ("external", True, False), ("unique", False, True), ("text", False, False)],
)
def test_task_key_field_variants_and_what_an_upsert_on_them_needs(kind: str, external: bool, unique: bool) -> None:
    """Task.Stripe_Event_ID__c as an admin may have made it: only an External ID can be an upsert key; a
    non-Unique one needs "View All Data" (REST API: Upsert by External ID); a Unique one rejects a second
    record with the key; every variant can be created and looked up with SOQL."""
    bulk_row = {"Stripe_Event_ID__c": "evt_4:purpose", "Subject": "Call", "Status": "Not Started",
                "Priority": "Normal"}
    for view_all in (False, True):
        org = SalesforceOrg(task_event_id_kind=kind, view_all_data=view_all)  # type: ignore[arg-type]
        with SalesforceSandbox(org) as sb:
            sf = client(sb)
            described = {f["name"]: f for f in sf.Task.describe()["fields"]}["Stripe_Event_ID__c"]
            assert (described["externalId"], described["unique"]) == (external, unique)
            [made] = create(sf, task(Stripe_Event_ID__c="evt_1:purpose"))
            assert made["success"]
            [again] = create(sf, task(Stripe_Event_ID__c="evt_1:purpose"))
            if unique:
                assert error_of(again) == ("DUPLICATE_VALUE", [])
                assert "Stripe_Event_ID__c duplicates value on record with id" in again["errors"][0]["message"]
            else:
                assert again["success"]  # nothing stops a second Task with the same key
            found = sf.query(format_soql("SELECT Stripe_Event_ID__c FROM Task WHERE Stripe_Event_ID__c IN {k}",
                                         k=["evt_1:purpose", "evt_2:purpose"]))
            assert [r["Stripe_Event_ID__c"] for r in found["records"]] == ["evt_1:purpose"] * (1 if unique else 2)
            if not external:
                with pytest.raises(SalesforceMalformedRequest) as exc:
                    upsert(sf, "Task", "Stripe_Event_ID__c", task(Stripe_Event_ID__c="evt_3:purpose"))
                assert rest_error(exc)["errorCode"] == "INVALID_FIELD"
                assert rest_error(exc)["message"] == (
                    "Field Stripe_Event_ID__c is not an External ID or indexed field for Task")
                with pytest.raises(SalesforceMalformedRequest):
                    sf.Task.upsert("Stripe_Event_ID__c/evt_3:purpose", {"Subject": "x"})
                with pytest.raises(SalesforceMalformedRequest) as exc:
                    sf.bulk2.Task.upsert(records=[bulk_row], external_id_field="Stripe_Event_ID__c", wait=0)
                assert rest_error(exc)["errorCode"] == "INVALIDJOB"
                continue
            [res] = upsert(sf, "Task", "Stripe_Event_ID__c", task(Stripe_Event_ID__c="evt_4:purpose"))
            if unique or view_all:
                assert res["success"] and res["created"] is True
                continue
            assert error_of(res) == ("INSUFFICIENT_ACCESS", [])
            assert res["errors"][0]["message"] == "Upsert requires view all data on a non-unique custom index"
            with pytest.raises(SalesforceMalformedRequest) as exc:
                sf.Task.upsert("Stripe_Event_ID__c/evt_4:purpose", {"Subject": "x"})
            assert rest_error(exc)["errorCode"] == "INSUFFICIENT_ACCESS"
            [job] = sf.bulk2.Task.upsert(records=[bulk_row], external_id_field="Stripe_Event_ID__c", wait=0)
            assert job["numberRecordsFailed"] == 1
            [failed] = csv.DictReader(io.StringIO(sf.bulk2.Task.get_failed_records(job["job_id"])))
            assert failed["sf__Error"].startswith("INSUFFICIENT_ACCESS:Upsert requires view all data")
            assert all(t.get("Stripe_Event_ID__c") != "evt_4:purpose" for t in org.records("Task"))


def test_a_person_edits_a_task_in_the_org(sandbox: SalesforceSandbox) -> None:
    org = sandbox.org
    account_id = org.insert("Account", {"Name": "Acme"})
    [made] = create(client(sandbox), task(WhatId=account_id, ActivityDate="2025-01-02"))
    rep = org.user_id("Ben Owner")
    org.update("Task", made["id"], {"Status": "Completed", "OwnerId": rep, "ActivityDate": "2025-02-03"},
               as_user="Ben Owner")
    edited = org.get("Task", made["id"])
    assert (edited["Status"], edited["OwnerId"], edited["ActivityDate"]) == ("Completed", rep, "2025-02-03")
    assert edited["LastModifiedById"] == rep and edited["CreatedById"] == org.integration_user_id
    with pytest.raises(ValueError, match="INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"):
        org.update("Task", made["id"], {"Status": "Done-ish"}, as_user=rep)


def test_single_record_upsert_status_codes(sandbox: SalesforceSandbox) -> None:
    sf = client(sandbox)
    created = sf.Account.upsert("Stripe_Customer_ID__c/cus_9", {"Name": "Nine"}, raw_response=True)
    assert created.status_code == 201 and created.json()["created"] is True
    updated = sf.Account.upsert("Stripe_Customer_ID__c/cus_9", {"Name": "Nine!"}, raw_response=True)
    assert updated.status_code == 200 and updated.json() == {
        "id": created.json()["id"],
        "success": True,
        "errors": [],
        "created": False,
    }
    assert sf.Account.get_by_custom_id("Stripe_Customer_ID__c", "cus_9")["Name"] == "Nine!"
    with pytest.raises(SalesforceMalformedRequest):
        sf.Account.upsert("Stripe_Customer_ID__c/cus_9", {"Name": "x", "Stripe_Customer_ID__c": "cus_other"})
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Account.upsert("Name/Nine", {"Subscription_Status__c": "active"})
    assert rest_error(exc)["errorCode"] == "INVALID_FIELD"


def test_relationship_by_external_id(sandbox: SalesforceSandbox) -> None:
    org = sandbox.org
    account_id = org.insert("Account", {"Name": "Acme", "Stripe_Customer_ID__c": "cus_rel"})
    results = create(
        client(sandbox),
        opp(Account={"Stripe_Customer_ID__c": "cus_rel"}),
        opp(Account={"Stripe_Customer_ID__c": "cus_missing"}),
    )
    assert org.get("Opportunity", results[0]["id"])["AccountId"] == account_id
    assert error_of(results[1])[0] == "INVALID_FIELD"
    assert "Foreign key external ID: cus_missing not found" in results[1]["errors"][0]["message"]


# ------------------------------------------------------------------------------------------ org shapes


def test_renamed_won_stage_is_a_restricted_picklist() -> None:
    with SalesforceSandbox(SalesforceOrg(won_stage="Won")) as sb:
        sf = client(sb)
        results = create(sf, opp(StageName="Closed Won"), opp(StageName="Won"), opp(StageName="Closed Lost"))
        assert error_of(results[0]) == ("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", ["StageName"])
        assert results[0]["errors"][0]["message"] == "bad value for restricted picklist field: Closed Won"
        won, lost = sb.org.get("Opportunity", results[1]["id"]), sb.org.get("Opportunity", results[2]["id"])
        assert (won["IsWon"], won["IsClosed"], lost["IsWon"], lost["IsClosed"]) == (True, True, False, True)
        stage = next(f for f in sf.Opportunity.describe()["fields"] if f["name"] == "StageName")
        assert stage["restrictedPicklist"] is True
        assert [p["value"] for p in stage["picklistValues"]] == [
            "Prospecting",
            "Qualification",
            "Negotiation",
            "Won",
            "Closed Lost",
        ]
        stages = sf.query("SELECT MasterLabel FROM OpportunityStage WHERE IsWon = true")
        assert [r["MasterLabel"] for r in stages["records"]] == ["Won"]


def test_a_renamed_won_stage_keeps_its_api_name_as_the_picklist_value() -> None:
    """StageName takes the API name; the label is only shown (Object Reference: OpportunityStage)."""
    with SalesforceSandbox(SalesforceOrg(won_stage="Closed Won", won_stage_label="Contract Executed")) as sb:
        sf = client(sb)
        results = create(sf, opp(StageName="Contract Executed"), opp(StageName="Closed Won"))
        assert error_of(results[0]) == ("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", ["StageName"])
        won = sb.org.get("Opportunity", results[1]["id"])
        assert (won["StageName"], won["IsWon"], won["IsClosed"]) == ("Closed Won", True, True)
        stage = next(f for f in sf.Opportunity.describe()["fields"] if f["name"] == "StageName")
        assert {"value": "Closed Won", "label": "Contract Executed"}.items() <= next(
            p for p in stage["picklistValues"] if p["value"] == "Closed Won").items()
        rows = sf.query("SELECT ApiName, MasterLabel FROM OpportunityStage WHERE IsWon = true AND IsClosed = true")
        assert [(r["ApiName"], r["MasterLabel"]) for r in rows["records"]] == [("Closed Won", "Contract Executed")]


def test_a_record_type_the_user_may_not_use_is_unavailable_and_refused() -> None:
    org = SalesforceOrg(unavailable_record_types=["New Business"])
    with SalesforceSandbox(org) as sb:
        sf = client(sb)
        infos = {i["name"]: i for i in sf.Opportunity.describe()["recordTypeInfos"]}
        assert infos["New Business"]["active"] and not infos["New Business"]["available"]
        assert infos["Renewal"]["available"] and infos["Renewal"]["defaultRecordTypeMapping"]
        nb = org.record_type_id("New_Business")
        results = create(sf, opp(RecordTypeId=nb), opp(RecordTypeId=org.record_type_id("Renewal")))
        assert error_of(results[0]) == ("INVALID_CROSS_REFERENCE_KEY", ["RecordTypeId"])
        assert results[1]["success"]


def test_an_object_the_user_may_not_create_or_edit_says_so_in_describe_and_refuses_the_write() -> None:
    org = SalesforceOrg(no_create=["Task"], no_edit=["Account"])
    account = org.insert("Account", {"Name": "Acme"})  # an admin's record: seeding is not the integration user
    with SalesforceSandbox(org) as sb:
        sf = client(sb)
        task, acc = sf.Task.describe(), sf.Account.describe()
        assert (task["createable"], task["updateable"]) == (False, True)
        assert (acc["createable"], acc["updateable"]) == (True, False)
        [created] = create(sf, {"attributes": {"type": "Task"}, "Subject": "Call", "WhatId": account})
        assert error_of(created)[0] == "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY"
        assert created["errors"][0]["message"] == "entity type cannot be inserted: Task"
        [updated] = sf.restful("composite/sobjects", method="PATCH", json={"allOrNone": False, "records": [
            {"attributes": {"type": "Account"}, "id": account, "Name": "Acme Corp"}]})
        assert updated["errors"][0]["message"] == "entity type cannot be updated: Account"
        assert org.get("Account", account)["Name"] == "Acme"


def test_multi_currency_org_has_currency_iso_code_as_a_restricted_picklist() -> None:
    with SalesforceSandbox(SalesforceOrg(currencies=["USD", "EUR"])) as sb:
        sf = client(sb)
        for sobject in (sf.Opportunity, sf.Account):
            field = next(f for f in sobject.describe()["fields"] if f["name"] == "CurrencyIsoCode")
            assert field["type"] == "picklist" and field["restrictedPicklist"] is True
            assert [(p["value"], p["active"]) for p in field["picklistValues"]] == [("USD", True), ("EUR", True)]
            assert field["defaultedOnCreate"] is True
        results = create(sf, opp(CurrencyIsoCode="EUR"), opp(CurrencyIsoCode="GBP"), opp(),
                         acct(CurrencyIsoCode="JPY"))
        assert sb.org.get("Opportunity", results[0]["id"])["CurrencyIsoCode"] == "EUR"
        assert error_of(results[1]) == ("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", ["CurrencyIsoCode"])
        assert results[1]["errors"][0]["message"] == "bad value for restricted picklist field: GBP"
        assert sb.org.get("Opportunity", results[2]["id"])["CurrencyIsoCode"] == "USD"  # the corporate currency
        assert error_of(results[3]) == ("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", ["CurrencyIsoCode"])
        rows = sf.query("SELECT CurrencyIsoCode FROM Opportunity WHERE CurrencyIsoCode = 'EUR'")["records"]
        assert [r["CurrencyIsoCode"] for r in rows] == ["EUR"]


def test_single_currency_org_has_no_currency_iso_code(sandbox: SalesforceSandbox) -> None:
    sf = client(sandbox)
    assert "CurrencyIsoCode" not in {f["name"] for f in sf.Opportunity.describe()["fields"]}
    with pytest.raises(SalesforceMalformedRequest) as exc:
        create(sf, opp(CurrencyIsoCode="USD"))
    assert rest_error(exc) == {
        "errorCode": "INVALID_FIELD",
        "message": "No such column 'CurrencyIsoCode' on sobject of type Opportunity",
    }
    assert sandbox.org.records("Opportunity") == []


def test_required_record_type() -> None:
    org = SalesforceOrg(require_record_type=True, record_types={"Expansion": "Expansion"})
    inactive = org.insert(
        "RecordType", {"Name": "Old", "DeveloperName": "Old", "SobjectType": "Opportunity", "IsActive": False}
    )
    with SalesforceSandbox(org) as sb:
        good = org.record_type_id("Expansion")
        results = create(client(sb), opp(), opp(RecordTypeId=inactive), opp(RecordTypeId=good))
        assert error_of(results[0]) == ("REQUIRED_FIELD_MISSING", ["RecordTypeId"])
        assert "RecordTypeId" in results[0]["errors"][0]["message"]
        assert error_of(results[1]) == ("INVALID_CROSS_REFERENCE_KEY", ["RecordTypeId"])
        assert (
            results[1]["errors"][0]["message"]
            == f"Record Type ID: this ID value isn't valid for the user: {inactive}"
        )
        assert results[2]["success"]
        infos = client(sb).Opportunity.describe()["recordTypeInfos"]
        assert {i["developerName"] for i in infos} == {"Expansion", "Old", "Master"}


def test_default_record_type_and_optional_fields() -> None:
    org = SalesforceOrg(task_event_id_field=False, csm_field=None)
    assert "Stripe_Event_ID__c" not in org.schema["Task"] and "CSM__c" not in org.schema["Account"]
    oid = org.insert("Opportunity", {"Name": "x", "StageName": "Prospecting", "CloseDate": "2025-01-01"})
    assert org.get("Opportunity", oid)["RecordTypeId"] == org.record_type_id("New_Business")


def test_task_defaults_and_derived_account(sandbox: SalesforceSandbox) -> None:
    org = sandbox.org
    account_id = org.insert("Account", {"Name": "Acme"})
    opp_id = org.insert(
        "Opportunity",
        {"Name": "Deal", "AccountId": account_id, "StageName": "Prospecting", "CloseDate": "2025-01-01"},
    )
    sf = client(sandbox)
    results = create(
        sf,
        {"attributes": {"type": "Task"}, "Subject": "Call", "WhatId": opp_id, "Stripe_Event_ID__c": "evt_1"},
        {"attributes": {"type": "Task"}, "Subject": "Dup", "Stripe_Event_ID__c": "evt_1"},
        {"attributes": {"type": "Task"}, "Subject": "x", "AccountId": account_id},
        {"attributes": {"type": "Task"}, "Subject": "x", "Priority": "Urgent"},
    )
    task = org.get("Task", results[0]["id"])
    assert (task["Status"], task["Priority"], task["AccountId"]) == ("Not Started", "Normal", account_id)
    assert error_of(results[1])[0] == "DUPLICATE_VALUE"
    assert error_of(results[2]) == ("INVALID_FIELD_FOR_INSERT_UPDATE", ["AccountId"])
    assert error_of(results[3]) == ("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", ["Priority"])
    desc = {f["name"]: f for f in sf.Task.describe()["fields"]}
    assert desc["Stripe_Event_ID__c"]["externalId"] and desc["Stripe_Event_ID__c"]["unique"]
    assert desc["WhatId"]["referenceTo"] == ["Account", "Opportunity"]
    assert desc["AccountId"]["createable"] is False
    # Deleting the Account takes its Opportunities and activities with it.
    org.delete("Account", account_id)
    assert org.get("Opportunity", opp_id) is None and org.get("Task", task["Id"]) is None


def test_all_or_none_rolls_everything_back(sandbox: SalesforceSandbox) -> None:
    org = sandbox.org
    keep = org.insert("Account", {"Name": "Before"})
    sf = client(sandbox)
    results = create(sf, acct(Name="Good 1"), acct(Name=None), acct(Name="Good 2"), all_or_none=True)
    assert [r["errors"][0]["statusCode"] for r in results] == [
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "REQUIRED_FIELD_MISSING",
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    ]
    assert [a["Id"] for a in org.records("Account")] == [keep]
    updates = sf.restful(
        "composite/sobjects",
        method="PATCH",
        json={
            "allOrNone": True,
            "records": [
                {"attributes": {"type": "Account"}, "id": keep, "Name": "Changed"},
                {"attributes": {"type": "Account"}, "id": keep, "Subscription_Status__c": "bogus"},
            ],
        },
    )
    assert not any(r["success"] for r in updates)
    assert org.get("Account", keep)["Name"] == "Before"


# ------------------------------------------------------------------------------------------ faults


def test_lock_rows_fails_only_that_record(sandbox: SalesforceSandbox) -> None:
    org = sandbox.org
    locked = org.insert("Account", {"Name": "Busy", "Stripe_Customer_ID__c": "cus_busy"})
    sandbox.faults.lock_rows("Account", "cus_busy")
    sf = client(sandbox)
    records = [acct(Stripe_Customer_ID__c="cus_busy", Name="Busy 2"), acct(Stripe_Customer_ID__c="cus_free")]
    first = upsert(sf, "Account", "Stripe_Customer_ID__c", *records)
    assert error_of(first[0])[0] == "UNABLE_TO_LOCK_ROW"
    assert first[0]["errors"][0]["message"] == (
        f"unable to obtain exclusive access to this record or 1 records: {locked}"
    )
    assert first[1]["success"] and first[1]["created"]
    retry = upsert(sf, "Account", "Stripe_Customer_ID__c", *records)
    assert all(r["success"] for r in retry)
    assert org.get("Account", locked)["Name"] == "Busy 2"
    sandbox.faults.lock_rows("Account", locked[:15], times=1)
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Account.update(locked, {"Name": "x"})
    assert rest_error(exc)["errorCode"] == "UNABLE_TO_LOCK_ROW"


def test_fail_request_fail_matching_hang_and_hook(sandbox: SalesforceSandbox) -> None:
    seen: list[tuple[int, str, str]] = []
    sandbox.faults.on_request = lambda n, method, path: seen.append((n, method, path))
    sf = client(sandbox)
    sf.query("SELECT Id FROM Account")
    n = len(sandbox.requests_log) + 1
    sandbox.faults.fail_request(
        n, 503, [{"errorCode": "SERVER_UNAVAILABLE", "message": "try later"}], headers={"Retry-After": "1"}
    )
    with pytest.raises(Exception) as exc:  # simple_salesforce raises SalesforceGeneralError for 503
        create(sf, acct(Name="Lost"))
    assert exc.value.status == 503
    assert sandbox.org.records("Account") == []  # the injected response replaced the handling
    assert create(sf, acct(Name="Kept"))[0]["success"]

    sandbox.faults.fail_matching(
        "GET",
        r"/query.*FROM Opportunity",
        500,
        [{"errorCode": "UNKNOWN_EXCEPTION", "message": "boom"}],
        times=1,
    )
    sf.query("SELECT Id FROM Account")  # not matched
    with pytest.raises(Exception) as exc:
        sf.query("SELECT Id FROM Opportunity")
    assert exc.value.status == 500
    sf.query("SELECT Id FROM Opportunity")  # only once

    sandbox.faults.hang_request(len(sandbox.requests_log) + 1, 2.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        sf.query("SELECT Id FROM Account", timeout=0.3)
    assert sf.query("SELECT Id FROM Account")["totalSize"] == 1
    assert seen[0] == (1, "GET", f"/services/data/v{API}/query/")
    assert [s[0] for s in seen] == list(range(1, len(seen) + 1))


# ------------------------------------------------------------------------------------------ bulk 2.0


def test_bulk2_upsert_with_failed_rows(sandbox: SalesforceSandbox, tmp_path: Any) -> None:
    org = sandbox.org
    account_id = org.insert("Account", {"Name": "Acme", "Stripe_Customer_ID__c": "cus_bulk"})
    existing = org.insert(
        "Opportunity",
        {
            "Name": "Old",
            "StageName": "Prospecting",
            "CloseDate": "2025-01-01",
            "Stripe_Subscription_ID__c": "sub_0",
            "Amount": 5,
        },
    )
    rows = [
        {
            "Stripe_Subscription_ID__c": "sub_0",
            "Name": "Updated",
            "StageName": "Closed Won",
            "CloseDate": "",
            "Amount": "",
            "Account.Stripe_Customer_ID__c": "cus_bulk",
        },
        {
            "Stripe_Subscription_ID__c": "sub_1",
            "Name": "",
            "StageName": "Prospecting",
            "CloseDate": "2025-03-01",
            "Amount": "10",
            "Account.Stripe_Customer_ID__c": "",
        },
        {
            "Stripe_Subscription_ID__c": "sub_2",
            "Name": "Bad stage",
            "StageName": "Won",
            "CloseDate": "2025-03-01",
            "Amount": "10",
            "Account.Stripe_Customer_ID__c": "",
        },
        {
            "Stripe_Subscription_ID__c": "sub_3",
            "Name": "Fine",
            "StageName": "Prospecting",
            "CloseDate": "2025-03-01",
            "Amount": "#N/A",
            "Account.Stripe_Customer_ID__c": "cus_bulk",
        },
    ]
    path = tmp_path / "opps.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    sf = client(sandbox)
    [summary] = sf.bulk2.Opportunity.upsert(
        csv_file=str(path), external_id_field="Stripe_Subscription_ID__c", wait=0
    )
    assert (summary["numberRecordsProcessed"], summary["numberRecordsFailed"]) == (4, 2)
    failed = list(csv.DictReader(io.StringIO(sf.bulk2.Opportunity.get_failed_records(summary["job_id"]))))
    assert [f["Stripe_Subscription_ID__c"] for f in failed] == ["sub_1", "sub_2"]
    assert failed[0]["sf__Error"] == "REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --"
    assert failed[1]["sf__Error"].startswith(
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST:bad value for restricted"
    )
    ok = list(csv.DictReader(io.StringIO(sf.bulk2.Opportunity.get_successful_records(summary["job_id"]))))
    assert [(r["sf__Id"] == existing, r["sf__Created"]) for r in ok] == [(True, "false"), (False, "true")]
    updated = org.get("Opportunity", existing)
    assert (
        updated["Name"],
        updated["IsWon"],
        updated["Amount"],
        updated["CloseDate"],
        updated["AccountId"],
    ) == ("Updated", True, 5.0, "2025-01-01", account_id)  # empty cells leave fields alone
    assert org.get("Opportunity", ok[1]["sf__Id"])["Amount"] is None  # #N/A nulls


def test_bulk2_job_with_unknown_column_fails(sandbox: SalesforceSandbox) -> None:
    sf = client(sandbox)
    with pytest.raises(SalesforceOperationError, match="Field name not found : Bogus__c"):
        sf.bulk2.Account.insert(records=[{"Name": "A", "Bogus__c": "x"}], wait=0)
    assert sandbox.org.records("Account") == []
    s = sandbox.session()
    base = f"{sandbox.instance_url}/services/data/v{API}/jobs/ingest"
    headers = {"Authorization": f"Bearer {sandbox.access_token}", "Content-Type": "application/json"}
    bad = s.post(
        base,
        headers=headers,
        json={
            "object": "Account",
            "operation": "upsert",
            "externalIdFieldName": "Name",
            "contentType": "CSV",
        },
    )
    assert bad.status_code == 400


# ------------------------------------------------------------------------------------------ plumbing


def test_versions_describe_and_stop_cleans_up() -> None:
    sb = SalesforceSandbox().start()
    sf = client(sb)
    versions = sb.session().get(f"{sb.instance_url}/services/data/").json()
    assert any(v["version"] == API for v in versions)
    describe = sf.Account.describe()
    fields = {f["name"]: f for f in describe["fields"]}
    assert fields["Stripe_Customer_ID__c"]["externalId"] and fields["Name"]["length"] == 255
    assert fields["CSM__c"]["referenceTo"] == ["User"]
    assert fields["Subscription_Status__c"]["restrictedPicklist"]
    assert sb.requests_log[-1] == ("GET", f"/services/data/v{API}/sobjects/Account/describe")
    ca = sb.ca_path
    sb.stop()
    assert not os.path.exists(ca)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{sb.instance_url}/services/data/", timeout=1)


def test_composite_get_subrequests_bill_one_call_and_cap_queries():
    from simple_salesforce import Salesforce

    from stripe_sf_sandbox.salesforce_server import SalesforceSandbox

    with SalesforceSandbox() as sb:
        sf = Salesforce(instance_url=sb.instance_url, session_id=sb.access_token, session=sb.session(), version="62.0")
        before = sb.org.api_used
        q = "/services/data/v62.0/query?q=SELECT+Id+FROM+Account"
        body = {"compositeRequest": [{"method": "GET", "url": q, "referenceId": f"r{i}"} for i in range(5)]
                + [{"method": "GET", "url": "/services/data/v62.0/sobjects/Task/describe", "referenceId": "d"}]}
        result = sf.restful("composite", method="POST", json=body)
        assert sb.org.api_used == before + 1
        assert [r["httpStatusCode"] for r in result["compositeResponse"]] == [200] * 6
        bad = {"compositeRequest": [{"method": "GET", "url": q, "referenceId": f"r{i}"} for i in range(6)]}
        import pytest
        from simple_salesforce.exceptions import SalesforceMalformedRequest
        with pytest.raises(SalesforceMalformedRequest):
            sf.restful("composite", method="POST", json=bad)
