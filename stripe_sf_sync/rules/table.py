"""One table from a change's type to its rule: `plan` dispatches through it, and a change type without a
rule is an error, never a default rule. Each rule module lists the change types it plans (`RULE_ENTRIES`, beside
the rules); this table is their union, checked by tests/test_rules.py against every type a parser returns."""

from __future__ import annotations

from typing import Any

from stripe_sf_sync.model import Change, CustomerChange
from stripe_sf_sync.rules.customers import RULE_ENTRIES as CUSTOMER_RULES
from stripe_sf_sync.rules.intents import Plan, Rule, RuleContext
from stripe_sf_sync.rules.payments import RULE_ENTRIES as PAYMENT_RULES
from stripe_sf_sync.rules.subscriptions import RULE_ENTRIES as SUBSCRIPTION_RULES
from stripe_sf_sync.rules.tasks import RULE_ENTRIES as TASK_RULES

_ENTRIES = (SUBSCRIPTION_RULES, PAYMENT_RULES, TASK_RULES, CUSTOMER_RULES)  # a new rule module's entries are added here
RULES: dict[type[Any], Rule] = {kind: rule for entries in _ENTRIES for kind, rule in entries}
# Change types a parser returns that no rule plans, and why: the batch handles them before planning.
NO_RULE: dict[type[Any], str] = {
    CustomerChange: "keeps the customer's metadata and name in state, which its other events resolve by",
}


class NoRule(TypeError):
    """A change type with no entry in RULES: a programming error (add its rule), never a default rule."""


def plan(ctx: RuleContext, change: Change) -> Plan:
    """Dispatch one change to its rule."""
    # By the type's MRO, as isinstance would: a subclass of a change type is planned as that type.
    rule = next((RULES[k] for k in type(change).__mro__ if k in RULES), None)
    if rule is None:
        raise NoRule(f"no rule plans a {type(change).__name__}: add one to a rule module's RULE_ENTRIES")
    return rule(ctx, change)
