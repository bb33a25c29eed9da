"""discover-config and the org check against an org whose won stage's label differs from its API name,
and whose record types are not all available to the integration user (sObject Describe)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from stripe_sf_sandbox import scenario
from stripe_sf_sandbox.demo import sandbox_environment
from stripe_sf_sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox
from stripe_sf_sandbox.scenario import WON_STAGE, WON_STAGE_LABEL
from stripe_sf_sync import service
from stripe_sf_sync.cli import app
from stripe_sf_sync.config import parse_settings
from stripe_sf_sync.errors import ConfigError, ExitCode

from .conftest import EXAMPLE, since, write_config


def _cli_env(stripe_sb, sf_sb) -> dict[str, str]:
    return {"STRIPE_API_KEY": stripe_sb.api_key, "STRIPE_API_BASE": stripe_sb.base_url,
            "SF_INSTANCE_URL": sf_sb.instance_url, "SF_ACCESS_TOKEN": sf_sb.access_token,
            "REQUESTS_CA_BUNDLE": sf_sb.ca_path}


def test_the_awkward_org_has_a_won_stage_whose_label_is_not_its_api_name():
    assert WON_STAGE != WON_STAGE_LABEL


def test_discover_writes_the_api_name_and_shows_the_label(tmp_path, env, org, sc):
    config = write_config(tmp_path / "sync.yaml")
    found = service.run_discover(config, env, write=True, example=EXAMPLE)
    assert found.won_stage == WON_STAGE and found.won_stage_label == WON_STAGE_LABEL
    assert f"won_stage: {WON_STAGE}" in config.read_text()
    summary = service.run_sync(config, env, since=since(sc), dry_run=False, max_events=None)
    won = [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c")]
    assert won and {(o["StageName"], o["IsWon"]) for o in won} == {(WON_STAGE, True)}
    assert summary.applied >= 2


def test_discover_prints_both_the_api_name_and_the_label(tmp_path, stripe_sb, sf_sb, sc):
    runner = CliRunner()
    config = write_config(tmp_path / "sync.yaml")
    env = _cli_env(stripe_sb, sf_sb)
    result = runner.invoke(app, ["discover-config", "--config", str(config)], env=env)
    assert result.exit_code == 0, result.output
    assert f"Won stage: {WON_STAGE} (label: {WON_STAGE_LABEL})" in result.output
    result = runner.invoke(app, ["discover-config", "--config", str(config), "--json"], env=env)
    data = json.loads(result.stdout)
    assert data["won_stage"] == WON_STAGE and data["won_stage_label"] == WON_STAGE_LABEL


def test_a_config_holding_the_label_names_the_api_name_and_the_repair(tmp_path, env, sc):
    """A sync.yaml written by an earlier version holds the label: a config error that says what to use."""
    config = write_config(tmp_path / "sync.yaml", **{"won_stage: null": f"won_stage: {WON_STAGE_LABEL}"})
    with pytest.raises(ConfigError) as info:
        service.run_sync(config, env, since=since(sc), dry_run=False, max_events=None)
    text = str(info.value)
    assert f"'{WON_STAGE_LABEL}' is the label of the won stage" in text
    assert f"its API name, '{WON_STAGE}'" in text
    assert "discover-config --write" in text
    # discover-config --write repairs it, and the sync then runs
    service.run_discover(config, env, write=True, example=EXAMPLE)
    assert service.run_sync(config, env, since=since(sc), dry_run=False, max_events=None).applied >= 2


def test_a_stage_that_is_not_in_the_org_lists_the_api_names(tmp_path, env, sc):
    config = write_config(tmp_path / "sync.yaml", **{"won_stage: null": "won_stage: Contract Executed"})
    with pytest.raises(ConfigError) as info:
        service.run_sync(config, env, since=since(sc), dry_run=False, max_events=None)
    text = str(info.value)
    assert "'Contract Executed' is not an Opportunity stage" in text and WON_STAGE in text
    assert "discover-config --write" in text


@pytest.fixture
def restricted_org() -> SalesforceOrg:
    """"New Business" exists and is active, but the integration user's profile may not use it."""
    return SalesforceOrg(won_stage=WON_STAGE, won_stage_label=WON_STAGE_LABEL, require_record_type=True,
                         unavailable_record_types=["New Business"])


@pytest.fixture
def restricted_sb(restricted_org: SalesforceOrg) -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox(restricted_org) as sb:
        yield sb


def test_discover_proposes_only_a_record_type_the_user_may_use(tmp_path, stripe_sb, restricted_sb):
    env = sandbox_environment(stripe_sb, restricted_sb)
    config = write_config(tmp_path / "sync.yaml")
    found = service.run_discover(config, env, write=True, example=EXAMPLE)
    assert found.chosen_record_type == "Renewal"
    assert found.unavailable_record_types == ["New Business"]
    assert "opportunity_record_type: Renewal" in config.read_text()


def test_discover_and_sync_choose_the_same_new_business_record_type(tmp_path, stripe_sb):
    """Two record types named like "New Business": discover-config proposes the one sync would use unconfigured."""
    org = SalesforceOrg(won_stage=WON_STAGE, record_types={"New_Business": "New_Business_2", "New Business":
                                                           "New_Business", "Renewal": "Renewal"})
    with SalesforceSandbox(org) as sf:
        found = service.run_discover(write_config(tmp_path / "sync.yaml"), sandbox_environment(stripe_sb, sf),
                                     write=False, example=EXAMPLE)
    assert list(found.record_types) == ["New Business", "New_Business", "Renewal"]  # ORDER BY Name
    assert found.chosen_record_type == "New Business"
    settings = parse_settings({"salesforce": {"record_types": found.record_types}})
    assert settings.record_type_id() == found.record_types["New Business"] == org.record_type_id("New_Business")


def test_an_unavailable_configured_record_type_is_named(tmp_path, stripe_sb, restricted_sb, restricted_org):
    sc = scenario.load(stripe_sb, restricted_org, now=int(time.time()))
    runner = CliRunner()
    env = _cli_env(stripe_sb, restricted_sb)
    rt = {"New Business": restricted_org.record_type_id("New_Business"),
          "Renewal": restricted_org.record_type_id("Renewal")}
    config = write_config(tmp_path / "sync.yaml", **{
        "won_stage: null": f"won_stage: {WON_STAGE}",
        "record_types: {}": "record_types: " + json.dumps(rt),
        "opportunity_record_type: null": "opportunity_record_type: New Business"})
    result = runner.invoke(app, ["discover-config", "--config", str(config)], env=env)
    assert result.exit_code == 0, result.output
    assert "'New Business' is not available to the integration user" in " ".join(result.output.split())
    result = runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc)], env=env)
    assert result.exit_code == ExitCode.CONFIG, result.output
    out = " ".join(result.output.split())
    assert "salesforce.opportunity_record_type 'New Business' is not available to the integration user" in out
