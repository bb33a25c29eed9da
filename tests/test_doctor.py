"""`stripe-sf doctor` through the CLI, against the stand-ins: a healthy org, and each problem a run would meet,
named with its fix and the documented exit code."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stripe_sf_sandbox import scenario
from stripe_sf_sandbox.salesforce_server import FieldDef, SalesforceOrg, SalesforceSandbox
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.state import StateStore

from .conftest import since, write_config

DAY = 86400


def cli_env(stripe_sb: StripeSandbox, sf_sb: SalesforceSandbox, **extra: str) -> dict[str, str]:
    return {"STRIPE_API_KEY": stripe_sb.api_key, "STRIPE_API_BASE": stripe_sb.base_url,
            "SF_INSTANCE_URL": sf_sb.instance_url, "SF_ACCESS_TOKEN": sf_sb.access_token,
            "REQUESTS_CA_BUNDLE": sf_sb.ca_path, **extra}


def doctor(cfg: Path, env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    """Run `stripe-sf doctor` twice, as JSON and as text; the exit code, the report and the text."""
    runner = CliRunner()
    as_json = runner.invoke(app, ["doctor", "--config", str(cfg), "--json"], env=env)
    text = runner.invoke(app, ["doctor", "--config", str(cfg)], env=env)
    assert as_json.exit_code == text.exit_code, text.output
    assert "Traceback" not in as_json.output + text.output
    return as_json.exit_code, json.loads(as_json.stdout), text.stdout


def by_name(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for check in report["checks"]:
        out.setdefault(check["name"], []).append(check)
    return out


def discovered(tmp_path: Path, env: dict[str, str], **overrides: str) -> Path:
    cfg = write_config(tmp_path / "sync.yaml", **overrides)
    result = CliRunner().invoke(app, ["discover-config", "--config", str(cfg), "--write"], env=env)
    assert result.exit_code == 0, result.output
    return cfg


def test_a_healthy_setup_is_all_ok_and_exits_0(tmp_path, stripe_sb, sf_sb, org):
    env = cli_env(stripe_sb, sf_sb)
    cfg = discovered(tmp_path, env)
    code, report, text = doctor(cfg, env)
    assert code == ExitCode.OK and report["healthy"] and report["exit_code"] == 0
    assert report["counts"]["error"] == report["counts"]["warning"] == 0
    names = by_name(report)
    for name in ("login", "Opportunity", "Account", "Task", "Opportunity.Stripe_Subscription_ID__c",
                 "Opportunity.Stripe_Payment_Intent_ID__c", "Opportunity.MRR__c", "Account.Subscription_Status__c",
                 "Account.CSM__c", "Task.Stripe_Event_ID__c", "won stage", "record type", "API usage", "key",
                 "API version", "cursor", "state"):
        assert [c["status"] for c in names[name]] == ["ok"], name
    assert {c["area"] for c in report["checks"]} == {"salesforce", "stripe", "local"}
    lines = text.splitlines()
    assert len(lines) == len(report["checks"]) + 1 and lines[-1].startswith("doctor: ")
    assert any(line.startswith("ok") and "'Closed Won' (label 'Won')" in line for line in lines)
    assert any("Text(255), External ID, Unique" in line for line in lines)
    assert "(test mode)" in text
    assert not (tmp_path / "stripe-sf-state.sqlite").exists()  # doctor only reads: no state file made


@pytest.fixture
def org() -> SalesforceOrg:
    """The demo org, where the integration user may not use the "New Business" record type (discover-config
    then chooses "Renewal"; a config naming "New Business" is wrong)."""
    return SalesforceOrg(won_stage=scenario.WON_STAGE, won_stage_label=scenario.WON_STAGE_LABEL,
                         require_record_type=True, csm_field="CSM__c", unavailable_record_types=["New Business"],
                         currencies=scenario.ORG_CURRENCIES)


def break_org(org: SalesforceOrg) -> None:
    account, opportunity = org.schema["Account"], org.schema["Opportunity"]
    account["Subscription_Status__c"].picklist.remove("paused")  # restricted: a paused Account cannot be written
    opportunity["Stripe_Payment_Intent_ID__c"].external_id = False
    opportunity["MRR__c"] = FieldDef("MRR__c", "string", length=20)
    account["Stripe_Customer_ID__c"].unique = False
    org.no_create.add("Task")


def test_every_org_problem_is_named_with_its_fix_and_exits_2(tmp_path, stripe_sb, sf_sb, org):
    env = cli_env(stripe_sb, sf_sb)
    rt = {"New Business": org.record_type_id("New_Business"), "Renewal": org.record_type_id("Renewal")}
    cfg = write_config(tmp_path / "sync.yaml", **{
        "won_stage: null": "won_stage: Negotiation",  # an active stage, but not a won one
        "record_types: {}": "record_types: " + json.dumps(rt),
        "opportunity_record_type: null": "opportunity_record_type: New Business"})
    break_org(org)
    code, report, text = doctor(cfg, env)
    assert code == ExitCode.CONFIG and report["exit_code"] == 2 and not report["healthy"]
    names = by_name(report)

    def only(name: str) -> dict[str, Any]:
        [check] = names[name]
        return check

    status = only("Account.Subscription_Status__c")
    assert status["status"] == "error" and "restricted picklist without paused" in status["message"]
    assert "add the value paused" in status["fix"]
    pi = only("Opportunity.Stripe_Payment_Intent_ID__c")
    assert pi["status"] == "error" and "must be marked External ID" in pi["message"]
    assert pi["subject"] == "Opportunity.Stripe_Payment_Intent_ID__c"
    mrr = only("Opportunity.MRR__c")
    assert mrr["status"] == "error" and "is a string field" in mrr["message"] and "Currency(16, 2)" in mrr["fix"]
    customer = only("Account.Stripe_Customer_ID__c")
    assert customer["status"] == "warning" and "not Unique" in customer["message"]
    task = only("Task")
    assert task["status"] == "error" and "cannot create Task records" in task["message"]
    assert "Create on Task" in task["fix"]
    stage = only("won stage")
    assert stage["status"] == "error" and "'Negotiation' is not an active won and closed stage" in stage["message"]
    assert "Closed Won" in stage["message"] and "discover-config --write" in stage["fix"]
    record_type = only("record type")
    assert record_type["status"] == "error" and record_type["subject"] == "record type 'New Business'"
    assert "not available to the integration user" in record_type["message"]
    for name in ("Opportunity", "Account", "Opportunity.Stripe_Subscription_ID__c", "API usage", "key", "state"):
        assert only(name)["status"] == "ok", name
    assert report["counts"]["error"] == 6 and report["counts"]["warning"] == 1
    # the text form: one line per check, each problem with its fix
    [line] = [line for line in text.splitlines() if "Account.Subscription_Status__c" in line]
    assert line.startswith("error") and "Fix: add the value paused to the picklist." in line
    assert text.splitlines()[-1] == "doctor: 16 ok, 1 warning, 6 errors."  # currencies included


def test_a_won_stage_held_by_its_label_and_an_unset_one_are_named(tmp_path, stripe_sb, sf_sb, org):
    env = cli_env(stripe_sb, sf_sb)
    cfg = write_config(tmp_path / "sync.yaml", **{"won_stage: null": f"won_stage: {scenario.WON_STAGE_LABEL}"})
    code, report, _ = doctor(cfg, env)
    [stage] = by_name(report)["won stage"]
    assert code == ExitCode.CONFIG and f"its API name, '{scenario.WON_STAGE}'" in stage["message"]
    cfg = write_config(tmp_path / "sync.yaml")
    code, report, _ = doctor(cfg, env)
    [stage] = by_name(report)["won stage"]
    assert code == ExitCode.CONFIG and stage["message"] == "salesforce.won_stage is not set"


def test_a_text_status_field_too_short_for_incomplete_expired_is_an_error(tmp_path, stripe_sb, sf_sb, org):
    env = cli_env(stripe_sb, sf_sb)
    cfg = discovered(tmp_path, env)
    org.schema["Account"]["Subscription_Status__c"] = FieldDef("Subscription_Status__c", "string", length=10)
    code, report, _ = doctor(cfg, env)
    [status] = by_name(report)["Account.Subscription_Status__c"]
    assert code == ExitCode.CONFIG and "too few for the status 'incomplete_expired'" in status["message"]
    org.schema["Account"]["Subscription_Status__c"].length = 40
    assert doctor(cfg, env)[0] == ExitCode.OK


def test_the_api_budget_spent_is_exit_5_and_headroom_running_out_a_warning(tmp_path, stripe_sb, sf_sb, org):
    env = cli_env(stripe_sb, sf_sb)
    cfg = discovered(tmp_path, env)
    org.api_used = 85_000  # budget 0.8
    code, report, _ = doctor(cfg, env)
    [usage] = by_name(report)["API usage"]
    assert code == ExitCode.UNAVAILABLE and usage["status"] == "error"
    assert "a run would stop before its first write" in usage["message"] and "salesforce.api_budget" in usage["fix"]
    org.api_used = 75_000
    code, report, _ = doctor(cfg, env)
    [usage] = by_name(report)["API usage"]
    assert code == ExitCode.OK and usage["status"] == "warning"  # warnings alone exit 0


def test_salesforce_and_stripe_credentials_that_do_not_work_are_named(tmp_path, stripe_sb, sf_sb, org):
    env = cli_env(stripe_sb, sf_sb)
    cfg = discovered(tmp_path, env)
    org.expire_sessions()
    stripe_sb.revoked_keys.add(stripe_sb.api_key)
    code, report, _ = doctor(cfg, env)
    names = by_name(report)
    [login], [key] = names["login"], names["key"]
    assert code == ExitCode.UNAVAILABLE
    assert login["status"] == "error" and "INVALID_SESSION_ID" in login["message"]
    assert "export a fresh token" in login["fix"]
    assert key["status"] == "error" and "Stripe rejected the API key" in key["message"]
    assert "Opportunity" not in names  # nothing more to check without a session
    code, report, _ = doctor(cfg, {**env, "STRIPE_API_KEY": "", "SF_ACCESS_TOKEN": ""})
    names = by_name(report)
    assert code == ExitCode.CONFIG
    assert names["login"][0]["message"] == "token mode is missing SF_ACCESS_TOKEN"
    assert names["key"][0]["message"] == "STRIPE_API_KEY is not set"


def test_a_stripe_api_version_stripe_refuses_is_named(tmp_path, stripe_sb, sf_sb, org):
    env = cli_env(stripe_sb, sf_sb)
    cfg = discovered(tmp_path, env)
    cfg.write_text(cfg.read_text().replace('api_version: "2026-10-28.endive"', 'api_version: "2019-13-45"'))
    code, report, _ = doctor(cfg, env)
    [version] = by_name(report)["API version"]
    assert code == ExitCode.CONFIG and version["subject"] == "stripe.api_version"
    assert "'2019-13-45'" in version["message"]


def run_sync(cfg: Path, env: dict[str, str], *args: str) -> int:
    return CliRunner().invoke(app, ["sync", "--config", str(cfg), *args], env=env).exit_code


def test_after_a_sync_the_cursor_dead_letters_and_file_modes_are_checked(tmp_path, stripe_sb, sf_sb, org):
    env = cli_env(stripe_sb, sf_sb)
    cfg = discovered(tmp_path, env)
    sc = scenario.load(stripe_sb, org, now=int(time.time()))
    assert run_sync(cfg, env, "--since", since(sc)) == ExitCode.DEAD_LETTERS  # Hooli has no Account
    code, report, _ = doctor(cfg, env)
    names = by_name(report)
    assert code == ExitCode.OK
    assert names["cursor"][0]["status"] == "ok" and sc.events[-1] in names["cursor"][0]["message"]
    assert names["dead letters"][0]["status"] == "warning" and names["dead letters"][0]["message"] == (
        "1 open dead letter")
    assert names["file modes"][0]["status"] == "ok"

    state = tmp_path / "stripe-sf-state.sqlite"
    os.chmod(state, 0o644)
    code, report, _ = doctor(cfg, env)
    [modes] = by_name(report)["file modes"]
    assert code == ExitCode.OK and modes["status"] == "warning" and f"chmod 600 '{state}'" == modes["fix"]

    def age_cursor(days: int) -> None:  # as if the last sync ran `days` ago
        with StateStore.open(state) as store:
            store.set_meta("cursor_created", str(int(time.time()) - days * DAY))

    age_cursor(25)
    code, report, _ = doctor(cfg, env)
    [cursor] = by_name(report)["cursor"]
    assert code == ExitCode.OK and cursor["status"] == "warning" and "passes the retention in" in cursor["message"]
    age_cursor(31)
    code, report, _ = doctor(cfg, env)
    [cursor] = by_name(report)["cursor"]
    assert code == ExitCode.CURSOR_EXPIRED and cursor["status"] == "error"
    assert "`stripe-sf backfill --since" in cursor["fix"]


def test_a_corrupt_state_file_is_exit_7_and_doctor_runs_beside_a_sync(tmp_path, stripe_sb, sf_sb, org):
    env = cli_env(stripe_sb, sf_sb)
    cfg = discovered(tmp_path, env)
    state = tmp_path / "stripe-sf-state.sqlite"
    with StateStore.open(state) as held:
        held.acquire_lock()  # a sync is running: doctor takes no lock
        code, report, _ = doctor(cfg, env)
        assert code == ExitCode.OK and by_name(report)["state"][0]["status"] == "ok"
    state.write_bytes(b"garbage" * 1000)
    code, report, _ = doctor(cfg, env)
    [check] = by_name(report)["state"]
    assert code == ExitCode.STATE and check["status"] == "error" and str(state) in check["message"]


def test_an_open_picklist_missing_a_status_is_a_warning_and_a_read_only_field_an_error(tmp_path, stripe_sb, sf_sb,
                                                                                       org):
    env = cli_env(stripe_sb, sf_sb)
    cfg = discovered(tmp_path, env)
    status = org.schema["Account"]["Subscription_Status__c"]
    status.restricted = False
    status.picklist.remove("incomplete_expired")
    org.schema["Opportunity"]["ARR__c"].updateable = False  # field-level security: read-only for the user
    code, report, _ = doctor(cfg, env)
    names = by_name(report)
    [status_check], [arr] = names["Account.Subscription_Status__c"], names["Opportunity.ARR__c"]
    assert status_check["status"] == "warning" and "without incomplete_expired" in status_check["message"]
    assert arr["status"] == "error" and "cannot update Opportunity.ARR__c" in arr["message"]
    assert code == ExitCode.CONFIG


def test_quiet_shows_warnings_and_errors_only(tmp_path, stripe_sb, sf_sb, org):
    """Issue 20 §5: `doctor -q` printed every ok line."""
    env = cli_env(stripe_sb, sf_sb)
    cfg = discovered(tmp_path, env)
    healthy = CliRunner().invoke(app, ["doctor", "-q", "--config", str(cfg)], env=env)
    assert healthy.exit_code == ExitCode.OK and healthy.stdout == "", healthy.stdout
    org.api_used = 75_000  # a warning: API headroom running out
    warned = CliRunner().invoke(app, ["doctor", "-q", "--config", str(cfg)], env=env)
    lines = warned.stdout.splitlines()
    assert warned.exit_code == ExitCode.OK and lines and not any(line.startswith("ok ") for line in lines), lines
    assert lines[0].startswith("warning") and "API usage" in lines[0]
    assert lines[-1].startswith("doctor: ") and "1 warning, 0 errors." in lines[-1]


def test_recent_stripe_activity_in_a_currency_the_org_does_not_use_is_a_warning(tmp_path, stripe_sb):
    """A EUR org without multiple currencies, and Stripe events in USD: doctor says the org would read them
    as EUR, what a run does with them (salesforce.currency_mismatch), and the fix."""
    org = SalesforceOrg(won_stage=scenario.WON_STAGE, won_stage_label=scenario.WON_STAGE_LABEL, csm_field="CSM__c",
                        default_currency="EUR")
    with SalesforceSandbox(org) as sf:
        env = cli_env(stripe_sb, sf)
        cfg = discovered(tmp_path, env)
        scenario.load(stripe_sb, org, now=int(time.time()))
        code, report, text = doctor(cfg, env)
        assert code == ExitCode.OK  # a warning: the events wait as dead letters, nothing is lost
        [check] = by_name(report)["currencies"]
        assert check["status"] == "warning" and check["area"] == "stripe"
        assert "USD (" in check["message"] and "single currency, EUR" in check["message"]
        assert "CURRENCY_MISMATCH" in check["message"] and "salesforce.currency_mismatch" in check["fix"]
        assert any(line.startswith("warning") and "currencies" in line and "USD" in line for line in text.splitlines())

        multi = SalesforceOrg(won_stage=scenario.WON_STAGE, currencies=["USD", "EUR"])
        with SalesforceSandbox(multi) as sf2:
            env2 = cli_env(stripe_sb, sf2)
            (tmp_path / "multi").mkdir()
            cfg2 = discovered(tmp_path / "multi", env2)
            [ok] = by_name(doctor(cfg2, env2)[1])["currencies"]
        # The scenario has a JPY payment too: a multi-currency org without JPY is told to activate it.
        assert ok["status"] == "warning"
        assert ok["message"].startswith("recent Stripe activity is in JPY (1 event), which")
        assert "CURRENCY_NOT_ACTIVE" in ok["message"] and ok["fix"].startswith("activate JPY in Setup")
