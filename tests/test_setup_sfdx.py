"""`stripe-sf setup --sfdx` output, checked with Salesforce's own tooling: the Salesforce CLI's converter (`sf project
convert source`, offline: no org, no network) turns the DX project into Metadata API format, and that must hold the
same components as the zip `setup --apply` deploys; and the other way (`sf project convert mdapi`), the zip turned
into source format must be the DX project's files.

The CLI is Node.js software, installed for CI by `.ci/sf-cli/install.sh` into `.ci-sf-cli/` (or named by
$STRIPE_SF_SF_CLI). Without it these tests are skipped, unless STRIPE_SF_REQUIRE_SF_CLI=1 (as `.ci/run` sets):
then they fail, so that CI cannot pass without the check."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from stripe_sf_sync.config import DEFAULT_SF_API_VERSION
from stripe_sf_sync.setup.package import SFDX_DIR, metadata_zip, write_sfdx
from stripe_sf_sync.setup.plan import PERMISSION_SET, ExistingPermissionSet, SetupPlan, make_plan, needed_grants
from tests.test_setup_plan import NEEDS, full_set, org_with

NS = "{http://soap.sforce.com/2006/04/metadata}"
INSTALLED_SF = Path(__file__).resolve().parents[1] / ".ci-sf-cli" / "node_modules" / ".bin" / "sf"
# Elements whose children's order means something to Salesforce: a picklist's values are shown in file order.
# Everywhere else (fields in an .object file, grants in a permission set, members in package.xml) it does not.
ORDERED = {"valueSetDefinition"}

Canonical = tuple[str, tuple[tuple[str, str], ...], str, tuple["Canonical", ...]]


def sf_cli() -> Path:
    """The Salesforce CLI's `sf`; skipped (failed under STRIPE_SF_REQUIRE_SF_CLI=1) when it or Node.js is missing."""
    path = Path(os.environ.get("STRIPE_SF_SF_CLI") or INSTALLED_SF)
    problem = None
    if not path.exists():
        problem = f"no Salesforce CLI at {path} (bash .ci/sf-cli/install.sh installs it)"
    elif shutil.which("node") is None:
        problem = "Node.js (node) is not on PATH"
    if problem is None:
        return path
    if os.environ.get("STRIPE_SF_REQUIRE_SF_CLI") == "1":
        pytest.fail(f"the Salesforce CLI is required (STRIPE_SF_REQUIRE_SF_CLI=1): {problem}", pytrace=False)
    pytest.skip(f"Salesforce CLI tests skipped: {problem}")


def sf_env(home: Path) -> dict[str, str]:
    """An environment for an offline run: a throwaway home (no org, no stored auth), no telemetry, no update check."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SF_", "SFDX_", "XDG_"))}
    env.update(HOME=str(home), SF_DISABLE_TELEMETRY="true", SFDX_DISABLE_TELEMETRY="true",
               SF_DISABLE_AUTOUPDATE="true", SF_AUTOUPDATE_DISABLE="true", SF_SKIP_NEW_VERSION_CHECK="true",
               SF_USE_GENERIC_UNIX_KEYCHAIN="true", SF_HIDE_RELEASE_NOTES="true")
    return env


def run_sf(sf: Path, args: list[str], project: Path, home: Path) -> None:
    """Run `sf` offline in the DX project `project` (its commands need one); fail with its output on an error."""
    done = subprocess.run([str(sf), *args, "--json"], cwd=project, env=sf_env(home), capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, f"sf {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    assert json.loads(done.stdout)["status"] == 0, done.stdout


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def convert(sf: Path, project: Path, out: Path, home: Path) -> dict[str, bytes]:
    """`sf project convert source` on the DX project: the Metadata API files it writes, by path under `out`."""
    run_sf(sf, ["project", "convert", "source", "--root-dir", "force-app", "--output-dir", str(out)], project, home)
    return files_under(out)


def convert_back(sf: Path, zipped: dict[str, bytes], project: Path, tmp: Path, home: Path) -> dict[str, bytes]:
    """`sf project convert mdapi` on the zip's files: the source files it writes, by path under their package
    directory's `main/default`."""
    for path, data in zipped.items():
        (tmp / "mdapi" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "mdapi" / path).write_bytes(data)
    out = tmp / "source"
    run_sf(sf, ["project", "convert", "mdapi", "--root-dir", str(tmp / "mdapi"), "--output-dir", str(out)],
           project, home)
    return files_under(out / "main" / "default")


def unzipped(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def parse(data: bytes) -> ET.Element:
    return ET.fromstring(data)  # noqa: S314 - our own output, and Salesforce's converter's


def canonical(el: ET.Element) -> Canonical:
    """An element as Salesforce reads it: tag, attributes, text without surrounding whitespace, and children,
    sorted unless their order matters."""
    children = tuple(canonical(c) for c in el)
    tag = el.tag.removeprefix(NS)
    if tag not in ORDERED:
        children = tuple(sorted(children))
    return tag, tuple(sorted(el.attrib.items())), (el.text or "").strip(), children


def components(files: dict[str, bytes]) -> dict[str, object]:
    """What a Metadata API package deploys: package.xml's members and version, each CustomField by
    "Object.Field", the rest of each object file, and each permission set."""
    out: dict[str, object] = {}
    package = parse(files["package.xml"])
    out["package.xml members"] = {t.findtext(NS + "name"): sorted(m.text or "" for m in t.findall(NS + "members"))
                                  for t in package.findall(NS + "types")}
    out["package.xml version"] = package.findtext(NS + "version")
    for path, data in files.items():
        root = parse(data)
        if path.startswith("objects/") and path.endswith(".object"):
            obj = path.removeprefix("objects/").removesuffix(".object")
            for field in root.findall(NS + "fields"):
                out[f"CustomField {obj}.{field.findtext(NS + 'fullName')}"] = canonical(field)
                root.remove(field)
            out[f"CustomObject {obj} (without its fields)"] = canonical(root)
        elif path != "package.xml":
            out[path] = canonical(root)
    return out


def check_same_as_zip(plan: SetupPlan, tmp_path: Path) -> dict[str, object]:
    """Write `plan` as a DX project, convert it with Salesforce's CLI, and compare with the zip `--apply` sends;
    then the other way: the zip converted to source format is our project."""
    sf = sf_cli()
    project, home = tmp_path / "project", tmp_path / "home"
    home.mkdir()
    write_sfdx(plan, project, DEFAULT_SF_API_VERSION)
    converted = convert(sf, project, tmp_path / "converted", home)
    zipped = unzipped(metadata_zip(plan, DEFAULT_SF_API_VERSION))
    assert sorted(converted) == sorted(zipped)
    ours, salesforces = components(zipped), components(converted)
    assert salesforces == ours
    source = convert_back(sf, zipped, project, tmp_path, home)
    ours_source = files_under(project / SFDX_DIR)
    # Salesforce also writes each object's file, empty here: a DX project needs none to add fields to an object.
    for path in set(source) - set(ours_source):
        assert re.fullmatch(r"objects/(\w+)/\1\.object-meta\.xml", path), path
        assert canonical(parse(source.pop(path))) == ("CustomObject", (), "", ())
    assert {p: canonical(parse(d)) for p, d in source.items()} == {
        p: canonical(parse(d)) for p, d in ours_source.items()}
    return ours


def test_an_empty_orgs_project_converts_to_the_zip_apply_sends(tmp_path: Path) -> None:
    plan = make_plan(NEEDS, {}, ExistingPermissionSet())
    found = check_same_as_zip(plan, tmp_path)
    members = found["package.xml members"]
    assert isinstance(members, dict) and len(members["CustomField"]) == len(NEEDS)
    assert found["package.xml version"] == DEFAULT_SF_API_VERSION
    # Text with External ID and Unique, Currency, a restricted picklist, a lookup, and a field on Activity.
    for name in ("Opportunity.Stripe_Subscription_ID__c", "Opportunity.MRR__c", "Account.Subscription_Status__c",
                 "Account.CSM__c", "Activity.Stripe_Event_ID__c"):
        assert f"CustomField {name}" in found


def test_changed_fields_and_an_extended_permission_set_convert_to_the_zip_apply_sends(tmp_path: Path) -> None:
    values = [{"value": v, "active": True} for v in ("legacy", "active", "canceled")]
    org = org_with(Account__Stripe_Customer_ID__c={"unique": False, "externalId": False, "label": "Stripe Cust",
                                                   "inlineHelpText": "Set by billing", "nillable": False},
                   Account__Subscription_Status__c={"picklistValues": values})
    grants = dict(needed_grants(NEEDS))
    grants["Account.Other__c"] = (True, True)  # granted by someone else: kept
    existing = ExistingPermissionSet(True, "Ours", grants, {"Opportunity": full_set().objects["Opportunity"]})
    plan = make_plan(NEEDS, org, existing, duplicates={"Account.Stripe_Customer_ID__c": []})
    assert {s.subject for s in plan.fields} == {"Account.Stripe_Customer_ID__c", "Account.Subscription_Status__c"}
    assert plan.permission_set is not None and plan.permission_set.label == "Ours"
    found = check_same_as_zip(plan, tmp_path)
    assert {"CustomField Account.Stripe_Customer_ID__c", f"permissionsets/{PERMISSION_SET}.permissionset"} <= set(found)
