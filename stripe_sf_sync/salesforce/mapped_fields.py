"""What `doctor` checks of salesforce.mapping against describe (mapping.py; docs/mapping.md): each mapped field
exists, the integration user may write it as its `write` needs, and its type can hold the value (a picklist
holds the constant, a text field is long enough); and which required field a create would still miss.

Pure: it reads describe's payload (sObject Describe: `createable`, `updateable`, `nillable`,
`defaultedOnCreate`, `picklistValues`, `restrictedPicklist`, `length`). Validation rules are not in describe
(they are Metadata, `ValidationRule`), so a rule a create would miss is found by the first write, as a
FIELD_CUSTOM_VALIDATION_EXCEPTION dead letter naming the rule's message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stripe_sf_sync.fields import FieldNames
from stripe_sf_sync.mapping import COMPUTED, FieldMapping, MappedField, default_fields
from stripe_sf_sync.salesforce.org import OrgProblem

TEXT = frozenset({"string", "textarea", "picklist", "multipicklist", "email", "url", "phone", "combobox"})
NUMBER = frozenset({"currency", "double", "int", "percent"})
# The describe types each computed value fits, and the longest text it may be.
_COMPUTED_TYPES: dict[str, tuple[frozenset[str], int]] = {
    "amount": (NUMBER, 0), "mrr": (NUMBER, 0), "arr": (NUMBER, 0), "refunded": (NUMBER, 0),
    "account_mrr": (NUMBER, 0), "close_date": (frozenset({"date", *TEXT}), 10), "name": (TEXT, 120),
    "stage": (TEXT, 40), "status": (TEXT, 18), "currency": (TEXT, 3), "subscription_id": (TEXT, 255),
    "payment_intent_id": (TEXT, 255), "customer_id": (TEXT, 255), "owner_id": (frozenset({"reference", *TEXT}), 18),
    "account_id": (frozenset({"reference", *TEXT}), 18),
}


@dataclass(frozen=True)
class MappedCheck:
    """One mapped field's verdict: its problems, or what describe says it is."""

    subject: str  # Object.Field
    problems: list[OrgProblem]
    ok: str


def mapped_field_checks(mapping: FieldMapping, by_obj: Mapping[str, Mapping[str, Mapping[str, Any]]],
                        names: FieldNames) -> list[MappedCheck]:
    """Each field the mapping names, checked against describe (`by_obj`: salesforce.org.fields_by_object); then
    each object's required fields a create would leave empty."""
    out: list[MappedCheck] = []
    for sobject in ("Opportunity", "Account", "Task"):
        fields = by_obj.get(sobject, {})
        for name, spec in mapping.of(sobject).items():
            subject = f"{sobject}.{name}"
            f = fields.get(name.lower())
            if f is None:
                out.append(MappedCheck(subject, [OrgProblem(
                    subject, f"{subject} (salesforce.mapping) does not exist, or the integration user cannot see it",
                    f"create it and grant the integration user Edit on it, or correct salesforce.mapping.{sobject}")],
                    ""))
                continue
            out.append(MappedCheck(subject, _field_problems(subject, sobject, spec, f, mapping), _shown(spec)))
    out.extend(_required_on_create(mapping, by_obj, names))
    return out


def _field_problems(subject: str, sobject: str, spec: MappedField, f: Mapping[str, Any],
                    mapping: FieldMapping) -> list[OrgProblem]:
    mode = mapping.mode(sobject, str(f["name"]))
    if mode == "never":
        return []
    problems: list[OrgProblem] = []
    creates = sobject != "Account"  # stripe-sf creates Opportunities and Tasks, and only updates Accounts
    updates = sobject != "Task"  # a Task is created once, never updated
    if creates and not f.get("createable"):
        problems.append(OrgProblem(subject, f"the integration user may not set {subject} on create",
                                   "grant Edit on the field (field-level security), or `write: never`"))
    if updates and mode != "once" and not f.get("updateable"):
        problems.append(OrgProblem(subject, f"the integration user may not edit {subject}",
                                   "grant Edit on the field (field-level security), or `write: once`"))
    problems.extend(_type_problems(subject, spec, f))
    return problems


def _type_problems(subject: str, spec: MappedField, f: Mapping[str, Any]) -> list[OrgProblem]:
    ftype, length = str(f.get("type")), int(f.get("length") or 0)
    if spec.value is not None:
        value = str(spec.value)
        if ftype == "picklist":
            active = {str(p.get("value")) for p in f.get("picklistValues", []) if p.get("active", True)}
            if value not in active:
                return [OrgProblem(subject, f"{value!r} is not a value of the picklist {subject}",
                                   f"add it to the picklist, or use one of: {', '.join(sorted(active))[:200]}",
                                   "error" if f.get("restrictedPicklist") else "warning")]
        elif ftype in TEXT and length and len(value) > length:
            return [OrgProblem(subject, f"{subject} holds {length} characters; the value has {len(value)}",
                               "lengthen the field, or shorten salesforce.mapping's value")]
        elif ftype in NUMBER and not isinstance(spec.value, int | float):
            return [OrgProblem(subject, f"{subject} is a number; {value!r} is not",
                               "give a number, or map a text field")]
        return []
    if spec.from_ in _COMPUTED_TYPES:
        types, longest = _COMPUTED_TYPES[spec.from_]
        if ftype not in types:
            return [OrgProblem(subject, f"{subject} is {ftype}; `from: {spec.from_}` ({COMPUTED[spec.from_]}) "
                               "does not fit it", "map a field of a fitting type")]
        if ftype in TEXT and length and longest and length < longest:
            return [OrgProblem(subject, f"{subject} holds {length} characters; `from: {spec.from_}` may need "
                               f"{longest}", "lengthen the field", "warning")]
    elif spec.from_ is not None and ftype not in TEXT:
        return [OrgProblem(subject, f"{subject} is {ftype}; a path into the Stripe object gives text",
                           "map a Text field", "warning")]
    return []


def _shown(spec: MappedField) -> str:
    source = f"value {spec.value!r}" if spec.value is not None else (f"from {spec.from_}" if spec.from_ else
                                                                     "the default value")
    return f"{source}, write: {spec.write or 'the default'}: the field exists and can hold it"


def _required_on_create(mapping: FieldMapping, by_obj: Mapping[str, Mapping[str, Mapping[str, Any]]],
                        names: FieldNames) -> list[MappedCheck]:
    """Required fields (not nillable, createable, not defaulted on create) that no create of stripe-sf fills."""
    out: list[MappedCheck] = []
    for sobject in ("Opportunity", "Task"):
        written = {n.lower() for n in default_fields(sobject, names)}
        written |= {n.lower() for n, spec in mapping.of(sobject).items() if spec.sourced}
        written -= {n.lower() for n, spec in mapping.of(sobject).items() if spec.write == "never"}
        missing = sorted(str(f["name"]) for f in by_obj.get(sobject, {}).values()
                         if not f.get("nillable", True) and f.get("createable") and not f.get("defaultedOnCreate")
                         and f.get("type") != "boolean" and str(f["name"]).lower() not in written)
        if missing:
            out.append(MappedCheck(f"{sobject} create", [OrgProblem(
                f"{sobject} create", f"a new {sobject} would miss the required "
                f"{'field' if len(missing) == 1 else 'fields'} {', '.join(missing)}",
                f"give each a value in salesforce.mapping.{sobject} (e.g. {missing[0]}: {{value: ...}})")], ""))
    return out
