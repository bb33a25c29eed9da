"""A payment and what it kept (refunds, disputes, credit notes): the Opportunity's Amount, and their Tasks."""

from __future__ import annotations

from typing import Any

from stripe_sf_sync import money
from stripe_sf_sync.model import (
    COLLECTED_EVENT_TYPES,
    OPEN_DISPUTE_STATUSES,
    CollectedChange,
    CreditNoteChange,
    Dispute,
    FirstInvoiceNet,
    PaymentChange,
)
from stripe_sf_sync.rules.common import (
    _account_ref,
    _dashboard,
    _metadata_ids,
    event_date,
    next_business_day,
)
from stripe_sf_sync.rules.intents import (
    AccountRef,
    Intent,
    OpportunityIntent,
    Plan,
    RuleContext,
    TaskIntent,
    rule_entry,
)


def plan_payment(ctx: RuleContext, change: PaymentChange) -> Plan:
    """payment_intent.succeeded for a one-time payment, and every refund or dispute of a payment, from the
    payment's current state: `Amount` is what Stripe kept (received, less succeeded refunds and lost disputes),
    so a replay, a webhook and a backfill give one figure in any order (issue 22 §1)."""
    if not change.invoice_known:
        raise ValueError("payment_intent.succeeded must be hydrated with its invoice link before planning")
    if change.invoice_id:
        return _plan_invoice_payment(ctx, change)
    f = ctx.fields
    meta = change.meta
    opp_id, acct_id = _metadata_ids(change.metadata, change.customer_metadata)
    account = _account_ref(change, acct_id)
    closed = meta.object_created if meta.backfill and meta.object_created else meta.created
    from_event = meta.event_type in COLLECTED_EVENT_TYPES
    if from_event:
        closed = change.paid_at or meta.created
    won = {"StageName": ctx.won_stage, "CloseDate": event_date(closed).isoformat(),
           f.payment_intent_id: change.payment_intent_id}
    if change.customer_id:
        won[f.customer_id] = change.customer_id
    fields: dict[str, Any] = {"Amount": change.net}
    if f.opportunity_refunded and (change.adjusted or from_event or change.refunded):
        fields[f.opportunity_refunded] = change.refunded
    forced: frozenset[str] = frozenset()
    if ctx.refunded_stage and change.fully_refunded:
        fields["StageName"] = ctx.refunded_stage
    elif ctx.refunded_stage and from_event:
        fields["StageName"] = ctx.won_stage  # a refund that failed, or a dispute won: collected again
    if "StageName" in fields:
        forced = frozenset({"StageName"})  # salesforce.refunded_stage: the stage follows the refunds
    label = change.customer_name or change.customer_id or "Stripe"
    name = f"{label} - Payment {change.payment_intent_id}"
    # A refund or dispute event leaves an existing Opportunity's stage and CloseDate as they are.
    plan = Plan([OpportunityIntent(
        meta.event_id, "payment_intent", change.payment_intent_id, opp_id, False, account,
        fields if from_event else {**won, **fields}, name, may_create=True, currency=change.currency,
        create_only=won if from_event else {}, wins=not from_event, forced=forced)])
    if change.fully_refunded and not meta.backfill:
        plan.intents.append(_refund_task(ctx, change, account, "Payment fully refunded",
                                         f"{change.charge_id or change.payment_intent_id}#refunded"))
    plan.intents.extend(_dispute_tasks(ctx, change, account))
    return plan


def _plan_invoice_payment(ctx: RuleContext, change: PaymentChange) -> Plan:
    """A subscription invoice's payment: its subscription's events set the Opportunity and MRR; a refund leaves
    MRR alone and raises a Task naming the invoice and the amount; a dispute raises its Task."""
    meta = change.meta
    _, acct_id = _metadata_ids(change.metadata, change.customer_metadata)
    account = _account_ref(change, acct_id)
    plan = Plan(list[Intent](_dispute_tasks(ctx, change, account)))
    if change.first_invoice is not None:  # the first period: the subscription's Amount is netted instead
        plan.intents.insert(0, _first_invoice_intent(change.meta.event_id, change.first_invoice, account))
    elif change.refunded and meta.event_type in COLLECTED_EVENT_TYPES:
        # Keyed by the refunded total: a second partial refund is a new fact, a replay of this one is not.
        plan.intents.append(_refund_task(
            ctx, change, account, f"Invoice {change.invoice_id} refunded",
            f"{change.charge_id or change.payment_intent_id}#refunded-{change.refunded}"))
    if not plan.intents:
        plan.ignored = f"payment of invoice {change.invoice_id}: handled through its subscription"
    return plan


def _first_invoice_intent(event_id: str, net: FirstInvoiceNet, account: AccountRef) -> OpportunityIntent:
    """The subscription Opportunity's `Amount` (its first period) as its first invoice kept it; MRR and ARR are
    never touched (issue 22 §1, §2). Only an Opportunity that exists is updated."""
    return OpportunityIntent(event_id, "subscription", net.subscription_id, None, False, account,
                             {"Amount": net.amount}, net.subscription_id, may_create=False, currency=net.currency)


def plan_credit_note(ctx: RuleContext, change: CreditNoteChange) -> Plan:
    """credit_note.created/updated/voided: a credit note on a subscription's first invoice nets (or, voided,
    restores) its Opportunity's `Amount`; on any other invoice it changes nothing stripe-sf writes."""
    if change.first_invoice is None:
        why = "not a subscription's first invoice" if change.invoice_read else "an invoice Stripe no longer has"
        return Plan(ignored=f"credit note {change.credit_note_id} on {change.invoice_id}: {why}; MRR is unchanged")
    _, acct_id = _metadata_ids(change.metadata, change.customer_metadata)
    account = AccountRef(change.customer_id, acct_id)
    return Plan([_first_invoice_intent(change.meta.event_id, change.first_invoice, account)])


def _refund_task(ctx: RuleContext, change: PaymentChange, account: AccountRef, subject: str,
                 about: str) -> TaskIntent:
    """A refund worth a person's attention: a one-time payment refunded in full, or an invoice refunded."""
    meta = change.meta
    amount = money.format_amount(change.refunded, change.currency)
    lines = [f"Refunded: {amount} in total of {money.format_amount(change.amount_received, change.currency)} "
             f"received; Stripe kept {money.format_amount(change.net, change.currency)}.",
             *([f"Invoice: {_dashboard(ctx, meta.livemode, 'invoices', change.invoice_id)}"]
               if change.invoice_id else []),
             f"Payment: {_dashboard(ctx, meta.livemode, 'payments', change.payment_intent_id)}",
             f"Stripe event: {meta.event_id}"]
    return TaskIntent(meta.event_id, "refunded", account, "csm_or_owner", f"{subject}: {amount}",
                      "\n".join(lines), "Normal", "Not Started",
                      next_business_day(event_date(meta.created)).isoformat(), about=about)


def _dispute_tasks(ctx: RuleContext, change: PaymentChange, account: AccountRef) -> list[TaskIntent]:
    """A high-priority Task per dispute, due on its evidence deadline (`evidence_details.due_by`, api-facts
    "Disputes"), keyed by the dispute: created once, by whichever of the payment's events comes first (webhooks
    come in any order; a `charge.dispute.created` older than the `closed` already applied is stale). A backfill
    raises it only for disputes still open: the others are history."""
    return [_dispute_task(ctx, change, account, d) for d in change.disputes
            if d.status in OPEN_DISPUTE_STATUSES or not change.meta.backfill]


def _dispute_task(ctx: RuleContext, change: PaymentChange, account: AccountRef, d: Dispute) -> TaskIntent:
    meta = change.meta
    due = event_date(d.due_by) if d.due_by else next_business_day(event_date(meta.created))
    amount = money.format_amount(d.amount, d.currency)
    subject = (f"Dispute opened: {amount} ({d.reason}), respond by {due}" if d.status in OPEN_DISPUTE_STATUSES
               else f"Dispute {d.status}: {amount} ({d.reason})")
    return TaskIntent(
        meta.event_id, "dispute", account, "owner", subject,
        "\n".join([f"The customer disputed {amount} of payment {change.payment_intent_id}.",
                   f"Reason: {d.reason}", f"Evidence due by: {due.isoformat()}",
                   *([f"Invoice: {change.invoice_id}"] if change.invoice_id else []),
                   f"Dispute: {_dashboard(ctx, meta.livemode, 'disputes', d.dispute_id)}",
                   f"Stripe event: {meta.event_id}"]),
        "High", "Not Started", due.isoformat(), about=f"{d.dispute_id}#dispute")


def plan_collected_alone(ctx: RuleContext, change: CollectedChange) -> Plan:
    """A refund or dispute event hydration could not turn into its payment (no PaymentIntent, or it is gone)."""
    return Plan(ignored=f"{change.charge_id or 'a charge'} has no PaymentIntent stripe-sf can read: no "
                        "Opportunity tracks it")


# The change types this module plans, and their rules (merged into rules.table.RULES).
RULE_ENTRIES = (
    rule_entry(PaymentChange, plan_payment),
    rule_entry(CreditNoteChange, plan_credit_note),
    rule_entry(CollectedChange, plan_collected_alone),
)
