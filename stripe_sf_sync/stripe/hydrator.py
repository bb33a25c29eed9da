"""Hydration: what an event's payload lacks and a rule needs, fetched for a whole batch at once.

Part of the Stripe edge: customer details come from state (kept current by `customer.*` events and
backfill's expanded customers) and, failing that, one read each; whether a PaymentIntent paid an invoice,
and a failed invoice's failure code, come from one `/v1/invoice_payments` listing over the batch's window;
a subscription billed in another currency than its Prices' default reads those Prices' `currency_options`.
It reads through `ObjectReads` (objects.py), the run's `HydrationCache` (caches.py) and, for backfill's and
reconcile's refunds and disputes of a window, `ListReads` (lists.py), nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol, cast

from stripe_sf_sync import model, money, mrr
from stripe_sf_sync.model import (
    CachedCustomer,
    CollectedChange,
    CreditNoteChange,
    CustomerChange,
    CustomerDeleted,
    CustomerDeletedChange,
    InvoiceFailureChange,
    MalformedEvent,
    PaymentChange,
    SubscriptionChange,
)
from stripe_sf_sync.stripe.caches import HydrationCache
from stripe_sf_sync.stripe.client import BASIL
from stripe_sf_sync.stripe.lists import ListReads
from stripe_sf_sync.stripe.needs import (
    has_charge_payment,
    needs_customer,
    paid_by,
    period_start,
    value_written,
    with_disputes,
)
from stripe_sf_sync.stripe.objects import ObjectReads

# Margin around a batch's time span when listing its invoice payments: clocks and Stripe's own steps
# (invoice finalised, PaymentIntent created, InvoicePayment linked) are seconds to minutes apart.
INVOICE_PAYMENT_MARGIN_S = 3600
# A subscription's first invoice is created with it (or at its trial's end), within seconds.
FIRST_INVOICE_MARGIN_S = 3600
# Statuses whose won Opportunity backfill writes (rules.WON_NOW): only they need the first invoice.
FIRST_PERIOD_WRITTEN = frozenset({"active", "trialing", "past_due", "unpaid"})


class HeldEvent(Protocol):
    """An event as the batch step holds it (pipeline.events.HeldEvent): its payload decoded on demand."""

    def load(self) -> dict[str, Any]:
        """The whole event."""

    def data_object(self) -> dict[str, Any]:
        """The event's `data.object`."""


class HydrationReads(Protocol):
    """What the hydrator reads Stripe through (a StripeSource): the object reads, and the caches over them."""

    @property
    def api_version(self) -> str:
        """The API version payloads come in."""

    @property
    def objects(self) -> ObjectReads:
        """Reads of single objects, nothing kept."""

    @property
    def hydration(self) -> HydrationCache:
        """The run's caches: customers and payment-invoice links per batch; Prices, coupons, Discounts per run."""

    @property
    def lists(self) -> ListReads:
        """List reads: the run's refunds and disputes."""


class CustomerStore(Protocol):
    """Where customer details are kept between runs (the state store)."""

    def customers_for(self, customer_ids: Iterable[str]) -> dict[str, CachedCustomer]:
        """What is known of these customers."""


class StripeHydrator:
    """Fills in what payloads lack, a batch at a time (the batch step's hydrator port)."""

    def __init__(self, source: HydrationReads, customers: CustomerStore, *, account_mrr: bool = False,
                 customer_email: bool = False, product_items: frozenset[int] = frozenset()) -> None:
        self._api_version = source.api_version
        self._reads = source.objects
        self._cache = source.hydration
        self._known = source.hydration.customers  # customer details, per batch
        self._links = source.hydration.links  # which invoice a payment paid, per batch
        self._catalog = source.hydration.catalog  # Prices, coupons and Discounts, per run
        self._customers = customers
        self._account_mrr = account_mrr  # the Account MRR field is configured: read each customer's subscriptions
        self._email = customer_email  # the mapping reads `customer.email`: every change's customer is wanted
        self._product_items = product_items  # the items whose Price's Product the mapping reads a path through
        self._catalog.with_products = bool(product_items)  # each Price read (once per run) expands its Product
        self._customer_subs: dict[str, list[dict[str, Any]]] = {}  # customer id -> its subscriptions, this batch
        self._current: dict[str, dict[str, Any] | None] = {}  # object id -> its current state, this batch
        # PaymentIntent id -> (it now, with its Charge and refunds, its disputes): read once per batch
        self._collected: dict[str, tuple[dict[str, Any] | None, list[dict[str, Any]]]] = {}
        self._lists = source.lists
        # From basil on, backfill's and reconcile's window (adjustments_since), and the refunds and disputes
        # created in it by PaymentIntent, listed once per run when a first invoice is first looked at.
        self._adjust_since: int | None = None
        self._adjustments: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] | None = None

    def prepare(self, fresh: Sequence[tuple[HeldEvent, model.Change]],
                customer_changes: Sequence[CustomerChange]) -> list[CachedCustomer]:
        """Gather what the batch's payloads lack, in a few calls for the whole batch. Returns the customer
        details the batch itself carries (customer events, expanded customers), for state to keep."""
        self._cache.forget()
        self._current.clear()
        self._collected.clear()
        self._customer_subs.clear()
        known = [CachedCustomer(c.customer_id, c.metadata, c.name, c.deleted, c.meta.created, c.email)
                 for c in customer_changes]
        for _, change in fresh:  # an expanded customer (backfill's lists) is as good as a customer event
            cust_meta = getattr(change, "customer_metadata", None)
            customer_id = getattr(change, "customer_id", None)
            if cust_meta is not None and customer_id:
                known.append(CachedCustomer(customer_id, cust_meta, getattr(change, "customer_name", None), False,
                                            change.meta.created, getattr(change, "customer_email", None)))
        wanted = {c.customer_id for _, c in fresh if self._wants_customer(c) and c.customer_id}  # `and`: str
        wanted -= {c for c in wanted if self._known.knows_customer(c)}
        # Every customer of the batch is looked for in state (one query), not only those whose metadata is
        # needed: a customer deleted in Stripe stops its events (issue 25).
        everyone = {cid for _, c in fresh if isinstance(cid := getattr(c, "customer_id", None), str)}
        stored = self._customers.customers_for({c for c in everyone | wanted if not self._known.knows_customer(c)})
        # A customer kept before state version 4 has no email: when the mapping reads it, it is read again (once:
        # then state keeps it); a deletion is known all the same.
        kept = [c for c in stored.values() if c.deleted or not (self._email and c.email is None)]
        for cached in [*kept, *known]:
            self._known.remember_customer(cached)  # the batch's own come last: newer than what state held
        unknown = {c for c in wanted if not self._known.knows_customer(c)}
        if unknown:  # many at once when many are unknown (a first run without backfill)
            self._known.prefetch_customers(unknown, created_until=max(
                c.meta.created for _, c in fresh if getattr(c, "customer_id", None) in unknown))
        self._prefetch_invoice_payments(fresh)
        return known

    def _prefetch_invoice_payments(self, fresh: Sequence[tuple[HeldEvent, model.Change]]) -> None:
        if self._api_version < BASIL:
            return  # older payloads name the invoice and PaymentIntent themselves
        payments = [c for _, c in fresh if isinstance(c, PaymentChange) and not c.invoice_known]
        failures = [c for _, c in fresh if isinstance(c, InvoiceFailureChange) and c.failure_code is None]
        if not payments and not failures:
            return
        # A PaymentIntent is created before it succeeds: the window starts at its own `created`.
        starts = [c.meta.object_created or c.meta.created for c in payments] + [c.meta.created for c in failures]
        ends = [c.meta.created for c in payments] + [c.meta.created for c in failures]
        self._links.prefetch_invoice_payments(
            since=min(starts) - INVOICE_PAYMENT_MARGIN_S, until=max(ends) + INVOICE_PAYMENT_MARGIN_S,
            payment_intents=[c.payment_intent_id for c in payments], invoices=[c.invoice_id for c in failures])

    def hydrate(self, held: HeldEvent, change: model.Change, *, with_customer: bool = False) -> model.Change:
        """Fill in what the payload lacks (customer metadata, invoice links, a failed invoice's failure
        code, amounts in the billed currency), from the batch's prefetch where it has it. `with_customer`:
        the customer too when its own metadata seemed enough (its named Opportunity was not found)."""
        if isinstance(change, CollectedChange):
            change = self._payment_now(change)
        if isinstance(change, PaymentChange) and not change.collected_known:
            change = self._with_collected(change)
        customer_id = getattr(change, "customer_id", None)
        if customer_id and not with_customer and not isinstance(change, CustomerDeletedChange):
            self._stop_if_deleted(change, customer_id)
        wants_details = needs_customer(change) or (
            with_customer and getattr(change, "customer_metadata", None) is None)
        if customer_id and (wants_details or self._wants_email(change)):
            cust = self._known.customer(customer_id)
            # Every change with a customer_id carries customer_metadata, customer_name and customer_email
            # (model.py); mypy cannot narrow a union by getattr. Only the email when only it is wanted: the
            # rules' choice of targets stays what it was without the mapping.
            details = {"customer_metadata": dict(cust.metadata) if cust else {},
                       "customer_name": cust.name if cust else None} if wants_details else {}
            change = dataclasses.replace(cast(Any, change), **details,
                                         customer_email=(cust.email or "") if cust else "")
        if (isinstance(change, SubscriptionChange) and change.value is None and change.raw is None
                and value_written(change)):
            change = dataclasses.replace(change, raw=held.data_object())  # decoded again only for these
        if isinstance(change, SubscriptionChange) and not change.items_complete:
            # The embedded list is a first page (`has_more`): the amounts need every item.
            change = model.with_all_items(change, self._reads.subscription_items(change.subscription_id))
        if isinstance(change, SubscriptionChange) and self._product_items and change.products is None:
            change = dataclasses.replace(change, products=self._products_of(held.data_object()))
        if isinstance(change, SubscriptionChange):
            foreign = model.foreign_price_ids(change)
            if foreign:  # billed in one of its Prices' currency_options: read them (once per run)
                change = model.in_billed_currency(
                    change, {price_id: self._catalog.price_currency_options(price_id) for price_id in foreign})
            change = self._with_value(change)
        if isinstance(change, PaymentChange) and not change.invoice_known:
            change = dataclasses.replace(change, invoice_id=self._links.invoice_of_payment_intent(
                change.payment_intent_id), invoice_known=True)
        if isinstance(change, InvoiceFailureChange) and change.failure_code is None:
            change = self._failure_code(held, change)
        if isinstance(change, CreditNoteChange) or (
                isinstance(change, PaymentChange) and change.invoice_id and change.adjusted
                and change.meta.event_type in model.COLLECTED_EVENT_TYPES):
            change = self._first_invoice(change)
        return change

    def _stop_if_deleted(self, change: model.Change, customer_id: str) -> None:
        """Raise model.CustomerDeleted for a change after its customer's deletion (known from state or the
        batch's customer.deleted, at that event's time), or whose customer this read finds deleted (then the
        change marks the Account, as customer.deleted would have: `mark`)."""
        read_now = not self._known.knows_customer(customer_id) and needs_customer(change)
        if read_now:  # the read the change needs anyway
            self._known.customer(customer_id, as_of=change.meta.created)
        gone = self._known.deleted_customer(customer_id)
        if gone is None:
            return
        if read_now:
            # The stub Stripe returns has no metadata left: the change's own may name the Account.
            raise CustomerDeleted(customer_id, mark=True, metadata=getattr(change, "metadata", None))
        # Strictly after: the subscriptions Stripe cancels with the customer carry its deletion's second.
        if change.meta.created > gone.version:
            raise CustomerDeleted(customer_id, mark=False)

    def _products_of(self, sub: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
        """The Products of the Prices of the items the mapping names, by id: each Price read once per run with its
        Product expanded (the read MRR makes of a tiered Price is the same one)."""
        out: dict[str, Mapping[str, Any]] = {}
        items = (sub.get("items") or {}).get("data") or []
        for item in (items[i] for i in sorted(self._product_items) if i < len(items)):
            price = item.get("price") if isinstance(item, Mapping) else None
            price_id = price.get("id") if isinstance(price, Mapping) else price
            read = self._catalog.price(price_id) if isinstance(price_id, str) else None
            product = read.get("product") if read else None
            if isinstance(product, Mapping) and isinstance(product.get("id"), str):
                out[product["id"]] = product
        return out

    def _wants_customer(self, change: model.Change) -> bool:
        """A rule needs the customer's metadata, or the mapping its email."""
        return needs_customer(change) or self._wants_email(change)

    def _wants_email(self, change: model.Change) -> bool:
        """The mapping reads `customer.email` and the payload does not carry it (an event names its customer
        by id)."""
        return (self._email and bool(getattr(change, "customer_id", None))
                and getattr(change, "customer_email", "") is None)

    def _first_invoice(self, change: PaymentChange | CreditNoteChange) -> model.Change:
        """A refund, dispute or credit note of a subscription's first invoice: what that invoice kept, from its
        current state (the invoice, its credit notes, its payment's refunds and disputes)."""
        assert change.invoice_id
        invoice, pi_id, notes = self._reads.invoice_credit_notes(change.invoice_id)
        if invoice is None:
            return change
        net = None
        if invoice.get("billing_reason") == "subscription_create":
            pi, disputes = self._read_collected(pi_id) if pi_id else (None, [])
            charge = pi.get("latest_charge") if pi else None
            refunds = (charge.get("refunds") or {}).get("data") or [] if isinstance(charge, dict) else []
            net = model.first_invoice_net(invoice, notes, refunds, disputes)
        if isinstance(change, CreditNoteChange):
            return dataclasses.replace(change, first_invoice=net, invoice_read=True)
        return dataclasses.replace(change, first_invoice=net)

    def _read_collected(self, pi_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        if pi_id not in self._collected:
            self._collected[pi_id] = self._reads.payment_collected(pi_id)
        return self._collected[pi_id]

    def _payment_now(self, change: CollectedChange) -> model.Change:
        """A refund or dispute event as its PaymentIntent's change, from the payment's current state: the
        figures never come from the event's own amounts (issue 22 §1). Unchanged (the rules ignore it) for a
        Charge without a PaymentIntent, or one Stripe no longer has."""
        if change.payment_intent_id is None:
            return change
        pi, disputes = self._read_collected(change.payment_intent_id)
        if pi is None:
            return change
        now = model.parse_payment({"data": {"object": pi}}, change.meta)
        return with_disputes(now, disputes)

    def _with_collected(self, change: PaymentChange) -> PaymentChange:
        """A backfilled payment whose listing showed refunds or a dispute it could not read in full."""
        pi, disputes = self._read_collected(change.payment_intent_id)
        if pi is None:
            return dataclasses.replace(change, collected_known=True)
        now = model.parse_payment({"data": {"object": pi}}, change.meta)
        merged = dataclasses.replace(change, refunded=now.refunded, charge_id=now.charge_id, adjusted=True)
        return with_disputes(merged, disputes)

    def _with_value(self, change: SubscriptionChange) -> SubscriptionChange:
        """Attach Stripe's figures (mrr.py) to the change, after reading what its payload names but does
        not carry: Discounts (one re-read of the subscription, kept for the batch), and coupons and
        Prices (once per run each). Nothing is read for a subscription without discounts or tiered prices."""
        if self._account_mrr and change.account_mrr is None:
            change = dataclasses.replace(change, account_mrr=self._customer_mrr(change.customer_id, change.currency))
        sub = change.raw
        if sub is None or change.value is not None:
            return change  # a renewal, a status change: the rules write no value, so nothing is read for one
        lookups = self._lookups(sub)
        value = mrr.subscription_value(sub, lookups)
        first = self._first_period(change, sub, lookups)
        return dataclasses.replace(change, value=model.SubscriptionFigures(value.mrr, value.arr, first, value.counted),
                                   raw=None)

    @contextlib.contextmanager
    def without_account_mrr(self) -> Iterator[None]:
        """Plan without the Account's MRR (reconcile sums it from the subscriptions it lists: no read each)."""
        wanted, self._account_mrr = self._account_mrr, False
        try:
            yield
        finally:
            self._account_mrr = wanted

    def _first_period(self, change: SubscriptionChange, sub: Mapping[str, Any], lookups: mrr.Lookups) -> mrr.Figure:
        """The first paid period's value. An event of a subscription in its first period carries the discounts
        its first invoice had; a backfilled one already renewed may have lost them (a once coupon is used up,
        a repeating one ends), so its first paid invoice is read (one call)."""
        start = sub.get("trial_end") if isinstance(sub.get("trial_end"), int) else sub.get("start_date")
        if not (change.meta.backfill and change.status in FIRST_PERIOD_WRITTEN):
            return mrr.first_period_from_subscription(sub, lookups)
        if isinstance(start, int) and period_start(sub) > start:
            invoice = self._reads.first_invoice(change.subscription_id, start + FIRST_INVOICE_MARGIN_S)
            if invoice is not None:
                return self._netted(invoice) or mrr.first_period_from_invoice(invoice)
            return mrr.first_period_from_subscription(sub, lookups)
        latest = sub.get("latest_invoice")  # the listing's, expanded: the first invoice while it is the latest
        netted = self._netted(latest) if isinstance(latest, Mapping) else None
        return netted or mrr.first_period_from_subscription(sub, lookups)

    def adjustments_since(self, since: int) -> None:
        """Backfill's or reconcile's window: from basil on, its refunds and disputes net first invoices."""
        self._adjust_since, self._adjustments = since, None

    def _netted(self, invoice: Mapping[str, Any]) -> mrr.Figure | None:
        """A backfilled or reconciled subscription's first invoice netted as `sync` nets it (`_first_invoice`):
        by its credit notes, listed only when the invoice's credit-note amounts are not 0, and its payment's
        refunds and lost disputes: pre-basil read only when its Charge (expanded) shows some; from basil on
        those of the run's window paid by it (its `payments`, expanded). None when nothing changed what it
        kept (no read: the caller's figure stands) or it is not a first invoice."""
        if invoice.get("billing_reason") != "subscription_create" or not isinstance(invoice.get("id"), str):
            return None
        credited = any(invoice.get(k) not in (None, 0) for k in ("pre_payment_credit_notes_amount",
                                                                  "post_payment_credit_notes_amount"))
        if self._api_version >= BASIL:
            refunds, disputes = self._window_adjustments(paid_by(invoice))
            if not credited and not refunds and not disputes:
                return None
            notes = self._reads.credit_notes(str(invoice["id"])) if credited else []
            net = model.first_invoice_net(invoice, notes, refunds, disputes)
            return mrr.Figure(net.amount, net.currency) if net is not None else None
        charge = invoice.get("charge")
        adjusted = isinstance(charge, Mapping) and bool(charge.get("amount_refunded") or charge.get("disputed"))
        if not credited and not adjusted:
            return None
        notes = self._reads.credit_notes(str(invoice["id"])) if credited else []
        refunds = []
        disputes = []
        pi = invoice.get("payment_intent")
        pi_id = pi.get("id") if isinstance(pi, Mapping) else pi
        if adjusted and isinstance(pi_id, str):
            paid, disputes = self._read_collected(pi_id)
            latest = paid.get("latest_charge") if paid else None
            refunds = ((latest.get("refunds") or {}).get("data") or []) if isinstance(latest, dict) else []
        net = model.first_invoice_net(invoice, notes, refunds, disputes)
        return mrr.Figure(net.amount, net.currency) if net is not None else None

    def _window_adjustments(self, pi_id: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The refunds and disputes of the run's window paid by `pi_id` (ListReads.payment_adjustments, listed
        on the first call); none outside backfill and reconcile (no window: `sync` nets by events)."""
        if self._adjust_since is None or pi_id is None:
            return [], []
        if self._adjustments is None:
            self._adjustments = self._lists.payment_adjustments(since=self._adjust_since)
        return self._adjustments.get(pi_id, ([], []))

    def _lookups(self, sub: Mapping[str, Any]) -> mrr.Lookups:
        """What mrr.py needs beyond the payload: Discounts, then the coupons a clover Discount names by id."""
        lookups = mrr.Lookups()
        for _ in range(3):
            need = mrr.needed(sub, lookups)
            if not need:
                break
            discounts = {**lookups.discounts, **self._catalog.known_discounts(need.discounts)}
            if any(d not in discounts for d in need.discounts):
                discounts.update({str(d.get("id")): d for d in self._discounts_of(sub)})
            coupons = {**lookups.coupons, **{c: found for c in need.coupons
                                             if (found := self._catalog.coupon(c)) is not None}}
            prices = {**lookups.prices, **{p: found for p in need.prices
                                           if (found := self._catalog.price(p)) is not None}}
            lookups = mrr.Lookups(discounts, coupons, prices)
        return lookups

    def _customer_mrr(self, customer_id: str, currency: str) -> mrr.Figure:
        """The customer's MRR now (Stripe's definition: its active and past_due subscriptions), from its
        subscriptions listed once per batch. No counted subscription: zero."""
        values = []
        for sub in self._subscriptions_of(customer_id):
            try:
                values.append(mrr.subscription_value(sub, self._lookups(sub)))
            except ValueError:
                continue  # a subscription naming no currency: nothing to count
        total = mrr.customer_mrr(values)
        return total if total is not None else mrr.Figure(money.quantize(Decimal(0), currency), currency)

    def _subscriptions_of(self, customer_id: str) -> list[dict[str, Any]]:
        if customer_id not in self._customer_subs:
            self._customer_subs[customer_id] = self._reads.customer_subscriptions(customer_id)
        return self._customer_subs[customer_id]

    def _discounts_of(self, sub: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The subscription's Discount objects: from its customer's listing when the Account MRR already reads
        it (expanded there), else one re-read of the subscription, once per batch."""
        sub_id, customer = str(sub.get("id")), sub.get("customer")
        customer_id = customer.get("id") if isinstance(customer, Mapping) else customer
        if self._account_mrr and isinstance(customer_id, str):
            for listed in self._subscriptions_of(customer_id):
                if listed.get("id") == sub_id:
                    items = (listed.get("items") or {}).get("data") or []
                    refs = [*(listed.get("discounts") or []), *(d for i in items for d in (i.get("discounts") or []))]
                    return [d for d in refs if isinstance(d, dict)]
        key = f"discounts:{sub_id}"
        if key not in self._current:
            self._current[key] = {"data": self._catalog.subscription_discounts(sub_id)}
        held = self._current[key]
        return list(held["data"]) if held else []

    def _failure_code(self, held: HeldEvent, change: InvoiceFailureChange) -> InvoiceFailureChange:
        payments = self._links.prefetched_payments(change.invoice_id)
        inv: Mapping[str, Any] | None
        if payments and not has_charge_payment(payments):
            inv = {**held.data_object(), "payments": {"object": "list", "data": payments}}
        else:
            inv = self._reads.failed_invoice(change.invoice_id)
        if not inv:
            return change
        try:
            hydrated = model.parse_invoice_failure({"data": {"object": inv}}, change.meta)
        except MalformedEvent:
            return change  # the event's own payload is authoritative; the code stays unknown
        return dataclasses.replace(change, failure_code=hydrated.failure_code,
                                   payment_intent_id=change.payment_intent_id or hydrated.payment_intent_id)

    def fresh_customers(self) -> list[CachedCustomer]:
        """Customers read from Stripe since the last call, for state to keep."""
        return self._known.take_fresh_customers()

    def customer_email(self, customer_id: str) -> str | None:
        """The customer's email (state's, the batch's, or read once); None when it has none."""
        return self._known.customer_email(customer_id)

    def current_state(self, held: HeldEvent, change: model.Change) -> model.Change:
        """The change with its `data.object` replaced by the object as Stripe holds it now, read once per
        object and batch: of two events of one object in the same second whose order is unknown (webhook
        deliveries, late listings), neither snapshot is known to be the newer, the current state is. The
        event's own `previous_attributes` still say what it changed. Unchanged when the object is gone or
        does not parse."""
        if isinstance(change, CollectedChange):
            return change  # planned from the payment's current state anyway (hydrate)
        if change.object_id not in self._current:
            self._current[change.object_id] = self._reads.current_object(change.object_id)
        obj = self._current[change.object_id]
        if obj is None:
            return change
        event = held.load()
        data = event_data if isinstance(event_data := event.get("data"), dict) else {}
        # The object comes in the pinned version; the event's `previous_attributes` in its own.
        event = {**event, "data": {**data, "object": obj}}
        try:
            now = model.parse_event(event)
        except MalformedEvent:
            return change
        if isinstance(now, SubscriptionChange):
            now = dataclasses.replace(now, raw=obj)  # its value from the current state, not the event's snapshot
        return now if type(now) is type(change) else change
