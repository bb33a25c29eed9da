"""Stripe's webhook signature, as Stripe computes it, for the tests and benchmarks that deliver events.

`Stripe-Signature: t=<unix>,v1=<hex>`, the hex being HMAC-SHA256(secret, f"{t}.{raw body}") (api-facts.md
§4). Written out here because `WebhookSignature.generate_signature_header` only exists from stripe 16 on,
and the declared range starts at 12.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time
from typing import Any


def signature_header(body: str | bytes, secret: str, *, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header Stripe sends with `body`, signed by `secret` at `timestamp` (now)."""
    t = int(time.time()) if timestamp is None else timestamp
    raw = body if isinstance(body, bytes) else body.encode("utf-8")
    mac = hmac.new(secret.encode("utf-8"), f"{t}.".encode() + raw, hashlib.sha256)
    return f"t={t},v1={mac.hexdigest()}"


def thin_event(event: dict[str, Any]) -> dict[str, Any]:
    """The thin event an event destination sends for `event`: object `v2.core.event`, no `data`, a reference
    to the object, `created` an ISO 8601 string (stripe-python `v2/core/_event.py`; docs.stripe.com/
    event-destinations)."""
    obj = event["data"]["object"]
    created = dt.datetime.fromtimestamp(event["created"], tz=dt.UTC).isoformat(timespec="milliseconds")
    return {"id": "evt_thin_" + event["id"].removeprefix("evt_"), "object": "v2.core.event", "type": event["type"],
            "created": created.replace("+00:00", "Z"), "livemode": event.get("livemode", False), "context": None,
            "reason": None, "related_object": {"id": obj["id"], "type": obj.get("object"),
                                               "url": f"/v1/{obj.get('object')}s/{obj['id']}"}}


def connected_account_event(event: dict[str, Any], account: str = "acct_1ConnectedSandbox") -> dict[str, Any]:
    """`event` as a Connect endpoint receives it from a connected account: the same, with `account` set. (The
    events of `StripeSandbox.add_account(connected=True)` carry it already: deliver them to the platform's
    endpoint as they are.)"""
    return {**event, "account": account}
