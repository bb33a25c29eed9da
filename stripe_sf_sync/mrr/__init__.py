"""Revenue as Stripe counts it: a subscription's MRR and its first period's amount, from payloads.

Pure: no I/O and no clock (times are passed in), Decimal only. Payloads are plain dicts in any API
generation: pre-basil (singular `discount` with its `coupon` expanded), `2025-03-31.basil` (`discounts`
lists of ids or Discount objects, on the subscription and on each item) and `2025-09-30.clover` (a
Discount names its coupon under `source.coupon`, an id unless expanded) (`../shared/docs/api-facts.md`
"Discounts"; pkg `stripe/_subscription.py`, `_discount.py`, `_coupon.py`, `_price.py`, `_invoice.py`).

Stripe's MRR (docs.stripe.com/billing/subscriptions/analytics/glossary; support.stripe.com/questions/
billing-analytics): the monthly-normalised value of active and past_due subscriptions, excluding trials,
taxes, free plans and metered products; by default forever coupons lower it and once/repeating ones do not.
Where the payload cannot tell a value, the result says why instead of guessing (`Figure.reason`).

The package: `figures` (what a figure is made of), `readers`, `prices`, `discounts`, `items`, and `revenue`
(the public figures). The names other modules use are re-exported here.
"""

from stripe_sf_sync.mrr.discounts import Discount, parse_discount
from stripe_sf_sync.mrr.figures import (
    ALL_DURATIONS,
    COUNTED_STATUSES,
    DEFAULT_MRR_DURATIONS,
    MONTHS_PER_INTERVAL,
    Figure,
    Lookups,
    Needed,
    SubscriptionValue,
    Unknowable,
)
from stripe_sf_sync.mrr.revenue import (
    billed_currency,
    counted_by_stripe,
    customer_mrr,
    discounts_changed,
    first_period_from_invoice,
    first_period_from_subscription,
    invoice_discounts,
    needed,
    subscription_value,
)

__all__ = [
    "ALL_DURATIONS", "COUNTED_STATUSES", "DEFAULT_MRR_DURATIONS", "MONTHS_PER_INTERVAL", "Discount", "Figure",
    "Lookups", "Needed", "SubscriptionValue", "Unknowable", "billed_currency", "counted_by_stripe",
    "customer_mrr", "discounts_changed", "first_period_from_invoice", "first_period_from_subscription",
    "invoice_discounts", "needed", "parse_discount", "subscription_value",
]
