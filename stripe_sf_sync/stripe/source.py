"""`StripeSource`: one run's Stripe edge, composed of the client (client.py: the pacer, the retry policy and
the pager), the event reads (events.py), the list reads (lists.py), the object reads (objects.py) and the
hydrator's caches (caches.py). Its methods are those the rest of the package calls; each is one line handing
on to the part that holds it.

The names other modules import from here (the constants, `build_client`, `Pacer`) are re-exported, so
their import lines need not change.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import stripe

from stripe_sf_sync.model import EVENT_TYPES, CachedCustomer
from stripe_sf_sync.stripe.caches import (
    ATTACHED_REFRESH_S,
    CUSTOMER_LIST_FROM,
    MAX_ATTACHED,
    MAX_CACHED_PRICES,
    HydrationCache,
)
from stripe_sf_sync.stripe.client import BASIL, MAX_ATTEMPTS, PAGE_LIMIT, RETRY_LATER_HINT, PacedClient
from stripe_sf_sync.stripe.events import RETENTION_S, TYPES_PER_REQUEST, EventReads
from stripe_sf_sync.stripe.http import CaBundleSession, CountingRequestsClient, build_client
from stripe_sf_sync.stripe.lists import ListReads
from stripe_sf_sync.stripe.objects import ObjectReads
from stripe_sf_sync.stripe.pacing import (
    ENDPOINT_REQUESTS_PER_SECOND,
    LIVE_MODE_RPS,
    MIN_RPS,
    PROBE_EVERY_S,
    PROBE_STEP,
    RATE_LIMIT_SHARE,
    TEST_MODE_RPS,
    Pacer,
    default_requests_per_second,
)

__all__ = [
    "ATTACHED_REFRESH_S", "BASIL", "CUSTOMER_LIST_FROM", "ENDPOINT_REQUESTS_PER_SECOND", "LIVE_MODE_RPS",
    "MAX_ATTACHED", "MAX_ATTEMPTS", "MAX_CACHED_PRICES", "MIN_RPS", "PAGE_LIMIT", "PROBE_EVERY_S", "PROBE_STEP",
    "RATE_LIMIT_SHARE", "RETENTION_S", "RETRY_LATER_HINT", "TEST_MODE_RPS", "TYPES_PER_REQUEST", "CaBundleSession",
    "CountingRequestsClient", "Pacer", "StripeSource", "build_client", "default_requests_per_second",
]


class StripeSource:
    """Reads events and the objects they point to: the client, the reads on it, and the hydrator's caches."""

    def __init__(self, client: stripe.StripeClient, http: CountingRequestsClient | None = None, *,
                 api_version: str, requests_per_second: float = 20.0, max_attempts: int = MAX_ATTEMPTS,
                 clock: Any = time.time, sleep: Any = time.sleep,
                 endpoint_requests_per_second: float | None = None) -> None:
        self.client = PacedClient(client, http, api_version=api_version, requests_per_second=requests_per_second,
                                  max_attempts=max_attempts, sleep=sleep,
                                  endpoint_requests_per_second=endpoint_requests_per_second)
        self.events = EventReads(self.client, clock=clock)
        self.lists = ListReads(self.client)
        self.objects = ObjectReads(self.client)
        # One per run, shared by the hydrator and `customer` (reconcile): a customer read once is read once.
        self.hydration = HydrationCache(self.objects, self.lists, clock=clock)

    # --- the client ----------------------------------------------------------------------------
    def pace_as(self, other: StripeSource) -> None:
        """Share `other`'s pacers: a long-lived process (`serve`) paces every run's source as one client."""
        self.client.pace_as(other.client)

    @property
    def api_version(self) -> str:
        """The Stripe API version requests are made with (it decides the payload shapes)."""
        return self.client.api_version

    @property
    def rate_limited(self) -> int:
        """Rate-limit 429s Stripe answered this run (PacedClient.rate_limited)."""
        return self.client.rate_limited

    @property
    def calls(self) -> int:
        """HTTP requests made to Stripe, every retry included (each attempt is one request)."""
        return self.client.calls

    @property
    def last_headers(self) -> dict[str, str]:
        """The last response's headers, by lower-case name (`stripe-version`: the version Stripe answered in)."""
        return self.client.last_headers

    @property
    def _pacer(self) -> Pacer:  # what `serve`'s test checks is shared (pace_as)
        return self.client._pacer

    @property
    def _endpoint_pacers(self) -> dict[str, Pacer]:
        return self.client._endpoint_pacers

    def end_thread(self) -> None:
        """Close the calling thread's HTTP session (a backfill lister that is done)."""
        self.client.end_thread()

    # --- events --------------------------------------------------------------------------------
    def check_cursor_age(self, cursor_created: int) -> None:
        """Refuse a cursor whose event Stripe no longer lists (EventReads.check_cursor_age)."""
        self.events.check_cursor_age(cursor_created)

    def events_after(self, cursor_id: str, types: Sequence[str] = EVENT_TYPES,
                     page_limit: int = PAGE_LIMIT) -> Iterator[dict[str, Any]]:
        """Every event newer than `cursor_id`, oldest first (EventReads.events_after)."""
        return self.events.events_after(cursor_id, types, page_limit)

    def event_pages(self, since: int, until: int | None = None,
                    types: Sequence[str] = EVENT_TYPES) -> Iterator[list[dict[str, Any]]]:
        """Pages of the events created in [since, until], newest first (EventReads.event_pages)."""
        return self.events.event_pages(since, until, types)

    def oldest_event_since(self, since: int, types: Sequence[str] = EVENT_TYPES) -> tuple[str, int] | None:
        """A cursor just before `since` (EventReads.oldest_event_since)."""
        return self.events.oldest_event_since(since, types)

    def first_event_since(self, since: int, types: Sequence[str] = EVENT_TYPES) -> dict[str, Any] | None:
        """The oldest event created at or after `since` (EventReads.first_event_since)."""
        return self.events.first_event_since(since, types)

    def newest_event(self, types: Sequence[str] = EVENT_TYPES) -> tuple[str, int] | None:
        """The newest event of these types (EventReads.newest_event)."""
        return self.events.newest_event(types)

    def recent_currencies(self, types: Sequence[str] = EVENT_TYPES) -> dict[str, int]:
        """The currencies of the newest events (EventReads.recent_currencies)."""
        return self.events.recent_currencies(types)

    # --- lists ---------------------------------------------------------------------------------
    def list_pages(self, kind: str, *, since: int, until: int | None,
                   starting_after: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """Pages of one backfill list, newest first (ListReads.list_pages)."""
        return self.lists.list_pages(kind, since=since, until=until, starting_after=starting_after)

    def customer_pages(self, *, created: dict[str, int], start: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """Pages of the customer list, newest first (ListReads.customer_pages)."""
        return self.lists.customer_pages(created=created, start=start)

    def own_account(self) -> str | None:
        """The account the key (and a connected pipeline's Stripe-Account header) reaches, or None when the key may
        not read it; AccountUnreachable when Stripe refuses the header (ObjectReads.own_account)."""
        return self.objects.own_account()

    # --- hydration's reads, for callers outside the hydrator (reconcile, tests) -----------------
    def forget(self) -> None:
        """Drop what hydration keeps per batch (HydrationCache.forget)."""
        self.hydration.forget()

    def customer(self, customer_id: str) -> CachedCustomer | None:
        """The customer's metadata and name, cached per batch; None if deleted (CustomerCache.customer)."""
        return self.hydration.customers.customer(customer_id)

    def invoice_of_payment_intent(self, pi_id: str) -> str | None:
        """The invoice a PaymentIntent paid, if any (InvoiceLinks.invoice_of_payment_intent)."""
        return self.hydration.links.invoice_of_payment_intent(pi_id)

    def price_currency_options(self, price_id: str) -> dict[str, dict[str, Any]] | None:
        """A Price's amounts per currency, once per run (Catalog.price_currency_options)."""
        return self.hydration.catalog.price_currency_options(price_id)

    def failed_invoice(self, invoice_id: str) -> dict[str, Any] | None:
        """A failed invoice with its payment expanded (ObjectReads.failed_invoice)."""
        return self.objects.failed_invoice(invoice_id)
