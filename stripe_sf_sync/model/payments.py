"""PaymentChange, CollectedChange and Dispute, and their parsers (payment_intent.succeeded, refund and
dispute events)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from stripe_sf_sync.model.event import EventMeta, MalformedEvent
from stripe_sf_sync.model.invoices import FirstInvoiceNet
from stripe_sf_sync.model.payload import (
    _OBJECT,
    _amount,
    _bool,
    _currency,
    _customer_details,
    _customer_email,
    _get,
    _int,
    _metadata,
    _str,
    _timestamp,
)


@dataclass(frozen=True)
class Dispute:
    """A chargeback on a payment (stripe/_dispute.py): what its Task names."""

    dispute_id: str
    amount: Decimal  # major units
    currency: str
    reason: str
    status: str
    due_by: int | None  # evidence_details.due_by


# Statuses of a dispute still waiting for evidence or a decision (stripe/_dispute.py, `status`).
OPEN_DISPUTE_STATUSES = frozenset({"warning_needs_response", "warning_under_review", "needs_response", "under_review"})


@dataclass(frozen=True)
class PaymentChange:
    """payment_intent.succeeded."""

    meta: EventMeta
    payment_intent_id: str
    customer_id: str | None
    amount_received: Decimal  # major units
    currency: str
    metadata: Mapping[str, str]
    invoice_id: str | None  # pre-basil payloads name the invoice; None otherwise
    invoice_known: bool  # True when the payload itself says whether an invoice exists
    description: str | None
    customer_metadata: Mapping[str, str] | None = None
    customer_name: str | None = None
    # The customer's email when the payload expands its customer, or hydration filled it in (the mapping's
    # `customer.email`): "" when it has none, None when not known.
    customer_email: str | None = None
    # What Stripe kept of it, from the payment's current state (its Charge, refunds, disputes): succeeded
    # refunds and lost disputes, in major units. `adjusted`: the change is about them (a refund or dispute event,
    # or a backfill of a payment that has some); `collected_known`: False until hydration read them.
    refunded: Decimal = Decimal(0)
    lost: Decimal = Decimal(0)
    charge_id: str | None = None
    disputes: tuple[Dispute, ...] = ()
    adjusted: bool = False
    collected_known: bool = True
    paid_at: int | None = None  # the PaymentIntent's `created`: the CloseDate when a refund event creates it
    first_invoice: FirstInvoiceNet | None = None  # set by hydration when it paid a subscription's first invoice

    @property
    def object_id(self) -> str:
        """The order guard's key."""
        return self.payment_intent_id

    @property
    def net(self) -> Decimal:
        """What Stripe kept: received, less succeeded refunds and lost disputes (never below zero)."""
        return max(Decimal(0), self.amount_received - self.refunded - self.lost)

    @property
    def fully_refunded(self) -> bool:
        """Every unit received was refunded (a lost dispute is not a refund)."""
        return self.amount_received > 0 and self.refunded >= self.amount_received


@dataclass(frozen=True)
class CollectedChange:
    """A refund or dispute event (COLLECTED_EVENT_TYPES): hydration turns it into the PaymentChange of its
    PaymentIntent as it is now, so replay, webhook and backfill give one figure in any order."""

    meta: EventMeta
    payment_intent_id: str | None  # None: a Charge made without a PaymentIntent (no Opportunity tracks it)
    charge_id: str | None
    customer_id: str | None
    dispute_id: str | None = None  # the dispute a charge.dispute.* event is about

    @property
    def object_id(self) -> str:
        """The order guard's key: the PaymentIntent, like its payment_intent.succeeded."""
        return self.payment_intent_id or self.charge_id or self.meta.event_id




def parse_payment(event: Mapping[str, Any], meta: EventMeta) -> PaymentChange:
    """payment_intent.succeeded -> PaymentChange."""
    pi = _get(event, "data.object")
    if not isinstance(pi, Mapping):
        raise MalformedEvent("missing data.object")
    pi_id = _str(pi, "id", prefix="pi_")
    currency = _currency(pi)
    amount = _amount(pi, "amount_received", currency)
    invoice_known = "invoice" in pi  # pre-basil payloads always carry the key (id or null)
    invoice_id = _str(pi, "invoice", required=False)
    desc = pi.get("description") if isinstance(pi.get("description"), str) else None
    cust_meta, cust_name = _customer_details(pi)
    assert pi_id
    return PaymentChange(
        meta=meta, payment_intent_id=pi_id, customer_id=_str(pi, "customer", required=False, prefix="cus_"),
        amount_received=amount, currency=currency, metadata=_metadata(pi), invoice_id=invoice_id,
        invoice_known=invoice_known, description=desc, customer_metadata=cust_meta, customer_name=cust_name,
        customer_email=_customer_email(pi),
        paid_at=_timestamp(pi, "created", required=False), **_collected_from_charge(pi.get("latest_charge"), currency),
    )


def _collected_from_charge(charge: Any, currency: str) -> dict[str, Any]:
    """The refunds an expanded Charge shows (`latest_charge`, with `refunds` expanded): succeeded ones only
    (a pending, failed or canceled refund kept nothing back; stripe/_refund.py `status`). `collected_known` is
    False when its list is missing or a first page, or the Charge is disputed (disputes are read apart)."""
    if not isinstance(charge, _OBJECT):
        return {}
    out: dict[str, Any] = {"charge_id": _str(charge, "id", required=False, prefix="")}
    refunded_total = _int(charge, "amount_refunded", required=False) or 0
    refunds = _get(charge, "refunds.data")
    known = not _bool(charge, "disputed")
    if isinstance(refunds, list) and not _get(charge, "refunds.has_more"):
        ok = sum(int(r.get("amount") or 0) for r in refunds
                 if isinstance(r, _OBJECT) and r.get("status") == "succeeded")
        out["refunded"] = _amount({"a": ok}, "a", currency)
    elif refunded_total:
        known = False
    out["collected_known"] = known
    out["adjusted"] = bool(refunded_total) or _bool(charge, "disputed")
    return out


def parse_dispute(obj: Any, currency: str) -> Dispute:
    """A Dispute object -> Dispute."""
    if not isinstance(obj, _OBJECT):
        raise MalformedEvent("a dispute is not an object")
    dispute_id = _str(obj, "id", prefix="d")
    cur = _currency(obj) if obj.get("currency") is not None else currency
    reason = r if isinstance(r := obj.get("reason"), str) else "not given"
    status = s if isinstance(s := obj.get("status"), str) else "unknown"
    assert dispute_id
    return Dispute(dispute_id, _amount(obj, "amount", cur), cur, reason, status,
                   _timestamp(obj, "evidence_details.due_by", required=False))


def parse_collected(event: Mapping[str, Any], meta: EventMeta) -> CollectedChange:
    """charge.refunded, refund.*, charge.refund.updated, charge.dispute.* -> CollectedChange (ids only: the
    amounts come from the payment's current state)."""
    obj = _get(event, "data.object")
    if not isinstance(obj, _OBJECT):
        raise MalformedEvent("missing data.object")
    kind = obj.get("object")
    charge_id = (_str(obj, "id", prefix="") if kind == "charge" else _str(obj, "charge", required=False))
    dispute_id = _str(obj, "id", prefix="d") if kind == "dispute" else None
    return CollectedChange(meta, _str(obj, "payment_intent", required=False, prefix="pi_"), charge_id,
                           _str(obj, "customer", required=False, prefix="cus_"), dispute_id)
