"""`stripe-sf setup` through the CLI, against the stand-ins: from an empty org to a correct first sync (issue 24's
"Done when"), the refusal of a user who may not deploy, and the options that ask for different things."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stripe_sf_sandbox import scenario
from stripe_sf_sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox
from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode

from .conftest import since, write_config

USER = "integration@stripe-sf.sandbox"


@pytest.fixture
def org() -> SalesforceOrg:
    """What `stripe-sf sandbox --empty-org` serves: the awkward org without stripe-sf's custom fields."""
    return scenario.awkward_org(stripe_sf_fields=False)


def deploys(sf_sb: SalesforceSandbox) -> int:
    return sum(1 for method, path in sf_sb.requests_log if method == "POST" and path.endswith("/deployRequest"))


def test_an_empty_org_is_set_up_then_synced(tmp_path: Path, runner: CliRunner, cli_env: dict[str, str],
                                            sf_sb: SalesforceSandbox, sc: scenario.Scenario) -> None:
    org = sf_sb.org
    cfg = write_config(tmp_path / "sync.yaml")
    assert runner.invoke(app, ["discover-config", "--config", str(cfg), "--write"], env=cli_env).exit_code == 0
    doctor = runner.invoke(app, ["doctor", "--config", str(cfg)], env=cli_env)
    assert doctor.exit_code == ExitCode.CONFIG and "Stripe_Subscription_ID__c" in doctor.output

    planned = runner.invoke(app, ["setup", "--plan", "--config", str(cfg)], env=cli_env)
    assert planned.exit_code == 0, planned.output
    assert "- create Opportunity.MRR__c as Currency(16, 2)" in planned.stdout
    assert "- create the permission set Stripe_SF_Sync" in planned.stdout
    assert deploys(sf_sb) == 0  # a plan writes nothing

    applied = runner.invoke(app, ["setup", "--apply", "--assign", USER, "--config", str(cfg)], env=cli_env)
    assert applied.exit_code == 0, applied.output
    assert "CustomField Opportunity.MRR__c: created" in applied.stdout
    assert f": assigned to {USER}" in applied.stdout
    assert deploys(sf_sb) == 2  # validated, then deployed

    doctor = runner.invoke(app, ["doctor", "--config", str(cfg)], env=cli_env)
    assert doctor.exit_code == 0, doctor.output
    synced = runner.invoke(app, ["sync", "--since", since(sc), "--config", str(cfg), "--json"], env=cli_env)
    summary = json.loads(synced.stdout)
    assert synced.exit_code == ExitCode.DEAD_LETTERS  # Hooli has no Account: the scenario's one dead letter
    assert summary["events_read"] == len(sc.events) and summary["dead_lettered"] == 1
    assert summary["applied"] == len(sc.events) - 1
    # Every case as on the org whose admin made the fields by hand (test_sync_e2e), the customers matched by
    # the Accounts their metadata names (the empty org's Accounts had no Stripe_Customer_ID__c).
    opps = {o.get("Stripe_Subscription_ID__c") or o.get("Stripe_Payment_Intent_ID__c"): o
            for o in org.records("Opportunity")}
    assert len(opps) == 4 and opps[sc.subscriptions["globex"]]["Id"] == sc.opportunities["globex"]
    acme = opps[sc.subscriptions["acme"]]
    assert (acme["StageName"], acme["AccountId"]) == ("Closed Won", sc.accounts["acme"])
    assert Decimal(str(acme["MRR__c"])) == Decimal("999.00") and Decimal(str(acme["ARR__c"])) == Decimal("11988.00")
    assert Decimal(str(opps[sc.subscriptions["initech"]]["MRR__c"])) == Decimal("169.00")
    assert Decimal(str(opps[sc.payments["umbrella"]]["Amount"])) == Decimal("500000")
    statuses = {a["Name"]: a.get("Subscription_Status__c") for a in org.records("Account")}
    assert statuses == {"Acme Corp": "active", "Globex": "active", "Initech": "canceled", "Umbrella KK": None}
    tasks = org.records("Task")
    assert len(tasks) == 6 and all(t["Stripe_Event_ID__c"].startswith(("sub_", "in_")) for t in tasks)
    assert "Payment Failed - Immediate Action Required" in {t["Subject"] for t in tasks}

    again = runner.invoke(app, ["setup", "--plan", "--config", str(cfg)], env=cli_env)
    assert again.exit_code == 0 and again.stdout.startswith("Nothing to do")
    as_json = runner.invoke(app, ["setup", "--apply", "--config", str(cfg), "--json"], env=cli_env)
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["nothing_to_do"]
    assert deploys(sf_sb) == 2  # a second apply deploys nothing
    assert sf_sb.unexpected_errors == []


def test_a_user_who_may_not_deploy_is_told_which_permission(tmp_path: Path, runner: CliRunner,
                                                            cli_env: dict[str, str], sf_sb: SalesforceSandbox) -> None:
    cfg = write_config(tmp_path / "sync.yaml")
    sf_sb.org.metadata.modify_metadata = False  # the integration user, not an admin
    assert runner.invoke(app, ["setup", "--plan", "--config", str(cfg)], env=cli_env).exit_code == 0
    result = runner.invoke(app, ["setup", "--apply", "--config", str(cfg)], env=cli_env)
    assert result.exit_code == ExitCode.CONFIG
    assert "INSUFFICIENT_ACCESS" in result.stderr and "Modify Metadata" in result.stderr
    assert "Traceback" not in result.output and deploys(sf_sb) == 1  # refused, nothing deployed


@pytest.mark.parametrize(("args", "problem"), [
    (["--plan", "--apply"], "--plan and --apply ask for different things"),
    ([], "say what to do"),
    (["--plan", "--assign", USER], "--assign writes to the org"),
])
def test_options_that_ask_for_different_things_are_a_usage_error(tmp_path: Path, runner: CliRunner,
                                                                 args: list[str], problem: str) -> None:
    result = runner.invoke(app, ["setup", *args, "--config", str(write_config(tmp_path / "sync.yaml"))],
                           env={"SF_INSTANCE_URL": "", "SF_ACCESS_TOKEN": ""})
    assert result.exit_code == ExitCode.CONFIG and problem in result.stderr and "docs/setup.md" in result.stderr


def test_sfdx_writes_a_project_and_deploys_nothing(tmp_path: Path, runner: CliRunner, cli_env: dict[str, str],
                                                   sf_sb: SalesforceSandbox) -> None:
    cfg = write_config(tmp_path / "sync.yaml")
    result = runner.invoke(app, ["setup", "--sfdx", str(tmp_path / "project"), "--config", str(cfg)], env=cli_env)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "project" / "sfdx-project.json").exists() and "wrote " in result.stdout
    assert deploys(sf_sb) == 0


def test_the_sandbox_can_start_with_an_empty_org() -> None:
    from stripe_sf_sandbox import rehearsal

    with rehearsal.rehearsal(empty_org=True) as r:
        assert "Stripe_Customer_ID__c" not in r.sf.org.schema["Account"]
        assert "MRR__c" not in r.sf.org.schema["Opportunity"]
        assert any("stripe-sf setup --plan" in line for line in r.lines())
    with rehearsal.rehearsal() as r:
        assert "Stripe_Customer_ID__c" in r.sf.org.schema["Account"]
        assert not any("stripe-sf setup" in line for line in r.lines())
