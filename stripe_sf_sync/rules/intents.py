"""What a rule returns: the Salesforce intents of one change (its Plan), and the org values rules read."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.mapping import FieldMapping


@dataclass(frozen=True)
class RuleContext:
    """Org-specific values the rules need (from sync.yaml)."""

    won_stage: str
    fields: FieldNames
    dashboard_url: str = "https://dashboard.stripe.com"
    refunded_stage: str | None = None  # salesforce.refunded_stage: a fully refunded payment's stage
    mapping: FieldMapping = field(default_factory=FieldMapping)  # salesforce.mapping (mapping.py)
    # The pipeline's Stripe account id (issue 26): its records carry it in salesforce.fields.stripe_account, and
    # its lookups match only that account's records (and untagged ones). None: not known, nothing is tagged.
    stripe_account: str | None = None


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
    # This intent wins the Opportunity (its won event, or a backfill of a won object): the mapping's `once` fields
    # are written when the Opportunity is still open in Salesforce (mapping.owned_fields).
    wins: bool = False
    # Fields a setting asks stripe-sf to own whatever their default (StageName with salesforce.refunded_stage).
    forced: frozenset[str] = frozenset()
    # The values of the mapping's paths into the Stripe object, and the change's status (pipeline/plan.py).
    source: Mapping[str, Any] = field(default_factory=dict)


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
    source: Mapping[str, Any] = field(default_factory=dict)  # as OpportunityIntent.source


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
    source: Mapping[str, Any] = field(default_factory=dict)  # as OpportunityIntent.source

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


@dataclass(frozen=True)
class AccountFieldsIntent:
    """Set fields on the customer's Account, when it has one (a customer deleted in Stripe: its mark)."""

    event_id: str
    account: AccountRef
    fields: Mapping[str, Any]
    who_id: None = None  # no Task: never a Contact to look up


Intent = OpportunityIntent | AccountStatusIntent | TaskIntent | AccountFieldsIntent


@dataclass
class Plan:
    """What one change asks of Salesforce, or why nothing."""

    intents: list[Intent] = field(default_factory=list)
    ignored: str | None = None  # the reason when the event needs no write
    warnings: list[str] = field(default_factory=list)  # worth a log line, not a dead letter


C = TypeVar("C")
Rule = Callable[[RuleContext, Any], Plan]


def rule_entry(kind: type[C], rule: Callable[[RuleContext, C], Plan]) -> tuple[type[C], Rule]:
    """One entry of a rule table (rules.table.RULES): mypy checks that `rule` takes the change type it is filed
    under. Each rule module lists its own entries, in a tuple (a dict's type context would hide a mismatch)."""
    return kind, rule
