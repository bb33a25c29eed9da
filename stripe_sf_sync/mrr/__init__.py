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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation, localcontext
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


# --- small readers ------------------------------------------------------------------------------

def _obj(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _list(value: Any) -> list[Any]:
    if isinstance(value, Mapping) and isinstance(value.get("data"), list):  # a list object (items, lines)
        return list(value["data"])
    return list(value) if isinstance(value, list) else []


def _decimal(value: Any, where: str) -> Decimal | None:
    """An exact Decimal from a JSON number or decimal string; floats go through their shortest repr
    (`percent_off` 33.33 stays 33.33), never through binary arithmetic."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise Unknowable(f"{where} is not a number")
    try:
        number = Decimal(value) if isinstance(value, int | str | Decimal) else Decimal(repr(float(value)))
    except (InvalidOperation, TypeError, ValueError):
        raise Unknowable(f"{where} is not a number") from None
    if not number.is_finite() or abs(number) > _MAX_MINOR:
        raise Unknowable(f"{where} is out of range")
    return number


def _amount(obj: Mapping[str, Any], key: str, where: str) -> Decimal | None:
    """`<key>_decimal` (a decimal string, up to 12 places) ahead of the integer `<key>` (pkg `_price.py`)."""
    exact = _decimal(obj.get(f"{key}_decimal"), f"{where}.{key}_decimal")
    return exact if exact is not None else _decimal(obj.get(key), f"{where}.{key}")


def _id(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    obj = _obj(value)
    return obj.get("id") if obj is not None and isinstance(obj.get("id"), str) else None


def _currency(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise Unknowable(f"{where} is missing")
    try:
        money.exponent(value)
    except ValueError:
        raise Unknowable(f"{where} {value!r} is not a currency code") from None
    return value.lower()


# Working precision: 60 digits, then snapped to 1e-20 of a minor unit before rounding half up. Divisions by
# 365, 52, 12, an interval count or (100 + tax %) do not terminate; snapping first puts an exact half (9.99 x
# 52 x 0.875 = 454.545) back on its boundary instead of a hair below it.
_PRECISION = 60
_SNAP = Decimal("1e-20")


def _minor_to_figure(minor: Decimal, currency: str) -> Figure:
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        snapped = minor.quantize(_SNAP)
        return Figure(money.quantize(snapped.scaleb(-money.exponent(currency)), currency), currency)


def _safely(currency: str, compute: Callable[[], Decimal]) -> Figure:
    try:
        with localcontext() as ctx:
            ctx.prec = _PRECISION
            minor = compute()
        return _minor_to_figure(minor, currency)
    except Unknowable as exc:
        return Figure(None, currency, str(exc))


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
