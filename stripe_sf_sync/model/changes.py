"""The typed changes a Stripe event is parsed into, and what rides along with them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from stripe_sf_sync import money, mrr
from stripe_sf_sync.errors import SkippableError
from stripe_sf_sync.mrr import Figure

SUBSCRIPTION_STATUSES = frozenset(
    {"active", "trialing", "past_due", "canceled", "unpaid", "incomplete", "incomplete_expired", "paused"}
)


class MalformedEvent(SkippableError):
    """The payload lacks or mistypes a field a rule needs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, code="MALFORMED_EVENT")


class NoCurrencyOption(MalformedEvent):
    """A subscription is billed in a currency its Price names no amount for: its value is unknown."""

    def __init__(self, reason: str) -> None:
        SkippableError.__init__(self, reason, code="NO_CURRENCY_OPTION")


@dataclass(frozen=True)
class EventMeta:
    """What every change carries about its event."""

    event_id: str
    event_type: str
    created: int
    livemode: bool
    api_version: str | None
    backfill: bool = False  # a synthetic change made by `backfill` from an object's current state
    object_created: int | None = None  # the object's own creation time (backfill's CloseDate)
    write_status: bool = True  # backfill: False when another subscription of the customer decides the status


@dataclass(frozen=True)
class SubscriptionChange:
    """customer.subscription.created/updated/deleted."""

    meta: EventMeta
    subscription_id: str
    customer_id: str
    status: str
    previous_status: str | None
    cancel_at_period_end: bool
    cancel_turned_on: bool
    plan_changed: bool
    currency: str
    lines: tuple[money.PriceLine, ...]
    period_end: int | None
    metadata: Mapping[str, str]
    customer_metadata: Mapping[str, str] | None
    customer_name: str | None
    cancellation_reason: str | None = None
    # False when the payload's embedded `items` list has `has_more`: hydration reads the rest
    # (`/v1/subscription_items?subscription=…`) before any amount is computed from `lines`.
    items_complete: bool = True
    # A cancellation scheduled with `cancel_at` (a timestamp) while `cancel_at_period_end` stays false
    # (stripe/_subscription.py, `cancel_at`): when it takes effect, and whether this event scheduled it.
    cancel_at: int | None = None
    cancel_at_turned_on: bool = False
    # The subscription as mrr.py reads it (discounts, tiers, taxes, in every generation's shape): set by
    # hydration only while it computes `value` (a batch holds thousands of changes: payloads stay compact
    # JSON in HeldEvent until needed).
    raw: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    # Stripe's figures for it, attached by hydration (rules do not fetch); None: not computed (rules fall
    # back to the list-price lines).
    value: SubscriptionFigures | None = None
    # The customer's current MRR (mrr.customer_mrr over its subscriptions now), attached by hydration when
    # the Account field is configured; a Figure with value None says why it is left alone.
    account_mrr: mrr.Figure | None = None

    @property
    def object_id(self) -> str:
        """The Stripe object this change describes (the order guard's key)."""
        return self.subscription_id


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
class FirstInvoiceNet:
    """What a subscription's first invoice kept, before tax: the subscription Opportunity's `Amount` (the first
    period), netted by credit notes, refunds and lost disputes."""

    subscription_id: str
    invoice_id: str
    amount: Decimal  # major units
    currency: str


@dataclass(frozen=True)
class SubscriptionFigures:
    """A subscription's value as Stripe counts it (mrr.py): MRR/ARR after forever discounts, and the first
    paid period's amount after every discount, before tax. A figure whose value is None says why."""

    # `Figure`, not `mrr.Figure`: in this class body the field `mrr` would shadow the module.
    mrr: Figure
    arr: Figure
    first_period: Figure
    counted: bool


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

    @property
    def object_id(self) -> str:
        """The order guard's key."""
        return self.invoice_id


Change = SubscriptionChange | PaymentChange | InvoiceFailureChange | CollectedChange | CreditNoteChange


@dataclass(frozen=True)
class CustomerChange:
    """customer.created/updated/deleted: no rule, only the details its other events resolve by."""

    meta: EventMeta
    customer_id: str
    metadata: Mapping[str, str]
    name: str | None
    deleted: bool

    @property
    def object_id(self) -> str:
        """The order guard's key."""
        return self.customer_id


@dataclass(frozen=True)
class CachedCustomer:
    """The few customer details rules read: metadata (Salesforce Ids) and name. `version` is the time
    they were true at (event `created` or read time), so an older copy never replaces a newer one."""

    customer_id: str
    metadata: Mapping[str, str]
    name: str | None
    deleted: bool
    version: int


@dataclass
class Unsupported:
    """An event type no rule handles (counted, not dead-lettered)."""

    meta: EventMeta
    reason: str = field(default="event type has no rule")
