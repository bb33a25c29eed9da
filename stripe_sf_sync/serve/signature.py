"""A delivery's `Stripe-Signature`, verified against its raw body (api-facts.md §4)."""

from __future__ import annotations

from collections.abc import Sequence

import stripe


def verify(body: bytes, header: str | None, secrets: Sequence[str], tolerance: int) -> str | None:
    """None when one of `secrets` signed `body` within `tolerance` seconds; else why not, in a few words
    (missing, malformed, wrong or stale signature). The SDK checks the signature before the timestamp, so
    a stale one was signed by a known secret (api-facts.md §4)."""
    if not header:
        return "missing signature"
    try:
        # On text: from 12.0.0 to 15.3.1 `verify_header` formats the payload as given ("%d.%s"), so bytes
        # never match; 16.x decodes first (api-facts.md §4, stripe-python `stripe/_webhook.py`).
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8"
    reasons: list[str] = []
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, header, secret, tolerance)
            return None
        except stripe.SignatureVerificationError as exc:
            reasons.append(_reason(str(exc)))
    for reason in ("stale timestamp", "malformed signature"):
        if reason in reasons:
            return reason
    return reasons[0]


def _reason(message: str) -> str:
    """The SDK's message, in the few words a 400 and a metric label carry."""
    if message.startswith("Timestamp outside the tolerance zone"):
        return "stale timestamp"
    if message.startswith(("Unable to extract", "No signatures found with expected scheme")):
        return "malformed signature"
    return "wrong signature"
