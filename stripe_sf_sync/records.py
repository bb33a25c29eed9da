"""Salesforce records as plain data, shared by the pipeline and the Salesforce edge: what a batch reads
(`LookupRequest` -> `Lookups` of `AccountRow`s and `OpportunityRow`s), what it writes (`SfOp` -> `WriteResult`),
and what the org has (`OrgFacts`). No I/O: the edge (salesforce/) fills and sends these, the pipeline plans them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from stripe_sf_sync.identity import SalesforceIdentity

WriteKind = Literal["update", "upsert", "create"]


@dataclass
class SfOp:
    """One planned record write, possibly coalescing several events' changes to the same record."""

    kind: WriteKind
    sobject: str
    key: str  # the record Id (update), external id value (upsert) or a unique label (create)
    fields: dict[str, Any]
    ext_field: str | None = None
    events: list[str] = field(default_factory=list)  # contributing event ids, in event order
    label: str = ""
    # Why each field the default or the mapping names is written or left alone (mapping.owned_fields): a dry
    # run shows it.
    why: dict[str, str] = field(default_factory=dict)

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """Writes with the same identity touch the same record and are merged."""
        return (self.kind, self.sobject, self.ext_field or "", self.key)


@dataclass(frozen=True)
class WriteResult:
    """A per-record outcome from Salesforce."""

    success: bool
    record_id: str | None = None
    code: str | None = None
    message: str | None = None
    created: bool | None = None


@dataclass
class AccountRow:
    """The Account fields the rules need."""

    id: str
    name: str
    owner_id: str | None
    csm_id: str | None
    status: str | None
    customer_id: str | None
    # Salesforce's values of the fields the mapping reads (`if_empty`: salesforce.mapping), by API name.
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class OpportunityRow:
    """The Opportunity fields resolution needs."""

    id: str
    account_id: str | None
    subscription_id: str | None
    payment_intent_id: str | None
    customer_id: str | None
    is_closed: bool
    created: str
    values: dict[str, Any] = field(default_factory=dict)  # as AccountRow.values


@dataclass
class Lookups:
    """Everything one batch's lookups found."""

    accounts_by_id: dict[str, AccountRow] = field(default_factory=dict)
    accounts_by_customer: dict[str, AccountRow] = field(default_factory=dict)
    opps_by_id: dict[str, OpportunityRow] = field(default_factory=dict)
    opps_by_subscription: dict[str, OpportunityRow] = field(default_factory=dict)
    opps_by_payment: dict[str, OpportunityRow] = field(default_factory=dict)
    opps_by_customer: dict[str, list[OpportunityRow]] = field(default_factory=dict)
    contacts: set[str] = field(default_factory=set)  # Contact Ids from metadata that exist
    task_keys: set[str] = field(default_factory=set)  # Task keys (Stripe_Event_ID__c) that already exist
    merged_into: dict[str, str] = field(default_factory=dict)  # merged-away Account Id -> its survivor's
    merge_conflicts: dict[str, str] = field(default_factory=dict)  # loser Id or customer id -> why not followed
    merged_rows: list[dict[str, Any]] | None = None  # merged-away Accounts read with the lookups (None: not read)

    def add_account(self, row: AccountRow) -> None:
        """Index an Account by its Id and, when it has one, its Stripe customer id."""
        index_account(self.accounts_by_id, self.accounts_by_customer, row)

    def account_of_opportunity(self, opportunity_id: str | None) -> AccountRow | None:
        """The Account of an Opportunity found by Id, when it has one that was read with it."""
        opp = self.opps_by_id.get(opportunity_id) if opportunity_id else None
        return self.accounts_by_id.get(opp.account_id) if opp is not None and opp.account_id else None

    def add_opportunity(self, row: OpportunityRow) -> None:
        """Index an Opportunity by its Id and Stripe ids; a customer lists each Opportunity once."""
        first = row.id not in self.opps_by_id
        self.opps_by_id[row.id] = row
        if row.subscription_id:
            self.opps_by_subscription[row.subscription_id] = row
        if row.payment_intent_id:
            self.opps_by_payment[row.payment_intent_id] = row
        if row.customer_id and first:
            self.opps_by_customer.setdefault(row.customer_id, []).append(row)



def index_account(by_id: dict[str, AccountRow], by_customer: dict[str, AccountRow], row: AccountRow) -> None:
    """Index an Account row by its Id and, when it has one, its Stripe customer id."""
    by_id[row.id] = row
    if row.customer_id:
        by_customer[row.customer_id] = row


@dataclass(frozen=True)
class FieldReads:
    """The fields whose current values the mapping needs (salesforce.mapping's `if_empty`), read with the
    lookups a batch already makes: a few more columns, no more calls."""

    opportunity: tuple[str, ...] = ()
    account: tuple[str, ...] = ()


@dataclass(frozen=True)
class LookupRequest:
    """What one batch must read from Salesforce (Accounts already in the run's AccountCache left out)."""

    account_ids: frozenset[str] = frozenset()
    customer_ids: frozenset[str] = frozenset()  # Accounts by their Stripe customer id
    opportunity_ids: frozenset[str] = frozenset()
    subscription_ids: frozenset[str] = frozenset()
    payment_intent_ids: frozenset[str] = frozenset()
    opportunity_customer_ids: frozenset[str] = frozenset()  # a customer's Opportunities, for matching
    contact_ids: frozenset[str] = frozenset()
    task_keys: frozenset[str] = frozenset()  # Task keys that may exist (only when the org has the key field)
    reads: FieldReads = FieldReads()
    # The pipeline's Stripe account (issue 26): Opportunities and Tasks tagged with another are not read.
    stripe_account: str | None = None


@dataclass(frozen=True)
class OrgFacts:
    """What describe told us about the org, cached for a day in state."""

    task_keyed: bool  # Task has the key field: Tasks are looked up by it and created once
    # A multi-currency org's active currencies (upper-case ISO codes, from Opportunity.CurrencyIsoCode's
    # picklist); None for a single-currency org, which has no CurrencyIsoCode field.
    currencies: frozenset[str] | None = None
    # The org's own currency (Organization.DefaultCurrencyIsoCode, upper case): a single-currency org reads
    # every amount in it. None when Salesforce did not say.
    currency: str | None = None
    # The org's Id and whether it is a sandbox, when this run's describe read them (never cached: identity.py).
    org: SalesforceIdentity | None = field(default=None, compare=False)

    def holds(self, code: str) -> bool | None:
        """Whether an amount in `code` can be written as what it is: True, False, or None (not known)."""
        if self.currencies is not None:
            return code.upper() in self.currencies
        return None if self.currency is None else code.upper() == self.currency


def describe_op(op: SfOp) -> dict[str, Any]:
    """A planned write, JSON-ready (a dry run prints these)."""
    return {"action": op.kind, "sobject": op.sobject, "key": op.key, "external_id_field": op.ext_field,
            "fields": {k: (str(v) if not isinstance(v, str | int | bool | type(None)) else v)
                       for k, v in op.fields.items()},
            "events": list(op.events), **({"why": dict(op.why)} if op.why else {})}
