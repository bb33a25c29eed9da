"""Currency exponents, exact Decimal conversion and MRR normalisation. Never floats."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

# Stripe's zero-decimal currencies: the amount is already in major units (Stripe docs: Supported
# currencies, "Zero-decimal currencies").
ZERO_DECIMAL = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split()
)
# Three-decimal currencies: divide by 1000 (Stripe's currency page; the last digit must be 0).
THREE_DECIMAL = frozenset("BHD JOD KWD OMR TND".split())
# ISK, HUF and TWD are "special cases" in Stripe's table but are still sent with two decimals
# in the API (amounts divisible by 100), so they fall through to the default exponent of 2.

# Average month lengths for normalising non-monthly intervals to MRR.
_MONTHS_PER_INTERVAL: dict[str, Decimal] = {
    "day": Decimal(12) / Decimal(365),
    "week": Decimal(12) / Decimal(52),
    "month": Decimal(1),
    "year": Decimal(12),
}


def exponent(currency: str) -> int:
    """Number of decimals Stripe uses for `currency` (0, 2 or 3)."""
    code = _check_code(currency)
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def _check_code(currency: str) -> str:
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isascii() or not currency.isalpha():
        raise ValueError(f"not an ISO 4217 currency code: {currency!r}")
    return currency.upper()


def to_major(amount: int | str | Decimal, currency: str) -> Decimal:
    """Convert a Stripe amount in minor units to an exact Decimal in major units."""
    if isinstance(amount, bool) or isinstance(amount, float):
        raise ValueError(f"amount must be an integer number of minor units, got {amount!r}")
    try:
        minor = Decimal(amount)
    except (InvalidOperation, TypeError) as exc:
        raise ValueError(f"amount is not a number: {amount!r}") from exc
    if not minor.is_finite():
        raise ValueError(f"amount is not finite: {amount!r}")
    exp = exponent(currency)
    return (minor.scaleb(-exp)).quantize(Decimal(1).scaleb(-exp), rounding=ROUND_HALF_UP)


def quantize(value: Decimal, currency: str) -> Decimal:
    """Round a major-unit value to the currency's precision, half up."""
    return value.quantize(Decimal(1).scaleb(-exponent(currency)), rounding=ROUND_HALF_UP)


def format_amount(value: Decimal, currency: str) -> str:
    """'149.00 USD', '5000 JPY', '1.500 KWD'."""
    return f"{quantize(value, currency):f} {currency.upper()}"


@dataclass(frozen=True)
class PriceLine:
    """One subscription item, in minor units, as Stripe sends it."""

    unit_amount: Decimal | None  # minor units; may be fractional (unit_amount_decimal); None when tiered
    currency: str
    interval: str | None  # day/week/month/year, None for one-time prices
    interval_count: int
    quantity: int
    usage_type: str = "licensed"  # metered usage is billed in arrears and has no fixed MRR
    price_id: str | None = None  # the Price, to read its `currency_options` when billed in another currency


def _one_currency(lines: Iterable[PriceLine]) -> tuple[PriceLine, ...]:
    """The lines, refused when they mix currencies: amounts in different currencies cannot be summed.

    A subscription billed in one of its prices' `currency_options` carries the default currency on its
    items (Stripe API reference: Prices, `currency_options`); such lines must be converted
    (model.in_billed_currency) before they get here.
    """
    lines = tuple(lines)
    currencies = {line.currency.lower() for line in lines}
    if len(currencies) > 1:
        raise ValueError(f"items priced in several currencies ({', '.join(sorted(currencies))}): convert them "
                         "to the subscription's currency first")
    return lines


def period_total(lines: Iterable[PriceLine]) -> Decimal | None:
    """Total of one billing period across licensed items, in major units (None if unknowable)."""
    lines = _one_currency(lines)
    total = Decimal(0)
    currency: str | None = None
    for line in lines:
        if line.usage_type == "metered":
            continue
        if line.unit_amount is None:
            return None
        currency = line.currency
        total += line.unit_amount * line.quantity
    if currency is None:
        return Decimal(0)
    return quantize(total.scaleb(-exponent(currency)), currency)


def _monthly_exact(lines: Iterable[PriceLine]) -> tuple[Decimal, str] | None:
    lines = _one_currency(lines)
    total = Decimal(0)
    currency: str | None = None
    for line in lines:
        if line.usage_type == "metered" or line.interval is None:
            continue
        if line.unit_amount is None:
            return None
        months = _MONTHS_PER_INTERVAL.get(line.interval)
        if months is None or line.interval_count < 1:
            raise ValueError(f"unknown billing interval {line.interval!r} x{line.interval_count}")
        currency = line.currency
        total += line.unit_amount * line.quantity / (months * line.interval_count)
    return total, currency or "usd"


def monthly_recurring(lines: Iterable[PriceLine]) -> Decimal | None:
    """MRR in major units: each licensed item normalised to one month, summed.

    Returns None when an item's price is tiered (no unit amount): its MRR cannot be known
    from the payload, and writing a wrong MRR is worse than leaving the field alone.
    """
    exact = _monthly_exact(lines)
    if exact is None:
        return None
    total, currency = exact
    return quantize(total.scaleb(-exponent(currency)), currency)


def annual_recurring(lines: Iterable[PriceLine]) -> Decimal | None:
    """ARR = 12 x MRR, from the unrounded MRR so a yearly plan's ARR is its yearly price."""
    exact = _monthly_exact(lines)
    if exact is None:
        return None
    total, currency = exact
    return quantize((total * 12).scaleb(-exponent(currency)), currency)
