"""The mapping rules, pinned against realistic payloads. Pure: no network, no clock."""

from datetime import date
from decimal import Decimal

import pytest

from stripe_sf_sync import model, rules
from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.rules import AccountStatusIntent, OpportunityIntent, TaskIntent

from . import payloads as p

CTX = rules.RuleContext("Won", FieldNames())
OPP_ID = "006Hs00000BkXyzIAF"


def plan_of(ev):
    change = model.parse_event(ev)
    if isinstance(change, model.PaymentChange) and not change.invoice_known:
        import dataclasses
        change = dataclasses.replace(change, invoice_known=True)
    return rules.plan(CTX, change)


def test_guide_example_subscription_created_wins_the_opportunity():
    sub = p.subscription(metadata={"salesforce_opportunity_id": OPP_ID,
                                   "salesforce_account_id": "001Hs00000CmAbcIAE"})
    plan = plan_of(p.event("customer.subscription.created", sub, created=1757894400))  # 2025-09-15
    opp = next(i for i in plan.intents if isinstance(i, OpportunityIntent))
    assert opp.opportunity_id == OPP_ID
    assert opp.fields == {"StageName": "Won", "CloseDate": "2025-09-15", "Amount": Decimal("999.00"),
                          "MRR__c": Decimal("999.00"), "ARR__c": Decimal("11988.00"),
                          "Stripe_Subscription_ID__c": "sub_1OHAabcdefghij",
                          "Stripe_Customer_ID__c": "cus_Pabcdefghij"}
    status = next(i for i in plan.intents if isinstance(i, AccountStatusIntent))
    assert status.status == "active" and status.log_transition is False


@pytest.mark.parametrize(("status", "won"), [("active", True), ("trialing", True), ("incomplete", False),
                                              ("past_due", False)])
def test_created_wins_only_when_active_or_trialing(status, won):
    plan = plan_of(p.event("customer.subscription.created", p.subscription(status=status)))
    assert any(isinstance(i, OpportunityIntent) for i in plan.intents) is won


@pytest.mark.parametrize(("prev", "won"), [("incomplete", True), ("trialing", True), ("past_due", False),
                                           (None, False)])
def test_updated_into_active_wins_from_incomplete_or_trialing(prev, won):
    previous = {"status": prev} if prev else {"metadata": {}}
    plan = plan_of(p.event("customer.subscription.updated", p.subscription(status="active"), previous=previous))
    wins = [i for i in plan.intents if isinstance(i, OpportunityIntent) and i.may_create]
    assert bool(wins) is won


def test_status_transition_is_logged_on_update():
    plan = plan_of(p.event("customer.subscription.updated", p.subscription(status="past_due"),
                           previous={"status": "active"}))
    status = next(i for i in plan.intents if isinstance(i, AccountStatusIntent))
    assert (status.previous_status, status.status, status.log_transition) == ("active", "past_due", True)
    task = rules.transition_task(status, "active")
    assert task.subject == "Subscription status: active → past_due"
    assert task.status == "Completed" and task.key == "sub_1OHAabcdefghij#status-past_due@2026-09-21T14:13:20Z"


def test_plan_change_refreshes_amounts_without_creating():
    sub = p.subscription(items=[(p.price(50000), 3)])
    plan = plan_of(p.event("customer.subscription.updated", sub, previous={"items": {"data": []}}))
    opp = next(i for i in plan.intents if isinstance(i, OpportunityIntent))
    assert opp.may_create is False
    assert opp.fields == {"Amount": Decimal("1500.00"), "MRR__c": Decimal("1500.00"), "ARR__c": Decimal("18000.00")}


def test_cancel_at_period_end_turning_true_raises_early_warning():
    sub = p.subscription(cancel_at_period_end=True, period_end=1760486400)  # 2025-10-15
    plan = plan_of(p.event("customer.subscription.updated", sub, previous={"cancel_at_period_end": False},
                           created=1757894400))
    tasks = [i for i in plan.intents if isinstance(i, TaskIntent)]
    assert len(tasks) == 1
    assert tasks[0].purpose == "cancel-warning" and "2025-10-15" in tasks[0].subject
    assert tasks[0].assign_to == "csm_or_owner" and tasks[0].priority == "High"


def test_cancel_at_scheduled_raises_the_same_early_warning_with_its_date():
    sub = p.subscription(period_end=1760486400)  # period ends 2025-10-15; cancels earlier, on 2025-10-01
    sub["cancel_at"] = 1759276800
    plan = plan_of(p.event("customer.subscription.updated", sub, previous={"cancel_at": None, "canceled_at": None},
                           created=1757894400))
    [task] = [i for i in plan.intents if isinstance(i, TaskIntent)]
    assert task.purpose == "cancel-warning" and task.subject == "Cancellation scheduled: subscription ends 2025-10-01"
    assert "set to cancel on 2025-10-01" in task.description
    assert task.assign_to == "csm_or_owner" and task.priority == "High"


def test_cancel_at_period_end_fills_cancel_at_too_and_raises_one_warning():
    sub = p.subscription(cancel_at_period_end=True, period_end=1760486400)
    sub["cancel_at"] = 1760486400  # Stripe sets cancel_at to the period end as well
    plan = plan_of(p.event("customer.subscription.updated", sub,
                           previous={"cancel_at_period_end": False, "cancel_at": None}, created=1757894400))
    assert len([i for i in plan.intents if isinstance(i, TaskIntent)]) == 1


def test_deleted_sets_canceled_and_follow_up_for_csm():
    sub = p.subscription(status="canceled")
    plan = plan_of(p.event("customer.subscription.deleted", sub, created=1757894400))
    status = next(i for i in plan.intents if isinstance(i, AccountStatusIntent))
    assert status.status == "canceled" and status.previous_from_account
    follow = next(i for i in plan.intents if isinstance(i, TaskIntent))
    assert follow.key == "sub_1OHAabcdefghij#cancelled" and follow.assign_to == "csm_or_owner"
    assert follow.legacy_key == "evt_1OHAabcdefghij:follow-up"
    assert follow.activity_date == "2025-09-16"


def test_one_time_payment_wins_with_exact_amount_keyed_on_payment_intent():
    plan = plan_of(p.event("payment_intent.succeeded", p.payment_intent(amount=500000, currency="jpy")))
    opp = plan.intents[0]
    assert opp.key_kind == "payment_intent" and opp.match_by_customer is False
    assert opp.fields["Amount"] == Decimal("500000")
    assert opp.fields["Stripe_Payment_Intent_ID__c"] == "pi_3Oabcdefghij"
    assert "MRR__c" not in opp.fields


def test_invoice_payment_is_not_a_one_time_win():
    ev = p.event("payment_intent.succeeded", p.payment_intent(version=p.PRE_BASIL, invoice="in_1Oabc"),
                 version=p.PRE_BASIL)
    plan = plan_of(ev)
    assert plan.intents == [] and "in_1Oabc" in plan.ignored


def test_failed_payment_task_matches_the_guide():
    inv = p.invoice(amount_due=14900, attempt_count=2, next_payment_attempt=1758153600)  # 2025-09-18
    change = model.parse_event(p.event("invoice.payment_failed", inv, created=1757980800))  # Tue 2025-09-16
    import dataclasses
    change = dataclasses.replace(change, failure_code="card_declined")
    task = rules.plan(CTX, change).intents[0]
    assert task.subject == "Payment Failed - Immediate Action Required"
    assert (task.priority, task.status, task.assign_to) == ("High", "Not Started", "owner")
    assert task.activity_date == "2025-09-17"
    for text in ("149.00 USD", "card_declined", "Attempt count: 2", "Next retry: 2025-09-18",
                 "sub_1OHAabcdefghij", "https://dashboard.stripe.com/test/invoices/in_1Oabcdefghij",
                 "https://dashboard.stripe.com/test/customers/cus_Pabcdefghij"):
        assert text in task.description


def test_zero_decimal_failed_amount():
    change = model.parse_event(p.event("invoice.payment_failed", p.invoice(amount_due=5000, currency="jpy")))
    assert "5000 JPY" in rules.plan(CTX, change).intents[0].description


@pytest.mark.parametrize(("day", "expected"), [
    (date(2025, 9, 19), date(2025, 9, 22)),  # Friday -> Monday
    (date(2025, 9, 20), date(2025, 9, 22)),  # Saturday -> Monday
    (date(2025, 9, 15), date(2025, 9, 16)),
])
def test_next_business_day(day, expected):
    assert rules.next_business_day(day) == expected


@pytest.mark.parametrize("hostile", ["' OR Name != '", "../../sobjects/User", "001Hs00000CmAbc",
                                     "001Hs00000CmAbcIAE", "006Hs00000BkXyzIAX", "006Hs00000BkXyz'",
                                     "006Hs00000BkXyzIAF/../../User"])
def test_hostile_metadata_never_becomes_an_id(hostile):
    sub = p.subscription(metadata={"salesforce_opportunity_id": hostile})
    opp = next(i for i in plan_of(p.event("customer.subscription.created", sub)).intents
               if isinstance(i, OpportunityIntent))
    # wrong shape, wrong key prefix (001 is an Account) or a bad checksum: treated as absent
    assert opp.opportunity_id is None


def test_fifteen_char_metadata_id_is_normalised():
    sub = p.subscription(metadata={"salesforce_opportunity_id": "006Hs00000BkXyz"})
    opp = next(i for i in plan_of(p.event("customer.subscription.created", sub)).intents
               if isinstance(i, OpportunityIntent))
    assert opp.opportunity_id == OPP_ID


def test_opportunity_amounts_carry_their_currency():
    sub = p.subscription(currency="eur", items=[(p.price(9000, "eur"), 2)])
    opp = next(i for i in plan_of(p.event("customer.subscription.created", sub)).intents
               if isinstance(i, OpportunityIntent))
    assert opp.currency == "eur" and opp.fields["Amount"] == Decimal("180.00")
    pay = plan_of(p.event("payment_intent.succeeded", p.payment_intent(amount=500000, currency="jpy"))).intents[0]
    assert pay.currency == "jpy"


def test_items_in_the_price_default_currency_must_be_converted_before_planning():
    # Billed in EUR on a USD-default Price: the items show USD 100.00 (`currency_options`). Writing that as the
    # Amount would be wrong; the rules refuse it rather than guess (hydration converts the lines).
    sub = p.subscription(currency="eur", items=[(p.price(10000, "usd"), 2)])
    change = model.parse_event(p.event("customer.subscription.created", sub))
    with pytest.raises(ValueError, match="EUR"):
        rules.plan(CTX, change)
    converted = model.in_billed_currency(change, {"price_1OabcDEFghiJKL": {"eur": {"unit_amount": 9000}}})
    opp = next(i for i in rules.plan(CTX, converted).intents if isinstance(i, OpportunityIntent))
    assert (opp.fields["Amount"], opp.fields["MRR__c"], opp.fields["ARR__c"]) == (
        Decimal("180.00"), Decimal("180.00"), Decimal("2160.00"))
    assert opp.currency == "eur"


def _refunded(pi_amount: int, refunds: list[tuple[int, str]], *, event_type: str = "charge.refunded",
              ctx: rules.RuleContext = CTX) -> rules.Plan:
    """A payment as hydration reads it after a refund event: its PaymentIntent with Charge and refunds."""
    pi = p.payment_intent(amount=pi_amount)
    pi["latest_charge"] = {"id": "ch_3Oabcdefghij", "amount_refunded": sum(a for a, _ in refunds), "disputed": False,
                           "refunds": {"object": "list", "has_more": False,
                                       "data": [{"id": f"re_{i}", "amount": a, "status": s}
                                                for i, (a, s) in enumerate(refunds)]}}
    meta = model.event_meta(p.event(event_type, {"id": "ch_3Oabcdefghij", "object": "charge"}))
    change = model.parse_payment({"data": {"object": pi}}, meta)
    import dataclasses
    return rules.plan(ctx, dataclasses.replace(change, invoice_known=True))


def test_a_refund_event_nets_the_amount_and_keeps_stage_and_close_date_for_a_create_only():
    plan = _refunded(25000, [(10000, "succeeded"), (5000, "pending"), (3000, "failed")])
    opp = next(i for i in plan.intents if isinstance(i, OpportunityIntent))
    assert opp.fields == {"Amount": Decimal("150.00")}  # only the succeeded refund counts
    assert opp.create_only["StageName"] == "Won" and "CloseDate" in opp.create_only and opp.may_create
    assert not [i for i in plan.intents if isinstance(i, TaskIntent)]  # partial: no Task


def test_a_full_refund_raises_one_keyed_task_and_may_move_the_stage():
    ctx = rules.RuleContext("Won", FieldNames(opportunity_refunded="Refunded_Amount__c"), refunded_stage="Refunded")
    plan = _refunded(14900, [(14900, "succeeded")], ctx=ctx)
    opp = next(i for i in plan.intents if isinstance(i, OpportunityIntent))
    assert opp.fields == {"Amount": Decimal("0.00"), "Refunded_Amount__c": Decimal("149.00"), "StageName": "Refunded"}
    [task] = [i for i in plan.intents if isinstance(i, TaskIntent)]
    assert task.key == "ch_3Oabcdefghij#refunded" and task.subject == "Payment fully refunded: 149.00 USD"


# --- the rule table: every change a parser returns has a rule (or a stated reason for none) ------------

def test_every_change_type_a_parser_returns_has_a_rule():
    import typing

    returned = {typing.get_type_hints(parser)["return"] for parser in model.PARSERS.values()}
    assert returned <= set(rules.RULES) | set(rules.NO_RULE)
    assert set(typing.get_args(model.Change)) == set(rules.RULES)  # plan() takes a Change: each has its rule
    assert not set(rules.RULES) & set(rules.NO_RULE)
    from stripe_sf_sync.rules import table

    entries = [kind for module_entries in table._ENTRIES for kind, _ in module_entries]
    assert len(entries) == len(set(entries)) == len(rules.RULES)  # no change type has two rules


def test_plan_dispatches_each_change_type_to_its_rule(monkeypatch):
    from stripe_sf_sync.rules import table

    for kind in list(rules.RULES):
        monkeypatch.setitem(rules.RULES, kind, lambda ctx, change, kind=kind: rules.Plan(ignored=kind.__name__))
    for kind in rules.RULES:
        change = object.__new__(kind)  # the rule is stubbed: only the type matters
        assert table.plan(CTX, change).ignored == kind.__name__


def test_a_change_type_without_a_rule_is_an_error_not_a_default_rule():
    with pytest.raises(rules.NoRule, match="CustomerChange"):
        rules.plan(CTX, object.__new__(model.CustomerChange))
