"""Renewals are not plan changes (issue 19 §1), and scheduled cancellations by `cancel_at` (§2): through the
CLI's `sync` against both stand-ins, with the sandbox emitting renewals as Stripe does (automatic
`customer.subscription.updated` events whose `previous_attributes` carry `items` from basil on, the period
fields before it)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from typer.testing import CliRunner

from stripe_sf_sandbox.demo import sandbox_environment
from stripe_sf_sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox
from stripe_sf_sandbox.stripe_factory import API_VERSION_PRE_BASIL, StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync import service
from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.state import StateStore

from .conftest import snapshot, write_config

DAY = 86400


@dataclass
class Book:
    """The subscriptions of a month of renewals, by label."""

    subscriptions: dict[str, str] = field(default_factory=dict)
    accounts: dict[str, str] = field(default_factory=dict)
    factories: dict[str, StripeFactory] = field(default_factory=dict)
    renewals: int = 0


def a_month_of_renewals(stripe_sb: StripeSandbox, org: SalesforceOrg, now: int) -> Book:
    """Monthly and weekly subscriptions in both payload shapes, started before the first sync: some with a won
    Opportunity, some without one (they predate stripe-sf). Accounts already say `active`. Then every renewal
    of the last month, each paid an hour later."""
    book = Book()
    for shape, version, seed in (("basil", None, 31), ("old", API_VERSION_PRE_BASIL, 32)):
        f = StripeFactory(stripe_sb, seed=seed, **({"api_version": version} if version else {}))
        book.factories[shape] = f
        monthly, weekly = f.price(4900, "usd", "month"), f.price(900, "usd", "week")
        for label, price, qty, started, with_opp in (
                ("monthly-opp", monthly, 2, now - 40 * DAY, True), ("monthly-none", monthly, 1, now - 38 * DAY, False),
                ("weekly-opp", weekly, 3, now - 31 * DAY, True), ("weekly-none", weekly, 1, now - 30 * DAY, False),
                ("many-items", monthly, 1, now - 45 * DAY, True)):
            name = f"{shape} {label}"
            cus = f.customer(name, f"{shape}-{label}@example.com", created=started - DAY)
            acct = org.insert("Account", {"Name": name, "Stripe_Customer_ID__c": cus["id"],
                                          "Subscription_Status__c": "active"})
            items = [(price, qty)] if label != "many-items" else [(f.price(100 + i, "usd", "month"), 1)
                                                                  for i in range(12)]  # past the first page
            sub = f.subscription(cus["id"], items, created=started, current_period_start=started)
            book.subscriptions[f"{shape} {label}"], book.accounts[name] = sub["id"], acct
            if with_opp:
                org.insert("Opportunity", {"Name": name, "AccountId": acct, "StageName": "Closed Won",
                                           "CloseDate": time.strftime("%Y-%m-%d", time.gmtime(started)),
                                           "Stripe_Subscription_ID__c": sub["id"],
                                           "RecordTypeId": org.record_type_id("New_Business")})
    renew_all(stripe_sb, book, until=now - 120)
    return book


def renew_all(stripe_sb: StripeSandbox, book: Book, *, until: int) -> None:
    """Every renewal due up to `until`, in time order."""
    while True:
        due = []
        for label, sub_id in book.subscriptions.items():
            sub = stripe_sb.get(sub_id)
            end = sub["items"]["data"][0]["current_period_end"]
            if end <= until:
                due.append((end, label.split(" ")[0], sub_id))
        if not due:
            return
        end, shape, sub_id = min(due)
        book.factories[shape].renewal(sub_id)
        book.renewals += 1


def cli_env(stripe_sb: StripeSandbox, sf_sb: SalesforceSandbox) -> dict[str, str]:
    return {"STRIPE_API_KEY": stripe_sb.api_key, "STRIPE_API_BASE": stripe_sb.base_url,
            "SF_INSTANCE_URL": sf_sb.instance_url, "SF_ACCESS_TOKEN": sf_sb.access_token,
            "REQUESTS_CA_BUNDLE": sf_sb.ca_path}


def writes(sf_sb: SalesforceSandbox, since: int = 0) -> list[tuple[str, str]]:
    """The Salesforce write calls the stand-in answered (a Composite of queries or describes reads only)."""
    return [(m, p) for m, p in sf_sb.requests_log[since:] if m != "GET" and not p.rstrip("/").endswith("/composite")]


def sync(runner: CliRunner, config, env, *, since: int | None = None):
    args = ["sync", "--config", str(config)] + (["--since", time.strftime("%Y-%m-%d", time.gmtime(since))]
                                                 if since else [])
    return runner.invoke(app, args, env=env)


def configured(tmp_path, runner, env):
    config = write_config(tmp_path / "sync.yaml")
    result = runner.invoke(app, ["discover-config", "--config", str(config), "--write"], env=env)
    assert result.exit_code == 0, result.output
    return config


def test_a_month_of_renewals_writes_nothing_and_dead_letters_nothing(tmp_path, stripe_sb, org, sf_sb):
    now = int(time.time())
    book = a_month_of_renewals(stripe_sb, org, now)
    assert book.renewals >= 20  # 2 shapes x (1 + 1 + 4 + 4 + 1)
    shapes = {tuple(sorted(e["data"]["previous_attributes"])) for e in stripe_sb.events
              if e["type"] == "customer.subscription.updated"}
    assert shapes == {("items", "latest_invoice"), ("current_period_end", "current_period_start", "latest_invoice")}
    runner, env = CliRunner(), cli_env(stripe_sb, sf_sb)
    config = configured(tmp_path, runner, env)
    before, calls = snapshot(org), len(sf_sb.requests_log)

    result = sync(runner, config, env, since=now - 29 * DAY)

    assert result.exit_code == ExitCode.OK, result.output
    assert writes(sf_sb, calls) == []  # not one Salesforce write call
    assert snapshot(org) == before
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        assert st.dead_letter_count() == 0
    assert "no Opportunity has" not in result.output


def test_a_plan_change_without_an_opportunity_applies_the_rest_and_is_logged_once(tmp_path, stripe_sb, org, sf_sb):
    now = int(time.time())
    book = a_month_of_renewals(stripe_sb, org, now - DAY)
    f = book.factories["basil"]
    sub_id = book.subscriptions["basil monthly-none"]
    price = stripe_sb.get(sub_id)["items"]["data"][0]["price"]
    f.subscription_updated(sub_id, {"items": [(price, 5)]}, now - 3600)
    f.subscription_updated(sub_id, {"items": [(price, 6)], "status": "past_due"}, now - 1800)
    runner, env = CliRunner(), cli_env(stripe_sb, sf_sb)
    config = configured(tmp_path, runner, env)

    result = sync(runner, config, env, since=now - 29 * DAY)

    assert result.exit_code == ExitCode.OK, result.output
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        assert st.dead_letter_count() == 0
    account = org.get("Account", book.accounts["basil monthly-none"])
    assert account["Subscription_Status__c"] == "past_due"  # the rest of the event applied
    tasks = [t for t in org.records("Task") if t["WhatId"] == account["Id"]]
    assert [t["Subject"] for t in tasks] == ["Subscription status: active → past_due"]
    said = [line for line in result.output.splitlines() if "no Opportunity has" in line]
    assert len(said) == 1 and sub_id in said[0] and "2 events" in said[0], result.output
    assert "stripe-sf reconcile" in said[0]
    assert not [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == sub_id]
    _, report = service.run_reconcile(config, sandbox_environment(stripe_sb, sf_sb), since=None,
                                      objects="subscriptions", fix=False, dry_run=False)
    assert sub_id in {x.stripe_id for x in report.findings if x.kind == "missing_opportunity"}  # as before


def test_a_plan_change_reads_an_items_list_with_has_more_to_its_end(tmp_path, stripe_sb, org, sf_sb):
    now = int(time.time())
    book = a_month_of_renewals(stripe_sb, org, now - DAY)
    sub_id = book.subscriptions["basil many-items"]
    items = stripe_sb.get(sub_id)["items"]["data"]
    assert len(items) == 12
    pairs = [(i["price"], 1) for i in items]
    pairs[0] = (items[0]["price"], 3)  # 3 x 1.00 + 1.01 + ... + 1.11 = 14.66
    event = book.factories["basil"].subscription_updated(sub_id, {"items": pairs}, now - 600)
    assert event["data"]["object"]["items"]["has_more"] is True and len(event["data"]["object"]["items"]["data"]) == 10
    runner, env = CliRunner(), cli_env(stripe_sb, sf_sb)
    config = configured(tmp_path, runner, env)

    result = sync(runner, config, env, since=now - 29 * DAY)

    assert result.exit_code == ExitCode.OK, result.output
    [opp] = [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == sub_id]
    assert str(opp["MRR__c"]) == "14.66"  # every item, not only the first page's ten (12.45)


def test_the_stand_in_pages_subscription_items_and_embeds_a_first_page(stripe_sb):
    f = StripeFactory(stripe_sb, seed=33)
    cus = f.customer("Many", "many@example.com")
    sub = f.subscription(cus["id"], [(f.price(100 + i), 1) for i in range(12)])
    client = stripe_sb.client()
    embedded = client.v1.subscriptions.retrieve(sub["id"])["items"]
    assert len(embedded["data"]) == 10 and embedded["has_more"] is True
    first = client.v1.subscription_items.list({"subscription": sub["id"], "limit": 5})
    assert len(first.data) == 5 and first.has_more
    every = list(client.v1.subscription_items.list({"subscription": sub["id"], "limit": 5}).auto_paging_iter())
    assert sorted(i["id"] for i in every) == sorted(i["id"] for i in stripe_sb.get(sub["id"])["items"]["data"])
    old = stripe_sb.client(stripe_version=API_VERSION_PRE_BASIL)  # the period lived on the subscription then
    assert "current_period_end" not in old.v1.subscription_items.list({"subscription": sub["id"]}).data[0]
    assert "current_period_end" in every[0]


def test_a_cancellation_scheduled_with_cancel_at_raises_the_early_warning(tmp_path, stripe_sb, org, sf_sb):
    now = int(time.time())
    book = a_month_of_renewals(stripe_sb, org, now - DAY)
    sub_id = book.subscriptions["basil monthly-opp"]
    cancel_on = now + 10 * DAY
    event = book.factories["basil"].schedule_cancellation(sub_id, cancel_on, now - 600)
    scheduled = event["data"]["object"]
    assert scheduled["cancel_at_period_end"] is False and scheduled["cancel_at"] == cancel_on
    runner, env = CliRunner(), cli_env(stripe_sb, sf_sb)
    config = configured(tmp_path, runner, env)

    result = sync(runner, config, env, since=now - 29 * DAY)

    assert result.exit_code == ExitCode.OK, result.output
    day = time.strftime("%Y-%m-%d", time.gmtime(cancel_on))
    [task] = [t for t in org.records("Task") if t["WhatId"] == book.accounts["basil monthly-opp"]]
    assert task["Subject"] == f"Cancellation scheduled: subscription ends {day}"
    assert f"set to cancel on {day}" in task["Description"] and task["Priority"] == "High"
