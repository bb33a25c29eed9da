"""Optional creation (issue 25, identity.create_accounts / create_contacts) through the CLI against the two
stand-ins: off, a customer with no Account is a NO_ACCOUNT dead letter as before; on, its Account (and a
Contact) is created before the Opportunity that points to it, in a call or two per batch, and a second run
creates nothing; a save the org's duplicate rules refuse is a DUPLICATES_DETECTED dead letter naming the
candidates, never forced."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stripe_sf_sandbox.duplicates import DuplicateRule
from stripe_sf_sandbox.salesforce_server import SalesforceOrg
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync.cli import app
from stripe_sf_sync.config import IdentitySettings

from .conftest import since

FIELD = "Stripe_Customer_ID__c"


def run(runner: Any, cli_env: dict[str, str], config: Path, *args: str) -> Any:
    return runner.invoke(app, [*args, "--config", str(config)], env={**cli_env, "COLUMNS": "80"})


def new_customers(stripe_sb: StripeSandbox) -> dict[str, str]:
    """Two customers with no Account anywhere, each with a subscription created in the last hour; one has no
    name (its Account is named from its email's domain)."""
    f = StripeFactory(stripe_sb, seed=7)
    at = int(time.time()) - 3600
    price = f.price(5000, "usd", "month", product_name="Starter")
    customers = {"initech": f.customer("Bill Lumbergh", "bill@initech.example"),
                 "nameless": f.customer(None, "ops@vandelay.example")}
    for i, c in enumerate(customers.values()):
        f.subscription_created(f.subscription(c["id"], [(price, 1)], status="active", created=at + i), at + i)
    return {label: str(c["id"]) for label, c in customers.items()}


def turn_on(config: Path, *, contacts: bool = True, owner: str | None = None) -> None:
    """Creation on, in the `identity:` section sync.yaml.example has."""
    text = config.read_text()
    for old, new in [("create_accounts: false", "create_accounts: true"),
                     ("create_contacts: false", f"create_contacts: {str(contacts).lower()}"),
                     ("default_owner_id:", "default_owner_id:")]:
        assert old in text, f"sync.yaml.example no longer has {old!r}"
        text = text.replace(old, new)
    config.write_text(re.sub(r"default_owner_id:.*", f"default_owner_id: {owner or 'null'}", text))


def dead_letters(runner: Any, cli_env: dict[str, str], config: Path) -> list[dict[str, Any]]:
    listed = run(runner, cli_env, config, "dlq", "list", "--json")
    doc = json.loads(listed.stdout)
    return list(doc)


def test_off_a_customer_with_no_account_is_no_account_as_before(
        runner: Any, cli_env: dict[str, str], config: Path, sc: Any, stripe_sb: StripeSandbox,
        org: SalesforceOrg) -> None:
    customers = new_customers(stripe_sb)
    accounts = len(org.records("Account"))
    synced = run(runner, cli_env, config, "sync", "--since", since(sc))
    assert synced.exit_code == 3, synced.output
    codes = {d.get("error_code") for d in dead_letters(runner, cli_env, config)}
    assert codes == {"NO_ACCOUNT"}
    assert (len(org.records("Account")) == accounts and not org.records("Contact")) or all(
        c.get("Email") not in ("bill@initech.example",) for c in org.records("Contact"))
    assert not any(a.get(FIELD) in customers.values() for a in org.records("Account"))


def test_on_creates_the_account_and_contact_then_the_opportunity_on_it_and_nothing_again(
        runner: Any, cli_env: dict[str, str], config: Path, sc: Any, stripe_sb: StripeSandbox, org: SalesforceOrg,
        sf_sb: Any) -> None:
    customers = new_customers(stripe_sb)
    owner = org.user_id("Ava Owner")
    turn_on(config, owner=owner)
    synced = run(runner, cli_env, config, "sync", "--since", since(sc), "--json")
    assert synced.exit_code == 0, synced.output
    created = {a[FIELD]: a for a in org.records("Account") if a.get(FIELD) in customers.values()}
    assert {label: created[cid]["Name"] for label, cid in customers.items()} \
        == {"initech": "Bill Lumbergh", "nameless": "vandelay.example"}
    assert {a["OwnerId"] for a in created.values()} == {owner}
    contacts = {c["Email"]: c for c in org.records("Contact") if c.get("Email", "").endswith(".example")}
    bill = contacts["bill@initech.example"]
    assert (bill["FirstName"], bill["LastName"], bill["AccountId"]) \
        == ("Bill", "Lumbergh", created[customers["initech"]]["Id"])
    assert contacts["ops@vandelay.example"]["LastName"] == "ops"
    opportunity_accounts = {o["AccountId"] for o in org.records("Opportunity")}
    assert {a["Id"] for a in created.values()} <= opportunity_accounts

    accounts, contact_count = len(org.records("Account")), len(org.records("Contact"))
    f = StripeFactory(stripe_sb, seed=8)  # a later subscription of the same customer: its Account exists now
    at = int(time.time()) - 60
    sub = f.subscription(customers["initech"], [(f.price(900, "usd", "month"), 1)], status="active", created=at)
    f.subscription_created(sub, at)
    again = run(runner, cli_env, config, "sync", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["applied"] >= 1
    assert next(o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == sub["id"])[
        "AccountId"] == created[customers["initech"]]["Id"]
    assert (len(org.records("Account")), len(org.records("Contact"))) == (accounts, contact_count)


def test_creation_costs_two_calls_for_the_batch_not_one_per_customer(
        runner: Any, cli_env: dict[str, str], config: Path, sc: Any, stripe_sb: StripeSandbox, org: SalesforceOrg,
        sf_sb: Any) -> None:
    customers = new_customers(stripe_sb)
    turn_on(config)
    before = len(sf_sb.requests_log)
    on = run(runner, cli_env, config, "sync", "--since", since(sc), "--json")
    assert on.exit_code == 0, on.output
    calls = [path for _, path in sf_sb.requests_log[before:]]
    # 3 Composite lookups; the creation round: one upsert of the new Accounts, one create of their Contacts;
    # then the batch's writes, the Opportunities first, as without creation.
    assert len(calls) == 10 and json.loads(on.stdout)["salesforce_calls"] == 10, calls
    assert calls[3].endswith("/composite/sobjects/Account/Stripe_Customer_ID__c")
    assert calls[4].endswith("/composite/sobjects") and "/Opportunity/" in calls[5]
    assert sum("/Account/" in c for c in calls) == 1
    created = [a for a in org.records("Account") if a.get(FIELD)
               in {*customers.values(), sc.customers["hooli"]}]
    assert len(created) == 3  # the two new customers and the scenario's unlinked one: in the one call


def test_a_duplicate_rule_dead_letters_the_events_naming_the_candidates(
        runner: Any, cli_env: dict[str, str], config: Path, sc: Any, stripe_sb: StripeSandbox,
        org: SalesforceOrg) -> None:
    customers = new_customers(stripe_sb)
    twin = org.insert("Account", {"Name": "Bill Lumbergh"})  # an Account of that name, linked to no customer
    org.duplicate_rules.append(DuplicateRule("Account", ("Name",)))
    turn_on(config)
    synced = run(runner, cli_env, config, "sync", "--since", since(sc))
    assert synced.exit_code == 3, synced.output
    letters = [d for d in dead_letters(runner, cli_env, config) if d.get("error_code") == "DUPLICATES_DETECTED"]
    assert len(letters) == 1, letters
    reason = json.dumps(letters[0])
    assert twin in reason and "Standard_Account_Duplicate_Rule" in reason and "stripe-sf link" in reason
    assert [a["Name"] for a in org.records("Account")].count("Bill Lumbergh") == 1  # never forced
    assert any(a.get(FIELD) == customers["nameless"] for a in org.records("Account"))  # the other is created


def test_doctor_says_creation_is_on_and_whether_the_user_may_create(
        runner: Any, cli_env: dict[str, str], config: Path, org: SalesforceOrg) -> None:
    def creation() -> list[dict[str, Any]]:
        doc = json.loads(run(runner, cli_env, config, "doctor", "--json").stdout)
        return [c for c in doc["checks"] if c["name"] == "creation"]

    assert creation() == []  # off: no line
    turn_on(config, owner=org.user_id("Ava Owner"))
    lines = creation()
    assert [c["status"] for c in lines] == ["ok", "ok"], lines
    assert "Account and Contact records" in lines[0]["message"] and "Ava Owner" in lines[1]["message"]
    org.no_create.add("Contact")
    [refused, _] = creation()
    assert refused["status"] == "error" and refused["subject"] == "Contact" and "Create on Contact" in refused["fix"]


def test_a_dry_run_plans_the_creations_and_creates_nothing(
        runner: Any, cli_env: dict[str, str], config: Path, sc: Any, stripe_sb: StripeSandbox,
        org: SalesforceOrg) -> None:
    customers = new_customers(stripe_sb)
    turn_on(config)
    accounts = len(org.records("Account"))
    planned = run(runner, cli_env, config, "sync", "--since", since(sc), "--dry-run", "--json")
    assert planned.exit_code == 0, planned.output
    assert len(org.records("Account")) == accounts
    assert all(cid in planned.stdout for cid in customers.values())


def test_the_identity_keys_are_checked_at_load() -> None:
    assert not IdentitySettings().create_accounts  # off by default
    with pytest.raises(ValidationError, match=re.escape("set identity.create_accounts: true too")):
        IdentitySettings(create_contacts=True)
    with pytest.raises(ValidationError, match="default_owner_id"):
        IdentitySettings(create_accounts=True, default_owner_id="001000000000001")
    assert IdentitySettings(create_accounts=True, default_owner_id="005000000000001AAA").default_owner_id


def test_accounts_without_contacts_cost_one_call(
        runner: Any, cli_env: dict[str, str], config: Path, sc: Any, stripe_sb: StripeSandbox, org: SalesforceOrg,
        sf_sb: Any) -> None:
    customers = new_customers(stripe_sb)
    contacts = len(org.records("Contact"))
    turn_on(config, contacts=False)
    before = len(sf_sb.requests_log)
    synced = run(runner, cli_env, config, "sync", "--since", since(sc), "--json")
    assert synced.exit_code == 0, synced.output
    calls = [path for _, path in sf_sb.requests_log[before:]]
    assert len(calls) == 9 and calls[3].endswith("/composite/sobjects/Account/Stripe_Customer_ID__c"), calls
    assert len(org.records("Contact")) == contacts
    assert {a[FIELD] for a in org.records("Account")} >= set(customers.values())


def test_a_contact_refused_as_a_duplicate_keeps_the_account_and_a_retry_applies_the_events(
        runner: Any, cli_env: dict[str, str], config: Path, sc: Any, stripe_sb: StripeSandbox,
        org: SalesforceOrg) -> None:
    customers = new_customers(stripe_sb)
    other = org.insert("Account", {"Name": "Someone else"})
    bill = org.insert("Contact", {"LastName": "Lumbergh", "Email": "bill@initech.example", "AccountId": other})
    org.duplicate_rules.append(DuplicateRule("Contact", ("Email",)))
    turn_on(config)
    synced = run(runner, cli_env, config, "sync", "--since", since(sc))
    assert synced.exit_code == 3, synced.output
    [letter] = [d for d in dead_letters(runner, cli_env, config) if d.get("error_code") == "DUPLICATES_DETECTED"]
    assert bill in json.dumps(letter) and "the Account is created" in json.dumps(letter)
    [account] = [a for a in org.records("Account") if a.get(FIELD) == customers["initech"]]
    retried = run(runner, cli_env, config, "dlq", "retry", "--all", "--json")
    assert json.loads(retried.stdout)["applied"] == 1, retried.output
    assert [a["Id"] for a in org.records("Account") if a.get(FIELD) == customers["initech"]] == [account["Id"]]
    assert account["Id"] in {o["AccountId"] for o in org.records("Opportunity")}
