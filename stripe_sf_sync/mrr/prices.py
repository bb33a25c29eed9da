"""Prices: one period of one item, in minor units of the billed currency (flat, per unit, tiered,
transformed, tax-inclusive)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from stripe_sf_sync.mrr.figures import (
    Lookups,
    Unknowable,
)
from stripe_sf_sync.mrr.readers import (
    _amount,
    _currency,
    _decimal,
    _list,
    _obj,
)

# --- prices: one period of one item, in minor units of the billed currency -------------------

def _price_of(item: Mapping[str, Any], lookups: Lookups, where: str) -> Mapping[str, Any]:
    """The item's Price (or, in very old versions, its Plan), completed by a fetched copy: `tiers` and
    `currency_options` are includable only, so event payloads lack them (pkg `_price.py`)."""
    price = _obj(item.get("price")) or _obj(item.get("plan"))
    if price is None:
        raise Unknowable(f"{where} has no price")
    looked = lookups.prices.get(price_id) if isinstance(price_id := price.get("id"), str) else None
    if looked is None:
        return price
    return {**looked, **{k: v for k, v in price.items() if v is not None}}


def _pricing(price: Mapping[str, Any], billed: str, where: str) -> Mapping[str, Any]:
    """The price's amounts in the billed currency. A subscription billed in one of a Price's
    `currency_options` shows the default currency and amount on its items; the option's amount is billed
    (api-facts "Prices in several currencies"; pkg `_price.py` CurrencyOptions)."""
    currency = _currency(price.get("currency"), f"{where}.price.currency")
    if currency == billed:
        return price
    options = _obj(price.get("currency_options"))
    option = _obj(options.get(billed)) if options is not None else None
    if option is None:
        what = "has no" if options is not None else "was read without its currency_options, so stripe-sf has no"
        raise Unknowable(f"{where}: billed in {billed.upper()}, but Price {price.get('id')} {what} "
                         f"{billed.upper()} amount; add one to the Price in Stripe (or fetch it with "
                         "expand[]=currency_options)")
    return {**price, "currency": billed, "unit_amount": option.get("unit_amount"),
            "unit_amount_decimal": option.get("unit_amount_decimal"), "tiers": option.get("tiers"),
            "tax_behavior": option.get("tax_behavior") or price.get("tax_behavior")}


def _units(quantity: int, transform: Any, where: str) -> Decimal:
    """Package pricing: the quantity divided by `divide_by`, rounded `up` or `down` before pricing
    (pkg `_price.py` TransformQuantity; old Plans call it `transform_usage`)."""
    spec = _obj(transform)
    if spec is None:
        return Decimal(quantity)
    divide_by = spec.get("divide_by")
    if isinstance(divide_by, bool) or not isinstance(divide_by, int) or divide_by < 1:
        raise Unknowable(f"{where}: transform_quantity.divide_by is not a positive integer")
    rounding = {"up": ROUND_CEILING, "down": ROUND_FLOOR}.get(spec.get("round", ""))
    if rounding is None:
        raise Unknowable(f"{where}: transform_quantity.round is neither up nor down")
    return (Decimal(quantity) / Decimal(divide_by)).quantize(Decimal(1), rounding=rounding)


def _tiered(pricing: Mapping[str, Any], quantity: int, where: str) -> Decimal:
    """Tiered pricing (pkg `_price.py` `tiers_mode`): `volume` prices every unit at the tier the quantity
    falls in, plus that tier's flat amount; `graduated` prices each tier's units at its own rate, plus the
    flat amount of every tier reached. `up_to` is inclusive and null on the last tier. A quantity of 0 is
    charged nothing (Stripe's docs do not say whether a first tier's flat amount applies to 0 units)."""
    tiers = pricing.get("tiers")
    if not isinstance(tiers, list) or not tiers:
        raise Unknowable(f"{where}: Price {pricing.get('id')} is tiered and its tiers were not read; fetch it "
                         "with expand[]=tiers")
    rows: list[tuple[int | None, Decimal, Decimal]] = []
    for n, raw in enumerate(tiers):
        tier = _obj(raw) or {}
        up_to = tier.get("up_to")
        if up_to is not None and (isinstance(up_to, bool) or not isinstance(up_to, int)):
            raise Unknowable(f"{where}: tiers[{n}].up_to is not an integer")
        rows.append((up_to, _amount(tier, "unit_amount", f"{where}.tiers[{n}]") or Decimal(0),
                     _amount(tier, "flat_amount", f"{where}.tiers[{n}]") or Decimal(0)))
    if quantity == 0:
        return Decimal(0)
    mode = pricing.get("tiers_mode")
    if mode == "volume":
        for up_to, unit, flat in rows:
            if up_to is None or quantity <= up_to:
                return unit * quantity + flat
        raise Unknowable(f"{where}: quantity {quantity} is above the last tier")
    if mode != "graduated":
        raise Unknowable(f"{where}: unknown tiers_mode {mode!r}")
    total, below = Decimal(0), 0
    for up_to, unit, flat in rows:
        top = quantity if up_to is None else min(quantity, up_to)
        if top > below:
            total += unit * (top - below) + flat
            below = top
        if up_to is None or quantity <= up_to:
            return total
    raise Unknowable(f"{where}: quantity {quantity} is above the last tier")


def _period_amount(pricing: Mapping[str, Any], quantity: int, where: str) -> Decimal:
    """One billing period of an item before discounts, in minor units (exact, maybe fractional)."""
    if pricing.get("billing_scheme") == "tiered":
        return _tiered(pricing, quantity, where)
    unit = _amount(pricing, "unit_amount", where)
    if unit is None:
        unit = _amount(pricing, "amount", where)  # very old Plans name it `amount`
    if unit is None:
        raise Unknowable(f"{where}: Price {pricing.get('id')} has no unit amount")
    if unit < 0:
        raise Unknowable(f"{where}: unit amount is negative")
    transform = pricing.get("transform_quantity") or pricing.get("transform_usage")
    return unit * _units(quantity, transform, where)


def _inclusive_percent(item: Mapping[str, Any], sub: Mapping[str, Any], pricing: Mapping[str, Any],
                       default_tax_behavior: str | None, where: str) -> Decimal:
    """The tax percentage inside the item's price: taxes are not revenue (support.stripe.com/questions/
    billing-analytics, "Tax"). Exclusive tax is added on top and never touches the price.

    Item `tax_rates` replace the subscription's `default_tax_rates` (pkg `_subscription_item.py`); a Tax
    Rate says itself whether it is `inclusive` (pkg `_tax_rate.py`). Without rates, Stripe Tax
    (`automatic_tax.enabled`) taxes by the price's `tax_behavior`, falling back to the account's default
    (`default_tax_behavior`, from GET /v1/tax/settings); an inclusive price's tax share then depends on the
    customer's location, which only an invoice shows: unknowable here.
    """
    rates = _list(item.get("tax_rates")) or _list(sub.get("default_tax_rates"))
    if rates:
        percent = Decimal(0)
        for n, raw in enumerate(rates):
            rate = _obj(raw)
            if rate is None:
                raise Unknowable(f"{where}: tax rate {raw!r} was not expanded")
            if rate.get("inclusive") is not True:
                continue
            if rate.get("rate_type") == "flat_amount":
                raise Unknowable(f"{where}: inclusive tax rate {rate.get('id')} is a flat amount per unit")
            value = _decimal(rate.get("percentage"), f"{where}.tax_rates[{n}].percentage")
            percent += value or Decimal(0)
        return percent
    automatic = _obj(sub.get("automatic_tax")) or {}
    if automatic.get("enabled") is not True:
        return Decimal(0)  # no tax is collected: all of the price is revenue
    behavior = pricing.get("tax_behavior") or "unspecified"
    if behavior == "unspecified":
        behavior = default_tax_behavior or "unspecified"
    if behavior == "exclusive":
        return Decimal(0)
    raise Unknowable(f"{where}: Price {pricing.get('id')} is {behavior} of tax under Stripe Tax, so the tax "
                     "inside it (not revenue) depends on the customer's location and shows only on invoices")
