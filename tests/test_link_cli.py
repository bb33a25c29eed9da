"""`stripe-sf link` through the CLI against the two stand-ins (issue 25's first "Done when"): unlinked customers
whose events were dead-lettered; `link --csv` proposes exactly the unambiguous matches, `link --apply` of the
reviewed file links them and names the waiting dead letters, and `dlq retry --all` then applies them."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from stripe_sf_sandbox.salesforce_server import SalesforceOrg
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync.cli import app

from .conftest import since

FIELD = "Stripe_Customer_ID__c"


def run(runner: Any, cli_env: dict[str, str], config: Path, *args: str) -> Any:
    return runner.invoke(app, [*args, "--config", str(config)], env={**cli_env, "COLUMNS": "80"})


def unlinked_customers(stripe_sb: StripeSandbox, org: SalesforceOrg) -> dict[str, str]:
    """Four customers without a link, each with a subscription event in the last day; in the org, the evidence
    for three of them and two Accounts of the same name for the fourth."""
    f = StripeFactory(stripe_sb, seed=99)
    at = int(time.time()) - 3600
    price = f.price(5000, "usd", "month", product_name="Starter")
    customers = {"wayne": f.customer("Bruce", "bruce@wayne-enterprises.example"),
                  "stark": f.customer("Stark Industries", "tony.stark@gmail.com"),
                  "soylent": f.customer("Soylent", "ops@soylent-mail.example")}
    for i, c in enumerate(customers.values()):
        f.subscription_created(f.subscription(c["id"], [(price, 1)], status="active", created=at + i), at + i)
    owner = org.user_id("Ava Owner")
    org.insert("Account", {"Name": "Wayne Enterprises", "Website": "https://www.wayne-enterprises.example/",
                           "OwnerId": owner})
    org.insert("Account", {"Name": "Stark Industries", "OwnerId": owner})
    org.insert("Account", {"Name": "Soylent", "OwnerId": owner})
    org.insert("Account", {"Name": "SOYLENT", "OwnerId": owner})
    hooli = org.insert("Account", {"Name": "Hooli XYZ", "OwnerId": owner})
    org.insert("Contact", {"LastName": "Belson", "Email": "Billing@Hooli.example", "AccountId": hooli})
    return {label: str(c["id"]) for label, c in customers.items()}


def test_link_proposes_applies_and_the_waiting_dead_letters_then_apply(
        runner: Any, cli_env: dict[str, str], config: Path, sc: Any, stripe_sb: StripeSandbox, org: SalesforceOrg,
        tmp_path: Path) -> None:
    unlinked = unlinked_customers(stripe_sb, org)
    unlinked["hooli"] = sc.customers["hooli"]
    synced = run(runner, cli_env, config, "sync", "--since", since(sc))
    assert synced.exit_code == 3, synced.output  # the four unlinked customers' events: NO_ACCOUNT

    links = tmp_path / "links.csv"
    proposed = run(runner, cli_env, config, "link", "--csv", str(links))
    assert proposed.exit_code == 0, proposed.output
    assert "Unlinked: 3 matched, 1 ambiguous, 0 on an Account linked to another customer, 0 with no match." \
        in proposed.output.replace("\n  ", " ")
    assert f"`stripe-sf link --apply {links}`" in proposed.output.replace("\n  ", " ")
    assert all(len(line) <= 80 for line in proposed.output.splitlines())
    rows = {r["customer_id"]: r for r in csv.DictReader(io.StringIO(links.read_text()))}
    names = {a["Id"]: a["Name"] for a in org.records("Account")}
    assert {label: (names.get(rows[cid]["account_id"]), rows[cid]["evidence"]) for label, cid in unlinked.items()} \
        == {"wayne": ("Wayne Enterprises", "website_domain"), "stark": ("Stark Industries", "account_name"),
            "soylent": (None, "account_name"), "hooli": ("Hooli XYZ", "contact_email")}
    assert not any(a.get(FIELD) in unlinked.values() for a in org.records("Account"))  # proposing writes nothing

    applied = run(runner, cli_env, config, "link", "--apply", str(links))
    assert applied.exit_code == 0, applied.output
    assert applied.output.startswith("Linked 3 Accounts (0 already linked so); 0 refused.\n")
    assert "3 dead letters waited for these Accounts: run `stripe-sf dlq retry --all`." in applied.output
    linked = {a[FIELD]: a["Name"] for a in org.records("Account") if a.get(FIELD) in unlinked.values()}
    assert linked == {unlinked["wayne"]: "Wayne Enterprises", unlinked["stark"]: "Stark Industries",
                      unlinked["hooli"]: "Hooli XYZ"}

    retried = run(runner, cli_env, config, "dlq", "retry", "--all", "--json")
    summary = json.loads(retried.stdout)
    assert (summary["applied"], summary["dead_lettered"]) == (3, 1), retried.output  # Soylent still waits
    opportunity_accounts = {o["AccountId"] for o in org.records("Opportunity")}
    assert {a["Id"] for a in org.records("Account") if a.get(FIELD) in unlinked.values()} <= opportunity_accounts


def test_link_json_and_a_second_apply_counts_links_already_written(
        runner: Any, cli_env: dict[str, str], config: Path, sc: Any, org: SalesforceOrg, tmp_path: Path) -> None:
    hooli = org.insert("Account", {"Name": "Hooli"})
    links = tmp_path / "links.csv"
    proposed = run(runner, cli_env, config, "link", "--csv", str(links), "--json")
    assert proposed.exit_code == 0, proposed.output
    doc = json.loads(proposed.stdout)
    assert (doc["matched"], doc["csv"], doc["unlinked"]) == (1, str(links), 1)
    assert json.loads(run(runner, cli_env, config, "link", "--apply", str(links), "--json").stdout)["linked"] == 1
    again = json.loads(run(runner, cli_env, config, "link", "--apply", str(links), "--json").stdout)
    assert (again["linked"], again["already_linked"], again["refused"]) == (0, 1, [])
    assert org.get("Account", hooli)[FIELD] == sc.customers["hooli"]


def test_a_refused_link_exits_3_and_names_the_account(
        runner: Any, cli_env: dict[str, str], config: Path, sc: Any, org: SalesforceOrg, tmp_path: Path) -> None:
    links = tmp_path / "links.csv"
    links.write_text(f"customer_id,account_id\n{sc.customers['hooli']},{sc.accounts['acme']}\n")
    result = run(runner, cli_env, config, "link", "--apply", str(links))
    assert result.exit_code == 3, result.output
    assert f"line 2: Account {sc.accounts['acme']} (Acme Corp) is already linked to {sc.customers['acme']}" \
        in result.output.replace("\n  ", " ")


def test_a_malformed_file_exits_2_naming_every_bad_line_before_any_call(
        runner: Any, cli_env: dict[str, str], config: Path, tmp_path: Path, sf_sb: Any) -> None:
    links = tmp_path / "links.csv"
    links.write_text("customer_id,account_id\nx,001000000000001\ncus_1,nope\n")
    before = len(sf_sb.requests_log)
    result = run(runner, cli_env, config, "link", "--apply", str(links))
    assert result.exit_code == 2
    assert "line 2: customer_id 'x'" in result.output and "line 3: account_id 'nope'" in result.output
    assert len(sf_sb.requests_log) == before


def test_to_stripe_needs_the_write_key_and_asks_for_it_before_any_write(
        runner: Any, cli_env: dict[str, str], config: Path, sc: Any, org: SalesforceOrg, stripe_sb: StripeSandbox,
        tmp_path: Path) -> None:
    hooli = org.insert("Account", {"Name": "Hooli"})
    links = tmp_path / "links.csv"
    links.write_text(f"customer_id,account_id\n{sc.customers['hooli']},{hooli}\n")
    refused = run(runner, cli_env, config, "link", "--apply", str(links), "--to-stripe")
    assert refused.exit_code == 2 and "STRIPE_WRITE_API_KEY is not set" in refused.output
    assert "rak_customer_write" in refused.output and org.get("Account", hooli)[FIELD] is None
    env = {**cli_env, "STRIPE_WRITE_API_KEY": stripe_sb.restricted_key(customer="write")}
    written = runner.invoke(app, ["link", "--apply", str(links), "--to-stripe", "--config", str(config)], env=env)
    assert written.exit_code == 0, written.output
    assert "Stripe: salesforce_account_id written on 1 customer." in written.output
    assert stripe_sb.get(sc.customers["hooli"])["metadata"]["salesforce_account_id"] == hooli


def test_csv_and_apply_together_is_a_usage_error(runner: Any, tmp_path: Path) -> None:
    result = runner.invoke(app, ["link", "--csv", "a.csv", "--apply", "b.csv"])
    assert result.exit_code == 2 and "--csv FILE to propose, or --apply FILE" in result.output
