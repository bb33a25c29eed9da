"""`run_setup`: read the org, plan, and then write the Salesforce DX project, deploy, or assign, as asked. The CLI
command (to come) parses its options, calls this once and renders the result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from simple_salesforce import format_soql

from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.salesforce.gateway import SalesforceGateway
from stripe_sf_sync.salesforce.org import FieldNeed, FieldsByObject, field_needs, fields_by_object
from stripe_sf_sync.setup.deploy import Assignment, DeployOutcome, MetadataDeployer, assign_permission_set
from stripe_sf_sync.setup.package import metadata_zip, write_sfdx
from stripe_sf_sync.setup.plan import (
    PERMISSION_SET,
    ExistingPermissionSet,
    ObjectGrant,
    SetupPlan,
    make_plan,
    unique_candidates,
)


@dataclass(frozen=True)
class SetupResult:
    """What setup found and did, for the CLI to print."""

    plan: SetupPlan
    validated: DeployOutcome | None = None  # the checkOnly deployment
    deployed: DeployOutcome | None = None  # the deployment itself
    assignment: Assignment | None = None
    sfdx_files: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> bool:
        """A refusal, or a deployment that did not succeed."""
        return bool(self.plan.refusals) or any(o is not None and not o.success
                                               for o in (self.validated, self.deployed))

    @property
    def exit_code(self) -> ExitCode:
        """CONFIG when something is left for a person to do, else OK."""
        return ExitCode.CONFIG if self.failed else ExitCode.OK

    def lines(self) -> list[str]:
        """The result in plain lines: each change, each refusal, each component's result."""
        out = ["Nothing to do: the org has every field and grant stripe-sf needs."] if self.plan.nothing_to_do else []
        out += [f"- {c.description}" for c in self.plan.changes]
        out += [f"! refused: {r}" for r in self.plan.refusals]
        if self.plan.hidden:
            out.append(f"note: {', '.join(self.plan.hidden)} exist but field-level security hides them from this "
                       f"user; the permission set {PERMISSION_SET} grants them: assign it to the integration user "
                       "(--assign USERNAME)")
        for outcome in (self.validated, self.deployed):
            if outcome is not None:
                verb = "Validation" if outcome.check_only else "Deployment"
                out.append(f"{verb} {outcome.deploy_id}: {outcome.status}" + (f" ({outcome.error})" if outcome.error
                                                                             else ""))
                out += [f"  {c}" for c in outcome.components]
        if self.validated is not None and not self.validated.success:
            out.append("Nothing was deployed: the validation failed. Fix what it names, then run setup again.")
        if self.assignment is not None:
            out.append(str(self.assignment))
        out += [f"wrote {p}" for p in self.sfdx_files]
        return out


def as_dict(result: SetupResult) -> dict[str, Any]:
    """The result for `--json`: the changes, the refusals, each deployment's components, the assignment."""
    def outcome(o: DeployOutcome | None) -> dict[str, Any] | None:
        return None if o is None else {"id": o.deploy_id, "status": o.status, "check_only": o.check_only,
                                       "error": o.error, "components": [asdict(c) for c in o.components]}
    return {"nothing_to_do": result.plan.nothing_to_do, "changes": [asdict(c) for c in result.plan.changes],
            "refusals": [asdict(r) for r in result.plan.refusals], "hidden": list(result.plan.hidden),
            "validated": outcome(result.validated), "deployed": outcome(result.deployed),
            "assignment": None if result.assignment is None else asdict(result.assignment),
            "sfdx_files": [str(p) for p in result.sfdx_files], "exit_code": int(result.exit_code)}


def run_setup(gw: SalesforceGateway, names: FieldNames, *, api_version: str, apply: bool = False,
              assign: str | None = None, sfdx_dir: Path | None = None,
              deployer: MetadataDeployer | None = None, creates_accounts: bool = False) -> SetupResult:
    """Plan; then, as asked, write the plan's components as a Salesforce DX project under `sfdx_dir`, deploy them
    (validated with checkOnly first; the refused fields are left alone, the rest is applied), and assign the
    permission set to the user `assign`. A plan with nothing to do deploys nothing."""
    plan = read_plan(gw, field_needs(names, creates_accounts=creates_accounts))
    result = SetupResult(plan)
    if sfdx_dir is not None:
        result = replace(result, sfdx_files=tuple(write_sfdx(plan, sfdx_dir, api_version)))
    if apply and plan.deploys:
        deployer = deployer or MetadataDeployer(gw)
        zipped = metadata_zip(plan, api_version)
        result = replace(result, validated=deployer.deploy(zipped, check_only=True))
        if not result.validated or not result.validated.success:
            return result  # nothing deployed: the validation names what the org refuses
        result = replace(result, deployed=deployer.deploy(zipped, check_only=False))
        if not result.deployed or not result.deployed.success:
            return result
    if assign is not None:
        result = replace(result, assignment=assign_permission_set(gw, PERMISSION_SET, assign))
    return result


# The permission set's grants (Object Reference: PermissionSet, FieldPermissions, ObjectPermissions).
_SET_SOQL = format_soql("SELECT Id, Label FROM PermissionSet WHERE Name = {}", PERMISSION_SET)
_FIELDS_SOQL = format_soql("SELECT Field, PermissionsRead, PermissionsEdit FROM FieldPermissions "
                           "WHERE Parent.Name = {}", PERMISSION_SET)
_OBJECTS_SOQL = format_soql("SELECT SobjectType, PermissionsCreate, PermissionsRead, PermissionsEdit "
                            "FROM ObjectPermissions WHERE Parent.Name = {}", PERMISSION_SET)


def read_plan(gw: SalesforceGateway, needs: Sequence[FieldNeed]) -> SetupPlan:
    """Describe the objects and read the permission set in one Composite call, count the duplicates of each field
    that would become Unique, and plan."""
    sobjects = list(dict.fromkeys(n.sobject for n in needs))
    got = gw.describe_many(sobjects, queries={"set": _SET_SOQL, "fields": _FIELDS_SOQL, "objects": _OBJECTS_SOQL})
    described = fields_by_object({s: got[s] for s in sobjects})
    existing = existing_permission_set(got.get("set"), got.get("fields"), got.get("objects"))
    duplicates = {n.subject: duplicate_values(gw, n, described) for n in unique_candidates(needs, described)}
    return make_plan(needs, described, existing, duplicates=duplicates)


def existing_permission_set(ps: dict[str, Any] | None, fields: dict[str, Any] | None,
                            objects: dict[str, Any] | None) -> ExistingPermissionSet:
    """The permission set's grants from the three queries' first pages (a set holds far fewer than 2,000)."""
    records = (ps or {}).get("records") or []
    if not records:
        return ExistingPermissionSet()
    grants = {str(r["Field"]): (bool(r.get("PermissionsRead")), bool(r.get("PermissionsEdit")))
              for r in (fields or {}).get("records") or [] if r.get("Field")}
    objs = {str(r["SobjectType"]): ObjectGrant(str(r["SobjectType"]), bool(r.get("PermissionsCreate")),
                                               bool(r.get("PermissionsRead")), bool(r.get("PermissionsEdit")))
            for r in (objects or {}).get("records") or [] if r.get("SobjectType")}
    return ExistingPermissionSet(True, str(records[0].get("Label") or PERMISSION_SET), grants, objs)


def duplicate_values(gw: SalesforceGateway, need: FieldNeed, described: FieldsByObject) -> list[tuple[str, int]]:
    """The values of `need`'s field that more than one record holds, most frequent first, counted by Salesforce
    (SOQL and SOSL Reference, "GROUP BY", "HAVING"): one row per duplicated value, however many records."""
    name = str(described[need.sobject][need.name.lower()]["name"])
    rows = gw.query(format_soql("SELECT {f:literal}, COUNT(Id) n FROM {o:literal} WHERE {f:literal} != null "
                                "GROUP BY {f:literal} HAVING COUNT(Id) > 1", f=name, o=need.sobject))
    found = [(str(r.get(name)), int(r.get("n") or 0)) for r in rows]
    return sorted(found, key=lambda vn: (-vn[1], vn[0]))
