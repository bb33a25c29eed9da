"""The stand-in's Metadata API: deploys over REST, custom fields, permission sets and field-level security.

What it models (Metadata API Developer Guide, "Deploy Metadata with Apex Testing Using REST" and "Check the
Status of Your Deployment Using REST Resources"; developer.salesforce.com/docs/atlas.en-us.api_meta.meta/
api_meta/meta_rest_deploy.htm and .../meta_rest_deploy_checkstatus.htm):
- `POST /services/data/vXX.X/metadata/deployRequest`, multipart: a `json` part with `deployOptions` (checkOnly,
  rollbackOnError, ...) and a `file` part with the zip (package.xml + components); answers 201 with the id.
- `GET .../metadata/deployRequest/{id}?includeDetails=true`: the DeployResult (status, done, success,
  numberComponentsDeployed/Errors/Total, details.componentSuccesses/componentFailures).
- CustomField components (in `objects/<Object>.object`, only those package.xml names) change the org's schema;
  PermissionSet components (`permissionsets/<Name>.permissionset`) become PermissionSet, FieldPermissions and
  ObjectPermissions records, which SOQL reads as in a real org.
- Field-level security: a field a deploy creates is granted to no one (Salesforce Help, "Field-Level Security":
  new fields are visible only where FLS grants them), so the integration user neither sees it in describe nor
  may name it in SOQL or DML, until a PermissionSetAssignment (an sObject insert with AssigneeId and
  PermissionSetId) gives it a permission set whose fieldPermissions grant it.
- A user without "Modify Metadata Through Metadata API Functions" or "Modify All Data" is refused
  (DeployRequest, Special Access Rules, Tooling API; the SOAP fault reads "INSUFFICIENT_ACCESS: use of the
  Metadata API requires a user with the ModifyAllData or ModifyMetadata permissions").
Problem texts marked "(wording not verified)" are plausible, not copied from a real org.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import TYPE_CHECKING, Any

from .salesforce_server import ApiError, FieldDef

if TYPE_CHECKING:
    from .salesforce_server import SalesforceOrg

NS = "{http://soap.sforce.com/2006/04/metadata}"
# stripe-sf's custom fields in the default org: what `--empty-org` leaves out.
STRIPE_SF_FIELDS = {
    "Account": ("Stripe_Customer_ID__c", "Subscription_Status__c"),
    "Opportunity": ("Stripe_Subscription_ID__c", "Stripe_Payment_Intent_ID__c", "Stripe_Customer_ID__c", "MRR__c",
                    "ARR__c"),
    "Task": ("Stripe_Event_ID__c",),
}
# Metadata API field types -> describe types (Metadata API Developer Guide, "CustomField": FieldType).
FIELD_TYPES = {"Text": "string", "TextArea": "textarea", "LongTextArea": "textarea", "Currency": "currency",
               "Number": "double", "Percent": "percent", "Checkbox": "boolean", "Date": "date", "DateTime": "datetime",
               "Email": "email", "Phone": "phone", "Url": "url", "Picklist": "picklist", "Lookup": "reference"}
# Type changes Salesforce converts stored values for; others are refused while records hold values.
_CONVERTIBLE = {("string", "textarea"), ("string", "picklist"), ("picklist", "string"), ("currency", "double"),
                ("double", "currency"), ("percent", "double"), ("double", "percent")}
# Task and Event custom fields are Activity fields in metadata (`objects/Activity.object`, `Activity.X__c`): the
# Metadata API's convention for activities (not verified against a live org); the stand-in has Tasks only.
_ALIASES = {"activity": "Task"}
_PREFIXES = {"PermissionSet": "0PS", "PermissionSetAssignment": "0Pa", "FieldPermissions": "01k",
             "ObjectPermissions": "110", "DeployRequest": "0Af"}
INSUFFICIENT_ACCESS = ("use of the Metadata API requires a user with the ModifyAllData or ModifyMetadata "
                       "permissions")


@dataclass
class MetadataState:
    """The org's metadata side: deploys by id, the fields whose access FLS decides, the admin switch."""

    modify_metadata: bool = True  # the API user has "Modify Metadata" (or "Modify All Data")
    pending_polls: int = 0  # how many status reads a deploy answers InProgress before its result
    deploys: dict[str, dict[str, Any]] = field(default_factory=dict)
    governed: set[tuple[str, str]] = field(default_factory=set)  # (sObject, field) created by a deploy


def install(org: SalesforceOrg, *, stripe_sf_fields: bool, modify_metadata: bool) -> MetadataState:
    """Add the permission objects to `org`'s schema, drop stripe-sf's fields for an empty org."""
    ps = {"PermissionSet": [FieldDef("Name", "string", length=80, required=True), FieldDef("Label", "string", 80)],
          "PermissionSetAssignment": [FieldDef("AssigneeId", "reference", reference_to=["User"], required=True),
                                      FieldDef("PermissionSetId", "reference", reference_to=["PermissionSet"],
                                               required=True)],
          "FieldPermissions": [FieldDef("ParentId", "reference", reference_to=["PermissionSet"]),
                               FieldDef("SobjectType", "string", length=80), FieldDef("Field", "string", length=255),
                               FieldDef("PermissionsRead", "boolean"), FieldDef("PermissionsEdit", "boolean")],
          "ObjectPermissions": [FieldDef("ParentId", "reference", reference_to=["PermissionSet"]),
                                FieldDef("SobjectType", "string", length=80),
                                *(FieldDef(f"Permissions{v}", "boolean") for v in ("Create", "Read", "Edit"))]}
    for name, defs in ps.items():
        org.schema[name] = {**{f.name: f for f in _system()}, **{f.name: f for f in defs}}
    org.key_prefixes.update(_PREFIXES)
    if not stripe_sf_fields:
        for sobject, names in STRIPE_SF_FIELDS.items():
            for name in names:
                org.schema[sobject].pop(name, None)
    return MetadataState(modify_metadata=modify_metadata)


def _system() -> list[FieldDef]:
    ro: dict[str, Any] = {"createable": False, "updateable": False}
    return [FieldDef("Id", "id", length=18, **ro), FieldDef("IsDeleted", "boolean", **ro),
            FieldDef("CreatedDate", "datetime", **ro), FieldDef("LastModifiedDate", "datetime", **ro),
            FieldDef("SystemModstamp", "datetime", **ro),
            FieldDef("CreatedById", "reference", reference_to=["User"], **ro),
            FieldDef("LastModifiedById", "reference", reference_to=["User"], **ro)]


# ------------------------------------------------------------------ the REST resource


def route(org: SalesforceOrg, method: str, version: str, parts: list[str], params: dict[str, str], body: bytes,
          headers: Any) -> tuple[int, Any]:
    """`metadata/deployRequest[/{id}]`: (HTTP status, JSON body)."""
    state: MetadataState = org.metadata
    if not parts or parts[0] != "deployRequest" or len(parts) > 2:
        raise ApiError(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])
    if not state.modify_metadata:
        raise ApiError(403, [{"errorCode": "INSUFFICIENT_ACCESS", "message": INSUFFICIENT_ACCESS}])
    base = f"/services/data/v{version}/metadata/deployRequest"
    if len(parts) == 1:
        if method != "POST":
            raise ApiError(405, [{"errorCode": "METHOD_NOT_ALLOWED", "message": "Allowed are POST"}])
        options, archive = _multipart(headers.get("Content-Type") or "", body)
        with org._lock:
            deploy_id = org._ids.new(_PREFIXES["DeployRequest"])
            result = Deploy(org, options, archive).run(deploy_id)
            state.deploys[deploy_id] = {"options": options, "result": result, "polls": state.pending_polls}
        pending = {**_counts(result), "status": "Pending", "done": False, "success": False, "details": None}
        return 201, {"id": deploy_id, "url": f"{base}/{deploy_id}", "deployOptions": options, "deployResult": pending}
    if method != "GET":
        raise ApiError(405, [{"errorCode": "METHOD_NOT_ALLOWED", "message": "Allowed are GET"}])
    entry = state.deploys.get(parts[1])
    if entry is None:
        raise ApiError(404, [{"errorCode": "NOT_FOUND", "message": f"No deploy request with id {parts[1]}"}])
    result = dict(entry["result"])
    if entry["polls"] > 0:  # still being deployed: what a client polls through
        entry["polls"] -= 1
        result.update(status="InProgress", done=False, success=False, details={"componentSuccesses": [],
                                                                                 "componentFailures": []})
    if params.get("includeDetails", "").lower() != "true":
        result["details"] = None
    return 200, {"id": parts[1], "url": f"{base}/{parts[1]}", "deployOptions": entry["options"],
                 "deployResult": result}


def _counts(result: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "checkOnly", "rollbackOnError", "ignoreWarnings", "numberComponentsTotal")
    return {k: result[k] for k in keep} | {"numberComponentsDeployed": 0, "numberComponentErrors": 0}


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes]:
    """The `json` part's deployOptions and the `file` part's zip."""
    if "multipart/form-data" not in content_type:
        raise ApiError(400, [{"errorCode": "INVALID_MULTIPART_REQUEST",
                              "message": "The request must be multipart/form-data with json and file parts"}])
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    parts = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
             for p in msg.iter_parts()}
    try:
        options = json.loads(parts["json"] or b"{}").get("deployOptions") or {}
        archive = parts["file"]
    except (KeyError, ValueError, AttributeError):
        raise ApiError(400, [{"errorCode": "INVALID_MULTIPART_REQUEST",
                              "message": "A deploy needs a json part with deployOptions and a file part"}]) from None
    if not isinstance(options, dict) or not isinstance(archive, bytes):
        raise ApiError(400, [{"errorCode": "INVALID_MULTIPART_REQUEST", "message": "Malformed deploy request"}])
    return options, archive


# ------------------------------------------------------------------ one deploy


def _parse(data: bytes) -> ET.Element:
    # Packages come from the tests' own clients on 127.0.0.1, and expat fetches no external entities: the
    # standard parser is enough for a stand-in (the tool itself only writes XML).
    return ET.fromstring(data)  # noqa: S314


def _text(el: ET.Element, name: str) -> str | None:
    child = el.find(NS + name)
    return None if child is None or child.text is None else child.text.strip()


def _flag(el: ET.Element, name: str) -> bool:
    return (_text(el, name) or "").lower() == "true"


@dataclass
class _Component:
    ctype: str
    full_name: str
    file_name: str
    problem: str | None = None
    created: bool = False
    changed: bool = False
    apply: Callable[[], None] | None = None


class Deploy:
    """Validates every component of a zip, then applies them (unless checkOnly, or a failure with
    rollbackOnError, which is the default: Metadata API, DeployOptions)."""

    def __init__(self, org: SalesforceOrg, options: dict[str, Any], archive: bytes) -> None:
        self.org = org
        self.check_only = bool(options.get("checkOnly", False))
        self.rollback = bool(options.get("rollbackOnError", True))
        self.options = options
        self.archive = archive
        self.pending_fields: set[str] = set()  # "Object.Field" deployed by this package

    def run(self, deploy_id: str) -> dict[str, Any]:
        """The finished DeployResult."""
        try:
            files = self._files()
            members = self._members(files)
        except (zipfile.BadZipFile, ET.ParseError, KeyError) as exc:
            return self._result(deploy_id, [], error=f"The deploy package is unreadable: {exc}")
        components = [self._custom_field(files, m) for t, m in members if t == "CustomField"]
        components += [self._permission_set(files, m) for t, m in members if t == "PermissionSet"]
        components += [_Component(t, m, "", problem=f"Not available for deploy for this organization: {t}")
                       for t, m in members if t not in ("CustomField", "PermissionSet")]
        failed = any(c.problem for c in components)
        if not self.check_only and not (failed and self.rollback):
            for c in components:
                if c.problem is None and c.apply is not None:
                    c.apply()
            refresh_access(self.org)
        return self._result(deploy_id, components)

    def _files(self) -> dict[str, bytes]:
        with zipfile.ZipFile(io.BytesIO(self.archive)) as zf:
            return {name.split("/", 1)[1] if name.startswith("unpackaged/") else name: zf.read(name)
                    for name in zf.namelist() if not name.endswith("/")}

    @staticmethod
    def _members(files: dict[str, bytes]) -> list[tuple[str, str]]:
        root = _parse(files["package.xml"])
        return [(_text(t, "name") or "", m.text.strip()) for t in root.findall(NS + "types")
                for m in t.findall(NS + "members") if m.text]

    def _result(self, deploy_id: str, components: list[_Component], error: str | None = None) -> dict[str, Any]:
        ok = [c for c in components if c.problem is None]
        bad = [c for c in components if c.problem is not None]
        rolled_back = bool(bad) and self.rollback
        status = "Failed" if error or (bad and (rolled_back or not ok)) else "SucceededPartial" if bad else "Succeeded"
        common = {"deleted": False, "createdDate": _now(self.org)}
        successes = [{"componentType": "", "fullName": "package.xml", "fileName": "package.xml", "success": True,
                      "created": False, "changed": True, "problem": None, "problemType": None, **common}]
        successes += [{"componentType": c.ctype, "fullName": c.full_name, "fileName": c.file_name, "success": True,
                       "created": c.created and not rolled_back, "changed": c.changed and not rolled_back,
                       "problem": None, "problemType": None, **common} for c in ok]
        failures = [{"componentType": c.ctype, "fullName": c.full_name, "fileName": c.file_name, "success": False,
                     "created": False, "changed": False, "problem": c.problem, "problemType": "Error",
                     "lineNumber": None, "columnNumber": None, **common} for c in bad]
        return {"id": deploy_id, "checkOnly": self.check_only, "rollbackOnError": self.rollback,
                "ignoreWarnings": bool(self.options.get("ignoreWarnings", False)), "status": status, "done": True,
                "success": status == "Succeeded", "numberComponentsTotal": len(components),
                "numberComponentsDeployed": len(ok), "numberComponentErrors": len(bad),
                "numberTestsCompleted": 0, "numberTestsTotal": 0, "numberTestErrors": 0,
                "errorMessage": error, "errorStatusCode": "UNKNOWN_EXCEPTION" if error else None,
                "createdBy": self.org.integration_user_id, "completedDate": _now(self.org),
                "details": {"componentSuccesses": successes, "componentFailures": failures}}

    # ---------------------------------------------------------------- CustomField

    def _custom_field(self, files: dict[str, bytes], member: str) -> _Component:
        sobject, _, name = member.partition(".")
        file_name = f"objects/{sobject}.object"
        c = _Component("CustomField", member, file_name)
        el = None
        if file_name in files:
            el = next((f for f in _parse(files[file_name]).findall(NS + "fields")
                       if _text(f, "fullName") == name), None)
        if el is None:
            # Metadata API's words for a package.xml member without its file.
            c.problem = (f"An object '{member}' of type CustomField was named in package.xml, but was not found in "
                         "zipped directory")
            return c
        schema_name = _sobject(self.org, sobject)
        if schema_name is None:
            c.problem = f"In field: fullName - no CustomObject named {sobject} found"  # (wording not verified)
            return c
        self.pending_fields.add(f"{schema_name}.{name}".lower())
        wanted, problem = self._field_def(name, el)
        if problem or wanted is None:
            c.problem = problem
            return c
        existing = self.org.schema[schema_name].get(name)
        if existing is None:
            c.created = c.changed = True
            c.apply = lambda: self._create(schema_name, wanted)
            return c
        c.problem = self._change_problem(schema_name, existing, wanted)
        c.changed = c.problem is None and _definition(existing) != _definition(wanted)
        c.apply = lambda: _update(self.org, schema_name, existing, wanted)
        return c

    def _field_def(self, name: str, el: ET.Element) -> tuple[FieldDef | None, str | None]:
        if not name.endswith("__c"):
            return None, f"Invalid fullName '{name}': a custom field's name must end in __c"  # (wording not verified)
        mtype = _text(el, "type") or ""
        ftype = FIELD_TYPES.get(mtype)
        if ftype is None:
            return None, f"Invalid type: {mtype or '(none)'}"  # (wording not verified)
        length = int(_text(el, "length") or 0) or None
        if mtype in ("Text", "LongTextArea") and not length:
            return None, "Length is required for this field type"  # (wording not verified)
        fd = FieldDef(name, ftype, length=length, external_id=_flag(el, "externalId"), unique=_flag(el, "unique"),
                      label=_text(el, "label"), case_sensitive=_flag(el, "caseSensitive"))
        if ftype in ("currency", "double", "percent"):
            fd.precision, fd.scale = int(_text(el, "precision") or 18), int(_text(el, "scale") or 0)
        if ftype == "picklist":
            vs = el.find(NS + "valueSet")
            values = [] if vs is None else [_text(v, "fullName") or "" for v in vs.iter(NS + "value")]
            fd.picklist, fd.restricted, fd.length = values, vs is not None and _flag(vs, "restricted"), 255
        if ftype == "reference":
            target = _text(el, "referenceTo")
            if target is None or self.org.sobject_name(target) is None:
                return None, f"Field {name} references an unknown object: {target}"  # (wording not verified)
            fd.reference_to, fd.length = [self.org.sobject_name(target) or target], 18
        return fd, None

    def _change_problem(self, sobject: str, old: FieldDef, new: FieldDef) -> str | None:
        values = [r.get(old.name) for r in self.org._data.get(sobject, {}).values()]
        held = [v for v in values if v not in (None, "", False)]
        if old.type != new.type:
            if "reference" in (old.type, new.type) or (held and (old.type, new.type) not in _CONVERTIBLE):
                # (wording not verified) Salesforce refuses conversions that would lose a lookup or stored values.
                return f"Cannot change type of {sobject}.{old.name} from {old.type} to {new.type}"
        if new.unique and not old.unique:
            keys = [v if new.case_sensitive else str(v).casefold() for v in held]
            if len(keys) != len(set(keys)):
                return (f"Cannot make {sobject}.{old.name} unique: duplicate values exist in this field"
                        )  # (wording not verified)
        if new.length and old.length and new.length < old.length and any(len(str(v)) > new.length for v in held):
            return f"Cannot reduce the length of {sobject}.{old.name}: stored values are longer"  # (not verified)
        return None

    def _create(self, sobject: str, fd: FieldDef) -> None:
        # No one's FLS grants a new field: hidden from the API user until a permission set grants it.
        fd.visible, fd.createable, fd.updateable = False, False, False
        self.org.schema[sobject][fd.name] = fd
        self.org.metadata.governed.add((sobject, fd.name))
        for rec in self.org._data.get(sobject, {}).values():
            rec.setdefault(fd.name, False if fd.type == "boolean" else None)

    # ---------------------------------------------------------------- PermissionSet

    def _permission_set(self, files: dict[str, bytes], member: str) -> _Component:
        file_name = f"permissionsets/{member}.permissionset"
        c = _Component("PermissionSet", member, file_name)
        if file_name not in files:
            c.problem = (f"An object '{member}' of type PermissionSet was named in package.xml, but was not found "
                         "in zipped directory")
            return c
        root = _parse(files[file_name])
        grants = [(_text(f, "field") or "", _flag(f, "readable"), _flag(f, "editable"))
                  for f in root.findall(NS + "fieldPermissions")]
        objects = [(_text(o, "object") or "", _flag(o, "allowCreate"), _flag(o, "allowRead"), _flag(o, "allowEdit"))
                   for o in root.findall(NS + "objectPermissions")]
        grants = [(_field_name(self.org, name), read, edit) for name, read, edit in grants]
        for name, _read, _edit in grants:
            sobject, _, fname = name.partition(".")
            known = _sobject(self.org, sobject)
            if name.lower() not in self.pending_fields and (known is None or fname not in self.org.schema[known]):
                # The form Salesforce reports a grant on a missing field in.
                c.problem = f"In field: field - no CustomField named {name} found"
                return c
        unknown = [o for o, *_ in objects if self.org.sobject_name(o) is None]
        if unknown:
            c.problem = f"In field: object - no CustomObject named {unknown[0]} found"
            return c
        existing = _records(self.org, "PermissionSet", Name=member)
        c.created = c.changed = not existing
        c.apply = lambda: _store_permission_set(self.org, member, _text(root, "label") or member, grants, objects)
        return c


def _sobject(org: SalesforceOrg, name: str) -> str | None:
    return org.sobject_name(_ALIASES.get(name.lower(), name))


def _field_name(org: SalesforceOrg, name: str) -> str:
    """"Activity.X__c" as the Task field it is in the stand-in."""
    sobject, _, fname = name.partition(".")
    return f"{_sobject(org, sobject) or sobject}.{fname}"


def _definition(fd: FieldDef) -> tuple[Any, ...]:
    return (fd.type, fd.length, fd.precision, fd.scale, fd.external_id, fd.unique, fd.picklist, fd.restricted,
            fd.reference_to)


def _update(org: SalesforceOrg, sobject: str, old: FieldDef, new: FieldDef) -> None:
    # A deployed definition replaces the field's: a picklist's values are those listed (Metadata API, ValueSet).
    for attr in ("type", "length", "precision", "scale", "external_id", "unique", "picklist", "restricted",
                 "reference_to", "case_sensitive"):
        setattr(old, attr, getattr(new, attr))
    old.label = new.label or old.label
    org._indexes = {k: v for k, v in org._indexes.items() if k[:2] != (sobject, old.name)}


def _records(org: SalesforceOrg, sobject: str, **equal: Any) -> list[dict[str, Any]]:
    return [r for r in org._data.get(sobject, {}).values() if all(r.get(k) == v for k, v in equal.items())]


def _store_permission_set(org: SalesforceOrg, name: str, label: str, grants: list[tuple[str, bool, bool]],
                          objects: list[tuple[str, bool, bool, bool]]) -> None:
    """The set's records; a deploy adds and changes grants, and removes none (not verified against a real org;
    stripe-sf always sends every grant the set holds)."""
    found = _records(org, "PermissionSet", Name=name)
    ps_id = str(found[0]["Id"]) if found else org.insert("PermissionSet", {"Name": name, "Label": label})
    for fname, read, edit in grants:
        values = {"ParentId": ps_id, "SobjectType": fname.partition(".")[0], "Field": fname,
                  "PermissionsRead": read or edit, "PermissionsEdit": edit}
        _upsert(org, "FieldPermissions", values, ParentId=ps_id, Field=fname)
    for obj, create, read, edit in objects:
        values = {"ParentId": ps_id, "SobjectType": obj, "PermissionsCreate": create,
                  "PermissionsRead": read or create or edit, "PermissionsEdit": edit}
        _upsert(org, "ObjectPermissions", values, ParentId=ps_id, SobjectType=obj)


def _upsert(org: SalesforceOrg, sobject: str, values: dict[str, Any], **key: Any) -> None:
    found = _records(org, sobject, **key)
    if found:
        org.update(sobject, str(found[0]["Id"]), {k: v for k, v in values.items() if k != "ParentId"})
    else:
        org.insert(sobject, values)


def check_assignment(org: SalesforceOrg, rec: dict[str, Any]) -> None:
    """A PermissionSetAssignment insert: refused for a user without "Assign Permission Sets" (here: the same
    switch as Modify Metadata), and for a user who has the set already (wordings not verified)."""
    from .salesforce_server import _fail

    if not org.metadata.modify_metadata:
        raise _fail("INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY", "insufficient access rights on cross-reference id")
    if any(r["Id"] != rec["Id"] for r in _records(org, "PermissionSetAssignment", AssigneeId=rec.get("AssigneeId"),
                                                   PermissionSetId=rec.get("PermissionSetId"))):
        raise _fail("DUPLICATE_VALUE", f"Duplicate PermissionSetAssignment. Assignee: {rec.get('AssigneeId')}; "
                    f"Permission Set: {rec.get('PermissionSetId')}")


def refresh_access(org: SalesforceOrg) -> None:
    """Field-level security and object permissions of the integration user, from the permission sets assigned to
    it: a governed field is visible when a set grants Read, writable when one grants Edit."""
    sets = {r["PermissionSetId"] for r in _records(org, "PermissionSetAssignment", AssigneeId=org.integration_user_id)}
    grants: dict[str, tuple[bool, bool]] = {}
    for r in org._data.get("FieldPermissions", {}).values():
        if r.get("ParentId") in sets:
            read, edit = grants.get(str(r["Field"]).lower(), (False, False))
            grants[str(r["Field"]).lower()] = (read or bool(r.get("PermissionsRead")),
                                               edit or bool(r.get("PermissionsEdit")))
    for sobject, name in org.metadata.governed:
        fd = org.schema[sobject].get(name)
        if fd is not None:
            read, edit = grants.get(f"{sobject}.{name}".lower(), (False, False))
            fd.visible, fd.createable, fd.updateable = read, edit, edit
    for r in org._data.get("ObjectPermissions", {}).values():
        if r.get("ParentId") in sets:
            if r.get("PermissionsCreate"):
                org.no_create.discard(str(r["SobjectType"]))
            if r.get("PermissionsEdit"):
                org.no_edit.discard(str(r["SobjectType"]))


def _now(org: SalesforceOrg) -> str:
    return org.clock().strftime("%Y-%m-%dT%H:%M:%S.000+0000")
