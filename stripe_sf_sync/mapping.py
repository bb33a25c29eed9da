"""sync.yaml's `salesforce.mapping`: which Salesforce fields stripe-sf writes, from what, and who owns each
(docs/mapping.md). Pure: the model and its validation, the computed values a `from` may name, paths into the
Stripe object, and `owned_fields`, which decides per write which fields go out and why.

Today's writes are the default mapping: every field the rules and `fields.FIELDS` write, owned by Stripe
(`always`), except an Opportunity's Name, CloseDate, StageName, OwnerId, RecordTypeId and AccountId (`once`),
which a rep may change after the win and keep.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stripe_sf_sync.fields import FieldName, FieldNames

WriteMode = Literal["always", "once", "if_empty", "never"]
SObjectName = Literal["Opportunity", "Account", "Task"]
WRITE_MODES: tuple[WriteMode, ...] = ("always", "once", "if_empty", "never")

# The values stripe-sf computes, each a `from:` (docs/mapping.md lists them with these words).
COMPUTED: dict[str, str] = {
    "amount": "the Opportunity's Amount: a subscription's first paid period, or what a one-time payment kept",
    "mrr": "the subscription's MRR as Stripe counts it",
    "arr": "the subscription's ARR (12 x MRR)",
    "currency": "the ISO code of the amounts (upper case, as CurrencyIsoCode holds it)",
    "status": "the subscription's status (active, past_due, canceled, ...)",
    "close_date": "the date the subscription or payment was won (YYYY-MM-DD)",
    "stage": "the won stage (salesforce.won_stage), or salesforce.refunded_stage",
    "name": "the Opportunity's name: `<Account name> - Subscription sub_...` (or `Payment pi_...`)",
    "subscription_id": "the Stripe subscription id",
    "payment_intent_id": "the Stripe PaymentIntent id",
    "customer_id": "the Stripe customer id",
    "refunded": "the payment's succeeded refunds in total",
    "account_mrr": "the customer's MRR (an Account field)",
    "owner_id": "the Account owner's User Id (an Opportunity's OwnerId on create)",
    "account_id": "the Account's Id",
}

# The first segments a path into the Stripe object may start with: the subscription's and PaymentIntent's
# attributes (Stripe API reference, "The Subscription object", "The PaymentIntent object"). Anything else is a
# typo of a computed value, refused at load.
PATH_ROOTS = frozenset({
    "customer", "metadata", "items", "description", "id", "created", "livemode", "collection_method",
    "billing_cycle_anchor", "cancel_at", "cancel_at_period_end", "canceled_at", "cancellation_details",
    "trial_start", "trial_end", "start_date", "ended_at", "days_until_due", "default_payment_method",
    "latest_invoice", "schedule", "discounts", "on_behalf_of", "pending_update", "plan", "quantity",
    "amount_received", "receipt_email", "statement_descriptor", "statement_descriptor_suffix", "payment_method",
    "latest_charge", "payment_method_types", "shipping", "application", "transfer_group", "invoice",
})
_PATH = re.compile(r"^[a-z_]+(\[\d+\])?(\.[A-Za-z0-9_\-]+(\[\d+\])?)*$")
_SEGMENT = re.compile(r"^([A-Za-z0-9_\-]+)(?:\[(\d+)\])?$")

# Default ownership: an Opportunity's fields a rep may edit after the win (issue 23); everything else stripe-sf
# writes is Stripe's.
ONCE_BY_DEFAULT: dict[str, frozenset[str]] = {
    "Opportunity": frozenset({"Name", "CloseDate", "StageName", "OwnerId", "RecordTypeId", "AccountId"}),
}


# The customer's email: kept in state with its name and metadata, read for events only when the mapping names it.
CUSTOMER_EMAIL = "customer.email"
# The paths into the customer a mapping may name (besides customer.metadata.<key>): what stripe-sf keeps of a
# customer in state and in backfill's and reconcile's slimmed objects (sources/synthetic.py).
CUSTOMER_PATHS = ("customer", "customer.name", CUSTOMER_EMAIL)
# A path through an item's Price's Product, beyond its id: the Price is read with its Product expanded.
_THROUGH_PRODUCT = re.compile(r"^items\[(\d+)\]\.price\.product\.")


def from_problem(source: str) -> str | None:
    """Why `source` is not a `from` stripe-sf knows, or None."""
    if source in COMPUTED:
        return None
    if not _PATH.match(source):
        return f"unknown `from` {source!r}: name a computed value ({', '.join(COMPUTED)}) or a path like metadata.plan"
    root = re.split(r"[.\[]", source, maxsplit=1)[0]
    if root == "customer" and source not in CUSTOMER_PATHS and not source.startswith("customer.metadata."):
        return (f"unknown `from` {source!r}: stripe-sf keeps a customer's {', '.join(CUSTOMER_PATHS)} and "
                "customer.metadata.<key>, nothing else (put what you need in the customer's metadata)")
    if root not in PATH_ROOTS:
        return (f"unknown `from` {source!r}: not a computed value ({', '.join(COMPUTED)}), nor a path into the "
                "Stripe object (customer.email, metadata.<key>, items[0].price.nickname, ...)")
    return None


class MappedField(BaseModel):
    """One Salesforce field of the mapping: where its value comes from, and who owns it."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: str | None = Field(None, alias="from", min_length=1, max_length=200)
    value: str | int | float | bool | None = None
    write: WriteMode | None = None

    @model_validator(mode="after")
    def _one_source(self) -> MappedField:
        if self.from_ is not None and self.value is not None:
            raise ValueError("give `from` or `value`, not both")
        problem = from_problem(self.from_) if self.from_ is not None else None
        if problem:
            raise ValueError(problem)
        return self

    @property
    def sourced(self) -> bool:
        """It says what to write (a `from` or a `value`), not only who owns a default field."""
        return self.from_ is not None or self.value is not None


class FieldMapping(BaseModel):
    """`salesforce.mapping`: per object, per Salesforce field API name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    Opportunity: dict[FieldName, MappedField] = Field(default_factory=dict)
    Account: dict[FieldName, MappedField] = Field(default_factory=dict)
    Task: dict[FieldName, MappedField] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _each_field_once(self) -> FieldMapping:
        # Salesforce API names are case-insensitive: `Type` and `type` are one field (YAML's own duplicate keys
        # are refused by the loader).
        for sobject in ("Opportunity", "Account", "Task"):
            seen: dict[str, str] = {}
            for name in self.of(sobject):
                if name.lower() in seen:
                    raise ValueError(f"{sobject}.{name} is listed twice (as {seen[name.lower()]} too): "
                                     "Salesforce field names ignore case")
                seen[name.lower()] = name
        return self

    def of(self, sobject: str) -> dict[str, MappedField]:
        """The mapped fields of `sobject` (empty for an object the mapping does not know)."""
        got: dict[str, MappedField] = getattr(self, sobject, {}) if sobject in ("Opportunity", "Account",
                                                                                  "Task") else {}
        return got

    def paths(self) -> frozenset[str]:
        """Every path into the Stripe object the mapping reads (computed values left out)."""
        return frozenset(f.from_ for sobject in ("Opportunity", "Account", "Task") for f in self.of(sobject).values()
                         if f.from_ is not None and f.from_ not in COMPUTED)

    def reads_customer_email(self) -> bool:
        """Some field is `from: customer.email`: hydration fills in each change's customer email."""
        return CUSTOMER_EMAIL in self.paths()

    def product_items(self) -> frozenset[int]:
        """The items whose Price's Product a path goes through (`items[0].price.product.name`: 0): hydration
        reads their Prices with the Product expanded (an event names the Product by id)."""
        return frozenset(int(m.group(1)) for path in self.paths() if (m := _THROUGH_PRODUCT.match(path)))

    def mode(self, sobject: str, name: str) -> WriteMode:
        """Who owns `name` on `sobject`: the mapping's `write`, else the default."""
        spec = next((f for n, f in self.of(sobject).items() if n.lower() == name.lower()), None)
        return spec.write if spec is not None and spec.write else default_mode(sobject, name)

    def sourced(self) -> bool:
        """Some field of the mapping has a `from`: intents carry what it reads (rules/mapped.py)."""
        return any(f.from_ is not None for sobject in ("Opportunity", "Account", "Task")
                   for f in self.of(sobject).values())

    def read_fields(self, sobject: str) -> tuple[str, ...]:
        """The fields whose Salesforce value a batch reads with its lookups: `if_empty` ones (and an Account's
        `once`, which stripe-sf never creates or wins: written while empty)."""
        modes = ("if_empty", "once") if sobject == "Account" else ("if_empty",)
        return tuple(name for name, f in self.of(sobject).items() if f.write in modes)

    def problems(self, names: FieldNames) -> list[str]:
        """What the mapping asks that cannot be (keys of sync.yaml): a key field owned by anyone but Stripe, a
        field that is neither written by default nor given a `from` or `value`."""
        keys = {("Opportunity", names.subscription_id), ("Opportunity", names.payment_intent_id),
                ("Account", names.customer_id), ("Task", names.task_event_id)}
        out: list[str] = []
        for sobject in ("Opportunity", "Account", "Task"):
            written = {n.lower() for n in default_fields(sobject, names)}
            for name, mapped in self.of(sobject).items():
                where = f"salesforce.mapping.{sobject}.{name}"
                if (sobject, name) in keys and (mapped.sourced or mapped.write not in (None, "always")):
                    out.append(f"{where}: stripe-sf finds records by this field; it is always written as it is")
                elif not mapped.sourced and name.lower() not in written:
                    out.append(f"{where}: stripe-sf does not write {name} by default: give it `from` or `value`")
        return out


def default_fields(sobject: str, names: FieldNames) -> dict[str, str]:
    """The fields stripe-sf writes to `sobject` by default, each with the computed value it holds (the
    default mapping; docs/mapping.md shows it as YAML)."""
    if sobject == "Opportunity":
        out = {"Name": "name", "AccountId": "account_id", "OwnerId": "owner_id", "RecordTypeId": "",
               "StageName": "stage", "CloseDate": "close_date", "Amount": "amount", names.mrr: "mrr",
               names.arr: "arr", names.subscription_id: "subscription_id",
               names.payment_intent_id: "payment_intent_id", names.customer_id: "customer_id",
               "CurrencyIsoCode": "currency"}
        if names.opportunity_refunded:
            out[names.opportunity_refunded] = "refunded"
        return out
    if sobject == "Account":
        out = {names.subscription_status: "status", names.customer_id: "customer_id"}
        if names.account_mrr:
            out[names.account_mrr] = "account_mrr"
        return out
    if sobject == "Task":
        return {f: "" for f in ("Subject", "Description", "Priority", "Status", "ActivityDate", "WhatId",
                                "OwnerId", "WhoId", names.task_event_id)}
    return {}


def default_mode(sobject: str, name: str) -> WriteMode:
    """Who owns a field stripe-sf writes by default."""
    return "once" if name in ONCE_BY_DEFAULT.get(sobject, frozenset()) else "always"


def resolve_path(obj: Mapping[str, Any] | None, path: str,
                 expanded: Mapping[str, Mapping[str, Any]] | None = None) -> Any:
    """The value at `path` in a Stripe object, or None when any step is missing. `items[0]` indexes a list
    object's `data` (Stripe's lists are `{"object": "list", "data": [...]}`). `expanded`: objects by id, read
    by hydration, for a path that goes on through an id the payload holds unexpanded."""
    here: Any = obj
    for part in path.split("."):
        m = _SEGMENT.match(part)
        if isinstance(here, str) and expanded and here in expanded:
            here = expanded[here]
        if m is None or not isinstance(here, Mapping):
            return None
        here = here.get(m.group(1))
        if m.group(2) is not None:
            if isinstance(here, Mapping) and isinstance(here.get("data"), list):
                here = here["data"]
            idx = int(m.group(2))
            here = here[idx] if isinstance(here, list) and idx < len(here) else None
    if isinstance(here, Mapping):
        return here.get("id")  # an expandable field not expanded, or expanded: its id
    return here if isinstance(here, str | int | float | bool) else None


def path_values(paths: frozenset[str], obj: Mapping[str, Any] | None, *, customer_name: str | None,
                customer_metadata: Mapping[str, str] | None, customer_email: str | None = None,
                products: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Each path's value for one change: the Stripe object as the event carries it; the customer's name,
    metadata and email as hydration filled them in (the object names its customer by id unless a list expanded
    it). An email of "" (the customer has none) resolves to nothing. `products`: the Products of the object's
    Prices by id, read by hydration when a path goes through one."""
    out: dict[str, Any] = {}
    customer = obj.get("customer") if obj else None
    expanded = customer if isinstance(customer, Mapping) else {}
    for path in paths:
        if path == "customer.name" and customer_name is not None:
            out[path] = customer_name
        elif path == CUSTOMER_EMAIL and customer_email is not None:
            out[path] = customer_email or None
        elif path.startswith("customer.metadata.") and customer_metadata is not None:
            out[path] = customer_metadata.get(path.split(".", 2)[2])
        elif path.startswith("customer."):
            out[path] = resolve_path(expanded, path.split(".", 1)[1])
        else:
            out[path] = resolve_path(obj, path, products)
    return out


def is_empty(value: Any) -> bool:
    """Salesforce's field holds nothing (null or an empty string)."""
    return value is None or value == ""


@dataclass(frozen=True)
class WriteContext:
    """What decides a record's ownership: whether stripe-sf creates or wins it, and what Salesforce holds."""

    creating: bool  # stripe-sf creates the record with this write
    winning: bool = False  # this write wins the record (its first won event; it was not won in Salesforce)
    current: Mapping[str, Any] | None = None  # Salesforce's values of the fields it read (`if_empty`)
    forced: frozenset[str] = frozenset()  # fields a setting asks stripe-sf to own (salesforce.refunded_stage)


def owned_fields(sobject: str, computed: Mapping[str, Any], mapping: FieldMapping, ctx: WriteContext, *,
                 sources: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The fields to write to one record, and why each field the default or the mapping names is written or
    left alone. `computed`: the default fields this write carries (API name -> value); `sources`: computed
    values and path values by their `from` name."""
    mapped = mapping.of(sobject)
    lowered = {name.lower(): name for name in mapped}
    fields: dict[str, Any] = {}
    for name, value in computed.items():
        if name.lower() not in lowered:
            fields[name] = value
    for name, spec in mapped.items():
        if spec.value is not None:
            fields[name] = spec.value
        elif spec.from_ is not None:
            got = sources.get(spec.from_)
            if got is not None:
                fields[name] = got  # a path that resolves to nothing leaves the field alone, never clears it
        else:
            default = next((v for k, v in computed.items() if k.lower() == name.lower()), None)
            if default is not None:
                fields[name] = default
    out: dict[str, Any] = {}
    why: dict[str, str] = {}
    for name, value in fields.items():
        spec_ = mapped.get(lowered.get(name.lower(), ""))
        mode = (spec_.write if spec_ is not None and spec_.write else None) or default_mode(sobject, name)
        if name in ctx.forced and mode != "never":
            mode = "always"
        if sobject == "Account" and mode == "once":
            mode = "if_empty"  # stripe-sf never creates nor wins an Account: once = the first time it is empty
        verdict = _verdict(mode, name, ctx)
        why[name] = verdict
        if verdict.startswith("written"):
            out[name] = value
    return out, why


def _verdict(mode: WriteMode, name: str, ctx: WriteContext) -> str:
    if mode == "never":
        return "left alone: write: never"
    if mode == "always":
        return "written: always (Stripe owns it)"
    if ctx.creating:
        return f"written: {mode}, the record is created"
    if mode == "once":
        return "written: once, on the win" if ctx.winning else "left alone: once, written when created or won"
    current = (ctx.current or {}).get(name)
    if ctx.current is None or name not in ctx.current:
        return "left alone: if_empty, Salesforce's value was not read"
    return "written: if_empty, Salesforce's field is empty" if is_empty(current) else \
        "left alone: if_empty, Salesforce's field holds a value"
