"""The public figures: a subscription's MRR/ARR and first period, a customer's MRR, and what to read first."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal, localcontext
from typing import Any

from stripe_sf_sync import money
from stripe_sf_sync.mrr.discounts import (
    Discount,
    _subscription_discount_refs,
    parse_discount,
)
from stripe_sf_sync.mrr.figures import (
    COUNTED_STATUSES,
    DEFAULT_MRR_DURATIONS,
    Figure,
    Lookups,
    Needed,
    SubscriptionValue,
    Unknowable,
)
from stripe_sf_sync.mrr.items import _discounted, _items, _net
from stripe_sf_sync.mrr.prices import _price_of
from stripe_sf_sync.mrr.readers import (
    _PRECISION,
    _currency,
    _decimal,
    _id,
    _list,
    _minor_to_figure,
    _obj,
    _safely,
)

# --- the public figures ----------------------------------------------------------------------

def billed_currency(subscription: Mapping[str, Any]) -> str:
    """The currency the subscription is billed in (`currency`; very old payloads: its first price's).
    Raises ValueError when the payload names none (a malformed payload, dead-lettered upstream)."""
    candidates = [subscription.get("currency")]
    first = _obj(next(iter(_list(subscription.get("items"))), None))
    if first is not None:
        price = _obj(first.get("price")) or _obj(first.get("plan")) or {}
        candidates.append(price.get("currency"))
    for value in candidates:
        if isinstance(value, str):
            try:
                return _currency(value, "currency")
            except Unknowable:
                continue
    raise ValueError(f"subscription {subscription.get('id')} names no currency")


def counted_by_stripe(subscription: Mapping[str, Any]) -> bool:
    """Whether Stripe's Dashboard counts the subscription in MRR now: active or past_due (glossary), and no
    cancellation scheduled, which by default stops counting "at the time of the API call"
    (support.stripe.com/questions/impact-of-subscription-cancellations-on-monthly-recurring-revenue-mrr-in-billing).
    A `cancel_at` date is read as a scheduled cancellation too (api-facts "Scheduled cancellation")."""
    if subscription.get("status") not in COUNTED_STATUSES:
        return False
    return not (subscription.get("cancel_at_period_end") is True or isinstance(subscription.get("cancel_at"), int))


def subscription_value(subscription: Mapping[str, Any], lookups: Lookups | None = None, *,
                       durations: frozenset[str] = DEFAULT_MRR_DURATIONS, customer_discount: Any = None,
                       default_tax_behavior: str | None = None) -> SubscriptionValue:
    """MRR and ARR by Stripe's definition: each licensed item's period amount after the discounts whose
    duration is in `durations` (forever only, Stripe's default), without the tax inside it, divided by the
    months its period lasts, summed. ARR is 12 x the unrounded MRR."""
    lookups = lookups or Lookups()
    billed = billed_currency(subscription)
    sub_id = str(subscription.get("id"))

    def monthly() -> Decimal:
        items = _items(subscription, billed, lookups, default_tax_behavior)
        subs = [parse_discount(ref, billed, lookups, f"{sub_id} discounts[{j}]")
                for j, ref in enumerate(_subscription_discount_refs(subscription, customer_discount))]
        amounts = _discounted(items, subs, lambda d: d.duration in durations, False, sub_id)
        return sum((_net(item, amounts[k]) / item.months for k, item in enumerate(items)), Decimal(0))

    try:
        with localcontext() as ctx:
            ctx.prec = _PRECISION
            exact = monthly()
    except Unknowable as exc:
        unknown = Figure(None, billed, str(exc))
        return SubscriptionValue(sub_id, billed, unknown, unknown, counted_by_stripe(subscription))
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        yearly = exact * 12
    return SubscriptionValue(sub_id, billed, _minor_to_figure(exact, billed), _minor_to_figure(yearly, billed),
                             counted_by_stripe(subscription))


def first_period_from_subscription(subscription: Mapping[str, Any], lookups: Lookups | None = None, *,
                                   at: int | None = None, customer_discount: Any = None,
                                   default_tax_behavior: str | None = None) -> Figure:
    """What the subscription's first paid invoice will charge before tax: one period of every licensed
    item after every discount still on it at `at` (default: a trialing subscription's `trial_end`, when that
    invoice comes; else every discount on it now), on one invoice. For a trial, until that invoice exists.

    A once discount still listed has not been used yet (Stripe removes a discount when it ends), so it
    applies; a repeating one applies while `at` is before its `end`. Metered items bill nothing in advance.
    """
    lookups = lookups or Lookups()
    billed = billed_currency(subscription)
    sub_id = str(subscription.get("id"))
    trial_end = subscription.get("trial_end") if subscription.get("status") == "trialing" else None
    when = at if at is not None else (trial_end if isinstance(trial_end, int) else None)

    def keep(discount: Discount) -> bool:
        return discount.end is None or when is None or when < discount.end

    def charge() -> Decimal:
        items = _items(subscription, billed, lookups, default_tax_behavior)
        subs = [parse_discount(ref, billed, lookups, f"{sub_id} discounts[{j}]")
                for j, ref in enumerate(_subscription_discount_refs(subscription, customer_discount))]
        amounts = _discounted(items, subs, keep, True, sub_id)
        return sum((_net(item, amounts[k]) for k, item in enumerate(items)), Decimal(0))

    return _safely(billed, charge)


def _tax_total(invoice: Mapping[str, Any], where: str) -> Decimal | None:
    """Every tax on the invoice, inclusive and exclusive: basil+ `total_taxes`, older `total_tax_amounts`,
    oldest `tax` (pkg `_invoice.py`); None when the payload carries none of them."""
    for key in ("total_taxes", "total_tax_amounts"):
        rows = invoice.get(key)
        if isinstance(rows, list):
            return sum((_decimal((_obj(r) or {}).get("amount"), f"{where}.{key}") or Decimal(0) for r in rows),
                       Decimal(0))
    tax = invoice.get("tax")
    if "tax" in invoice:
        return _decimal(tax, f"{where}.tax") or Decimal(0)
    return None


def _invoice_currency(invoice: Mapping[str, Any]) -> str:
    """The invoice's currency; ValueError for a malformed payload (dead-lettered upstream)."""
    try:
        return _currency(invoice.get("currency"), "currency")
    except Unknowable:
        raise ValueError(f"invoice {invoice.get('id')} names no valid currency") from None


def first_period_from_invoice(invoice: Mapping[str, Any]) -> Figure:
    """What an invoice charged after every discount, before any tax: `total_excluding_tax` ("including all
    discounts but excluding all tax", pkg `_invoice.py`), else `total` less its taxes. Credit notes and
    refunds are applied by the caller (issue 22 items 1-2); the customer balance does not change `total`."""
    where = str(invoice.get("id"))
    currency = _invoice_currency(invoice)

    def charged() -> Decimal:
        direct = _decimal(invoice.get("total_excluding_tax"), f"{where}.total_excluding_tax")
        if direct is not None:
            return direct
        total = _decimal(invoice.get("total"), f"{where}.total")
        taxes = _tax_total(invoice, where)
        if total is None or taxes is None:
            raise Unknowable(f"invoice {where} carries neither total_excluding_tax nor its total and taxes")
        return total - taxes

    return _safely(currency, charged)


def invoice_discounts(invoice: Mapping[str, Any]) -> Figure:
    """What the invoice's discounts took off, all durations (`total_discount_amounts`, pkg `_invoice.py`):
    what discounts cost, for reports."""
    where = str(invoice.get("id"))
    currency = _invoice_currency(invoice)

    def total() -> Decimal:
        return sum((_decimal((_obj(r) or {}).get("amount"), f"{where}.total_discount_amounts") or Decimal(0)
                    for r in _list(invoice.get("total_discount_amounts"))), Decimal(0))

    return _safely(currency, total)


def customer_mrr(values: Iterable[SubscriptionValue]) -> Figure | None:
    """A customer's MRR by Stripe's definition: the sum of its counted subscriptions' MRR, in one currency.
    None when it has no counted subscription; unknown (with why) when they are in several currencies or one
    is unknown."""
    counted = [v for v in values if v.counted]
    if not counted:
        return None
    currencies = sorted({v.currency for v in counted})
    if len(currencies) > 1:
        names = ", ".join(c.upper() for c in currencies)
        return Figure(None, currencies[0], f"billed in several currencies ({names}); an MRR in one currency "
                      "would need an exchange rate")
    for v in counted:
        if not v.mrr.known:
            return Figure(None, v.currency, v.mrr.reason)
    total = sum((v.mrr.value for v in counted if v.mrr.value is not None), Decimal(0))
    return Figure(money.quantize(total, currencies[0]), currencies[0])


def needed(subscription: Mapping[str, Any], lookups: Lookups | None = None) -> Needed:
    """The Discounts, coupons and Prices the payload names by id but does not carry, minus those in
    `lookups`. Call it again after fetching: a fetched Discount may name a coupon by id (clover)."""
    lookups = lookups or Lookups()
    billed = billed_currency(subscription)
    discounts: list[str] = []
    coupons: list[str] = []
    prices: list[str] = []
    items = [i for i in (_obj(raw) for raw in _list(subscription.get("items"))) if i is not None]
    refs = [*_subscription_discount_refs(subscription, None), *(r for i in items for r in _list(i.get("discounts")))]
    for ref in refs:
        discount = lookups.discounts.get(ref) if isinstance(ref, str) else _obj(ref)
        if discount is None:
            if isinstance(ref, str) and ref not in discounts:
                discounts.append(ref)
            continue
        coupon = discount.get("coupon") or (_obj(discount.get("source")) or {}).get("coupon")
        if isinstance(coupon, str) and coupon not in lookups.coupons and coupon not in coupons:
            coupons.append(coupon)
    for item in items:
        try:
            price = _price_of(item, lookups, "item")
        except Unknowable:
            continue  # no price at all: nothing to fetch; the figure says why
        price_id = price.get("id")
        if not isinstance(price_id, str) or price_id in prices:
            continue
        missing_option = (isinstance(price.get("currency"), str) and price["currency"].lower() != billed
                          and _obj(price.get("currency_options")) is None)
        missing_tiers = price.get("billing_scheme") == "tiered" and not isinstance(price.get("tiers"), list)
        if missing_option or missing_tiers:
            prices.append(price_id)
    return Needed(tuple(discounts), tuple(coupons), tuple(prices))


def _ref_ids(refs: Any) -> list[str | None]:
    return [_id(ref) for ref in _list(refs)]


def discounts_changed(subscription: Mapping[str, Any], previous_attributes: Mapping[str, Any] | None) -> bool:
    """Whether a `customer.subscription.updated` changed a discount: a coupon added, removed or ended.

    `previous_attributes` lists changed fields with arrays whole (api-facts "Events"): `discount`
    (pre-basil) or `discounts` at the top, or an item whose own `discounts` differ. From basil on every
    renewal lists `items` (their periods moved), so items count only when their discounts differ.
    """
    prev = previous_attributes or {}
    if "discount" in prev or "discounts" in prev:
        return True
    if "items" not in prev:
        return False
    before = {_id(i): _ref_ids(o.get("discounts")) for i in _list(prev.get("items")) if (o := _obj(i)) is not None}
    now = {_id(i): _ref_ids(o.get("discounts")) for i in _list(subscription.get("items")) if (o := _obj(i)) is not None}
    return any(item_id in now and now[item_id] != ids for item_id, ids in before.items())
