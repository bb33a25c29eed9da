"""What `stripe-sf setup` would change in the org: pure, from the config's field needs and what the org says.

The fields come from `salesforce.org.field_needs` (the one list of what stripe-sf writes and matches on); this
module only turns each need's `kind` into a Metadata API definition and compares it with describe. Setup never
deletes, never changes a field's type and never narrows one: what it cannot do safely becomes a Refusal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from stripe_sf_sync.model import SUBSCRIPTION_STATUSES
from stripe_sf_sync.salesforce.org import FieldNeed, FieldsByObject

PERMISSION_SET = "Stripe_SF_Sync"
PERMISSION_SET_LABEL = "Stripe SF Sync"
# Stripe's subscription statuses in the order of its API reference (Subscription object, `status`).
STATUS_ORDER = ("active", "trialing", "past_due", "canceled", "unpaid", "incomplete", "incomplete_expired", "paused")
# Describe types -> Metadata API field types (Metadata API Developer Guide, "CustomField": FieldType).
METADATA_TYPES = {"string": "Text", "textarea": "LongTextArea", "currency": "Currency", "double": "Number",
                  "picklist": "Picklist", "reference": "Lookup", "boolean": "Checkbox"}


@dataclass(frozen=True)
class FieldDefinition:
    """A custom field's complete Metadata API definition (a deploy replaces the field's definition with it)."""

    sobject: str
    name: str
    type: str  # Metadata API type: Text, Currency, Picklist, Lookup, ...
    label: str
    length: int | None = None
    precision: int | None = None
    scale: int | None = None
    external_id: bool = False
    unique: bool = False
    case_sensitive: bool = False
    values: tuple[str, ...] = ()  # a picklist's values
    restricted: bool = False
    reference_to: str | None = None
    required: bool = False
    help_text: str | None = None  # kept from the existing field: a deploy without it would drop it

    @property
    def subject(self) -> str:
        """Object.Field."""
        return f"{self.sobject}.{self.name}"


@dataclass(frozen=True)
class ObjectGrant:
    """What the permission set allows on one sObject."""

    sobject: str
    create: bool = False
    read: bool = True
    edit: bool = False


# The object permissions the sync needs: it creates and edits Opportunities, edits Accounts (never creates one),
# creates Tasks (never edits one) and reads Contacts.
OBJECT_GRANTS = (ObjectGrant("Opportunity", create=True, edit=True), ObjectGrant("Account", edit=True),
                 ObjectGrant("Task", create=True), ObjectGrant("Contact"))


@dataclass(frozen=True)
class PermissionSetSpec:
    """The permission set as it must be deployed: every grant it already has, and those the sync needs."""

    name: str
    label: str
    fields: tuple[tuple[str, bool, bool], ...]  # (Object.Field, readable, editable)
    objects: tuple[ObjectGrant, ...]


@dataclass(frozen=True)
class ExistingPermissionSet:
    """What the org's permission set grants (FieldPermissions and ObjectPermissions), or `exists=False`."""

    exists: bool = False
    label: str = PERMISSION_SET_LABEL
    fields: Mapping[str, tuple[bool, bool]] = field(default_factory=dict)  # Object.Field -> (read, edit)
    objects: Mapping[str, ObjectGrant] = field(default_factory=dict)  # by sObject


@dataclass(frozen=True)
class Change:
    """One change setup makes."""

    kind: Literal["create_field", "update_field", "permission_set"]
    subject: str
    description: str


@dataclass(frozen=True)
class Refusal:
    """What setup will not do, and what a person can do instead."""

    subject: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.problem} ({self.fix})"


@dataclass(frozen=True)
class SetupPlan:
    """The changes (and the definitions to deploy for them) and the refusals."""

    changes: tuple[Change, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    fields: tuple[FieldDefinition, ...] = ()  # the complete definition of every field to create or update
    permission_set: PermissionSetSpec | None = None  # set when the permission set must be created or extended
    # Fields the permission set grants (so they exist) that describe does not show: field-level security hides
    # them from the user running setup. Nothing to deploy; the integration user needs the set assigned.
    hidden: tuple[str, ...] = ()

    @property
    def nothing_to_do(self) -> bool:
        """Neither a change nor a refusal."""
        return not self.changes and not self.refusals

    @property
    def deploys(self) -> bool:
        """Whether applying sends a deployment."""
        return bool(self.fields) or self.permission_set is not None


def label_of(api_name: str) -> str:
    """"Stripe_Subscription_ID__c" -> "Stripe Subscription ID"."""
    return api_name.removesuffix("__c").replace("_", " ")


_KIND = re.compile(r"^(Text|Currency|Lookup|Picklist)(?:\(([^)]*)\))?(?:,| or |$)")


def field_spec(need: FieldNeed) -> FieldDefinition:
    """The definition setup creates for `need`, read from its `kind` ("Text(255), External ID, Unique",
    "Currency(16, 2)", "Picklist or Text(40)", "Lookup(User)"). The Task key gets External ID (indexed) and no
    Unique: whether an Activity field can be Unique is not confirmed (api-facts §12)."""
    m = _KIND.match(need.kind)
    if m is None:
        raise ValueError(f"setup cannot create a field of kind {need.kind!r} ({need.subject})")
    mtype, args = m.group(1), [a.strip() for a in (m.group(2) or "").split(",") if a.strip()]
    spec = FieldDefinition(need.sobject, need.name, mtype, label_of(need.name),
                     external_id="External ID" in need.kind or need.key == "task", unique="Unique" in need.kind)
    if mtype == "Text":
        return replace(spec, length=int(args[0]))
    if mtype == "Currency":
        # "Currency(16, 2)": 16 digits before the point and 2 after, which the Metadata API says as precision 18
        # (all digits) and scale 2 (CustomField: precision, scale).
        return replace(spec, precision=int(args[0]) + int(args[1]), scale=int(args[1]))
    if mtype == "Lookup":
        return replace(spec, reference_to=args[0])
    values = (*STATUS_ORDER, *sorted(SUBSCRIPTION_STATUSES - set(STATUS_ORDER))) if need.holds_status else ()
    return replace(spec, values=values, restricted=True)


def text_alternative(need: FieldNeed) -> int | None:
    """The length of the Text alternative a need accepts ("Picklist or Text(40)" -> 40), else None."""
    m = re.search(r"\bText\((\d+)\)", need.kind)
    return int(m.group(1)) if m else None


def needed_grants(needs: Sequence[FieldNeed]) -> dict[str, tuple[bool, bool]]:
    """Object.Field -> (read, edit) the integration user needs: edit where stripe-sf writes the field. Custom
    fields only: a standard field named in the config (say Opportunity.Name) is the profile's business, and
    a required one takes no field permissions at all."""
    return {need.subject: (True, bool(need.writes)) for need in needs if need.name.endswith("__c")}


def make_plan(needs: Sequence[FieldNeed], described: FieldsByObject, existing: ExistingPermissionSet, *,
              duplicates: Mapping[str, Sequence[tuple[str, int]]] | None = None) -> SetupPlan:
    """Compare what `needs` require with describe's fields (`fields_by_object`) and the permission set.
    `duplicates`: for each existing field that would become Unique (Object.Field), its values held by more than
    one record, with their counts (see `unique_candidates`)."""
    changes: list[Change] = []
    refusals: list[Refusal] = []
    specs: list[FieldDefinition] = []
    hidden: list[str] = []
    granted = {name.lower() for name in existing.fields}
    for need in needs:
        f = described.get(need.sobject, {}).get(need.name.lower())
        wanted = field_spec(need)
        if f is None and need.subject.lower() in granted:
            hidden.append(need.subject)  # a FieldPermissions row exists only for a field that exists
            continue
        if f is None and not need.name.endswith("__c"):
            refusals.append(Refusal(need.subject, f"{need.subject} does not exist, and setup creates custom fields "
                                    "only (their API names end in __c)", "correct the name under salesforce.fields"))
            continue
        if f is None:
            specs.append(wanted)
            changes.append(Change("create_field", need.subject, f"create {need.subject} as {describe_spec(wanted)}"))
            continue
        spec, what, refused = compare_field(need, wanted, f, (duplicates or {}).get(need.subject, ()))
        refusals.extend(refused)
        if spec is not None:
            specs.append(spec)
            changes.append(Change("update_field", need.subject, f"{need.subject}: {'; '.join(what)}"))
    permission_set, grant_change = plan_permission_set(needs, existing)
    if grant_change is not None:
        changes.append(grant_change)
    return SetupPlan(tuple(changes), tuple(refusals), tuple(specs), permission_set, tuple(hidden))


def describe_spec(spec: FieldDefinition) -> str:
    """"Text(255), External ID, Unique", "Picklist (restricted) of active, trialing, ..."."""
    if spec.type == "Text":
        base = f"Text({spec.length})"
    elif spec.type == "Currency":
        base = f"Currency({(spec.precision or 18) - (spec.scale or 0)}, {spec.scale})"
    elif spec.type == "Lookup":
        base = f"Lookup({spec.reference_to})"
    else:
        base = f"Picklist ({'restricted' if spec.restricted else 'unrestricted'}) of {', '.join(spec.values)}"
    flags = [flag for flag, on in (("External ID", spec.external_id), ("Unique", spec.unique)) if on]
    return ", ".join([base, *flags])


def unique_candidates(needs: Sequence[FieldNeed], described: FieldsByObject) -> list[FieldNeed]:
    """The existing fields setup would make Unique: their duplicates must be counted first."""
    out = []
    for need in needs:
        f = described.get(need.sobject, {}).get(need.name.lower())
        if f is not None and field_spec(need).unique and not f.get("unique") and f.get("type") == "string":
            out.append(need)
    return out


def compare_field(need: FieldNeed, wanted: FieldDefinition, f: Mapping[str, Any], duplicates: Sequence[tuple[str, int]]
                  ) -> tuple[FieldDefinition | None, list[str], list[Refusal]]:
    """The existing field's definition with what it lacks added (None: nothing to add), what that adds, and what
    setup refuses to do to it."""
    ftype, subject = str(f.get("type")), need.subject
    if ftype not in need.types or (wanted.type == "Lookup" and wanted.reference_to not in (f.get("referenceTo") or [])):
        return None, [], [Refusal(subject, f"{subject} is a {ftype} field, but stripe-sf needs {need.kind}",
                                  "setup never changes a field's type: change it in Setup, or name another field "
                                  "under salesforce.fields")]
    if ftype == "picklist":
        return _compare_picklist(subject, wanted, f)
    if ftype != "string":
        return None, [], []  # a Currency or Number, or a Lookup(User): nothing setup adds
    return _compare_text(need, wanted, f, duplicates)


def current_spec(sobject: str, f: Mapping[str, Any]) -> FieldDefinition:
    """An existing text or picklist field's definition as describe tells it."""
    ftype = str(f.get("type"))
    values = tuple(str(p.get("value")) for p in f.get("picklistValues", []) if p.get("active", True))
    return FieldDefinition(sobject, str(f["name"]), METADATA_TYPES.get(ftype, ftype), str(f.get("label") or f["name"]),
                     length=None if ftype == "picklist" else int(f.get("length") or 0) or None,
                     external_id=bool(f.get("externalId")), unique=bool(f.get("unique")),
                     case_sensitive=bool(f.get("caseSensitive")), values=values,
                     restricted=bool(f.get("restrictedPicklist")), required=f.get("nillable") is False,
                     help_text=str(f["inlineHelpText"]) if f.get("inlineHelpText") else None)


def _compare_picklist(subject: str, wanted: FieldDefinition, f: Mapping[str, Any]
                      ) -> tuple[FieldDefinition | None, list[str], list[Refusal]]:
    current = current_spec(subject.partition(".")[0], f)
    missing = [v for v in wanted.values if v not in current.values]
    if not missing:
        return None, [], []
    if not current.restricted:
        return None, [], [Refusal(subject, f"{subject} is a picklist that is not restricted, and lacks "
                                  f"{', '.join(missing)}", "setup neither restricts a picklist nor extends an "
                                  "unrestricted one: add the values in Setup (or restrict it there); the sync "
                                  "writes every status either way")]
    # A deployed valueSet replaces the field's values (Metadata API, ValueSet): send the old ones and the new.
    merged = replace(current, values=current.values + tuple(missing))
    return merged, [f"add the picklist value{'s' if len(missing) > 1 else ''} {', '.join(missing)}"], []


def _compare_text(need: FieldNeed, wanted: FieldDefinition, f: Mapping[str, Any], duplicates: Sequence[tuple[str, int]]
                  ) -> tuple[FieldDefinition | None, list[str], list[Refusal]]:
    subject = need.subject
    current = current_spec(need.sobject, f)
    spec, what, refusals = current, [], []
    length = wanted.length if wanted.type == "Text" else text_alternative(need)
    if length and (current.length or 0) < length:
        spec = replace(spec, length=length)
        what.append(f"widen from {current.length} to {length} characters")
    if wanted.external_id and not current.external_id:
        spec = replace(spec, external_id=True)
        what.append("mark it External ID")
    if wanted.unique and not current.unique:
        if duplicates:
            shown = ", ".join(f"{value!r} ({count} records)" for value, count in duplicates[:10])
            more = f" and {len(duplicates) - 10} more" if len(duplicates) > 10 else ""
            refusals.append(Refusal(subject, f"{subject} cannot be made Unique: {len(duplicates)} value"
                                    f"{'s are' if len(duplicates) > 1 else ' is'} held by several records: "
                                    f"{shown}{more}", "merge or correct those records, then run setup again"))
        else:
            spec = replace(spec, unique=True)
            what.append("mark it Unique")
    return (spec if what else None), what, refusals


def plan_permission_set(needs: Sequence[FieldNeed], existing: ExistingPermissionSet
                        ) -> tuple[PermissionSetSpec | None, Change | None]:
    """The permission set to deploy (what it grants and what the sync needs, never less) and its change; (None,
    None) when it grants everything already."""
    fields = {k.lower(): (k, *v) for k, v in needed_grants(needs).items()}
    had_fields = {k.lower(): (k, *v) for k, v in existing.fields.items()}
    missing = [k for k, (_, read, edit) in fields.items() if not _covers(had_fields.get(k), read, edit)]
    missing_objects = [g.sobject for g in OBJECT_GRANTS if not _covers_object(existing.objects.get(g.sobject), g)]
    if existing.exists and not missing and not missing_objects:
        return None, None
    merged_fields = dict(had_fields)
    for key, (name, read, edit) in fields.items():
        had = merged_fields.get(key, (name, False, False))
        merged_fields[key] = (had[0], had[1] or read or edit, had[2] or edit)
    merged_objects = dict(existing.objects)
    for grant in OBJECT_GRANTS:
        was = merged_objects.get(grant.sobject, ObjectGrant(grant.sobject, read=False))
        merged_objects[grant.sobject] = ObjectGrant(grant.sobject, was.create or grant.create, was.read or grant.read,
                                                    was.edit or grant.edit)
    spec = PermissionSetSpec(PERMISSION_SET, existing.label, tuple(sorted(merged_fields.values())),
                             tuple(sorted(merged_objects.values(), key=lambda g: g.sobject)))
    verb = "extend" if existing.exists else "create"
    detail = f"access to {len(missing)} field{'s' if len(missing) != 1 else ''}"
    if missing_objects:
        detail += f", and access to {', '.join(missing_objects)}"
    return spec, Change("permission_set", PERMISSION_SET, f"{verb} the permission set {PERMISSION_SET}: {detail}")


def _covers(have: tuple[str, bool, bool] | None, read: bool, edit: bool) -> bool:
    return have is not None and (have[1] or not read) and (have[2] or not edit)


def _covers_object(have: ObjectGrant | None, want: ObjectGrant) -> bool:
    return have is not None and all(getattr(have, v) or not getattr(want, v) for v in ("create", "read", "edit"))
