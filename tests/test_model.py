import copy
from decimal import Decimal

import pytest

from stripe_sf_sync import model, money
from stripe_sf_sync.model import MalformedEvent

from . import payloads as p


@pytest.mark.parametrize("version", [p.CURRENT, p.PRE_BASIL])
def test_subscription_parses_in_both_api_shapes(version):
    sub = p.subscription(version=version, period_end=p.T0 + 100)
    change = model.parse_event(p.event("customer.subscription.created", sub, version=version))
    assert isinstance(change, model.SubscriptionChange)
    assert change.subscription_id == "sub_1OHAabcdefghij"
    assert change.customer_id == "cus_Pabcdefghij"
    assert change.period_end == p.T0 + 100
    assert change.lines[0].unit_amount == Decimal("99900")


def test_previous_attributes_drive_transitions():
    sub = p.subscription(status="active", cancel_at_period_end=True)
    ev = p.event("customer.subscription.updated", sub,
                 previous={"status": "trialing", "cancel_at_period_end": False, "items": {"data": []}})
    change = model.parse_event(ev)
    assert change.previous_status == "trialing"
    assert change.cancel_turned_on is True
    assert change.plan_changed is True


def test_expanded_customer_is_read():
    sub = p.subscription(customer={"id": "cus_Pabcdefghij", "object": "customer", "name": "Acme",
                                   "metadata": {"salesforce_account_id": "001Hs00000CmAbcIAE"}})
    change = model.parse_event(p.event("customer.subscription.created", sub))
    assert change.customer_id == "cus_Pabcdefghij"
    assert change.customer_name == "Acme"
    assert change.customer_metadata == {"salesforce_account_id": "001Hs00000CmAbcIAE"}


def test_payment_intent_invoice_link_by_version():
    cur = model.parse_event(p.event("payment_intent.succeeded", p.payment_intent()))
    assert cur.invoice_known is False  # current versions must ask /v1/invoice_payments
    old = model.parse_event(p.event("payment_intent.succeeded", p.payment_intent(version=p.PRE_BASIL,
                                                                                  invoice="in_1Oabc"),
                                    version=p.PRE_BASIL))
    assert old.invoice_known is True and old.invoice_id == "in_1Oabc"


def test_invoice_failure_in_both_shapes():
    cur = model.parse_event(p.event("invoice.payment_failed",
                                    p.invoice(metadata={"salesforce_account_id": "001Hs00000CmAbcIAE"})))
    assert cur.subscription_id == "sub_1OHAabcdefghij"
    assert cur.metadata == {"salesforce_account_id": "001Hs00000CmAbcIAE"}
    assert cur.failure_code is None  # an Invoice carries no failure code: hydration reads it
    assert cur.amount_due == Decimal("149.00")
    old_inv = p.invoice(version=p.PRE_BASIL, payment_intent={
        "id": "pi_3Ofailedabcdef", "object": "payment_intent",
        "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds"}})
    old = model.parse_event(p.event("invoice.payment_failed", old_inv, version=p.PRE_BASIL))
    assert old.subscription_id == "sub_1OHAabcdefghij"
    assert old.failure_code == "card_declined (insufficient_funds)"
    assert old.payment_intent_id == "pi_3Ofailedabcdef"


def test_failure_code_from_expanded_basil_payments():
    inv = p.invoice()
    inv["payments"] = {"object": "list", "data": [{"id": "inpay_1", "object": "invoice_payment", "payment": {
        "type": "charge", "charge": {"id": "ch_1", "failure_code": "expired_card"}}}]}
    change = model.parse_event(p.event("invoice.payment_failed", inv))
    assert change.failure_code == "expired_card"


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda e: e.pop("id"), "event id"),
    (lambda e: e.__setitem__("created", "yesterday"), "created"),
    (lambda e: e["data"]["object"].pop("customer"), "customer"),
    (lambda e: e["data"]["object"].__setitem__("status", "exploded"), "status"),
    (lambda e: e["data"]["object"].__setitem__("currency", "dollars"), "currency"),
    (lambda e: e["data"]["object"]["items"]["data"][0].__setitem__("quantity", "2"), "quantity"),
    (lambda e: e["data"]["object"].__setitem__("items", None), "items"),
    (lambda e: e["data"].__setitem__("object", []), "data.object"),
    (lambda e: e["data"]["object"].__setitem__("id", "' OR 1=1"), "id"),
])
def test_malformed_payloads_name_the_field(mutate, reason):
    ev = p.event("customer.subscription.created", p.subscription())
    mutate(ev)
    with pytest.raises(MalformedEvent) as info:
        model.parse_event(ev)
    assert reason in info.value.reason


def test_unknown_event_type_is_unsupported_not_an_error():
    ev = p.event("customer.subscription.paused", p.subscription())
    assert isinstance(model.parse_event(ev), model.Unsupported)
    ev = p.event("charge.dispute.funds_withdrawn", {"id": "dp_1", "object": "dispute", "charge": "ch_1"})
    assert isinstance(model.parse_event(ev), model.Unsupported)  # no write of its own (issue 22 §3)
    ev = p.event("charge.refunded", {"id": "ch_1", "object": "charge", "payment_intent": "pi_1234"})
    assert isinstance(model.parse_event(ev), model.CollectedChange)  # planned from the payment's current state


def test_huge_amount_is_rejected_not_crashing():
    ev = p.event("payment_intent.succeeded", p.payment_intent(amount=10**20))
    with pytest.raises(MalformedEvent):
        model.parse_event(ev)


def _euro_subscription(*items):
    """A subscription billed in EUR on USD-default Prices (its items show USD amounts, as Stripe shows them)."""
    sub = p.subscription(currency="eur", items=list(items))
    return model.parse_event(p.event("customer.subscription.created", sub))


def _price(price_id, unit, currency="usd", interval="month"):
    return {**p.price(unit, currency, interval), "id": price_id}


def test_subscription_billed_in_another_currency_names_the_prices_to_read():
    change = _euro_subscription((_price("price_Pro", 10000), 2), (_price("price_Eur", 500, "eur"), 1))
    assert change.currency == "eur"
    assert [(ln.currency, ln.unit_amount, ln.price_id) for ln in change.lines] == [
        ("usd", Decimal("10000"), "price_Pro"), ("eur", Decimal("500"), "price_Eur")]
    assert model.foreign_price_ids(change) == ["price_Pro"]
    assert model.foreign_price_ids(model.parse_event(p.event("customer.subscription.created", p.subscription()))) == []


def test_in_billed_currency_uses_the_currency_option():
    change = _euro_subscription((_price("price_Pro", 10000), 2), (_price("price_Eur", 500, "eur"), 1))
    options = {"price_Pro": {"usd": {"unit_amount": 10000, "unit_amount_decimal": "10000"},
                             "eur": {"unit_amount": 9000, "unit_amount_decimal": "9000.5"}}}
    converted = model.in_billed_currency(change, options)
    assert [(ln.currency, ln.unit_amount, ln.quantity) for ln in converted.lines] == [
        ("eur", Decimal("9000.5"), 2), ("eur", Decimal("500"), 1)]
    assert converted.subscription_id == change.subscription_id and converted.meta == change.meta


def test_in_billed_currency_zero_and_three_decimal_currencies():
    jpy = model.parse_event(p.event("customer.subscription.created", p.subscription(
        currency="jpy", items=[(_price("price_Pro", 10000, interval="year"), 1)])))
    converted = model.in_billed_currency(jpy, {"price_Pro": {"jpy": {"unit_amount": 150000}}})
    assert money.period_total(converted.lines) == Decimal("150000")  # yen have no minor unit
    assert money.monthly_recurring(converted.lines) == Decimal("12500")
    kwd = model.parse_event(p.event("customer.subscription.created", p.subscription(
        currency="kwd", items=[(_price("price_Pro", 10000), 3)])))
    converted = model.in_billed_currency(kwd, {"price_Pro": {"kwd": {"unit_amount_decimal": "30750"}}})
    assert money.period_total(converted.lines) == Decimal("92.250")


def test_in_billed_currency_tiered_option_leaves_the_value_unknown():
    change = _euro_subscription((_price("price_Pro", 10000), 1))
    converted = model.in_billed_currency(change, {"price_Pro": {"eur": {"unit_amount": None}}})
    assert converted.lines[0].unit_amount is None and money.monthly_recurring(converted.lines) is None


@pytest.mark.parametrize("options", [{"price_Pro": {"usd": {"unit_amount": 10000}}}, {"price_Pro": None}, {}])
def test_no_option_for_the_billed_currency_is_a_dead_letter_not_a_guess(options):
    change = _euro_subscription((_price("price_Pro", 10000), 1))
    with pytest.raises(model.NoCurrencyOption) as info:
        model.in_billed_currency(change, options)
    assert info.value.code == "NO_CURRENCY_OPTION"
    assert "price_Pro" in info.value.reason and "EUR" in info.value.reason
    assert "stripe-sf dlq retry --all" in info.value.reason


def test_unreadable_price_id_on_a_foreign_item_is_a_dead_letter():
    change = _euro_subscription((_price("gold-plan/../x", 10000), 1))
    with pytest.raises(model.NoCurrencyOption) as info:
        model.foreign_price_ids(change)
    assert "EUR" in info.value.reason and "USD" in info.value.reason


def test_out_of_range_option_amount_is_malformed():
    change = _euro_subscription((_price("price_Pro", 10000), 1))
    with pytest.raises(MalformedEvent, match="unit_amount"):
        model.in_billed_currency(change, {"price_Pro": {"eur": {"unit_amount": -5}}})


# --- a renewal is not a plan change (issue 19 §1) ------------------------------------------------------------

def _renewal_items(sub, start, end):
    items = copy.deepcopy(sub["items"])
    for item in items["data"]:
        item["current_period_start"], item["current_period_end"] = start, end
    return items


def test_a_basil_renewal_carries_items_but_is_no_plan_change():
    sub = p.subscription(period_start=p.T0, period_end=p.T0 + 30 * 86400)
    prev = {"items": _renewal_items(sub, p.T0 - 30 * 86400, p.T0), "latest_invoice": "in_1Oold"}
    change = model.parse_event(p.event("customer.subscription.updated", sub, previous=prev))
    assert change.plan_changed is False


def test_a_pre_basil_renewal_is_no_plan_change():
    sub = p.subscription(version=p.PRE_BASIL)
    prev = {"current_period_start": p.T0 - 30 * 86400, "current_period_end": p.T0, "latest_invoice": "in_1Oold"}
    change = model.parse_event(p.event("customer.subscription.updated", sub, previous=prev, version=p.PRE_BASIL))
    assert change.plan_changed is False


@pytest.mark.parametrize("edit", ["quantity", "price", "item id", "item added"])
def test_a_change_of_items_by_id_price_or_quantity_is_a_plan_change(edit):
    sub = p.subscription()
    before = copy.deepcopy(sub["items"])
    item = before["data"][0]
    if edit == "quantity":
        item["quantity"] = 7
    elif edit == "price":
        item["price"] = {**item["price"], "id": "price_1Oother0000000"}
    elif edit == "item id":
        item["id"] = "si_Qold0000"
    else:
        before["data"] = []
    change = model.parse_event(p.event("customer.subscription.updated", sub, previous={"items": before}))
    assert change.plan_changed is True


def test_the_events_own_version_decides_which_fields_count():
    old = p.subscription(version=p.PRE_BASIL)
    pre = model.parse_event(p.event("customer.subscription.updated", old, previous={"plan": {"id": "price_x"}},
                                    version=p.PRE_BASIL))
    assert pre.plan_changed is True  # pre-basil: the subscription's own plan changed
    cur = model.parse_event(p.event("customer.subscription.updated", p.subscription(), previous={"quantity": 1}))
    assert cur.plan_changed is False  # basil+: only items say what the plan is


def test_a_first_page_of_items_is_read_with_care():
    sub = p.subscription(items=[(p.price(), 1)] * 2)
    sub["items"]["has_more"] = True
    renewal = {"items": _renewal_items(sub, p.T0 - 30 * 86400, p.T0)}
    change = model.parse_event(p.event("customer.subscription.updated", sub, previous=renewal))
    assert change.plan_changed is False and change.items_complete is False
    unseen = {"items": copy.deepcopy(sub["items"])}  # nothing on the first page changed: the change is past it
    assert model.parse_event(p.event("customer.subscription.updated", sub, previous=unseen)).plan_changed is True
    full = model.with_all_items(change, [*sub["items"]["data"], {**sub["items"]["data"][0], "id": "si_Qabc0099"}])
    assert len(full.lines) == 3 and full.items_complete is True


# --- the parser table: every event type stripe-sf reads has a parser, and nothing else is parsed ----

def test_every_event_type_asked_of_stripe_has_a_parser_and_the_lists_derive_from_the_table():
    assert set(model.EVENT_TYPES) <= set(model.PARSERS)
    assert model.NOT_REQUESTED <= set(model.PARSERS)
    assert model.EVENT_TYPES == tuple(t for t in model.PARSERS if t not in model.NOT_REQUESTED)
    assert len(set(model.EVENT_TYPES)) == len(model.EVENT_TYPES)
    for derived, parser in ((model.COLLECTED_EVENT_TYPES, model.parse_collected),
                            (model.CUSTOMER_EVENT_TYPES, model.parse_customer),
                            (model.CREDIT_NOTE_EVENT_TYPES, model.parse_credit_note)):
        assert derived == {t for t, p in model.PARSERS.items() if p is parser}


@pytest.mark.parametrize("event_type", sorted(model.PARSERS))
def test_each_table_entry_reaches_its_parser(event_type, monkeypatch):
    seen = []
    monkeypatch.setitem(model.PARSERS, event_type, lambda event, meta: seen.append(meta.event_type) or "parsed")
    assert model.parse_event(p.event(event_type, {"id": "x"})) == "parsed"
    assert seen == [event_type]


def test_a_type_not_in_the_table_is_unsupported_with_its_reason():
    change = model.parse_event(p.event("invoice.paid", {"id": "in_1234"}))
    assert isinstance(change, model.Unsupported)
    assert change.meta.event_type == "invoice.paid" and change.reason == "event type has no rule"
