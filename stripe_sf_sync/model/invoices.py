"""InvoiceFailureChange and CreditNoteChange and their parsers (invoice.payment_failed, credit_note.*), and a
subscription's first invoice netted (FirstInvoiceNet)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from stripe_sf_sync import money
from stripe_sf_sync.model.event import EventMeta, MalformedEvent
from stripe_sf_sync.model.payload import (
    _OBJECT,
    MAX_MINOR_UNITS,
    _amount,
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
class FirstInvoiceNet:
    """What a subscription's first invoice kept, before tax: the subscription Opportunity's `Amount` (the first
    period), netted by credit notes, refunds and lost disputes."""

    subscription_id: str
    invoice_id: str
    amount: Decimal  # major units
    currency: str


@dataclass(frozen=True)
class CreditNoteChange:
    """credit_note.created/updated/voided: hydration nets its invoice when it is a subscription's first."""

    meta: EventMeta
    credit_note_id: str
    invoice_id: str
    customer_id: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    customer_metadata: Mapping[str, str] | None = None
    customer_name: str | None = None
    # The customer's email when the payload expands its customer, or hydration filled it in (the mapping's
    # `customer.email`): "" when it has none, None when not known.
    customer_email: str | None = None
    first_invoice: FirstInvoiceNet | None = None
    invoice_read: bool = False  # hydration read the invoice (and so knows whether it is a first one)

    @property
    def object_id(self) -> str:
        """The order guard's key: the credit note (its events are planned from its invoice's current state)."""
        return self.credit_note_id


@dataclass(frozen=True)
class InvoiceFailureChange:
    """invoice.payment_failed."""

    meta: EventMeta
    invoice_id: str
    customer_id: str
    subscription_id: str | None
    amount_due: Decimal  # major units
    currency: str
    attempt_count: int
    next_payment_attempt: int | None
    hosted_invoice_url: str | None
    payment_intent_id: str | None
    charge_id: str | None
    failure_code: str | None
    metadata: Mapping[str, str]
    customer_metadata: Mapping[str, str] | None = None
    customer_name: str | None = None
    # The customer's email when the payload expands its customer, or hydration filled it in (the mapping's
    # `customer.email`): "" when it has none, None when not known.
    customer_email: str | None = None

    @property
    def object_id(self) -> str:
        """The order guard's key."""
        return self.invoice_id




def parse_credit_note(event: Mapping[str, Any], meta: EventMeta) -> CreditNoteChange:
    """credit_note.* -> CreditNoteChange (ids only: the amounts come from its invoice's current state)."""
    note = _get(event, "data.object")
    if not isinstance(note, _OBJECT):
        raise MalformedEvent("missing data.object")
    note_id = _str(note, "id", prefix="cn_")
    invoice_id = _str(note, "invoice", prefix="in_")
    assert note_id and invoice_id
    return CreditNoteChange(meta, note_id, invoice_id, _str(note, "customer", required=False, prefix="cus_"),
                            _metadata(note))


def _minor(obj: Any, key: str) -> int:
    value = obj.get(key) if isinstance(obj, _OBJECT) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_MINOR_UNITS else 0


def first_invoice_net(invoice: Mapping[str, Any], credit_notes: Sequence[Any], refunds: Sequence[Any],
                      disputes: Sequence[Any]) -> FirstInvoiceNet | None:
    """The first invoice of a subscription (`billing_reason: subscription_create`), netted; None for any other
    invoice or one that charged nothing.

    Kept = `total` - non-void credit notes (`pre_payment_amount` + `post_payment_amount`: what it lowered the
    amount due by and what it refunded, credited or settled out of band; `total` would count a credit note
    settled out of band as well, but it is the same sum; api-facts "Credit notes", stripe/_credit_note.py)
    - succeeded refunds a credit note does not already name (a credit note's refund is a Refund too) - lost
    disputes. The Opportunity's `Amount` is before tax (issue 22 §4): the same share of `total_excluding_tax`.
    """
    if invoice.get("billing_reason") != "subscription_create":
        return None
    sub_id = (_str(invoice, "parent.subscription_details.subscription", required=False)
              or _str(invoice, "subscription", required=False))
    inv_id = _str(invoice, "id", prefix="in_")
    total = _minor(invoice, "total")
    if not sub_id or not inv_id or total <= 0:
        return None
    currency = _currency(invoice)
    base = _minor(invoice, "total_excluding_tax") if invoice.get("total_excluding_tax") is not None else total
    live = [n for n in credit_notes if isinstance(n, _OBJECT) and n.get("status") != "void"]
    noted = sum(_minor(n, "pre_payment_amount") + _minor(n, "post_payment_amount") for n in live)
    named = {_ref(r.get("refund")) for n in live for r in (n.get("refunds") or []) if isinstance(r, _OBJECT)}
    named |= {_ref(n.get("refund")) for n in live if n.get("refund")}  # versions before `refunds` (a list)
    refunded = sum(_minor(r, "amount") for r in refunds
                   if isinstance(r, _OBJECT) and r.get("status") == "succeeded" and r.get("id") not in named)
    lost = sum(_minor(d, "amount") for d in disputes if isinstance(d, _OBJECT) and d.get("status") == "lost")
    kept = max(0, total - noted - refunded - lost)
    amount = money.quantize(money.to_major(base, currency) * kept / total, currency)
    return FirstInvoiceNet(sub_id, inv_id, amount, currency)


def _ref(value: Any) -> Any:
    return value.get("id") if isinstance(value, _OBJECT) else value


def _failure_code_from(obj: Mapping[str, Any]) -> str | None:
    """Failure code of an expanded PaymentIntent (`last_payment_error.code`) or Charge
    (`failure_code`), with the card's decline code when there is one. An Invoice has no
    `last_payment_error` (`stripe/_invoice.py`); its payment's PaymentIntent or Charge has
    (`stripe/_payment_intent.py`, `stripe/_charge.py`)."""
    code = _get(obj, "last_payment_error.code")
    decline = _get(obj, "last_payment_error.decline_code")
    if code is None:
        code = obj.get("failure_code")
        decline = _get(obj, "outcome.reason") if decline is None else decline
    if not isinstance(code, str):
        return None
    if isinstance(decline, str) and decline and decline != code:
        return f"{code} ({decline})"
    return code


def parse_invoice_failure(event: Mapping[str, Any], meta: EventMeta) -> InvoiceFailureChange:
    """invoice.payment_failed -> InvoiceFailureChange (the failure code may need hydration)."""
    inv = _get(event, "data.object")
    if not isinstance(inv, _OBJECT):
        raise MalformedEvent("missing data.object")
    inv_id = _str(inv, "id", prefix="in_")
    customer_id = _str(inv, "customer", prefix="cus_")
    currency = _currency(inv)
    amount = _amount(inv, "amount_due", currency)
    # basil+: parent.subscription_details; 2022-2025 versions: subscription_details; older: subscription.
    sub_id = (_str(inv, "parent.subscription_details.subscription", required=False)
              or _str(inv, "subscription", required=False))
    metadata = (_metadata(inv, "parent.subscription_details.metadata")
                or _metadata(inv, "subscription_details.metadata") or _metadata(inv))
    pi_ref = inv.get("payment_intent")  # pre-basil only: id or expanded object
    charge_ref = inv.get("charge")
    failure = None
    for ref in (pi_ref, charge_ref):
        if isinstance(ref, _OBJECT):
            failure = failure or _failure_code_from(ref)
    payments = _get(inv, "payments.data")
    if isinstance(payments, list):  # basil+: expanded invoice payments
        for p in payments:
            payment = _get(p, "payment")
            if isinstance(payment, _OBJECT):
                for key in ("payment_intent", "charge"):
                    if isinstance(payment.get(key), _OBJECT):
                        failure = failure or _failure_code_from(payment[key])
                        if key == "payment_intent" and pi_ref is None:
                            pi_ref = payment[key]
                    elif isinstance(payment.get(key), str) and key == "payment_intent" and pi_ref is None:
                        pi_ref = payment[key]
    pi_id = pi_ref.get("id") if isinstance(pi_ref, _OBJECT) else pi_ref
    charge_id = charge_ref.get("id") if isinstance(charge_ref, _OBJECT) else charge_ref
    attempts = _int(inv, "attempt_count", required=False) or 0
    if not 0 <= attempts <= 10_000:
        raise MalformedEvent("attempt_count is out of range")
    url = inv.get("hosted_invoice_url") if isinstance(inv.get("hosted_invoice_url"), str) else None
    cust_meta, cust_name = _customer_details(inv)
    assert inv_id and customer_id
    return InvoiceFailureChange(
        meta=meta, invoice_id=inv_id, customer_id=customer_id, subscription_id=sub_id, amount_due=amount,
        currency=currency, attempt_count=attempts,
        next_payment_attempt=_timestamp(inv, "next_payment_attempt", required=False),
        hosted_invoice_url=url, payment_intent_id=pi_id if isinstance(pi_id, str) else None,
        charge_id=charge_id if isinstance(charge_id, str) else None, failure_code=failure,
        metadata=metadata, customer_metadata=cust_meta, customer_name=cust_name,
        customer_email=_customer_email(inv),
    )
