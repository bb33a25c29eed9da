"""Discounts and their coupons, in every API generation's shape."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from stripe_sf_sync.mrr.figures import (
    _HUNDRED,
    ALL_DURATIONS,
    Lookups,
    Unknowable,
)
from stripe_sf_sync.mrr.readers import (
    _currency,
    _decimal,
    _id,
    _list,
    _obj,
)

# --- discounts -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Discount:
    """One applied coupon, read from any payload generation; `amount_off` in the billed currency's minor
    units."""

    discount_id: str | None
    coupon_id: str | None
    duration: str  # once, repeating or forever
    percent_off: Decimal | None
    amount_off: Decimal | None
    end: int | None  # repeating only: when it stops applying (pkg `_discount.py`)
    products: frozenset[str] | None  # the coupon's `applies_to.products`; None: every product

    def covers(self, product: str | None) -> bool:
        """Whether the coupon applies to an item of `product`."""
        return self.products is None or product in self.products

    def lower(self, amount: Decimal) -> Decimal:
        """`amount` after this discount alone; an amount off never takes it below zero."""
        if self.percent_off is not None:
            return amount * (_HUNDRED - self.percent_off) / _HUNDRED
        assert self.amount_off is not None
        return max(Decimal(0), amount - self.amount_off)


def _discount_object(ref: Any, lookups: Lookups, where: str) -> Mapping[str, Any]:
    """A Discount from an expanded object or, from basil on, an id in `discounts` (api-facts "Discounts")."""
    if isinstance(ref, str):
        found = lookups.discounts.get(ref)
        if found is None:
            raise Unknowable(f"{where} names Discount {ref}, which was not read; re-read the subscription with "
                             "expand[]=discounts")
        return found
    obj = _obj(ref)
    if obj is None:
        raise Unknowable(f"{where} is not a Discount")
    return obj


def _coupon_of(discount: Mapping[str, Any], lookups: Lookups, where: str) -> Mapping[str, Any]:
    """Before clover a Discount carries its `coupon` expanded; from `2025-09-30.clover` it names it under
    `source` (`type: coupon`, `coupon`: an id unless expanded) (api-facts "Discounts"; pkg `_discount.py`)."""
    coupon = discount.get("coupon")
    if coupon is None:
        source = _obj(discount.get("source")) or {}
        if source.get("type") not in (None, "coupon"):
            raise Unknowable(f"{where}: discount source type {source.get('type')!r} is not a coupon")
        coupon = source.get("coupon")
    coupon_id = _id(coupon)
    looked = lookups.coupons.get(coupon_id) if coupon_id else None
    if isinstance(coupon, str):
        if looked is None:
            raise Unknowable(f"{where} names coupon {coupon}, which was not read; fetch it (GET /v1/coupons/{coupon})")
        return looked
    obj = _obj(coupon)
    if obj is None:
        raise Unknowable(f"{where} names no coupon")
    return {**obj, **looked} if looked else obj


def _amount_off(coupon: Mapping[str, Any], billed: str, where: str) -> Decimal | None:
    """An amount-off coupon's amount in the billed currency: its own when the currencies agree, else its
    `currency_options` entry (pkg `_coupon.py`)."""
    raw = coupon.get("amount_off")
    if raw is None:
        return None
    currency = _currency(coupon.get("currency"), f"{where}.coupon.currency")
    if currency != billed:
        option = _obj((_obj(coupon.get("currency_options")) or {}).get(billed)) or {}
        raw = option.get("amount_off")
        if raw is None:
            raise Unknowable(f"{where}: coupon {coupon.get('id')} takes an amount off in {currency.upper()} and "
                             f"names none in {billed.upper()}, the subscription's currency")
    value = _decimal(raw, f"{where}.coupon.amount_off")
    assert value is not None
    if value < 0:
        raise Unknowable(f"{where}: coupon amount_off is negative")
    return value


def parse_discount(ref: Any, billed: str, lookups: Lookups, where: str = "discount") -> Discount:
    """A Discount (object or id) of a subscription or item as a `Discount`; Unknowable if a part is missing."""
    discount = _discount_object(ref, lookups, where)
    coupon = _coupon_of(discount, lookups, where)
    percent = _decimal(coupon.get("percent_off"), f"{where}.coupon.percent_off")
    amount_off = _amount_off(coupon, billed, where) if percent is None else None
    if percent is None and amount_off is None:
        raise Unknowable(f"{where}: coupon {coupon.get('id')} has neither percent_off nor amount_off")
    if percent is not None and not Decimal(0) <= percent <= _HUNDRED:
        raise Unknowable(f"{where}: coupon percent_off {percent} is not between 0 and 100")
    duration = coupon.get("duration")
    if duration not in ALL_DURATIONS:
        raise Unknowable(f"{where}: coupon duration {duration!r} is unknown")
    applies = _obj(coupon.get("applies_to"))
    products = applies.get("products") if applies else None
    end = discount.get("end")
    return Discount(
        discount_id=_id(discount), coupon_id=_id(coupon), duration=duration, percent_off=percent,
        amount_off=amount_off, end=end if isinstance(end, int) and not isinstance(end, bool) else None,
        products=frozenset(p for p in products if isinstance(p, str)) if isinstance(products, list) else None)


def _subscription_discount_refs(sub: Mapping[str, Any], customer_discount: Any) -> list[Any]:
    """Subscription-level discounts: pre-basil `discount` and/or `discounts` (ids or objects), without
    repeats. A customer's discount applies only when the subscription has none of its own (pre-basil
    pkg `_subscription.py` `discount`: "a discount applied to a subscription overrides a discount applied
    on a customer-wide basis")."""
    refs: list[Any] = []
    seen: set[str] = set()
    for ref in [sub.get("discount"), *_list(sub.get("discounts"))]:
        if ref is None:
            continue
        ref_id = _id(ref)
        if ref_id is not None:
            if ref_id in seen:
                continue
            seen.add(ref_id)
        refs.append(ref)
    if not refs and customer_discount is not None:
        refs.append(customer_discount)
    return refs
