"""MRR as Stripe counts it, through the CLI against the stand-ins (issue 22 §4-§6).

`MRR__c`/`ARR__c`: the recurring value after forever discounts (subscription and item level), tax and metered
items out, tiered and package prices computed; `Amount`: the first paid period after every discount on it
(api-facts "Discounts", "Stripe's MRR"; stripe_sf_sync/mrr.py).
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest
from typer.testing import CliRunner

from stripe_sf_sandbox.salesforce_server import FieldDef, SalesforceOrg
from stripe_sf_sandbox.stripe_factory import (
    API_VERSION_BASIL,
    API_VERSION_CLOVER,
    API_VERSION_CURRENT,
    API_VERSION_PRE_BASIL,
    StripeFactory,
)
from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode

from .conftest import write_config
from .test_serve import deliver, event_of, eventually, serving

DAY = 86400
NOW = int(time.time())
T = NOW - 3 * DAY
GENERATIONS = [API_VERSION_PRE_BASIL, API_VERSION_BASIL, API_VERSION_CLOVER, API_VERSION_CURRENT]


def configured(tmp_path, runner: CliRunner, env: dict[str, str], **overrides: str):
    config = write_config(tmp_path / "sync.yaml", **overrides)
    result = runner.invoke(app, ["discover-config", "--config", str(config), "--write"], env=env)
    assert result.exit_code == 0, result.output
    return config


def sync(runner: CliRunner, config, env: dict[str, str], *, first: bool = True):
    day = time.strftime("%Y-%m-%d", time.gmtime(T - DAY))
    result = runner.invoke(app, ["sync", "--config", str(config), *(["--since", day] if first else [])], env=env)
    assert result.exit_code == ExitCode.OK, result.output
    return result


def customer(f: StripeFactory, org: SalesforceOrg, name: str) -> str:
    cus = f.customer(name, f"billing@{name.lower().replace(' ', '')}.example", created=T - 30 * DAY)
    org.insert("Account", {"Name": name, "Stripe_Customer_ID__c": cus["id"]})
    return str(cus["id"])


def figures(org: SalesforceOrg, sub_id: str) -> tuple[Decimal | None, ...]:
    [opp] = [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == sub_id]
    return tuple(None if opp.get(k) in (None, "") else Decimal(str(opp[k])).quantize(Decimal("0.01"))
                 for k in ("Amount", "MRR__c", "ARR__c"))


def discounted(f: StripeFactory, org: SalesforceOrg, label: str) -> tuple[dict[str, Any], str]:
    """Pro at 100.00 USD a month with LAUNCH20 (20 % forever, the subscription's) and WELCOME50 (50 % once,
    on the item): the first invoice charges 40.00; MRR counts the forever coupon only, 80.00."""
    cus = customer(f, org, label)
    sub = f.subscription(cus, [(f.price(10000, product_name="Pro"), 1)], created=T)
    launch = f.coupon(percent_off=20, duration="forever", name="LAUNCH20")
    f.add_discount(sub["id"], f.coupon(percent_off=50, duration="once", name="WELCOME50"), T, item=0, emit=False)
    launch_di = f.add_discount(sub["id"], launch, T, emit=False)
    f.subscription_created(sub, T)
    return sub, str(launch_di["id"])


@pytest.mark.parametrize("version", GENERATIONS)
def test_forever_discounts_lower_mrr_and_every_discount_lowers_the_first_amount(
        version, tmp_path, stripe_sb, org, sf_sb, cli_env):
    f = StripeFactory(stripe_sb, seed=41, api_version=version)
    sub, launch = discounted(f, org, "Discounted Co")
    runner = CliRunner()
    config = configured(tmp_path, runner, cli_env)
    sync(runner, config, cli_env)
    assert figures(org, sub["id"]) == (Decimal("40.00"), Decimal("80.00"), Decimal("960.00"))

    # The coupon removed: a `customer.subscription.updated` whose discounts changed is a value change.
    event = f.remove_discount(sub["id"], launch, T + DAY)
    key = "discount" if version == API_VERSION_PRE_BASIL else "discounts"
    assert key in event["data"]["previous_attributes"]
    sync(runner, config, cli_env, first=False)
    assert figures(org, sub["id"]) == (Decimal("40.00"), Decimal("100.00"), Decimal("1200.00"))


def test_price_shapes_are_computed_and_metered_items_stay_out(tmp_path, stripe_sb, org, sf_sb, cli_env):
    f = StripeFactory(stripe_sb, seed=42)
    tiers = [{"up_to": 5, "unit_amount": 1000}, {"up_to": None, "unit_amount": 800, "flat_amount": 500}]
    vat = f.tax_rate(20, inclusive=True)
    cases = {  # label: (items, expected MRR)
        "Graduated": ([(f.price(0, tiers=tiers), 8)], "79.00"),  # 5 x 10 + 3 x 8 + 5
        "Volume": ([(f.price(0, tiers=tiers, tiers_mode="volume"), 8)], "69.00"),  # 8 x 8 + 5
        "Package": ([(f.price(2000, transform_quantity={"divide_by": 10, "round": "up"}), 25)], "60.00"),
        "Mixed": ([(f.price(10000), 1), (f.price(120000, interval="year"), 1),
                   (f.price(5, usage_type="metered"), 0)], "200.00"),
    }
    subs = {}
    for n, (label, (items, _)) in enumerate(cases.items()):
        sub = f.subscription(customer(f, org, f"{label} Co"), items, created=T + n)
        f.subscription_created(sub, T + n)
        subs[label] = sub["id"]
    taxed = f.subscription(customer(f, org, "Taxed Co"), [(f.price(12000, tax_behavior="inclusive"), 1)],
                           created=T + 10, default_tax_rates=[vat])
    f.subscription_created(taxed, T + 10)
    runner = CliRunner()
    config = configured(tmp_path, runner, cli_env)
    sync(runner, config, cli_env)
    for label, (_, expected) in cases.items():
        assert figures(org, subs[label])[1] == Decimal(expected), label
    assert figures(org, taxed["id"]) == (Decimal("100.00"), Decimal("100.00"), Decimal("1200.00"))  # VAT out


def test_a_value_that_cannot_be_known_is_left_alone_and_said_once(tmp_path, stripe_sb, org, sf_sb, cli_env):
    f = StripeFactory(stripe_sb, seed=43)
    sub = f.subscription(customer(f, org, "Stripe Tax Co"), [(f.price(12000, tax_behavior="inclusive"), 1)],
                         created=T)
    stored = stripe_sb.get(sub["id"])
    stored["automatic_tax"]["enabled"] = True  # Stripe Tax: the tax inside depends on where the customer is
    stripe_sb.put(stored)
    f.subscription_created(sub, T)
    runner = CliRunner()
    config = configured(tmp_path, runner, cli_env)
    result = sync(runner, config, cli_env)
    assert figures(org, sub["id"]) == (None, None, None)
    said = [line for line in result.output.splitlines() if "left alone" in line]
    assert len(said) == 1 and "Stripe Tax" in said[0], result.output


def test_backfill_writes_the_discounted_mrr(tmp_path, stripe_sb, org, sf_sb, cli_env):
    f = StripeFactory(stripe_sb, seed=44, api_version=API_VERSION_CLOVER)
    cus = customer(f, org, "Old Discounted")
    sub = f.subscription(cus, [(f.price(10000), 2)], created=NOW - 200 * DAY)
    f.add_discount(sub["id"], f.coupon(amount_off=5000, currency="usd", duration="forever"), NOW - 200 * DAY,
                   emit=False)
    runner = CliRunner()
    config = configured(tmp_path, runner, cli_env)
    day = time.strftime("%Y-%m-%d", time.gmtime(NOW - 400 * DAY))
    result = runner.invoke(app, ["backfill", "--config", str(config), "--since", day, "--objects", "subscriptions"],
                           env=cli_env)
    assert result.exit_code == ExitCode.OK, result.output
    assert figures(org, sub["id"]) == (Decimal("150.00"), Decimal("150.00"), Decimal("1800.00"))


def test_serve_applies_a_coupon_added_later(tmp_path, stripe_sb, org, sf_sb, cli_env, env):
    f = StripeFactory(stripe_sb, seed=45, api_version=API_VERSION_CLOVER)
    cus = customer(f, org, "Served Co")
    sub = f.subscription(cus, [(f.price(10000), 1)], created=T)
    created = f.subscription_created(sub, T)
    added = f.add_discount(sub["id"], f.coupon(percent_off=25, duration="forever"), T + 60)
    runner = CliRunner()
    config = configured(tmp_path, runner, cli_env)
    with serving(config, env) as (url, _srv):
        for event in (created, added):
            assert deliver(url, event_of(stripe_sb, event["id"])).status_code == 200
        eventually(lambda: figures_or_none(org, sub["id"]) == (Decimal("100.00"), Decimal("75.00"), Decimal("900.00")))


def figures_or_none(org: SalesforceOrg, sub_id: str) -> tuple[Decimal | None, ...] | None:
    try:
        return figures(org, sub_id)
    except ValueError:
        return None


def account_mrr_config(tmp_path, runner: CliRunner, org: SalesforceOrg, env: dict[str, str]):
    org.schema["Account"]["Account_MRR__c"] = FieldDef("Account_MRR__c", "currency", precision=16, scale=2)
    return configured(tmp_path, runner, env, **{"account_mrr: null": "account_mrr: Account_MRR__c"})


@pytest.mark.parametrize("version", [API_VERSION_PRE_BASIL, API_VERSION_CLOVER])
def test_the_account_holds_the_customers_mrr_and_follows_each_change(version, tmp_path, stripe_sb, org, sf_sb,
                                                                     cli_env):
    f = StripeFactory(stripe_sb, seed=46, api_version=version)
    cus = customer(f, org, "Two Subs")
    pro = f.subscription(cus, [(f.price(10000), 1)], created=T)
    f.add_discount(pro["id"], f.coupon(percent_off=20, duration="forever"), T, emit=False)
    f.subscription_created(pro, T)
    trial = f.subscription(cus, [(f.price(5000), 1)], status="trialing", created=T + 60)
    f.subscription_created(trial, T + 60)
    runner = CliRunner()
    config = account_mrr_config(tmp_path, runner, org, cli_env)
    sync(runner, config, cli_env)
    [acct] = [a for a in org.records("Account") if a.get("Stripe_Customer_ID__c") == cus]
    assert Decimal(str(acct["Account_MRR__c"])) == Decimal("80.00")  # the trial is not counted yet

    f.subscription_updated(trial["id"], {"status": "active", "trial_end": T + DAY}, T + DAY)  # the trial ends
    sync(runner, config, cli_env, first=False)
    assert Decimal(str(org.get("Account", acct["Id"])["Account_MRR__c"])) == Decimal("130.00")
    f.subscription_updated(pro["id"], {"cancel_at_period_end": True}, T + DAY + 60)  # no longer counted
    sync(runner, config, cli_env, first=False)
    assert Decimal(str(org.get("Account", acct["Id"])["Account_MRR__c"])) == Decimal("50.00")


def test_a_customer_billed_in_two_currencies_keeps_its_account_mrr_with_a_warning(tmp_path, stripe_sb, org, sf_sb,
                                                                                  cli_env):
    f = StripeFactory(stripe_sb, seed=47)
    cus = customer(f, org, "Two Currencies")
    for n, currency in enumerate(("usd", "eur")):
        sub = f.subscription(cus, [(f.price(10000, currency), 1)], created=T + n)
        f.subscription_created(sub, T + n)
    runner = CliRunner()
    config = account_mrr_config(tmp_path, runner, org, cli_env)
    result = sync(runner, config, cli_env)
    [acct] = [a for a in org.records("Account") if a.get("Stripe_Customer_ID__c") == cus]
    assert acct.get("Account_MRR__c") in (None, "")
    said = [line for line in result.output.splitlines() if "several currencies (EUR, USD)" in line]
    assert len(said) == 1, result.output  # two events of the customer in the batch: said once


def test_backfill_reads_the_first_invoice_of_a_renewed_subscription(tmp_path, stripe_sb, org, sf_sb, cli_env):
    """Its once coupon was used up long ago: the first period's Amount is what its first invoice charged."""
    f = StripeFactory(stripe_sb, seed=48)
    cus = customer(f, org, "Renewed Co")
    start = NOW - 200 * DAY
    sub = f.subscription(cus, [(f.price(10000), 1)], created=start, current_period_start=NOW - 10 * DAY)
    f.add_discount(sub["id"], f.coupon(percent_off=20, duration="forever"), start, emit=False)
    f.invoice(sub["id"], cus, 4000, "usd", created=start, status="paid")  # WELCOME50 (once) and LAUNCH20
    f.invoice(sub["id"], cus, 8000, "usd", created=NOW - 10 * DAY, status="paid")  # a later one: not the first
    runner = CliRunner()
    config = configured(tmp_path, runner, cli_env)
    day = time.strftime("%Y-%m-%d", time.gmtime(NOW - 400 * DAY))
    result = runner.invoke(app, ["backfill", "--config", str(config), "--since", day, "--objects", "subscriptions"],
                           env=cli_env)
    assert result.exit_code == ExitCode.OK, result.output
    assert figures(org, sub["id"]) == (Decimal("40.00"), Decimal("80.00"), Decimal("960.00"))


def test_reconcile_totals_follow_stripes_definition_and_check_the_account_mrr(tmp_path, stripe_sb, org, sf_sb,
                                                                               cli_env):
    f = StripeFactory(stripe_sb, seed=49, api_version=API_VERSION_CLOVER)
    counted = f.subscription(customer(f, org, "Counted"), [(f.price(10000), 1)], created=T)
    f.add_discount(counted["id"], f.coupon(percent_off=20, duration="forever"), T, emit=False)
    f.subscription_created(counted, T)
    trial = f.subscription(customer(f, org, "Trial"), [(f.price(5000), 1)], status="trialing", created=T + 1)
    f.subscription_created(trial, T + 1)
    leaving = f.subscription(customer(f, org, "Leaving"), [(f.price(3000), 1)], created=T + 2)
    f.subscription_created(leaving, T + 2)
    f.subscription_updated(leaving["id"], {"cancel_at_period_end": True}, T + 60)
    unpaid = f.subscription(customer(f, org, "Unpaid"), [(f.price(4000), 1)], created=T + 3)
    f.subscription_created(unpaid, T + 3)
    f.subscription_updated(unpaid["id"], {"status": "unpaid"}, T + 120)
    runner = CliRunner()
    config = account_mrr_config(tmp_path, runner, org, cli_env)
    sync(runner, config, cli_env)

    result = runner.invoke(app, ["reconcile", "--config", str(config), "--json"], env=cli_env)
    assert result.exit_code == ExitCode.OK, result.output
    doc = json.loads(result.stdout)
    assert doc["totals"] == {"USD": {"stripe_mrr": "80.00", "salesforce_mrr": "80.00", "difference": "0.00",
                                     "apart_subscriptions": "3", "apart_stripe_mrr": "120.00",
                                     "apart_salesforce_mrr": "120.00"}}
    text = runner.invoke(app, ["reconcile", "--config", str(config)], env=cli_env).output
    assert "USD, counted apart: 3 won subscriptions" in text

    # At list price, as before discounts counted: both the Opportunity and the Account differ from Stripe.
    [opp] = [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == counted["id"]]
    org.update("Opportunity", opp["Id"], {"MRR__c": 100})
    org.update("Account", opp["AccountId"], {"Account_MRR__c": 100})
    result = runner.invoke(app, ["reconcile", "--config", str(config), "--json"], env=cli_env)
    assert result.exit_code == ExitCode.DRIFT, result.output
    found = {(d["kind"], v["field"], v["stripe"], v["salesforce"]) for d in json.loads(result.stdout)["details"]
             for v in d["values"]}
    assert found == {("value_mismatch", "MRR__c", "80.00", "100.00"),
                     ("account_mrr_mismatch", "Account_MRR__c", "80.00", "100.00")}


def test_worked_example_one_customers_year(tmp_path, stripe_sb, org, sf_sb, cli_env):
    """docs: the year of one customer (compressed into hours: events older than 30 days are gone), and what
    Salesforce shows after each step, beside what Stripe's Dashboard counts."""
    f = StripeFactory(stripe_sb, seed=50)
    cus = customer(f, org, "Year Co")
    pro, addon = f.price(10000, product_name="Pro"), f.price(120000, interval="year", product_name="Add-on")
    sub = f.subscription(cus, [(pro, 1)], created=T)
    launch = f.add_discount(sub["id"], f.coupon(percent_off=20, duration="forever", name="LAUNCH20"), T, emit=False)
    welcome = f.add_discount(sub["id"], f.coupon(percent_off=50, duration="repeating", duration_in_months=3,
                                                 name="WELCOME50"), T, emit=False)
    f.subscription_created(sub, T)
    runner = CliRunner()
    config = account_mrr_config(tmp_path, runner, org, cli_env)
    steps = [  # (what happens, then: Amount, MRR, ARR, the Account's MRR = Stripe's Dashboard)
        (lambda at: None, ("40.00", "80.00", "960.00", "80.00")),
        (lambda at: f.remove_discount(sub["id"], welcome["id"], at), ("40.00", "80.00", "960.00", "80.00")),
        (lambda at: f.subscription_updated(sub["id"], {"items": [(pro, 3)]}, at), ("40.00", "240.00", "2880.00",
                                                                                   "240.00")),
        (lambda at: f.subscription_updated(sub["id"], {"items": [(pro, 3), (addon, 1)]}, at),
         ("40.00", "320.00", "3840.00", "320.00")),
        (lambda at: f.remove_discount(sub["id"], launch["id"], at), ("40.00", "400.00", "4800.00", "400.00")),
        (lambda at: f.subscription_updated(sub["id"], {"cancel_at_period_end": True}, at),
         ("40.00", "400.00", "4800.00", "0.00")),
    ]
    for n, (step, expected) in enumerate(steps):
        step(T + n * 3600)
        sync(runner, config, cli_env, first=n == 0)
        [acct] = [a for a in org.records("Account") if a.get("Stripe_Customer_ID__c") == cus]
        shown = (*figures(org, sub["id"]), Decimal(str(acct["Account_MRR__c"])).quantize(Decimal("0.01")))
        assert shown == tuple(Decimal(x) for x in expected), n


def test_a_discount_is_read_once_a_run_however_many_batches_change_the_subscription(tmp_path, stripe_sb, org, sf_sb,
                                                                                     cli_env):
    f = StripeFactory(stripe_sb, seed=51, api_version=API_VERSION_CLOVER)
    price = f.price(10000)
    sub = f.subscription(customer(f, org, "Batches Co"), [(price, 1)], created=T)
    f.add_discount(sub["id"], f.coupon(percent_off=20, duration="forever"), T, emit=False)
    f.subscription_created(sub, T)
    f.subscription_updated(sub["id"], {"items": [(price, 2)]}, T + 60)  # a plan change, in the next batch
    runner = CliRunner()
    config = configured(tmp_path, runner, cli_env, **{"batch_size: 10000": "batch_size: 1"})
    mark = len(stripe_sb.requests_log)
    sync(runner, config, cli_env)
    assert figures(org, sub["id"]) == (Decimal("80.00"), Decimal("160.00"), Decimal("1920.00"))
    reads = [(p, q.get("expand")) for _, p, q in stripe_sb.requests_log[mark:] if p.startswith(("/v1/subscriptions/",
                                                                                               "/v1/coupons/"))]
    assert len(reads) == 2, reads  # the subscription's Discounts once, the coupon once


@pytest.mark.parametrize("version", [API_VERSION_PRE_BASIL, API_VERSION_CLOVER])
def test_a_won_trial_shows_what_its_first_invoice_will_charge(version, tmp_path, stripe_sb, org, sf_sb, cli_env):
    """Amount of a trial: one period after every discount still on it at the trial's end (a once coupon has
    not been used yet); MRR counts the forever ones only."""
    f = StripeFactory(stripe_sb, seed=52, api_version=version)
    sub = f.subscription(customer(f, org, "Trial Co"), [(f.price(10000), 2)], status="trialing", created=T)
    f.add_discount(sub["id"], f.coupon(amount_off=5000, currency="usd", duration="once"), T, emit=False)
    f.subscription_created(sub, T)
    runner = CliRunner()
    config = configured(tmp_path, runner, cli_env)
    sync(runner, config, cli_env)
    assert figures(org, sub["id"]) == (Decimal("150.00"), Decimal("200.00"), Decimal("2400.00"))
