"""The mapping rules: pure functions from a Stripe change to the Salesforce intents it implies.

No I/O and no clock: the event's own time is the clock. This is the file to read to know what
stripe-sf does to an org.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from stripe_sf_sync import money
from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.model import (
    COLLECTED_EVENT_TYPES,
    OPEN_DISPUTE_STATUSES,
    Change,
    CollectedChange,
    CreditNoteChange,
    Dispute,
    FirstInvoiceNet,
    InvoiceFailureChange,
    PaymentChange,
    SubscriptionChange,
)
from stripe_sf_sync.salesforce_ids import checked_id

FAILED_PAYMENT_SUBJECT = "Payment Failed - Immediate Action Required"
WON_FROM = frozenset({"incomplete", "trialing"})
# Backfill sees only the current state: these statuses mean the subscription was won at some point.
WON_NOW = frozenset({"active", "trialing", "past_due", "unpaid"})


@dataclass(frozen=True)
class RuleContext:
    """Org-specific values the rules need (from sync.yaml)."""

    won_stage: str
    fields: FieldNames
    dashboard_url: str = "https://dashboard.stripe.com"
    refunded_stage: str | None = None  # salesforce.refunded_stage: a fully refunded payment's stage


@dataclass(frozen=True)
class AccountRef:
    """How to find the Account: a checked metadata Id first, else by Stripe customer id.

    `opportunity_id`: the Opportunity the object's own metadata names when its own metadata names no
    Account. That Opportunity's Account is the object's Account, ahead of the customer's metadata (an
    object's own metadata wins), so a subscription naming its Opportunity needs no customer read.
    """

    customer_id: str | None
    account_id: str | None
    opportunity_id: str | None = None


@dataclass(frozen=True)
class OpportunityIntent:
    """Set fields on the Opportunity for a subscription or a one-time payment."""

    event_id: str
    key_kind: Literal["subscription", "payment_intent"]
    key: str
    opportunity_id: str | None  # checked metadata Id (object, then customer)
    match_by_customer: bool  # subscriptions may claim an open Opportunity of their customer
    account: AccountRef
    fields: Mapping[str, Any]
    name_hint: str
    may_create: bool
    # The ISO code (lower case, as Stripe sends it) the amounts in `fields` are in. A multi-currency org
    # reads an amount in the record's CurrencyIsoCode (Salesforce Help: multiple currencies): resolve sets it.
    currency: str | None = None
    # Fields written only when the Opportunity is created here (a refund event may be the first stripe-sf sees
    # of a payment): an existing Opportunity keeps its stage and CloseDate.
    create_only: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AccountStatusIntent:
    """Write Subscription_Status__c, and log the transition as a completed Task when asked."""

    event_id: str
    account: AccountRef
    subscription_id: str
    status: str
    previous_status: str | None
    log_transition: bool
    activity_date: str
    previous_from_account: bool = False  # .deleted carries no previous status: use the Account's
    who_id: str | None = None  # the Contact its transition Task names
    changed_at: int | None = None  # when the status changed (the event's time): the transition Task's key
    fields: Mapping[str, Any] = field(default_factory=dict)  # other Account fields to write (its MRR)


@dataclass(frozen=True)
class TaskIntent:
    """Create a Task on the Account, once: keyed by `key`, it is never written again after that."""

    event_id: str
    purpose: str  # part of the Task's idempotency key: "evt_…:purpose"
    account: AccountRef
    assign_to: Literal["owner", "csm_or_owner"]
    subject: str
    description: str
    priority: str
    status: str
    activity_date: str
    key_base: str | None = None  # backfill keyed Tasks by object before `about` (found by `legacy_key`)
    who_id: str | None = None  # a checked Contact Id from metadata.salesforce_contact_id (WhoId)
    # What the Task is about, its key: an invoice and its attempt (`in_…#attempt-2`), a subscription and its
    # transition or warning. Stripe may send one change as two Event objects with different ids
    # (docs.stripe.com/webhooks; api-facts §4), and a webhook and a backfill tell the same fact: keyed by
    # what it is about, they make one Task.
    about: str | None = None

    @property
    def key(self) -> str:
        """The Task's key (Stripe_Event_ID__c)."""
        return self.about or self.legacy_key

    @property
    def legacy_key(self) -> str:
        """The key earlier versions gave this Task (`evt_…:purpose`), still looked up: no duplicate after an
        upgrade."""
        return f"{self.key_base or self.event_id}:{self.purpose}"

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key this Task may exist under: its own, then the one earlier versions gave it."""
        return tuple(dict.fromkeys((self.key, self.legacy_key)))


Intent = OpportunityIntent | AccountStatusIntent | TaskIntent


@dataclass
class Plan:
    """What one change asks of Salesforce, or why nothing."""

    intents: list[Intent] = field(default_factory=list)
    ignored: str | None = None  # the reason when the event needs no write
    warnings: list[str] = field(default_factory=list)  # worth a log line, not a dead letter


def event_date(ts: int) -> date:
    """The UTC date of a Unix timestamp."""
    return datetime.fromtimestamp(ts, tz=UTC).date()


def next_business_day(day: date) -> date:
    """The next Monday-to-Friday after `day` (public holidays are not known here)."""
    nxt = day + timedelta(days=1)
    while nxt.weekday() >= 5:
        nxt += timedelta(days=1)
    return nxt


def _metadata_ids(own: Mapping[str, str], customer: Mapping[str, str] | None) -> tuple[str | None, str | None]:
    """Checked Opportunity and Account Ids from metadata: the object's own first, then its customer's.

    A malformed or wrong-prefix value is treated as absent, so it never reaches SOQL or a URL.
    """
    opp = checked_id(own.get("salesforce_opportunity_id"), "Opportunity")
    acct = checked_id(own.get("salesforce_account_id"), "Account")
    if customer:
        opp = opp or checked_id(customer.get("salesforce_opportunity_id"), "Opportunity")
        acct = acct or checked_id(customer.get("salesforce_account_id"), "Account")
    return opp, acct


def _account_ref(change: SubscriptionChange | PaymentChange | InvoiceFailureChange, acct_id: str | None) -> AccountRef:
    """The change's AccountRef: its Account Id from metadata, else the Account of the Opportunity its own
    metadata names (resolve looks that up with the Opportunity), else its customer's Account."""
    own_acct = checked_id(change.metadata.get("salesforce_account_id"), "Account")
    own_opp = None if own_acct else checked_id(change.metadata.get("salesforce_opportunity_id"), "Opportunity")
    return AccountRef(change.customer_id, acct_id, own_opp)


def _contact_id(own: Mapping[str, str], customer: Mapping[str, str] | None, plan: Plan) -> str | None:
    """The Task's WhoId: `metadata.salesforce_contact_id` (the integration guide's convention), on the object
    first, then on its customer. A value that is not a Contact Id leaves WhoId empty with a warning: the
    Task still matters more than the link."""
    for where, meta in (("the object", own), ("its customer", customer or {})):
        raw = meta.get("salesforce_contact_id")
        if not raw:
            continue
        who = checked_id(raw, "Contact")
        if who:
            return who
        plan.warnings.append(f"metadata.salesforce_contact_id {str(raw)[:40]!r} on {where} is not a Contact Id "
                             "(003…): its Tasks are created without WhoId")
    return None


def _dashboard(ctx: RuleContext, livemode: bool, kind: str, obj_id: str) -> str:
    mode = "" if livemode else "test/"
    return f"{ctx.dashboard_url.rstrip('/')}/{mode}{kind}/{obj_id}"


def _subscription_value_fields(ctx: RuleContext, change: SubscriptionChange, plan: Plan, *,
                               won: bool) -> dict[str, Any]:
    """Amount (only when won: the first paid period's value, which later changes leave alone), MRR and ARR.
    With hydration's figures (mrr.py: Stripe's definition, discounts applied, tax and metered items out), a
    figure that cannot be known is left alone and the plan says why; without them, the list-price lines."""
    f = ctx.fields
    if change.value is not None:
        v = change.value
        out: dict[str, Any] = {}
        for name, figure in (("Amount", v.first_period if won else None), (f.mrr, v.mrr), (f.arr, v.arr)):
            if figure is None:
                continue
            if figure.value is not None:
                out[name] = figure.value
            elif figure.reason and not any(figure.reason in w for w in plan.warnings):
                plan.warnings.append(f"{change.subscription_id}: {name} left alone (Salesforce keeps what it holds; "
                                     f"reconcile skips it too): {figure.reason}")
        return out
    if any(line.currency != change.currency for line in change.lines):
        # Items show their Price's default currency; the amount billed is in subscription.currency
        # (Stripe API reference: Prices, `currency_options`). Hydration converts them
        # (model.in_billed_currency); never guess here.
        raise ValueError(f"{change.subscription_id}: items must be converted to {change.currency.upper()} "
                         "(the subscription's currency) before planning")
    out = {}
    amount = money.period_total(change.lines)
    if amount is not None:
        out["Amount"] = amount
    mrr = money.monthly_recurring(change.lines)
    if mrr is not None:
        out[f.mrr] = mrr
        out[f.arr] = money.annual_recurring(change.lines)
    return out


def _account_mrr_fields(ctx: RuleContext, change: SubscriptionChange, plan: Plan) -> dict[str, Any]:
    """The Account's MRR field (when configured): the customer's MRR now, as hydration computed it; left
    alone, with the reason, when it cannot be known (billed in several currencies, say)."""
    name, figure = ctx.fields.account_mrr, change.account_mrr
    if name is None or figure is None:
        return {}
    if figure.value is None:
        plan.warnings.append(f"{change.customer_id}: Account {name} left alone: {figure.reason}")
        return {}
    return {name: figure.value}


def plan_subscription(ctx: RuleContext, change: SubscriptionChange) -> Plan:
    """customer.subscription.created / updated / deleted."""
    f = ctx.fields
    meta = change.meta
    day = event_date(meta.created)
    opp_id, acct_id = _metadata_ids(change.metadata, change.customer_metadata)
    account = _account_ref(change, acct_id)
    label = change.customer_name or change.customer_id
    plan = Plan()
    kind = meta.event_type.rsplit(".", 1)[-1]
    who = _contact_id(change.metadata, change.customer_metadata, plan) if kind in ("updated", "deleted") else None

    if meta.backfill:
        return _plan_subscription_backfill(ctx, change, opp_id, account, label)
    won = (
        (kind == "created" and change.status in ("active", "trialing"))
        or (kind == "updated" and change.status == "active" and change.previous_status in WON_FROM)
    )
    if won:
        fields = {"StageName": ctx.won_stage, "CloseDate": day.isoformat(),
                  f.subscription_id: change.subscription_id, f.customer_id: change.customer_id}
        fields.update(_subscription_value_fields(ctx, change, plan, won=True))
        plan.intents.append(OpportunityIntent(
            meta.event_id, "subscription", change.subscription_id, opp_id, True, account, fields,
            f"{label} - Subscription {change.subscription_id}", may_create=True, currency=change.currency))
    elif kind == "updated" and change.plan_changed:
        values = _subscription_value_fields(ctx, change, plan, won=False)
        if values:
            plan.intents.append(OpportunityIntent(
                meta.event_id, "subscription", change.subscription_id, opp_id, False, account,
                values, label, may_create=False, currency=change.currency))

    status = "canceled" if kind == "deleted" else change.status
    plan.intents.append(AccountStatusIntent(
        meta.event_id, account, change.subscription_id, status,
        change.previous_status if kind == "updated" else None,
        log_transition=kind in ("updated", "deleted"), activity_date=day.isoformat(),
        previous_from_account=kind == "deleted", who_id=who, changed_at=meta.created,
        fields=_account_mrr_fields(ctx, change, plan)))

    plan.intents.extend(_subscription_tasks(ctx, change, kind, account, who))
    return plan


def _subscription_tasks(ctx: RuleContext, change: SubscriptionChange, kind: str, account: AccountRef,
                        who: str | None) -> list[TaskIntent]:
    """The CSM's Tasks for a subscription: a cancellation was scheduled, or it was cancelled."""
    meta = change.meta
    day = event_date(meta.created)
    follow_up = next_business_day(day).isoformat()
    links = [f"Subscription: {_dashboard(ctx, meta.livemode, 'subscriptions', change.subscription_id)}",
             f"Customer: {_dashboard(ctx, meta.livemode, 'customers', change.customer_id)}",
             f"Stripe event: {meta.event_id}"]
    tasks: list[TaskIntent] = []
    if kind == "updated" and (change.cancel_turned_on or change.cancel_at_turned_on):
        tasks.append(_cancel_warning(change, account, who, follow_up, links))
    if kind == "deleted":
        reason = change.cancellation_reason or "not given"
        tasks.append(TaskIntent(
            meta.event_id, "follow-up", account, "csm_or_owner",
            "Subscription cancelled - follow up with the customer",
            "\n".join([
                f"Stripe subscription {change.subscription_id} was cancelled on {day.isoformat()}.",
                f"Cancellation reason: {reason}",
                *links,
            ]), "High", "Not Started", follow_up, who_id=who,
            about=f"{change.subscription_id}#cancelled"))
    return tasks


def _cancel_warning(change: SubscriptionChange, account: AccountRef, who: str | None, follow_up: str,
                    links: list[str]) -> TaskIntent:
    """The early warning that a cancellation was scheduled: at the period end (`cancel_at_period_end`), or at a
    date (`cancel_at`, while `cancel_at_period_end` stays false: stripe/_subscription.py), with the date it
    takes effect."""
    if change.cancel_turned_on:
        ends = event_date(change.period_end).isoformat() if change.period_end else "the period end"
        when = f"at the end of its period ({ends})"
    else:
        assert change.cancel_at is not None
        ends = event_date(change.cancel_at).isoformat()
        when = f"on {ends}"
    return TaskIntent(
        change.meta.event_id, "cancel-warning", account, "csm_or_owner",
        f"Cancellation scheduled: subscription ends {ends}",
        "\n".join([f"Stripe subscription {change.subscription_id} was set to cancel {when}.",
                   "Reach out before it ends.", *links]),
        "High", "Not Started", follow_up, who_id=who,
        # When it was scheduled (two Event objects of one change share their time): scheduled again after
        # being taken back, it warns again.
        about=f"{change.subscription_id}#cancel-warning@{_instant(change.meta.created, '')}")


def _plan_subscription_backfill(ctx: RuleContext, change: SubscriptionChange, opp_id: str | None,
                                account: AccountRef, label: str) -> Plan:
    """A subscription's current state: the won Opportunity if it was won, and the Account status.
    No transition Tasks: the history between then and now is not in Stripe's lists."""
    f = ctx.fields
    meta = change.meta
    plan = Plan()
    if change.status in WON_NOW:
        closed = event_date(meta.object_created or meta.created).isoformat()
        fields = {"StageName": ctx.won_stage, "CloseDate": closed,
                  f.subscription_id: change.subscription_id, f.customer_id: change.customer_id}
        fields.update(_subscription_value_fields(ctx, change, plan, won=True))
        plan.intents.append(OpportunityIntent(
            meta.event_id, "subscription", change.subscription_id, opp_id, True, account, fields,
            f"{label} - Subscription {change.subscription_id}", may_create=True, currency=change.currency))
    if meta.write_status:
        plan.intents.append(AccountStatusIntent(
            meta.event_id, account, change.subscription_id, change.status, None, log_transition=False,
            activity_date=event_date(meta.created).isoformat(), fields=_account_mrr_fields(ctx, change, plan)))
    if not plan.intents:
        plan.ignored = "an ended subscription; another subscription of the customer sets the Account status"
    return plan


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
    if ctx.refunded_stage and change.fully_refunded:
        fields["StageName"] = ctx.refunded_stage
    elif ctx.refunded_stage and from_event:
        fields["StageName"] = ctx.won_stage  # a refund that failed, or a dispute won: collected again
    label = change.customer_name or change.customer_id or "Stripe"
    name = f"{label} - Payment {change.payment_intent_id}"
    # A refund or dispute event leaves an existing Opportunity's stage and CloseDate as they are.
    plan = Plan([OpportunityIntent(
        meta.event_id, "payment_intent", change.payment_intent_id, opp_id, False, account,
        fields if from_event else {**won, **fields}, name, may_create=True, currency=change.currency,
        create_only=won if from_event else {})])
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


def plan(ctx: RuleContext, change: Change) -> Plan:
    """Dispatch one change to its rule."""
    if isinstance(change, SubscriptionChange):
        return plan_subscription(ctx, change)
    if isinstance(change, PaymentChange):
        return plan_payment(ctx, change)
    if isinstance(change, CreditNoteChange):
        return plan_credit_note(ctx, change)
    if isinstance(change, CollectedChange):  # not turned into its payment: no PaymentIntent, or it is gone
        return Plan(ignored=f"{change.charge_id or 'a charge'} has no PaymentIntent stripe-sf can read: no "
                            "Opportunity tracks it")
    return plan_invoice_failure(ctx, change)


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


def _instant(ts: int | None, day: str) -> str:
    """A Unix time as an ISO UTC instant (`2026-12-07T05:05:19Z`), or the day when there is none."""
    if ts is None:
        return day
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
