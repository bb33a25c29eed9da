"""SubscriptionChange and its parser (customer.subscription.*, in every API generation's shape); and the
item conversions hydration applies (all items, the billed currency)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any, TypeGuard

from stripe_sf_sync import money, mrr
from stripe_sf_sync.model.event import SUBSCRIPTION_STATUSES, EventMeta, MalformedEvent, NoCurrencyOption
from stripe_sf_sync.model.payload import (
    _OBJECT,
    _STRIPE_ID,
    MAX_MINOR_UNITS,
    MAX_QUANTITY,
    MAX_TIMESTAMP,
    _bool,
    _currency,
    _customer_details,
    _customer_email,
    _get,
    _metadata,
    _str,
    _timestamp,
)
from stripe_sf_sync.mrr import Figure


@dataclass(frozen=True)
class SubscriptionChange:
    """customer.subscription.created/updated/deleted."""

    meta: EventMeta
    subscription_id: str
    customer_id: str
    status: str
    previous_status: str | None
    cancel_at_period_end: bool
    cancel_turned_on: bool
    plan_changed: bool
    currency: str
    lines: tuple[money.PriceLine, ...]
    period_end: int | None
    metadata: Mapping[str, str]
    customer_metadata: Mapping[str, str] | None
    customer_name: str | None
    cancellation_reason: str | None = None
    # False when the payload's embedded `items` list has `has_more`: hydration reads the rest
    # (`/v1/subscription_items?subscription=…`) before any amount is computed from `lines`.
    items_complete: bool = True
    # A cancellation scheduled with `cancel_at` (a timestamp) while `cancel_at_period_end` stays false
    # (stripe/_subscription.py, `cancel_at`): when it takes effect, and whether this event scheduled it.
    cancel_at: int | None = None
    cancel_at_turned_on: bool = False
    # The subscription as mrr.py reads it (discounts, tiers, taxes, in every generation's shape): set by
    # hydration only while it computes `value` (a batch holds thousands of changes: payloads stay compact
    # JSON in HeldEvent until needed).
    raw: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    # Stripe's figures for it, attached by hydration (rules do not fetch); None: not computed (rules fall
    # back to the list-price lines).
    value: SubscriptionFigures | None = None
    # The customer's current MRR (mrr.customer_mrr over its subscriptions now), attached by hydration when
    # the Account field is configured; a Figure with value None says why it is left alone.
    account_mrr: mrr.Figure | None = None
    # The customer's email when the payload expands its customer, or hydration filled it in (the mapping's
    # `customer.email`): "" when it has none, None when not known.
    customer_email: str | None = None
    # The Products of its Prices by id, read by hydration only when the mapping names a path through one
    # (`items[0].price.product.name`): an event names each Product by id.
    products: Mapping[str, Mapping[str, Any]] | None = field(default=None, compare=False, repr=False)

    @property
    def object_id(self) -> str:
        """The Stripe object this change describes (the order guard's key)."""
        return self.subscription_id


@dataclass(frozen=True)
class SubscriptionFigures:
    """A subscription's value as Stripe counts it (mrr.py): MRR/ARR after forever discounts, and the first
    paid period's amount after every discount, before tax. A figure whose value is None says why."""

    # `Figure`, not `mrr.Figure`: in this class body the field `mrr` would shadow the module.
    mrr: Figure
    arr: Figure
    first_period: Figure
    counted: bool




def _price_line(item: Mapping[str, Any], sub_currency: str, idx: int) -> money.PriceLine:
    if not isinstance(item, _OBJECT):
        raise MalformedEvent(f"items.data[{idx}] is not an object")
    # Current versions use `price`; very old ones only had `plan` (amount instead of unit_amount).
    price = item.get("price") if isinstance(item.get("price"), _OBJECT) else item.get("plan")
    if not isinstance(price, _OBJECT):
        raise MalformedEvent(f"items.data[{idx}].price is missing")
    currency = price.get("currency") or sub_currency
    currency = _currency({"currency": currency})
    # Very old plans name it `amount`; None: tiered pricing, no single unit amount.
    unit = _unit_amount({"unit_amount": price.get("amount"), **price}, f"items.data[{idx}].price")
    recurring = rec if isinstance(rec := price.get("recurring"), _OBJECT) else price
    interval = recurring.get("interval")
    if interval is not None and interval not in ("day", "week", "month", "year"):
        raise MalformedEvent(f"items.data[{idx}] has unknown interval {interval!r}")
    count = recurring.get("interval_count") or 1
    quantity = item.get("quantity", 1)
    if quantity is None:
        quantity = 1
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise MalformedEvent(f"items.data[{idx}] interval_count is not a positive integer")
    if isinstance(quantity, bool) or not isinstance(quantity, int) or not 0 <= quantity <= MAX_QUANTITY:
        raise MalformedEvent(f"items.data[{idx}].quantity is not a non-negative integer in range")
    if count > 1000:
        raise MalformedEvent(f"items.data[{idx}] interval_count is out of range")
    usage = recurring.get("usage_type") or "licensed"
    price_id = price.get("id") if isinstance(price.get("id"), str) and len(price["id"]) <= 255 else None
    return money.PriceLine(unit, currency, interval, count, quantity, str(usage), price_id)


def _unit_amount(option: Mapping[str, Any], where: str) -> Decimal | None:
    """A minor-unit amount from `unit_amount_decimal` (a string) or `unit_amount`; None when there is none
    (tiered or customer-chosen amounts)."""
    raw = option.get("unit_amount_decimal")
    if raw is None:
        raw = option.get("unit_amount")
    if raw is None:
        return None
    try:
        unit = Decimal(str(raw)) if not isinstance(raw, bool | float) else None
    except InvalidOperation:
        unit = None
    if unit is None or not unit.is_finite() or unit < 0 or unit > MAX_MINOR_UNITS:
        raise MalformedEvent(f"{where}.unit_amount is not a number in range")
    return unit


def with_all_items(change: SubscriptionChange, items: Sequence[Any]) -> SubscriptionChange:
    """The change with its lines from the whole item list (`items`: every SubscriptionItem, read to the end of
    `/v1/subscription_items?subscription=…`), when the payload's embedded list had `has_more`."""
    lines = tuple(_price_line(item, change.currency, i) for i, item in enumerate(items))
    if not lines:
        raise MalformedEvent(f"{change.subscription_id} lists no subscription items")
    raw = change.raw
    if raw is not None:
        listed = got if isinstance(got := raw.get("items"), Mapping) else {}
        raw = {**raw, "items": {**listed, "data": list(items), "has_more": False}}
    return replace(change, lines=lines, items_complete=True, raw=raw)


def foreign_price_ids(change: SubscriptionChange) -> list[str]:
    """The Prices whose `currency_options` are needed: those of items priced in another currency than the
    subscription is billed in (Stripe API reference: Prices, `currency_options`). Empty for the usual
    single-currency subscription."""
    wanted: list[str] = []
    for i, line in enumerate(change.lines):
        if line.currency == change.currency:
            continue
        if line.price_id is None or not _STRIPE_ID.fullmatch(line.price_id):
            raise NoCurrencyOption(
                f"{change.subscription_id} is billed in {change.currency.upper()} but items.data[{i}] is priced in "
                f"{line.currency.upper()} and names no Price id stripe-sf can read; nothing was written. Report it "
                "with `stripe-sf dlq list --json` output")
        if line.price_id not in wanted:
            wanted.append(line.price_id)
    return wanted


def in_billed_currency(change: SubscriptionChange,
                       options: Mapping[str, Mapping[str, Mapping[str, Any]] | None]) -> SubscriptionChange:
    """The change with every item's amount in the subscription's currency.

    `options` maps each of `foreign_price_ids(change)` to its Price's `currency_options` (None when the
    Price no longer exists). A subscription billed in one of a Price's options shows the default currency
    and amount on its items (`stripe/_price.py`, `currency_options`); the amount billed is the option's.
    Without an option for the currency the value is unknown: the event is dead-lettered rather than written
    with a guess.
    """
    lines: list[money.PriceLine] = []
    billed = change.currency
    for line in change.lines:
        if line.currency == billed:
            lines.append(line)
            continue
        assert line.price_id is not None  # foreign_price_ids refused the others
        found = options.get(line.price_id)
        option = found.get(billed) if isinstance(found, Mapping) else None
        if not isinstance(option, Mapping):
            raise NoCurrencyOption(
                f"{change.subscription_id} is billed in {billed.upper()}, but its Price {line.price_id} (default "
                f"currency {line.currency.upper()}) has no {billed.upper()} amount in its currency_options, so its "
                f"Amount, MRR and ARR are unknown and nothing was written. Add a {billed.upper()} price to "
                f"{line.price_id} in Stripe, then run `stripe-sf dlq retry --all`")
        unit = _unit_amount(option, f"price {line.price_id} currency_options.{billed}")
        lines.append(replace(line, unit_amount=unit, currency=billed))
    return replace(change, lines=tuple(lines))


def _period_end(sub: Mapping[str, Any]) -> int | None:
    def plausible(v: Any) -> TypeGuard[int]:
        return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_TIMESTAMP

    top = sub.get("current_period_end")  # pre-basil
    if plausible(top):
        return int(top)
    items = _get(sub, "items.data")
    ends: list[Any] = [i.get("current_period_end")
                       for i in (items if isinstance(items, list) else []) if isinstance(i, _OBJECT)]
    ends = [e for e in ends if plausible(e)]
    return min(ends) if ends else None


def _item_keys(items: Any) -> list[tuple[Any, Any, Any]] | None:
    """(item id, price id, quantity) of each item of an `items` list object, or None when it names no `data`."""
    data = _get(items, "data") if isinstance(items, _OBJECT) else None
    if not isinstance(data, list):
        return None
    keys = []
    for item in data:
        if not isinstance(item, _OBJECT):
            keys.append((None, None, None))
            continue
        price = item.get("price") if isinstance(item.get("price"), _OBJECT) else item.get("plan")
        price_id = price.get("id") if isinstance(price, _OBJECT) else price
        keys.append((item.get("id"), price_id, item.get("quantity", 1)))
    return keys


def is_pre_basil(api_version: str | None) -> bool:
    """Whether a payload is rendered in a version before `2025-03-31.basil` (date prefixes compare lexically).
    An event without a version is read in both shapes."""
    return api_version is not None and api_version[:10] < "2025-03-31"


def plan_changed(sub: Mapping[str, Any], prev: Mapping[str, Any], api_version: str | None) -> bool:
    """Whether an update changed the plan: its items by (item id, price id, quantity), or, in the pre-basil
    shape, the subscription's own `plan`/`quantity`. Period fields never count.

    From `2025-03-31.basil` the billing period lives on the items, so every renewal carries `items` in
    `previous_attributes`, arrays whole, although no price or quantity changed (Stripe changelog, basil:
    "Deprecate subscription current period start and end"; api-facts §6). The event's own `api_version`
    decides the shape (its payload is rendered in it, stripe/_event.py), not the version stripe-sf pins.
    """
    if api_version is None or is_pre_basil(api_version):
        if "plan" in prev or "quantity" in prev:
            return True
    if "items" not in prev:
        return False
    before = _item_keys(prev.get("items"))
    if before is None:
        return False  # only the list's other attributes changed (its `data` is sent whole when it changes)
    after = _item_keys(sub.get("items"))
    if after is None or before != after:
        return True
    if not (_get(sub, "items.has_more") or _get(prev, "items.has_more")):
        return False
    # The embedded list is a first page. A renewal changes every item's period, so the first page differs in
    # them; a first page that did not change at all means the change is past it, in items not shown here.
    return _get(prev, "items.data") == _get(sub, "items.data")


def parse_subscription(event: Mapping[str, Any], meta: EventMeta) -> SubscriptionChange:
    """customer.subscription.* -> SubscriptionChange."""
    sub = _get(event, "data.object")
    if not isinstance(sub, _OBJECT):
        raise MalformedEvent("missing data.object")
    prev = _get(event, "data.previous_attributes")
    prev = prev if isinstance(prev, _OBJECT) else {}
    sub_id = _str(sub, "id", prefix="sub_")
    customer_id = _str(sub, "customer", prefix="cus_")
    status = _str(sub, "status")
    if status not in SUBSCRIPTION_STATUSES:
        raise MalformedEvent(f"unknown subscription status {status!r}")
    prev_status = prev.get("status") if isinstance(prev.get("status"), str) else None
    items = _get(sub, "items.data")
    if not isinstance(items, list):
        raise MalformedEvent("missing items.data")
    currency = _currency(sub) if sub.get("currency") is not None else None
    if currency is None:
        first = items[0] if items and isinstance(items[0], _OBJECT) else {}
        currency = _currency(first, "price.currency")
    lines = tuple(_price_line(item, currency, i) for i, item in enumerate(items))
    cancel = _bool(sub, "cancel_at_period_end")
    cancel_turned_on = (cancel and "cancel_at_period_end" in prev and prev.get("cancel_at_period_end") is False)
    cancel_at = _timestamp(sub, "cancel_at", required=False)
    # A cancellation scheduled by a timestamp: `cancel_at` set now, and unset before (null in
    # previous_attributes). With cancel_at_period_end, Stripe fills cancel_at too: that is the warning above.
    cancel_at_turned_on = (cancel_at is not None and not cancel and "cancel_at" in prev
                           and prev.get("cancel_at") is None)
    cust_meta, cust_name = _customer_details(sub)
    reason = _get(sub, "cancellation_details.reason")
    assert sub_id and customer_id and status
    return SubscriptionChange(
        meta=meta, subscription_id=sub_id, customer_id=customer_id, status=status,
        previous_status=prev_status, cancel_at_period_end=cancel, cancel_turned_on=bool(cancel_turned_on),
        # A coupon added, removed or ended changes MRR: a value change like a new price (issue 22 §4).
        plan_changed=plan_changed(sub, prev, meta.api_version) or mrr.discounts_changed(sub, prev),
        currency=currency, lines=lines,
        period_end=_period_end(sub), metadata=_metadata(sub), customer_metadata=cust_meta, customer_name=cust_name,
        customer_email=_customer_email(sub),
        cancellation_reason=reason if isinstance(reason, str) else None,
        items_complete=not _get(sub, "items.has_more"), cancel_at=cancel_at,
        cancel_at_turned_on=bool(cancel_at_turned_on),
    )
