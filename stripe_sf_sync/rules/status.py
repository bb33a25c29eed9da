"""Which of a customer's subscriptions decides its Account's subscription status: the rule, once.

Of a customer's subscriptions, a running one decides over an ended one, and the newest over older ones. Events
apply it through the order guard (the newest event of each subscription); backfill and reconcile, which read
every subscription's current state at once, rank them with `status_rank`.
"""

from __future__ import annotations

from typing import Any

# (customer, running?, created) of a subscription: see `status_rank`.
Rank = tuple[str, int, int]

# Statuses of a subscription that is still running: it decides the Account's status over ended ones.
LIVE = frozenset({"active", "trialing", "past_due", "unpaid", "paused", "incomplete"})


def status_rank(sub: dict[str, Any]) -> Rank | None:
    """(customer, live?, created) of a subscription: of a customer's subscriptions, a running one decides the
    Account status over an ended one, and the newest over older ones. None without a customer."""
    cust = sub.get("customer")
    cust_id = cust.get("id") if isinstance(cust, dict) else cust
    if not isinstance(cust_id, str):
        return None
    return cust_id, 1 if sub.get("status") in LIVE else 0, int(sub.get("created") or 0)


def status_key(customer_id: str) -> str:
    """The object-versions key of "which subscription decides this customer's Account status" (never a Stripe
    id: those have no '#')."""
    return f"{customer_id}#backfill-status"
