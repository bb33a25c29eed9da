"""`reconcile` on a config with several Stripe accounts into one org (issue 26): it acts on one pipeline
(--account), reads only that account's Stripe objects, and does not take the other accounts' Opportunities and
Accounts for drift. Without salesforce.fields.stripe_account the unknown-id check is skipped with a note; with
it, the Opportunity read keeps to the account (reconcile/read.py) and only the Accounts' part is skipped."""

from __future__ import annotations

import dataclasses
import time

import pytest

from stripe_sf_sandbox.salesforce_server import FieldDef, SalesforceOrg
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync import service
from stripe_sf_sync.reconcile.compare import SEVERAL_ACCOUNTS_CUSTOMERS, SEVERAL_ACCOUNTS_UNTAGGED

from .conftest import write_config

DAY = 86400
FIELD = "Stripe_Account_ID__c"
EU_KEY = "STRIPE_API_KEY_EU"
EVERY = "subscriptions,payment_intents,accounts"


def subscribed(account: StripeSandbox, org: SalesforceOrg, name: str, t: int, seed: int) -> str:
    """A customer of `account` with its Account in the org, and a subscription of it; the subscription's id."""
    f = StripeFactory(account, seed=seed)
    cus = f.customer(name, f"billing@{name.lower()}.example", created=t - 30 * DAY)
    org.insert("Account", {"Name": name, "Stripe_Customer_ID__c": cus["id"]})
    sub = f.subscription(cus["id"], [(f.price(5000), 1)], created=t)
    f.subscription_created(sub, t)
    return str(sub["id"])


@pytest.fixture
def two_accounts(tmp_path, env, org, stripe_accounts):
    """Returns a function: the config (with the account field or not) of the platform and Europe, both synced into
    the one org, and each pipeline's environment."""
    platform, europe = stripe_accounts["platform"], stripe_accounts["separate"]
    t = int(time.time()) - 2 * DAY
    subs = {"platform": subscribed(platform, org, "Brandco", t, 41), "europe": subscribed(europe, org, "Euroco", t, 42)}

    def make(*, field: bool):
        if field:
            for sobject in ("Opportunity", "Task"):
                org.schema[sobject][FIELD] = FieldDef(FIELD, "string", length=255)
        config = write_config(tmp_path / "sync.yaml", **({"stripe_account: null": f"stripe_account: {FIELD}"}
                                                         if field else {}))
        service.run_discover(config, env, write=True, example=config.read_text())
        listed = (f"  accounts:\n    - id: {platform.account_id}\n"
                  f"    - id: {europe.account_id}\n      api_key_env: {EU_KEY}\n")
        config.write_text(config.read_text().replace("  accounts: []\n", listed, 1))
        envs = {name: dataclasses.replace(env, env={**env.env, EU_KEY: europe.api_key}, account=account.account_id)
                for name, account in (("platform", platform), ("europe", europe))}
        since = time.strftime("%Y-%m-%d", time.gmtime(t - DAY))
        for name in envs:
            summary = service.run_sync(config, envs[name], since=since, dry_run=False, max_events=None)
            assert summary.dead_lettered == 0 and summary.applied > 0, name
        return config, envs, subs, {"platform": platform, "europe": europe}
    return make


def reconcile(config, environment):
    _, report = service.run_reconcile(config, environment, since=None, objects=EVERY, fix=False, dry_run=False)
    return report


def test_without_the_account_field_other_accounts_records_are_not_drift(two_accounts):
    config, envs, subs, accounts = two_accounts(field=False)
    for account in accounts.values():
        account.requests_log.clear()
    report = reconcile(config, envs["platform"])
    assert [path for _, path, _ in accounts["europe"].requests_log] == []  # only the platform's Stripe was read
    assert accounts["platform"].requests_log
    assert not [f for f in report.findings if f.kind == "unknown_stripe_id"], report.findings
    assert subs["europe"] not in {f.stripe_id for f in report.findings}
    assert report.skipped_checks == [SEVERAL_ACCOUNTS_UNTAGGED]
    assert "salesforce.fields.stripe_account" in report.skipped_checks[0]
    assert report.mismatches == 0 and report.checked["subscriptions"] == 1
    # and the other way round: Europe's reconcile leaves the platform's records alone too
    report = reconcile(config, envs["europe"])
    assert subs["platform"] not in {f.stripe_id for f in report.findings} and report.mismatches == 0


def test_with_the_account_field_the_opportunities_are_checked_and_the_accounts_skipped(two_accounts, org):
    config, envs, subs, accounts = two_accounts(field=True)
    ghost = org.insert("Opportunity", {"Name": "Ghost", "StageName": "Closed Won", "CloseDate": "2026-01-01",
                                       "Stripe_Subscription_ID__c": "sub_Ghost1",
                                       FIELD: accounts["platform"].account_id,
                                       "RecordTypeId": org.record_type_id("New_Business")})
    report = reconcile(config, envs["platform"])
    unknown = [f for f in report.findings if f.kind == "unknown_stripe_id"]
    assert [(f.stripe_id, f.salesforce_id) for f in unknown] == [("sub_Ghost1", ghost)]  # its own, not Europe's
    assert report.skipped_checks == [SEVERAL_ACCOUNTS_CUSTOMERS]  # Euroco's Account is not reported
    assert report.mismatches == 1
    assert subs["europe"] not in {f.stripe_id for f in report.findings}
