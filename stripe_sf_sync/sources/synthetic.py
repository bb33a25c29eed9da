"""The one place a listed Stripe object becomes an event: backfill's listings, reconcile's reads and its
repairs each turn an object's current state into a synthetic event (marked with `model.BACKFILL_MARK`),
reduced to the fields the rules read, which then goes through the same rules as a real one."""

from __future__ import annotations

from typing import Any

from stripe_sf_sync import model

# The event type whose rule a listed object's current state goes through.
_EVENT_TYPE = {"subscriptions": "customer.subscription.created",
               "payment_intents": "payment_intent.succeeded",
               "invoices": "invoice.payment_failed"}


def relevant(kind: str, obj: dict[str, Any]) -> bool:
    """Keep what the rules apply to: succeeded one-time-payment candidates, unpaid invoices with a
    failed attempt, and every subscription (status=all)."""
    if kind == "payment_intents":
        return obj.get("status") == "succeeded"
    if kind == "invoices":
        return bool(obj.get("attempted")) and (obj.get("attempt_count") or 0) > 0 and obj.get("status") == "open"
    return True


# The fields the rules read (model.py), per object: a full Stripe object with its expanded customer is
# several kilobytes, and a chunk of thousands of them would dominate memory.
_KEEP = {
    "subscriptions": ("id", "object", "customer", "status", "currency", "cancel_at_period_end", "current_period_end",
                      "metadata", "cancellation_details", "start_date", "created", "livemode",
                      # MRR as Stripe counts it (mrr.py): discounts, taxes, the trial, a scheduled end
                      "discount", "discounts", "default_tax_rates", "automatic_tax", "trial_end", "cancel_at",
                      "current_period_start"),
    "payment_intents": ("id", "object", "customer", "amount_received", "currency", "metadata", "invoice",
                        "description", "status", "created", "livemode"),
    "invoices": ("id", "object", "customer", "amount_due", "currency", "attempt_count", "attempted",
                 "next_payment_attempt", "hosted_invoice_url", "parent", "subscription", "subscription_details",
                 "payment_intent", "charge", "metadata", "status", "created", "livemode"),
}
# A subscription's first invoice while it is its latest: what model.first_invoice_net reads (stripe/hydrator.py's
# `_first_period`).
_KEEP_FIRST_INVOICE = ("id", "object", "billing_reason", "total", "total_excluding_tax", "currency", "subscription",
                       "parent", "pre_payment_credit_notes_amount", "post_payment_credit_notes_amount",
                       "payment_intent", "charge", "created")
_KEEP_PRICE = ("id", "currency", "unit_amount", "unit_amount_decimal", "amount", "interval", "interval_count",
               "usage_type", "recurring", "billing_scheme", "tiers_mode", "tiers", "transform_quantity",
               "transform_usage", "tax_behavior", "type", "product")


def slim(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The object reduced to what the rules read."""
    out = {k: obj[k] for k in _KEEP[kind] if k in obj}
    charge = obj.get("latest_charge") if kind == "payment_intents" else None
    if isinstance(charge, dict):  # what the payment kept: model._collected_from_charge
        slim_charge = {k: charge.get(k) for k in ("id", "amount_refunded", "disputed")}
        refunds = charge.get("refunds")
        if isinstance(refunds, dict):  # missing: hydration reads them when amount_refunded says there are some
            slim_charge["refunds"] = {
                "object": "list", "has_more": bool(refunds.get("has_more")),
                "data": [{k: r.get(k) for k in ("id", "amount", "status")} for r in refunds.get("data") or []
                         if isinstance(r, dict)]}
        out["latest_charge"] = slim_charge
    latest = obj.get("latest_invoice") if kind == "subscriptions" else None
    if isinstance(latest, dict) and latest.get("billing_reason") == "subscription_create":
        out["latest_invoice"] = first = {k: latest[k] for k in _KEEP_FIRST_INVOICE if k in latest}
        if isinstance(latest.get("charge"), dict):  # pre-basil, expanded: whether it was refunded or disputed
            first["charge"] = {k: latest["charge"].get(k) for k in ("id", "amount_refunded", "disputed")}
        payments = latest.get("payments")
        if isinstance(payments, dict):  # basil on, expanded: the PaymentIntent its refunds and disputes name
            first["payments"] = {"object": "list", "data": [
                {"status": p.get("status"), "payment": p.get("payment")} for p in payments.get("data") or []
                if isinstance(p, dict)]}
    cust = out.get("customer")
    if isinstance(cust, dict):
        # What state keeps of a customer (the mapping's customer.email included): the rest is dropped.
        out["customer"] = {k: cust[k] for k in ("id", "object", "name", "email", "metadata") if k in cust}
    items = (obj.get("items") or {}).get("data") if kind == "subscriptions" else None
    if isinstance(items, list):
        slim_items = []
        for item in items:
            if not isinstance(item, dict):
                slim_items.append(item)
                continue
            new = {k: item[k] for k in ("id", "quantity", "current_period_start", "current_period_end", "discounts",
                                        "tax_rates") if k in item}
            for key in ("price", "plan"):
                if isinstance(item.get(key), dict):
                    new[key] = {k: item[key][k] for k in _KEEP_PRICE if k in item[key]}
            slim_items.append(new)
        out["items"] = {"object": "list", "data": slim_items, "has_more": bool(obj["items"].get("has_more"))}
    return out


def synthetic_event(kind: str, obj: dict[str, Any], *, tag: str, read_at: int, api_version: str,
                    slimmed: bool = False) -> dict[str, Any]:
    """A change from an object's current state, in the shape of the event the rules expect."""
    return {"id": f"evt_bf{tag}_{obj.get('id')}", "object": "event", "type": _EVENT_TYPE[kind],
            "created": read_at, "api_version": api_version, "livemode": bool(obj.get("livemode")),
            "data": {"object": obj if slimmed else slim(kind, obj)}, model.BACKFILL_MARK: True}
