"""The rule of a customer deleted in Stripe: its Account stays (a deletion in Stripe is not a lost customer's
history), marked in `salesforce.fields.account_customer_deleted` when that field is named. The customer's
later events write nothing (the hydrator raises model.CustomerDeleted for them; pipeline/plan.py)."""

from __future__ import annotations

from stripe_sf_sync.model.customers import CustomerDeletedChange
from stripe_sf_sync.rules.intents import AccountFieldsIntent, AccountRef, Plan, RuleContext, rule_entry
from stripe_sf_sync.salesforce_ids import checked_id


def plan_customer_deleted(ctx: RuleContext, change: CustomerDeletedChange) -> Plan:
    """customer.deleted: the Account's deleted-customer field set to true; nothing else is changed."""
    name = ctx.fields.account_customer_deleted
    if name is None:
        return Plan(ignored="customer deleted in Stripe: its Account is kept and its later events are not applied "
                            "(salesforce.fields.account_customer_deleted is not set: nothing is marked)")
    account_id = checked_id(change.metadata.get("salesforce_account_id"), "Account")
    return Plan([AccountFieldsIntent(change.meta.event_id, AccountRef(change.customer_id, account_id), {name: True})])


RULE_ENTRIES = (
    rule_entry(CustomerDeletedChange, plan_customer_deleted),
)
