"""Realistic Stripe event payloads, in the current (basil+) and pre-basil shapes, for unit tests.

Shapes follow Stripe's OpenAPI fixtures (shared/data/stripe-openapi-fixtures3.json) and the
integration guide's example; only the fields that vary between tests are parameters.
"""

from __future__ import annotations

import copy
from typing import Any

CURRENT = "2026-10-28.endive"
PRE_BASIL = "2024-06-20"
T0 = 1_790_000_000  # 2026-09-21T...Z, a Monday-ish anchor; tests compute dates from it


def price(unit_amount: int | None = 99900, currency: str = "usd", interval: str | None = "month",
          interval_count: int = 1, usage_type: str = "licensed") -> dict[str, Any]:
    return {
        "id": "price_1OabcDEFghiJKL", "object": "price", "active": True, "billing_scheme": "per_unit",
        "currency": currency, "livemode": False, "metadata": {}, "nickname": None, "product": "prod_QXg1hqf4jFNsqG",
        "recurring": None if interval is None else {"interval": interval, "interval_count": interval_count,
                                                    "meter": None, "usage_type": usage_type,
                                                    "trial_period_days": None},
        "type": "recurring" if interval else "one_time", "unit_amount": unit_amount,
        "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
    }


def subscription(*, sub_id: str = "sub_1OHAabcdefghij", customer: Any = "cus_Pabcdefghij", status: str = "active",
                 items: list[tuple[dict[str, Any], int]] | None = None, metadata: dict[str, str] | None = None,
                 cancel_at_period_end: bool = False, version: str = CURRENT, currency: str = "usd",
                 period_start: int = T0, period_end: int = T0 + 30 * 86400) -> dict[str, Any]:
    items = items if items is not None else [(price(currency=currency), 1)]
    data = []
    for i, (p, qty) in enumerate(items):
        item: dict[str, Any] = {"id": f"si_Qabc{i:04d}", "object": "subscription_item", "created": T0,
                                "metadata": {}, "price": p, "quantity": qty, "subscription": sub_id,
                                "discounts": [], "tax_rates": []}
        if version >= "2025-03-31":
            item["current_period_start"] = period_start
            item["current_period_end"] = period_end
        data.append(item)
    sub: dict[str, Any] = {
        "id": sub_id, "object": "subscription", "customer": customer, "status": status, "currency": currency,
        "cancel_at_period_end": cancel_at_period_end, "cancel_at": None, "canceled_at": None, "ended_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically", "created": T0, "livemode": False,
        "items": {"object": "list", "data": data, "has_more": False,
                  "url": f"/v1/subscription_items?subscription={sub_id}"},
        "latest_invoice": "in_1Oabcdefghij", "metadata": metadata or {},
    }
    if version < "2025-03-31":
        sub["current_period_start"] = period_start
        sub["current_period_end"] = period_end
    return sub


def event(etype: str, obj: dict[str, Any], *, event_id: str = "evt_1OHAabcdefghij", created: int = T0,
          previous: dict[str, Any] | None = None, version: str = CURRENT) -> dict[str, Any]:
    data: dict[str, Any] = {"object": copy.deepcopy(obj)}
    if previous is not None:
        data["previous_attributes"] = previous
    return {"id": event_id, "object": "event", "api_version": version, "created": created, "data": data,
            "livemode": False, "pending_webhooks": 0, "request": {"id": "req_abc", "idempotency_key": None},
            "type": etype}


def payment_intent(*, pi_id: str = "pi_3Oabcdefghij", customer: str | None = "cus_Pabcdefghij",
                   amount: int = 14900, currency: str = "usd", metadata: dict[str, str] | None = None,
                   version: str = CURRENT, invoice: str | None = None) -> dict[str, Any]:
    pi: dict[str, Any] = {
        "id": pi_id, "object": "payment_intent", "amount": amount, "amount_received": amount,
        "currency": currency, "customer": customer, "status": "succeeded", "livemode": False,
        "metadata": metadata or {}, "description": None, "latest_charge": "ch_3Oabcdefghij", "created": T0,
        "last_payment_error": None,
    }
    if version < "2025-03-31":
        pi["invoice"] = invoice
    return pi


def invoice(*, inv_id: str = "in_1Oabcdefghij", customer: str = "cus_Pabcdefghij",
            subscription_id: str | None = "sub_1OHAabcdefghij", amount_due: int = 14900, currency: str = "usd",
            attempt_count: int = 2, next_payment_attempt: int | None = T0 + 3 * 86400,
            version: str = CURRENT, metadata: dict[str, str] | None = None,
            payment_intent: Any = "pi_3Ofailedabcdef") -> dict[str, Any]:
    inv: dict[str, Any] = {
        "id": inv_id, "object": "invoice", "customer": customer, "amount_due": amount_due, "amount_paid": 0,
        "amount_remaining": amount_due, "attempt_count": attempt_count, "attempted": True, "currency": currency,
        "next_payment_attempt": next_payment_attempt, "status": "open", "livemode": False,
        "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_x/{inv_id}", "billing_reason": "subscription_cycle",
        "last_finalization_error": None, "metadata": {}, "created": T0,
    }
    if version >= "2025-03-31":
        inv["parent"] = {"type": "subscription_details", "quote_details": None,
                         "subscription_details": {"subscription": subscription_id, "metadata": metadata or {}}}
    else:
        inv["subscription"] = subscription_id
        inv["payment_intent"] = payment_intent
        inv["charge"] = "ch_3Ofailedabcdef"
    return inv
