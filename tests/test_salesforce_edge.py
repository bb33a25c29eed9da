"""The Salesforce edge's one policy: the classification table, the retry policy (attempts, jitter, the log
line), session renewal, SOQL paging through simple-salesforce, and the two RecordWriters."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceOperationError,
    SalesforceRefusedRequest,
)

from stripe_sf_sync import service
from stripe_sf_sync.errors import BudgetSpent, ExitCode, FatalSyncError
from stripe_sf_sync.records import SfOp, WriteResult
from stripe_sf_sync.salesforce.gateway import SalesforceGateway
from stripe_sf_sync.salesforce.retry import CallRetriable, Failure, RetryPolicy, Verdict, classify, failure_of
from stripe_sf_sync.salesforce.writers import BulkWriter, CollectionsWriter

from .conftest import since

SF_503 = [{"message": "Server unavailable", "errorCode": "SERVER_UNAVAILABLE"}]
DAILY = "TotalRequests Limit exceeded."
CONCURRENT = "ConcurrentPerOrgLongTxn Limit exceeded."
RETRY_LINE = re.compile(r"Salesforce: (?P<reason>.+); retrying \(attempt (?P<n>\d+) of (?P<of>\d+)\) in "
                        r"(?P<wait>\d+\.\d) s")


# --- the table ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "code", "message", "verdict"), [
    # whole calls: the status decides
    (503, "SERVER_UNAVAILABLE", "", Verdict.RETRY),
    (500, "UNKNOWN", "", Verdict.RETRY),
    (502, "INVALID_FIELD", "", Verdict.RETRY),  # a 5xx is transient whatever its body says
    (429, "UNKNOWN", "", Verdict.RETRY),
    (401, "INVALID_SESSION_ID", "Session expired or invalid", Verdict.RENEW),
    (403, "REQUEST_LIMIT_EXCEEDED", DAILY, Verdict.FATAL),
    (403, "REQUEST_LIMIT_EXCEEDED", CONCURRENT, Verdict.RETRY),
    (403, "INSUFFICIENT_ACCESS", "", Verdict.FATAL),
    (403, "API_DISABLED_FOR_ORG", "", Verdict.FATAL),
    (400, "INVALID_FIELD", "No such column", Verdict.SKIP),
    (404, "NOT_FOUND", "", Verdict.SKIP),
    (300, "UNKNOWN", "", Verdict.SKIP),
    # records (no status): the code decides
    (None, "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access", Verdict.RETRY),
    (None, "SERVER_UNAVAILABLE", "", Verdict.RETRY),
    (None, "REQUEST_LIMIT_EXCEEDED", CONCURRENT, Verdict.RETRY),
    (None, "REQUEST_LIMIT_EXCEEDED", DAILY, Verdict.FATAL),
    (None, "INSUFFICIENT_ACCESS", "", Verdict.FATAL),
    (None, "INVALID_SESSION_ID", "", Verdict.RENEW),
    (None, "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY", "", Verdict.SKIP),  # the record's data
    (None, "REQUIRED_FIELD_MISSING", "", Verdict.SKIP),
    (None, "DUPLICATE_VALUE", "", Verdict.SKIP),
    (None, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", "", Verdict.SKIP),
])
def test_the_table_classifies_whole_calls_by_status_and_records_by_code(status, code, message, verdict):
    assert classify(status, code, message) is verdict


def body(code: str, message: str = "") -> list[dict[str, str]]:
    return [{"errorCode": code, "message": message}]


@pytest.mark.parametrize(("exc", "verdict", "code", "cause"), [
    # No HTTP answer: the cause in words (the host, when the exception carries its request; see
    # test_connection_failures.py for real sockets).
    (requests.ConnectionError("reset"), Verdict.RETRY, "CONNECTION_ERROR",
     "the connection to the server failed (ConnectionError)"),
    (requests.ReadTimeout("slow"), Verdict.RETRY, "TIMEOUT", "the server accepted the connection but did not answer"),
    (requests.ConnectionError(ConnectionRefusedError(111, "Connection refused")), Verdict.RETRY, "CONNECTION_REFUSED",
     "the server refused the connection (nothing listens on that port, or a firewall rejects it)"),
    (SalesforceGeneralError("u", 503, "query", body("SERVER_UNAVAILABLE")), Verdict.RETRY, "SERVER_UNAVAILABLE",
     "HTTP 503"),
    (SalesforceExpiredSession("u", 401, "query", body("INVALID_SESSION_ID")), Verdict.RENEW, "INVALID_SESSION_ID",
     "HTTP 401"),
    (SalesforceRefusedRequest("u", 403, "query", body("REQUEST_LIMIT_EXCEEDED", DAILY)), Verdict.FATAL,
     "REQUEST_LIMIT_EXCEEDED", "HTTP 403"),
    (SalesforceMalformedRequest("u", 400, "query", body("MALFORMED_QUERY")), Verdict.SKIP, "MALFORMED_QUERY",
     "HTTP 400"),
    (SalesforceAuthenticationFailed("invalid_grant", "authentication failure"), Verdict.FATAL, "invalid_grant",
     "login refused"),
    (SalesforceOperationError("Job failure. Response content: InvalidBatch"), Verdict.SKIP, None,
     "SalesforceOperationError"),
])
def test_what_simple_salesforce_raises_is_classified_in_one_place(exc, verdict, code, cause):
    failure = failure_of(exc)
    assert failure is not None
    assert (failure.verdict, failure.code, failure.cause) == (verdict, code, cause)


def test_anything_else_is_no_salesforce_failure():
    assert failure_of(ValueError("a bug")) is None


# --- the retry policy ------------------------------------------------------------------------------------

def always_503() -> None:
    raise CallRetriable(Failure(Verdict.RETRY, "SERVER_UNAVAILABLE", "busy", "HTTP 503"), "a query")


def test_the_policy_tries_a_known_number_of_times_then_raises_the_last_failure():
    calls, sleeps = [], []

    def attempt() -> None:
        calls.append(1)
        always_503()

    with pytest.raises(CallRetriable):
        RetryPolicy(5, sleeps.append).run(attempt)
    assert len(calls) == 5 and len(sleeps) == 4


def test_the_policy_returns_as_soon_as_a_try_succeeds_and_never_retries_other_errors():
    outcomes: list[Any] = [always_503, always_503, lambda: "done"]
    assert RetryPolicy(5, lambda s: None).run(lambda: outcomes.pop(0)()) == "done"
    tries = []

    def fatal() -> None:
        tries.append(1)
        raise FatalSyncError("stop")

    with pytest.raises(FatalSyncError):
        RetryPolicy(5, lambda s: None).run(fatal)
    assert tries == [1]


def test_the_backoff_is_full_jitter_within_an_exponential_window_capped_at_ten_seconds():
    runs: list[list[float]] = []
    for _ in range(200):
        sleeps: list[float] = []
        with pytest.raises(CallRetriable):
            RetryPolicy(8, sleeps.append).run(always_503)
        runs.append(sleeps)
    for n in range(7):
        waits = [run[n] for run in runs]
        high = min(10.0, 0.5 * 2 ** n)
        assert all(0.0 <= w <= high for w in waits), (n, max(waits))
        # Jitter: the waits spread over the window instead of all landing on its edge.
        assert min(waits) < high / 4 and max(waits) > high * 3 / 4


def test_each_retry_logs_its_reason_the_next_attempt_and_the_wait(caplog):
    sleeps: list[float] = []
    with caplog.at_level(logging.WARNING, logger="stripe_sf_sync"), pytest.raises(CallRetriable):
        RetryPolicy(3, sleeps.append).run(always_503)
    lines = [RETRY_LINE.fullmatch(r.getMessage()) for r in caplog.records]
    assert all(lines) and len(lines) == 2
    assert [(m["reason"], m["n"], m["of"]) for m in lines if m] == [
        ("HTTP 503 SERVER_UNAVAILABLE on a query", "2", "3"), ("HTTP 503 SERVER_UNAVAILABLE on a query", "3", "3")]
    assert [m["wait"] for m in lines if m] == [f"{s:.1f}" for s in sleeps]


# --- the gateway against the stand-in --------------------------------------------------------------------

def gateway(sf_sb: Any, org: Any, **kw: Any) -> SalesforceGateway:
    def login() -> Salesforce:
        return Salesforce(instance_url=sf_sb.instance_url, session_id=org.new_access_token(),
                          session=sf_sb.session(), version="62.0")
    kw.setdefault("sleep", lambda s: None)
    return SalesforceGateway(login(), **kw)


def test_a_transient_failure_is_retried_and_logged(sf_sb, org, caplog):
    gw = gateway(sf_sb, org)
    sf_sb.faults.fail_matching("GET", r"/query", 503, SF_503, times=2)
    with caplog.at_level(logging.WARNING, logger="stripe_sf_sync"):
        assert gw.query("SELECT Id FROM Account") is not None
    assert gw.usage.calls == 3
    reasons = [m["reason"] for m in (RETRY_LINE.fullmatch(r.getMessage()) for r in caplog.records) if m]
    assert reasons == ["HTTP 503 SERVER_UNAVAILABLE on a query"] * 2


def test_a_call_that_keeps_failing_is_tried_exactly_max_attempts_times_then_stops_the_run(sf_sb, org):
    gw = gateway(sf_sb, org)
    sf_sb.faults.fail_matching("GET", r"/query", 503, SF_503, times=100)
    with pytest.raises(FatalSyncError) as info:
        gw.query("SELECT Id FROM Account")
    assert gw.usage.calls == 5
    assert info.value.code == "SERVER_UNAVAILABLE"
    assert "Salesforce kept failing (HTTP 503, SERVER_UNAVAILABLE" in str(info.value)
    assert "after 5 attempts" in str(info.value) and "Nothing was lost" in str(info.value)


def test_the_daily_limit_stops_at_once_and_a_rejected_query_names_the_config(sf_sb, org):
    gw = gateway(sf_sb, org)
    sf_sb.faults.fail_matching("GET", r"/query", 403, body("REQUEST_LIMIT_EXCEEDED", DAILY))
    with pytest.raises(FatalSyncError) as info:
        gw.query("SELECT Id FROM Account")
    assert gw.usage.calls == 1 and info.value.code == "REQUEST_LIMIT_EXCEEDED"
    assert "daily API allowance" in str(info.value)
    with pytest.raises(FatalSyncError) as info:
        gw.query("SELECT Nope__c FROM Account")
    assert info.value.code == "INVALID_FIELD" and "salesforce.fields" in str(info.value)


def test_an_expired_session_is_renewed_once(sf_sb, org):
    logins: list[str] = []

    def reconnect(token: str | None = None) -> Salesforce:
        logins.append("login")
        return Salesforce(instance_url=sf_sb.instance_url, session_id=token or org.new_access_token(),
                          session=sf_sb.session(), version="62.0")

    gw = gateway(sf_sb, org, reconnect=reconnect)
    org.expire_sessions()
    assert gw.query("SELECT Id FROM Account") is not None
    assert logins == ["login"]
    # A renewed session that is refused too stops the run: one login, not one per attempt.
    refused = gateway(sf_sb, org, reconnect=lambda: reconnect("00Dbogus!token"))
    org.expire_sessions()
    with pytest.raises(FatalSyncError) as info:
        refused.query("SELECT Id FROM Account")
    assert logins == ["login", "login"] and info.value.code == "INVALID_SESSION_ID"
    assert "client credentials" in str(info.value)


def test_soql_pages_through_simple_salesforce_for_queries_and_composite_sub_queries(sf_sb, org):
    for n in range(2_100):  # the stand-in, like Salesforce, answers 2,000 records a page
        org.insert("Account", {"Name": f"Paged {n}", "Stripe_Customer_ID__c": f"cus_paged{n:05d}"})
    total = len(org.records("Account"))
    gw = gateway(sf_sb, org)
    assert len(gw.query("SELECT Id FROM Account")) == total
    assert gw.usage.calls == 2  # the query, then query_more
    accounts, contacts = gw.query_many(["SELECT Id FROM Account", "SELECT Id FROM Contact"])
    assert len(accounts) == total and len({r["Id"] for r in accounts}) == total
    assert len(contacts) == len(org.records("Contact"))
    assert gw.usage.calls == 4  # one Composite call, then query_more for the sub-query's next page
    paths = [p for _, p in sf_sb.requests_log[-2:]]
    assert paths[0].endswith("/composite") and re.search(r"/query/01g\w+-2000$", paths[1])


def test_one_pager_retries_a_failed_page_on_its_own_and_names_it(sf_sb, org, caplog):
    """Every SOQL read (queries, a Composite sub-query's later pages, reconcile's) goes through `pages_after`: a
    page that fails transiently is read again by itself, not the query from its first page."""
    for n in range(2_100):
        org.insert("Account", {"Name": f"Paged {n}", "Stripe_Customer_ID__c": f"cus_paged{n:05d}"})
    gw = gateway(sf_sb, org)
    sf_sb.faults.fail_matching("GET", r"/query/01g\w+-2000", 503, SF_503, times=1)
    with caplog.at_level(logging.WARNING, logger="stripe_sf_sync"):
        pages = list(gw.pages("SELECT Id FROM Account", what="a reconcile query"))
    assert [len(p) for p in pages] == [2_000, len(org.records("Account")) - 2_000]
    assert gw.usage.calls == 3  # the query, the failed next page, the next page again
    reasons = [m["reason"] for m in (RETRY_LINE.fullmatch(r.getMessage()) for r in caplog.records) if m]
    assert reasons == ["HTTP 503 SERVER_UNAVAILABLE on the next page of a reconcile query"]


class FakeSalesforce:
    """Answers Composite calls from a script (the stand-in fails whole requests, never one sub-request)."""

    sf_version = "62.0"

    def __init__(self, *answers: list[tuple[int, Any]]) -> None:
        self.session = requests.Session()
        self.answers = list(answers)

    def restful(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        assert (path, method) == ("composite", "POST")
        subs = self.answers.pop(0)
        return {"compositeResponse": [{"httpStatusCode": status, "referenceId": f"q{i}", "body": b}
                                      for i, (status, b) in enumerate(subs)]}


def page(*ids: str) -> dict[str, Any]:
    return {"done": True, "totalSize": len(ids), "records": [{"Id": i} for i in ids]}


def test_a_failed_sub_request_is_classified_like_a_call_of_its_own():
    flaky = FakeSalesforce([(200, page("001A")), (503, body("SERVER_UNAVAILABLE"))],
                           [(200, page("001A")), (200, page("003B"))])
    gw = SalesforceGateway(flaky, sleep=lambda s: None)  # type: ignore[arg-type]
    assert gw.query_many(["SELECT Id FROM Account", "SELECT Id FROM Contact"]) == [[{"Id": "001A"}], [{"Id": "003B"}]]
    bad_field = FakeSalesforce([(200, page()), (400, body("INVALID_FIELD", "No such column 'Nope__c'"))])
    with pytest.raises(FatalSyncError) as info:
        SalesforceGateway(bad_field, sleep=lambda s: None).query_many(["a", "b"])  # type: ignore[arg-type]
    assert str(info.value).startswith("Salesforce rejected a lookup query: INVALID_FIELD No such column")
    assert info.value.hint == "Check the field names under salesforce.fields in the config."


# --- the writers -------------------------------------------------------------------------------------------

def test_row_locks_are_retried_with_jitter_and_logged_then_dead_lettered_if_they_never_clear(sf_sb, org, caplog):
    ids = [org.insert("Account", {"Name": f"Locked {n}", "Stripe_Customer_ID__c": f"cus_lock{n}"}) for n in range(4)]
    for acct in ids[:3]:
        sf_sb.faults.lock_rows("Account", acct, times=1)
    sleeps: list[float] = []
    writer = CollectionsWriter(gateway(sf_sb, org), sleep=sleeps.append)
    ops = [SfOp("update", "Account", acct, {"Subscription_Status__c": "active"}) for acct in ids]
    with caplog.at_level(logging.WARNING, logger="stripe_sf_sync"):
        assert all(r.success for r in writer.write(ops))
    [line] = [m for m in (RETRY_LINE.fullmatch(r.getMessage()) for r in caplog.records) if m]
    assert (line["reason"], line["n"], line["of"]) == ("UNABLE_TO_LOCK_ROW on 3 Account records", "2", "5")
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.5
    requests_before = len(sf_sb.requests_log)
    sf_sb.faults.lock_rows("Account", ids[0], times=1000)
    results = writer.write(ops[:2])
    assert results[0].code == "UNABLE_TO_LOCK_ROW" and results[1].success  # dead-lettered, not fatal
    assert len(sf_sb.requests_log) - requests_before == 5  # one call, then four for the locked record alone


class ScriptedGateway:
    """A gateway whose collections calls answer from a script: a list of per-record codes (None: success)
    or an exception, one entry per call."""

    max_attempts = 5

    def __init__(self, *script: list[str | None] | Exception) -> None:
        self.script = list(script)
        self.sent: list[list[str]] = []

    def write_chunk(self, kind: str, sobject: str, ext: str | None, ops: list[SfOp]) -> list[WriteResult]:
        self.sent.append([op.key for op in ops])
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(answer, Exception):
            raise answer
        return [WriteResult(True, record_id=op.key) if code is None else WriteResult(False, code=code, message=msg)
                for op, (code, msg) in zip(ops, [(c, CONCURRENT if c == "REQUEST_LIMIT_EXCEEDED" else "x")
                                                 for c in answer], strict=True)]


def updates(n: int) -> list[SfOp]:
    return [SfOp("update", "Account", f"001{i:015d}", {"Subscription_Status__c": "active"}) for i in range(n)]


def test_the_concurrent_request_cap_on_records_is_retried_and_stops_the_run_if_it_persists():
    gw = ScriptedGateway(["REQUEST_LIMIT_EXCEEDED", None], [None])
    assert all(r.success for r in CollectionsWriter(gw, sleep=lambda s: None).write(updates(2)))  # type: ignore[arg-type]
    assert gw.sent == [[f"001{0:015d}", f"001{1:015d}"], [f"001{0:015d}"]]
    stuck = ScriptedGateway(["REQUEST_LIMIT_EXCEEDED"])
    with pytest.raises(FatalSyncError) as info:
        CollectionsWriter(stuck, sleep=lambda s: None).write(updates(1))  # type: ignore[arg-type]
    assert info.value.code == "REQUEST_LIMIT_EXCEEDED" and len(stuck.sent) == 5
    assert "refused a Account write" in str(info.value)


def test_a_fatal_record_code_stops_the_run_at_once():
    gw = ScriptedGateway(["INSUFFICIENT_ACCESS", None])
    with pytest.raises(FatalSyncError) as info:
        CollectionsWriter(gw, sleep=lambda s: None).write(updates(2))  # type: ignore[arg-type]
    assert info.value.code == "INSUFFICIENT_ACCESS" and len(gw.sent) == 1


def test_a_transient_call_failure_resends_only_that_call_and_stops_the_run_if_it_persists():
    busy = CallRetriable(Failure(Verdict.RETRY, "SERVER_UNAVAILABLE", "busy", "HTTP 503"), "Account updates")
    gw = ScriptedGateway([None] * 200, busy, [None] * 50)
    results = CollectionsWriter(gw, workers=1, sleep=lambda s: None).write(updates(250))  # type: ignore[arg-type]
    assert all(r.success for r in results) and [len(keys) for keys in gw.sent] == [200, 50, 50]
    down = ScriptedGateway(busy)
    with pytest.raises(FatalSyncError) as info:
        CollectionsWriter(down, sleep=lambda s: None).write(updates(1))  # type: ignore[arg-type]
    assert len(down.sent) == 5 and info.value.code == "SERVER_UNAVAILABLE"
    assert "kept failing (HTTP 503, SERVER_UNAVAILABLE, busy) after 5 attempts at Account updates" in str(info.value)


def test_bulk_writer_sends_updates_as_a_job_and_creates_through_collections_in_order(sf_sb, org):
    acct = org.insert("Account", {"Name": "Bulk", "Stripe_Customer_ID__c": "cus_bulk0001"})
    ops = [SfOp("create", "Task", "evt_bulk:status", {"Subject": "Bulk", "WhatId": acct,
                                                      "Stripe_Event_ID__c": "evt_bulk:status"}),
           SfOp("update", "Account", acct, {"Subscription_Status__c": "past_due"}),
           SfOp("update", "Account", acct[:15] + "ZZZ", {"Subscription_Status__c": "active"})]
    start = len(sf_sb.requests_log)
    results = BulkWriter(gateway(sf_sb, org, bulk_poll_seconds=0)).write(ops)
    assert [r.success for r in results] == [True, True, False]
    assert results[2].code in {"INVALID_CROSS_REFERENCE_KEY", "MALFORMED_ID", "NOT_FOUND", "ENTITY_IS_DELETED"}
    assert org.get("Account", acct)["Subscription_Status__c"] == "past_due"
    assert [t["Subject"] for t in org.records("Task") if t.get("Stripe_Event_ID__c") == "evt_bulk:status"] == ["Bulk"]
    paths = [(m, p) for m, p in sf_sb.requests_log[start:]]
    assert any("/jobs/ingest" in p for _, p in paths)
    assert paths[-1][0] == "POST" and paths[-1][1].rstrip("/").endswith("/composite/sobjects")  # the create, last


def test_no_write_is_sent_at_or_over_the_api_budget_even_before_any_response_told_the_usage(sf_sb, org):
    """The writers refuse to send once usage reaches the budget. A write that no response preceded (here, the
    gateway's very first call) asks for the usage first, with the lightest call on the sObject."""
    acct = org.insert("Account", {"Name": "Budget", "Stripe_Customer_ID__c": "cus_budget01"})
    org.api_used = 80_000  # exactly at a budget of 0.8: at the budget, nothing is written
    ops = [SfOp("update", "Account", acct, {"Subscription_Status__c": "past_due"})]
    for writer in (CollectionsWriter(gateway(sf_sb, org)), BulkWriter(gateway(sf_sb, org, bulk_poll_seconds=0))):
        start = len(sf_sb.requests_log)
        with pytest.raises(BudgetSpent) as info:
            writer.write(ops)
        assert info.value.exit_code == ExitCode.UNAVAILABLE and "budget of 80%" in str(info.value)
        assert [m for m, _ in sf_sb.requests_log[start:]] == ["GET"]  # the usage, then no write
        assert sf_sb.requests_log[start][1].rstrip("/").endswith("/sobjects/Account")
    assert org.get("Account", acct)["Subscription_Status__c"] is None
    org.api_used = 0
    assert [r.success for r in CollectionsWriter(gateway(sf_sb, org)).write(ops)] == [True]


# --- through the pipeline ----------------------------------------------------------------------------------

def test_a_sync_logs_each_row_lock_retry_with_its_reason_and_attempt(config, env, sc, sf_sb, caplog):
    sf_sb.faults.lock_rows("Account", sc.accounts["acme"], times=2)
    with caplog.at_level(logging.WARNING, logger="stripe_sf_sync"):
        summary = service.run_sync(config, env, since=since(sc), dry_run=False, max_events=None)
    assert summary.dead_lettered == 1  # only Hooli, as in a run without locks
    retries = [m for m in (RETRY_LINE.fullmatch(r.getMessage()) for r in caplog.records) if m]
    assert [(m["reason"], m["n"]) for m in retries] == [("UNABLE_TO_LOCK_ROW on 1 Account record", "2"),
                                                        ("UNABLE_TO_LOCK_ROW on 1 Account record", "3")]

