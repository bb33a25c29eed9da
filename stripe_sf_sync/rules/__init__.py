"""The mapping rules: pure functions from a Stripe change to the Salesforce intents it implies.

No I/O and no clock: the event's own time is the clock. This package is the place to read to know what
stripe-sf does to an org: `table` (which rule plans which change: `plan`), one module per kind of change
(`subscriptions`, `payments`, `tasks`), `status` (which subscription decides an Account's status), and
`intents` (what a rule returns) with `common` (what every rule uses). The names other modules use are
re-exported here.
"""

from stripe_sf_sync.rules.common import event_date, next_business_day
from stripe_sf_sync.rules.intents import (
    AccountFieldsIntent,
    AccountRef,
    AccountStatusIntent,
    Intent,
    OpportunityIntent,
    Plan,
    RuleContext,
    TaskIntent,
)
from stripe_sf_sync.rules.payments import plan_collected_alone, plan_credit_note, plan_payment
from stripe_sf_sync.rules.subscriptions import WON_FROM, WON_NOW, plan_subscription
from stripe_sf_sync.rules.table import NO_RULE, RULES, NoRule, plan
from stripe_sf_sync.rules.tasks import (
    FAILED_PAYMENT_SUBJECT,
    failed_payment_description,
    plan_invoice_failure,
    transition_task,
)

__all__ = [
    "FAILED_PAYMENT_SUBJECT", "NO_RULE", "RULES", "WON_FROM", "WON_NOW", "AccountFieldsIntent", "AccountRef",
    "AccountStatusIntent", "Intent", "NoRule", "OpportunityIntent", "Plan", "RuleContext", "TaskIntent", "event_date",
    "failed_payment_description", "next_business_day", "plan", "plan_collected_alone", "plan_credit_note",
    "plan_invoice_failure", "plan_payment", "plan_subscription", "transition_task",
]
