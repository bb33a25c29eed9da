"""Version-tolerant parsing of Stripe event payloads into small typed changes.

The package: `parse` (the table of event types and their parsers, the `Change` union, and `parse_event`), one
module per Stripe object with its change types and their parsers (`subscriptions`, `payments`, `invoices`,
`customers`), `event` (what every change carries, the errors, `Unsupported`) and `payload` (typed readers).
The names other modules use are re-exported here.

Payloads are rendered in each event's own API version (Stripe API reference: the Event object,
`api_version`; `stripe/_event.py`), so both shapes are read:
before `2025-03-31.basil` subscriptions carry `current_period_*` at the top and invoices carry
`subscription`/`payment_intent`/`charge`; from basil on the periods live on the items and the
invoice links live under `parent.subscription_details` and `payments` (Stripe changelog, 2025-03-31.basil:
"Deprecate subscription current period start and end", "Add support for multiple partial payments on
invoices").
"""

from stripe_sf_sync.model.customers import (
    CachedCustomer,
    CustomerChange,
    CustomerDeleted,
    CustomerDeletedChange,
    customer_email,
    parse_customer,
    parse_customer_deleted,
)
from stripe_sf_sync.model.event import SUBSCRIPTION_STATUSES, EventMeta, MalformedEvent, NoCurrencyOption, Unsupported
from stripe_sf_sync.model.invoices import (
    CreditNoteChange,
    FirstInvoiceNet,
    InvoiceFailureChange,
    first_invoice_net,
    parse_credit_note,
    parse_invoice_failure,
)
from stripe_sf_sync.model.parse import (
    COLLECTED_EVENT_TYPES,
    CREDIT_NOTE_EVENT_TYPES,
    CUSTOMER_EVENT_TYPES,
    EVENT_TYPES,
    NOT_REQUESTED,
    PARSERS,
    Change,
    parse_event,
)
from stripe_sf_sync.model.payload import (
    BACKFILL_MARK,
    BACKFILL_STATUS_MARK,
    MAX_MINOR_UNITS,
    MAX_QUANTITY,
    MAX_TIMESTAMP,
    event_meta,
)
from stripe_sf_sync.model.payments import (
    OPEN_DISPUTE_STATUSES,
    CollectedChange,
    Dispute,
    PaymentChange,
    parse_collected,
    parse_dispute,
    parse_payment,
)
from stripe_sf_sync.model.subscriptions import (
    SubscriptionChange,
    SubscriptionFigures,
    foreign_price_ids,
    in_billed_currency,
    is_pre_basil,
    parse_subscription,
    plan_changed,
    with_all_items,
)

__all__ = [
    "BACKFILL_MARK", "BACKFILL_STATUS_MARK", "COLLECTED_EVENT_TYPES", "CREDIT_NOTE_EVENT_TYPES",
    "CUSTOMER_EVENT_TYPES", "EVENT_TYPES", "MAX_MINOR_UNITS", "MAX_QUANTITY", "MAX_TIMESTAMP", "NOT_REQUESTED",
    "OPEN_DISPUTE_STATUSES", "PARSERS", "SUBSCRIPTION_STATUSES", "CachedCustomer", "Change", "CollectedChange",
    "CreditNoteChange", "CustomerChange", "CustomerDeleted", "CustomerDeletedChange", "Dispute", "EventMeta",
    "FirstInvoiceNet", "InvoiceFailureChange",
    "MalformedEvent", "NoCurrencyOption", "PaymentChange", "SubscriptionChange", "SubscriptionFigures",
    "Unsupported", "customer_email", "event_meta", "first_invoice_net", "foreign_price_ids", "in_billed_currency",
    "is_pre_basil",
    "parse_collected", "parse_credit_note", "parse_customer", "parse_customer_deleted", "parse_dispute", "parse_event",
    "parse_invoice_failure", "parse_payment", "parse_subscription", "plan_changed", "with_all_items",
]
