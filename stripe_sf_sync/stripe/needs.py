"""What a change needs the hydrator to fill in, and what its payload already says (pure: no reads)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from stripe_sf_sync import model
from stripe_sf_sync.model import (
    CustomerDeletedChange,
    InvoiceFailureChange,
    PaymentChange,
    SubscriptionChange,
)
from stripe_sf_sync.rules import WON_FROM
from stripe_sf_sync.salesforce_ids import checked_id


def paid_by(invoice: Mapping[str, Any]) -> str | None:
    """The PaymentIntent of an invoice's paid payment, from its expanded `payments` (basil on; api-facts)."""
    payments = invoice.get("payments")
    for p in (payments.get("data") or []) if isinstance(payments, Mapping) else []:
        payment = p.get("payment") if isinstance(p, Mapping) and p.get("status") == "paid" else None
        pi = payment.get("payment_intent") if isinstance(payment, Mapping) else None
        pi_id = pi.get("id") if isinstance(pi, Mapping) else pi
        if isinstance(pi_id, str):
            return pi_id
    return None


def with_disputes(change: PaymentChange, disputes: Sequence[Mapping[str, Any]]) -> PaymentChange:
    """The payment with its disputes: a lost one kept back its amount (api-facts "Disputes": closed as won or
    lost; a won one gives the funds back)."""
    parsed = tuple(model.parse_dispute(d, change.currency) for d in disputes)
    lost = sum((d.amount for d in parsed if d.status == "lost"), start=change.lost * 0)
    return dataclasses.replace(change, disputes=parsed, lost=lost, adjusted=True, collected_known=True)


def needs_customer(change: model.Change) -> bool:
    """Whether a rule needs the customer's metadata: the object's own metadata does not name every
    Salesforce target the rules will use (the Opportunity, whose Account is the object's when its own
    metadata names none: rules.AccountRef; and the Contact of a Task it raises). When the named Opportunity
    turns out not to exist, the batch step reads the customer after all (pipeline.batch._find)."""
    meta = getattr(change, "metadata", {}) or {}
    if isinstance(change, CustomerDeletedChange):
        return False  # its payload is the customer itself
    if not getattr(change, "customer_id", None) or getattr(change, "customer_metadata", None) is not None:
        return False
    if not checked_id(meta.get("salesforce_opportunity_id"), "Opportunity"):
        return True
    return raises_task(change) and not meta.get("salesforce_contact_id")


def raises_task(change: model.Change) -> bool:
    """Whether the change's rule creates a Task (whose WhoId may come from the customer's metadata)."""
    if isinstance(change, InvoiceFailureChange):
        return True
    if isinstance(change, SubscriptionChange) and not change.meta.backfill:
        kind = change.meta.event_type.rsplit(".", 1)[-1]
        return kind == "deleted" or (kind == "updated" and (
            change.cancel_turned_on or change.cancel_at_turned_on or (change.previous_status is not None
                                        and change.previous_status != change.status)))
    return False


def has_charge_payment(payments: Sequence[Mapping[str, Any]]) -> bool:
    """A payment of type charge needs its Charge read for the failure code (failed_invoice does that)."""
    return any(isinstance(p.get("payment"), Mapping) and p["payment"].get("type") == "charge" for p in payments)


def period_start(sub: Mapping[str, Any]) -> int:
    """When the subscription's current period began: on the subscription before basil, on its items since
    (api-facts §6); 0 when the payload does not say."""
    starts = [sub.get("current_period_start")] + [
        i.get("current_period_start") for i in ((sub.get("items") or {}).get("data") or []) if isinstance(i, Mapping)]
    return max((s for s in starts if isinstance(s, int)), default=0)


def value_written(change: SubscriptionChange) -> bool:
    """Whether the rules write the subscription's value for this change: when it is won (created, out of a
    trial or incomplete, or backfilled) or its plan or discounts changed (rules.plan_subscription)."""
    kind = change.meta.event_type.rsplit(".", 1)[-1]
    if change.meta.backfill or kind == "created":
        return True
    return kind == "updated" and (change.plan_changed or (
        change.status == "active" and change.previous_status in WON_FROM))
