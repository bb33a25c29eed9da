"""What a run prints: its summary (for people, or JSON), its warnings, its live progress line, and the
reconcile report."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stripe_sf_sync.defaults import DEFAULT_CONFIG_PATH
from stripe_sf_sync.render.console import for_people, print_json, say, stdout
from stripe_sf_sync.render.tables import Column, print_records
from stripe_sf_sync.words import counted

if TYPE_CHECKING:
    from rich.console import Console

    from stripe_sf_sync.pipeline import RunSummary
    from stripe_sf_sync.sources.backfill import TypeProgress

RECONCILE_SHOWN = 50  # findings printed for people; --csv and --json carry them all


def print_summary(summary: RunSummary, as_json: bool) -> None:
    """The run's summary on stdout: as JSON with --json; for people otherwise, unless --quiet or a JSON log
    (there the summary is a log line, and stdout carries only what --json asks for)."""
    if as_json:
        print_json(summary.as_dict())
    elif for_people():
        print_human_summary(summary)
    if summary.stopped_early:  # a warning, so that --quiet and a JSON log show it too
        say(logging.WARNING, f"Stopped early: {summary.stopped_early}. The next run continues where this one stopped.",
            kind="stopped_early", reason=summary.stopped_early)
    if summary.dead_lettered and summary.dry_run:
        say(logging.WARNING, f"A real run would dead-letter {counted(summary.dead_lettered, 'event')} (the "
                             "warnings above say why): fix the cause first, or apply the rest and retry them "
                             "with `stripe-sf dlq retry --all`.",
            kind="would_dead_letter", dead_lettered=summary.dead_lettered)
    elif summary.dead_lettered:
        say(logging.WARNING, f"{counted(summary.dead_lettered, 'event was', 'events were')} dead-lettered: see "
                             "`stripe-sf dlq list`, fix the cause, then `stripe-sf dlq retry --all`.",
            kind="dead_letters", dead_lettered=summary.dead_lettered)


def print_human_summary(summary: RunSummary, out: Console | None = None) -> None:
    """Per object type (a backfill), the planned writes (a dry run), then the one line of totals."""
    out = out or stdout()
    dry = summary.dry_run  # a dry run dead-letters and writes nothing: it says what it would do
    for kind, c in summary.objects.items():
        counts = (f"would write {c['written']}, would dead-letter {c['dead_lettered']}" if dry else
                  f"{c['written']} written, {c['dead_lettered']} dead-lettered")
        out.print(f"{kind}: {c['read']} read, {counts}"
                  f"{' via Bulk API 2.0' if c['bulk'] else ''}{'' if c['done'] else ' (not finished)'}",
                  highlight=False)
    if dry and summary.planned_writes:
        rows = [(w["action"], w["sobject"], w["key"], ", ".join(w["events"]), w["fields"])
                for w in summary.planned_writes]
        print_records(out, f"Planned writes (dry run: nothing was changed): {len(rows)}",
                      [Column("action"), Column("object"), Column("key", is_id=True), Column("events", is_id=True),
                       Column("fields")], rows)
        _print_field_reasons(out, summary.planned_writes)
    out.print(totals_line(summary), highlight=False)


def _print_field_reasons(out: Console, planned: list[dict[str, Any]]) -> None:
    """Each planned record's fields, and why each is written or left alone (salesforce.mapping: docs/mapping.md)."""
    rows = [(w["sobject"], w["key"], name, w["fields"].get(name, "-"), why)
            for w in planned for name, why in w.get("why", {}).items()]
    if rows:
        print_records(out, f"Fields, and why each is written or left alone: {len(rows)}",
                      [Column("object"), Column("key", is_id=True), Column("field"), Column("value"),
                       Column("why")], rows)


def totals_line(summary: RunSummary) -> str:
    """`sync: 12 events read, 10 applied, …; 3.2s.`: what a run did, in one line."""
    dry = summary.dry_run
    api = (f"{summary.salesforce_api_used}/{summary.salesforce_api_max}"
           if summary.salesforce_api_used is not None else "not contacted")
    outcomes = (f"would apply {summary.applied}" if dry else f"{summary.applied} applied")
    dead = (f"would dead-letter {summary.dead_lettered}" if dry else f"{summary.dead_lettered} dead-lettered")
    writes = (f"{counted(len(summary.planned_writes), 'write')} planned" if dry else
              f"{counted(summary.records_written, 'record')} written")
    return (
        f"{summary.command}{' (dry run)' if dry else ''}: {counted(summary.events_read, 'event')} read, "
        f"{outcomes}, {summary.skipped_stale} skipped as stale, "
        f"{summary.skipped_duplicate} already done, {summary.ignored} needing no write, "
        f"{dead}; {writes}; "
        f"{counted(summary.stripe_calls, 'Stripe call')}, {counted(summary.salesforce_calls, 'Salesforce call')}; "
        + (f"Stripe rate-limited {counted(summary.stripe_rate_limited, 'time')} (HTTP 429; pacing lowered); "
           if summary.stripe_rate_limited else "") +
        f"Salesforce API usage {api}; {summary.duration_s:.1f}s.")


def sync_progress(summary: RunSummary, elapsed_s: float) -> str:
    """A sync's live line: counts so far and events a second."""
    rate = summary.events_read / max(elapsed_s, 1e-6)
    dead = (f"would dead-letter {summary.dead_lettered}" if summary.dry_run else
            f"{summary.dead_lettered} dead-lettered")
    return f"{summary.events_read} read, {summary.applied} applied, {dead}, {rate:.0f}/s"


def backfill_progress(c: TypeProgress, elapsed_s: float, *, dry_run: bool) -> str:
    """A backfill's live line for one object type: counts so far and objects a second."""
    rate = c.read / max(elapsed_s, 1e-6)
    counts = (f"would write {c.written}, would dead-letter {c.dead_lettered}" if dry_run else
              f"{c.written} written, {c.dead_lettered} dead-lettered")
    return f"{c.read} read, {counts}, {rate:.0f}/s{' (Bulk API)' if c.bulk else ''}"


def backfill_stopped(summary: RunSummary, resume_command: str) -> None:
    """An interrupted backfill's warning: what is saved, and the command that continues it."""
    by = f" ({summary.stopped_by})" if summary.stopped_by else ""
    say(logging.WARNING, f"Stopped{by}; everything finished so far is saved. Continue with: {resume_command}",
        kind="interrupted")


def resume_command(config: Path | None, since: str, until: str | None, objects: str) -> str:
    """The exact command that continues a backfill (its checkpoint is keyed by since, until and objects)."""
    kinds = ",".join(k.strip() for k in objects.split(",") if k.strip())
    args = ["stripe-sf", "backfill", "--since", since, *(["--until", until] if until else []), "--objects", kinds]
    if config is not None and config != DEFAULT_CONFIG_PATH:
        args += ["--config", str(config)]
    return shlex.join([*args, "--resume"])


def reconcile_json(report: Any, summary: RunSummary, exit_code: int) -> dict[str, Any]:
    """`reconcile --json`: the report, the exit code, the calls and duration (and a dry run's plan)."""
    doc = {**report.as_dict(), "exit_code": exit_code, "stripe_calls": summary.stripe_calls,
           "salesforce_calls": summary.salesforce_calls, "duration_s": summary.duration_s}
    if summary.dry_run:
        doc["planned_writes"] = summary.planned_writes
    return doc


def print_reconcile(report: Any, summary: RunSummary, out: Console | None = None) -> None:
    """The reconcile report for people: readable at 80 columns and in a pipe (render/tables.py)."""
    out = out or stdout()
    c = report.checked
    checked = ", ".join(counted(n, k.replace("_", " ")[:-1], k.replace("_", " ")) for k, n in c.items())
    out.print(f"Checked {checked}: {report.matched} matched, {counted(report.mismatches, 'mismatch', 'mismatches')}.",
              highlight=False)
    if report.totals:
        _print_mrr_totals(out, report.totals)
    if report.totals_left_out:
        # Two short lines: the report reads at 80 columns in a pipe.
        out.print(f"Not in the MRR totals: {counted(report.totals_left_out, 'won Opportunity', 'won Opportunities')}"
                  " naming\n  a subscription Stripe did not list (--since: older; else: unknown_stripe_id).",
                  highlight=False)
    for kind, n in report.counts().items():
        if n:
            out.print(f"  {kind}: {n}", highlight=False)
    for skipped in report.skipped_checks:
        out.print(f"  not checked: {skipped}", highlight=False, markup=False)
    shown = report.findings[:RECONCILE_SHOWN]
    if shown:
        rows = [(f.kind, f.stripe_id or "", f.salesforce_id or "",
                 {name: f"Stripe {a or '(none)'} | Salesforce {b or '(none)'}" for name, a, b in f.values}, f.detail)
                for f in shown]
        print_records(out, f"Findings: {len(report.findings)}", [
            Column("kind"), Column("stripe", is_id=True), Column("salesforce", is_id=True), Column("values"),
            Column("detail")], rows)
    if len(report.findings) > len(shown):
        out.print(f"... and {len(report.findings) - len(shown)} more: --csv PATH or --json lists every one.",
                  highlight=False)
    if report.fix is None:
        out.print(f"{counted(summary.stripe_calls, 'Stripe call')}, "
                  f"{counted(summary.salesforce_calls, 'Salesforce call')}; "
                  f"{summary.duration_s:.1f}s.", highlight=False)


def _print_mrr_totals(out: Console, totals: dict[str, dict[str, Any]]) -> None:
    """MRR per currency on both sides, and what Salesforce counts apart from Stripe's Dashboard figure."""
    rows: list[tuple[Any, ...]] = [(cur, t["stripe_mrr"], t["salesforce_mrr"], t["difference"])
                                   for cur, t in totals.items()]
    print_records(out, "MRR per currency", [Column("currency", is_id=True), Column("Stripe", is_id=True),
                                            Column("Salesforce", is_id=True), Column("difference", is_id=True)],
                  rows)
    for cur, t in totals.items():
        if "apart_subscriptions" in t:  # mrr_totals: what Salesforce counts and Stripe's Dashboard does not
            n = int(t["apart_subscriptions"])
            out.print(f"  {cur}, counted apart: {n} won {'subscription' if n == 1 else 'subscriptions'} Stripe's "
                      f"MRR leaves out (trialing, unpaid, set to cancel): Salesforce {t['apart_salesforce_mrr']}, "
                      f"their MRR in Stripe {t['apart_stripe_mrr']}", highlight=False, markup=False)
