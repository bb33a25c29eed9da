"""Refunds and disputes lower what was collected (issue 22 §1, §3): through the CLI's `sync` against both
stand-ins, in both payload generations (before 2024-10-28.acacia a refund has only `charge.refunded` and
`charge.refund.updated`; before basil the Charge names its invoice), from the payment's current state."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from stripe_sf_sandbox.demo import sandbox_environment
from stripe_sf_sandbox.salesforce_server import FieldDef, SalesforceOrg, SalesforceSandbox
from stripe_sf_sandbox.stripe_factory import API_VERSION_PRE_BASIL, StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync import service
from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.state import StateStore

from .conftest import write_config

DAY = 86400
VERSIONS = pytest.mark.parametrize("version", [None, API_VERSION_PRE_BASIL], ids=["current", "pre-basil"])


def cli_env(stripe_sb: StripeSandbox, sf_sb: SalesforceSandbox) -> dict[str, str]:
    return {"STRIPE_API_KEY": stripe_sb.api_key, "STRIPE_API_BASE": stripe_sb.base_url,
            "SF_INSTANCE_URL": sf_sb.instance_url, "SF_ACCESS_TOKEN": sf_sb.access_token,
            "REQUESTS_CA_BUNDLE": sf_sb.ca_path}


def configured(tmp_path, org: SalesforceOrg, env, **overrides: str):
    org.schema["Opportunity"]["Refunded_Amount__c"] = FieldDef("Refunded_Amount__c", "currency", precision=16, scale=2)
    overrides = {"opportunity_refunded: null": "opportunity_refunded: Refunded_Amount__c", **overrides}
    config = write_config(tmp_path / "sync.yaml", **overrides)
    result = CliRunner().invoke(app, ["discover-config", "--config", str(config), "--write"], env=env)
    assert result.exit_code == 0, result.output
    return config


def sync(config, env, since: int):
    first = not (config.parent / "stripe-sf-state.sqlite").exists()
    args = ["--since", time.strftime("%Y-%m-%d", time.gmtime(since))] if first else []
    result = CliRunner().invoke(app, ["sync", "--config", str(config), *args], env=env)
    assert result.exit_code == ExitCode.OK, result.output
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        assert st.dead_letter_count() == 0, result.output
    return result


def payment_opp(org: SalesforceOrg, pi_id: str) -> dict:
    [opp] = [o for o in org.records("Opportunity") if o.get("Stripe_Payment_Intent_ID__c") == pi_id]
    return opp


def factory(stripe_sb: StripeSandbox, version: str | None, seed: int) -> StripeFactory:
    return StripeFactory(stripe_sb, seed=seed, **({"api_version": version} if version else {}))


def a_paying_customer(f: StripeFactory, org: SalesforceOrg, name: str, amount: int, at: int) -> tuple[str, str]:
    cus = f.customer(name, f"{name.lower()}@example.com", created=at - DAY)
    acct = org.insert("Account", {"Name": name, "Stripe_Customer_ID__c": cus["id"]})
    pi = f.payment_intent(cus["id"], amount, "usd", status="requires_payment_method", created=at)
    f.payment_succeeded(pi["id"], at + 5)
    return str(pi["id"]), acct


@VERSIONS
def test_partial_then_full_refund_nets_the_opportunity_and_raises_one_task(tmp_path, stripe_sb, org, sf_sb, version):
    now = int(time.time())
    f = factory(stripe_sb, version, 41)
    pi_id, acct = a_paying_customer(f, org, "Refundco", 25000, now - 3 * DAY)
    env = cli_env(stripe_sb, sf_sb)
    config = configured(tmp_path, org, env)
    sync(config, env, now - 5 * DAY)
    assert Decimal(str(payment_opp(org, pi_id)["Amount"])) == Decimal("250.00")

    f.refund(pi_id, 10000, now - 2 * DAY)
    sync(config, env, now - 5 * DAY)
    opp = payment_opp(org, pi_id)
    assert Decimal(str(opp["Amount"])) == Decimal("150.00")  # 250.00 - 100.00, not 250.00 (amount_received)
    assert Decimal(str(opp["Refunded_Amount__c"])) == Decimal("100.00")
    assert [t for t in org.records("Task") if t["WhatId"] == acct] == []  # a partial refund raises no Task

    _, events = f.refund(pi_id, None, now - DAY)  # the rest: fully refunded
    assert events[0]["data"]["object"]["refunded"] is True
    sync(config, env, now - 5 * DAY)
    opp = payment_opp(org, pi_id)
    assert Decimal(str(opp["Amount"])) == Decimal("0.00") and opp["StageName"] == "Closed Won"  # keeps its stage
    assert Decimal(str(opp["Refunded_Amount__c"])) == Decimal("250.00")
    [task] = [t for t in org.records("Task") if t["WhatId"] == acct]
    assert task["Subject"] == "Payment fully refunded: 250.00 USD" and pi_id in task["Description"]
    sync(config, env, now - 5 * DAY)  # nothing new: the Task stays one
    assert len([t for t in org.records("Task") if t["WhatId"] == acct]) == 1
    assert len(org.records("Opportunity")) == 1


def test_pending_and_failed_refunds_do_not_count(tmp_path, stripe_sb, org, sf_sb):
    now = int(time.time())
    f = factory(stripe_sb, None, 42)
    pi_id, _ = a_paying_customer(f, org, "Pendingco", 25000, now - 3 * DAY)
    refund, _ = f.refund(pi_id, 10000, now - 2 * DAY, status="pending")
    env = cli_env(stripe_sb, sf_sb)
    config = configured(tmp_path, org, env)
    sync(config, env, now - 5 * DAY)
    assert Decimal(str(payment_opp(org, pi_id)["Amount"])) == Decimal("250.00")

    events = f.refund_updated(refund["id"], "failed", now - DAY)
    assert [e["type"] for e in events] == ["refund.updated", "refund.failed"]
    f.refund(pi_id, 5000, now - DAY + 60)
    sync(config, env, now - 5 * DAY)
    assert Decimal(str(payment_opp(org, pi_id)["Amount"])) == Decimal("200.00")


def test_refunded_stage_moves_a_fully_refunded_opportunity(tmp_path, stripe_sb, org, sf_sb):
    now = int(time.time())
    f = factory(stripe_sb, None, 43)
    pi_id, _ = a_paying_customer(f, org, "Stageco", 9900, now - 3 * DAY)
    f.refund(pi_id, None, now - 2 * DAY)
    env = cli_env(stripe_sb, sf_sb)
    config = configured(tmp_path, org, env, **{"refunded_stage: null": "refunded_stage: Closed Lost"})
    sync(config, env, now - 5 * DAY)  # the payment and its refund in one run
    opp = payment_opp(org, pi_id)
    assert opp["StageName"] == "Closed Lost" and Decimal(str(opp["Amount"])) == Decimal("0.00")


@VERSIONS
def test_a_dispute_raises_one_task_and_a_lost_one_lowers_the_amount(tmp_path, stripe_sb, org, sf_sb, version):
    now = int(time.time())
    f = factory(stripe_sb, version, 44)
    pi_id, acct = a_paying_customer(f, org, "Disputeco", 25000, now - 4 * DAY)
    dispute, _ = f.dispute(pi_id, now - 3 * DAY, amount=25000, reason="fraudulent", due_in_days=9)
    env = cli_env(stripe_sb, sf_sb)
    config = configured(tmp_path, org, env)
    sync(config, env, now - 6 * DAY)
    [task] = [t for t in org.records("Task") if t["WhatId"] == acct]
    due = time.strftime("%Y-%m-%d", time.gmtime(dispute["evidence_details"]["due_by"]))
    assert task["Priority"] == "High" and task["ActivityDate"] == due
    assert "250.00 USD" in task["Subject"] and "fraudulent" in task["Subject"]
    assert f"https://dashboard.stripe.com/test/disputes/{dispute['id']}" in task["Description"]
    assert Decimal(str(payment_opp(org, pi_id)["Amount"])) == Decimal("250.00")  # open: nothing lost yet

    f.dispute_closed(dispute["id"], "lost", now - DAY)
    sync(config, env, now - 6 * DAY)
    assert Decimal(str(payment_opp(org, pi_id)["Amount"])) == Decimal("0.00")
    assert len([t for t in org.records("Task") if t["WhatId"] == acct]) == 1  # created once


def test_a_won_dispute_restores_the_amount(tmp_path, stripe_sb, org, sf_sb):
    now = int(time.time())
    f = factory(stripe_sb, None, 45)
    pi_id, _ = a_paying_customer(f, org, "Winco", 12000, now - 4 * DAY)
    dispute, _ = f.dispute(pi_id, now - 3 * DAY)
    env = cli_env(stripe_sb, sf_sb)
    config = configured(tmp_path, org, env)
    f.dispute_closed(dispute["id"], "won", now - DAY)
    sync(config, env, now - 6 * DAY)
    assert Decimal(str(payment_opp(org, pi_id)["Amount"])) == Decimal("120.00")


@VERSIONS
def test_a_refunded_invoice_leaves_mrr_alone_and_raises_a_task(tmp_path, stripe_sb, org, sf_sb, version):
    now = int(time.time())
    f = factory(stripe_sb, version, 46)
    cus = f.customer("Subco", "subco@example.com", created=now - 60 * DAY)
    acct = org.insert("Account", {"Name": "Subco", "Stripe_Customer_ID__c": cus["id"]})
    price = f.price(5000, "usd", "month")
    sub = f.subscription(cus["id"], [(price, 2)], created=now - 40 * DAY)
    org.insert("Opportunity", {"Name": "Subco", "AccountId": acct, "StageName": "Closed Won", "Amount": 100,
                               "CloseDate": "2026-01-01", "Stripe_Subscription_ID__c": sub["id"], "MRR__c": 100,
                               "RecordTypeId": org.record_type_id("New_Business")})
    inv = f.invoice(sub["id"], cus["id"], 10000, "usd", status="paid", created=now - 10 * DAY)
    pi = next(p for p in stripe_sb.objects_of("invoice_payment") if p["invoice"] == inv["id"])["payment"]
    f.refund(pi["payment_intent"], 4000, now - 2 * DAY)
    env = cli_env(stripe_sb, sf_sb)
    config = configured(tmp_path, org, env)
    sync(config, env, now - 5 * DAY)
    [opp] = [o for o in org.records("Opportunity")]
    assert Decimal(str(opp["MRR__c"])) == Decimal("100") and Decimal(str(opp["Amount"])) == Decimal("100")
    [task] = [t for t in org.records("Task") if t["WhatId"] == acct]
    assert task["Subject"] == f"Invoice {inv['id']} refunded: 40.00 USD"


@VERSIONS
def test_a_backfill_and_the_sync_after_it_give_one_figure(tmp_path, stripe_sb, org, sf_sb, version):
    """The payment's figure comes from its current state: a backfill (its listing carries the Charge and its
    refunds; the disputed payment's disputes are read) and the events synced after it agree, with
    stripe-sf pinned to either payload generation."""
    now = int(time.time())
    f = factory(stripe_sb, version, 47)
    pi_id, _ = a_paying_customer(f, org, "Anyorder", 25000, now - 4 * DAY)
    f.refund(pi_id, 10000, now - 3 * DAY)
    dispute, _ = f.dispute(pi_id, now - 2 * DAY, amount=5000)
    f.dispute_closed(dispute["id"], "lost", now - DAY)
    env = cli_env(stripe_sb, sf_sb)
    pinned = {'api_version: "2026-10-28.endive"': f'api_version: "{version}"'} if version else {}
    config = configured(tmp_path, org, env, **pinned)
    result = CliRunner().invoke(app, ["backfill", "--config", str(config), "--since",
                                      time.strftime("%Y-%m-%d", time.gmtime(now - 6 * DAY))], env=env)
    assert result.exit_code == ExitCode.OK, result.output
    opp = payment_opp(org, pi_id)
    assert Decimal(str(opp["Amount"])) == Decimal("100.00")  # 250 - 100 refunded - 50 lost
    assert Decimal(str(opp["Refunded_Amount__c"])) == Decimal("100.00")
    sync(config, env, now - 6 * DAY)  # the events after a backfill change nothing
    again = payment_opp(org, pi_id)
    assert Decimal(str(again["Amount"])) == Decimal("100.00")
    _, report = service.run_reconcile(config, sandbox_environment(stripe_sb, sf_sb), since=None,
                                      objects="payment_intents", fix=False, dry_run=False)
    assert not [x for x in report.findings if x.stripe_id == pi_id], report.findings


def test_webhooks_out_of_order_give_the_same_figure(tmp_path, stripe_sb, org, sf_sb):
    """Through `serve`: the refund's and the dispute's deliveries come before the payment's own; the figure is
    the payment's current state whatever the order, and the late payment_intent.succeeded changes nothing."""
    from .test_serve import deliver, eventually, serving

    now = int(time.time())
    f = factory(stripe_sb, None, 48)
    pi_id, acct = a_paying_customer(f, org, "Hookco", 25000, now - 4 * DAY)
    paid = stripe_sb.events[-1]
    _, refunded = f.refund(pi_id, 10000, now - 3 * DAY)
    dispute, opened = f.dispute(pi_id, now - 2 * DAY, amount=5000)
    closed = f.dispute_closed(dispute["id"], "lost", now - DAY)
    env = sandbox_environment(stripe_sb, sf_sb)
    env.sleep = lambda s: None
    config = configured(tmp_path, org, cli_env(stripe_sb, sf_sb))
    with serving(config, env) as (url, _srv):
        for event in [*reversed(closed), *reversed(opened), *reversed(refunded), paid]:
            assert deliver(url, event).status_code == 200

        def settled() -> bool:
            opps = [o for o in org.records("Opportunity") if o.get("Stripe_Payment_Intent_ID__c") == pi_id]
            return bool(opps) and Decimal(str(opps[0]["Amount"])) == Decimal("100.00")

        eventually(settled)
        eventually(lambda: len([t for t in org.records("Task") if t["WhatId"] == acct]) == 1)
        time.sleep(1)  # every delivery handled: still one figure, one Task
    opp = payment_opp(org, pi_id)
    assert Decimal(str(opp["Amount"])) == Decimal("100.00") and opp["StageName"] == "Closed Won"
    assert len(org.records("Opportunity")) == 1


def test_reconcile_compares_what_the_payment_kept(tmp_path, stripe_sb, org, sf_sb):
    now = int(time.time())
    f = factory(stripe_sb, None, 49)
    pi_id, _ = a_paying_customer(f, org, "Reconco", 25000, now - 4 * DAY)
    env = cli_env(stripe_sb, sf_sb)
    config = configured(tmp_path, org, env)
    sync(config, env, now - 6 * DAY)
    f.refund(pi_id, 10000, now - DAY)  # not synced yet: Salesforce still says 250.00
    _, report = service.run_reconcile(config, sandbox_environment(stripe_sb, sf_sb), since=None,
                                      objects="payment_intents", fix=False, dry_run=False)
    [finding] = [x for x in report.findings if x.stripe_id == pi_id]
    assert finding.kind == "value_mismatch"
    assert finding.values[0] == ("Amount", "150.00", "250.00"), finding
    service.run_reconcile(config, sandbox_environment(stripe_sb, sf_sb), since=None, objects="payment_intents",
                          fix=True, dry_run=False)
    assert Decimal(str(payment_opp(org, pi_id)["Amount"])) == Decimal("150.00")  # --fix writes the net amount


def a_subscription_with_its_first_invoice(f: StripeFactory, org: SalesforceOrg, name: str, now: int):
    cus = f.customer(name, f"{name.lower()}@example.com", created=now - 60 * DAY)
    acct = org.insert("Account", {"Name": name, "Stripe_Customer_ID__c": cus["id"]})
    sub = f.subscription(cus["id"], [(f.price(5000, "usd", "month"), 2)], created=now - 20 * DAY)
    first = f.invoice(sub["id"], cus["id"], 10000, "usd", status="paid", billing_reason="subscription_create",
                      created=now - 20 * DAY)
    org.insert("Opportunity", {"Name": name, "AccountId": acct, "StageName": "Closed Won", "Amount": 100,
                               "CloseDate": "2026-01-01", "Stripe_Subscription_ID__c": sub["id"], "MRR__c": 100,
                               "ARR__c": 1200, "RecordTypeId": org.record_type_id("New_Business")})
    return sub, first, acct


def sub_opp(org: SalesforceOrg, sub_id: str) -> tuple[Decimal, Decimal]:
    [opp] = [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == sub_id]
    return Decimal(str(opp["Amount"])), Decimal(str(opp["MRR__c"]))


@VERSIONS
def test_credit_notes_and_refunds_net_the_first_invoice_never_mrr(tmp_path, stripe_sb, org, sf_sb, version):
    now = int(time.time())
    f = factory(stripe_sb, version, 50)
    sub, first, acct = a_subscription_with_its_first_invoice(f, org, "Creditco", now)
    note, events = f.credit_note(first["id"], 3000, now - 5 * DAY)  # credited to the customer's balance
    assert note["post_payment_amount"] == 3000 and events[0]["type"] == "credit_note.created"
    env = cli_env(stripe_sb, sf_sb)
    config = configured(tmp_path, org, env)
    sync(config, env, now - 7 * DAY)
    assert sub_opp(org, sub["id"]) == (Decimal("70.00"), Decimal("100"))

    f.credit_note_voided(note["id"], now - 4 * DAY)  # restores it
    sync(config, env, now - 7 * DAY)
    assert sub_opp(org, sub["id"]) == (Decimal("100.00"), Decimal("100"))

    pi_id = next(p for p in stripe_sb.objects_of("invoice_payment") if p["invoice"] == first["id"])["payment"]
    f.refund(pi_id["payment_intent"], 4000, now - 3 * DAY)  # a plain refund of the first invoice
    f.credit_note(first["id"], 2000, now - 2 * DAY, refund=True)  # a credit note refunded: counted once
    sync(config, env, now - 7 * DAY)
    assert sub_opp(org, sub["id"]) == (Decimal("40.00"), Decimal("100"))  # 100 - 40 - 20
    assert [t for t in org.records("Task") if t["WhatId"] == acct] == []  # the first invoice is netted, no Task


def test_a_credit_note_on_a_later_invoice_changes_nothing(tmp_path, stripe_sb, org, sf_sb):
    now = int(time.time())
    f = factory(stripe_sb, None, 51)
    sub, _, _ = a_subscription_with_its_first_invoice(f, org, "Laterco", now)
    later = f.invoice(sub["id"], sub["customer"], 10000, "usd", status="paid", created=now - 5 * DAY)
    f.credit_note(later["id"], 3000, now - 4 * DAY)
    env = cli_env(stripe_sb, sf_sb)
    config = configured(tmp_path, org, env)
    sync(config, env, now - 7 * DAY)
    assert sub_opp(org, sub["id"]) == (Decimal("100"), Decimal("100"))


def test_a_refunded_stage_the_org_lacks_is_refused_before_any_write(tmp_path, stripe_sb, org, sf_sb):
    now = int(time.time())
    f = factory(stripe_sb, None, 52)
    a_paying_customer(f, org, "Nostage", 9900, now - 3 * DAY)
    env = cli_env(stripe_sb, sf_sb)
    config = configured(tmp_path, org, env, **{"refunded_stage: null": "refunded_stage: Refunded"})
    result = CliRunner().invoke(app, ["sync", "--config", str(config), "--since",
                                      time.strftime("%Y-%m-%d", time.gmtime(now - 5 * DAY))], env=env)
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert "salesforce.refunded_stage 'Refunded' is not the API name of an active Opportunity stage" in result.output
    assert "Closed Lost" in result.output and org.records("Opportunity") == []
    doctor = CliRunner().invoke(app, ["doctor", "--config", str(config)], env=env)
    assert "refunded stage" in doctor.output and "Refunded" in doctor.output, doctor.output


def _first(total: int = 12000, excl: int = 10000) -> dict:
    return {"id": "in_first", "object": "invoice", "billing_reason": "subscription_create", "currency": "usd",
            "total": total, "total_excluding_tax": excl,
            "parent": {"subscription_details": {"subscription": "sub_first"}}}


def test_first_invoice_net_is_before_tax_and_counts_a_credit_notes_refund_once():
    from stripe_sf_sync.model import first_invoice_net

    notes = [{"status": "issued", "pre_payment_amount": 0, "post_payment_amount": 2400,
              "refunds": [{"refund": "re_cn", "amount_refunded": 2400}]},
             {"status": "void", "pre_payment_amount": 0, "post_payment_amount": 6000, "refunds": []}]
    refunds = [{"id": "re_cn", "amount": 2400, "status": "succeeded"},
               {"id": "re_plain", "amount": 1200, "status": "succeeded"},
               {"id": "re_pending", "amount": 5000, "status": "pending"}]
    net = first_invoice_net(_first(), notes, refunds, [{"amount": 1200, "status": "won"}])
    # kept 120.00 - 24.00 (credit note, its refund once) - 12.00 = 84.00 of 120.00: 70% of the 100.00 before tax
    assert net is not None and net.amount == Decimal("70.00") and net.subscription_id == "sub_first"
    lost = first_invoice_net(_first(), [], [], [{"amount": 12000, "status": "lost"}])
    assert lost is not None and lost.amount == Decimal("0.00")
    assert first_invoice_net({**_first(), "billing_reason": "subscription_cycle"}, [], [], []) is None
    assert first_invoice_net(_first(total=0, excl=0), [], [], []) is None  # a trial's first invoice


def test_a_customers_year_the_worked_example_in_the_docs(tmp_path, stripe_sb, org, sf_sb):
    """docs/rules.md, "A customer's year: refunds, credit notes, disputes": the figures Salesforce shows after
    each step (the year is compressed into Stripe's 30-day event window: a "month" here is two days; the figures
    do not depend on it)."""
    month = 2 * DAY
    start = int(time.time()) - 26 * DAY
    f = factory(stripe_sb, None, 53)
    cus = f.customer("Yearco", "yearco@example.com", created=start - DAY)
    acct = org.insert("Account", {"Name": "Yearco", "Stripe_Customer_ID__c": cus["id"]})
    sub = f.subscription(cus["id"], [(f.price(5000, "usd", "month"), 2)], created=start)
    f.subscription_created(sub, start)
    first = f.invoice(sub["id"], cus["id"], 10000, "usd", status="paid", billing_reason="subscription_create",
                      created=start)
    env = cli_env(stripe_sb, sf_sb)
    config = configured(tmp_path, org, env)

    def step() -> tuple[Decimal, Decimal, list[str]]:
        sync(config, env, start - DAY)
        amount, mrr = sub_opp(org, sub["id"])
        return amount, mrr, sorted(t["Subject"] for t in org.records("Task") if t["WhatId"] == acct)

    # Month 1: a 20.00 credit note on the first invoice (credited to the balance).
    f.credit_note(first["id"], 2000, start + 1 * month)
    assert step()[:2] == (Decimal("80.00"), Decimal("100"))
    # Month 4: the April invoice is refunded 30.00: a Task, Amount and MRR unchanged.
    april = f.invoice(sub["id"], sub["customer"], 10000, "usd", status="paid", created=start + 4 * month - DAY)
    april_pi = next(p for p in stripe_sb.objects_of("invoice_payment") if p["invoice"] == april["id"])
    f.refund(april_pi["payment"]["payment_intent"], 3000, start + 4 * month)
    amount, mrr, tasks = step()
    assert (amount, mrr) == (Decimal("80.00"), Decimal("100"))
    assert tasks == [f"Invoice {april['id']} refunded: 30.00 USD"]
    # Month 7: a one-time 250.00 payment, half refunded in month 8.
    pi_id = a_paying_customer_again(f, sub["customer"], 25000, start + 7 * month)
    assert step()[:2] == (Decimal("80.00"), Decimal("100"))
    assert Decimal(str(payment_opp(org, pi_id)["Amount"])) == Decimal("250.00")
    f.refund(pi_id, 12500, start + 8 * month)
    step()
    assert Decimal(str(payment_opp(org, pi_id)["Amount"])) == Decimal("125.00")
    # Month 10: the rest of the one-time payment is disputed, and the dispute is lost in month 11.
    dispute, _ = f.dispute(pi_id, start + 10 * month, amount=12500, reason="product_not_received", due_in_days=10)
    tasks = step()[2]
    assert any(t.startswith("Dispute opened: 125.00 USD (product_not_received), respond by") for t in tasks)
    f.dispute_closed(dispute["id"], "lost", start + 11 * month)
    amount, mrr, tasks = step()
    assert Decimal(str(payment_opp(org, pi_id)["Amount"])) == Decimal("0.00")
    assert (amount, mrr) == (Decimal("80.00"), Decimal("100")) and len(tasks) == 2


def a_paying_customer_again(f: StripeFactory, customer_id: str, amount: int, at: int) -> str:
    pi = f.payment_intent(customer_id, amount, "usd", status="requires_payment_method", created=at)
    f.payment_succeeded(pi["id"], at + 5)
    return str(pi["id"])



def reconcile_fix_and_backfill_keep(config, env, org: SalesforceOrg, netted: dict, now: int) -> None:
    """`reconcile` finds nothing to report for these subscriptions, and neither `reconcile --fix` nor a
    `backfill` puts the gross Amount back."""
    result = CliRunner().invoke(app, ["reconcile", "--config", str(config), "--objects", "subscriptions"], env=env)
    assert result.exit_code == ExitCode.OK, result.output
    result = CliRunner().invoke(app, ["reconcile", "--config", str(config), "--objects", "subscriptions", "--fix"],
                                env=env)
    assert result.exit_code == ExitCode.OK, result.output
    assert {s: sub_opp(org, s) for s in netted} == netted
    day = time.strftime("%Y-%m-%d", time.gmtime(now - 60 * DAY))
    result = CliRunner().invoke(app, ["backfill", "--config", str(config), "--since", day, "--objects",
                                      "subscriptions"], env=env)
    assert result.exit_code == ExitCode.OK, result.output
    assert {s: sub_opp(org, s) for s in netted} == netted


@VERSIONS
def test_reconcile_and_backfill_keep_a_first_invoice_netted_by_a_credit_note(tmp_path, stripe_sb, org, sf_sb,
                                                                              version):
    """Issue 22 "through sync, serve, backfill and reconcile alike": a credit note on a subscription's first
    invoice (one still in its first period, one already renewed). `sync` nets their Amount; reconcile and a
    backfill agree. The credit notes are listed only for invoices whose credit-note amounts are not 0."""
    now = int(time.time())
    f = factory(stripe_sb, version, 53)
    noted, first, _ = a_subscription_with_its_first_invoice(f, org, "Notedco", now)
    f.credit_note(first["id"], 3000, now - 5 * DAY)
    cus = f.customer("Renewco", "renewco@example.com", created=now - 60 * DAY)
    acct = org.insert("Account", {"Name": "Renewco", "Stripe_Customer_ID__c": cus["id"]})
    renewed = f.subscription(cus["id"], [(f.price(5000, "usd", "month"), 2)], created=now - 25 * DAY,
                             current_period_start=now - 3 * DAY)
    first_renewed = f.invoice(renewed["id"], cus["id"], 10000, "usd", status="paid",
                              billing_reason="subscription_create", created=now - 25 * DAY)
    org.insert("Opportunity", {"Name": "Renewco", "AccountId": acct, "StageName": "Closed Won", "Amount": 100,
                               "CloseDate": "2026-01-01", "Stripe_Subscription_ID__c": renewed["id"], "MRR__c": 100,
                               "ARR__c": 1200, "RecordTypeId": org.record_type_id("New_Business")})
    f.credit_note(first_renewed["id"], 1000, now - 24 * DAY)
    later = f.invoice(renewed["id"], cus["id"], 10000, "usd", status="paid", created=now - 3 * DAY)
    f.credit_note(later["id"], 5000, now - 2 * DAY)  # a later invoice's: not the first period's
    env = cli_env(stripe_sb, sf_sb)
    pinned = {'api_version: "2026-10-28.endive"': f'api_version: "{version}"'} if version else {}
    config = configured(tmp_path, org, env, **pinned)
    sync(config, env, now - 27 * DAY)
    netted = {noted["id"]: (Decimal("70.00"), Decimal("100")), renewed["id"]: (Decimal("90.00"), Decimal("100"))}
    assert {s: sub_opp(org, s) for s in netted} == netted
    reconcile_fix_and_backfill_keep(config, env, org, netted, now)


@VERSIONS
def test_reconcile_and_backfill_keep_a_first_invoice_netted_by_a_refund(tmp_path, stripe_sb, org, sf_sb, version):
    """A partial refund of a subscription's first invoice, and a lost dispute of one already renewed (no credit
    note): `sync` nets the Amount; reconcile and a backfill agree. Pre-basil its payment is read only because
    its Charge (expanded) shows the refund; from basil on the run lists its window's refunds and disputes once
    and matches them to the first invoice's `payments` (expanded)."""
    now = int(time.time())
    f = factory(stripe_sb, version, 54)
    refunded, first, _ = a_subscription_with_its_first_invoice(f, org, "Refundco", now)
    pi = next(p for p in stripe_sb.objects_of("invoice_payment") if p["invoice"] == first["id"])["payment"]
    f.refund(pi["payment_intent"], 2500, now - 4 * DAY)
    cus = f.customer("Disputeco", "disputeco@example.com", created=now - 60 * DAY)
    acct = org.insert("Account", {"Name": "Disputeco", "Stripe_Customer_ID__c": cus["id"]})
    renewed = f.subscription(cus["id"], [(f.price(5000, "usd", "month"), 2)], created=now - 25 * DAY,
                             current_period_start=now - 3 * DAY)
    first_renewed = f.invoice(renewed["id"], cus["id"], 10000, "usd", status="paid",
                              billing_reason="subscription_create", created=now - 25 * DAY)
    org.insert("Opportunity", {"Name": "Disputeco", "AccountId": acct, "StageName": "Closed Won", "Amount": 100,
                               "CloseDate": "2026-01-01", "Stripe_Subscription_ID__c": renewed["id"], "MRR__c": 100,
                               "ARR__c": 1200, "RecordTypeId": org.record_type_id("New_Business")})
    f.invoice(renewed["id"], cus["id"], 10000, "usd", status="paid", created=now - 3 * DAY)
    paid = next(p for p in stripe_sb.objects_of("invoice_payment") if p["invoice"] == first_renewed["id"])["payment"]
    dispute, _ = f.dispute(paid["payment_intent"], now - 6 * DAY, amount=4000)
    f.dispute_closed(dispute["id"], "lost", now - 5 * DAY)
    env = cli_env(stripe_sb, sf_sb)
    pinned = {'api_version: "2026-10-28.endive"': f'api_version: "{version}"'} if version else {}
    config = configured(tmp_path, org, env, **pinned)
    sync(config, env, now - 7 * DAY)
    netted = {refunded["id"]: (Decimal("75.00"), Decimal("100")), renewed["id"]: (Decimal("60.00"), Decimal("100"))}
    assert {s: sub_opp(org, s) for s in netted} == netted
    reconcile_fix_and_backfill_keep(config, env, org, netted, now)
    # The cost: the subscription list and the renewed one's first invoice; from basil on the refunds and the
    # disputes lists once per run (one page each here), pre-basil a read per adjusted payment (the refunded one;
    # the disputed one and its disputes).
    result = CliRunner().invoke(app, ["reconcile", "--config", str(config), "--objects", "subscriptions"], env=env)
    assert f"{5 if version else 4} Stripe calls" in result.output, result.output
