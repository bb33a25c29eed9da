"""Stripe's MRR and the first period's amount (stripe_sf_sync.mrr), from realistic payloads.

Field names follow Stripe's own example objects (`/work/shared/data/stripe-openapi-fixtures3.json`) and the
SDK (`stripe/_subscription.py`, `_price.py`, `_coupon.py`, `_discount.py`, `_invoice.py`). Three payload
generations: pre-basil (singular `discount`, coupon expanded), basil (`discounts`: ids or Discount objects with
`coupon` expanded) and clover (a Discount names its coupon under `source.coupon`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from stripe_sf_sync import mrr
from stripe_sf_sync.mrr import Lookups

D = Decimal
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
MONTH = 31 * 86_400


# --- payload builders ----------------------------------------------------------------------------

def price(unit: int | None = 2000, *, currency: str = "usd", interval: str | None = "month", count: int = 1,
          pid: str = "price_pro", product: str = "prod_pro", **extra: Any) -> dict[str, Any]:
    """A Price as a subscription item carries it (no `tiers`/`currency_options`: includable only)."""
    body: dict[str, Any] = {
        "id": pid, "object": "price", "active": True, "billing_scheme": "per_unit", "currency": currency,
        "product": product, "tax_behavior": "unspecified", "tiers_mode": None, "transform_quantity": None,
        "type": "recurring" if interval else "one_time", "unit_amount": unit,
        "unit_amount_decimal": None if unit is None else str(unit),
        "recurring": None if interval is None else {"interval": interval, "interval_count": count, "meter": None,
                                                    "usage_type": "licensed", "trial_period_days": None},
    }
    body.update(extra)
    return body


def item(p: dict[str, Any], quantity: int | None = 1, *, iid: str = "si_1", discounts: list[Any] | None = None,
         tax_rates: list[Any] | None = None) -> dict[str, Any]:
    return {"id": iid, "object": "subscription_item", "price": p, "quantity": quantity, "metadata": {},
            "discounts": discounts or [], "tax_rates": tax_rates or [], "current_period_start": T0,
            "current_period_end": T0 + MONTH}


def sub(items: list[dict[str, Any]], *, currency: str = "usd", status: str = "active", gen: str = "basil",
        discount: dict[str, Any] | None = None, discounts: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "sub_1", "object": "subscription", "customer": "cus_1", "currency": currency, "status": status,
        "automatic_tax": {"enabled": False, "liability": None, "disabled_reason": None},
        "cancel_at": None, "cancel_at_period_end": False, "default_tax_rates": [], "trial_end": None,
        "items": {"object": "list", "data": items, "has_more": False},
        "discounts": discounts or [],
    }
    if gen == "pre-basil":
        body["discount"] = discount
        body["current_period_start"], body["current_period_end"] = T0, T0 + MONTH
    body.update(extra)
    return body


def coupon(*, percent: float | int | None = None, amount: int | None = None, currency: str | None = None,
           duration: str = "forever", months: int | None = None, cid: str = "co_1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid, "object": "coupon", "amount_off": amount, "percent_off": percent,
        "currency": currency if amount is not None else None, "duration": duration,
        "duration_in_months": months, "valid": True, "name": cid,
    }
    body.update(extra)
    return body


def discount(c: dict[str, Any] | str, *, gen: str = "basil", did: str = "di_1", end: int | None = None,
             start: int = T0) -> dict[str, Any]:
    """A Discount: pre-basil and basil carry `coupon` expanded; clover names it under `source`."""
    body: dict[str, Any] = {"id": did, "object": "discount", "customer": "cus_1", "start": start, "end": end,
                            "promotion_code": None, "subscription": "sub_1", "subscription_item": None}
    if gen == "clover":
        body["source"] = {"type": "coupon", "coupon": c}
    else:
        body["coupon"] = c
    return body


def tax_rate(percentage: float | int, *, inclusive: bool, rid: str = "txr_1") -> dict[str, Any]:
    return {"id": rid, "object": "tax_rate", "active": True, "country": "DE", "display_name": "VAT",
            "inclusive": inclusive, "percentage": percentage, "effective_percentage": None, "rate_type": None}


def value(subscription: dict[str, Any], lookups: Lookups | None = None, **kw: Any) -> mrr.SubscriptionValue:
    return mrr.subscription_value(subscription, lookups, **kw)


# --- prices, intervals and currencies --------------------------------------------------------------

PRICE_CASES = [
    # (name, items, currency, expected MRR, expected ARR)
    ("monthly x3", [item(price(2000), 3)], "usd", "60.00", "720.00"),
    ("yearly 1200 counts 100 (support.stripe.com billing-analytics)", [item(price(120000, interval="year"))],
     "usd", "100.00", "1200.00"),
    ("quarterly", [item(price(30000, count=3))], "usd", "100.00", "1200.00"),
    ("weekly: 52 weeks a year", [item(price(1000, interval="week"))], "usd", "43.33", "520.00"),
    ("daily: 365 days a year", [item(price(100, interval="day"))], "usd", "30.42", "365.00"),
    ("fractional unit_amount_decimal", [item(price(None, unit_amount_decimal="0.5"), 1000)], "usd", "5.00", "60.00"),
    ("free plan", [item(price(0))], "usd", "0.00", "0.00"),
    ("quantity 0", [item(price(2000), 0)], "usd", "0.00", "0.00"),
    ("null quantity is 1", [item(price(2000), None)], "usd", "20.00", "240.00"),
    ("items on different intervals", [item(price(1000), iid="si_a"),
                                      item(price(12000, interval="year", pid="price_y"), iid="si_b")],
     "usd", "20.00", "240.00"),
    ("metered item left out", [item(price(1000)),
                               item(price(5, pid="price_m", recurring={"interval": "month", "interval_count": 1,
                                                                      "usage_type": "metered"}), None, iid="si_m")],
     "usd", "10.00", "120.00"),
    ("JPY is zero-decimal", [item(price(5000, currency="jpy"))], "jpy", "5000", "60000"),
    ("JPY yearly rounds to the yen", [item(price(50000, currency="jpy", interval="year"))], "jpy", "4167", "50000"),
    ("KWD is three-decimal", [item(price(12500, currency="kwd"))], "kwd", "12.500", "150.000"),
    ("KWD yearly", [item(price(10000, currency="kwd", interval="year"))], "kwd", "0.833", "10.000"),
    ("package pricing rounds up", [item(price(5000, transform_quantity={"divide_by": 10, "round": "up"}), 25)],
     "usd", "150.00", "1800.00"),
    ("package pricing rounds down", [item(price(5000, transform_quantity={"divide_by": 10, "round": "down"}), 25)],
     "usd", "100.00", "1200.00"),
    ("very old Plan (amount, no price)", [{"id": "si_1", "quantity": 2, "plan": {
        "id": "gold", "object": "plan", "amount": 1500, "currency": "usd", "interval": "month",
        "interval_count": 1, "usage_type": "licensed", "billing_scheme": "per_unit"}}], "usd", "30.00", "360.00"),
]


@pytest.mark.parametrize(("name", "items", "currency", "want_mrr", "want_arr"), PRICE_CASES,
                         ids=[c[0] for c in PRICE_CASES])
def test_price_shapes(name: str, items: list[dict[str, Any]], currency: str, want_mrr: str, want_arr: str) -> None:
    got = value(sub(items, currency=currency))
    assert got.mrr == mrr.Figure(D(want_mrr), currency)
    assert str(got.mrr.value) == want_mrr  # quantized to the currency's exponent
    assert got.arr == mrr.Figure(D(want_arr), currency)


TIERS = [
    {"up_to": 5, "unit_amount": 1000, "unit_amount_decimal": "1000", "flat_amount": None, "flat_amount_decimal": None},
    {"up_to": 10, "unit_amount": 800, "unit_amount_decimal": "800", "flat_amount": 500, "flat_amount_decimal": "500"},
    {"up_to": None, "unit_amount": 600, "unit_amount_decimal": "600", "flat_amount": None, "flat_amount_decimal": None},
]


@pytest.mark.parametrize(("mode", "quantity", "want"), [
    ("volume", 3, "30.00"),       # 3 x 10.00
    ("volume", 7, "61.00"),       # all 7 at 8.00, plus the tier's flat 5.00
    ("volume", 12, "72.00"),      # all 12 at 6.00
    ("graduated", 3, "30.00"),    # 3 x 10.00
    ("graduated", 7, "71.00"),    # 5 x 10.00 + 2 x 8.00 + flat 5.00
    ("graduated", 12, "107.00"),  # 5 x 10.00 + 5 x 8.00 + 5.00 + 2 x 6.00
    ("graduated", 0, "0.00"),
])
def test_tiered_prices(mode: str, quantity: int, want: str) -> None:
    tiered = price(None, billing_scheme="tiered", tiers_mode=mode, unit_amount_decimal=None, tiers=TIERS)
    assert value(sub([item(tiered, quantity)])).mrr.value == D(want)


def test_tiered_price_without_tiers_is_unknowable_until_the_price_is_fetched() -> None:
    payload = price(None, billing_scheme="tiered", tiers_mode="graduated", unit_amount_decimal=None)
    s = sub([item(payload, 7)])
    got = value(s)
    assert got.mrr.value is None and got.arr.value is None
    assert "tiered" in (got.mrr.reason or "") and "expand[]=tiers" in (got.mrr.reason or "")
    assert mrr.needed(s).prices == ("price_pro",)
    fetched = Lookups(prices={"price_pro": {**payload, "tiers": TIERS}})
    assert not mrr.needed(s, fetched)
    assert value(s, fetched).mrr.value == D("71.00")


def test_billed_in_a_currency_option() -> None:
    """Billed in EUR from a USD-default Price: the item shows USD; the EUR option is what is billed."""
    s = sub([item(price(2000))], currency="eur")
    assert mrr.needed(s).prices == ("price_pro",)
    assert "currency_options" in (value(s).mrr.reason or "")
    with_options = Lookups(prices={"price_pro": {**price(2000), "currency_options": {
        "usd": {"unit_amount": 2000, "unit_amount_decimal": "2000", "tax_behavior": "unspecified"},
        "eur": {"unit_amount": 1800, "unit_amount_decimal": "1800", "tax_behavior": "unspecified"}}}})
    assert value(s, with_options).mrr == mrr.Figure(D("18.00"), "eur")
    no_eur = Lookups(prices={"price_pro": {**price(2000), "currency_options": {"usd": {"unit_amount": 2000}}}})
    got = value(s, no_eur)
    assert got.mrr.value is None and "has no EUR amount" in (got.mrr.reason or "")


def test_currency_option_into_jpy() -> None:
    s = sub([item(price(2000))], currency="jpy")
    lk = Lookups(prices={"price_pro": {**price(2000), "currency_options": {"jpy": {"unit_amount": 3000}}}})
    assert value(s, lk).mrr == mrr.Figure(D("3000"), "jpy")


# --- tax ------------------------------------------------------------------------------------------

def test_inclusive_tax_rate_is_not_revenue() -> None:
    s = sub([item(price(11900), tax_rates=[tax_rate(19, inclusive=True)])])
    assert value(s).mrr.value == D("100.00")


def test_exclusive_tax_rate_changes_nothing() -> None:
    s = sub([item(price(10000), tax_rates=[tax_rate(19, inclusive=False)])])
    assert value(s).mrr.value == D("100.00")


def test_default_tax_rates_apply_to_items_without_their_own() -> None:
    s = sub([item(price(12000), iid="si_a"), item(price(12000, pid="price_b"), iid="si_b",
                                                   tax_rates=[tax_rate(0, inclusive=True, rid="txr_0")])],
            default_tax_rates=[tax_rate(20, inclusive=True)])
    assert value(s).mrr.value == D("220.00")  # 120/1.2 + 120/1.0


def test_inclusive_tax_after_a_discount() -> None:
    """The tax inside a discounted price is on the discounted amount."""
    s = sub([item(price(12000), tax_rates=[tax_rate(20, inclusive=True)])],
            discounts=[discount(coupon(amount=2000, currency="usd"))])
    assert value(s).mrr.value == D("83.33")  # (120 - 20) / 1.2


@pytest.mark.parametrize(("behavior", "default", "want"), [
    ("exclusive", None, "20.00"),
    ("unspecified", "exclusive", "20.00"),
    ("inclusive", None, None),
    ("unspecified", None, None),
    ("unspecified", "inferred_by_currency", None),
])
def test_stripe_tax(behavior: str, default: str | None, want: str | None) -> None:
    s = sub([item(price(2000, tax_behavior=behavior))], automatic_tax={"enabled": True, "liability": None})
    got = value(s, default_tax_behavior=default)
    assert got.mrr.value == (None if want is None else D(want))
    if want is None:
        assert "Stripe Tax" in (got.mrr.reason or "")


def test_tax_inclusive_price_without_tax_collected_is_all_revenue() -> None:
    assert value(sub([item(price(2000, tax_behavior="inclusive"))])).mrr.value == D("20.00")


def test_unexpanded_tax_rate_is_unknowable() -> None:
    got = value(sub([item(price(2000), tax_rates=["txr_1"])]))
    assert got.mrr.value is None and "txr_1" in (got.mrr.reason or "")


# --- discounts in each generation ---------------------------------------------------------------------

def subs_with(c: dict[str, Any], gen: str) -> tuple[dict[str, Any], Lookups]:
    """One 100.00/month subscription carrying coupon `c` at subscription level, as `gen` renders it."""
    items = [item(price(10000))]
    if gen == "pre-basil":
        return sub(items, gen=gen, discount=discount(c)), Lookups()
    if gen == "basil":
        return sub(items, discounts=[discount(c)]), Lookups()
    if gen == "basil-ids":
        return sub(items, discounts=["di_1"]), Lookups(discounts={"di_1": discount(c)})
    if gen == "clover-expanded":
        return sub(items, discounts=[discount(c, gen="clover")]), Lookups()
    assert gen == "clover"
    return (sub(items, discounts=["di_1"]),
            Lookups(discounts={"di_1": discount(c["id"], gen="clover")}, coupons={c["id"]: c}))


GENERATIONS = ["pre-basil", "basil", "basil-ids", "clover-expanded", "clover"]
DISCOUNT_CASES = [
    ("forever 25% lowers MRR", coupon(percent=25), "75.00"),
    ("forever 33.33% (a float in JSON) stays exact", coupon(percent=33.33), "66.67"),
    ("once does not", coupon(percent=25, duration="once"), "100.00"),
    ("repeating does not", coupon(percent=50, duration="repeating", months=3), "100.00"),
    ("forever 100% is a free plan", coupon(percent=100), "0.00"),
    ("forever amount off per monthly invoice", coupon(amount=1500, currency="usd"), "85.00"),
    ("amount off never below zero", coupon(amount=50000, currency="usd"), "0.00"),
    ("amount off in the billed currency's option",
     coupon(amount=1000, currency="eur", currency_options={"usd": {"amount_off": 1200}}), "88.00"),
    ("restricted to another product", coupon(percent=25, applies_to={"products": ["prod_other"]}), "100.00"),
    ("restricted to this product", coupon(percent=25, applies_to={"products": ["prod_pro"]}), "75.00"),
]


@pytest.mark.parametrize("gen", GENERATIONS)
@pytest.mark.parametrize(("name", "c", "want"), DISCOUNT_CASES, ids=[c[0] for c in DISCOUNT_CASES])
def test_subscription_discounts(gen: str, name: str, c: dict[str, Any], want: str) -> None:
    s, lookups = subs_with(c, gen)
    assert not mrr.needed(s, lookups)
    assert value(s, lookups).mrr.value == D(want)


def test_discount_ids_are_reported_then_their_coupons() -> None:
    """Basil sends ids; clover's Discounts name their coupon by id: two rounds of fetching."""
    c = coupon(percent=10, cid="co_ten")
    s = sub([item(price(10000), discounts=["di_item"])], discounts=["di_1"])
    first = mrr.needed(s)
    assert first == mrr.Needed(discounts=("di_1", "di_item"))
    got = value(s)
    assert got.mrr.value is None and "expand[]=discounts" in (got.mrr.reason or "")
    fetched = Lookups(discounts={"di_1": discount("co_ten", gen="clover"),
                                 "di_item": discount("co_ten", gen="clover", did="di_item")})
    assert mrr.needed(s, fetched) == mrr.Needed(coupons=("co_ten",))
    assert "GET /v1/coupons/co_ten" in (value(s, fetched).mrr.reason or "")
    done = Lookups(discounts=fetched.discounts, coupons={"co_ten": c})
    assert not mrr.needed(s, done)
    assert value(s, done).mrr.value == D("81.00")  # item 10% first, then the subscription's 10%


def test_amount_off_without_the_billed_currency_is_unknowable() -> None:
    s = sub([item(price(10000))], discounts=[discount(coupon(amount=1000, currency="eur"))])
    got = value(s)
    assert got.mrr.value is None and "EUR" in (got.mrr.reason or "") and "USD" in (got.mrr.reason or "")


def test_amount_off_per_yearly_invoice_is_spread_over_twelve_months() -> None:
    s = sub([item(price(120000, interval="year"))], discounts=[discount(coupon(amount=12000, currency="usd"))])
    assert value(s).mrr.value == D("90.00")  # (1200 - 120) / 12


def test_item_discounts_apply_to_their_item_only_and_first() -> None:
    s = sub([item(price(10000), iid="si_a", discounts=[discount(coupon(percent=50), did="di_a")]),
             item(price(5000, pid="price_b", product="prod_b"), iid="si_b")],
            discounts=[discount(coupon(amount=3000, currency="usd"))])
    # item a: 100 -> 50; then 30 off the invoice (50 + 50), shared 15/15: 35 + 35
    assert value(s).mrr.value == D("70.00")


def test_amount_off_across_items_on_different_intervals() -> None:
    """It comes off every monthly invoice; the yearly renewal invoice is one of them."""
    items = [item(price(1000), iid="si_m"), item(price(12000, interval="year", pid="price_y"), iid="si_y")]
    s = sub(items, discounts=[discount(coupon(amount=500, currency="usd"))])
    assert value(s).mrr.value == D("15.00")  # 10 + 10 - 5
    too_big = sub(items, discounts=[discount(coupon(amount=1500, currency="usd"))])
    got = value(too_big)
    assert got.mrr.value is None and "different intervals" in (got.mrr.reason or "")


def test_pre_basil_discount_listed_twice_counts_once() -> None:
    d = discount(coupon(percent=20))
    s = sub([item(price(10000))], gen="pre-basil", discount=d, discounts=[d])
    assert value(s).mrr.value == D("80.00")


def test_customer_discount_applies_only_without_a_subscription_discount() -> None:
    cust = discount(coupon(percent=10, cid="co_cust"), did="di_cust")
    assert value(sub([item(price(10000))]), customer_discount=cust).mrr.value == D("90.00")
    own = sub([item(price(10000))], discounts=[discount(coupon(percent=20))])
    assert value(own, customer_discount=cust).mrr.value == D("80.00")


def test_dashboard_configured_to_subtract_once_and_repeating_discounts() -> None:
    s = sub([item(price(10000))], discounts=[discount(coupon(percent=50, duration="repeating", months=3))])
    assert value(s).mrr.value == D("100.00")
    assert value(s, durations=mrr.ALL_DURATIONS).mrr.value == D("50.00")


# --- what Stripe's Dashboard counts ---------------------------------------------------------------------

@pytest.mark.parametrize(("status", "extra", "counted"), [
    ("active", {}, True),
    ("past_due", {}, True),
    ("trialing", {}, False),
    ("unpaid", {}, False),
    ("canceled", {}, False),
    ("incomplete", {}, False),
    ("paused", {}, False),
    ("active", {"cancel_at_period_end": True}, False),
    ("active", {"cancel_at": T0 + MONTH}, False),
])
def test_counted_by_stripe(status: str, extra: dict[str, Any], counted: bool) -> None:
    got = value(sub([item(price(10000))], status=status, **extra))
    assert got.counted is counted
    assert got.mrr.value == D("100.00")  # the subscription's own value, for its Opportunity
    assert got.dashboard_mrr.value == (D("100.00") if counted else D("0.00"))


def test_glossary_example() -> None:
    """docs.stripe.com/billing/subscriptions/analytics/glossary: 100 subscribers at 100 USD a month and 50 at
    600 USD a year make 12,500 USD."""
    plan_a = [value(sub([item(price(10000))])) for _ in range(100)]
    plan_b = [value(sub([item(price(60000, interval="year"))])) for _ in range(50)]
    assert mrr.customer_mrr(plan_a + plan_b) == mrr.Figure(D("12500.00"), "usd")


def test_customer_mrr_in_one_currency_only() -> None:
    usd = value(sub([item(price(10000))]))
    eur = value(sub([item(price(10000, currency="eur"))], currency="eur"))
    trial = value(sub([item(price(10000))], status="trialing"))
    assert mrr.customer_mrr([usd, trial]) == mrr.Figure(D("100.00"), "usd")
    mixed = mrr.customer_mrr([usd, eur])
    assert mixed is not None and mixed.value is None and "EUR, USD" in (mixed.reason or "")
    assert mrr.customer_mrr([trial]) is None


# --- the first period's amount ------------------------------------------------------------------------

def test_trial_first_invoice_applies_every_discount_still_on_it() -> None:
    trial_end = T0 + 14 * 86_400
    s = sub([item(price(10000))], status="trialing", trial_end=trial_end,
            discounts=[discount(coupon(percent=50, duration="once", cid="co_once"), did="di_once"),
                       discount(coupon(amount=1000, currency="usd", duration="forever", cid="co_ten"), did="di_ten")])
    assert mrr.first_period_from_subscription(s) == mrr.Figure(D("40.00"), "usd")  # 100 x 0.5 - 10
    assert value(s).mrr.value == D("90.00")  # MRR keeps only the forever one


def test_repeating_discount_that_ends_before_the_first_invoice_does_not_apply() -> None:
    c = coupon(percent=50, duration="repeating", months=1)
    trial_end = T0 + 60 * 86_400
    ended = sub([item(price(10000))], status="trialing", trial_end=trial_end,
                discounts=[discount(c, end=T0 + MONTH)])
    assert mrr.first_period_from_subscription(ended).value == D("100.00")
    running = sub([item(price(10000))], status="trialing", trial_end=trial_end,
                  discounts=[discount(c, end=trial_end + MONTH)])
    assert mrr.first_period_from_subscription(running).value == D("50.00")


def test_first_invoice_holds_one_period_of_every_item() -> None:
    s = sub([item(price(1000), iid="si_m"), item(price(12000, interval="year", pid="price_y"), iid="si_y"),
             item(price(5, pid="price_m", recurring={"interval": "month", "usage_type": "metered"}), None,
                  iid="si_u")],
            discounts=[discount(coupon(amount=500, currency="usd"))], status="trialing", trial_end=T0)
    assert mrr.first_period_from_subscription(s).value == D("125.00")  # 10 + 120 - 5, usage billed later


def test_first_period_unknowable_is_said() -> None:
    s = sub([item(price(2000, tax_behavior="inclusive"))], automatic_tax={"enabled": True})
    got = mrr.first_period_from_subscription(s)
    assert got.value is None and got.currency == "usd" and got.reason


def basil_invoice(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "in_1", "object": "invoice", "currency": "usd", "billing_reason": "subscription_create",
        "subtotal": 10000, "subtotal_excluding_tax": 10000, "total": 9600, "total_excluding_tax": 8000,
        "total_discount_amounts": [{"amount": 2000, "discount": "di_1"}],
        "total_taxes": [{"amount": 1600, "tax_behavior": "exclusive", "taxable_amount": 8000,
                         "type": "tax_rate_details"}],
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_1"}},
        "lines": {"object": "list", "has_more": False, "data": [{
            "id": "il_1", "object": "line_item", "amount": 10000, "currency": "usd",
            "discount_amounts": [{"amount": 2000, "discount": "di_1"}], "quantity": 1,
            "taxes": [{"amount": 1600, "tax_behavior": "exclusive"}]}]},
    }
    body.update(extra)
    return body


INVOICE_CASES = [
    ("basil: total_excluding_tax", basil_invoice(), "80.00"),
    ("basil without total_excluding_tax: total less total_taxes",
     basil_invoice(total_excluding_tax=None), "80.00"),
    ("pre-basil: total less total_tax_amounts (inclusive and exclusive)",
     {"id": "in_2", "currency": "eur", "total": 11900, "subscription": "sub_1",
      "total_tax_amounts": [{"amount": 1900, "inclusive": True, "tax_rate": "txr_1"}]}, "100.00"),
    ("oldest: total less tax", {"id": "in_3", "currency": "usd", "total": 5500, "tax": 500}, "50.00"),
    ("oldest, no tax", {"id": "in_4", "currency": "usd", "total": 5000, "tax": None}, "50.00"),
    ("JPY", basil_invoice(currency="jpy", total_excluding_tax=4500), "4500"),
    ("KWD", basil_invoice(currency="kwd", total_excluding_tax=12340), "12.340"),
    ("a 100% coupon: nothing charged", basil_invoice(total=0, total_excluding_tax=0), "0.00"),
]


@pytest.mark.parametrize(("name", "invoice", "want"), INVOICE_CASES, ids=[c[0] for c in INVOICE_CASES])
def test_first_period_from_invoice(name: str, invoice: dict[str, Any], want: str) -> None:
    got = mrr.first_period_from_invoice(invoice)
    assert got.value == D(want) and str(got.value) == want


def test_invoice_without_totals_is_unknowable() -> None:
    got = mrr.first_period_from_invoice({"id": "in_5", "currency": "usd"})
    assert got.value is None and "in_5" in (got.reason or "")


def test_invoice_discounts_cost() -> None:
    assert mrr.invoice_discounts(basil_invoice()) == mrr.Figure(D("20.00"), "usd")


# --- one customer's year ---------------------------------------------------------------------------------

def test_worked_example_one_customers_year() -> None:
    """The docs' worked example (clover payloads). Refunds and disputes change what was collected, never
    MRR (issue 22 items 1 and 3), so they do not appear here."""
    pro = price(10000, pid="price_pro", product="prod_pro")
    addon = price(120000, interval="year", pid="price_addon", product="prod_addon")
    launch = coupon(percent=20, cid="LAUNCH20")  # forever
    welcome = coupon(percent=50, duration="repeating", months=3, cid="WELCOME50")
    lookups = Lookups(discounts={"di_launch": discount("LAUNCH20", gen="clover", did="di_launch"),
                                 "di_welcome": discount("WELCOME50", gen="clover", did="di_welcome",
                                                        end=T0 + 90 * 86_400)},
                      coupons={"LAUNCH20": launch, "WELCOME50": welcome})

    def figures(s: dict[str, Any]) -> tuple[Decimal | None, Decimal | None]:
        got = value(s, lookups)
        return got.mrr.value, got.arr.value

    # January: subscribes to Pro (100.00/month) with both coupons; the first invoice charges 40.00.
    jan = sub([item(pro)], discounts=["di_launch", "di_welcome"], gen="clover")
    assert mrr.needed(jan) == mrr.Needed(discounts=("di_launch", "di_welcome"))
    assert figures(jan) == (D("80.00"), D("960.00"))
    assert mrr.first_period_from_subscription(jan, lookups, at=T0).value == D("40.00")
    assert mrr.first_period_from_invoice(basil_invoice(total=4000, total_excluding_tax=4000,
                                                       total_taxes=[])).value == D("40.00")
    # April: the 3-month coupon ended (Stripe removes it): invoices go up, MRR does not.
    apr = sub([item(pro)], discounts=["di_launch"])
    assert figures(apr) == (D("80.00"), D("960.00"))
    # June: upgrade to 3 seats.
    jun = sub([item(pro, 3)], discounts=["di_launch"])
    assert figures(jun) == (D("240.00"), D("2880.00"))
    # September: adds a yearly add-on (1,200.00/year); the forever coupon covers it too.
    sep = sub([item(pro, 3), item(addon, iid="si_addon")], discounts=["di_launch"])
    assert figures(sep) == (D("320.00"), D("3840.00"))
    # November: the coupon is removed: a value change (customer.subscription.updated with `discounts`).
    nov = sub([item(pro, 3), item(addon, iid="si_addon")])
    assert figures(nov) == (D("400.00"), D("4800.00"))
    # December: scheduled to cancel: Stripe stops counting it now; the Opportunity keeps its value.
    dec = value(sub([item(pro, 3), item(addon, iid="si_addon")], cancel_at_period_end=True), lookups)
    assert (dec.mrr.value, dec.dashboard_mrr.value) == (D("400.00"), D("0.00"))


# --- what cannot be known is said, never guessed ------------------------------------------------------------

UNKNOWABLE_CASES = [
    ("item without a price", sub([{"id": "si_1", "quantity": 1}]), "has no price"),
    ("unknown interval", sub([item(price(100, interval="fortnight"))]), "interval"),
    ("bad package rounding", sub([item(price(100, transform_quantity={"divide_by": 10, "round": "half"}))]),
     "round"),
    ("boolean quantity", sub([item(price(100), True)]), "quantity"),  # type: ignore[arg-type]
    ("percent above 100", sub([item(price(100))], discounts=[discount(coupon(percent=150))]), "percent_off"),
    ("unknown coupon duration", sub([item(price(100))], discounts=[discount(coupon(percent=5, duration="weekly"))]),
     "duration"),
    ("coupon with no amount", sub([item(price(100))], discounts=[discount(coupon())]), "neither"),
    ("discount from something else than a coupon", sub([item(price(100))], discounts=[
        {"id": "di_x", "object": "discount", "source": {"type": "voucher", "coupon": None}, "end": None}]),
     "voucher"),
    ("a customer-chosen amount", sub([item(price(None, unit_amount_decimal=None))]), "no unit amount"),
    ("inclusive flat-amount tax", sub([item(price(100), tax_rates=[
        {**tax_rate(0, inclusive=True), "rate_type": "flat_amount"}])]), "flat amount"),
]


@pytest.mark.parametrize(("name", "subscription", "said"), UNKNOWABLE_CASES, ids=[c[0] for c in UNKNOWABLE_CASES])
def test_unknowable_says_why(name: str, subscription: dict[str, Any], said: str) -> None:
    got = value(subscription)
    assert got.mrr.value is None and got.arr.value is None
    assert said in (got.mrr.reason or ""), got.mrr.reason
    assert (got.mrr.reason or "").startswith("sub_1")  # names the subscription, once, for the run's warning
    assert not mrr.needed(subscription)  # nothing the caller could fetch would help
    assert mrr.first_period_from_subscription(subscription).value is None


def test_a_subscription_without_any_currency_is_malformed() -> None:
    with pytest.raises(ValueError, match="names no currency"):
        value({"id": "sub_1", "items": {"data": []}})


def test_active_subscription_first_period_uses_the_discounts_on_it_now() -> None:
    """An old `trial_end` of an active subscription does not date the first invoice."""
    c = coupon(percent=50, duration="repeating", months=3)
    s = sub([item(price(10000))], trial_end=T0 - 400 * 86_400, discounts=[discount(c, end=T0 + MONTH)])
    assert mrr.first_period_from_subscription(s).value == D("50.00")
    assert mrr.first_period_from_subscription(s, at=T0 + 2 * MONTH).value == D("100.00")


def test_results_are_decimals_never_floats() -> None:
    got = value(sub([item(price(999, interval="week"))], discounts=[discount(coupon(percent=12.5))]))
    assert isinstance(got.mrr.value, Decimal) and isinstance(got.arr.value, Decimal)
    assert got.mrr.value == D("37.88")  # 9.99 x 0.875 x 52 / 12 = 37.87875
    assert got.arr.value == D("454.55")  # exactly 454.545: half up, not a hair below it


@pytest.mark.parametrize("currency", [None, "dollars", 840])
def test_invoice_without_a_valid_currency_is_malformed(currency: Any) -> None:
    with pytest.raises(ValueError, match="in_1 names no valid currency"):
        mrr.first_period_from_invoice(basil_invoice(currency=currency))
    with pytest.raises(ValueError):
        mrr.invoice_discounts(basil_invoice(currency=currency))


# --- which updates change the value ---------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "previous", "changed"), [
    ("coupon added (basil+)", {"discounts": []}, True),
    ("coupon removed (pre-basil)", {"discount": {"id": "di_old", "coupon": coupon(percent=5)}}, True),
    ("a renewal moves item periods only", {"items": {"object": "list", "data": [
        {**item(price(10000), discounts=["di_item"]), "current_period_end": T0}]}}, False),
    ("an item's coupon removed", {"items": {"object": "list", "data": [
        item(price(10000), discounts=["di_item", "di_gone"])]}}, True),
    ("metadata only", {"metadata": {"plan": "old"}}, False),
    ("no previous attributes", None, False),
])
def test_discounts_changed(name: str, previous: dict[str, Any] | None, changed: bool) -> None:
    now = sub([item(price(10000), discounts=["di_item"])], discounts=["di_1"])
    assert mrr.discounts_changed(now, previous) is changed
