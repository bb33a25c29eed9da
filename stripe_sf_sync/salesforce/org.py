"""What the org must have, checked once a day through describe, and the facts that shape the writes."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from stripe_sf_sync.config import FieldNames, LoadedConfig
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.fields import configured
from stripe_sf_sync.identity import SalesforceIdentity
from stripe_sf_sync.model import SUBSCRIPTION_STATUSES
from stripe_sf_sync.records import OrgFacts

log = logging.getLogger("stripe_sf_sync")

ORG_CACHE_KEY = "org_describe"
ORG_CACHE_TTL_S = 24 * 3600


# The org's currency: Organization.DefaultCurrencyIsoCode (Object Reference, "Organization":
# developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_organization.htm).
# The SOAP API's getUserInfo gives the same value as orgDefaultCurrencyIsoCode, "applicable only when
# organizationMultiCurrency is false", the currency the API gives records whose currency is not named
# (developer.salesforce.com/docs/platform/api/guide/sforce-api-calls-getuserinfo-getuserinforesult.html).
# Read in the org check's Composite call, so it costs no API call of its own; with the org's Id and whether it is
# a sandbox (Organization.Id, Organization.IsSandbox), the identity a state is bound to (identity.py).
ORG_CURRENCY_SOQL = "SELECT Id, IsSandbox, DefaultCurrencyIsoCode FROM Organization"
ORG_IDENTITY_SOQL = "SELECT Id, IsSandbox FROM Organization"


class Describer(Protocol):
    """The one Salesforce read the org check needs."""

    def describe_many(self, sobjects: Sequence[str], *,
                      queries: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
        """Describe results by sObject name, and the first page of each of `queries` by its name."""


class OrgReader(Describer, Protocol):
    """The org check's reads, and one SOQL query (the org's identity when describe is not read)."""

    def query(self, soql: str) -> list[dict[str, Any]]:
        """Every record of a SOQL query."""


class MetaStore(Protocol):
    """Where the day's facts are kept (the state store)."""

    def get_meta(self, key: str) -> str | None:
        """A stored value."""

    def set_meta(self, key: str, value: str) -> None:
        """Store a value."""


Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class OrgProblem:
    """One thing the org lacks for this config: what is at fault, what is wrong, and the fix."""

    subject: str  # the field (Object.Field), picklist, stage, record type or sObject at fault
    problem: str
    fix: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.problem} ({self.fix})"


@dataclass(frozen=True)
class FieldNeed:
    """What stripe-sf needs of one configured field (the README's table 'The Salesforce fields the org
    needs'): its type, what it writes to it, and its role as a key."""

    sobject: str
    name: str
    kind: str  # how to create it
    types: frozenset[str]  # describe `type`s that hold its values
    writes: tuple[str, ...] = ()  # "create", "update": the field-level security it needs
    # upsert: an Opportunity upsert key, which must be External ID, and Unique (an upsert on a non-Unique
    # External ID needs "View All Data"; REST API, "Upsert a Record Using an External ID");
    # match: looked up by SOQL, where an External ID (indexed) and Unique (one Account per customer) help;
    # task: the Task key, which must be a filterable Text field, External ID recommended for the index.
    key: Literal["upsert", "match", "task"] | None = None
    optional: bool = False  # a missing field is a warning, not an error
    holds_status: bool = False  # takes Stripe's subscription statuses

    @property
    def subject(self) -> str:
        """Object.Field."""
        return f"{self.sobject}.{self.name}"


def field_needs(names: FieldNames, *, creates_accounts: bool = False) -> list[FieldNeed]:
    """Every configured field, with what stripe-sf needs of it (stripe_sf_sync.fields.FIELDS, in its order; with
    `creates_accounts`, identity.create_accounts, the fields of the Accounts it creates)."""
    return [FieldNeed(spec.sobject, name, spec.kind, spec.types, spec.writes, spec.role, optional=spec.optional,
                      holds_status=spec.holds_status)
            for spec, name in configured(names, creates_accounts=creates_accounts)]


FieldsByObject = Mapping[str, Mapping[str, Mapping[str, Any]]]


def fields_by_object(described: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Mapping[str, Any]]]:
    """Describe's fields of each sObject, by lower-case name (API names are case-insensitive)."""
    return {name: {f["name"].lower(): f for f in d.get("fields", [])} for name, d in described.items()}


def check_org(describer: Describer, loaded: LoadedConfig) -> OrgFacts:
    """Describe Opportunity, Account and Task; list every missing field or stage as one config error."""
    described = describer.describe_many(["Opportunity", "Account", "Task"], queries={"Organization": ORG_CURRENCY_SOQL})
    by_obj = fields_by_object(described)
    s = loaded.settings.salesforce
    fields = field_problems(by_obj, s.fields, creates_accounts=loaded.settings.identity.create_accounts)
    problems = [*fields, *stage_problems(s.won_stage or "", by_obj["Opportunity"].get("stagename") or {}),
                *refunded_stage_problems(s.refunded_stage, by_obj["Opportunity"].get("stagename") or {}),
                *record_type_problems(loaded, described["Opportunity"].get("recordTypeInfos", []))]
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ConfigError([str(p) for p in errors], source="Salesforce org setup",
                          hint="Create the fields (docs/salesforce-fields.md), or change salesforce.fields in "
                               "the config." if any(p.severity == "error" for p in fields)
                          else "Run `stripe-sf discover-config --write`, then sync again.")
    for p in problems:
        log.warning("%s. %s", p.problem, p.fix[:1].upper() + p.fix[1:] + ".")
    task_field = by_obj["Task"].get(s.fields.task_event_id.lower())
    return currency_facts(described, task_keyed=task_field is not None)


def currency_facts(described: Mapping[str, Mapping[str, Any]], *, task_keyed: bool = True) -> OrgFacts:
    """The org's currencies: a multi-currency org's active ones (Opportunity.CurrencyIsoCode's picklist), and
    its own currency (the Organization query, see ORG_CURRENCY_SOQL)."""
    currency = fields_by_object({"Opportunity": described.get("Opportunity", {})})["Opportunity"].get(
        "currencyisocode")
    currencies = None
    if currency is not None:
        currencies = frozenset(str(p["value"]).upper() for p in currency.get("picklistValues", [])
                               if p.get("active", True) and isinstance(p.get("value"), str))
    return OrgFacts(task_keyed=task_keyed, currencies=currencies, currency=org_currency(described.get("Organization")),
                    org=org_identity(described.get("Organization")))


def org_identity(page: Mapping[str, Any] | None) -> SalesforceIdentity | None:
    """The org's Id and whether it is a sandbox, from a query of Organization's Id and IsSandbox, or None."""
    records = (page or {}).get("records") or []
    first = records[0] if records and isinstance(records[0], Mapping) else {}
    org_id = first.get("Id")
    if not isinstance(org_id, str) or not org_id.startswith("00D") or "IsSandbox" not in first:
        return None
    return SalesforceIdentity(org_id, bool(first["IsSandbox"]))


def org_currency(page: Mapping[str, Any] | None) -> str | None:
    """The org's currency from the `SELECT DefaultCurrencyIsoCode FROM Organization` result, or None."""
    records = (page or {}).get("records") or []
    code = records[0].get("DefaultCurrencyIsoCode") if records and isinstance(records[0], Mapping) else None
    return code.upper() if isinstance(code, str) and len(code) == 3 else None


def field_problems(by_obj: FieldsByObject, names: FieldNames, *, thorough: bool = False,
                   creates_accounts: bool = False) -> list[OrgProblem]:
    """What is wrong with the configured fields. What a run cannot do without (a missing field, an upsert
    key that is no External ID, a Task key that cannot be filtered or written) is checked by every sync;
    `thorough` adds what `stripe-sf doctor` checks too: types, Unique, field-level security, and the
    subscription statuses the status field accepts."""
    return [p for need in field_needs(names, creates_accounts=creates_accounts)
            for p in need_problems(need, by_obj, thorough=thorough)]


def need_problems(need: FieldNeed, by_obj: FieldsByObject, *, thorough: bool = False) -> list[OrgProblem]:
    """What is wrong with one configured field (see `field_problems`)."""
    f = by_obj.get(need.sobject, {}).get(need.name.lower())
    return _missing(need) if f is None else _field_need_problems(need, f, thorough=thorough)


def _missing(need: FieldNeed) -> list[OrgProblem]:
    if need.key == "task":
        return [OrgProblem(need.subject, f"{need.subject} does not exist: Tasks are created without a key, so a "
                           "rerun after a crash between the write and the state commit, a `dlq retry` or a second "
                           "backfill can create a Task again",
                           "create it as Text(255), External ID recommended (Unique is not needed): then each "
                           "Task is created once and never rewritten", "warning")]
    return [OrgProblem(need.subject, f"{need.subject} does not exist in the org", f"create it as {need.kind}")]


def _field_need_problems(need: FieldNeed, f: Mapping[str, Any], *, thorough: bool) -> list[OrgProblem]:
    subject, ftype = need.subject, str(f.get("type"))
    if need.key == "task" and (ftype != "string" or not f.get("filterable", True) or not f.get("createable", True)):
        # Looked up with SOQL `IN (...)` and written on create; no Task is ever upserted, so neither External
        # ID nor Unique is needed.
        return [OrgProblem(subject, f"{subject} must be a writable Text(255) field (it is {ftype})",
                           "External ID is recommended, Unique is not needed")]
    if need.key == "upsert" and not f.get("externalId"):
        return [OrgProblem(subject, f"{subject} must be marked External ID and Unique: it is the upsert key of new "
                           "Opportunities", "tick External ID and Unique on the field")]
    problems: list[OrgProblem] = []
    if need.key == "task" and not (f.get("externalId") or f.get("unique")):
        # Salesforce indexes a custom field only when it is an External ID or Unique: without an index, the
        # per-batch lookup scans every Task of the org.
        problems.append(OrgProblem(subject, f"{subject} is not indexed, so looking Tasks up by it is slow in an "
                                   "org with many Tasks", "mark it External ID (Unique is not needed)", "warning"))
    if not thorough:
        return problems
    if ftype not in need.types:
        return [OrgProblem(subject, f"{subject} is a {ftype} field, which cannot hold what stripe-sf writes",
                           f"make it {need.kind}, or name another field under salesforce.fields")]
    if need.types == frozenset({"reference"}) and "User" not in (f.get("referenceTo") or []):
        problems.append(OrgProblem(subject, f"{subject} does not look up a User", "make it Lookup(User)"))
    if need.key == "upsert" and not f.get("unique"):
        problems.append(OrgProblem(subject, f"{subject} is an External ID but not Unique: an upsert by it needs "
                                   "the integration user to have View All Data, and two Opportunities could share "
                                   "it", "tick Unique on the field"))
    if need.key == "match" and not f.get("externalId"):
        problems.append(OrgProblem(subject, f"{subject} is not an External ID, so it is not indexed and matching "
                                   "Accounts by it scans every Account", "tick External ID (and Unique) on the field",
                                   "warning"))
    elif need.key == "match" and not f.get("unique"):
        problems.append(OrgProblem(subject, f"{subject} is not Unique: two Accounts may carry the same Stripe "
                                   "customer, and events then go to either", "tick Unique on the field", "warning"))
    for verb, flag in (("create", "createable"), ("update", "updateable")):
        if verb in need.writes and not f.get(flag, True):
            problems.append(OrgProblem(subject, f"the integration user cannot {verb} {subject} (field-level "
                                       "security)", "make the field editable for its profile or a permission set"))
    if need.holds_status:
        problems.extend(status_value_problems(subject, f))
    return problems


def status_value_problems(subject: str, f: Mapping[str, Any]) -> list[OrgProblem]:
    """The subscription status field must take every status Stripe has (Stripe API reference: the
    Subscription object, `status`): a restricted picklist refuses a value it lacks
    (INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST), a text field one longer than its length."""
    statuses = sorted(SUBSCRIPTION_STATUSES)
    if f.get("type") == "picklist":
        values = {str(p.get("value")) for p in f.get("picklistValues", []) if p.get("active", True)}
        missing = [s for s in statuses if s not in values]
        if not missing:
            return []
        if f.get("restrictedPicklist"):
            return [OrgProblem(subject, f"{subject} is a restricted picklist without {', '.join(missing)}, so an "
                               "Account whose subscription turns to it cannot be written",
                               f"add the value{'s' if len(missing) > 1 else ''} {', '.join(missing)} to the picklist")]
        return [OrgProblem(subject, f"{subject} is a picklist without {', '.join(missing)}: Salesforce stores them, "
                           "as values outside the list", f"add {', '.join(missing)} to the picklist", "warning")]
    longest = max(statuses, key=len)
    length = int(f.get("length") or 0)
    if length < len(longest):
        return [OrgProblem(subject, f"{subject} holds {length} characters, too few for the status {longest!r}",
                           "make it Text(40)")]
    return []


def object_access_problems(described: Mapping[str, Mapping[str, Any]]) -> list[OrgProblem]:
    """What the integration user must be able to do (describe's sObject `createable`/`updateable` reflect
    its profile and permission sets): create and edit Opportunities, edit Accounts (stripe-sf never
    creates one), create Tasks (never edited: a Task is created once)."""
    needed = {"Opportunity": ("create", "edit"), "Account": ("edit",), "Task": ("create",)}
    problems = []
    for sobject, verbs in needed.items():
        d = described.get(sobject, {})
        missing = [v for v in verbs if not d.get("createable" if v == "create" else "updateable", False)]
        if missing:
            what = " and ".join(missing)
            problems.append(OrgProblem(sobject, f"the integration user cannot {what} {sobject} records",
                                       f"give its profile or a permission set {what.title()} on {sobject}"))
    return problems


def stage_problems(won_stage: str, stage_field: Mapping[str, Any]) -> list[OrgProblem]:
    """StageName takes a picklist value, the stage's API name; describe's `label` is only what people
    see, and may differ after an admin renames the stage (Salesforce Object Reference: OpportunityStage,
    ApiName)."""
    picklist = [p for p in stage_field.get("picklistValues", []) if p.get("active", True)]
    values = [str(p.get("value")) for p in picklist]
    if not values or won_stage in values:
        return []
    by_label = {str(p.get("label")): str(p.get("value")) for p in picklist}
    subject = f"won stage {won_stage!r}"
    if won_stage in by_label:
        return [OrgProblem(subject, f"salesforce.won_stage {won_stage!r} is the label of the won stage; Salesforce "
                           f"takes its API name, {by_label[won_stage]!r}; an earlier stripe-sf stored the label",
                           "`stripe-sf discover-config --write` repairs sync.yaml")]
    return [OrgProblem(subject, f"salesforce.won_stage {won_stage!r} is not an Opportunity stage of this org (API "
                       f"names: {', '.join(values)})", "`stripe-sf discover-config --write` stores the won stage's API "
                       "name")]


def refunded_stage_problems(stage: str | None, stage_field: Mapping[str, Any]) -> list[OrgProblem]:
    """`salesforce.refunded_stage`, when set, must be an active stage's API name, as the won stage must: else
    every fully refunded payment's write fails (a restricted picklist)."""
    picklist = [p for p in stage_field.get("picklistValues", []) if p.get("active", True)]
    values = [str(p.get("value")) for p in picklist]
    if stage is None or not values or stage in values:
        return []
    by_label = {str(p.get("label")): str(p.get("value")) for p in picklist}
    hint = (f"set it to the stage's API name, {by_label[stage]!r}" if stage in by_label
            else f"set it to one of {', '.join(values)}, or to null to keep the won stage")
    return [OrgProblem(f"refunded stage {stage!r}",
                       f"salesforce.refunded_stage {stage!r} is not the API name of an active Opportunity stage of "
                       "this org", hint)]


def won_stage_problems(won_stage: str, won: Sequence[tuple[str, str]]) -> list[OrgProblem]:
    """A stage of the org that is not an active won and closed one would leave every Opportunity open:
    `won` is (API name, label) of each active won stage (OpportunityStage: IsWon, IsClosed)."""
    if won_stage in {api for api, _ in won}:
        return []
    names = ", ".join(api for api, _ in won) or "none"
    return [OrgProblem(f"won stage {won_stage!r}", f"salesforce.won_stage {won_stage!r} is not an active won and "
                       f"closed stage (the org's: {names})", "`stripe-sf discover-config --write` stores the won "
                       "stage's API name")]


def record_type_problems(loaded: LoadedConfig, infos: Sequence[Mapping[str, Any]]) -> list[OrgProblem]:
    """A record type the integration user may not use fails every Opportunity create (describe's
    `recordTypeInfos[].available`)."""
    rid = loaded.settings.record_type_id()
    if rid is None:
        return []
    name = loaded.settings.record_type_name() or rid
    subject = f"record type {name!r}"
    info = next((i for i in infos if str(i.get("recordTypeId"))[:15] == rid[:15]), None)
    if info is None or not info.get("active", True):
        return [OrgProblem(subject, f"salesforce.opportunity_record_type {name!r} ({rid}) is not an active "
                           "Opportunity record type of this org", "`stripe-sf discover-config --write` lists the "
                           "current ones")]
    if not info.get("available"):
        return [OrgProblem(subject, f"salesforce.opportunity_record_type {name!r} is not available to the "
                           "integration user, so every Opportunity it creates would fail", "give the user's profile "
                           "access to it, or run `stripe-sf discover-config --write` to choose one it may use")]
    return []


class OrgCheck:
    """The org's facts for a run: from state when checked within the day for the same config, else from
    describe (one Composite call), which is then kept in state."""

    def __init__(self, loaded: LoadedConfig, meta: MetaStore, clock: Callable[[], float]) -> None:
        self._loaded = loaded
        self._meta = meta
        self._clock = clock
        self._facts: OrgFacts | None = None
        self.described = False  # describe was read in this run (so the facts are as fresh as can be)
        s = loaded.settings
        self._key = f"{s.salesforce.won_stage}|{s.record_type_id()}|{s.salesforce.fields.model_dump_json()}"
        if s.identity.create_accounts and s.salesforce.fields.stripe_account:
            self._key += "|creates-accounts"  # the created Accounts' field is then needed (CREATED_ACCOUNT_FIELDS)

    def facts(self, describer: Describer, *, refresh: bool = False) -> OrgFacts:
        """The facts, checking the org (and raising its config error) when the cache cannot answer."""
        if self._facts is not None and not refresh:
            return self._facts
        cached = None if refresh else self._cached()
        if cached is not None:
            self._facts = cached
            return cached
        self._facts = check_org(describer, self._loaded)
        self.described = True
        currencies = None if self._facts.currencies is None else sorted(self._facts.currencies)
        self._meta.set_meta(ORG_CACHE_KEY, json.dumps({"key": self._key, "at": self._clock(),
                                                       "task_keyed": self._facts.task_keyed,
                                                       "currencies": currencies,
                                                       "currency": self._facts.currency}))
        return self._facts

    def identity(self, reader: OrgReader) -> SalesforceIdentity | None:
        """The org this run reaches: from the org check's Composite call when this run describes the org (the
        first run, then once a day), else from one query of Organization."""
        if self._facts is None and self._cached() is None:
            self.facts(reader)  # describes now: the org's Id comes in the same call
        if self._facts is not None and self._facts.org is not None and self.described:
            return self._facts.org
        return org_identity({"records": reader.query(ORG_IDENTITY_SOQL)})

    def _cached(self) -> OrgFacts | None:
        raw = self._meta.get_meta(ORG_CACHE_KEY)
        if not raw:
            return None
        data = json.loads(raw)
        currencies = data.get("currencies", False)  # False: cached before currencies were learnt
        known = currencies is None or (isinstance(currencies, list) and all(isinstance(c, str) for c in currencies))
        # An older version's entry (no task_keyed, no currencies, no currency) is read again from the org.
        if (known and "task_keyed" in data and "currency" in data and data.get("key") == self._key
                and self._clock() - data.get("at", 0) < ORG_CACHE_TTL_S):
            currency = data["currency"] if isinstance(data["currency"], str) else None
            return OrgFacts(task_keyed=bool(data["task_keyed"]),
                            currencies=None if currencies is None else frozenset(currencies), currency=currency)
        return None
