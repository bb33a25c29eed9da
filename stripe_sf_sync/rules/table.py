"""One table from a change's type to its rule: `plan` dispatches through it, and a change type without a
rule is an error, never a default rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from stripe_sf_sync.model import (
    Change,
    CollectedChange,
    CreditNoteChange,
    CustomerChange,
    InvoiceFailureChange,
    PaymentChange,
    SubscriptionChange,
)
from stripe_sf_sync.rules.intents import Plan, RuleContext
from stripe_sf_sync.rules.payments import plan_collected_alone, plan_credit_note, plan_payment
from stripe_sf_sync.rules.subscriptions import plan_subscription
from stripe_sf_sync.rules.tasks import plan_invoice_failure

C = TypeVar("C")
Rule = Callable[[RuleContext, Any], Plan]


def _rule(kind: type[C], rule: Callable[[RuleContext, C], Plan]) -> tuple[type[C], Rule]:
    """One entry of RULES: mypy checks that `rule` takes the change type it is filed under."""
    return kind, rule


# Every change type a parser returns (model.PARSERS), and its rule. tests/test_rules.py checks both ways.
_ENTRIES = (
    _rule(SubscriptionChange, plan_subscription),
    _rule(PaymentChange, plan_payment),
    _rule(CreditNoteChange, plan_credit_note),
    _rule(CollectedChange, plan_collected_alone),  # hydration found no payment to turn it into
    _rule(InvoiceFailureChange, plan_invoice_failure),
)
RULES: dict[type[Any], Rule] = dict(_ENTRIES)
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
        raise NoRule(f"no rule plans a {type(change).__name__}: add one to stripe_sf_sync.rules.table.RULES")
    return rule(ctx, change)
