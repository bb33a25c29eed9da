"""Every Salesforce field stripe-sf writes or matches on, in one table (`FIELDS`): its key under
`salesforce.fields`, its object, its default API name, how to create it, and what the org check needs of it.

sync.yaml's `salesforce.fields` (`FieldNames`, here beside the table) and the org check's needs
(`salesforce.org.field_needs`, which `sync` and `doctor` check) derive from it. A new field is one entry in
`FIELDS` and one attribute of `FieldNames`; tests/test_config.py checks that the two agree, and that
sync.yaml.example documents it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
FieldName = Annotated[str, Field(pattern=_FIELD_NAME.pattern)]

# A field's role as a key. upsert: an Opportunity upsert key, which must be External ID, and Unique (an upsert
# on a non-Unique External ID needs "View All Data"; REST API, "Upsert a Record Using an External ID");
# match: looked up by SOQL, where an External ID (indexed) and Unique (one Account per customer) help;
# task: the Task key, which must be a filterable Text field, External ID recommended for the index.
KeyRole = Literal["upsert", "match", "task"]


@dataclass(frozen=True)
class FieldSpec:
    """One field stripe-sf writes or matches on (docs/salesforce-fields.md)."""

    key: str  # its key under salesforce.fields: the FieldNames attribute holding its API name
    sobject: str
    default: str | None  # its API name unless configured; None: optional, left alone until named
    kind: str  # how to create it
    types: frozenset[str]  # describe `type`s that hold its values
    writes: tuple[str, ...] = ()  # "create", "update": the field-level security it needs
    role: KeyRole | None = None
    optional: bool = False  # a missing field is a warning, not an error
    holds_status: bool = False  # takes Stripe's subscription statuses


TEXT = frozenset({"string"})
CURRENCY = frozenset({"currency", "double"})
WRITE = ("create", "update")
UPDATE = ("update",)
_KEY = "Text(255), External ID, Unique"

# In the order the org check reports them. `customer_id` is one key for two fields: Opportunity and Account.
FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("subscription_id", "Opportunity", "Stripe_Subscription_ID__c", _KEY, TEXT, WRITE, "upsert"),
    FieldSpec("payment_intent_id", "Opportunity", "Stripe_Payment_Intent_ID__c", _KEY, TEXT, WRITE, "upsert"),
    FieldSpec("customer_id", "Opportunity", "Stripe_Customer_ID__c", "Text(255)", TEXT, WRITE),
    FieldSpec("mrr", "Opportunity", "MRR__c", "Currency(16, 2)", CURRENCY, WRITE),
    FieldSpec("arr", "Opportunity", "ARR__c", "Currency(16, 2)", CURRENCY, WRITE),
    FieldSpec("customer_id", "Account", "Stripe_Customer_ID__c", _KEY, TEXT, UPDATE, "match"),
    FieldSpec("subscription_status", "Account", "Subscription_Status__c", "Picklist or Text(40)",
              frozenset({"picklist", "string"}), UPDATE, holds_status=True),
    FieldSpec("account_csm", "Account", None, "Lookup(User)", frozenset({"reference"})),  # read, never written
    FieldSpec("opportunity_refunded", "Opportunity", None, "Currency(16, 2)", CURRENCY, WRITE),
    FieldSpec("account_mrr", "Account", None, "Currency(16, 2)", CURRENCY, UPDATE),
    FieldSpec("account_customer_deleted", "Account", None, "Checkbox", frozenset({"boolean"}), UPDATE),
    FieldSpec("task_event_id", "Task", "Stripe_Event_ID__c", "Text(255)", TEXT, ("create",), "task", optional=True),
    # The Stripe account a record belongs to (issue 26): written on what stripe-sf creates or updates, and every
    # Opportunity and Task lookup matches only its account's records (and untagged ones). An Account may hold
    # customers of several accounts (a company buying from two brands): Accounts are found without it, and only
    # those stripe-sf creates are tagged (CREATED_ACCOUNT_FIELDS).
    FieldSpec("stripe_account", "Opportunity", None, "Text(255)", TEXT, WRITE),
    FieldSpec("stripe_account", "Task", None, "Text(255)", TEXT, ("create",)),
)
# Fields needed only when stripe-sf creates Accounts (identity.create_accounts): the Account it creates carries
# the Stripe account of the pipeline that created it (the Accounts it finds are never tagged).
CREATED_ACCOUNT_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("stripe_account", "Account", None, "Text(255)", TEXT, ("create",)),
)
_DEFAULTS = {spec.key: spec.default for spec in FIELDS}


def _default(key: str) -> str:
    """The default API name of a field every org has (FieldNames' defaults come from FIELDS)."""
    name = _DEFAULTS[key]
    assert name is not None, key
    return name


class FieldNames(BaseModel):
    """Salesforce API names of every field the tool writes or matches on (sync.yaml's `salesforce.fields`);
    the defaults and what each needs are in FIELDS. An optional field is None until named."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The attributes' order is kept: the org check's day cache is keyed by this model's JSON.
    subscription_id: FieldName = _default("subscription_id")
    customer_id: FieldName = _default("customer_id")
    payment_intent_id: FieldName = _default("payment_intent_id")
    mrr: FieldName = _default("mrr")
    arr: FieldName = _default("arr")
    subscription_status: FieldName = _default("subscription_status")
    task_event_id: FieldName = _default("task_event_id")
    # The Account's Customer Success Manager (Lookup(User)); None: the Account owner gets the CSM's Tasks.
    account_csm: FieldName | None = None
    # The payment's succeeded refunds in total (issue 22 §1); None: nothing is written there.
    opportunity_refunded: FieldName | None = None
    # The customer's current MRR as Stripe counts it (issue 22 §5); None: nothing is read or written for it.
    account_mrr: FieldName | None = None
    # Set to true when the Account's customer is deleted in Stripe (issue 25); None: nothing is marked (its later
    # events are left unapplied all the same).
    account_customer_deleted: FieldName | None = None
    # The Stripe account id of the pipeline that writes a record (issue 26), e.g. Stripe_Account_ID__c on the
    # Opportunity and the Task; None: nothing is written, and lookups match every account's records.
    stripe_account: FieldName | None = None


def configured(names: FieldNames, *, creates_accounts: bool = False) -> Iterator[tuple[FieldSpec, str]]:
    """Each field of FIELDS with the API name `names` gives it, in FIELDS' order; optional ones left unnamed are
    left out. `creates_accounts` (identity.create_accounts): with CREATED_ACCOUNT_FIELDS."""
    for spec in (*FIELDS, *(CREATED_ACCOUNT_FIELDS if creates_accounts else ())):
        name = getattr(names, spec.key)
        if name is not None:
            yield spec, name
