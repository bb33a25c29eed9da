"""Stripe's webhook signature, as Stripe computes it, for the tests and benchmarks that deliver events.

`Stripe-Signature: t=<unix>,v1=<hex>`, the hex being HMAC-SHA256(secret, f"{t}.{raw body}") (api-facts.md
§4). Written out here because `WebhookSignature.generate_signature_header` only exists from stripe 16 on,
and the declared range starts at 12.
"""

from __future__ import annotations

import hashlib
import hmac
import time


def signature_header(body: str | bytes, secret: str, *, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header Stripe sends with `body`, signed by `secret` at `timestamp` (now)."""
    t = int(time.time()) if timestamp is None else timestamp
    raw = body if isinstance(body, bytes) else body.encode("utf-8")
    mac = hmac.new(secret.encode("utf-8"), f"{t}.".encode() + raw, hashlib.sha256)
    return f"t={t},v1={mac.hexdigest()}"
