"""Many Stripe accounts into one org, end to end (issue 26): the sandbox's platform, a separate account with its
own key (STRIPE_API_KEY_EU) and a connected account, synced with `sync --all` into one Salesforce stand-in org,
on PostgreSQL (and SQLite). Each test would fail if the pipelines shared state or mixed accounts: every record
must carry its own account, every cursor be its own account's event, every lock and failure its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from stripe_sf_sandbox.salesforce_server import FieldDef, SalesforceOrg
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.state import open_state

DAY = 86400
FIELD = "Stripe_Account_ID__c"
T0 = int(time.time()) - 2 * DAY  # inside Stripe's 30 days of events
SINCE = time.strftime("%Y-%m-%d", time.gmtime(T0 - DAY))
ROOT = Path(__file__).resolve().parents[1]
CHILDHOOK = ROOT / "tests" / "reliability" / "childhook"
STATE_NAME = "stripe-sf-state.sqlite"


@dataclass
class Made:
    """What one account was filled with: its customers (found: an Account in the org; new: none), its
    subscriptions and the invoice whose payment failed."""

    account: StripeSandbox
    found: str
    new: str
    subscriptions: list[str] = field(default_factory=list)
    amounts: dict[str, float] = field(default_factory=dict)

    @property
    def newest_event(self) -> str:
        return str(max(self.account.events, key=lambda e: (e["created"], e["id"]))["id"])

    @property
    def event_ids(self) -> set[str]:
        return {str(e["id"]) for e in self.account.events}


def fill(account: StripeSandbox, org: SalesforceOrg, name: str, seed: int, *, new_has_account: bool = False,
         events: int = 1) -> Made:
    """A found customer (its Account in the org) with a subscription and a failed renewal (an Opportunity and a
    Task), and a new customer with a subscription (an Account stripe-sf creates, or a dead letter without
    identity.create_accounts). `events` > 1 repeats the failed renewal: more events, more batches."""
    f = StripeFactory(account, seed=seed)
    t = T0 + seed * 7  # each account's events at other seconds
    found = f.customer(f"{name} Found", f"billing@{name.lower()}-found.example", created=t - 30 * DAY)
    org.insert("Account", {"Name": f"{name} Found", "Stripe_Customer_ID__c": found["id"]})
    made = Made(account, str(found["id"]), "")
    amount = 1000 * seed
    sub = f.subscription(found["id"], [(f.price(amount), 1)], created=t)
    f.subscription_created(sub, t)
    made.subscriptions.append(str(sub["id"]))
    made.amounts[str(sub["id"])] = amount / 100
    for i in range(events):
        inv = f.invoice(sub, found["id"], amount, created=t + 60 + 10 * i)
        f.invoice_payment_failed(inv["id"], t + 61 + 10 * i)
    new = f.customer(f"{name} New", f"billing@{name.lower()}-new.example", created=t - DAY)
    made.new = str(new["id"])
    if new_has_account:
        org.insert("Account", {"Name": f"{name} New", "Stripe_Customer_ID__c": new["id"]})
    sub2 = f.subscription(new["id"], [(f.price(amount + 500), 1)], created=t + 3000)
    f.subscription_created(sub2, t + 3000)
    made.subscriptions.append(str(sub2["id"]))
    made.amounts[str(sub2["id"])] = (amount + 500) / 100
    return made


def tag_org(org: SalesforceOrg) -> None:
    """The org with the account field on Opportunity, Task and Account (what `setup --apply` creates)."""
    for sobject in ("Opportunity", "Task", "Account"):
        org.schema[sobject][FIELD] = FieldDef(FIELD, "string", length=255)


def configure(config: Path, made: dict[str, Made], *, create_accounts: bool = True, batch_size: int | None = None
              ) -> Path:
    """The discovered config naming the three accounts, with the account field."""
    settings = yaml.safe_load(config.read_text())
    settings["stripe"]["accounts"] = [
        {"id": made["platform"].account.account_id},
        {"id": made["separate"].account.account_id, "api_key_env": "STRIPE_API_KEY_EU"},
        {"id": made["connected"].account.account_id, "connected": True}]
    settings["salesforce"]["fields"]["stripe_account"] = FIELD
    settings["identity"]["create_accounts"] = create_accounts
    if batch_size is not None:
        settings["sync"]["batch_size"] = batch_size
    config.write_text(yaml.safe_dump(settings))
    return config


@pytest.fixture
def accounts(stripe_accounts: dict[str, StripeSandbox], org: SalesforceOrg) -> dict[str, StripeSandbox]:
    tag_org(org)
    return stripe_accounts


def env_of(cli_env: dict[str, str], accounts: dict[str, StripeSandbox], url: str | None) -> dict[str, str]:
    env = {**cli_env, "STRIPE_API_KEY_EU": accounts["separate"].api_key}
    if url:
        env["STRIPE_SF_STATE_URL"] = url
    return env


def process_env(env: dict[str, str]) -> dict[str, str]:
    """A subprocess's environment: this one's, without any stripe-sf variable of the caller, plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SF_", "STRIPE_"))}
    return {**base, **env, "PYTHONPATH": str(CHILDHOOK), "COLUMNS": "200"}


def stripe_sf(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stripe_sf_sync", *args], env=process_env(env), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def state(config: Path, url: str | None, pipeline: str) -> Any:
    return open_state(config.parent / STATE_NAME, url, pipeline=pipeline, create=False)


def records(org: SalesforceOrg, sobject: str, account_id: str) -> list[dict[str, Any]]:
    return [r for r in org.records(sobject) if r.get(FIELD) == account_id]


def assert_account_synced(org: SalesforceOrg, made: Made, others: list[Made]) -> None:
    """Its two subscriptions' Opportunities (its amounts, on its customers' Accounts), its created Account and
    its failed renewal's Task, each tagged with its account; nothing of another account tagged with it."""
    acct = made.account.account_id
    by_customer = {a.get("Stripe_Customer_ID__c"): a for a in org.records("Account")}
    opps = {o["Stripe_Subscription_ID__c"]: o for o in org.records("Opportunity")
            if o.get("Stripe_Subscription_ID__c") in made.subscriptions}
    assert set(opps) == set(made.subscriptions)
    found_sub, new_sub = made.subscriptions
    assert opps[found_sub]["AccountId"] == by_customer[made.found]["Id"]
    assert opps[new_sub]["AccountId"] == by_customer[made.new]["Id"]
    for sub, opp in opps.items():
        assert opp[FIELD] == acct and float(opp["Amount"]) == made.amounts[sub], (sub, opp)
    assert by_customer[made.new][FIELD] == acct  # the Account stripe-sf created carries its account
    assert by_customer[made.found].get(FIELD) in (None, "")  # a found one is never tagged
    tasks = records(org, "Task", acct)
    assert tasks and {t["WhatId"] for t in tasks} <= {opps[found_sub]["Id"], by_customer[made.found]["Id"]}
    foreign = {s for o in others for s in o.subscriptions}
    assert not [o for o in records(org, "Opportunity", acct) if o.get("Stripe_Subscription_ID__c") in foreign]
    assert {a["Stripe_Customer_ID__c"] for a in records(org, "Account", acct)} == {made.new}


def writes_at_once(sf_sb: Any, n: int) -> list[bool]:
    """Hold the first `n` sObject Collections writes in the Salesforce stand-in until all `n` are in flight at
    once; the returned list gets False if they never were (the runs did not overlap)."""
    at_once = threading.Barrier(n, timeout=10)
    held = [0]
    lock = threading.Lock()
    overlapped: list[bool] = []

    def hook(_n: int, method: str, path: str) -> None:
        if "composite/sobjects" not in path:
            return
        with lock:
            held[0] += 1
            if held[0] > n:
                return
        try:
            at_once.wait()
        except threading.BrokenBarrierError:
            overlapped.append(False)
        else:
            overlapped.append(True)

    sf_sb.faults.on_request = hook
    return overlapped


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_every_account_synced_at_once_into_one_org_each_its_own(request, runner, config, cli_env, accounts, org,
                                                                sf_sb, backend):
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    made = {name: fill(acct, org, name.title(), seed) for seed, (name, acct) in enumerate(accounts.items(), 1)}
    configure(config, made)
    env = env_of(cli_env, accounts, url)
    overlapped = writes_at_once(sf_sb, 3)
    result = runner.invoke(app, ["sync", "--all", "--parallel", "3", "--since", SINCE, "--json",
                                 "--config", str(config)], env=env)
    sf_sb.faults.on_request = None
    assert result.exit_code == ExitCode.OK, result.output
    assert overlapped == [True, True, True]  # the three pipelines wrote at the same time
    doc = json.loads(result.stdout)
    assert {r["account"]: r["exit_code"] for r in doc["accounts"]} == {m.account.account_id: 0 for m in made.values()}
    for run in doc["accounts"]:
        assert run["summary"]["applied"] > 0 and run["summary"]["dead_lettered"] == 0
    for name, m in made.items():
        assert_account_synced(org, m, [o for n, o in made.items() if n != name])
    for m in made.values():  # each pipeline's cursor is its own account's newest event
        with state(config, url, m.account.account_id) as st:
            cursor = st.cursor()
            assert cursor is not None and cursor.event_id == m.newest_event
            assert sorted(st.pipelines()) == sorted(o.account.account_id for o in made.values())
    again = runner.invoke(app, ["sync", "--all", "--parallel", "3", "--json", "--config", str(config)], env=env)
    assert again.exit_code == ExitCode.OK, again.output
    assert all(r["summary"]["applied"] == 0 for r in json.loads(again.stdout)["accounts"])


@pytest.mark.parametrize(("backend", "pause_at"), [("postgresql", "pause:commit:1"),
                                                   ("sqlite", "pause:commit:1:before")])
def test_a_second_run_of_one_pipeline_is_refused_while_another_pipeline_runs(request, config, cli_env, accounts,
                                                                            org, tmp_path, backend, pause_at):
    """Process A holds the platform pipeline (paused in its first commit: inside its transaction on PostgreSQL,
    on entry on SQLite, whose one file has one writer at a time). Process B, the same pipeline, exits 4 naming A;
    process C, `sync --all`, is turned away from the platform only: the other two pipelines are synced, to their
    own cursors, while A still holds its lock."""
    pg_url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    made = {name: fill(acct, org, name.title(), seed) for seed, (name, acct) in enumerate(accounts.items(), 1)}
    configure(config, made)
    env = env_of(cli_env, accounts, pg_url)
    platform = made["platform"].account.account_id
    pause = tmp_path / "paused"
    holder = subprocess.Popen(
        [sys.executable, "-m", "stripe_sf_sync", "--account", platform, "sync", "--since", SINCE,
         "--config", str(config)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=process_env({**env, "STRIPE_SF_TEST_KILL": pause_at, "STRIPE_SF_TEST_PAUSE_FILE": str(pause)}))
    try:
        deadline = time.monotonic() + 60
        while not pause.exists() and time.monotonic() < deadline and holder.poll() is None:
            time.sleep(0.05)
        assert pause.exists(), holder.communicate()[1] if holder.poll() is not None else "not paused"
        same = stripe_sf(["--account", platform, "sync", "--config", str(config)], env, timeout=60)
        assert same.returncode == ExitCode.LOCKED, same.stderr
        assert f"pid {holder.pid}" in same.stderr
        every = stripe_sf(["sync", "--all", "--parallel", "3", "--since", SINCE, "--json", "--config", str(config)],
                          env, timeout=60)
        assert every.returncode == ExitCode.LOCKED, every.stderr
        codes = {r["account"]: r["exit_code"] for r in json.loads(every.stdout)["accounts"]}
        assert codes == {platform: 4, made["separate"].account.account_id: 0,
                         made["connected"].account.account_id: 0}
        assert holder.poll() is None  # A still holds its pipeline while the others ran
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.communicate()
    for name in ("separate", "connected"):
        m = made[name]
        assert_account_synced(org, m, [o for n, o in made.items() if n != name])
        with state(config, pg_url, m.account.account_id) as st:
            assert st.cursor() is not None and st.cursor().event_id == m.newest_event
    with state(config, pg_url, platform) as st:
        assert st.cursor() is None  # A died inside its first commit: nothing of it committed, nobody else's
    # What A wrote before it died (Salesforce had accepted it) is the platform's own customer's only.
    assert {a["Stripe_Customer_ID__c"] for a in records(org, "Account", platform)} <= {made["platform"].new}


def test_one_pipelines_dead_letters_and_failures_never_stop_another(runner, config, cli_env, accounts, org,
                                                                    stripe_sb, pg_url):
    """The connected account has a customer without an Account (a dead letter); the separate account's key is
    revoked. The platform's records are all written; each failure is its own, named in sync, status and dlq."""
    made = {name: fill(acct, org, name.title(), seed, new_has_account=name == "platform")
            for seed, (name, acct) in enumerate(accounts.items(), 1)}
    configure(config, made, create_accounts=False)
    env = env_of(cli_env, accounts, pg_url)
    platform, separate, connected = (made[n].account.account_id for n in ("platform", "separate", "connected"))
    stripe_sb.revoked_keys.add(accounts["separate"].api_key)
    result = runner.invoke(app, ["sync", "--all", "--parallel", "3", "--since", SINCE, "--json",
                                 "--config", str(config)], env=env)
    doc = json.loads(result.stdout)
    runs = {r["account"]: r for r in doc["accounts"]}
    assert runs[platform]["exit_code"] == ExitCode.OK and runs[platform]["error"] is None
    assert runs[connected]["exit_code"] == ExitCode.DEAD_LETTERS
    assert runs[separate]["exit_code"] == ExitCode.UNAVAILABLE and runs[separate]["error"]  # the key refused
    assert result.exit_code == doc["exit_code"] == runs[separate]["exit_code"]  # the worst
    opps = {o.get("Stripe_Subscription_ID__c"): o for o in org.records("Opportunity")}
    assert all(opps[s][FIELD] == platform for s in made["platform"].subscriptions)  # every record of it written
    assert records(org, "Task", platform)
    assert not records(org, "Opportunity", separate) and not records(org, "Task", separate)
    assert made["connected"].subscriptions[1] not in opps  # its customer has no Account: dead letter
    assert opps[made["connected"].subscriptions[0]][FIELD] == connected
    with state(config, pg_url, platform) as st:
        assert st.cursor() is not None and st.cursor().event_id == made["platform"].newest_event
        assert st.dead_letter_count() == 0
    with state(config, pg_url, separate) as st:
        assert st.cursor() is None

    status = runner.invoke(app, ["status", "--check", "--json", "--config", str(config)], env=env)
    assert status.exit_code == ExitCode.UNHEALTHY, status.output
    report = json.loads(status.stdout)
    problems, warnings = report["health"]["problems"], report["health"]["warnings"]
    assert any(p.startswith(f"{separate}: ") and "exit code 5" in p for p in problems), problems
    assert not any(p.startswith((f"{platform}: ", f"{connected}: ")) for p in problems), problems
    assert any(w.startswith(f"{connected}: ") and "dead letter" in w for w in warnings), warnings
    verdicts = {r["account"]: r["health"]["healthy"] for r in report["accounts"]}
    assert verdicts == {platform: True, separate: False, connected: True}, verdicts
    text = runner.invoke(app, ["status", "--check", "--config", str(config)], env=env)
    assert text.exit_code == ExitCode.UNHEALTHY and f"problem: {separate}: " in text.output, text.output
    assert f"problem: {platform}: " not in text.output and f"problem: {connected}: " not in text.output
    strict = runner.invoke(app, ["status", "--check", "--max-dead-letters", "0", "--json", "--config", str(config)],
                           env=env)  # dead letters made a problem: the connected account is named too
    strict_problems = json.loads(strict.stdout)["health"]["problems"]
    assert any(p.startswith(f"{connected}: ") for p in strict_problems), strict_problems
    assert not any(p.startswith(f"{platform}: ") for p in strict_problems), strict_problems

    dlq = runner.invoke(app, ["dlq", "list", "--config", str(config)], env=env)
    assert dlq.exit_code == 0, dlq.output
    assert connected in dlq.output and platform not in dlq.output and separate not in dlq.output
    with state(config, pg_url, connected) as st:
        letters = st.dead_letters()
        assert letters and all(d.event_id in made["connected"].event_ids for d in letters)
        assert all(d.event_id in dlq.output for d in letters)


def test_a_missing_key_stops_only_the_command_that_needs_it(runner, config, cli_env, accounts, org, pg_url):
    """STRIPE_API_KEY_EU unset: the platform's own pipeline (`--account`) runs and writes everything; `sync --all`
    names the variable and exits 2 before any call (every pipeline's secrets are checked first, so that one run
    fixes them all), leaving every pipeline's state as it was."""
    made = {name: fill(acct, org, name.title(), seed, new_has_account=True)
            for seed, (name, acct) in enumerate(accounts.items(), 1)}
    configure(config, made, create_accounts=False)
    env = env_of(cli_env, accounts, pg_url)
    del env["STRIPE_API_KEY_EU"]
    platform = made["platform"].account.account_id
    alone = runner.invoke(app, ["--account", platform, "sync", "--since", SINCE, "--config", str(config)], env=env)
    assert alone.exit_code == ExitCode.OK, alone.output
    opps = {o.get("Stripe_Subscription_ID__c"): o for o in org.records("Opportunity")}
    assert all(opps[s][FIELD] == platform for s in made["platform"].subscriptions)
    requests = {name: len(m.account.requests_log) for name, m in made.items()}
    every = runner.invoke(app, ["sync", "--all", "--since", SINCE, "--config", str(config)], env=env)
    assert every.exit_code == ExitCode.CONFIG and "STRIPE_API_KEY_EU is not set" in every.output, every.output
    assert {name: len(m.account.requests_log) for name, m in made.items()} == requests
    with state(config, pg_url, platform) as st:
        assert st.cursor() is not None and st.cursor().event_id == made["platform"].newest_event
        assert len(st.recent_runs()) == 1
    for name in ("separate", "connected"):
        with state(config, pg_url, made[name].account.account_id) as st:
            assert st.cursor() is None and not st.recent_runs()


def test_sigterm_stops_every_pipeline_within_seconds_each_cursor_recorded(config, cli_env, accounts, org, sf_sb,
                                                                          pg_url):
    """SIGTERM while each of the three pipelines has a Salesforce write in flight: every pipeline finishes that
    batch, records it (its cursor at an event of its own account) and its run's 143; the command exits 143 within
    seconds; the next `sync --all` takes each from its own cursor to its account's newest event."""
    made = {name: fill(acct, org, name.title(), seed, events=8)
            for seed, (name, acct) in enumerate(accounts.items(), 1)}
    configure(config, made, batch_size=2)
    env = env_of(cli_env, accounts, pg_url)
    in_flight = threading.Barrier(3, timeout=30)
    child: list[subprocess.Popen[str]] = []
    signalled: list[float] = []
    lock = threading.Lock()

    def hold_until_all_three_write(n: int, method: str, path: str) -> None:
        if "composite/sobjects" not in path or signalled:
            return
        try:
            if in_flight.wait() == 0:
                with lock:
                    if not signalled:
                        os.kill(child[0].pid, signal.SIGTERM)
                        signalled.append(time.monotonic())
        except threading.BrokenBarrierError:
            pass

    sf_sb.faults.on_request = hold_until_all_three_write
    proc = subprocess.Popen([sys.executable, "-m", "stripe_sf_sync", "sync", "--all", "--parallel", "3", "--since",
                             SINCE, "--json", "--config", str(config)], env=process_env(env), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child.append(proc)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    sf_sb.faults.on_request = None
    assert signalled, err
    assert proc.returncode == ExitCode.TERMINATED, err
    assert time.monotonic() - signalled[0] < 15
    assert "Stopping (SIGTERM)" in err
    doc = json.loads(out)
    assert {r["account"]: r["exit_code"] for r in doc["accounts"]} == {
        m.account.account_id: ExitCode.TERMINATED for m in made.values()}
    for m in made.values():
        with state(config, pg_url, m.account.account_id) as st:
            cursor = st.cursor()
            assert cursor is not None and cursor.event_id in m.event_ids  # its own account's event
            assert cursor.event_id != m.newest_event  # stopped, not finished
            assert st.recent_runs(1)[0]["exit_code"] == ExitCode.TERMINATED
    again = stripe_sf(["sync", "--all", "--parallel", "3", "--config", str(config)], env)
    assert again.returncode == ExitCode.OK, again.stderr
    for name, m in made.items():
        assert_account_synced(org, m, [o for n, o in made.items() if n != name])
        with state(config, pg_url, m.account.account_id) as st:
            assert st.cursor() is not None and st.cursor().event_id == m.newest_event


@pytest.fixture(autouse=True)
def _no_leftover_hooks(sf_sb: Any) -> Iterator[None]:
    yield
    sf_sb.faults.on_request = None
