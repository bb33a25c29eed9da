"""What the org must have, checked once a day through describe, and the facts that shape the writes."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from stripe_sf_sync.config import FieldNames, LoadedConfig
from stripe_sf_sync.errors import ConfigError

log = logging.getLogger("stripe_sf_sync")

ORG_CACHE_KEY = "org_describe"
ORG_CACHE_TTL_S = 24 * 3600


@dataclass(frozen=True)
class OrgFacts:
    """What describe told us about the org, cached for a day in state."""

    task_keyed: bool  # Task has the key field: Tasks are looked up by it and created once
    # A multi-currency org's active currencies (upper-case ISO codes, from Opportunity.CurrencyIsoCode's
    # picklist); None for a single-currency org, which has no CurrencyIsoCode field.
    currencies: frozenset[str] | None = None


class Describer(Protocol):
    """The one Salesforce read the org check needs."""

    def describe_many(self, sobjects: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Describe results by sObject name."""


class MetaStore(Protocol):
    """Where the day's facts are kept (the state store)."""

    def get_meta(self, key: str) -> str | None:
        """A stored value."""

    def set_meta(self, key: str, value: str) -> None:
        """Store a value."""


def check_org(describer: Describer, loaded: LoadedConfig) -> OrgFacts:
    """Describe Opportunity, Account and Task; list every missing field or stage as one config error."""
    described = describer.describe_many(["Opportunity", "Account", "Task"])
    by_obj = {name: {f["name"].lower(): f for f in d.get("fields", [])} for name, d in described.items()}
    s = loaded.settings.salesforce
    fields = _field_problems(by_obj, s.fields)
    problems = [*fields, *_stage_problems(s.won_stage or "", by_obj["Opportunity"].get("stagename") or {}),
                *_record_type_problems(loaded, described["Opportunity"].get("recordTypeInfos", []))]
    task_field = by_obj["Task"].get(s.fields.task_event_id.lower())
    problems.extend(_task_field_problems(task_field, s.fields.task_event_id))
    if problems:
        raise ConfigError(problems, source="Salesforce org setup",
                          hint="Create the fields (README: 'Salesforce fields'), or change salesforce.fields in "
                               "the config." if fields else "Run `stripe-sf discover-config --write`, then sync again.")
    _warn_about_task_field(task_field, s.fields.task_event_id)
    currency = by_obj["Opportunity"].get("currencyisocode")
    currencies = None
    if currency is not None:
        currencies = frozenset(str(p["value"]).upper() for p in currency.get("picklistValues", [])
                               if p.get("active", True) and isinstance(p.get("value"), str))
    return OrgFacts(task_keyed=task_field is not None, currencies=currencies)


def _field_problems(by_obj: Mapping[str, Mapping[str, Any]], names: FieldNames) -> list[str]:
    problems: list[str] = []

    def need(obj: str, fname: str, kind: str, *, external: bool = False) -> None:
        f = by_obj[obj].get(fname.lower())
        if f is None:
            problems.append(f"{obj}.{fname} does not exist in the org (create it as {kind})")
        elif external and not f.get("externalId"):
            problems.append(f"{obj}.{fname} must be marked External ID (and Unique)")

    need("Opportunity", names.subscription_id, "Text(255), External ID, Unique", external=True)
    need("Opportunity", names.payment_intent_id, "Text(255), External ID, Unique", external=True)
    need("Opportunity", names.customer_id, "Text(255)")
    need("Opportunity", names.mrr, "Currency(16, 2)")
    need("Opportunity", names.arr, "Currency(16, 2)")
    need("Account", names.customer_id, "Text(255), External ID, Unique")
    need("Account", names.subscription_status, "Picklist or Text(40)")
    if names.account_csm:
        need("Account", names.account_csm, "Lookup(User)")
    return problems


def _stage_problems(won_stage: str, stage_field: Mapping[str, Any]) -> list[str]:
    """StageName takes a picklist value, the stage's API name; describe's `label` is only what people
    see, and may differ after an admin renames the stage (Salesforce Object Reference: OpportunityStage,
    ApiName)."""
    picklist = [p for p in stage_field.get("picklistValues", []) if p.get("active", True)]
    values = [str(p.get("value")) for p in picklist]
    if not values or won_stage in values:
        return []
    by_label = {str(p.get("label")): str(p.get("value")) for p in picklist}
    if won_stage in by_label:
        return [f"salesforce.won_stage {won_stage!r} is the label of the won stage; Salesforce takes its API name, "
                f"{by_label[won_stage]!r} (an earlier stripe-sf stored the label). `stripe-sf discover-config "
                f"--write` repairs sync.yaml"]
    return [f"salesforce.won_stage {won_stage!r} is not an Opportunity stage of this org (API names: "
            f"{', '.join(values)}); `stripe-sf discover-config --write` stores the won stage's API name"]


def _record_type_problems(loaded: LoadedConfig, infos: Sequence[Mapping[str, Any]]) -> list[str]:
    """A record type the integration user may not use fails every Opportunity create (describe's
    `recordTypeInfos[].available`)."""
    rid = loaded.settings.record_type_id()
    if rid is None:
        return []
    name = loaded.settings.record_type_name() or rid
    info = next((i for i in infos if str(i.get("recordTypeId"))[:15] == rid[:15]), None)
    if info is None or not info.get("active", True):
        return [f"salesforce.opportunity_record_type {name!r} ({rid}) is not an active Opportunity record type "
                "of this org; `stripe-sf discover-config --write` lists the current ones"]
    if not info.get("available"):
        return [f"salesforce.opportunity_record_type {name!r} is not available to the integration user, so every "
                "Opportunity it creates would fail; give the user's profile access to it, or run `stripe-sf "
                "discover-config --write` to choose one it may use"]
    return []


def _task_field_problems(task_field: Mapping[str, Any] | None, name: str) -> list[str]:
    """The Task key is looked up with SOQL `IN (...)` and written on create: a filterable, writable Text
    field. Neither External ID nor Unique is needed, since no Task is ever upserted."""
    if task_field is not None and (task_field.get("type") != "string" or not task_field.get("filterable", True)
                                   or not task_field.get("createable", True)):
        return [f"Task.{name} must be a writable Text(255) field (it is {task_field.get('type')}); External ID is "
                "recommended, Unique is not needed"]
    return []


def _warn_about_task_field(task_field: Mapping[str, Any] | None, name: str) -> None:
    if task_field is None:
        log.warning("Task.%s does not exist: Tasks are created without a key, so a rerun after a crash between "
                    "the write and the state commit, a `dlq retry` or a second backfill can create a Task again. "
                    "Create it as Text(255), External ID recommended (Unique is not needed): then each Task is "
                    "created once and never rewritten.", name)
    elif not (task_field.get("externalId") or task_field.get("unique")):
        # Salesforce indexes a custom field only when it is an External ID or Unique: without an index, the
        # per-batch lookup scans every Task of the org.
        log.warning("Task.%s is not indexed: mark it External ID (Unique is not needed) so that looking Tasks "
                    "up by it stays fast in an org with many Tasks.", name)


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
                                                       "currencies": currencies}))
        return self._facts

    def _cached(self) -> OrgFacts | None:
        raw = self._meta.get_meta(ORG_CACHE_KEY)
        if not raw:
            return None
        data = json.loads(raw)
        currencies = data.get("currencies", False)  # False: cached before currencies were learnt
        known = currencies is None or (isinstance(currencies, list) and all(isinstance(c, str) for c in currencies))
        # An older version's entry (no task_keyed, no currencies) is read again from the org.
        if (known and "task_keyed" in data and data.get("key") == self._key
                and self._clock() - data.get("at", 0) < ORG_CACHE_TTL_S):
            return OrgFacts(task_keyed=bool(data["task_keyed"]),
                            currencies=None if currencies is None else frozenset(currencies))
        return None
