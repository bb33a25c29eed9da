"""Never across orgs or modes (issue 24): the state records the Salesforce org and the Stripe account of its first
run, and every later run that writes checks them first; a live key into a sandbox org, or a test key into
production, is refused unless the config allows it. Through the CLI, against the stand-ins."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stripe_sf_sandbox import scenario
from stripe_sf_sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.identity import (
    Binding,
    SalesforceIdentity,
    StripeIdentity,
    key_is_live,
    loads,
    mode_problem,
    salesforce_problem,
    stripe_problem,
)

from .conftest import since


def env_for(stripe: StripeSandbox, sf: SalesforceSandbox) -> dict[str, str]:
    return {"STRIPE_API_KEY": stripe.api_key, "STRIPE_API_BASE": stripe.base_url, "SF_INSTANCE_URL": sf.instance_url,
            "SF_ACCESS_TOKEN": sf.access_token, "REQUESTS_CA_BUNDLE": sf.ca_path}


def sync(runner: CliRunner, config: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["sync", "--config", str(config), *args], env=env)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


@pytest.fixture
def other_org() -> Iterator[SalesforceSandbox]:
    """Another org with the same set-up: a sandbox refreshed from production is a new org with a new Id."""
    with SalesforceSandbox(scenario.awkward_org()) as sb:
        yield sb


def first_part(runner: CliRunner, config: Path, env: dict[str, str], sc: scenario.Scenario) -> None:
    code, out = sync(runner, config, env, "--since", since(sc), "--max-events", "3")
    assert code == 0, out


def test_the_first_run_records_both_identities_and_status_and_doctor_show_them(
        runner, config, cli_env, sf_sb, stripe_sb, sc):
    first_part(runner, config, cli_env, sc)
    status = json.loads(runner.invoke(app, ["status", "--config", str(config), "--json"], env=cli_env).stdout)
    assert status["identity"] == {"salesforce": {"org_id": sf_sb.org.org_id, "is_sandbox": True},
                                  "stripe": {"account": stripe_sb.account_id, "live": False}}
    text = runner.invoke(app, ["status", "--config", str(config)], env=cli_env).stdout
    assert f"Salesforce org: {sf_sb.org.org_id} (sandbox)" in text
    assert f"Stripe account: {stripe_sb.account_id} (test mode)" in text
    doctor = runner.invoke(app, ["doctor", "--config", str(config), "--json"], env=cli_env)
    assert doctor.exit_code == 0, doctor.output
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["org"]["status"] == "ok" and sf_sb.org.org_id in checks["org"]["message"]
    assert checks["account"]["status"] == "ok" and stripe_sb.account_id in checks["account"]["message"]
    # The account is read once: a later run with the same key reads it from the state.
    reads = sum(1 for _, path, _ in stripe_sb.requests_log if path.startswith("/v1/account"))
    assert sync(runner, config, cli_env)[0] in (0, 3)
    assert sum(1 for _, path, _ in stripe_sb.requests_log if path.startswith("/v1/account")) == reads


@pytest.mark.parametrize("dry_run", [False, True])
def test_another_org_stops_the_run_before_any_write(runner, config, cli_env, sf_sb, stripe_sb, sc, other_org,
                                                    dry_run):
    first_part(runner, config, cli_env, sc)
    before = len(other_org.org.records("Opportunity"))
    code, out = sync(runner, config, env_for(stripe_sb, other_org), *(["--dry-run"] if dry_run else []))
    assert code == ExitCode.IDENTITY == 10
    assert sf_sb.org.org_id in out and other_org.org.org_id in out and "state rebind" in out
    assert len(other_org.org.records("Opportunity")) == before and not other_org.org.records("Task")
    assert not any(method != "GET" and "/sobjects" in path for method, path in other_org.requests_log)


def test_rebind_after_a_person_says_so(runner, config, cli_env, sf_sb, stripe_sb, sc, other_org):
    first_part(runner, config, cli_env, sc)
    env = env_for(stripe_sb, other_org)
    shown = runner.invoke(app, ["state", "rebind", "--config", str(config)], env=env)
    assert shown.exit_code == ExitCode.CONFIG and other_org.org.org_id in shown.output
    assert "--yes" in shown.output
    assert sync(runner, config, env)[0] == ExitCode.IDENTITY  # nothing was rebound
    rebound = runner.invoke(app, ["state", "rebind", "--yes", "--config", str(config), "--json"], env=env)
    assert rebound.exit_code == 0, rebound.output
    result = json.loads(rebound.stdout)
    assert result["rebound"] and result["current"]["salesforce"]["org_id"] == other_org.org.org_id
    code, out = sync(runner, config, env)
    assert code in (0, ExitCode.DEAD_LETTERS), out  # the other org has no Accounts for these customers
    again = runner.invoke(app, ["state", "rebind", "--config", str(config)], env=env)
    assert again.exit_code == 0 and "Nothing to change" in again.stdout


def test_another_stripe_account_stops_the_run(runner, config, cli_env, sf_sb, stripe_sb, sc):
    first_part(runner, config, cli_env, sc)
    with StripeSandbox() as other:
        scenario.load(other, scenario.awkward_org(), now=int(time.time()))  # events to write
        calls = len(sf_sb.requests_log)
        code, out = sync(runner, config, env_for(other, sf_sb), "--since", since(sc), "--rewind")
        assert code == ExitCode.IDENTITY, out
        assert other.account_id in out and stripe_sb.account_id in out and "state rebind" in out
        assert sf_sb.requests_log[calls:] == []  # refused before its first Salesforce call


def test_another_stripe_account_with_nothing_new_is_refused_before_its_events_are_read(
        runner, config, cli_env, sf_sb, stripe_sb, sc):
    """A quiet run never reaches Salesforce, where the org is checked; but the state's cursor names an event of
    another account, so reading on from it would report an empty list as current (exit 0): a key the state has
    not seen is checked before anything is read."""
    first_part(runner, config, cli_env, sc)
    with StripeSandbox() as other:
        code, out = sync(runner, config, env_for(other, sf_sb))
        assert code == ExitCode.IDENTITY, out
        assert other.account_id in out and stripe_sb.account_id in out
        assert [path for _, path, _ in other.requests_log] == ["/v1/account"]


@pytest.fixture
def production() -> Iterator[SalesforceSandbox]:
    org = SalesforceOrg(won_stage=scenario.WON_STAGE, won_stage_label=scenario.WON_STAGE_LABEL,
                        require_record_type=True, csm_field="CSM__c", currencies=scenario.ORG_CURRENCIES,
                        is_sandbox=False)
    with SalesforceSandbox(org) as sb:
        yield sb


def discovered(runner: CliRunner, tmp_path: Path, env: dict[str, str], *overrides: tuple[str, str]) -> Path:
    from .conftest import write_config

    config = write_config(tmp_path / "sync.yaml", **dict(overrides))
    assert runner.invoke(app, ["discover-config", "--config", str(config), "--write"], env=env).exit_code == 0
    return config


def test_a_test_key_into_production_is_refused_unless_allowed(runner, tmp_path, stripe_sb, production):
    sc = scenario.load(stripe_sb, production.org, now=int(time.time()))
    env = env_for(stripe_sb, production)
    config = discovered(runner, tmp_path, env)
    code, out = sync(runner, config, env, "--since", since(sc))
    assert code == ExitCode.IDENTITY and "test-mode Stripe key would write into" in out and "production" in out
    assert "allow_mode_mismatch" in out and not production.org.records("Task")
    doctor = runner.invoke(app, ["doctor", "--config", str(config)], env=env)
    assert doctor.exit_code == ExitCode.IDENTITY and "test data into production" in doctor.stdout

    allowed = discovered(runner, tmp_path, env, ("allow_mode_mismatch: false", "allow_mode_mismatch: true"))
    code, out = sync(runner, allowed, env, "--since", since(sc))
    assert code == ExitCode.DEAD_LETTERS, out  # applied: the scenario's one dead letter
    assert production.org.records("Task")
    doctor = runner.invoke(app, ["doctor", "--config", str(allowed)], env=env)
    assert doctor.exit_code == 0 and "allow_mode_mismatch allows" in doctor.stdout


def test_a_live_key_into_a_sandbox_org_is_refused(runner, tmp_path, sf_sb):
    with StripeSandbox(live=True) as live:
        assert live.api_key.startswith("sk_live_")
        sc = scenario.load(live, sf_sb.org, now=int(time.time()))
        env = env_for(live, sf_sb)
        config = discovered(runner, tmp_path, env)
        code, out = sync(runner, config, env, "--since", since(sc), "--dry-run")
        assert code == ExitCode.IDENTITY and "live-mode Stripe key would write into" in out
        assert "live customers' data into a sandbox" in out and not sf_sb.org.records("Task")


def test_the_rules() -> None:
    org_a, org_b = SalesforceIdentity("00D8d0000B003DKCQY", True), SalesforceIdentity("00D8d0000B003DLCQY", True)
    acct = StripeIdentity("acct_1", False, "k1")
    assert salesforce_problem(None, org_a) is None and salesforce_problem(org_a, org_a) is None
    assert salesforce_problem(SalesforceIdentity(org_a.org_id[:15], True), org_a) is None  # 15 or 18 characters
    assert "00D8d0000B003DKCQY" in (salesforce_problem(org_a, org_b) or "")
    assert stripe_problem(acct, StripeIdentity("acct_2", False, "k2")) is not None
    assert stripe_problem(acct, StripeIdentity(None, False, "k2")) is None  # a key that may not read its account
    assert "live-mode" in (stripe_problem(acct, StripeIdentity("acct_1", True, "k3")) or "")
    assert mode_problem(StripeIdentity("a", True), org_a, allowed=False) is not None
    assert mode_problem(StripeIdentity("a", True), org_a, allowed=True) is None
    assert mode_problem(acct, SalesforceIdentity(org_a.org_id, False), allowed=False) is not None
    assert mode_problem(acct, org_a, allowed=False) is None
    assert [key_is_live(k) for k in ("sk_live_x", "rk_test_x", "pk_live_x")] == [True, False, None]
    bound = Binding(org_a, acct)
    assert loads(bound.dumps()) == bound and loads("not json") == Binding() and loads(None) == Binding()
    assert "key" not in (bound.as_dict()["stripe"] or {})


@pytest.mark.parametrize("command", [["backfill", "--since", "2020-01-01"], ["reconcile", "--fix"],
                                     ["dlq", "retry", "--all"]], ids=" ".join)
def test_every_run_that_writes_checks_the_org(runner, config, cli_env, sf_sb, stripe_sb, sc, other_org, command):
    code, out = sync(runner, config, cli_env, "--since", since(sc))
    assert code == ExitCode.DEAD_LETTERS, out  # one dead letter for `dlq retry`
    calls = len(other_org.requests_log)
    result = runner.invoke(app, [*command, "--config", str(config)], env=env_for(stripe_sb, other_org))
    assert result.exit_code == ExitCode.IDENTITY, result.output
    assert other_org.org.org_id in result.output
    assert all(method == "GET" or path.endswith("/composite") for method, path in other_org.requests_log[calls:])


def test_a_key_that_may_not_read_its_account_is_checked_by_its_mode(runner, config, cli_env, stripe_sb, sf_sb, sc):
    stripe_sb.account_readable = False  # a restricted key without the Account read permission
    code, out = sync(runner, config, cli_env, "--since", since(sc))
    assert code == ExitCode.DEAD_LETTERS, out  # applied all the same
    assert "may not read its own account" in out
    status = json.loads(runner.invoke(app, ["status", "--config", str(config), "--json"], env=cli_env).stdout)
    assert status["identity"]["stripe"] == {"account": None, "live": False}
    assert status["identity"]["salesforce"]["org_id"] == sf_sb.org.org_id
