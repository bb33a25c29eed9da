"""The Stripe account on every record written, and lookups that keep to it (issue 26,
`salesforce.fields.stripe_account`), against the stand-ins: today's single-account sandbox, whose account is
the pipeline's (a config without stripe.accounts: the key's own, as the identity check reads it)."""

from __future__ import annotations

import time

import pytest
from simple_salesforce import Salesforce

from stripe_sf_sandbox.salesforce_server import FieldDef, SalesforceOrg
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync import service
from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.records import LookupRequest
from stripe_sf_sync.salesforce.gateway import SalesforceGateway
from stripe_sf_sync.salesforce.lookups import account_filter, lookup_statements
from stripe_sf_sync.salesforce.org import field_needs
from stripe_sf_sync.setup.plan import field_spec
from stripe_sf_sync.setup.run import run_setup

from .conftest import write_config

DAY = 86400
FIELD = "Stripe_Account_ID__c"
OTHER = "acct_1OtherBrand0000"


def tagged_org(org: SalesforceOrg) -> None:
    """The org with the field on Opportunity and Task (what `setup --apply` creates)."""
    for sobject in ("Opportunity", "Task"):
        org.schema[sobject][FIELD] = FieldDef(FIELD, "string", length=255)


def configured(tmp_path, env, *, field: bool = True):
    overrides = {"stripe_account: null": f"stripe_account: {FIELD}"} if field else {}
    config = write_config(tmp_path / "sync.yaml", **overrides)
    service.run_discover(config, env, write=True, example=config.read_text())
    return config


def sync(config, env, start: int):
    since = time.strftime("%Y-%m-%d", time.gmtime(start - DAY))
    summary = service.run_sync(config, env, since=since, dry_run=False, max_events=None)
    assert summary.dead_lettered == 0
    return summary


def customer(f: StripeFactory, org: SalesforceOrg, name: str, t: int) -> tuple[str, str]:
    cus = f.customer(name, f"billing@{name.lower()}.example", created=t - 30 * DAY)
    return str(cus["id"]), org.insert("Account", {"Name": name, "Stripe_Customer_ID__c": cus["id"]})


def open_deal(org: SalesforceOrg, account: str, cus: str, **extra: str) -> str:
    return org.insert("Opportunity", {"Name": "Open deal", "AccountId": account, "StageName": "Negotiation",
                                      "CloseDate": "2026-12-31", "Stripe_Customer_ID__c": cus,
                                      "RecordTypeId": org.record_type_id("New_Business"), **extra})


def test_the_account_id_is_written_on_the_opportunity_and_the_task(tmp_path, env, org, stripe_sb: StripeSandbox):
    tagged_org(org)
    t = int(time.time()) - 2 * DAY
    f = StripeFactory(stripe_sb, seed=26)
    cus, _ = customer(f, org, "Brandco", t)
    sub = f.subscription(cus, [(f.price(5000), 1)], created=t)
    f.subscription_created(sub, t)
    inv = f.invoice(sub, cus, 5000, created=t + 60)
    f.invoice_payment_failed(inv["id"], t + 120)
    sync(configured(tmp_path, env), env, t)
    [opp] = [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == sub["id"]]
    assert opp[FIELD] == stripe_sb.account_id
    tasks = [task for task in org.records("Task") if task.get("Subject", "").startswith("Payment Failed")]
    assert tasks and all(task[FIELD] == stripe_sb.account_id for task in tasks)


def test_another_accounts_open_opportunity_is_not_claimed(tmp_path, env, org, stripe_sb: StripeSandbox):
    """A subscription claims its customer's open Opportunity (matched by SOQL on the customer id): one tagged
    with another Stripe account is not its own, so the subscription's Opportunity is created beside it and the
    other account's is left as it was. Without the filter the lookup finds it and the subscription takes it over."""
    tagged_org(org)
    t = int(time.time()) - 2 * DAY
    f = StripeFactory(stripe_sb, seed=27)
    cus, account = customer(f, org, "Twobrands", t)
    theirs = open_deal(org, account, cus, **{FIELD: OTHER})
    sub = f.subscription(cus, [(f.price(7000), 1)], created=t)
    f.subscription_created(sub, t)
    sync(configured(tmp_path, env), env, t)
    assert org.get("Opportunity", theirs).get("Stripe_Subscription_ID__c") in (None, "")
    assert org.get("Opportunity", theirs)[FIELD] == OTHER
    [ours] = [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == sub["id"]]
    assert ours["Id"] != theirs and ours[FIELD] == stripe_sb.account_id


def test_an_untagged_open_opportunity_is_claimed_and_tagged(tmp_path, env, org, stripe_sb: StripeSandbox):
    """A record written before the field existed is still matched, and carries the account from its next write."""
    tagged_org(org)
    t = int(time.time()) - 2 * DAY
    f = StripeFactory(stripe_sb, seed=28)
    cus, account = customer(f, org, "Oldco", t)
    deal = open_deal(org, account, cus)
    sub = f.subscription(cus, [(f.price(3000), 1)], created=t)
    f.subscription_created(sub, t)
    sync(configured(tmp_path, env), env, t)
    claimed = org.get("Opportunity", deal)
    assert claimed["Stripe_Subscription_ID__c"] == sub["id"]
    assert claimed[FIELD] == stripe_sb.account_id


def test_without_the_field_nothing_is_tagged_and_every_record_matches(tmp_path, env, org, stripe_sb: StripeSandbox):
    t = int(time.time()) - 2 * DAY
    f = StripeFactory(stripe_sb, seed=29)
    cus, account = customer(f, org, "Plainco", t)
    deal = open_deal(org, account, cus)
    sub = f.subscription(cus, [(f.price(3000), 1)], created=t)
    f.subscription_created(sub, t)
    calls = len(stripe_sb.requests_log)
    sync(configured(tmp_path, env, field=False), env, t)
    assert org.get("Opportunity", deal)["Stripe_Subscription_ID__c"] == sub["id"]
    assert FIELD not in org.get("Opportunity", deal)
    assert "/v1/account" in [path for _, path, _ in stripe_sb.requests_log[calls:]]  # the identity check's own


def test_reconcile_leaves_out_another_accounts_opportunities(tmp_path, env, org, stripe_sb: StripeSandbox):
    """An Opportunity tagged with another account holds a subscription id this account's Stripe does not know:
    it is that account's, not an unknown id of this one."""
    tagged_org(org)
    foreign = org.insert("Opportunity", {"Name": "Other brand", "StageName": "Closed Won", "CloseDate": "2026-01-01",
                                         "Stripe_Subscription_ID__c": "sub_OtherBrand1", FIELD: OTHER,
                                         "RecordTypeId": org.record_type_id("New_Business")})
    mine = org.insert("Opportunity", {"Name": "Ghost", "StageName": "Closed Won", "CloseDate": "2026-01-01",
                                      "Stripe_Subscription_ID__c": "sub_Ghost1",
                                      "RecordTypeId": org.record_type_id("New_Business")})
    config = configured(tmp_path, env)
    _, report = service.run_reconcile(config, env, since=None, objects="subscriptions,payment_intents,accounts",
                                      fix=False, dry_run=False)
    unknown = [f for f in report.findings if f.kind == "unknown_stripe_id"]
    assert [f.salesforce_id for f in unknown] == [mine]
    assert foreign not in {f.salesforce_id for f in report.findings}


def test_lookups_keep_to_the_account_and_escape_it() -> None:
    names = FieldNames(stripe_account=FIELD)
    request = LookupRequest(subscription_ids=frozenset({"sub_1"}), opportunity_ids=frozenset({"006000000000001AAA"}),
                            opportunity_customer_ids=frozenset({"cus_1"}), task_keys=frozenset({"in_1#attempt-1"}),
                            customer_ids=frozenset({"cus_1"}), stripe_account="acct_1'x")
    kept = f" AND ({FIELD} = 'acct_1\\'x' OR {FIELD} = null)"
    assert account_filter(names, "acct_1'x") == kept
    for kind, soql in lookup_statements(request, names):
        # Accounts are never filtered: one Account may hold customers of several Stripe accounts.
        assert soql.endswith(kept) is (kind in ("opportunity", "task")), soql
    assert account_filter(FieldNames(), "acct_1") == account_filter(names, None) == ""


def test_setup_creates_the_field_on_the_opportunity_and_the_task() -> None:
    specs = {field_spec(n).subject: field_spec(n) for n in field_needs(FieldNames(stripe_account=FIELD))}
    assert specs[f"Opportunity.{FIELD}"].type == specs[f"Task.{FIELD}"].type == "Text"
    assert specs[f"Task.{FIELD}"].length == 255


def test_a_pipeline_named_in_stripe_accounts_tags_with_its_account_and_backfill_too(tmp_path, env, org,
                                                                                   stripe_sb: StripeSandbox):
    """A config naming its accounts: the records carry the pipeline's id; backfill goes through the same settings
    as sync."""
    tagged_org(org)
    t = int(time.time()) - 2 * DAY
    f = StripeFactory(stripe_sb, seed=30)
    cus, _ = customer(f, org, "Backco", t)
    sub = f.subscription(cus, [(f.price(4000), 1)], created=t)
    config = configured(tmp_path, env)
    named = f"  accounts:\n    - id: {stripe_sb.account_id}\n"
    assert "  accounts: []\n" in config.read_text()
    config.write_text(config.read_text().replace("  accounts: []\n", named, 1))
    summary = service.run_backfill(config, env, since=time.strftime("%Y-%m-%d", time.gmtime(t - DAY)), until=None,
                                   objects="subscriptions", dry_run=False, resume=False)
    assert summary.dead_lettered == 0
    [opp] = [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == sub["id"]]
    assert opp[FIELD] == stripe_sb.account_id


def test_a_configured_field_the_org_lacks_is_named_before_anything_is_written(tmp_path, env, org,
                                                                               stripe_sb: StripeSandbox):
    config = configured(tmp_path, env)  # the org has no such field
    t = int(time.time()) - 2 * DAY
    with pytest.raises(ConfigError, match=f"Opportunity.{FIELD}"):
        service.run_sync(config, env, since=time.strftime("%Y-%m-%d", time.gmtime(t)), dry_run=False,
                         max_events=None)


def created_accounts_config(tmp_path, env):
    config = configured(tmp_path, env)
    text = config.read_text()
    assert "create_accounts: false" in text
    config.write_text(text.replace("create_accounts: false", "create_accounts: true"))
    return config


def test_an_account_stripe_sf_creates_carries_the_account_and_the_org_must_have_it(tmp_path, env, org,
                                                                                  stripe_sb: StripeSandbox):
    """identity.create_accounts: the Account it creates is tagged, so the field is needed on Account then (the
    org check names it before anything is written); the Accounts it finds are never tagged."""
    tagged_org(org)
    t = int(time.time()) - 2 * DAY
    f = StripeFactory(stripe_sb, seed=31)
    cus = f.customer("Newco", "billing@newco.example", created=t - DAY)
    f.subscription_created(f.subscription(cus["id"], [(f.price(2000), 1)], created=t), t)
    found_cus, found = customer(f, org, "Foundco", t)
    f.subscription_created(f.subscription(found_cus, [(f.price(2500), 1)], created=t + 1), t + 1)
    config = created_accounts_config(tmp_path, env)
    with pytest.raises(ConfigError, match=f"Account.{FIELD}"):
        sync(config, env, t)
    assert not [a for a in org.records("Account") if a.get("Stripe_Customer_ID__c") == cus["id"]]
    org.schema["Account"][FIELD] = FieldDef(FIELD, "string", length=255)
    sync(config, env, t)
    [made] = [a for a in org.records("Account") if a.get("Stripe_Customer_ID__c") == cus["id"]]
    assert made[FIELD] == stripe_sb.account_id
    assert org.get("Account", found).get(FIELD) in (None, "")


def test_setup_creates_the_account_field_only_when_stripe_sf_creates_accounts() -> None:
    names = FieldNames(stripe_account=FIELD)
    assert f"Account.{FIELD}" not in {n.subject for n in field_needs(names)}
    assert f"Account.{FIELD}" in {n.subject for n in field_needs(names, creates_accounts=True)}


def test_setup_apply_creates_the_field_in_the_org(sf_sb) -> None:
    """`setup --apply` against the stand-in: the field on Opportunity and Task (an Activity field in metadata)."""
    sf = Salesforce(instance_url=sf_sb.instance_url, session_id=sf_sb.org.new_access_token(), session=sf_sb.session(),
                    version="62.0")
    applied = run_setup(SalesforceGateway(sf, sleep=lambda s: None), FieldNames(stripe_account=FIELD),
                        api_version="62.0", apply=True, assign="integration@stripe-sf.sandbox")
    assert applied.deployed is not None and applied.deployed.success
    assert {f"CustomField Opportunity.{FIELD}: created", f"CustomField Activity.{FIELD}: created"} <= {
        str(c) for c in applied.deployed.components}
    assert sf_sb.org.schema["Opportunity"][FIELD].type == sf_sb.org.schema["Task"][FIELD].type == "string"
