"""The plan's components as files: a Metadata API zip (what `setup --apply` deploys, the format `sf project
deploy` sends) or a Salesforce DX source project (`setup --sfdx DIR`, for teams with their own change control).

Formats: Metadata API Developer Guide, "CustomField", "PermissionSet", "Deploying and Retrieving Metadata with
the Zip File" (package.xml plus `objects/<Object>.object` and `permissionsets/<Name>.permissionset`); Salesforce
DX Developer Guide, "Salesforce DX Project Structure and Source Format" (`force-app/main/default/objects/<Object>/
fields/<Field>.field-meta.xml`, `permissionsets/<Name>.permissionset-meta.xml`) and "Salesforce DX Project
Configuration" (`sfdx-project.json`).
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable
from pathlib import Path

from stripe_sf_sync.setup.plan import FieldDefinition, PermissionSetSpec, SetupPlan

NS = "http://soap.sforce.com/2006/04/metadata"
# Task and Event custom fields are defined once, on Activity, in metadata files (Metadata API: "CustomField",
# activities; not verified against a live org). Describe and SOQL keep calling them Task fields.
METADATA_OBJECTS = {"Task": "Activity", "Event": "Activity"}
SFDX_DIR = Path("force-app/main/default")


def metadata_object(sobject: str) -> str:
    """The object a custom field's metadata lives on."""
    return METADATA_OBJECTS.get(sobject, sobject)


def _el(parent: ET.Element, tag: str, text: str | int | bool | None = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = str(text).lower() if isinstance(text, bool) else str(text)
    return child


def _xml(root: ET.Element) -> bytes:
    ET.indent(root, space="    ")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def field_element(spec: FieldDefinition, tag: str, full_name: str) -> ET.Element:
    """A field's definition, its elements in the alphabetical order Salesforce's tools write them in."""
    el = ET.Element(tag, {"xmlns": NS} if tag == "CustomField" else {})
    _el(el, "fullName", full_name)
    if spec.type == "Text":
        _el(el, "caseSensitive", spec.case_sensitive)
    if spec.type != "Lookup":
        _el(el, "externalId", spec.external_id)
    if spec.help_text:
        _el(el, "inlineHelpText", spec.help_text)
    _el(el, "label", spec.label)
    if spec.length is not None and spec.type in ("Text", "LongTextArea", "TextArea"):
        _el(el, "length", spec.length)
    if spec.precision is not None:
        _el(el, "precision", spec.precision)
    if spec.reference_to:
        _el(el, "referenceTo", spec.reference_to)
        _el(el, "relationshipName", spec.name.removesuffix("__c"))
    _el(el, "required", spec.required)
    if spec.scale is not None:
        _el(el, "scale", spec.scale)
    _el(el, "type", spec.type)
    if spec.type == "Text":
        _el(el, "unique", spec.unique)
    if spec.type == "Picklist":
        value_set = _el(el, "valueSet")
        _el(value_set, "restricted", spec.restricted)
        definition = _el(value_set, "valueSetDefinition")
        _el(definition, "sorted", False)
        for value in spec.values:
            v = _el(definition, "value")
            _el(v, "fullName", value)
            _el(v, "default", False)
            _el(v, "label", value)
    return el


def permission_set_xml(ps: PermissionSetSpec) -> bytes:
    """The permission set's file (the same in both formats)."""
    root = ET.Element("PermissionSet", {"xmlns": NS})
    _el(root, "description", "Access the stripe-sf sync needs: its fields, and the objects it writes. Created by "
                             "`stripe-sf setup`.")
    for name, readable, editable in ps.fields:
        fp = _el(root, "fieldPermissions")
        _el(fp, "editable", editable)
        sobject, _, field = name.partition(".")
        _el(fp, "field", f"{metadata_object(sobject)}.{field}")
        _el(fp, "readable", readable or editable)
    _el(root, "hasActivationRequired", False)
    _el(root, "label", ps.label)
    for grant in ps.objects:
        op = _el(root, "objectPermissions")
        _el(op, "allowCreate", grant.create)
        _el(op, "allowDelete", False)
        _el(op, "allowEdit", grant.edit)
        _el(op, "allowRead", grant.read or grant.create or grant.edit)
        _el(op, "modifyAllRecords", False)
        _el(op, "object", grant.sobject)
        _el(op, "viewAllRecords", False)
    return _xml(root)


def package_xml(plan: SetupPlan, api_version: str) -> bytes:
    """package.xml: the manifest of what the zip deploys."""
    root = ET.Element("Package", {"xmlns": NS})
    members = {"CustomField": sorted(f"{metadata_object(s.sobject)}.{s.name}" for s in plan.fields),
               "PermissionSet": [plan.permission_set.name] if plan.permission_set else []}
    for type_name, names in members.items():
        if names:
            types = _el(root, "types")
            for name in names:
                _el(types, "members", name)
            _el(types, "name", type_name)
    _el(root, "version", api_version)
    return _xml(root)


def metadata_files(plan: SetupPlan, api_version: str) -> dict[str, bytes]:
    """The zip's files by path."""
    files = {"package.xml": package_xml(plan, api_version)}
    for obj in sorted({metadata_object(s.sobject) for s in plan.fields}):
        root = ET.Element("CustomObject", {"xmlns": NS})
        for spec in sorted((s for s in plan.fields if metadata_object(s.sobject) == obj), key=lambda s: s.name):
            root.append(field_element(spec, "fields", spec.name))
        files[f"objects/{obj}.object"] = _xml(root)
    if plan.permission_set is not None:
        files[f"permissionsets/{plan.permission_set.name}.permissionset"] = permission_set_xml(plan.permission_set)
    return files


def metadata_zip(plan: SetupPlan, api_version: str) -> bytes:
    """The zip `--apply` deploys."""
    return zip_files(metadata_files(plan, api_version).items())


def zip_files(files: Iterable[tuple[str, bytes]]) -> bytes:
    """A zip of (path, content) pairs, with fixed timestamps so that the same plan gives the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files:
            zf.writestr(zipfile.ZipInfo(path, date_time=(2000, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def sfdx_files(plan: SetupPlan, api_version: str) -> dict[str, bytes]:
    """The same components as a Salesforce DX source project, by path relative to its root."""
    project = {"packageDirectories": [{"path": "force-app", "default": True}], "name": "stripe-sf-setup",
               "namespace": "", "sfdcLoginUrl": "https://login.salesforce.com", "sourceApiVersion": api_version}
    files = {"sfdx-project.json": (json.dumps(project, indent=2) + "\n").encode()}
    for spec in plan.fields:
        path = SFDX_DIR / "objects" / metadata_object(spec.sobject) / "fields" / f"{spec.name}.field-meta.xml"
        files[path.as_posix()] = _xml(field_element(spec, "CustomField", spec.name))
    if plan.permission_set is not None:
        path = SFDX_DIR / "permissionsets" / f"{plan.permission_set.name}.permissionset-meta.xml"
        files[path.as_posix()] = permission_set_xml(plan.permission_set)
    return files


def write_sfdx(plan: SetupPlan, directory: Path, api_version: str) -> list[Path]:
    """Write the project under `directory` (created if need be); the paths written. An existing file of the same
    name is replaced: the directory is meant for this project."""
    written = []
    for rel, data in sfdx_files(plan, api_version).items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written
