"""Small typed readers of an event payload: each failure names the field path."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from stripe_sf_sync import money
from stripe_sf_sync.model.event import EventMeta, MalformedEvent

# Key marking the synthetic events `backfill` builds from list endpoints (never sent by Stripe).
BACKFILL_MARK = "stripe_sf_backfill"
BACKFILL_STATUS_MARK = "stripe_sf_writes_status"

_STRIPE_ID = re.compile(r"[A-Za-z0-9_]{4,255}")  # ids reach URL paths during hydration
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z: the last second a date can represent
MAX_MINOR_UNITS = 10**15  # far above any real charge; keeps Decimal arithmetic exact
MAX_QUANTITY = 10**9
# `isinstance(x, (dict, Mapping))`: a dict answers at once, without the ABC's check in Python (a run makes
# hundreds of thousands of these checks; issue 14). The same answer as `isinstance(x, Mapping)`.
_OBJECT = (dict, Mapping)

def _get(obj: Mapping[str, Any], path: str) -> Any:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, _OBJECT):
            return None
        cur = cur.get(part)
    return cur


def _str(obj: Mapping[str, Any], path: str, *, required: bool = True, prefix: str | None = None) -> str | None:
    value = _get(obj, path)
    if isinstance(value, _OBJECT):  # an expanded object: use its id
        value = value.get("id")
    if value is None:
        if required:
            raise MalformedEvent(f"missing {path}")
        return None
    if not isinstance(value, str) or not value or len(value) > 255:
        raise MalformedEvent(f"{path} is not a string id")
    if prefix and not (value.startswith(prefix) and _STRIPE_ID.fullmatch(value)):
        raise MalformedEvent(f"{path} is not a Stripe id starting with {prefix}")
    return value


def _timestamp(obj: Mapping[str, Any], path: str, *, required: bool = True) -> int | None:
    value = _int(obj, path, required=required)
    if value is not None and not 0 < value <= MAX_TIMESTAMP:
        raise MalformedEvent(f"{path} is not a plausible Unix time")
    return value


def _int(obj: Mapping[str, Any], path: str, *, required: bool = True) -> int | None:
    value = _get(obj, path)
    if value is None:
        if required:
            raise MalformedEvent(f"missing {path}")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedEvent(f"{path} is not an integer")
    return value


def _bool(obj: Mapping[str, Any], path: str) -> bool:
    value = _get(obj, path)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise MalformedEvent(f"{path} is not a boolean")
    return value


def _metadata(obj: Any, path: str = "metadata") -> dict[str, str]:
    value = _get(obj, path) if isinstance(obj, _OBJECT) else None
    if value is None:
        return {}
    if not isinstance(value, _OBJECT):
        raise MalformedEvent(f"{path} is not an object")
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


def _currency(obj: Mapping[str, Any], path: str = "currency") -> str:
    value = _get(obj, path)
    if not isinstance(value, str):
        raise MalformedEvent(f"missing {path}")
    try:
        money.exponent(value)
    except ValueError as exc:
        raise MalformedEvent(f"{path}: {exc}") from None
    return value.lower()


def _amount(obj: Mapping[str, Any], path: str, currency: str) -> Decimal:
    value = _int(obj, path)
    if value is None or value < 0 or value > MAX_MINOR_UNITS:
        raise MalformedEvent(f"{path} is out of range")
    return money.to_major(value, currency)


def _customer_details(obj: Mapping[str, Any]) -> tuple[Mapping[str, str] | None, str | None]:
    cust = obj.get("customer")
    if isinstance(cust, _OBJECT):
        name = cust.get("name") if isinstance(cust.get("name"), str) else None
        return _metadata(cust), name
    return None, None


def _customer_email(obj: Mapping[str, Any]) -> str | None:
    """An expanded customer's email ("" when it has none); None when not known: the payload names the customer
    by id, or a backfill's slimmed copy from before the email was kept (a dead letter's payload)."""
    cust = obj.get("customer")
    if isinstance(cust, _OBJECT) and "email" in cust:
        return email if isinstance(email := cust.get("email"), str) else ""
    return None


def _meta(event: Mapping[str, Any]) -> EventMeta:
    if not isinstance(event, _OBJECT):
        raise MalformedEvent("the event is not a JSON object")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id.startswith("evt_") or len(event_id) > 255:
        raise MalformedEvent("missing or malformed event id")
    etype = event.get("type")
    if not isinstance(etype, str):
        raise MalformedEvent("missing event type")
    created = event.get("created")
    if isinstance(created, bool) or not isinstance(created, int) or not 0 < created <= MAX_TIMESTAMP:
        raise MalformedEvent("missing or malformed event created time")
    api_version = event.get("api_version")
    backfill = event.get(BACKFILL_MARK) is True
    obj_created = _get(event, "data.object.start_date") or _get(event, "data.object.created")
    if isinstance(obj_created, bool) or not isinstance(obj_created, int) or not 0 < obj_created <= MAX_TIMESTAMP:
        obj_created = None
    return EventMeta(event_id, etype, created, bool(event.get("livemode")),
                     api_version if isinstance(api_version, str) else None, backfill, obj_created,
                     not (backfill and event.get(BACKFILL_STATUS_MARK) is False))


def event_meta(event: Mapping[str, Any]) -> EventMeta:
    """The event's id, type and time, or MalformedEvent."""
    return _meta(event)
