"""What the revenue figures are made of: `Figure` (a value or why not), the objects a payload names
by id (`Lookups`), what to read (`Needed`), a subscription's value, and Stripe's counting constants."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from stripe_sf_sync import money

# Statuses Stripe's Dashboard counts in MRR (glossary: "active and past_due subscriptions"); trialing,
# unpaid, canceled, incomplete and paused ones count 0.
COUNTED_STATUSES = frozenset({"active", "past_due"})
# Stripe's default metric configuration: only forever coupons lower MRR; the Dashboard can add once and
# repeating ones (support.stripe.com/questions/
# impact-of-discounts-and-coupons-on-monthly-recurring-revenue-mrr-in-billing).
DEFAULT_MRR_DURATIONS = frozenset({"forever"})
ALL_DURATIONS = frozenset({"forever", "once", "repeating"})
# Months per billing interval. Stripe documents only the yearly case (an annual $1,200 counts $100:
# support.stripe.com/questions/billing-analytics); for days and weeks its pages are silent, so we use the
# average year (365 days, 52 weeks), the same factors as money.py, so every figure stripe-sf writes agrees.
MONTHS_PER_INTERVAL: Mapping[str, Decimal] = {
    "day": Decimal(12) / Decimal(365),
    "week": Decimal(12) / Decimal(52),
    "month": Decimal(1),
    "year": Decimal(12),
}
_HUNDRED = Decimal(100)
_MAX_MINOR = Decimal(10) ** 15  # far above any real price; keeps arithmetic exact (as model.MAX_MINOR_UNITS)


class Unknowable(Exception):
    """A value the payloads cannot tell; the message says why, in words for the operator."""


@dataclass(frozen=True)
class Figure:
    """A value in major units quantized to `currency`, or None with the reason it cannot be known."""

    value: Decimal | None
    currency: str
    reason: str | None = None

    @property
    def known(self) -> bool:
        """True when `value` holds a number."""
        return self.value is not None


@dataclass(frozen=True)
class Lookups:
    """Objects the caller fetched because the payload named them by id (see `needed`).

    `discounts`: Discount objects by id (Discounts cannot be fetched alone: re-read the subscription with
    `expand[]=discounts&expand[]=items.data.discounts`, pkg `_discount.py`). `coupons`: Coupon objects by id
    (`GET /v1/coupons/{id}`, with `expand[]=applies_to`). `prices`: Price objects by id, with `tiers` and
    `currency_options` expanded (both are includable only, pkg `_price.py`).
    """

    discounts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    coupons: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    prices: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Needed:
    """Ids the payload names but does not carry, so the caller can fetch them in batches."""

    discounts: tuple[str, ...] = ()
    coupons: tuple[str, ...] = ()
    prices: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.discounts or self.coupons or self.prices)


@dataclass(frozen=True)
class SubscriptionValue:
    """A subscription's recurring value by Stripe's definition.

    `mrr`/`arr`: its value per month/year after the discounts the metric counts (forever ones by default),
    whatever its status: what the Opportunity shows. `counted`: whether Stripe's Dashboard counts it now
    (active or past_due, no cancellation scheduled); `dashboard_mrr` is 0 when it does not.
    """

    subscription_id: str
    currency: str
    mrr: Figure
    arr: Figure
    counted: bool

    @property
    def dashboard_mrr(self) -> Figure:
        """What this subscription adds to the MRR on Stripe's Dashboard."""
        if self.counted or not self.mrr.known:
            return self.mrr
        return Figure(money.quantize(Decimal(0), self.currency), self.currency)
