"""`stripe-sf demo`: the real pipeline, end to end, against local stand-ins. No credentials.

It imports the service's modules, not the package: `stripe-sf demo` reaches it through service/sandbox.py.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console

from stripe_sf_sandbox import scenario
from stripe_sf_sandbox.salesforce_server import SalesforceSandbox
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync.config import example_config
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.pipeline import RunSummary
from stripe_sf_sync.render import Column, print_records
from stripe_sf_sync.service.discover import run_discover
from stripe_sf_sync.service.dlq import dlq_list
from stripe_sf_sync.service.runtime import Environment
from stripe_sf_sync.service.sync import run_sync
from stripe_sf_sync.words import counted


def sandbox_environment(stripe: StripeSandbox, sf: SalesforceSandbox) -> Environment:
    """Environment variables and a TLS-trusting session for the two stand-ins."""
    env = {"STRIPE_API_KEY": stripe.api_key, "STRIPE_API_BASE": stripe.base_url,
           "SF_INSTANCE_URL": sf.instance_url, "SF_ACCESS_TOKEN": sf.access_token}
    return Environment(env=env, session_factory=sf.session)


# Columns shown whole (ids, dates, amounts, codes): the rest wraps between words.
_WHOLE = {"Stripe_Customer_ID__c", "CloseDate", "Amount", "MRR__c", "ARR__c", "ActivityDate", "event_id",
          "event_type", "error_code", "Priority", "Status", "StageName", "Subscription_Status__c"}


def _table(console: Console, title: str, rows: list[dict], columns: list[str]) -> None:
    """A table at the terminal's width when it fits, else one block of lines per record (render/tables.py)."""
    print_records(console, title, [Column(c, is_id=c in _WHOLE) for c in columns],
                  [["" if r.get(c) is None else str(r.get(c)) for c in columns] for r in rows])


def run_demo(console: Console) -> ExitCode:
    """Start both stand-ins, load the scenario, discover, sync twice, and show the org."""
    now = int(time.time())
    with tempfile.TemporaryDirectory(prefix="stripe-sf-demo-") as tmp, StripeSandbox() as stripe, \
            SalesforceSandbox(scenario.awkward_org()) as sf:
        org = sf.org
        sc = scenario.load(stripe, org, now=now)
        env = sandbox_environment(stripe, sf)
        config = Path(tmp) / "sync.yaml"
        example = example_config()
        config.write_text(example.replace("account_csm: null", "account_csm: CSM__c"), encoding="utf-8")

        console.rule("1. stripe-sf discover-config --write")
        found = run_discover(config, env, write=True, example=example)
        console.print(f"won stage: [bold]{found.won_stage}[/] (its API name; people see the label "
                      f"{found.won_stage_label!r}); record types: {found.record_types}; "
                      f"new Opportunities get: {found.chosen_record_type}")

        since = time.strftime("%Y-%m-%d", time.gmtime(sc.start))
        console.rule(f"2. stripe-sf sync --since {since}")
        first = run_sync(config, env, since=since, dry_run=False, max_events=None)
        console.print(_line(first))

        console.rule("3. stripe-sf sync (again: nothing new to write)")
        second = run_sync(config, env, since=None, dry_run=False, max_events=None)
        console.print(_line(second))

        names = {u["Id"]: u["Name"] for u in org.records("User")}
        accounts = {a["Id"]: a["Name"] for a in org.records("Account")}
        opps = [{**o, "Account": accounts.get(o.get("AccountId")),
                 "RecordType": _record_type(org, o.get("RecordTypeId"))} for o in org.records("Opportunity")]
        _table(console, "Opportunities", opps, ["Name", "StageName", "CloseDate", "Amount", "MRR__c",
                                                "ARR__c", "RecordType"])
        accts = [{**a, "Owner": names.get(a.get("OwnerId")), "CSM": names.get(a.get("CSM__c"))}
                 for a in org.records("Account")]
        _table(console, "Accounts", accts, ["Name", "Stripe_Customer_ID__c", "Subscription_Status__c", "Owner", "CSM"])
        tasks = [{**t, "Account": accounts.get(t.get("WhatId")), "Assigned to": names.get(t.get("OwnerId"))}
                 for t in org.records("Task")]
        _table(console, "Tasks", tasks, ["Subject", "Account", "Assigned to", "Priority", "Status", "ActivityDate"])
        failed = next((t for t in tasks if t["Subject"].startswith("Payment Failed")), None)
        if failed:
            console.print("[bold]Payment-failure Task description:[/]")
            console.print(failed["Description"], highlight=False)
        dead = dlq_list(config, env)
        _table(console, "Dead letters (fix the cause, then `stripe-sf dlq retry --all`)", dead,
               ["event_id", "event_type", "error_code", "reason"])
        ok = second.events_read == 0 and first.dead_lettered == len(sc.unmatched_events)
        console.print(f"Stripe calls {first.stripe_calls + second.stripe_calls}, Salesforce calls "
                      f"{first.salesforce_calls + second.salesforce_calls} for {counted(first.events_read, 'event')}.")
        return ExitCode.OK if ok else ExitCode.FAILURE


def _record_type(org: object, rid: str | None) -> str | None:
    for r in org.records("RecordType"):  # type: ignore[attr-defined]
        if r["Id"] == rid:
            return str(r["Name"])
    return None


def _line(s: RunSummary) -> str:
    return (f"{counted(s.events_read, 'event')} read, {s.applied} applied, {s.skipped_stale} stale, {s.ignored} "
            f"needing no write, {s.dead_lettered} dead-lettered; {counted(s.records_written, 'record')} written "
            f"with {counted(s.salesforce_calls, 'Salesforce call')} and {counted(s.stripe_calls, 'Stripe call')} "
            f"in {s.duration_s:.2f}s")
