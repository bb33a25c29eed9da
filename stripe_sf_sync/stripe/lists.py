"""List reads of objects, on the client's pager: what backfill and its slices list (subscriptions, payments,
failed invoices, each with its customer expanded), the customer list (reconcile, hydration's customer
prefetch), the invoice payments list (hydration's links between payments and invoices), and the refunds and
disputes of a run's window (what backfill and reconcile net a first invoice by, from basil on)."""

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
            # From basil on an invoice names no Charge: its `payments` (includable, three levels: Stripe docs,
            # Expanding responses, at most four) name its PaymentIntent, matched to the run's refunds and
            # disputes (payment_adjustments).
            basil = self._client.api_version >= BASIL
            latest = "data.latest_invoice.payments" if basil else "data.latest_invoice.charge"
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

    def payment_adjustments(self, *, since: int) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
        """The refunds and disputes created since `since`, by the PaymentIntent they belong to: two lists read to
        their end, one empty page each when there are none (Stripe API reference: List all refunds, List all
        disputes; both filter by `created`, neither by status: `first_invoice_net` keeps succeeded refunds and
        lost disputes). A refund or dispute of an invoice is never older than the invoice, so a window that
        holds the run's subscriptions holds what changed their first invoices."""
        found: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        for slot, path in ((0, "/v1/refunds"), (1, "/v1/disputes")):
            params = {"limit": PAGE_LIMIT, "created": {"gte": since}}
            for page in self._client.walk(path.rsplit("/", 1)[1], path, params):
                for obj in page:
                    pi = obj.get("payment_intent")
                    pi_id = pi.get("id") if isinstance(pi, dict) else pi
                    if isinstance(pi_id, str):
                        found.setdefault(pi_id, ([], []))[slot].append(obj)
        return found
