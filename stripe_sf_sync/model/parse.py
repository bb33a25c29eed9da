"""One raw event -> its typed change, through one table: the event types stripe-sf reads, each with its parser.

Adding an event type is one line in `PARSERS`, with a new change type in `Change` when none of these fits (its
dataclass and parser go in its Stripe object's module): the types asked of Stripe (`EVENT_TYPES`) and the sets
the rules test derive from the table. A type not in the table is `Unsupported`, counted with its reason, never
parsed by a default (docs/add-an-event-type.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from stripe_sf_sync.model.customers import CustomerChange, CustomerDeletedChange, parse_customer, parse_customer_deleted
from stripe_sf_sync.model.event import EventMeta, MalformedEvent, Unsupported
from stripe_sf_sync.model.invoices import (
    CreditNoteChange,
    InvoiceFailureChange,
    parse_credit_note,
    parse_invoice_failure,
)
from stripe_sf_sync.model.payload import _meta
from stripe_sf_sync.model.payments import CollectedChange, PaymentChange, parse_collected, parse_payment
from stripe_sf_sync.model.subscriptions import SubscriptionChange, parse_subscription

# Every change a parser returns that a rule plans (rules.RULES): a new change type is added here.
Change = (SubscriptionChange | PaymentChange | InvoiceFailureChange | CollectedChange | CreditNoteChange
          | CustomerDeletedChange)
Parser = Callable[[Mapping[str, Any], EventMeta], Change | CustomerChange]

# Every event type stripe-sf parses, and its parser. The order is the order asked of Stripe (`types[]`).
PARSERS: dict[str, Parser] = {
    "payment_intent.succeeded": parse_payment,
    "customer.subscription.created": parse_subscription,
    "customer.subscription.updated": parse_subscription,
    "customer.subscription.deleted": parse_subscription,
    "invoice.payment_failed": parse_invoice_failure,
    # Not mapped to Salesforce: they keep each customer's metadata current in state, so that its other
    # events need no customer read (benchmarks/README.md: Stripe calls).
    "customer.created": parse_customer,
    "customer.updated": parse_customer,
    # Planned: the customer's Account is marked deleted, and kept (issue 25).
    "customer.deleted": parse_customer_deleted,
    # What a payment collected changes: planned from the payment's current state (hydrate.collected), never
    # from the event's amount, so any order gives one figure (api-facts "Refunds", "Disputes").
    "charge.refunded": parse_collected,
    "refund.created": parse_collected,
    "refund.updated": parse_collected,
    "refund.failed": parse_collected,
    "charge.refund.updated": parse_collected,  # before 2024-10-28.acacia, a refund's update (it had no refund.*)
    "charge.dispute.created": parse_collected,
    "charge.dispute.updated": parse_collected,  # parsed when a webhook sends it; not asked for (NOT_REQUESTED)
    "charge.dispute.closed": parse_collected,
    # A credit note lowers what its invoice is worth: the first invoice's nets its subscription's Amount
    # (api-facts "Credit notes"; issue 22 §2). Never MRR.
    "credit_note.created": parse_credit_note,
    "credit_note.updated": parse_credit_note,
    "credit_note.voided": parse_credit_note,
}
# Parsed when they come, never asked of Stripe: they need no write of their own. (`charge.dispute.
# funds_withdrawn`/`funds_reinstated` are not even parsed: Unsupported.)
NOT_REQUESTED = frozenset({"charge.dispute.updated"})


def types_parsed_by(parser: Parser) -> frozenset[str]:
    """The event types `PARSERS` hands to `parser`."""
    return frozenset(t for t, p in PARSERS.items() if p is parser)


# The event types asked of Stripe (`/v1/events?types[]=…`), in the table's order.
EVENT_TYPES = tuple(t for t in PARSERS if t not in NOT_REQUESTED)
CREDIT_NOTE_EVENT_TYPES = types_parsed_by(parse_credit_note)
COLLECTED_EVENT_TYPES = types_parsed_by(parse_collected)
CUSTOMER_EVENT_TYPES = types_parsed_by(parse_customer)


def parse_event(event: Mapping[str, Any]) -> Change | CustomerChange | Unsupported:
    """Parse one raw event. Raises MalformedEvent with the offending field path."""
    meta = _meta(event)
    parser = PARSERS.get(meta.event_type)
    if parser is None:
        return Unsupported(meta)
    try:
        return parser(event, meta)
    except MalformedEvent:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        # Hostile payloads must end as a dead letter, never as a crash that stops the run.
        raise MalformedEvent(f"unreadable payload: {type(exc).__name__}") from None
