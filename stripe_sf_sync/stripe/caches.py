"""The hydrator's caches: what hydration read from Stripe, kept per batch (customers, payment-invoice links)
or per run (the customer listing's position, late attaches, Prices, coupons, Discounts), so that a batch
costs a few calls rather than one per event. They read through `ObjectReads` and `ListReads` only."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from stripe_sf_sync.model import CachedCustomer, customer_email
from stripe_sf_sync.stripe.client import PAGE_LIMIT
from stripe_sf_sync.stripe.lists import ListReads
from stripe_sf_sync.stripe.objects import ObjectReads

# Late attaches (see InvoiceLinks._late_attachments): links kept for a run at most, and how stale the kept
# listing may get before what was created since is listed too.
MAX_ATTACHED = 100_000
ATTACHED_REFRESH_S = 300
# Unknown customers of a batch, from this many on, are looked for in the customer list (100 a call, newest
# first) before any is read on its own. Below it, reading each costs at most a few calls, which a listing
# that finds none of them could double (see CustomerCache.prefetch_customers).
CUSTOMER_LIST_FROM = 10
# Prices read for their currency_options are kept for the whole run (an account has few Prices); the
# bound only guards memory against an unusual account, dropping the oldest entry first.
MAX_CACHED_PRICES = 10_000


class CustomerCache:
    """Customers' metadata and names for the batch at hand, from state, the batch's payloads, the customer
    list or one read each; those read from Stripe are handed on to state (`take_fresh_customers`)."""

    def __init__(self, reads: ObjectReads, lists: ListReads, *, clock: Callable[[], float] = time.time) -> None:
        self._reads = reads
        self._lists = lists
        self._clock = clock
        self._customers: dict[str, CachedCustomer] = {}
        self._fresh_customers: list[str] = []  # read from Stripe this run, not yet kept in state
        # Run-level: where the customer listing stopped (its `created` bound and last id), and whether it ended.
        self._customer_list: tuple[int, str | None] | None = None
        self._customer_list_ended = False

    def forget(self) -> None:
        """Drop the batch's customers (state keeps them): memory stays bounded by the batch, not the run."""
        self._customers.clear()
        self._fresh_customers.clear()

    def knows_customer(self, customer_id: str) -> bool:
        """Whether `customer` answers without a call."""
        return customer_id in self._customers

    def remember_customer(self, customer: CachedCustomer) -> None:
        """Details known without a read (state, a customer.* event, an expanded payload)."""
        self._customers[customer.customer_id] = customer

    def take_fresh_customers(self) -> list[CachedCustomer]:
        """Customers read from Stripe since the last call, for the caller to keep in state."""
        fresh = [self._customers[c] for c in self._fresh_customers]
        self._fresh_customers = []
        return fresh

    def customer(self, customer_id: str, *, as_of: int | None = None) -> CachedCustomer | None:
        """The customer's metadata, name and email (cached per batch); None if Stripe has deleted it. `as_of`: the
        time of the event the read is for, which a deleted customer is kept as deleted at (Stripe's stub says
        not when; the events after it are the ones its deletion stops)."""
        if customer_id not in self._customers:
            obj = self._reads.customer(customer_id) or {"deleted": True}
            self._keep_customer(customer_id, obj, as_of=as_of)
        cached = self._customers[customer_id]
        return None if cached.deleted else cached

    def customer_email(self, customer_id: str) -> str | None:
        """The customer's email (None when it has none): as known this batch (state keeps it from schema version
        4 on, the batch's reads and customer events), else read now, once (a customer kept before version 4)."""
        cached = self._customers.get(customer_id)
        if cached is None or cached.email is None:
            obj = self._reads.customer(customer_id)
            if obj is not None:
                self._keep_customer(customer_id, obj)
            cached = self._customers.get(customer_id)
        return (cached.email or None) if cached is not None else None

    def deleted_customer(self, customer_id: str) -> CachedCustomer | None:
        """The customer, when it is known (state, the batch, a read) to be deleted in Stripe."""
        cached = self._customers.get(customer_id)
        return cached if cached is not None and cached.deleted else None

    def _keep_customer(self, customer_id: str, obj: Mapping[str, Any], *, as_of: int | None = None) -> None:
        """Cache a customer read from Stripe, for this batch and (as fresh) for state."""
        metadata = meta if isinstance(meta := obj.get("metadata"), Mapping) else {}
        deleted = obj.get("deleted") is True
        # Only what rules read is kept: a run may see tens of thousands of customers.
        self._customers[customer_id] = CachedCustomer(
            customer_id, {k: v for k, v in metadata.items() if isinstance(v, str)},
            obj.get("name") if isinstance(obj.get("name"), str) else None, deleted,
            as_of if deleted and as_of is not None else int(self._clock()), customer_email(obj))
        self._fresh_customers.append(customer_id)

    def prefetch_customers(self, customer_ids: Iterable[str], *, created_until: int) -> None:
        """Look for many unknown customers in the customer list (100 a call) instead of one read each.

        From CUSTOMER_LIST_FROM unknown customers on, list `/v1/customers` newest first, created at or before
        `created_until` (a customer exists before any event naming it; `created` filter:
        stripe/params/_customer_list_params.py), keeping every customer listed (for later batches and runs),
        until every unknown one is found, the list ends, or its pages are as many as the customers still
        missing. How many pages finding them takes is not known beforehand (the account's size is not), so
        this is the rent-or-buy rule: the listing never costs more than reading the rest would, and the
        batch's customer calls are at most twice the cheaper of listing and reading each. Later batches of
        the run go on from where it stopped. A deleted customer is never listed (Stripe API reference: List
        all customers; airbyte PR 19975): one not found is read on its own by `customer`, which learns it is
        deleted.
        """
        missing = {c for c in customer_ids if c not in self._customers}
        if len(missing) < CUSTOMER_LIST_FROM or self._customer_list_ended:
            return
        until, cursor = self._customer_list or (created_until, None)
        pages = 0
        for data in self._lists.customer_pages(created={"lte": until}, start=cursor):
            pages += 1
            for obj in data:
                if obj["id"] not in self._customers:  # state and the batch's own customer events stand
                    self._keep_customer(obj["id"], obj)
            missing -= {o["id"] for o in data}
            self._customer_list = (until, data[-1]["id"])
            if pages >= len(missing):  # also when none is missing any more
                return
        self._customer_list_ended = True


class InvoiceLinks:
    """Which invoice a PaymentIntent paid, and a failed invoice's payments, for the batch at hand: from one
    `/v1/invoice_payments` listing over the batch's window, a run-level listing of late attaches, or a read."""

    def __init__(self, reads: ObjectReads, lists: ListReads, *, clock: Callable[[], float] = time.time) -> None:
        self._reads = reads
        self._lists = lists
        self._clock = clock
        self._invoice_of_pi: dict[str, str | None] = {}
        self._payments_of_invoice: dict[str, list[dict[str, Any]]] = {}
        # Run-level: PaymentIntent -> invoice for the PaymentIntent payments listed in _attached_span.
        self._attached: dict[str, str] = {}
        self._attached_span: tuple[int, int] | None = None

    def forget(self) -> None:
        """Drop the batch's links (the late attaches' listing is kept for the run)."""
        self._invoice_of_pi.clear()
        self._payments_of_invoice.clear()

    def prefetch_invoice_payments(self, *, since: int, until: int, payment_intents: Sequence[str],
                                  invoices: Sequence[str]) -> None:
        """Link a batch's PaymentIntents and failed invoices with one listing instead of a call each.

        Lists `/v1/invoice_payments` created in [since, until] (Stripe API reference: List all payments for
        an invoice; the `created` filter since stripe-python 14),
        the PaymentIntents expanded when failure codes are wanted. An InvoicePayment names a PaymentIntent
        that already exists, so one created before `since` (the batch's oldest PaymentIntent, less a margin)
        cannot belong to it: a PaymentIntent absent from the listing paid no invoice. A failed invoice
        absent from it (a retry whose payment is older) is read on its own later, as before.
        """
        wanted_pi, wanted_inv = set(payment_intents), set(invoices)
        params: dict[str, Any] = {"limit": PAGE_LIMIT, "created": {"gte": since, "lte": until}}
        if wanted_inv:
            params["expand"] = ["data.payment.payment_intent"]
        found_pi: dict[str, str | None] = {}
        found_inv: dict[str, list[dict[str, Any]]] = {}
        listed = 0
        for data in self._lists.invoice_payment_pages(params):
            listed += len(data)
            for p in data:
                pi_id, inv = _payment_link(p)
                if pi_id in wanted_pi:
                    found_pi[pi_id] = inv
                if inv in wanted_inv:
                    found_inv.setdefault(inv, []).append(p)
        self._late_attachments(wanted_pi - found_pi.keys(), found_pi, after=until,
                               density=listed / max(until - since, 1))
        for pi_id in wanted_pi:
            self._invoice_of_pi[pi_id] = found_pi.get(pi_id)
        self._payments_of_invoice.update(found_inv)

    def _late_attachments(self, missing: set[str], found: dict[str, str | None], *, after: int,
                          density: float) -> None:
        """Invoices that PaymentIntents were attached to after the batch's window.

        A PaymentIntent that has already succeeded can be attached to an invoice long after; the
        InvoicePayment is created then (Stripe API reference: Attach a payment to an Invoice). When the
        window ends before now (a catch-up run, a first `sync --since`, a dead-letter retry), look at
        (after, now] too, by whichever costs fewer calls: one listing of the PaymentIntent payments in
        that span (its size estimated from the window's density), or one lookup per PaymentIntent still
        unlinked. The listing is kept for the run (up to MAX_ATTACHED links): batches move forward in
        time, so a later batch's span is inside it, and only what was created since needs listing. A
        cron run every few minutes has no such span and pays nothing. An attach after this run has read
        the payment is not seen: the payment was a one-time payment when it was applied.
        """
        now = int(self._clock())
        if not missing or now <= after:
            return
        if self._attached_span is not None and self._attached_span[0] <= after:
            if now - self._attached_span[1] > ATTACHED_REFRESH_S:
                self._list_attached(self._attached_span[1], now, missing, found)
            found.update({pi: self._attached[pi] for pi in missing if pi in self._attached})
            return
        pages = math.ceil(density * (now - after) / PAGE_LIMIT) + 1
        if pages >= len(missing):
            for pi_id in sorted(missing):
                found[pi_id] = self.invoice_of_payment_intent(pi_id)
            return
        self._attached, self._attached_span = {}, (after, after)
        self._list_attached(after, now, missing, found)

    def _list_attached(self, after: int, until: int, missing: set[str], found: dict[str, str | None]) -> None:
        """List the PaymentIntent payments created in (after, until]: answer `missing`, and keep the links
        for later batches while there are at most MAX_ATTACHED of them (memory stays bounded)."""
        params = {"limit": PAGE_LIMIT, "created": {"gt": after, "lte": until}, "payment": {"type": "payment_intent"}}
        for data in self._lists.invoice_payment_pages(params):
            for p in data:
                pi_id, inv = _payment_link(p)
                if pi_id is None or inv is None:
                    continue
                if pi_id in missing:
                    found[pi_id] = inv
                if self._attached_span is not None:
                    self._attached[pi_id] = inv
            if len(self._attached) > MAX_ATTACHED:
                self._attached, self._attached_span = {}, None  # too many to keep: each batch lists its own
        if self._attached_span is not None:
            self._attached_span = (self._attached_span[0], until)

    def prefetched_payments(self, invoice_id: str) -> list[dict[str, Any]] | None:
        """A failed invoice's payments from `prefetch_invoice_payments`, newest first, if it found them."""
        return self._payments_of_invoice.pop(invoice_id, None)

    def invoice_of_payment_intent(self, pi_id: str) -> str | None:
        """The invoice a PaymentIntent paid, if any: from the batch's prefetch, else one read (kept for the batch)."""
        if pi_id not in self._invoice_of_pi:
            self._invoice_of_pi[pi_id] = self._reads.invoice_of_payment_intent(pi_id)
        return self._invoice_of_pi[pi_id]


class Catalog:
    """Prices, coupons and Discounts, kept for the run: what they say cannot change (pkg `_coupon.py` update:
    "by design, not editable"; a Price's amounts likewise; a removed Discount leaves the lists)."""

    def __init__(self, reads: ObjectReads) -> None:
        self._reads = reads
        # price id -> {currency: {unit_amount, unit_amount_decimal}}, None for a Price Stripe no longer has.
        self._price_options: dict[str, dict[str, dict[str, Any]] | None] = {}
        # Coupons and expanded Prices for MRR (mrr.py).
        self._coupons: dict[str, dict[str, Any] | None] = {}
        # Discounts by id: what one says (its coupon, start and end) never changes.
        self._discounts: dict[str, dict[str, Any]] = {}
        self._prices: dict[str, dict[str, Any] | None] = {}
        # The mapping reads a path through a Price's Product (`items[0].price.product.name`): each Price read
        # expands its Product in the same call (set by the hydrator; off, the calls are unchanged).
        self.with_products = False

    def price_currency_options(self, price_id: str) -> dict[str, dict[str, Any]] | None:
        """A Price's amounts per currency (`currency_options`), read once per run; None if it is gone.

        Stripe returns `currency_options` only when expanded (Stripe API reference: The Price object), and
        only a subscription billed in another currency than its Price's default needs them. Kept for the run, unlike the
        per-batch hydration caches: many subscriptions share few Prices.
        """
        if price_id not in self._price_options:
            obj = self.price(price_id)  # one read serves the amounts and MRR (tiers)
            options: dict[str, dict[str, Any]] | None = None
            if obj is not None:
                raw = opts if isinstance(opts := obj.get("currency_options"), dict) else {}
                # Only what the amounts need (tiers and custom amounts leave the unit amount unknown).
                options = {str(cur).lower(): {k: o.get(k) for k in ("unit_amount", "unit_amount_decimal")}
                           for cur, o in raw.items() if isinstance(o, dict)}
            if len(self._price_options) >= MAX_CACHED_PRICES:
                self._price_options.pop(next(iter(self._price_options)))
            self._price_options[price_id] = options
        return self._price_options[price_id]

    def subscription_discounts(self, subscription_id: str) -> list[dict[str, Any]]:
        """The Discounts of a subscription and of its items, read now (one re-read of the subscription), and
        kept by id for `known_discounts`."""
        found = self._reads.subscription_discounts(subscription_id)
        for d in found:
            self._bounded(self._discounts)
            self._discounts[str(d.get("id"))] = d
        return found

    def known_discounts(self, discount_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The Discounts read earlier in this run, of these ids."""
        return {d: self._discounts[d] for d in discount_ids if d in self._discounts}

    def coupon(self, coupon_id: str) -> dict[str, Any] | None:
        """A Coupon with the products it is limited to (`expand[]=applies_to`, includable only), once per run."""
        if coupon_id not in self._coupons:
            self._bounded(self._coupons)
            self._coupons[coupon_id] = self._reads.coupon(coupon_id)
        return self._coupons[coupon_id]

    def price(self, price_id: str) -> dict[str, Any] | None:
        """A Price with its `tiers` and `currency_options` (both includable only, pkg `_price.py`), and its
        Product when `with_products`, once per run."""
        if price_id not in self._prices:
            self._bounded(self._prices)
            self._prices[price_id] = self._reads.price(price_id, product=self.with_products)
        return self._prices[price_id]

    @staticmethod
    def _bounded(cache: dict[str, Any]) -> None:
        if len(cache) >= MAX_CACHED_PRICES:
            cache.pop(next(iter(cache)))


class HydrationCache:
    """The hydrator's caches over one run's reads: customers, payment-invoice links, and the catalog."""

    def __init__(self, reads: ObjectReads, lists: ListReads, *, clock: Callable[[], float] = time.time) -> None:
        self.customers = CustomerCache(reads, lists, clock=clock)
        self.links = InvoiceLinks(reads, lists, clock=clock)
        self.catalog = Catalog(reads)

    def forget(self) -> None:
        """Drop what is kept per batch (called per batch): state keeps the customers, so memory stays
        bounded by the batch, not by the run. Run-level entries stay."""
        self.customers.forget()
        self.links.forget()
def _payment_link(payment: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(PaymentIntent id, invoice id) of an InvoicePayment (the PaymentIntent may be expanded)."""
    inner = paid if isinstance(paid := payment.get("payment"), Mapping) else {}
    pi = inner.get("payment_intent")
    pi_id = pi.get("id") if isinstance(pi, Mapping) else pi
    inv = payment.get("invoice")
    return (pi_id if isinstance(pi_id, str) else None), (inv if isinstance(inv, str) else None)

