"""A subscription's items, and how discounts are spread over them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from stripe_sf_sync.mrr.discounts import (
    Discount,
    parse_discount,
)
from stripe_sf_sync.mrr.figures import (
    _HUNDRED,
    MONTHS_PER_INTERVAL,
    Lookups,
    Unknowable,
)
from stripe_sf_sync.mrr.prices import _inclusive_percent, _period_amount, _price_of, _pricing
from stripe_sf_sync.mrr.readers import (
    _id,
    _list,
    _obj,
)

# --- the subscription's items ----------------------------------------------------------------

@dataclass(frozen=True)
class _Item:
    """One licensed recurring item: one period's amount before discounts (minor units, tax-inclusive
    share still in it), the months that period lasts, the tax percentage inside it, its own discounts."""

    product: str | None
    amount: Decimal
    months: Decimal
    inclusive_percent: Decimal
    discounts: tuple[Discount, ...]


def _quantity(item: Mapping[str, Any], where: str) -> int:
    quantity = item.get("quantity")
    if quantity is None:
        return 1
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
        raise Unknowable(f"{where}.quantity is not a non-negative integer")
    return quantity


def _months(price: Mapping[str, Any], where: str) -> Decimal | None:
    """Months one period lasts; None for a price that does not recur (no MRR)."""
    recurring = _obj(price.get("recurring")) or (price if "interval" in price else None)  # old Plans
    if recurring is None or recurring.get("interval") is None:
        return None
    interval = recurring.get("interval")
    per = MONTHS_PER_INTERVAL.get(interval) if isinstance(interval, str) else None
    count = recurring.get("interval_count") or 1
    if per is None or isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
        raise Unknowable(f"{where}: billing interval {interval!r} x{count} is unknown")
    return per * count


def _metered(price: Mapping[str, Any]) -> bool:
    recurring = _obj(price.get("recurring")) or price
    return recurring.get("usage_type") == "metered"


def _items(sub: Mapping[str, Any], billed: str, lookups: Lookups, default_tax_behavior: str | None) -> list[_Item]:
    """The licensed recurring items. Metered ones are left out: usage is billed in arrears and Stripe's MRR
    excludes metered products (glossary)."""
    sub_id = sub.get("id")
    out: list[_Item] = []
    for i, raw in enumerate(_list(sub.get("items"))):
        where = f"{sub_id} items.data[{i}]"
        item = _obj(raw)
        if item is None:
            raise Unknowable(f"{where} is not an object")
        price = _price_of(item, lookups, where)
        months = _months(price, where)
        if months is None or _metered(price):
            continue
        pricing = _pricing(price, billed, where)
        amount = _period_amount(pricing, _quantity(item, where), where)
        percent = _inclusive_percent(item, sub, pricing, default_tax_behavior, where)
        own = tuple(parse_discount(ref, billed, lookups, f"{where}.discounts[{j}]")
                    for j, ref in enumerate(_list(item.get("discounts"))))
        product = _id(price.get("product"))
        out.append(_Item(product, amount, months, percent, own))
    return out


def _spread(discount: Discount, items: Sequence[_Item], amounts: list[Decimal], one_invoice: bool,
            where: str) -> None:
    """An amount off the subscription comes off each invoice (pkg `_coupon.py`: "subtracted from any
    invoice's subtotal"), shared among the covered items in proportion to their amounts, as Stripe
    shares a discount across an invoice's lines.

    Items on different intervals share invoices only at renewals: between them an invoice holds the
    shortest-interval items, so the amount comes off once per shortest interval. When it is larger than
    those invoices, or the items carry different inclusive tax, its monthly effect depends on the calendar:
    unknowable.
    """
    assert discount.amount_off is not None
    covered = [k for k, item in enumerate(items) if discount.covers(item.product)]
    total = sum((amounts[k] for k in covered), Decimal(0))
    if total == 0:
        return
    months = {items[k].months for k in covered}
    if one_invoice or len(months) == 1:
        take = min(discount.amount_off, total)
        for k in covered:
            amounts[k] -= take * amounts[k] / total
        return
    shortest = min(months)
    between = sum((amounts[k] for k in covered if items[k].months == shortest), Decimal(0))
    if discount.amount_off > between or len({items[k].inclusive_percent for k in covered}) > 1:
        raise Unknowable(f"{where}: coupon {discount.coupon_id} takes an amount off each invoice of items on "
                         "different intervals, and its monthly effect depends on the calendar")
    monthly = {k: amounts[k] / items[k].months for k in covered}
    monthly_total = sum(monthly.values(), Decimal(0))
    for k in covered:
        amounts[k] -= discount.amount_off / shortest * monthly[k] / monthly_total * items[k].months


def _discounted(items: Sequence[_Item], sub_discounts: Sequence[Discount], keep: Callable[[Discount], bool],
                one_invoice: bool, where: str) -> list[Decimal]:
    """Each item's period amount after the kept discounts: item discounts first, then the subscription's
    (pkg `_subscription.py` `discounts`: "Subscription item discounts are applied before subscription
    discounts"), each in list order on what the previous left (Stripe's docs do not give the order within a
    list; we keep the API's)."""
    amounts = [item.amount for item in items]
    for k, item in enumerate(items):
        for discount in item.discounts:
            if keep(discount) and discount.covers(item.product):
                amounts[k] = discount.lower(amounts[k])
    for discount in sub_discounts:
        if not keep(discount):
            continue
        if discount.percent_off is not None:
            for k, item in enumerate(items):
                if discount.covers(item.product):
                    amounts[k] = discount.lower(amounts[k])
        else:
            _spread(discount, items, amounts, one_invoice, where)
    return amounts


def _net(item: _Item, amount: Decimal) -> Decimal:
    """The amount without the tax inside it: gross x 100 / (100 + inclusive %)."""
    if item.inclusive_percent == 0:
        return amount
    return amount * _HUNDRED / (_HUNDRED + item.inclusive_percent)
