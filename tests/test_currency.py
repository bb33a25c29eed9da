"""Money in the currency the customer is billed in, end to end against the stand-ins.

A subscription billed in one of its Price's `currency_options` says so in `subscription.currency`, while
its items show the Price's default currency and amount (Stripe API reference: Prices). A multi-currency Salesforce org
reads an amount in the record's CurrencyIsoCode (Salesforce Help: multiple currencies).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from stripe_sf_sandbox.demo import sandbox_environment
from stripe_sf_sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync import service
from stripe_sf_sync.salesforce.org import ORG_CACHE_KEY
from stripe_sf_sync.state import StateStore

from .conftest import write_config

DAY = 86400
NOW = int(time.time())
T = NOW - 2 * DAY


@contextmanager
def salesforce(tmp_path: Path, stripe_sb: StripeSandbox, currencies: list[str] | None, *, default_currency: str = "USD",
               **overrides: str) -> Iterator[tuple[SalesforceOrg, service.Environment, Path]]:
    """An org (multi-currency when `currencies` is given), its stand-in, and a discovered config."""
    org = SalesforceOrg(won_stage="Won", currencies=currencies, default_currency=default_currency)
    with SalesforceSandbox(org) as sb:
        env = sandbox_environment(stripe_sb, sb)
        env.sleep = lambda s: None
        config = write_config(tmp_path / "sync.yaml", **overrides)
        service.run_discover(config, env, write=True, example=config.read_text())
        yield org, env, config


def sync(config: Path, env: service.Environment, since: int | None = T - DAY):
    day = time.strftime("%Y-%m-%d", time.gmtime(since)) if since is not None else None
    return service.run_sync(config, env, since=day, dry_run=False, max_events=None)


def customer(f: StripeFactory, org: SalesforceOrg, name: str) -> str:
    cus = f.customer(name, f"billing@{name.lower().replace(' ', '')}.example", created=T - 30 * DAY)
    org.insert("Account", {"Name": name, "Stripe_Customer_ID__c": cus["id"]})
    return str(cus["id"])


def euro_world(stripe_sb: StripeSandbox, org: SalesforceOrg) -> dict[str, Any]:
    """Two customers billed in EUR on one USD-default Price (USD 100.00, EUR 90.00 a month), and one in USD."""
    f = StripeFactory(stripe_sb, seed=31)
    price = f.price(10000, "usd", "month", product_name="Pro", currency_options={"eur": 9000})
    out: dict[str, Any] = {"price": price["id"], "f": f}
    for label, currency, qty, at in (("euro", "eur", 2, T), ("euro2", "eur", 1, T + 60), ("dollar", "usd", 1, T + 120)):
        cus = customer(f, org, f"{label.title()} Co")
        sub = f.subscription(cus, [(price, qty)], created=at, currency=currency)
        f.subscription_created(sub, at)
        out[label] = sub["id"]
    return out


def opportunity(org: SalesforceOrg, sub_id: str) -> dict[str, Any]:
    [opp] = [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == sub_id]
    return opp


def money_of(opp: dict[str, Any]) -> tuple[Decimal, Decimal, Decimal]:
    return tuple(Decimal(str(opp[k])).quantize(Decimal("0.01")) for k in ("Amount", "MRR__c", "ARR__c"))


def price_reads(stripe_sb: StripeSandbox, mark: int = 0) -> list[tuple[str, Any]]:
    return [(path, params.get("expand")) for _, path, params in stripe_sb.requests_log[mark:]
            if path.startswith("/v1/prices/")]


WRITE_AS_IS = {"currency_mismatch: dead_letter": "currency_mismatch: write_as_is"}


def test_single_currency_org_gets_the_billed_currency_amounts_when_told_to_write_them_as_is(tmp_path, stripe_sb):
    with salesforce(tmp_path, stripe_sb, None, **WRITE_AS_IS) as (org, env, config):
        w = euro_world(stripe_sb, org)
        summary = sync(config, env)
        assert summary.applied == 3 and summary.dead_lettered == 0
        euro = opportunity(org, w["euro"])
        # 2 x EUR 90.00, not 2 x USD 100.00 (the Price's default amount the items show).
        assert money_of(euro) == (Decimal("180.00"), Decimal("180.00"), Decimal("2160.00"))
        assert "CurrencyIsoCode" not in euro  # the org has no such field; sending it would be refused
        assert money_of(opportunity(org, w["euro2"])) == (Decimal("90.00"), Decimal("90.00"), Decimal("1080.00"))
        assert money_of(opportunity(org, w["dollar"])) == (Decimal("100.00"), Decimal("100.00"), Decimal("1200.00"))
        # One price read for both EUR subscriptions, none for the USD one.
        assert price_reads(stripe_sb) == [(f"/v1/prices/{w['price']}", ["tiers", "currency_options"])]


def test_single_currency_org_dead_letters_another_currency_naming_both(tmp_path, stripe_sb):
    """A USD org without multiple currencies would read EUR 180.00 as USD 180.00 (Salesforce Help, "Multiple
    Currencies"): the EUR events wait as CURRENCY_MISMATCH, whole, and the USD one is written."""
    with salesforce(tmp_path, stripe_sb, None) as (org, env, config):
        w = euro_world(stripe_sb, org)
        summary = sync(config, env)
        assert summary.applied == 1 and summary.dead_lettered == 2
        assert [o["Stripe_Subscription_ID__c"] for o in org.records("Opportunity")] == [w["dollar"]]
        assert {a["Name"]: a.get("Subscription_Status__c") for a in org.records("Account")} == {
            "Euro Co": None, "Euro2 Co": None, "Dollar Co": "active"}
        with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
            letters = st.dead_letters()
            assert json.loads(st.get_meta(ORG_CACHE_KEY))["currency"] == "USD"
        assert {d.error_code for d in letters} == {"CURRENCY_MISMATCH"}
        reason = letters[0].reason
        assert "EUR" in reason and "USD" in reason and "currency_mismatch: write_as_is" in reason
        assert "stripe-sf dlq retry --all" in reason

        # The org accepts the numbers as they are: the config says so, and the retry writes them.
        config.write_text(config.read_text().replace(*next(iter(WRITE_AS_IS.items()))))
        retried = service.run_dlq_retry(config, env, event_ids=[], retry_all=True)
        assert retried.applied == 2 and retried.dead_lettered == 0
        assert money_of(opportunity(org, w["euro"])) == (Decimal("180.00"), Decimal("180.00"), Decimal("2160.00"))


def test_single_currency_org_in_the_billed_currency_takes_it(tmp_path, stripe_sb):
    with salesforce(tmp_path, stripe_sb, None, default_currency="EUR") as (org, env, config):
        w = euro_world(stripe_sb, org)
        summary = sync(config, env)
        assert summary.applied == 2 and summary.dead_lettered == 1
        assert {o["Stripe_Subscription_ID__c"] for o in org.records("Opportunity")} == {w["euro"], w["euro2"]}
        with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
            [letter] = st.dead_letters()
        assert letter.error_code == "CURRENCY_MISMATCH" and "USD" in letter.reason and "EUR" in letter.reason


def test_multi_currency_org_gets_currency_iso_code(tmp_path, stripe_sb):
    with salesforce(tmp_path, stripe_sb, ["USD", "EUR"]) as (org, env, config):
        w = euro_world(stripe_sb, org)
        summary = sync(config, env)
        assert summary.applied == 3 and summary.dead_lettered == 0
        euro = opportunity(org, w["euro"])
        assert money_of(euro) == (Decimal("180.00"), Decimal("180.00"), Decimal("2160.00"))
        assert euro["CurrencyIsoCode"] == "EUR"
        assert opportunity(org, w["euro2"])["CurrencyIsoCode"] == "EUR"
        assert opportunity(org, w["dollar"])["CurrencyIsoCode"] == "USD"


def test_multi_currency_org_one_time_payment_gets_its_own_currency(tmp_path, stripe_sb):
    with salesforce(tmp_path, stripe_sb, ["USD", "EUR"]) as (org, env, config):
        f = StripeFactory(stripe_sb, seed=32)
        cus = customer(f, org, "Once Co")
        pi = f.payment_intent(cus, 4200, "eur", status="requires_payment_method", created=T)
        f.payment_succeeded(pi["id"], T + 30)
        summary = sync(config, env)
        assert summary.applied == 1
        [opp] = org.records("Opportunity")
        assert opp["Stripe_Payment_Intent_ID__c"] == pi["id"]
        assert (Decimal(str(opp["Amount"])), opp["CurrencyIsoCode"]) == (Decimal("42"), "EUR")


def test_currency_the_org_lacks_is_dead_lettered_before_writing_then_retried(tmp_path, stripe_sb):
    with salesforce(tmp_path, stripe_sb, ["USD", "GBP"]) as (org, env, config):
        w = euro_world(stripe_sb, org)
        summary = sync(config, env)
        assert summary.applied == 1 and summary.dead_lettered == 2  # the USD one is written
        assert [o["Stripe_Subscription_ID__c"] for o in org.records("Opportunity")] == [w["dollar"]]
        # The whole event waits: not even its Account status was written.
        assert {a["Name"]: a.get("Subscription_Status__c") for a in org.records("Account")} == {
            "Euro Co": None, "Euro2 Co": None, "Dollar Co": "active"}
        with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
            letters = st.dead_letters()
        assert {d.error_code for d in letters} == {"CURRENCY_NOT_ACTIVE"}
        reason = letters[0].reason
        assert "EUR" in reason and "Setup > Company Information > Currencies" in reason
        assert "stripe-sf dlq retry --all" in reason

        org.activate_currency("EUR")  # the admin follows the advice; the org facts cached by sync are stale
        retried = service.run_dlq_retry(config, env, event_ids=[], retry_all=True)
        assert retried.applied == 2 and retried.dead_lettered == 0
        assert opportunity(org, w["euro"])["CurrencyIsoCode"] == "EUR"
        assert money_of(opportunity(org, w["euro"])) == (Decimal("180.00"), Decimal("180.00"), Decimal("2160.00"))


def test_price_without_an_option_for_the_billed_currency_is_dead_lettered(tmp_path, stripe_sb):
    with salesforce(tmp_path, stripe_sb, None) as (org, env, config):
        w = euro_world(stripe_sb, org)
        stored = stripe_sb.get(w["price"])
        del stored["currency_options"]["eur"]  # as if the EUR amount were gone from the Price
        stripe_sb.put(stored)
        summary = sync(config, env)
        assert summary.applied == 1 and summary.dead_lettered == 2
        with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
            letters = st.dead_letters()
        assert {d.error_code for d in letters} == {"NO_CURRENCY_OPTION"}
        assert w["price"] in letters[0].reason and "EUR" in letters[0].reason
        assert [o["Stripe_Subscription_ID__c"] for o in org.records("Opportunity")] == [w["dollar"]]


def test_org_facts_cached_before_currencies_were_learnt_are_described_again(tmp_path, stripe_sb):
    with salesforce(tmp_path, stripe_sb, ["USD", "EUR"]) as (org, env, config):
        f = StripeFactory(stripe_sb, seed=33)
        price = f.price(10000, "usd", "month", currency_options={"eur": 9000})
        cus = customer(f, org, "Later Co")
        first = f.subscription(cus, [(price, 1)], created=T, currency="eur")
        f.subscription_created(first, T)
        sync(config, env)
        state_path = config.parent / "stripe-sf-state.sqlite"
        with StateStore.open(state_path) as st:
            cached = json.loads(st.get_meta(ORG_CACHE_KEY))
            assert cached["currencies"] == ["EUR", "USD"]
            # What an earlier stripe-sf cached: no word on currencies (read as "single-currency" it would
            # leave CurrencyIsoCode out for a day, and the org would take the amounts as USD).
            st.set_meta(ORG_CACHE_KEY, json.dumps({k: v for k, v in cached.items() if k != "currencies"}))
        later = f.subscription(cus, [(price, 2)], created=T + 20, currency="eur")
        f.subscription_created(later, T + 20)
        summary = sync(config, env, since=None)
        assert summary.applied == 1
        assert opportunity(org, later["id"])["CurrencyIsoCode"] == "EUR"
        with StateStore.open(state_path) as st:
            assert json.loads(st.get_meta(ORG_CACHE_KEY))["currencies"] == ["EUR", "USD"]


def test_backfill_converts_like_sync(tmp_path, stripe_sb):
    with salesforce(tmp_path, stripe_sb, ["USD", "EUR"]) as (org, env, config):
        f = StripeFactory(stripe_sb, seed=34)
        price = f.price(10000, "usd", "month", currency_options={"eur": 9000})
        subs = []
        for i in range(3):
            cus = customer(f, org, f"Old {i}")
            subs.append(f.subscription(cus, [(price, i + 1)], created=NOW - (60 + i) * DAY, currency="eur")["id"])
        mark = len(stripe_sb.requests_log)
        summary = service.run_backfill(config, env, since=time.strftime("%Y-%m-%d", time.gmtime(NOW - 90 * DAY)),
                                       until=None, objects="subscriptions", dry_run=False, resume=False)
        assert summary.dead_lettered == 0
        for i, sub_id in enumerate(subs):
            opp = opportunity(org, sub_id)
            assert opp["CurrencyIsoCode"] == "EUR"
            assert Decimal(str(opp["Amount"])) == Decimal(90 * (i + 1))
        assert len(price_reads(stripe_sb, mark)) == 1  # one read for the Price, not one per subscription


def test_price_reads_are_paced_counted_cached_per_run_and_bounded(stripe_sb, monkeypatch):
    from stripe_sf_sandbox.stripe_factory import API_VERSION_CURRENT
    from stripe_sf_sync.stripe import caches as stripe_caches
    from stripe_sf_sync.stripe import source as stripe_source

    f = StripeFactory(stripe_sb, seed=35)
    prices = [f.price(1000 * (i + 1), "usd", currency_options={"eur": 900 * (i + 1)})["id"] for i in range(3)]
    client, http = stripe_source.build_client(stripe_sb.api_key, api_base=stripe_sb.base_url,
                                              api_version=API_VERSION_CURRENT, timeout=5)
    source = stripe_source.StripeSource(client, http, api_version=API_VERSION_CURRENT)
    monkeypatch.setattr(stripe_caches, "MAX_CACHED_PRICES", 2)
    assert source.price_currency_options(prices[0]) == {
        "usd": {"unit_amount": 1000, "unit_amount_decimal": "1000"},
        "eur": {"unit_amount": 900, "unit_amount_decimal": "900"}}
    source.forget()  # the per-batch caches go; Prices stay for the run
    source.price_currency_options(prices[0])
    assert source.calls == 1
    source.price_currency_options(prices[1])
    source.price_currency_options(prices[2])  # the bound drops the oldest
    source.price_currency_options(prices[0])
    assert source.calls == 4
    assert source.price_currency_options("price_NoSuchPrice0001") is None  # gone: the event dead-letters
    assert [p for _, p, _ in stripe_sb.requests_log].count(f"/v1/prices/{prices[0]}") == 2
