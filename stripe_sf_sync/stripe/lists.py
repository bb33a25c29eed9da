"""List reads of objects, on the client's pager: what backfill and its slices list (subscriptions, payments,
failed invoices, each with its customer expanded), the customer list (reconcile, hydration's customer
prefetch) and the invoice payments list (hydration's links between payments and invoices)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from stripe_sf_sync.stripe.client import BASIL, PAGE_LIMIT, PacedClient


class ListReads:
    """Pages of Stripe's object lists, newest first, through `client`."""

    def __init__(self, client: PacedClient) -> None:
        self._client = client

    def list_pages(self, kind: str, *, since: int, until: int | None,
                   starting_after: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """Pages of one list endpoint, newest first, each a list of raw objects with the customer
        expanded (`expand[]=data.customer` saves a call per object; Stripe API reference: Expanding
        responses)."""
        created: dict[str, int] = {"gte": since}
        if until is not None:
            created["lt"] = until
        params: dict[str, Any] = {"limit": PAGE_LIMIT, "created": created, "expand": ["data.customer"]}
        if kind == "subscriptions":
            path = "/v1/subscriptions"
            # Without it canceled subscriptions are left out (Stripe API reference: List subscriptions).
            params["status"] = "all"
            # Its latest invoice: while it is the first (`subscription_create`), whether credit notes or
            # (pre-basil, its Charge) refunds and disputes changed what it kept (StripeHydrator._first_period), with
            # no read for the many it did not.
            basil = self._client.api_version >= BASIL
            latest = "data.latest_invoice" if basil else "data.latest_invoice.charge"
            params["expand"] = ["data.customer", latest]
            if basil:  # their Discounts for MRR (mrr.py), instead of a read each;
                # depth 4 is Stripe's maximum (api-facts "Discounts": ids from basil on)
                params["expand"] = ["data.customer", latest, "data.discounts", "data.items.data.discounts"]
        elif kind == "payment_intents":
            path = "/v1/payment_intents"  # no status filter exists: filtered by the caller
            # What each payment kept: its Charge's refunds (issue 22 §1), and whether it is disputed (read apart,
            # for those few: StripeHydrator._with_collected). Four levels deep at most (Stripe docs, Expanding
            # responses).
            params["expand"] = ["data.customer", "data.latest_charge.refunds"]
        elif kind == "invoices":
            path = "/v1/invoices"
            params["status"] = "open"  # unpaid; the caller keeps those with a failed attempt
        else:
            raise ValueError(f"unknown backfill object type {kind!r}")
        yield from self._client.walk(kind, path, params, start=starting_after,
                                     hint="Retry later (a backfill with --resume); if it persists, report it "
                                          "with --debug output.")

    def customer_pages(self, *, created: dict[str, int], start: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """Pages of the customer list, newest first, 100 a call, from the one just older than `start`. Stripe never
        lists a deleted customer (Stripe API reference: List all customers)."""
        params = {"limit": PAGE_LIMIT, "created": created}
        return self._client.walk("customers", "/v1/customers", params, start=start)

    def invoice_payment_pages(self, params: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        """Pages of `/v1/invoice_payments` filtered by `params` (Stripe API reference: List all payments for an
        invoice; the `created` filter since stripe-python 14)."""
        return self._client.walk("invoice payments", "/v1/invoice_payments", params)
