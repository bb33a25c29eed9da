"""What a batch's payloads lack is fetched per batch, not per event: customer details kept in state
(from customer.* events, backfill and earlier reads), and one invoice-payments listing per batch."""

from __future__ import annotations

import threading
import time

import pytest

from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sync import service
from stripe_sf_sync.model import CachedCustomer
from stripe_sf_sync.state import StateStore

from .conftest import since, write_config

DAY = 86400


def run(config, env, **kw):
    kw.setdefault("since", None)
    return service.run_sync(config, env, dry_run=False, max_events=None, **kw)


def day(ts: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def stripe_paths(sb, start: int = 0) -> list[str]:
    return [path for _, path, _ in sb.requests_log[start:]]


def configured(tmp_path, env):
    config = write_config(tmp_path / "sync.yaml")
    service.run_discover(config, env, write=True, example=config.read_text())
    return config


def test_customer_events_keep_metadata_current_without_reads(tmp_path, env, org, stripe_sb):
    f = StripeFactory(stripe_sb, seed=21)
    t = int(time.time()) - 2 * DAY
    first = org.insert("Account", {"Name": "Linked by metadata"})
    second = org.insert("Account", {"Name": "Relinked later"})
    cus = f.customer("Meta Co", "m@example.com", metadata={"salesforce_account_id": first}, created=t)
    f.emit("customer.created", cus, t)
    price = f.price(3000)
    sub = f.subscription(cus["id"], [(price, 1)], created=t + 60)
    f.subscription_created(sub, t + 60)
    config = configured(tmp_path, env)
    mark = len(stripe_sb.requests_log)

    summary = run(config, env, since=day(t - DAY))
    assert summary.applied == 1 and summary.ignored == 1  # the customer event writes nothing itself
    assert not [p for p in stripe_paths(stripe_sb, mark) if p.startswith("/v1/customers/")]
    [opp] = org.records("Opportunity")
    assert opp["AccountId"] == first

    # The metadata is changed in Stripe: the customer.updated event is all the next run needs.
    cus["metadata"] = {"salesforce_account_id": second}
    f.emit("customer.updated", cus, t + 120, previous_attributes={"metadata": {"salesforce_account_id": first}})
    later = f.subscription(cus["id"], [(price, 2)], created=t + 180)
    f.subscription_created(later, t + 180)
    mark = len(stripe_sb.requests_log)
    summary = run(config, env)
    assert summary.applied == 1
    assert not [p for p in stripe_paths(stripe_sb, mark) if p.startswith("/v1/customers/")]
    newer = next(o for o in org.records("Opportunity") if o["Stripe_Subscription_ID__c"] == later["id"])
    assert newer["AccountId"] == second
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        assert st.customers_for([cus["id"]])[cus["id"]].metadata == {"salesforce_account_id": second}


def test_a_customer_is_read_once_then_kept_in_state(tmp_path, env, org, stripe_sb):
    f = StripeFactory(stripe_sb, seed=22)
    t = int(time.time()) - 2 * DAY
    cus = f.customer("Quiet Co", "q@example.com", created=t - 90 * DAY)  # no event of its own in the window
    org.insert("Account", {"Name": "Quiet Co", "Stripe_Customer_ID__c": cus["id"]})
    sub = f.subscription(cus["id"], [(f.price(1000), 1)], created=t)
    f.subscription_created(sub, t)
    config = configured(tmp_path, env)
    mark = len(stripe_sb.requests_log)
    run(config, env, since=day(t - DAY))
    f.subscription_updated(sub["id"], {"status": "past_due"}, t + 3600)
    run(config, env)
    reads = [p for p in stripe_paths(stripe_sb, mark) if p.startswith("/v1/customers/")]
    assert reads == [f"/v1/customers/{cus['id']}"]  # the second run found it in state


def test_one_listing_links_a_batch_of_payments_and_failures(tmp_path, env, org, stripe_sb):
    f = StripeFactory(stripe_sb, seed=23)
    t = int(time.time()) - 2 * DAY
    cus = f.customer("Mixed Co", "x@example.com", created=t - 90 * DAY)
    acct = org.insert("Account", {"Name": "Mixed Co", "Stripe_Customer_ID__c": cus["id"]})
    price = f.price(5000)
    sub = f.subscription(cus["id"], [(price, 1)], created=t - 60 * DAY)
    one_time = []
    for i in range(3):
        pi = f.payment_intent(cus["id"], 1000 * (i + 1), "usd", status="requires_payment_method", created=t + i)
        f.payment_succeeded(pi["id"], t + 100 + i)
        one_time.append(pi["id"])
    renewal = f.payment_intent(cus["id"], 5000, "usd", status="requires_payment_method", created=t + 200)
    f.invoice(sub["id"], cus["id"], 5000, "usd", created=t + 200, payment_intent=renewal["id"])
    f.payment_succeeded(renewal["id"], t + 210)
    for k, code in enumerate(("insufficient_funds", "expired_card")):
        inv = f.invoice(sub["id"], cus["id"], 5000, "usd", created=t + 300 + k)
        f.invoice_payment_failed(inv["id"], t + 400 + k, decline_code=code)
    config = configured(tmp_path, env)
    mark = len(stripe_sb.requests_log)

    summary = run(config, env, since=day(t - DAY))
    assert (summary.applied, summary.ignored, summary.dead_lettered) == (5, 1, 0)  # the renewal is no win
    paths = stripe_paths(stripe_sb, mark)
    # One listing around the batch, and, the events being two days old, one of the PaymentIntent payments
    # created since (a late attach: `stripe/_invoice.py` attach_payment) instead of one lookup per one-time payment.
    assert paths.count("/v1/invoice_payments") == 2
    assert not [p for p in paths if p.startswith("/v1/invoices/")]
    window, since_then = (params for _, path, params in stripe_sb.requests_log[mark:]
                          if path == "/v1/invoice_payments")
    assert set(window["created"]) == {"gte", "lte"}  # a window around the batch, not the whole account
    assert set(since_then["created"]) == {"gt", "lte"} and since_then["payment"] == {"type": "payment_intent"}
    won = {o["Stripe_Payment_Intent_ID__c"] for o in org.records("Opportunity")}
    assert won == set(one_time)
    descriptions = sorted(t["Description"] for t in org.records("Task") if t["WhatId"] == acct)
    assert "insufficient_funds" in descriptions[0] + descriptions[1]
    assert "expired_card" in descriptions[0] + descriptions[1]


def test_a_retry_whose_payment_is_older_than_the_batch_is_read_on_its_own(tmp_path, env, org, stripe_sb):
    f = StripeFactory(stripe_sb, seed=24)
    t = int(time.time()) - 6 * DAY
    cus = f.customer("Retry Co", "r@example.com", created=t - 90 * DAY)
    acct = org.insert("Account", {"Name": "Retry Co", "Stripe_Customer_ID__c": cus["id"]})
    sub = f.subscription(cus["id"], [(f.price(7000), 1)], created=t - 60 * DAY)
    inv = f.invoice(sub["id"], cus["id"], 7000, "usd", created=t)
    f.invoice_payment_failed(inv["id"], t, decline_code="insufficient_funds")  # before --since: not synced
    f.invoice_payment_failed(inv["id"], t + 4 * DAY, decline_code="do_not_honor", attempt_count=2)
    config = configured(tmp_path, env)
    mark = len(stripe_sb.requests_log)
    summary = run(config, env, since=day(t + 3 * DAY))
    assert summary.applied == 1
    assert f"/v1/invoices/{inv['id']}" in stripe_paths(stripe_sb, mark)
    [task] = [t for t in org.records("Task") if t["WhatId"] == acct]
    assert "do_not_honor" in task["Description"]


def test_customer_cache_keeps_the_newest_version(tmp_path):
    with StateStore.open(tmp_path / "s.sqlite") as st:
        st.remember_customers([CachedCustomer("cus_A", {"salesforce_account_id": "new"}, "A", False, 200)])
        st.remember_customers([CachedCustomer("cus_A", {"salesforce_account_id": "old"}, "A", False, 100)])
        assert st.customers_for(["cus_A", "cus_B"]) == {
            "cus_A": CachedCustomer("cus_A", {"salesforce_account_id": "new"}, "A", False, 200)}


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_pacer_lets_a_burst_through_and_holds_any_second_to_the_limit():
    from stripe_sf_sync.stripe.source import Pacer

    t = FakeTime()
    pacer = Pacer(20, clock=t.clock, sleep=t.sleep)
    sent = []
    for _ in range(70):
        pacer.wait()
        sent.append(t.now)
        t.now += 0.001  # each request itself takes a millisecond
    assert t.slept[0] > 0.9 and len([s for s in sent if s < 101.0]) == 20  # the first 20 at once
    assert all(sum(1 for s in sent if a <= s < a + 1.0) <= 20 for a in sent)  # never 21 in a second
    assert 3.0 <= sent[-1] - sent[0] < 3.1  # 70 requests at 20/s: three windows of waiting


def test_pacer_with_a_fractional_rate_spaces_requests():
    from stripe_sf_sync.stripe.source import Pacer

    t = FakeTime()
    pacer = Pacer(0.5, clock=t.clock, sleep=t.sleep)
    for _ in range(3):
        pacer.wait()
    assert t.now - 100.0 == 4.0  # one request per two seconds


@pytest.mark.parametrize("second", ["same", "older"])
def test_a_page_that_does_not_move_forward_stops_the_run(second):
    from stripe_sf_sync.errors import FatalSyncError
    from stripe_sf_sync.stripe.source import StripeSource

    newer = {"data": [{"id": f"evt_n{i}", "created": 200 - i} for i in range(3)], "has_more": True}
    older = {"data": [{"id": f"evt_o{i}", "created": 100 - i} for i in range(3)], "has_more": True}
    pages = iter([newer, newer if second == "same" else older])
    source = StripeSource(None, api_version="2025-03-31")  # type: ignore[arg-type]  # no request reaches it
    source.client.get = lambda *a, **k: next(pages)  # type: ignore[method-assign]
    got = []
    with pytest.raises(FatalSyncError, match="same page"):
        for event in source.events_after("evt_start"):
            got.append(event["id"])
    assert got == ["evt_n2", "evt_n1", "evt_n0"]


@pytest.mark.parametrize(("in_salesforce", "written"), [("active", False), ("canceled", True)])
def test_account_status_is_written_only_when_salesforce_differs(tmp_path, env, org, stripe_sb, sf_sb,
                                                                in_salesforce, written):
    f = StripeFactory(stripe_sb, seed=25)
    t = int(time.time()) - 2 * DAY
    cus = f.customer("Steady Co", "s@example.com", created=t - 90 * DAY)
    acct = org.insert("Account", {"Name": "Steady Co", "Stripe_Customer_ID__c": cus["id"],
                                  "Subscription_Status__c": in_salesforce})
    sub = f.subscription(cus["id"], [(f.price(4000), 1)], created=t)
    f.subscription_created(sub, t)
    config = configured(tmp_path, env)
    mark = len(sf_sb.requests_log)
    summary = run(config, env, since=day(t - DAY))
    assert summary.applied == 1 and len(org.records("Opportunity")) == 1
    account_updates = [r for r in sf_sb.requests_log[mark:] if r[0] == "PATCH" and r[1].endswith("/composite/sobjects")]
    assert bool(account_updates) is written  # an unchanged status costs no call; a hand edit is put right
    assert org.get("Account", acct)["Subscription_Status__c"] == "active"


def test_later_batches_of_a_run_reuse_the_accounts_it_already_read(tmp_path, env, org, stripe_sb, monkeypatch):
    from stripe_sf_sync.salesforce.gateway import SalesforceGateway

    f = StripeFactory(stripe_sb, seed=26)
    t = int(time.time()) - 2 * DAY
    cus = f.customer("Busy Co", "b@example.com", created=t - 90 * DAY)
    acct = org.insert("Account", {"Name": "Busy Co", "Stripe_Customer_ID__c": cus["id"]})
    sub = f.subscription(cus["id"], [(f.price(2000), 1)], created=t)
    f.subscription_created(sub, t)
    for k, status in enumerate(["past_due", "active", "past_due", "active", "past_due"]):
        f.subscription_updated(sub["id"], {"status": status}, t + 3600 * (k + 1))
    config = write_config(tmp_path / "sync.yaml", **{"batch_size: 10000": "batch_size: 2"})
    service.run_discover(config, env, write=True, example=config.read_text())
    queries: list[str] = []
    real = SalesforceGateway.query_many

    def spy(self, soql, **kw):
        queries.extend(soql)
        return real(self, soql, **kw)

    monkeypatch.setattr(SalesforceGateway, "query_many", spy)
    summary = run(config, env, since=day(t - DAY))
    assert summary.applied == 6
    account_queries = [q for q in queries if q.startswith("SELECT") and "FROM Account" in q]
    # Merged-away Accounts (issue 25) ride along in the same Composite call as the look-up, never in a call of their
    # own: they are not a second look-up.
    merged = [q for q in account_queries if "MasterRecordId != null" in q]
    assert len(account_queries) - len(merged) == 1 and len(merged) <= 1  # three batches, one Account look-up
    assert org.get("Account", acct)["Subscription_Status__c"] == "past_due"  # every transition written
    assert len([t for t in org.records("Task") if t["WhatId"] == acct]) == 5


def test_collection_calls_of_one_kind_run_a_few_at_once_grouped_by_account():
    from stripe_sf_sync.records import SfOp, WriteResult
    from stripe_sf_sync.salesforce.writers import CollectionsWriter

    class FakeGateway:
        max_attempts = 5

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.in_flight = self.most = 0
            self.calls: list[tuple[str, list[str]]] = []

        def write_chunk(self, kind, sobject, ext, ops):
            with self.lock:
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
                self.calls.append((sobject, [op.fields.get("WhatId") or op.key for op in ops]))
            time.sleep(0.05)
            with self.lock:
                self.in_flight -= 1
            return [WriteResult(True, record_id=op.key) for op in ops]

    accounts = [f"001{i:015d}" for i in range(7)]
    tasks = [SfOp("upsert", "Task", f"evt_{n}", {"WhatId": accounts[n % 7]}, "Stripe_Event_ID__c") for n in range(700)]
    updates = [SfOp("update", "Account", a, {"Subscription_Status__c": "active"}) for a in accounts]
    gw = FakeGateway()
    results = CollectionsWriter(gw, workers=3).write(tasks + updates)  # type: ignore[arg-type]
    assert [r.record_id for r in results] == [op.key for op in tasks + updates]  # in the ops' order
    assert gw.most == 3  # four Task calls, three at a time
    # The Account updates start only after every Task call has returned (crash-safety order).
    assert [s for s, _ in gw.calls] == ["Task"] * 4 + ["Account"]
    # Sorted by parent: each Account's 100 Tasks sit in at most two calls.
    for a in accounts:
        assert sum(1 for s, parents in gw.calls if s == "Task" and a in parents) <= 2


def test_a_payment_attached_to_an_invoice_long_after_it_succeeded_wins_no_opportunity(config, env, org, sc,
                                                                                        stripe_sb):
    """An InvoicePayment is created when the PaymentIntent is attached, which can be days after it
    succeeded (`stripe/_invoice.py` attach_payment). A run that reads the payment after the attach must see
    the invoice, even when the attach is far outside the batch's own time window."""
    f = StripeFactory(stripe_sb, seed=41)
    now = int(time.time())
    cus = sc.customers["acme"]
    pi = f.payment_intent(cus, 99900, "usd", status="requires_payment_method", created=now - 3 * 86400)
    sc.events.append(f.payment_succeeded(pi["id"], now - 3 * 86400 + 30)["id"])
    inv = f.invoice(sc.subscriptions["acme"], cus, 99900, "usd", created=now - 700)
    f.attach_payment(inv["id"], pi["id"], now - 600)
    summary = service.run_sync(config, env, since=since(sc), dry_run=False, max_events=None)
    assert not [o for o in org.records("Opportunity") if o.get("Stripe_Payment_Intent_ID__c") == pi["id"]]
    assert summary.dead_lettered == 1  # Hooli, as always


def test_a_cron_run_pays_nothing_for_late_attaches(tmp_path, env, org, stripe_sb):
    """Events younger than the listing's margin: the window already reaches now, so no second listing."""
    f = StripeFactory(stripe_sb, seed=25)
    now = int(time.time())
    cus = f.customer("Fresh Co", "f@example.com", created=now - 90 * DAY)
    org.insert("Account", {"Name": "Fresh Co", "Stripe_Customer_ID__c": cus["id"]})
    pi = f.payment_intent(cus["id"], 4200, "usd", status="requires_payment_method", created=now - 300)
    f.payment_succeeded(pi["id"], now - 240)
    config = configured(tmp_path, env)
    mark = len(stripe_sb.requests_log)
    summary = run(config, env, since=day(now - DAY))
    assert summary.applied == 1
    assert stripe_paths(stripe_sb, mark).count("/v1/invoice_payments") == 1


def test_later_batches_reuse_the_run_s_listing_of_late_attaches(tmp_path, env, org, stripe_sb):
    """Batches move forward in time, so the span after a later batch's window is inside the first one's:
    the PaymentIntent payments since then are listed once a run, not once a batch."""
    f = StripeFactory(stripe_sb, seed=26)
    now = int(time.time())
    cus = f.customer("Batch Co", "b@example.com", created=now - 90 * DAY)
    org.insert("Account", {"Name": "Batch Co", "Stripe_Customer_ID__c": cus["id"]})
    pis = []
    for i in range(12):  # four a day: each batch of four gets a window of its own
        at = now - (4 - i // 4) * DAY + (i % 4) * 60
        pi = f.payment_intent(cus["id"], 1000 + i, "usd", status="requires_payment_method", created=at)
        f.payment_succeeded(pi["id"], at + 30)
        pis.append(pi["id"])
    for k in range(10):  # invoices paid in between
        inv = f.invoice(None, cus["id"], 500, "usd", created=now - 4 * DAY + k * 3 * 3600, billing_reason="manual")
        f.invoice_paid(inv["id"], now - 4 * DAY + k * 3 * 3600 + 60)
    late = f.invoice(None, cus["id"], 1011, "usd", created=now - 700, billing_reason="manual")
    f.attach_payment(late["id"], pis[11], now - 600)
    config = configured(tmp_path, env)
    config.write_text(config.read_text().replace("batch_size: 10000", "batch_size: 4"))
    mark = len(stripe_sb.requests_log)
    summary = run(config, env, since=day(now - 5 * DAY))
    assert summary.applied == 11 and summary.ignored == 1  # the late-attached one paid an invoice
    listings = [params for _, path, params in stripe_sb.requests_log[mark:] if path == "/v1/invoice_payments"]
    windows = [p for p in listings if "gte" in p.get("created", {})]
    since_then = [p for p in listings if "gt" in p.get("created", {})]
    lookups = [p for p in listings if "payment_intent" in p.get("payment", {})]
    assert (len(windows), len(since_then), len(lookups)) == (3, 1, 0)
