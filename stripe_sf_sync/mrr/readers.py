"""Small readers of revenue payloads: each failure raises Unknowable, saying why in words."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

from stripe_sf_sync import money
from stripe_sf_sync.mrr.figures import (
    _MAX_MINOR,
    Figure,
    Unknowable,
)

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
