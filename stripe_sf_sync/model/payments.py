"""payment_intent.succeeded, refund and dispute payloads -> PaymentChange, CollectedChange, Dispute."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stripe_sf_sync.model.changes import CollectedChange, Dispute, EventMeta, MalformedEvent, PaymentChange
from stripe_sf_sync.model.payload import (
    _OBJECT,
    _amount,
    _bool,
    _currency,
    _customer_details,
    _get,
    _int,
    _metadata,
    _str,
    _timestamp,
)


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
