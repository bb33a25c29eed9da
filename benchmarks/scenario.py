"""A seed-deterministic Stripe event stream in realistic proportions, and a Salesforce org seeded to match.

Objects are built with `StripeFactory` (so payloads have exactly the factory's shape), but the two emitters
that scan every stored InvoicePayment (`payment_succeeded`, `invoice_payment_failed`) are replaced by their
few constant-time steps: at 100,000 events those scans made generation quadratic.
"""

from __future__ import annotations

import gc
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stripe_sf_sandbox.salesforce_server import SalesforceOrg
from stripe_sf_sandbox.scenario import ORG_CURRENCIES
from stripe_sf_sandbox.stripe_factory import StripeFactory, link_invoice_payment
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync.model import CachedCustomer
from stripe_sf_sync.state import StateStore

DAY = 86400
WINDOW_DAYS = 25  # inside Stripe's 30-day event retention, with room for a --since at UTC midnight
WON_STAGE = "Won"

# Share of each kind of event; subscription updates split by what changed. Sums to 1.
MIX: dict[str, float] = {
    "subscription.created": 0.15,
    "subscription.updated.status": 0.22,
    "subscription.updated.plan": 0.20,
    "subscription.updated.cancel_at_period_end": 0.08,
    "subscription.deleted": 0.08,
    "invoice.payment_failed": 0.12,
    "payment_intent.succeeded": 0.15,
}
UNMATCHED_SHARE = 0.02  # customers with no Account at all: their events dead-letter
METADATA_LINKED_SHARE = 0.03  # Account named by customer metadata, without Stripe_Customer_ID__c
OPEN_OPPORTUNITY_SHARE = 0.05  # matched customers with an open Opportunity awaiting a subscription
CSM_SHARE = 0.2
EXISTING_SUBSCRIPTION_SHARE = 0.7
HISTORY_EVENTS = 5  # subscriptions older than the window: updates start on day one

# Where a status change can go from each status (Stripe's lifecycle, the common paths).
STATUS_NEXT: dict[str, tuple[str, ...]] = {
    "active": ("past_due",),
    "trialing": ("active",),
    "incomplete": ("active",),
    "past_due": ("active", "active", "unpaid"),
    "unpaid": ("active",),
}


@dataclass
class Generated:
    """What the generator made: the --since that covers it and counts the tests assert on."""

    since: int  # UTC midnight before the first event
    now: int
    events: int
    customers: int
    unmatched_customers: int
    kinds: Counter[str] = field(default_factory=Counter)
    event_types: Counter[str] = field(default_factory=Counter)
    # Customers a backfill (or earlier syncs) has already seen: (id, metadata, name, created).
    known_customers: list[tuple[str, dict[str, str], str, int]] = field(default_factory=list)


def benchmark_org(daily_api_limit: int = 100_000_000) -> SalesforceOrg:
    """The demo's awkward org (renamed won stage, required record type, CSM field) with a daily allowance
    large enough that the per-event baseline is never stopped by the API budget."""
    return SalesforceOrg(won_stage=WON_STAGE, require_record_type=True, csm_field="CSM__c",
                         daily_api_limit=daily_api_limit, currencies=ORG_CURRENCIES)


class _Builder:
    """Holds the generator's state: live subscriptions, prices and the two stand-ins."""

    def __init__(self, stripe: StripeSandbox, org: SalesforceOrg, seed: int) -> None:
        self.stripe = stripe
        self.org = org
        self.rng = random.Random(seed)
        self.f = StripeFactory(stripe, seed=seed)
        self.live: list[str] = []  # ids of subscriptions not yet deleted
        self.status: dict[str, str] = {}
        self.customer_of: dict[str, str] = {}

    def catalog(self, at: int) -> list[tuple[dict[str, Any], int]]:
        """A small price list: most customers are on USD monthly plans, some yearly, some EUR or JPY."""
        f = self.f
        basic = f.price(4900, "usd", "month", product_name="Basic", created=at)
        pro = f.price(9900, "usd", "month", product_name="Pro", created=at)
        team = f.price(250000, "usd", "year", product_name="Team", created=at)
        seat = f.price(1500, "usd", "month", product_name="Seat", created=at)
        eur = f.price(8900, "eur", "month", product_name="Pro EU", created=at)
        jpy = f.price(980000, "jpy", "year", product_name="Pro JP", created=at)
        # (price, weight): the weights set how often each plan is chosen.
        return [(basic, 30), (pro, 30), (team, 10), (seat, 15), (eur, 10), (jpy, 5)]

    def items(self, catalog: list[tuple[dict[str, Any], int]]) -> list[tuple[dict[str, Any], int]]:
        """One plan, or a base plan plus seats, in the subscription's currency."""
        prices = [p for p, _ in catalog]
        price = self.rng.choices(prices, weights=[w for _, w in catalog])[0]
        if price["unit_amount"] == 1500:
            base = prices[0] if self.rng.random() < 0.5 else prices[1]
            return [(base, 1), (price, self.rng.randint(2, 20))]
        return [(price, 1 if price["recurring"]["interval"] == "year" else self.rng.randint(1, 3))]

    def add_live(self, sub: dict[str, Any]) -> None:
        self.live.append(sub["id"])
        self.status[sub["id"]] = sub["status"]
        self.customer_of[sub["id"]] = sub["customer"]

    def pick_live(self) -> str | None:
        return self.rng.choice(self.live) if self.live else None

    def drop_live(self, sub_id: str) -> None:
        i = self.live.index(sub_id)
        self.live[i] = self.live[-1]  # swap-remove keeps the pick O(1)
        self.live.pop()


def generate(stripe: StripeSandbox, org: SalesforceOrg, *, events: int, customers: int | None = None,
             seed: int = 42, now: int) -> Generated:
    """Fill `stripe` with `events` events over `customers` customers (default events/10), seed `org` to match.

    Everything but `now` comes from `seed`, so two calls with the same arguments give identical stand-ins.
    """
    # Millions of small dicts: the cyclic GC's full scans made generation quadratic, and nothing here cycles.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _generate(stripe, org, events=events, customers=customers, seed=seed, now=now)
    finally:
        if was_enabled:
            gc.enable()


def _generate(stripe: StripeSandbox, org: SalesforceOrg, *, events: int, customers: int | None, seed: int,
              now: int) -> Generated:
    m = max(1, customers if customers is not None else events // 10)
    b = _Builder(stripe, org, seed)
    rng, f = b.rng, b.f
    start = now - WINDOW_DAYS * DAY
    before = start - 40 * DAY
    catalog = b.catalog(before - 30 * DAY)
    owners = [org.user_id("Ava Owner"), org.user_id("Ben Owner")]
    csm = org.user_id("Cara CSM")
    new_business = org.record_type_id("New_Business")
    since = (start - DAY) // DAY * DAY  # UTC midnight: `--since DATE` means exactly this
    out = Generated(since=since, now=now, events=events, customers=m, unmatched_customers=0)

    # Customers with an older subscription exist before the window; the others sign up in it, each just
    # before its first event (a customer.created event, counted as one of the run's events).
    customer_ids: list[str | None] = []  # None: not signed up yet
    pending: dict[int, tuple[str, float, dict[str, Any]]] = {}
    for i in range(m):
        name = f"Customer {i:06d}"
        roll = rng.random()
        extra: dict[str, Any] = {"CSM__c": csm} if rng.random() < CSM_SHARE else {}
        record = {"Name": name, "OwnerId": owners[i % 2], **extra}
        if rng.random() >= EXISTING_SUBSCRIPTION_SHARE:
            pending[i] = (name, roll, record)
            customer_ids.append(None)
            continue
        cus, account = _customer(b, out, i, name, roll, record, before, new_business)
        customer_ids.append(str(cus["id"]))
        out.known_customers.append((str(cus["id"]), dict(cus["metadata"]), name, before))
        status = "past_due" if rng.random() < 0.05 else "active"
        sub = f.subscription(cus["id"], b.items(catalog), status=status, created=before)
        b.add_live(sub)
        if account is not None:
            # As after earlier syncs (or a backfill): the won Opportunity and the status are already there.
            org.insert("Opportunity", {"Name": f"{name} - subscription", "AccountId": account,
                                       "StageName": WON_STAGE, "CloseDate": _date(before),
                                       "RecordTypeId": new_business, "Stripe_Customer_ID__c": cus["id"],
                                       "Stripe_Subscription_ID__c": sub["id"]})
            org.update("Account", account, {"Subscription_Status__c": status})

    # An account with history: a few events just before --since, so the first run finds its starting
    # point with one call (a brand-new account would make it walk every page once more).
    for k in range(min(HISTORY_EVENTS, len(b.live))):
        f.subscription_updated(b.live[k], {"metadata": {"history": str(k)}}, out.since - 3600 + k)

    kinds = list(MIX)
    weights = [MIX[k] for k in kinds]
    step = WINDOW_DAYS * DAY / max(events, 1)
    for n in range(events):
        at = start + int(n * step)  # strictly chronological: every object sees its events in order
        kind = rng.choices(kinds, weights=weights)[0]
        sub_id = b.pick_live()
        if kind != "subscription.created" and kind != "payment_intent.succeeded" and sub_id is None:
            kind = "subscription.created"
        if kind in ("subscription.created", "payment_intent.succeeded"):
            i = rng.randrange(m)
            if customer_ids[i] is None:  # its first event: the sign-up is this step's event
                name, roll, record = pending.pop(i)
                cus, _ = _customer(b, out, i, name, roll, record, at, new_business)
                customer_ids[i] = str(cus["id"])
                ev = f.emit("customer.created", cus, at)
                out.kinds["customer.created"] += 1
                out.event_types[ev["type"]] += 1
                continue
            cus_id = customer_ids[i]
            assert cus_id is not None
        if kind == "subscription.created":
            status = rng.choices(["active", "trialing", "incomplete"], weights=[70, 20, 10])[0]
            sub = f.subscription(cus_id, b.items(catalog), status=status, created=at)
            b.add_live(sub)
            ev = f.subscription_created(sub, at)
        elif kind == "payment_intent.succeeded":
            amount = rng.choice([2500, 9900, 49900, 150000])
            pi = f.payment_intent(cus_id, amount, "usd", status="succeeded", created=at - 30,
                                  description="One-time purchase")
            ev = f.emit("payment_intent.succeeded", pi, at)
        else:
            assert sub_id is not None
            ev = _subscription_event(b, kind, sub_id, catalog, at)
        out.kinds[kind] += 1
        out.event_types[ev["type"]] += 1
    return out


def _customer(b: _Builder, out: Generated, i: int, name: str, roll: float, record: dict[str, Any], created: int,
              new_business: str) -> tuple[dict[str, Any], str | None]:
    """A customer and its Account as the scenario's shares say: none, linked by metadata, or by
    Stripe_Customer_ID__c (some with an open Opportunity waiting for a subscription)."""
    f, org = b.f, b.org
    email = f"billing{i}@example.com"
    if roll < UNMATCHED_SHARE:
        out.unmatched_customers += 1
        return f.customer(name, email, created=created), None
    if roll < UNMATCHED_SHARE + METADATA_LINKED_SHARE:
        account = org.insert("Account", record)
        return f.customer(name, email, metadata={"salesforce_account_id": account}, created=created), account
    cus = f.customer(name, email, created=created)
    account = org.insert("Account", {**record, "Stripe_Customer_ID__c": cus["id"]})
    if b.rng.random() < OPEN_OPPORTUNITY_SHARE:
        org.insert("Opportunity", {"Name": f"{name} - new deal", "AccountId": account, "StageName": "Negotiation",
                                   "CloseDate": "2026-12-31", "RecordTypeId": new_business,
                                   "Stripe_Customer_ID__c": cus["id"]})
    return cus, account


def seed_state(state_path: Path, gen: Generated) -> int:
    """Leave the state file as a backfill would: the customers with an older subscription are known
    (backfill lists subscriptions with their customers expanded). Returns how many were seeded."""
    with StateStore.open(state_path) as state:
        state.remember_customers(CachedCustomer(cid, md, name, False, at) for cid, md, name, at in gen.known_customers)
    return len(gen.known_customers)


def _date(ts: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _subscription_event(b: _Builder, kind: str, sub_id: str, catalog: list[tuple[dict[str, Any], int]],
                        at: int) -> dict[str, Any]:
    f, rng = b.f, b.rng
    if kind == "subscription.updated.status":
        new = rng.choice(STATUS_NEXT.get(b.status[sub_id], ("active",)))
        b.status[sub_id] = new
        return f.subscription_updated(sub_id, {"status": new}, at)
    if kind == "subscription.updated.plan":
        # Stripe keeps a subscription's currency: a plan in another currency becomes the catalog's first plan
        # in this one (no extra random draw, so the rest of the scenario is unchanged).
        current = f.sandbox.get(sub_id) if f.sandbox else None
        currency = (current or {}).get("currency")
        items = b.items(catalog)
        if any(p["currency"] != currency for p, _ in items):
            plan = next(p for p, _ in catalog if p["currency"] == currency)
            items = [(plan, items[0][1])]
        return f.subscription_updated(sub_id, {"items": items}, at)
    if kind == "subscription.updated.cancel_at_period_end":
        current = f.sandbox.get(sub_id) if f.sandbox else None
        scheduled = bool(current and current.get("cancel_at_period_end"))
        return f.subscription_updated(sub_id, {"cancel_at_period_end": not scheduled}, at)
    if kind == "subscription.deleted":
        b.drop_live(sub_id)
        return f.subscription_deleted(sub_id, at)
    return _invoice_failed(b, sub_id, at)


def _invoice_failed(b: _Builder, sub_id: str, at: int) -> dict[str, Any]:
    """`StripeFactory.invoice_payment_failed` for a fresh renewal invoice, minus its store-wide scan."""
    f, rng = b.f, b.rng
    sub = f.sandbox.get(sub_id) if f.sandbox else None
    assert sub is not None
    cus_id = b.customer_of[sub_id]
    items = sub["items"]["data"]
    amount = sum(int(i["price"]["unit_amount"]) * int(i["quantity"]) for i in items)
    currency = str(sub["currency"])
    decline = rng.choice(["insufficient_funds", "insufficient_funds", "generic_decline", "do_not_honor"])
    inv = f.invoice(sub, cus_id, amount, currency, status="open", attempt_count=1, created=at - 60)
    pi = f.payment_intent(cus_id, amount, currency, status="requires_payment_method", decline_code=decline,
                          created=at, description="Subscription update")
    b.stripe.put(link_invoice_payment(inv["id"], pi["id"], amount, currency, paid=False, created=at,
                                      inpay_id=f.new_id("inpay")))
    inv.update(attempted=True, attempt_count=1, next_payment_attempt=at + 3 * DAY)
    return f.emit("invoice.payment_failed", inv, at, automatic=True)


# Cold start (issue 14): where the Account of a subscription is named.
COLD_OPPORTUNITY = "opportunity"  # the subscription's own metadata names its (open) Opportunity
COLD_CUSTOMER_METADATA = "customer-metadata"  # only the customer's metadata names its Account
COLD_VARIANTS = (COLD_OPPORTUNITY, COLD_CUSTOMER_METADATA)


def generate_cold(stripe: StripeSandbox, org: SalesforceOrg, *, events: int, variant: str, seed: int = 42,
                  now: int, extra_customers: int = 0) -> Generated:
    """A first `sync --since` without backfill: `events` existing customers (created 40 days before the window,
    so no customer event is in reach, none known to state), one `customer.subscription.created` (active) each
    in the window, in random order. `opportunity`: the subscription's metadata names the customer's open
    Opportunity, and its Account has the customer's Stripe_Customer_ID__c; `customer-metadata`: only the
    customer's metadata names its Account.
    `extra_customers` more customers exist without any event (a bigger account to list)."""
    if variant not in COLD_VARIANTS:
        raise ValueError(f"unknown cold-start variant {variant!r}: use one of {', '.join(COLD_VARIANTS)}")
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _generate_cold(stripe, org, events=events, variant=variant, seed=seed, now=now,
                              extra_customers=extra_customers)
    finally:
        if was_enabled:
            gc.enable()


def _generate_cold(stripe: StripeSandbox, org: SalesforceOrg, *, events: int, variant: str, seed: int, now: int,
                   extra_customers: int) -> Generated:
    b = _Builder(stripe, org, seed)
    f = b.f
    start = now - WINDOW_DAYS * DAY
    before = start - 40 * DAY
    catalog = b.catalog(before - 30 * DAY)
    owners = [org.user_id("Ava Owner"), org.user_id("Ben Owner")]
    new_business = org.record_type_id("New_Business")
    out = Generated(since=(start - DAY) // DAY * DAY, now=now, events=events, customers=events + extra_customers,
                    unmatched_customers=0)
    named: list[tuple[str, dict[str, str]]] = []
    for i in range(events):
        name, email, record = f"Customer {i:06d}", f"billing{i}@example.com", {"OwnerId": owners[i % 2]}
        sub_meta: dict[str, str] = {}
        if variant == COLD_OPPORTUNITY:
            cus = f.customer(name, email, created=before + i)
            account = org.insert("Account", {"Name": name, **record, "Stripe_Customer_ID__c": cus["id"]})
            sub_meta["salesforce_opportunity_id"] = org.insert("Opportunity", {
                "Name": f"{name} - new deal", "AccountId": account, "StageName": "Negotiation",
                "CloseDate": "2026-12-31", "RecordTypeId": new_business})
        else:
            account = org.insert("Account", {"Name": name, **record})
            cus = f.customer(name, email, metadata={"salesforce_account_id": account}, created=before + i)
        named.append((str(cus["id"]), sub_meta))
    for k in range(extra_customers):
        f.customer(f"Quiet {k:06d}", f"quiet{k}@example.com", created=before + events + k)
    # An account with history (see _generate): a few events just before --since, of a customer of its own.
    history = f.customer("History", "history@example.com", created=before)
    for k in range(HISTORY_EVENTS):
        f.emit("customer.updated", history, out.since - 3600 + k, previous_attributes={"name": str(k)})
    b.rng.shuffle(named)
    step = WINDOW_DAYS * DAY / max(events, 1)
    for n, (cus_id, sub_meta) in enumerate(named):
        at = start + int(n * step)
        sub = f.subscription(cus_id, b.items(catalog), status="active", created=at, metadata=sub_meta)
        ev = f.subscription_created(sub, at)
        out.kinds["subscription.created"] += 1
        out.event_types[ev["type"]] += 1
    return out
