"""Reads of single objects hydration needs, each as Stripe holds it now, and the short lists that complete
one (a subscription's items, an invoice's credit notes, a payment's refunds and disputes). Nothing is kept
here: the hydrator's caches (caches.py) decide what is read once per batch or per run."""

from __future__ import annotations

import re
from typing import Any

import stripe

from stripe_sf_sync.stripe.client import BASIL, PacedClient, path_id

# Id prefix -> the path its object is read at (the objects whose events have rules).
_CURRENT_PATHS = {"sub": "/v1/subscriptions", "in": "/v1/invoices", "pi": "/v1/payment_intents"}


class AccountUnreachable(Exception):
    """Stripe refused the Stripe-Account header: the account it names is not connected to the key's platform, or
    does not exist (a 403 `account_invalid`: "The provided key '…' does not have access to account '…' (or that
    account does not exist). Application access may have been revoked.")."""


class ObjectReads:
    """Reads objects through `client`, one request each unless a list has more pages."""

    def __init__(self, client: PacedClient) -> None:
        self._client = client

    def customer(self, customer_id: str) -> dict[str, Any] | None:
        """A customer as Stripe holds it; None if it is gone (a deleted one reads as `{deleted: true}`)."""
        return self._client.get_or_none("reading a customer", f"/v1/customers/{path_id(customer_id)}")

    def own_account(self) -> str | None:
        """The id of the account the key belongs to (Stripe API reference, "Retrieve account": GET /v1/account
        with no id), or None when a restricted key may not read it."""
        try:
            data = self._client.get("reading the key's own account", "/v1/account", raw_refusal=True)
        except stripe.PermissionError as exc:
            if _error_code(exc) == "account_invalid":  # the header's account, not the key's permissions
                raise AccountUnreachable(str(exc.user_message or exc)) from None
            return None
        except stripe.InvalidRequestError:
            return None
        account = data.get("id")
        return account if isinstance(account, str) and account.startswith("acct_") else None

    def invoice_of_payment_intent(self, pi_id: str) -> str | None:
        """The invoice a PaymentIntent paid, if any (current API versions no longer embed it;
        /v1/invoice_payments filtered by `payment[payment_intent]` answers it; stripe/_payment_intent.py)."""
        params = {"limit": 1, "payment": {"type": "payment_intent", "payment_intent": pi_id}}
        data = self._client.first_page("invoice payments", "/v1/invoice_payments", params)
        inv = data[0].get("invoice") if data else None
        return inv if isinstance(inv, str) else None

    def current_object(self, object_id: str) -> dict[str, Any] | None:
        """A subscription, invoice or PaymentIntent as Stripe holds it now (None when it is gone, or of
        another kind)."""
        path = _CURRENT_PATHS.get(object_id.split("_", 1)[0])
        if path is None:
            return None
        return self._client.get_or_none("reading an object's current state", f"{path}/{path_id(object_id)}")

    def subscription_items(self, subscription_id: str) -> list[dict[str, Any]]:
        """Every item of a subscription, read to the end of `/v1/subscription_items?subscription=…` (Stripe API
        reference: List all subscription items; `limit` up to 100). A subscription's embedded `items` list is a
        first page: with `has_more` the rest is only here."""
        items: list[dict[str, Any]] = []
        for page in self._client.walk("subscription items", "/v1/subscription_items",
                                      {"subscription": path_id(subscription_id), "limit": 100}):
            items.extend(page)
        return items

    def subscription_discounts(self, subscription_id: str) -> list[dict[str, Any]]:
        """The Discount objects of a subscription and of its items, as Stripe holds them now. A Discount cannot
        be retrieved by id (pkg `_discount.py`): the subscription is re-read with them expanded."""
        obj = self._client.get_or_none("reading a subscription's discounts",
                                       f"/v1/subscriptions/{path_id(subscription_id)}",
                                       {"expand": ["discounts", "items.data.discounts"]})
        if obj is None:
            return []
        items = (obj.get("items") or {}).get("data") or []
        refs = [*(obj.get("discounts") or []), *(d for i in items for d in (i.get("discounts") or []))]
        return [d for d in refs if isinstance(d, dict)]

    def first_invoice(self, subscription_id: str, by: int) -> dict[str, Any] | None:
        """The subscription's newest invoice created at or before `by` (its start, or its trial's end: the
        first paid invoice), or None (Stripe API reference: List invoices, newest first)."""
        params: dict[str, Any] = {"subscription": path_id(subscription_id), "created": {"lte": by}, "limit": 1}
        # What paid it: pre-basil its Charge (whether refunds or disputes changed what it kept); from basil its
        # `payments` (includable), whose PaymentIntent is matched to the run's refunds and disputes.
        params["expand"] = ["data.charge"] if self._client.api_version < BASIL else ["data.payments"]
        for page in self._client.walk("a subscription's first invoice", "/v1/invoices", params):
            return page[0] if page else None
        return None

    def credit_notes(self, invoice_id: str) -> list[dict[str, Any]]:
        """An invoice's credit notes, every status (/v1/credit_notes?invoice=…)."""
        notes: list[dict[str, Any]] = []
        params = {"invoice": path_id(invoice_id), "limit": 100}
        for page in self._client.walk("credit notes", "/v1/credit_notes", params):
            notes.extend(page)
        return notes

    def customer_subscriptions(self, customer_id: str) -> list[dict[str, Any]]:
        """A customer's subscriptions that are not canceled (the list's default: Stripe API reference, List
        subscriptions `status`), with their Discounts expanded (depth 4, Stripe's maximum)."""
        subs: list[dict[str, Any]] = []
        for page in self._client.walk("a customer's subscriptions", "/v1/subscriptions", {
                "customer": path_id(customer_id), "limit": 100,
                "expand": ["data.discounts", "data.items.data.discounts"]}):
            subs.extend(page)
        return subs

    def coupon(self, coupon_id: str) -> dict[str, Any] | None:
        """A Coupon with the products it is limited to (`expand[]=applies_to`, includable only)."""
        # Coupon ids are chosen by the merchant ("SUMMER-20"): hyphens too, unlike object ids.
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,200}", coupon_id):
            return None
        return self._client.get_or_none("reading a coupon", f"/v1/coupons/{coupon_id}", {"expand": ["applies_to"]})

    def price(self, price_id: str, *, product: bool = False) -> dict[str, Any] | None:
        """A Price with its `tiers` and `currency_options` (both includable only, pkg `_price.py`), and with
        `product`, its Product expanded in the same call (`product: ExpandableField["Product"]`: "The ID of the
        product this price is associated with", stripe-python `_price.py`)."""
        expand = ["tiers", "currency_options", *(["product"] if product else [])]
        return self._client.get_or_none("reading a price", f"/v1/prices/{path_id(price_id)}", {"expand": expand})

    def failed_invoice(self, invoice_id: str) -> dict[str, Any] | None:
        """The invoice with its PaymentIntent/Charge expanded, to read the failure code
        (an Invoice itself has no `last_payment_error`; stripe/_invoice.py)."""
        if self._client.api_version >= BASIL:
            # Only the PaymentIntent is expanded: a payment of type "charge" is read separately below.
            expand = ["payments.data.payment.payment_intent"]
        else:
            expand = ["payment_intent", "charge"]
        invoice = self._client.get_or_none("reading a failed invoice", f"/v1/invoices/{path_id(invoice_id)}",
                                           {"expand": expand})
        if invoice is None:
            return None
        payments = invoice.get("payments")
        for p in (payments.get("data") if isinstance(payments, dict) else None) or []:
            payment = p.get("payment") if isinstance(p, dict) else None
            if isinstance(payment, dict) and payment.get("type") == "charge" and isinstance(payment.get("charge"), str):
                try:
                    payment["charge"] = self._client.get("reading a failed charge",
                                                         f"/v1/charges/{path_id(payment['charge'])}")
                except stripe.InvalidRequestError:
                    pass  # the invoice still names the failure's amount and attempt; the code stays unknown
        return invoice

    def payment_collected(self, pi_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """A PaymentIntent as it is now, with its latest Charge and that Charge's refunds expanded (one read),
        and its disputes when the Charge is `disputed`: what was received, refunded and lost. A refund never
        lowers `amount_received`; a refund's `status` says whether it kept anything back (api-facts "Refunds";
        stripe/_payment_intent.py, _charge.py, _refund.py). Since 2022-11-15 `Charge.refunds` comes only when
        expanded; a first page (`has_more`) is read to its end from /v1/refunds?charge=…"""
        pi = self._client.get_or_none("reading a payment's refunds and disputes",
                                      f"/v1/payment_intents/{path_id(pi_id)}", {"expand": ["latest_charge.refunds"]})
        charge = pi.get("latest_charge") if pi else None
        if not isinstance(charge, dict):
            return pi, []
        refunds = charge.get("refunds")
        if isinstance(refunds, dict) and refunds.get("has_more"):
            every: list[dict[str, Any]] = []
            params = {"charge": path_id(str(charge["id"])), "limit": 100}
            for page in self._client.walk("refunds", "/v1/refunds", params):
                every.extend(page)
            charge["refunds"] = {"object": "list", "data": every, "has_more": False}
        disputes: list[dict[str, Any]] = []
        if charge.get("disputed"):  # api-facts "Disputes": List all disputes filters by payment_intent
            params = {"payment_intent": path_id(pi_id), "limit": 100}
            for page in self._client.walk("disputes", "/v1/disputes", params):
                disputes.extend(page)
        return pi, disputes

    def invoice_credit_notes(self, invoice_id: str) -> tuple[dict[str, Any] | None, str | None, list[dict[str, Any]]]:
        """An invoice as it is now, the PaymentIntent that paid it (pre-basil: `payment_intent`; from basil:
        its `payments`, expanded), and its credit notes (/v1/credit_notes?invoice=…, every status: a void one
        says so). Two reads: what a subscription's first invoice kept (issue 22 §1, §2)."""
        expand = ["payments"] if self._client.api_version >= BASIL else []
        invoice = self._client.get_or_none("reading an invoice's credit notes", f"/v1/invoices/{path_id(invoice_id)}",
                                           {"expand": expand} if expand else None)
        if invoice is None:
            return None, None, []
        pi = invoice.get("payment_intent")
        payments = listed if isinstance(listed := invoice.get("payments"), dict) else {}
        for p in payments.get("data") or []:
            payment = p.get("payment") if isinstance(p, dict) and p.get("status") == "paid" else None
            if isinstance(payment, dict) and payment.get("payment_intent"):
                pi = payment["payment_intent"]
        pi_id = pi.get("id") if isinstance(pi, dict) else pi
        notes: list[dict[str, Any]] = []
        if invoice.get("billing_reason") == "subscription_create":
            params = {"invoice": path_id(invoice_id), "limit": 100}
            for page in self._client.walk("credit notes", "/v1/credit_notes", params):
                notes.extend(page)
        return invoice, pi_id if isinstance(pi_id, str) else None, notes


def _error_code(exc: stripe.StripeError) -> str | None:
    """The `code` of Stripe's error body (the SDK leaves `code` unset on a PermissionError)."""
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None
