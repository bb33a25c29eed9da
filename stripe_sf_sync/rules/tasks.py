"""The rules whose write is only a Task: a failed invoice payment, and a status transition's log."""

from __future__ import annotations

from stripe_sf_sync import money
from stripe_sf_sync.model import InvoiceFailureChange
from stripe_sf_sync.rules.common import (
    _account_ref,
    _contact_id,
    _dashboard,
    _instant,
    _metadata_ids,
    event_date,
    next_business_day,
)
from stripe_sf_sync.rules.intents import (
    AccountStatusIntent,
    Plan,
    RuleContext,
    TaskIntent,
    rule_entry,
)

FAILED_PAYMENT_SUBJECT = "Payment Failed - Immediate Action Required"


def failed_payment_description(ctx: RuleContext, change: InvoiceFailureChange) -> str:
    """The Task description for a failed invoice payment."""
    meta = change.meta
    retry = (event_date(change.next_payment_attempt).isoformat()
             if change.next_payment_attempt else "none scheduled")
    lines = [
        "Stripe invoice payment failed.",
        f"Amount: {money.format_amount(change.amount_due, change.currency)}",
        f"Failure code: {change.failure_code or 'unknown'}",
        f"Attempt count: {change.attempt_count}",
        f"Next retry: {retry}",
        f"Subscription: {change.subscription_id or 'none'}",
        f"Invoice: {_dashboard(ctx, meta.livemode, 'invoices', change.invoice_id)}",
        f"Customer: {_dashboard(ctx, meta.livemode, 'customers', change.customer_id)}",
        "Found by stripe-sf backfill (still unpaid)." if meta.backfill else f"Stripe event: {meta.event_id}",
    ]
    return "\n".join(lines)


def plan_invoice_failure(ctx: RuleContext, change: InvoiceFailureChange) -> Plan:
    """invoice.payment_failed -> a high-priority Task for the Account owner."""
    meta = change.meta
    _, acct_id = _metadata_ids(change.metadata, change.customer_metadata)
    due = next_business_day(event_date(meta.created)).isoformat()
    plan = Plan()
    who = _contact_id(change.metadata, change.customer_metadata, plan)
    plan.intents.append(TaskIntent(
        meta.event_id, "payment-failed", _account_ref(change, acct_id), "owner",
        FAILED_PAYMENT_SUBJECT, failed_payment_description(ctx, change), "High", "Not Started", due,
        key_base=f"evt_backfill_{change.invoice_id}" if meta.backfill else None, who_id=who,
        about=f"{change.invoice_id}#attempt-{change.attempt_count}"))
    return plan


def transition_task(intent: AccountStatusIntent, old: str) -> TaskIntent:
    """The completed Task that logs a status transition 'old → new'."""
    return TaskIntent(
        intent.event_id, "status", intent.account, "owner",
        f"Subscription status: {old} → {intent.status}",
        f"Stripe subscription {intent.subscription_id} changed from {old} to {intent.status}.\n"
        f"Stripe event: {intent.event_id}",
        "Normal", "Completed", intent.activity_date, who_id=intent.who_id,
        # The new status and when (two Event objects of one change share their time); not the old status: a
        # deleted subscription's comes from the Account, after the lookup.
        about=f"{intent.subscription_id}#status-{intent.status}@{_instant(intent.changed_at, intent.activity_date)}")


# The change types this module plans, and their rules (merged into rules.table.RULES).
RULE_ENTRIES = (
    rule_entry(InvoiceFailureChange, plan_invoice_failure),
)
