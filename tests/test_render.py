"""Exact output of the summaries people read, character for character, at 80 columns and in a pipe (where a
table becomes blocks of `key: value` lines): a sync run's summary, a dry run's plan, `status`, `dlq list` and
a `reconcile` report. Times and durations are fixed, so that the text is stable."""

from __future__ import annotations

import calendar
import io
from typing import Any

import pytest
from rich.console import Console

from stripe_sf_sync import render
from stripe_sf_sync.cli import app
from stripe_sf_sync.logs import setup_logging
from stripe_sf_sync.pipeline.run import RunSummary
from stripe_sf_sync.reconcile import Finding, Report

from .conftest import write_config

NOW = calendar.timegm((2026, 11, 3, 14, 5, 9))  # 2026-11-03 14:05:09Z


def piped() -> tuple[Console, io.StringIO]:
    """An 80-column console writing to a pipe (not a terminal): tables print as blocks."""
    out = io.StringIO()
    return Console(file=out, width=80, soft_wrap=True), out


def test_a_sync_run_summary(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    setup_logging("plain")
    summary = RunSummary("sync", events_read=12, applied=9, skipped_stale=1, skipped_duplicate=1, ignored=0,
                         dead_lettered=1, records_written=14, stripe_calls=3, salesforce_calls=5,
                         salesforce_api_used=1234, salesforce_api_max=100000, duration_s=2.345)
    render.print_summary(summary, as_json=False)
    out, err = capsys.readouterr()
    assert out == (
        "sync: 12 events read, 9 applied, 1 skipped as stale, 1 already done, 0 needing no write, 1 "
        "dead-lettered; 14 records written; 3 Stripe calls, 5 Salesforce calls; Salesforce API usage "
        "1234/100000; 2.3s.\n")
    assert err == ("1 event was dead-lettered: see `stripe-sf dlq list`, fix the cause, then `stripe-sf dlq "
                   "retry --all`.\n")


def test_a_dry_run_backfill_summary_with_its_plan() -> None:
    summary = RunSummary("backfill", dry_run=True, events_read=2, applied=2, stripe_calls=1, duration_s=0.04,
                         stripe_rate_limited=1,
                         objects={"subscriptions": {"read": 2, "written": 1, "dead_lettered": 0, "bulk": False,
                                                    "done": True}},
                         planned_writes=[{"action": "upsert", "sobject": "Opportunity",
                                          "key": "Stripe_Subscription_ID__c=sub_1QxYzAbCdEfGhIjK",
                                          "events": ["bf_sub_1QxYzAbCdEfGhIjK"],
                                          "fields": {"StageName": "Closed Won", "Amount": "1200.00"}}])
    console, out = piped()
    render.print_human_summary(summary, console)
    assert out.getvalue() == """\
subscriptions: 2 read, would write 1, would dead-letter 0
Planned writes (dry run: nothing was changed): 1

action: upsert
object: Opportunity
key:    Stripe_Subscription_ID__c=sub_1QxYzAbCdEfGhIjK
events: bf_sub_1QxYzAbCdEfGhIjK
fields:
  StageName: Closed Won
  Amount: 1200.00
backfill (dry run): 2 events read, would apply 2, 0 skipped as stale, 0 already done, 0 needing no write, \
would dead-letter 0; 1 write planned; 1 Stripe call, 0 Salesforce calls; Stripe rate-limited 1 time (HTTP \
429; pacing lowered); Salesforce API usage not contacted; 0.0s.
"""


def _status_report() -> dict[str, Any]:
    run = {"run_id": 7, "command": "sync", "started_at": NOW - 70, "finished_at": NOW - 64, "exit_code": 3,
           "running": False, "abnormal": False,
           "summary": {"events_read": 12, "applied": 9, "dead_lettered": 1}}
    return {
        "state_path": "/var/lib/stripe-sf/state.sqlite", "state_backend": "sqlite", "never_run": False,
        "cursor": {"event_id": "evt_1QxYzAbCdEfGhIjK", "created": NOW - 600, "age_s": 600,
                   "current_at": NOW - 70, "current_age_s": 70},
        "running": None,
        "last_run": {**run, "events_read": 12, "applied": 9, "dead_lettered": 1},
        "dead_letters": 1, "backfill": {"finished": True, "since": calendar.timegm((2024, 1, 1, 0, 0, 0))},
        "reconcile": {"run_id": 5, "finished_at": NOW - 86400, "exit_code": 9, "mismatches": 2,
                      "counts": {"missing_opportunity": 1, "value_mismatch": 1, "status_mismatch": 0}},
        "api_usage": {"used": 1234, "max": 100000}, "stripe_reads_30d": 45678,
        "salesforce_contact_iso": "2026-11-03T14:04:05+00:00",
        "identity": {"salesforce": {"org_id": "00D8d0000B003DKCQY", "is_sandbox": False},
                     "stripe": {"account": "acct_1QxYzAbCdEfGhIjK", "live": True}},
        "health": {"healthy": False, "problems": ["1 open dead letter (more than --max-dead-letters 0)"],
                   "warnings": []},
        "runs": [run],
    }


def test_status() -> None:
    console, out = piped()
    render.print_status(_status_report(), console)
    assert out.getvalue() == """\
State: sqlite, state.sqlite
Cursor: evt_1QxYzAbCdEfGhIjK from 2026-11-03 13:55:09Z (10 min ago)
  current as of 2026-11-03 14:03:59Z (70 s ago)
Last run: sync #7, ended 2026-11-03 14:04:05Z, exit 3
  12 read, 9 applied, 1 dead-lettered
Salesforce org: 00D8d0000B003DKCQY (production)
Stripe account: acct_1QxYzAbCdEfGhIjK (live mode)
Open dead letters: 1
Last backfill since 2024-01-01: finished
Last reconcile: #5, ended 2026-11-02 14:05:09Z, exit 9: 2 mismatches (1 missing_opportunity, 1 value_mismatch)
Salesforce API usage last seen: 1234/100000
Stripe reads in the last 30 days: 45,678
Salesforce last reached: 2026-11-03T14:04:05+00:00
Health: UNHEALTHY
  problem: 1 open dead letter (more than --max-dead-letters 0)
Recent runs

run:           7
command:       sync
started:       2026-11-03 14:03:59Z
ended:         2026-11-03 14:04:05Z
exit:          3
read:          12
applied:       9
dead-lettered: 1
"""


def test_status_before_any_run_through_the_cli(runner: Any, tmp_path: Any) -> None:
    cfg = write_config(tmp_path / "sync.yaml")
    result = runner.invoke(app, ["status", "--config", str(cfg)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    state = tmp_path / "stripe-sf-state.sqlite"
    assert result.stdout == (
        "State: sqlite, stripe-sf-state.sqlite\n"
        f"Never run: no run is recorded in {state}. Start with `stripe-sf sync --since DATE` (or `stripe-sf "
        "backfill --since DATE`).\n"
        "Open dead letters: 0\n"
        "Salesforce API usage last seen: never\n"
        "Health: UNHEALTHY\n"
        f"  problem: never run: no run is recorded in {state}; start with `stripe-sf sync --since DATE`\n")


def test_dlq_list() -> None:
    rows = [{"event_id": "evt_1QxYzAbCdEfGhIjK", "event_type": "invoice.paid", "created": NOW - 3600,
             "reason": "no Account has Stripe_Customer_ID__c = cus_QxYzAbCdEfGh (create it, then retry)",
             "error_code": "NO_ACCOUNT", "attempts": 2, "last_failed_at": NOW - 60}]
    console, out = piped()
    render.print_dead_letters(rows, console)
    assert out.getvalue() == """\
1 open dead letter

event:       evt_1QxYzAbCdEfGhIjK
type:        invoice.paid
code:        NO_ACCOUNT
attempts:    2
last failed: 2026-11-03 14:04:09Z
reason:      no Account has Stripe_Customer_ID__c = cus_QxYzAbCdEfGh (create it, then retry)
"""
    console, out = piped()
    render.print_dead_letters([], console)
    assert out.getvalue() == "No open dead letters.\n"


def test_a_reconcile_report() -> None:
    report = Report(
        findings=[Finding("value_mismatch", "sub_1QxYzAbCdEfGhIjK", "006Hs00001AbCdEfGh", "usd",
                          (("Amount", "1200.00", "1100.00"), ("MRR__c", "100.00", None)), "Amount and MRR differ"),
                  Finding("missing_opportunity", "sub_1QxYzZzZzZzZzZzZ", None, "eur", (),
                          "live subscription with no won Opportunity")],
        checked={"subscriptions": 3, "accounts": 1}, matched=2,
        totals={"usd": {"stripe_mrr": "300.00", "salesforce_mrr": "200.00", "difference": "100.00"}},
        totals_left_out=1, skipped_checks=["accounts: --since reads only part of Stripe"])
    summary = RunSummary("reconcile", stripe_calls=4, salesforce_calls=2, duration_s=1.31)
    console, out = piped()
    render.print_reconcile(report, summary, console)
    assert out.getvalue() == """\
Checked 3 subscriptions, 1 account: 2 matched, 2 mismatches.
MRR per currency

currency:   usd
Stripe:     300.00
Salesforce: 200.00
difference: 100.00
Not in the MRR totals: 1 won Opportunity naming
  a subscription Stripe did not list (--since: older; else: unknown_stripe_id).
  missing_opportunity: 1
  value_mismatch: 1
  not checked: accounts: --since reads only part of Stripe
Findings: 2

kind:       value_mismatch
stripe:     sub_1QxYzAbCdEfGhIjK
salesforce: 006Hs00001AbCdEfGh
values:
  Amount: Stripe 1200.00 | Salesforce 1100.00
  MRR__c: Stripe 100.00 | Salesforce (none)
detail:     Amount and MRR differ

kind:       missing_opportunity
stripe:     sub_1QxYzZzZzZzZzZzZ
salesforce:
values:
detail:     live subscription with no won Opportunity
4 Stripe calls, 2 Salesforce calls; 1.3s.
"""
