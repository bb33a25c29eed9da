"""Send a Metadata API zip through the REST deployRequest resource, wait for its end, read each component's result;
and assign the permission set to a user.

Metadata API Developer Guide, "Deploy Metadata with Apex Testing Using REST" (POST .../metadata/deployRequest,
multipart: a `json` part with deployOptions and a `file` part with the zip; 201 with the request's id) and "Check
the Status of Your Deployment Using REST Resources" (GET .../deployRequest/{id}?includeDetails=true). The guide's
example answers booleans and counts as strings ("false", "10"), so both spellings are read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from simple_salesforce import Salesforce, format_soql
from simple_salesforce.util import exception_handler

from stripe_sf_sync.errors import ConfigError, FatalSyncError
from stripe_sf_sync.salesforce.gateway import SalesforceGateway

DEPLOY_WAIT_S = 600.0  # a deploy of a few fields takes seconds; a busy org's queue may hold it for minutes
POLL_S = 2.0
ADMIN_HINT = ("Run `stripe-sf setup` with an administrator's credentials: the user needs \"Modify Metadata Through "
              "Metadata API Functions\" (or \"Modify All Data\") and \"Customize Application\". Or write the "
              "components with `stripe-sf setup --sfdx DIR` and deploy them through your own change control.")


@dataclass(frozen=True)
class ComponentResult:
    """One component of a deployment: deployed (created or changed), unchanged, or failed with its problem."""

    type: str
    full_name: str
    success: bool
    created: bool = False
    changed: bool = False
    problem: str | None = None

    def __str__(self) -> str:
        if not self.success:
            return f"{self.type} {self.full_name}: failed: {self.problem}"
        state = "created" if self.created else "changed" if self.changed else "unchanged"
        return f"{self.type} {self.full_name}: {state}"


@dataclass(frozen=True)
class DeployOutcome:
    """How a deployment ended."""

    deploy_id: str
    status: str  # Succeeded, SucceededPartial, Failed, Canceled
    check_only: bool
    components: tuple[ComponentResult, ...]
    error: str | None = None  # the deployment's own error (errorMessage), beside its components'

    @property
    def success(self) -> bool:
        """Every component deployed (or validated)."""
        return self.status == "Succeeded"


def _bool(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _list(value: Any) -> list[Mapping[str, Any]]:
    # One component can come as an object rather than a list of one (the SOAP result's shape, kept by some
    # JSON renderings of it).
    items = value if isinstance(value, list) else [value] if isinstance(value, Mapping) else []
    return [i for i in items if isinstance(i, Mapping)]


def outcome_of(deploy_id: str, result: Mapping[str, Any]) -> DeployOutcome:
    """A finished DeployResult as a DeployOutcome. package.xml itself is listed as a component without a type."""
    details = result.get("details") or {}
    components = [
        ComponentResult(str(c.get("componentType")), str(c.get("fullName")), _bool(c.get("success")),
                        _bool(c.get("created")), _bool(c.get("changed")),
                        None if c.get("problem") is None else str(c.get("problem")))
        for c in (*_list(details.get("componentSuccesses")), *_list(details.get("componentFailures")))
        if c.get("componentType")]
    return DeployOutcome(deploy_id, str(result.get("status")), _bool(result.get("checkOnly")), tuple(components),
                         None if result.get("errorMessage") is None else str(result.get("errorMessage")))


class MetadataDeployer:
    """Deployments through the gateway (its retries, session renewal and error classes), each waited for within
    `wait_s`."""

    def __init__(self, gw: SalesforceGateway, *, wait_s: float = DEPLOY_WAIT_S, poll_s: float = POLL_S,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.gw = gw
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.sleep = sleep
        self.clock = clock

    def deploy(self, zipped: bytes, *, check_only: bool) -> DeployOutcome:
        """Start the deployment (rolled back as a whole if any component fails), then poll it to its end."""
        # No testLevel: NoTestRun applies only to development orgs, and the default runs no tests for a package
        # without Apex in production either (Metadata API, DeployOptions: testLevel).
        options = {"deployOptions": {"checkOnly": check_only, "rollbackOnError": True, "singlePackage": True,
                                     "ignoreWarnings": False}}
        files = {"json": (None, json.dumps(options), "application/json"),
                 "file": ("stripe-sf-setup.zip", zipped, "application/zip")}
        # A start retried after a lost answer may start a second, identical deployment: harmless, as the zip
        # only adds what is missing; the one polled is the one whose id came back.
        started = self._call("POST", "metadata/deployRequest", files=files, what="the start of the deployment")
        deploy_id = str(started.get("id"))
        end = self.clock() + self.wait_s
        while True:
            got = self._call("GET", f"metadata/deployRequest/{deploy_id}", params={"includeDetails": "true"},
                             what=f"the status of deployment {deploy_id}")
            result = got.get("deployResult") or {}
            if _bool(result.get("done")):
                return outcome_of(deploy_id, result)
            if self.clock() >= end:
                raise FatalSyncError(
                    f"Salesforce's deployment {deploy_id} is still {result.get('status')} after {self.wait_s:g} s.",
                    code="DEPLOY_TIMEOUT", hint="Follow it in Setup > Deployment Status; when it is done, run "
                    "`stripe-sf setup --plan` again (a second apply deploys only what is still missing).")
            self.sleep(self.poll_s)

    def _call(self, method: str, path: str, *, what: str, **kwargs: Any) -> dict[str, Any]:
        def call(sf: Salesforce) -> Any:
            # No JSON Content-Type (simple-salesforce's default headers): requests writes the multipart one.
            response = sf.session.request(method, sf.base_url + path, timeout=self.gw.attempt_timeout(),
                                          headers={"Authorization": f"Bearer {sf.session_id}"}, **kwargs)
            if response.status_code >= 300:
                exception_handler(response, path)  # raises simple-salesforce's error for the status
            return _json(response)
        try:
            body = self.gw.send(call, what=what, hint="Run `stripe-sf setup --plan` to see what is still missing.")
        except FatalSyncError as exc:
            if exc.code in ("INSUFFICIENT_ACCESS", "INSUFFICIENT_ACCESS_OR_READONLY", "API_DISABLED_FOR_ORG"):
                raise ConfigError([f"the Salesforce user may not deploy metadata ({exc.code})"],
                                  source="Salesforce permissions", hint=ADMIN_HINT) from None
            raise
        if not isinstance(body, dict):
            raise FatalSyncError(f"Salesforce answered {what} with something other than a JSON object.",
                                 code="UNEXPECTED_RESPONSE", hint="Report this with --debug output.")
        return body


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


@dataclass(frozen=True)
class Assignment:
    """The permission set's assignment to a user: made now, or found already."""

    username: str
    user_id: str
    permission_set_id: str
    created: bool

    def __str__(self) -> str:
        verb = "assigned to" if self.created else "was already assigned to"
        return f"PermissionSet {self.permission_set_id}: {verb} {self.username} ({self.user_id})"


def assign_permission_set(gw: SalesforceGateway, permission_set: str, username: str) -> Assignment:
    """Assign `permission_set` (its API name) to the user `username` with a PermissionSetAssignment record (an
    sObject insert of AssigneeId and PermissionSetId; Object Reference, "PermissionSetAssignment"), unless it
    is assigned already."""
    users = gw.query(format_soql("SELECT Id FROM User WHERE Username = {}", username))
    if not users:
        raise ConfigError([f"no Salesforce user has the username {username!r}"], source="invocation",
                          hint="Give the integration user's username (Setup > Users), as it logs in.")
    sets = gw.query(format_soql("SELECT Id FROM PermissionSet WHERE Name = {}", permission_set))
    if not sets:
        raise ConfigError([f"the permission set {permission_set} does not exist yet"], source="invocation",
                          hint="Run `stripe-sf setup --apply` first; it creates the permission set.")
    user_id, set_id = str(users[0]["Id"]), str(sets[0]["Id"])
    found = gw.query(format_soql("SELECT Id FROM PermissionSetAssignment WHERE AssigneeId = {} AND "
                                 "PermissionSetId = {}", user_id, set_id))
    if found:
        return Assignment(username, user_id, set_id, created=False)
    body = json.dumps({"AssigneeId": user_id, "PermissionSetId": set_id})
    try:
        gw.send(lambda sf: sf.restful("sobjects/PermissionSetAssignment/", method="POST", data=body,
                                      timeout=gw.attempt_timeout()),
                what=f"the assignment of {permission_set} to {username}", hint=ADMIN_HINT)
    except FatalSyncError as exc:
        if (exc.code or "").startswith("INSUFFICIENT_ACCESS"):  # "Assign Permission Sets" is missing
            raise ConfigError([f"the Salesforce user may not assign permission sets ({exc.code})"],
                              source="Salesforce permissions", hint=ADMIN_HINT) from None
        raise
    return Assignment(username, user_id, set_id, created=True)
