"""customer.subscription.*: the won Opportunity and its value, the Account status, the CSM's Tasks."""

from __future__ import annotations

from typing import Any

from stripe_sf_sync import money
from stripe_sf_sync.model import SubscriptionChange
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
    AccountRef,
    AccountStatusIntent,
    OpportunityIntent,
    Plan,
    RuleContext,
    TaskIntent,
    rule_entry,
)

WON_FROM = frozenset({"incomplete", "trialing"})
# Backfill sees only the current state: these statuses mean the subscription was won at some point.
WON_NOW = frozenset({"active", "trialing", "past_due", "unpaid"})


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
            f"{label} - Subscription {change.subscription_id}", may_create=True, currency=change.currency,
            wins=True))
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
            f"{label} - Subscription {change.subscription_id}", may_create=True, currency=change.currency,
            wins=True))
    if meta.write_status:
        plan.intents.append(AccountStatusIntent(
            meta.event_id, account, change.subscription_id, change.status, None, log_transition=False,
            activity_date=event_date(meta.created).isoformat(), fields=_account_mrr_fields(ctx, change, plan)))
    if not plan.intents:
        plan.ignored = "an ended subscription; another subscription of the customer sets the Account status"
    return plan


# The change types this module plans, and their rules (merged into rules.table.RULES).
RULE_ENTRIES = (
    rule_entry(SubscriptionChange, plan_subscription),
)
