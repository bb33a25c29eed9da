"""salesforce.mapping through the CLI against the stand-ins (issue 23): a validation rule satisfied by a `value`;
each write mode through a second run, a backfill, a dead-letter retry and `reconcile --fix`; a rep's edits of
Name and CloseDate survive them all, their MRR edit does not."""

from __future__ import annotations

import json
import re
import time

import pytest

from stripe_sf_sandbox import scenario
from stripe_sf_sandbox.salesforce_server import SalesforceOrg, ValidationRule
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sync.cli import app
from stripe_sf_sync.state import StateStore

from .conftest import write_config

DAY = 86400
NOW = int(time.time())
TYPE_RULE = ValidationRule("Type_Required", "Opportunity", "Type", "Choose the Opportunity's Type.")
MAPPING = """
  mapping:
    Opportunity:
      Type: {value: New Business, write: once}
      LeadSource: {value: Stripe, write: if_empty}
      Description: {from: customer.name}
      ARR__c: {write: never}
"""


@pytest.fixture
def org() -> SalesforceOrg:
    """An org whose validation rule requires a Type on every new Opportunity (ISNEW() && ISBLANK(Type))."""
    return SalesforceOrg(won_stage=scenario.WON_STAGE, won_stage_label=scenario.WON_STAGE_LABEL,
                         require_record_type=True, csm_field="CSM__c", validation_rules=[TYPE_RULE])


def cli(runner, cli_env, *args: str) -> str:
    result = runner.invoke(app, list(args), env=cli_env)
    assert result.exit_code in (0, 3), result.output  # 3: dead letters, which the tests look at
    return result.output


def configured(tmp_path, runner, cli_env, mapping: str = "") -> str:
    path = write_config(tmp_path / "sync.yaml", **{"  mapping: {}\n": mapping.lstrip("\n") or "  mapping: {}\n"})
    cli(runner, cli_env, "discover-config", "--config", str(path), "--write")
    return str(path)


def world(stripe_sb, org):
    """Acme, an Account with an owner, and its monthly subscription won 20 days ago."""
    f = StripeFactory(stripe_sb, seed=23)
    cus = f.customer("Acme Corp", "billing@acme.example", created=NOW - 40 * DAY)
    org.insert("Account", {"Name": "Acme Corp", "OwnerId": org.user_id("Ava Owner"),
                           "Stripe_Customer_ID__c": cus["id"]})
    pro, seat = f.price(99900, "usd", "month", product_name="Pro"), f.price(1500, "usd", "month")
    sub = f.subscription(cus["id"], [(pro, 1)], status="active", created=NOW - 20 * DAY)
    f.subscription_created(sub, NOW - 20 * DAY)
    return f, sub, pro, seat


def since(days: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(NOW - days * DAY))


def opportunity(org, sub):
    return next(o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == sub["id"])


def dead_letter_codes(config: str) -> set[str]:
    with StateStore.open(config.rsplit("/", 1)[0] + "/stripe-sf-state.sqlite") as st:
        return {d.error_code for d in st.dead_letters()}


def test_a_validation_rule_that_refuses_todays_opportunity_is_satisfied_by_a_value(tmp_path, runner, cli_env,
                                                                                 stripe_sb, org):
    _, sub, _, _ = world(stripe_sb, org)
    config = configured(tmp_path, runner, cli_env)
    out = cli(runner, cli_env, "sync", "--config", config, "--since", since(25))
    assert "1 dead-lettered" in out, out  # today's Opportunity has no Type: the rule refuses it
    assert dead_letter_codes(config) == {"FIELD_CUSTOM_VALIDATION_EXCEPTION"}
    assert not [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c")]

    text = open(config).read().replace("  mapping: {}\n", "  mapping:\n    Opportunity:\n"
                                       "      Type: {value: New Business, write: once}\n")
    open(config, "w").write(text)
    out = cli(runner, cli_env, "dlq", "retry", "--all", "--config", config)
    assert "1 applied" in out and "0 dead-lettered" in out, out
    assert opportunity(org, sub)["Type"] == "New Business"


def test_each_write_mode_holds_and_a_reps_name_and_close_date_survive(tmp_path, runner, cli_env, stripe_sb, org):
    f, sub, pro, seat = world(stripe_sb, org)
    config = configured(tmp_path, runner, cli_env, MAPPING)
    cli(runner, cli_env, "sync", "--config", config, "--since", since(25))
    opp = opportunity(org, sub)
    assert (opp["Type"], opp["LeadSource"], opp["Description"]) == ("New Business", "Stripe", "Acme Corp")
    assert opp["ARR__c"] is None and float(opp["MRR__c"]) == 999  # never: ARR is left to Salesforce
    created_name = opp["Name"]
    assert created_name == f"Acme Corp - Subscription {sub['id']}"

    rep = {"Name": "Acme - Pro (signed)", "CloseDate": "2027-01-15", "MRR__c": 1, "Type": "Existing Business",
           "LeadSource": "Web", "Description": "rep's notes"}

    def edited_by_the_rep() -> None:
        org.update("Opportunity", opp["Id"], rep)

    def held(mrr: float, lead_source: str = "Web") -> None:
        now = org.get("Opportunity", opp["Id"])
        assert now is not None
        assert (now["Name"], now["CloseDate"], now["Type"]) == (rep["Name"], rep["CloseDate"], rep["Type"])  # once
        assert now["LeadSource"] == lead_source  # if_empty: the rep's value stands
        assert now["Description"] == "Acme Corp"  # always: restored
        assert float(now["MRR__c"]) == mrr  # always: the rep's MRR edit does not survive
        assert now["ARR__c"] is None  # never

    # A second run with a new event (a plan change).
    edited_by_the_rep()
    f.subscription_updated(sub["id"], {"items": [(pro, 1), (seat, 2)]}, NOW - 10 * DAY)
    cli(runner, cli_env, "sync", "--config", config)
    held(1029)

    # A dead-letter retry: a rule refuses the next change until the rep sets the Type again.
    edited_by_the_rep()
    org.update("Opportunity", opp["Id"], {"Type": None})
    org.validation_rules.append(ValidationRule("Type_Always", "Opportunity", "Type", "Type is required.",
                                               on_create=False))
    f.subscription_updated(sub["id"], {"items": [(pro, 1), (seat, 4)]}, NOW - 5 * DAY)
    out = cli(runner, cli_env, "sync", "--config", config)
    assert "1 dead-lettered" in out, out
    org.update("Opportunity", opp["Id"], {"Type": rep["Type"]})
    out = cli(runner, cli_env, "dlq", "retry", "--all", "--config", config)
    assert "1 applied" in out, out
    held(1059)
    org.validation_rules.pop()

    # A backfill: each subscription's current state again, as a won one.
    edited_by_the_rep()
    cli(runner, cli_env, "backfill", "--config", config, "--since", since(60), "--objects", "subscriptions")
    held(1059)

    # reconcile --fix: the MRR is drift and repaired; ARR (never) is information, never repaired.
    edited_by_the_rep()
    result = runner.invoke(app, ["reconcile", "--config", config, "--objects", "subscriptions"], env=cli_env)
    assert result.exit_code == 9, result.output
    assert "value_mismatch: 1" in result.stdout and "salesforce_owned: 1" in result.stdout, result.stdout
    fixed = runner.invoke(app, ["reconcile", "--config", config, "--objects", "subscriptions", "--fix"], env=cli_env)
    assert fixed.exit_code == 9 and "1 applied" in fixed.stdout, fixed.output
    held(1059)
    clean = runner.invoke(app, ["reconcile", "--config", config, "--objects", "subscriptions"], env=cli_env)
    assert clean.exit_code == 0 and "salesforce_owned: 1" in clean.stdout, clean.output

    # if_empty: once the rep empties LeadSource, the next change fills it again (after the backfill's version).
    org.update("Opportunity", opp["Id"], {"LeadSource": None})
    f.subscription_updated(sub["id"], {"items": [(pro, 1), (seat, 5)]}, int(time.time()) + 1)
    cli(runner, cli_env, "sync", "--config", config)
    held(1074, lead_source="Stripe")



def test_a_dry_run_says_why_each_field_is_written_or_left_alone(tmp_path, runner, cli_env, stripe_sb, org):
    f, sub, pro, seat = world(stripe_sb, org)
    config = configured(tmp_path, runner, cli_env, MAPPING)
    cli(runner, cli_env, "sync", "--config", config, "--since", since(25))
    f.subscription_updated(sub["id"], {"items": [(pro, 1), (seat, 2)]}, NOW - 10 * DAY)
    out = " ".join(cli(runner, cli_env, "sync", "--config", config, "--dry-run").split())
    assert "Fields, and why each is written or left alone" in out, out
    for field, why in (("MRR__c", "written: always (Stripe owns it)"),
                       ("Type", "left alone: once, written when created or won"),
                       ("LeadSource", "left alone: if_empty, Salesforce's field holds a value"),
                       ("ARR__c", "left alone: write: never"), ("Description", "written: always")):
        assert re.search(rf"field: {field} value: .+? why: {re.escape(why)}", out), (field, out)



def test_doctor_checks_every_mapped_field_and_the_required_fields_a_create_would_miss(tmp_path, runner, cli_env,
                                                                                       stripe_sb, org):
    org.require_field("Opportunity.Region__c")
    config = configured(tmp_path, runner, cli_env, """
  mapping:
    Opportunity:
      Type: {value: Brand New, write: once}
      LeadSource: {value: Stripe, write: if_empty}
      Missing__c: {value: X}
      Description: {from: amount}
      Stripe_Customer_ID__c: {write: never}
""")
    result = runner.invoke(app, ["doctor", "--config", config, "--json"], env=cli_env)
    assert result.exit_code == 2, result.output
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["Opportunity.Type"]["status"] == "warning"  # an open picklist takes it, but nobody chose it
    assert "'Brand New' is not a value of the picklist Opportunity.Type" in checks["Opportunity.Type"]["message"]
    assert checks["Opportunity.LeadSource"]["status"] == "ok"
    assert checks["Opportunity.Missing__c"]["status"] == "error"
    assert "does not exist" in checks["Opportunity.Missing__c"]["message"]
    assert checks["Opportunity.Description"]["status"] == "error"
    assert "`from: amount`" in checks["Opportunity.Description"]["message"]
    assert checks["Opportunity create"]["status"] == "error"
    assert "required field Region__c" in checks["Opportunity create"]["message"]
    assert "Region__c: {value: ...}" in checks["Opportunity create"]["fix"]

    text = open(config).read().replace("      Missing__c: {value: X}\n", "      Region__c: {value: EMEA}\n")
    open(config, "w").write(text.replace("Description: {from: amount}", "Description: {from: name}"))
    result = runner.invoke(app, ["doctor", "--config", config, "--json"], env=cli_env)
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert "Opportunity create" not in checks and checks["Opportunity.Region__c"]["status"] == "ok"
    assert checks["Opportunity.Description"]["status"] == "ok"


def test_the_sandboxs_strict_org_rehearses_a_mapping(tmp_path, runner):
    """`stripe-sf sandbox --strict-org`: the demo refused by a validation rule and a required field until the
    mapping gives both."""
    from stripe_sf_sandbox.rehearsal import rehearsal

    with rehearsal(strict_org=True) as r:
        env = r.exports()
        config = tmp_path / "sync.yaml"
        config.write_text(open(write_config(tmp_path / "example.yaml")).read())
        cli(runner, env, "discover-config", "--config", str(config), "--write")
        cli(runner, env, "sync", "--config", str(config), "--since", r.since)
        assert "REQUIRED_FIELD_MISSING" in dead_letter_codes(str(config))  # Salesforce checks it before rules
        text = config.read_text().replace("  mapping: {}\n", "  mapping:\n    Opportunity:\n"
                                          "      Type: {value: New Business, write: once}\n"
                                          "      Region__c: {value: EMEA, write: once}\n")
        config.write_text(text)
        r.sf.org.insert("Account", {"Name": "Hooli", "Stripe_Customer_ID__c": r.scenario.customers["hooli"]})
        out = cli(runner, env, "dlq", "retry", "--all", "--config", str(config))
        assert "0 dead-lettered" in out, out
        made = [o for o in r.sf.org.records("Opportunity") if o.get("Stripe_Subscription_ID__c")]
        assert made and all(o["Region__c"] == "EMEA" for o in made if o["Type"] == "New Business")
