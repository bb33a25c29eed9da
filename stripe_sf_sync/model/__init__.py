"""Version-tolerant parsing of Stripe event payloads into small typed changes.

Payloads are rendered in each event's own API version (Stripe API reference: the Event object,
`api_version`; `stripe/_event.py`), so both shapes are read:
before `2025-03-31.basil` subscriptions carry `current_period_*` at the top and invoices carry
`subscription`/`payment_intent`/`charge`; from basil on the periods live on the items and the
invoice links live under `parent.subscription_details` and `payments` (Stripe changelog, 2025-03-31.basil:
"Deprecate subscription current period start and end", "Add support for multiple partial payments on
invoices").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any, TypeGuard

from stripe_sf_sync import money, mrr
from stripe_sf_sync.errors import SkippableError
from stripe_sf_sync.mrr import Figure

EVENT_TYPES = (
    "payment_intent.succeeded",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.payment_failed",
    # Not mapped to Salesforce: they keep each customer's metadata current in state, so that its other
    # events need no customer read (benchmarks/README.md: Stripe calls).
    "customer.created",
    "customer.updated",
    "customer.deleted",
    # What a payment collected changes: planned from the payment's current state (hydrate.collected), never
    # from the event's amount, so any order gives one figure (api-facts "Refunds", "Disputes").
    # `charge.dispute.updated`/`funds_withdrawn`/`funds_reinstated` need no write of their own: not listed.
    "charge.refunded",
    "refund.created",
    "refund.updated",
    "refund.failed",
    "charge.refund.updated",  # before 2024-10-28.acacia, a refund's update (it had no refund.* events)
    "charge.dispute.created",
    "charge.dispute.closed",
    # A credit note lowers what its invoice is worth: the first invoice's nets its subscription's Amount
    # (api-facts "Credit notes"; issue 22 §2). Never MRR.
    "credit_note.created",
    "credit_note.updated",
    "credit_note.voided",
)
CREDIT_NOTE_EVENT_TYPES = frozenset({"credit_note.created", "credit_note.updated", "credit_note.voided"})
COLLECTED_EVENT_TYPES = frozenset({
    "charge.refunded", "refund.created", "refund.updated", "refund.failed", "charge.refund.updated",
    "charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed",
})
CUSTOMER_EVENT_TYPES = frozenset({"customer.created", "customer.updated", "customer.deleted"})
# Key marking the synthetic events `backfill` builds from list endpoints (never sent by Stripe).
BACKFILL_MARK = "stripe_sf_backfill"
BACKFILL_STATUS_MARK = "stripe_sf_writes_status"
SUBSCRIPTION_STATUSES = frozenset(
    {"active", "trialing", "past_due", "canceled", "unpaid", "incomplete", "incomplete_expired", "paused"}
)


_STRIPE_ID = re.compile(r"[A-Za-z0-9_]{4,255}")  # ids reach URL paths during hydration
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z: the last second a date can represent
MAX_MINOR_UNITS = 10**15  # far above any real charge; keeps Decimal arithmetic exact
MAX_QUANTITY = 10**9
# `isinstance(x, (dict, Mapping))`: a dict answers at once, without the ABC's check in Python (a run makes
# hundreds of thousands of these checks; issue 14). The same answer as `isinstance(x, Mapping)`.
_OBJECT = (dict, Mapping)


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


# --- small typed accessors: each failure names the field path -------------------------------

def _get(obj: Mapping[str, Any], path: str) -> Any:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, _OBJECT):
            return None
        cur = cur.get(part)
    return cur


def _str(obj: Mapping[str, Any], path: str, *, required: bool = True, prefix: str | None = None) -> str | None:
    value = _get(obj, path)
    if isinstance(value, _OBJECT):  # an expanded object: use its id
        value = value.get("id")
    if value is None:
        if required:
            raise MalformedEvent(f"missing {path}")
        return None
    if not isinstance(value, str) or not value or len(value) > 255:
        raise MalformedEvent(f"{path} is not a string id")
    if prefix and not (value.startswith(prefix) and _STRIPE_ID.fullmatch(value)):
        raise MalformedEvent(f"{path} is not a Stripe id starting with {prefix}")
    return value


def _timestamp(obj: Mapping[str, Any], path: str, *, required: bool = True) -> int | None:
    value = _int(obj, path, required=required)
    if value is not None and not 0 < value <= MAX_TIMESTAMP:
        raise MalformedEvent(f"{path} is not a plausible Unix time")
    return value


def _int(obj: Mapping[str, Any], path: str, *, required: bool = True) -> int | None:
    value = _get(obj, path)
    if value is None:
        if required:
            raise MalformedEvent(f"missing {path}")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedEvent(f"{path} is not an integer")
    return value


def _bool(obj: Mapping[str, Any], path: str) -> bool:
    value = _get(obj, path)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise MalformedEvent(f"{path} is not a boolean")
    return value


def _metadata(obj: Any, path: str = "metadata") -> dict[str, str]:
    value = _get(obj, path) if isinstance(obj, _OBJECT) else None
    if value is None:
        return {}
    if not isinstance(value, _OBJECT):
        raise MalformedEvent(f"{path} is not an object")
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


def _currency(obj: Mapping[str, Any], path: str = "currency") -> str:
    value = _get(obj, path)
    if not isinstance(value, str):
        raise MalformedEvent(f"missing {path}")
    try:
        money.exponent(value)
    except ValueError as exc:
        raise MalformedEvent(f"{path}: {exc}") from None
    return value.lower()


def _amount(obj: Mapping[str, Any], path: str, currency: str) -> Decimal:
    value = _int(obj, path)
    if value is None or value < 0 or value > MAX_MINOR_UNITS:
        raise MalformedEvent(f"{path} is out of range")
    return money.to_major(value, currency)


def _customer_details(obj: Mapping[str, Any]) -> tuple[Mapping[str, str] | None, str | None]:
    cust = obj.get("customer")
    if isinstance(cust, _OBJECT):
        name = cust.get("name") if isinstance(cust.get("name"), str) else None
        return _metadata(cust), name
    return None, None


def _meta(event: Mapping[str, Any]) -> EventMeta:
    if not isinstance(event, _OBJECT):
        raise MalformedEvent("the event is not a JSON object")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id.startswith("evt_") or len(event_id) > 255:
        raise MalformedEvent("missing or malformed event id")
    etype = event.get("type")
    if not isinstance(etype, str):
        raise MalformedEvent("missing event type")
    created = event.get("created")
    if isinstance(created, bool) or not isinstance(created, int) or not 0 < created <= MAX_TIMESTAMP:
        raise MalformedEvent("missing or malformed event created time")
    api_version = event.get("api_version")
    backfill = event.get(BACKFILL_MARK) is True
    obj_created = _get(event, "data.object.start_date") or _get(event, "data.object.created")
    if isinstance(obj_created, bool) or not isinstance(obj_created, int) or not 0 < obj_created <= MAX_TIMESTAMP:
        obj_created = None
    return EventMeta(event_id, etype, created, bool(event.get("livemode")),
                     api_version if isinstance(api_version, str) else None, backfill, obj_created,
                     not (backfill and event.get(BACKFILL_STATUS_MARK) is False))


def event_meta(event: Mapping[str, Any]) -> EventMeta:
    """The event's id, type and time, or MalformedEvent."""
    return _meta(event)


# --- the parsers ------------------------------------------------------------------------------

def _price_line(item: Mapping[str, Any], sub_currency: str, idx: int) -> money.PriceLine:
    if not isinstance(item, _OBJECT):
        raise MalformedEvent(f"items.data[{idx}] is not an object")
    # Current versions use `price`; very old ones only had `plan` (amount instead of unit_amount).
    price = item.get("price") if isinstance(item.get("price"), _OBJECT) else item.get("plan")
    if not isinstance(price, _OBJECT):
        raise MalformedEvent(f"items.data[{idx}].price is missing")
    currency = price.get("currency") or sub_currency
    currency = _currency({"currency": currency})
    # Very old plans name it `amount`; None: tiered pricing, no single unit amount.
    unit = _unit_amount({"unit_amount": price.get("amount"), **price}, f"items.data[{idx}].price")
    recurring = rec if isinstance(rec := price.get("recurring"), _OBJECT) else price
    interval = recurring.get("interval")
    if interval is not None and interval not in ("day", "week", "month", "year"):
        raise MalformedEvent(f"items.data[{idx}] has unknown interval {interval!r}")
    count = recurring.get("interval_count") or 1
    quantity = item.get("quantity", 1)
    if quantity is None:
        quantity = 1
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise MalformedEvent(f"items.data[{idx}] interval_count is not a positive integer")
    if isinstance(quantity, bool) or not isinstance(quantity, int) or not 0 <= quantity <= MAX_QUANTITY:
        raise MalformedEvent(f"items.data[{idx}].quantity is not a non-negative integer in range")
    if count > 1000:
        raise MalformedEvent(f"items.data[{idx}] interval_count is out of range")
    usage = recurring.get("usage_type") or "licensed"
    price_id = price.get("id") if isinstance(price.get("id"), str) and len(price["id"]) <= 255 else None
    return money.PriceLine(unit, currency, interval, count, quantity, str(usage), price_id)


def _unit_amount(option: Mapping[str, Any], where: str) -> Decimal | None:
    """A minor-unit amount from `unit_amount_decimal` (a string) or `unit_amount`; None when there is none
    (tiered or customer-chosen amounts)."""
    raw = option.get("unit_amount_decimal")
    if raw is None:
        raw = option.get("unit_amount")
    if raw is None:
        return None
    try:
        unit = Decimal(str(raw)) if not isinstance(raw, bool | float) else None
    except InvalidOperation:
        unit = None
    if unit is None or not unit.is_finite() or unit < 0 or unit > MAX_MINOR_UNITS:
        raise MalformedEvent(f"{where}.unit_amount is not a number in range")
    return unit


def with_all_items(change: SubscriptionChange, items: Sequence[Any]) -> SubscriptionChange:
    """The change with its lines from the whole item list (`items`: every SubscriptionItem, read to the end of
    `/v1/subscription_items?subscription=…`), when the payload's embedded list had `has_more`."""
    lines = tuple(_price_line(item, change.currency, i) for i, item in enumerate(items))
    if not lines:
        raise MalformedEvent(f"{change.subscription_id} lists no subscription items")
    raw = change.raw
    if raw is not None:
        listed = got if isinstance(got := raw.get("items"), Mapping) else {}
        raw = {**raw, "items": {**listed, "data": list(items), "has_more": False}}
    return replace(change, lines=lines, items_complete=True, raw=raw)


def foreign_price_ids(change: SubscriptionChange) -> list[str]:
    """The Prices whose `currency_options` are needed: those of items priced in another currency than the
    subscription is billed in (Stripe API reference: Prices, `currency_options`). Empty for the usual
    single-currency subscription."""
    wanted: list[str] = []
    for i, line in enumerate(change.lines):
        if line.currency == change.currency:
            continue
        if line.price_id is None or not _STRIPE_ID.fullmatch(line.price_id):
            raise NoCurrencyOption(
                f"{change.subscription_id} is billed in {change.currency.upper()} but items.data[{i}] is priced in "
                f"{line.currency.upper()} and names no Price id stripe-sf can read; nothing was written. Report it "
                "with `stripe-sf dlq list --json` output")
        if line.price_id not in wanted:
            wanted.append(line.price_id)
    return wanted


def in_billed_currency(change: SubscriptionChange,
                       options: Mapping[str, Mapping[str, Mapping[str, Any]] | None]) -> SubscriptionChange:
    """The change with every item's amount in the subscription's currency.

    `options` maps each of `foreign_price_ids(change)` to its Price's `currency_options` (None when the
    Price no longer exists). A subscription billed in one of a Price's options shows the default currency
    and amount on its items (`stripe/_price.py`, `currency_options`); the amount billed is the option's.
    Without an option for the currency the value is unknown: the event is dead-lettered rather than written
    with a guess.
    """
    lines: list[money.PriceLine] = []
    billed = change.currency
    for line in change.lines:
        if line.currency == billed:
            lines.append(line)
            continue
        assert line.price_id is not None  # foreign_price_ids refused the others
        found = options.get(line.price_id)
        option = found.get(billed) if isinstance(found, Mapping) else None
        if not isinstance(option, Mapping):
            raise NoCurrencyOption(
                f"{change.subscription_id} is billed in {billed.upper()}, but its Price {line.price_id} (default "
                f"currency {line.currency.upper()}) has no {billed.upper()} amount in its currency_options, so its "
                f"Amount, MRR and ARR are unknown and nothing was written. Add a {billed.upper()} price to "
                f"{line.price_id} in Stripe, then run `stripe-sf dlq retry --all`")
        unit = _unit_amount(option, f"price {line.price_id} currency_options.{billed}")
        lines.append(replace(line, unit_amount=unit, currency=billed))
    return replace(change, lines=tuple(lines))


def _period_end(sub: Mapping[str, Any]) -> int | None:
    def plausible(v: Any) -> TypeGuard[int]:
        return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_TIMESTAMP

    top = sub.get("current_period_end")  # pre-basil
    if plausible(top):
        return int(top)
    items = _get(sub, "items.data")
    ends: list[Any] = [i.get("current_period_end")
                       for i in (items if isinstance(items, list) else []) if isinstance(i, _OBJECT)]
    ends = [e for e in ends if plausible(e)]
    return min(ends) if ends else None


def _item_keys(items: Any) -> list[tuple[Any, Any, Any]] | None:
    """(item id, price id, quantity) of each item of an `items` list object, or None when it names no `data`."""
    data = _get(items, "data") if isinstance(items, _OBJECT) else None
    if not isinstance(data, list):
        return None
    keys = []
    for item in data:
        if not isinstance(item, _OBJECT):
            keys.append((None, None, None))
            continue
        price = item.get("price") if isinstance(item.get("price"), _OBJECT) else item.get("plan")
        price_id = price.get("id") if isinstance(price, _OBJECT) else price
        keys.append((item.get("id"), price_id, item.get("quantity", 1)))
    return keys


def is_pre_basil(api_version: str | None) -> bool:
    """Whether a payload is rendered in a version before `2025-03-31.basil` (date prefixes compare lexically).
    An event without a version is read in both shapes."""
    return api_version is not None and api_version[:10] < "2025-03-31"


def plan_changed(sub: Mapping[str, Any], prev: Mapping[str, Any], api_version: str | None) -> bool:
    """Whether an update changed the plan: its items by (item id, price id, quantity), or, in the pre-basil
    shape, the subscription's own `plan`/`quantity`. Period fields never count.

    From `2025-03-31.basil` the billing period lives on the items, so every renewal carries `items` in
    `previous_attributes`, arrays whole, although no price or quantity changed (Stripe changelog, basil:
    "Deprecate subscription current period start and end"; api-facts §6). The event's own `api_version`
    decides the shape (its payload is rendered in it, stripe/_event.py), not the version stripe-sf pins.
    """
    if api_version is None or is_pre_basil(api_version):
        if "plan" in prev or "quantity" in prev:
            return True
    if "items" not in prev:
        return False
    before = _item_keys(prev.get("items"))
    if before is None:
        return False  # only the list's other attributes changed (its `data` is sent whole when it changes)
    after = _item_keys(sub.get("items"))
    if after is None or before != after:
        return True
    if not (_get(sub, "items.has_more") or _get(prev, "items.has_more")):
        return False
    # The embedded list is a first page. A renewal changes every item's period, so the first page differs in
    # them; a first page that did not change at all means the change is past it, in items not shown here.
    return _get(prev, "items.data") == _get(sub, "items.data")


def parse_subscription(event: Mapping[str, Any], meta: EventMeta) -> SubscriptionChange:
    """customer.subscription.* -> SubscriptionChange."""
    sub = _get(event, "data.object")
    if not isinstance(sub, _OBJECT):
        raise MalformedEvent("missing data.object")
    prev = _get(event, "data.previous_attributes")
    prev = prev if isinstance(prev, _OBJECT) else {}
    sub_id = _str(sub, "id", prefix="sub_")
    customer_id = _str(sub, "customer", prefix="cus_")
    status = _str(sub, "status")
    if status not in SUBSCRIPTION_STATUSES:
        raise MalformedEvent(f"unknown subscription status {status!r}")
    prev_status = prev.get("status") if isinstance(prev.get("status"), str) else None
    items = _get(sub, "items.data")
    if not isinstance(items, list):
        raise MalformedEvent("missing items.data")
    currency = _currency(sub) if sub.get("currency") is not None else None
    if currency is None:
        first = items[0] if items and isinstance(items[0], _OBJECT) else {}
        currency = _currency(first, "price.currency")
    lines = tuple(_price_line(item, currency, i) for i, item in enumerate(items))
    cancel = _bool(sub, "cancel_at_period_end")
    cancel_turned_on = (cancel and "cancel_at_period_end" in prev and prev.get("cancel_at_period_end") is False)
    cancel_at = _timestamp(sub, "cancel_at", required=False)
    # A cancellation scheduled by a timestamp: `cancel_at` set now, and unset before (null in
    # previous_attributes). With cancel_at_period_end, Stripe fills cancel_at too: that is the warning above.
    cancel_at_turned_on = (cancel_at is not None and not cancel and "cancel_at" in prev
                           and prev.get("cancel_at") is None)
    cust_meta, cust_name = _customer_details(sub)
    reason = _get(sub, "cancellation_details.reason")
    assert sub_id and customer_id and status
    return SubscriptionChange(
        meta=meta, subscription_id=sub_id, customer_id=customer_id, status=status,
        previous_status=prev_status, cancel_at_period_end=cancel, cancel_turned_on=bool(cancel_turned_on),
        # A coupon added, removed or ended changes MRR: a value change like a new price (issue 22 §4).
        plan_changed=plan_changed(sub, prev, meta.api_version) or mrr.discounts_changed(sub, prev),
        currency=currency, lines=lines,
        period_end=_period_end(sub), metadata=_metadata(sub), customer_metadata=cust_meta, customer_name=cust_name,
        cancellation_reason=reason if isinstance(reason, str) else None,
        items_complete=not _get(sub, "items.has_more"), cancel_at=cancel_at,
        cancel_at_turned_on=bool(cancel_at_turned_on),
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
    )


def parse_customer(event: Mapping[str, Any], meta: EventMeta) -> CustomerChange:
    """customer.* -> CustomerChange (its metadata and name)."""
    cus = _get(event, "data.object")
    if not isinstance(cus, Mapping):
        raise MalformedEvent("missing data.object")
    customer_id = _str(cus, "id", prefix="cus_")
    assert customer_id
    name = cus.get("name") if isinstance(cus.get("name"), str) else None
    return CustomerChange(meta=meta, customer_id=customer_id, metadata=_metadata(cus), name=name,
                          deleted=meta.event_type == "customer.deleted" or cus.get("deleted") is True)


def parse_event(event: Mapping[str, Any]) -> Change | CustomerChange | Unsupported:
    """Parse one raw event. Raises MalformedEvent with the offending field path."""
    meta = _meta(event)
    try:
        if meta.event_type.startswith("customer.subscription."):
            if meta.event_type not in EVENT_TYPES:
                return Unsupported(meta)
            return parse_subscription(event, meta)
        if meta.event_type == "payment_intent.succeeded":
            return parse_payment(event, meta)
        if meta.event_type == "invoice.payment_failed":
            return parse_invoice_failure(event, meta)
        if meta.event_type in CUSTOMER_EVENT_TYPES:
            return parse_customer(event, meta)
        if meta.event_type in COLLECTED_EVENT_TYPES:
            return parse_collected(event, meta)
        if meta.event_type in CREDIT_NOTE_EVENT_TYPES:
            return parse_credit_note(event, meta)
    except MalformedEvent:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        # Hostile payloads must end as a dead letter, never as a crash that stops the run.
        raise MalformedEvent(f"unreadable payload: {type(exc).__name__}") from None
    return Unsupported(meta)
