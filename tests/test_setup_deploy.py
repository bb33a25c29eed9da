"""`stripe-sf setup` against the Salesforce stand-in: plan, deploy, assign, and the refusals of both sides."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest
from simple_salesforce import Salesforce

from stripe_sf_sandbox import scenario
from stripe_sf_sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync import service
from stripe_sf_sync.config import FieldNames, load_config
from stripe_sf_sync.errors import ConfigError, ExitCode, FatalSyncError
from stripe_sf_sync.salesforce.gateway import SalesforceGateway
from stripe_sf_sync.salesforce.org import check_org, field_needs
from stripe_sf_sync.setup.deploy import MetadataDeployer
from stripe_sf_sync.setup.package import metadata_zip
from stripe_sf_sync.setup.run import as_dict, read_plan, run_setup
from tests.conftest import EXAMPLE, since, write_config

API = "62.0"
NAMES = FieldNames(account_csm="CSM__c")
USER = "integration@stripe-sf.sandbox"


@pytest.fixture
def org() -> SalesforceOrg:
    """The tests' awkward org without stripe-sf's custom fields (what `stripe-sf sandbox --empty-org` is to
    start)."""
    return scenario.awkward_org(stripe_sf_fields=False)


def gateway(sf_sb: SalesforceSandbox) -> SalesforceGateway:
    sf = Salesforce(instance_url=sf_sb.instance_url, session_id=sf_sb.org.new_access_token(), session=sf_sb.session(),
                    version=API)
    return SalesforceGateway(sf, sleep=lambda s: None)


def deploys(sf_sb: SalesforceSandbox) -> int:
    return sum(1 for method, path in sf_sb.requests_log if method == "POST" and path.endswith("/deployRequest"))


def test_an_empty_org_is_set_up_once_and_then_passes_the_org_check(sf_sb: SalesforceSandbox, tmp_path: Path) -> None:
    gw = gateway(sf_sb)
    loaded = load_config(write_config(tmp_path / "sync.yaml", **{"won_stage: null": "won_stage: Closed Won"}))
    with pytest.raises(ConfigError, match="Stripe_Subscription_ID__c does not exist"):
        check_org(gw, loaded)
    planned = run_setup(gw, NAMES, api_version=API)
    assert {c.subject for c in planned.plan.changes} == {n.subject for n in field_needs(NAMES)
                                                          if n.subject != "Account.CSM__c"} | {"Stripe_SF_Sync"}
    assert deploys(sf_sb) == 0  # a plan writes nothing

    applied = run_setup(gw, NAMES, api_version=API, apply=True)
    assert applied.validated is not None and applied.validated.check_only and applied.validated.success
    assert applied.deployed is not None and applied.deployed.success and applied.exit_code is ExitCode.OK
    assert {str(c) for c in applied.deployed.components} >= {"CustomField Opportunity.MRR__c: created",
                                                             "CustomField Activity.Stripe_Event_ID__c: created",
                                                             "PermissionSet Stripe_SF_Sync: created"}
    # New fields are invisible to the integration user until the permission set is assigned to it.
    with pytest.raises(ConfigError, match="Stripe_Subscription_ID__c does not exist"):
        check_org(gw, loaded)
    hidden = run_setup(gw, NAMES, api_version=API)
    assert hidden.plan.nothing_to_do and "Opportunity.MRR__c" in hidden.plan.hidden
    assert "field-level security hides them" in hidden.lines()[1]
    assigned = run_setup(gw, NAMES, api_version=API, apply=True, assign=USER)
    assert assigned.assignment is not None and assigned.assignment.created
    assert deploys(sf_sb) == 2  # the first apply's validation and deployment: nothing more

    facts = check_org(gw, loaded)
    assert facts.task_keyed
    again = run_setup(gw, NAMES, api_version=API, apply=True, assign=USER)
    assert again.plan.nothing_to_do and again.deployed is None and not again.assignment.created  # type: ignore[union-attr]
    assert deploys(sf_sb) == 2  # a second apply deploys nothing
    assert again.lines()[0].startswith("Nothing to do")
    assert sf_sb.unexpected_errors == []


def test_unique_is_refused_while_duplicates_exist(sf_sb: SalesforceSandbox) -> None:
    org = sf_sb.org
    gw = gateway(sf_sb)
    run_setup(gw, NAMES, api_version=API, apply=True, assign=USER)
    key = org.schema["Account"]["Stripe_Customer_ID__c"]
    key.unique = False  # what an admin who created the field by hand may have left
    owner = org.integration_user_id
    for name, customer in (("A", "cus_dup"), ("B", "CUS_DUP"), ("C", "cus_one")):
        org.insert("Account", {"Name": name, "OwnerId": owner, "Stripe_Customer_ID__c": customer})
    result = run_setup(gw, NAMES, api_version=API, apply=True)
    [refusal] = result.plan.refusals
    assert refusal.subject == "Account.Stripe_Customer_ID__c"
    assert "'cus_dup' (2 records)" in refusal.problem and "merge or correct" in refusal.fix
    assert result.deployed is None and result.exit_code is ExitCode.CONFIG and not key.unique


def test_a_field_of_another_type_is_refused(sf_sb: SalesforceSandbox) -> None:
    gw = gateway(sf_sb)
    names = FieldNames(account_csm="CSM__c", mrr="Name")  # Opportunity.Name: a Text field
    result = run_setup(gw, names, api_version=API, apply=True, assign=USER)
    assert [r.subject for r in result.plan.refusals] == ["Opportunity.Name"]
    assert result.plan.permission_set is not None  # grants custom fields only: Name is the profile's
    assert "Opportunity.Name" not in {name for name, _, _ in result.plan.permission_set.fields}
    assert result.deployed is not None and result.deployed.success  # the rest was applied
    assert all("Opportunity.Name" not in c.full_name for c in result.deployed.components)
    assert result.exit_code is ExitCode.CONFIG
    assert any(line.startswith("! refused: Opportunity.Name is a string field") for line in result.lines())


def test_the_org_refusing_a_component_deploys_nothing(sf_sb: SalesforceSandbox) -> None:
    org = sf_sb.org
    gw = gateway(sf_sb)
    run_setup(gw, NAMES, api_version=API, apply=True, assign=USER)
    org.schema["Account"]["Stripe_Customer_ID__c"].unique = False
    plan = read_plan(gw, field_needs(NAMES))  # no duplicates yet: Unique is planned
    assert plan.fields and plan.fields[0].unique
    for name in ("A", "B"):  # then someone writes two Accounts with one customer before the deploy
        org.insert("Account", {"Name": name, "OwnerId": org.integration_user_id, "Stripe_Customer_ID__c": "cus_x"})
    outcome = MetadataDeployer(gw).deploy(metadata_zip(plan, API), check_only=True)
    assert outcome.status == "Failed" and not outcome.success
    [failure] = [c for c in outcome.components if not c.success]
    assert failure.full_name == "Account.Stripe_Customer_ID__c" and "duplicate values" in (failure.problem or "")
    assert not org.schema["Account"]["Stripe_Customer_ID__c"].unique


def test_a_user_without_modify_metadata_gets_a_clear_error() -> None:
    with SalesforceSandbox(SalesforceOrg(stripe_sf_fields=False, modify_metadata=False)) as sf_sb:
        gw = gateway(sf_sb)
        assert not run_setup(gw, NAMES, api_version=API).plan.nothing_to_do  # planning needs no admin
        with pytest.raises(ConfigError) as caught:
            run_setup(gw, NAMES, api_version=API, apply=True)
    assert "may not deploy metadata (INSUFFICIENT_ACCESS)" in caught.value.message
    assert "Modify Metadata" in caught.value.hint and "--sfdx" in caught.value.hint
    assert caught.value.exit_code is ExitCode.CONFIG


def test_a_user_who_may_not_assign_permission_sets_gets_a_clear_error(sf_sb: SalesforceSandbox) -> None:
    gw = gateway(sf_sb)
    run_setup(gw, NAMES, api_version=API, apply=True)
    sf_sb.org.metadata.modify_metadata = False  # an integration user running `--assign` itself
    with pytest.raises(ConfigError, match="may not assign permission sets") as caught:
        run_setup(gw, NAMES, api_version=API, assign=USER)
    assert "Modify Metadata" in caught.value.hint


def test_the_wait_for_a_deployment_is_bounded(sf_sb: SalesforceSandbox) -> None:
    gw = gateway(sf_sb)
    plan = read_plan(gw, field_needs(NAMES))
    sf_sb.org.metadata.pending_polls = 2
    slept: list[float] = []
    outcome = MetadataDeployer(gw, sleep=slept.append, poll_s=0.5).deploy(metadata_zip(plan, API), check_only=True)
    assert outcome.success and slept == [0.5, 0.5]
    sf_sb.org.metadata.pending_polls = 100
    now = [0.0]

    def tick(s: float) -> None:
        now[0] += s

    deployer = MetadataDeployer(gw, wait_s=3, poll_s=1, sleep=tick, clock=lambda: now[0])
    with pytest.raises(FatalSyncError, match="still InProgress after 3 s") as caught:
        deployer.deploy(metadata_zip(plan, API), check_only=True)
    assert caught.value.code == "DEPLOY_TIMEOUT" and "Deployment Status" in caught.value.hint


def test_assigning_to_an_unknown_user_is_a_usage_error(sf_sb: SalesforceSandbox) -> None:
    gw = gateway(sf_sb)
    with pytest.raises(ConfigError, match="does not exist yet"):
        run_setup(gw, NAMES, api_version=API, assign=USER)  # nothing applied: no permission set
    run_setup(gw, NAMES, api_version=API, apply=True)
    with pytest.raises(ConfigError, match=r"no Salesforce user has the username 'nobody@example\.com'"):
        run_setup(gw, NAMES, api_version=API, assign="nobody@example.com")


def test_sfdx_writes_the_planned_components_and_deploys_nothing(sf_sb: SalesforceSandbox, tmp_path: Path) -> None:
    result = run_setup(gateway(sf_sb), NAMES, api_version=API, sfdx_dir=tmp_path / "project")
    rel = sorted(p.relative_to(tmp_path / "project").as_posix() for p in result.sfdx_files)
    assert rel[0] == "force-app/main/default/objects/Account/fields/Stripe_Customer_ID__c.field-meta.xml"
    assert rel[-1] == "sfdx-project.json" and len(rel) == len(result.plan.fields) + 2
    assert deploys(sf_sb) == 0


def test_a_sync_after_setup_writes_the_scenario(stripe_sb: StripeSandbox, sf_sb: SalesforceSandbox,
                                                env: service.Environment, org: SalesforceOrg, tmp_path: Path) -> None:
    applied = run_setup(gateway(sf_sb), NAMES, api_version=API, apply=True, assign=USER)
    assert applied.deployed is not None and applied.deployed.success
    sc = scenario.load(stripe_sb, org, now=int(time.time()))
    path = write_config(tmp_path / "sync.yaml")
    service.run_discover(path, env, write=True, example=EXAMPLE)
    summary = service.run_sync(path, env, since=since(sc), dry_run=False, max_events=None)
    # As on the scenario's own org (test_sync_e2e): every event applied but the one that must dead-letter.
    assert summary.events_read == len(sc.events)
    assert summary.dead_lettered == 1 and summary.applied == len(sc.events) - 1
    [acme] = [o for o in org.records("Opportunity") if o["Stripe_Subscription_ID__c"] == sc.subscriptions["acme"]]
    assert Decimal(str(acme["MRR__c"])) == Decimal("999.00") and acme["StageName"] == "Closed Won"
    assert {a["Subscription_Status__c"] for a in org.records("Account")} - {None} == {"active", "canceled"}


def test_existing_fields_are_completed_and_never_narrowed() -> None:
    """An org whose admin made the fields by hand, not quite right: setup adds what they lack, keeps the rest."""
    with SalesforceSandbox(SalesforceOrg()) as sf_sb:
        org = sf_sb.org
        status = org.schema["Account"]["Subscription_Status__c"]
        status.picklist = ["legacy", "active", "canceled"]  # restricted, without most of Stripe's statuses
        key = org.schema["Account"]["Stripe_Customer_ID__c"]
        key.external_id = key.unique = False
        key.length = 50
        gw = gateway(sf_sb)
        result = run_setup(gw, NAMES, api_version=API, apply=True, assign=USER)
        assert result.deployed is not None and result.deployed.success, result.lines()
        assert {str(c) for c in result.deployed.components} >= {
            "CustomField Account.Subscription_Status__c: changed", "CustomField Account.Stripe_Customer_ID__c: changed"}
        assert status.picklist[:3] == ["legacy", "active", "canceled"] and "paused" in status.picklist
        assert status.restricted and (key.external_id, key.unique, key.length) == (True, True, 255)
        again = run_setup(gw, NAMES, api_version=API)
        assert again.plan.nothing_to_do, again.lines()
        dumped = as_dict(again)
        assert dumped["nothing_to_do"] and dumped["exit_code"] == 0 and dumped["deployed"] is None
