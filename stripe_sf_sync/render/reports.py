"""What the commands that read or check print for people: `status`, `dlq list`, `state migrate`,
`discover-config`, `doctor` and `setup`."""

from __future__ import annotations

import datetime as dt
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stripe_sf_sync.health import span
from stripe_sf_sync.render.console import echo, print_json, quiet, stdout
from stripe_sf_sync.render.tables import Column, print_records
from stripe_sf_sync.words import counted

if TYPE_CHECKING:
    from rich.console import Console


def utc_time(ts: int | None) -> str:
    """`2026-11-03 14:05:09Z`, or "" for no time."""
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else ""


def print_status(report: dict[str, Any], out: Console | None = None) -> None:
    """`status` for people: where the cursor is, the last run, dead letters, usage, health, recent runs."""
    out = out or stdout()
    if "accounts" in report:
        _print_accounts_status(out, report)
        return
    health = report["health"]
    if report.get("account"):
        out.print(f"Account: {report['account']}", highlight=False, markup=False)
    # The URL (password masked) for PostgreSQL; the file's name for SQLite (its full path: --json, state_path).
    where = report["state_path"] if report["state_backend"] == "postgresql" else Path(report["state_path"]).name
    out.print(f"State: {report['state_backend']}, {where}", highlight=False, markup=False)
    if report["never_run"]:
        out.print(f"Never run: no run is recorded in {report['state_path']}. Start with `stripe-sf sync --since "
                  "DATE` (or `stripe-sf backfill --since DATE`).", highlight=False, markup=False)
    _print_where(out, report)
    for line in [] if report["never_run"] else identity_lines(report.get("identity") or {}):
        out.print(line, highlight=False, markup=False)
    out.print(f"Open dead letters: {report['dead_letters']}")
    _print_last_jobs(out, report)
    usage = report["api_usage"]
    out.print("Salesforce API usage last seen: " + (f"{usage['used']}/{usage['max']}" if usage else "never"),
              highlight=False)
    if report.get("stripe_reads_30d") is not None:  # Stripe allocates reads per 30 days (README: Scheduling)
        out.print(f"Stripe reads in the last 30 days: {report['stripe_reads_30d']:,}", highlight=False)
    if report.get("salesforce_contact_iso"):
        out.print(f"Salesforce last reached: {report['salesforce_contact_iso']}", highlight=False)
    out.print(f"Health: {'ok' if health['healthy'] else 'UNHEALTHY'}", highlight=False)
    for line in health["problems"]:
        out.print(f"  problem: {line}", highlight=False, markup=False)
    for line in health["warnings"]:
        out.print(f"  warning: {line}", highlight=False, markup=False)
    _print_runs(out, report["runs"])


def _print_accounts_status(out: Console, report: dict[str, Any]) -> None:
    """`status` of a config with several accounts: a row each, then every problem named by its account."""
    columns = [Column("account", is_id=True), Column("cursor age"), Column("last run"), Column("dead letters"),
               Column("health")]
    rows = []
    for r in report["accounts"]:
        cursor, last = r["cursor"], r["last_run"]
        rows.append([r["account"], span(cursor["current_age_s"]) if cursor else "none",
                     "never" if last is None else "ended abnormally" if last["abnormal"] else
                     f"{last['command']} exit {last['exit_code']}", str(r["dead_letters"]),
                     "ok" if r["health"]["healthy"] else "UNHEALTHY"])
    print_records(out, f"State: {report['state_backend']}, {counted(len(rows), 'account')}", columns, rows)
    health = report["health"]
    out.print(f"Health: {'ok' if health['healthy'] else 'UNHEALTHY'}", highlight=False)
    for line in health["problems"]:
        out.print(f"  problem: {line}", highlight=False, markup=False)
    for line in health["warnings"]:
        out.print(f"  warning: {line}", highlight=False, markup=False)
    out.print("One account in full: stripe-sf status --account ACCT", highlight=False, markup=False)


def identity_lines(identity: dict[str, Any]) -> list[str]:
    """The org and the account a state is bound to (`Binding.as_dict`), or that a run has not met them yet."""
    sf, st = identity.get("salesforce"), identity.get("stripe")
    return [("Salesforce org: " + (f"{sf['org_id']} ({'sandbox' if sf['is_sandbox'] else 'production'})" if sf
                                   else "not recorded yet (the first run that reaches Salesforce records it)")),
            ("Stripe account: " + (f"{st['account'] or '(unknown: the key may not read it)'} "
                                   f"({'live' if st['live'] else 'test'} mode)" if st
                                   else "not recorded yet (the first run records it)"))]


def _print_where(out: Console, report: dict[str, Any]) -> None:
    """The cursor, the run in progress and the last run."""
    cur = report["cursor"]
    if cur:
        out.print(f"Cursor: {cur['event_id']} from {utc_time(cur['created'])} ({span(cur['age_s'])} ago)",
                  highlight=False)
        out.print(f"  current as of {utc_time(cur['current_at'])} ({span(cur['current_age_s'])} ago)", highlight=False)
    elif not report["never_run"]:
        out.print("Cursor: none yet (run `stripe-sf sync --since DATE`)")
    if report["running"]:
        r = report["running"]
        out.print(f"Running now: {r['command']} #{r['run_id']}, started {r['started_iso']}", highlight=False)
    last = report["last_run"]
    if last:
        ended = ("ended abnormally (killed before it recorded an exit code)" if last["abnormal"] else
                 f"ended {utc_time(last['finished_at'])}, exit {last['exit_code']}")
        out.print(f"Last run: {last['command']} #{last['run_id']}, {ended}", highlight=False)
        out.print(f"  {last['events_read'] or 0} read, {last['applied'] or 0} applied, "
                  f"{last['dead_lettered'] or 0} dead-lettered", highlight=False)


def _print_last_jobs(out: Console, report: dict[str, Any]) -> None:
    """The last backfill and the last reconcile."""
    bf = report.get("backfill")
    if bf:
        state_word = "finished" if bf["finished"] else "interrupted (continue with `stripe-sf backfill ... --resume`)"
        out.print(f"Last backfill since {utc_time(bf['since'])[:10]}: {state_word}", highlight=False)
    rec = report.get("reconcile")
    if rec:
        drifted = ", ".join(f"{n} {k}" for k, n in (rec.get("counts") or {}).items() if n)
        out.print(f"Last reconcile: #{rec['run_id']}, ended {utc_time(rec['finished_at'])}, exit {rec['exit_code']}: "
                  f"{counted(rec.get('mismatches') or 0, 'mismatch', 'mismatches')}"
                  f"{f' ({drifted})' if drifted else ''}", highlight=False, markup=False)


def _print_runs(out: Console, runs: list[dict[str, Any]]) -> None:
    """The recent runs, newest first: an id or a time is never cut."""
    if runs:
        rows = []
        for r in runs:
            s: dict[str, Any] = r.get("summary") or {}
            ended = "running" if r["running"] else ("ended abnormally" if r["abnormal"] else str(r.get("exit_code")))
            rows.append((str(r["run_id"]), r["command"], utc_time(r["started_at"]), utc_time(r.get("finished_at")),
                         ended, str(s.get("events_read", "")), str(s.get("applied", "")),
                         str(s.get("dead_lettered", ""))))
        print_records(out, "Recent runs", [Column("run"), Column("command"), Column("started", is_id=True),
                                           Column("ended", is_id=True), Column("exit"), Column("read"),
                                           Column("applied"), Column("dead-lettered")], rows)


def print_dead_letters(rows: list[dict[str, Any]], out: Console | None = None) -> None:
    """`dlq list` for people: one record per open dead letter, ids whole."""
    out = out or stdout()
    if not rows:
        out.print("No open dead letters.")
        return
    accounts = [Column("account", is_id=True)] if "account" in rows[0] else []  # a config with several
    print_records(out, f"{counted(len(rows), 'open dead letter')}",
                  [*accounts, Column("event", is_id=True), Column("type", is_id=True), Column("code", is_id=True),
                   Column("attempts"), Column("last failed"), Column("reason")],
                  [([r["account"]] if accounts else []) + [r["event_id"], r["event_type"], r["error_code"],
                   str(r["attempts"]), utc_time(r["last_failed_at"]), r["reason"]] for r in rows])


def print_dropped(event_id: str) -> None:
    """`dlq drop`'s confirmation."""
    stdout().print(f"Dropped {event_id}.", highlight=False)


def print_migrated(result: dict[str, Any]) -> None:
    """`state migrate` for people: each table verified, and what to set next."""
    out = stdout()
    out.print(f"Copied {result['from']} to {result['to']}, verified (rows and a checksum per table):",
              highlight=False, markup=False)
    for table, seen in result["tables"].items():
        out.print(f"  {table}: {counted(seen['rows'], 'row')}, checksum {seen['checksum'][:16]}", highlight=False)
    # The URL to set, without the password: a password in it would sit in shell history and process lists.
    out.print(f"The file {result['from']} is left as it was; keep it as a backup. Next, on every host that runs "
              "stripe-sf (or as state.url in sync.yaml, the password still apart):\n"
              f"  export STRIPE_SF_STATE_URL={shlex.quote(result['state_url'])}\n"
              "  export PGPASSWORD='...'   # or a ~/.pgpass file (libpq reads either)\n"
              "then run `stripe-sf status`.", highlight=False, markup=False)


def print_discovered(found: Any, *, config: Path, write: bool) -> None:
    """`discover-config` for people: the won stage, the record types, and what --write did or would do."""
    out = stdout()
    label = f" (label: {found.won_stage_label})" if found.won_stage_label != found.won_stage else ""
    others = [api for api, _ in found.won_stages[1:]]
    out.print(f"Won stage: {found.won_stage}{label}" + (f" (also won: {', '.join(others)})" if others else ""),
              highlight=False)
    rows = []
    for name, rid in found.record_types.items():
        mark = "new Opportunities" if name == found.chosen_record_type else (
            "not available to this user" if name in found.unavailable_record_types else (
                "org default" if name == found.default_record_type else ""))
        rows.append((name, rid, mark))
    print_records(out, "Opportunity record types", [Column("name"), Column("RecordTypeId", is_id=True),
                                                    Column("use")], rows)
    if found.configured_unavailable:
        fix = (f"--write set opportunity_record_type to {found.chosen_record_type!r}." if write and
               found.chosen_record_type else
               "Give the integration user's profile access to it, or run with --write to choose one it may use.")
        out.print(f"The configured record type {found.configured_unavailable!r} is not available to the "
                  f"integration user: every Opportunity created with it would fail. {fix}", highlight=False)
    if write:
        out.print(f"Wrote won_stage (the API name) and record_types to {config}.", highlight=False)
    else:
        out.print("Run again with --write to store these in the config.", highlight=False)


def doctor_line(check: Any) -> str:
    """`error    salesforce  won stage: … Fix: ….` (the name once, when the message starts with it); a pipeline's
    check in a config that lists its accounts starts with the account: `error    stripe      acct_1Eu: key: …`."""
    fix = f" Fix: {check.fix.rstrip('.')}." if check.fix else ""
    name = "" if check.message.startswith(check.name) else f"{check.name}: "
    account = f"{check.account}: " if getattr(check, "account", None) else ""
    # Messages borrowed from errors end with their own full stop.
    return f"{check.status:<8} {check.area:<11} {account}{name}{check.message.rstrip('.')}.{fix}"


def print_doctor(report: Any) -> None:
    """`doctor` for people: one line per check, then the counts (-q: only warnings, errors and the counts
    when there are any)."""
    quiet_now = quiet()
    for check in report.checks:
        if not (quiet_now and check.status == "ok"):
            echo(doctor_line(check))
    c = report.counts()
    if not (quiet_now and not c["warning"] and not c["error"]):
        echo(f"doctor: {c['ok']} ok, {counted(c['warning'], 'warning')}, {counted(c['error'], 'error')}.")


def print_rebind(result: dict[str, Any]) -> None:
    """`state rebind`: the identities the state is bound to, and those the credentials reach."""
    echo("The state is bound to:")
    echo("\n".join(f"  {line}" for line in identity_lines(result["recorded"])))
    echo("The credentials reach:")
    echo("\n".join(f"  {line}" for line in identity_lines(result["current"])))
    echo("Rebound: the state now belongs to the org and account the credentials reach." if result["rebound"] else
         "Nothing to change." if not result["changed"] else "")


def print_setup(result: Any, *, as_json: bool) -> None:
    """`setup`: each change, refusal and component's result, one a line (--json: the result's dict)."""
    if as_json:
        from stripe_sf_sync.setup.run import as_dict  # imported when it prints (simple-salesforce)

        print_json(as_dict(result))
        return
    for line in result.lines():
        echo(line)


def print_sandbox_started(pid: int, env_file: Path) -> None:
    """`sandbox --env-file`: where its export lines are, and how to stop it."""
    echo(f"sandbox running (pid {pid}); its export lines are in {env_file}: . {_sourced(env_file)}\n"
         f"Stop it with: kill {pid}")


def _sourced(path: Path) -> str:
    """How to source `path` in sh: `.` searches PATH for a bare name, so a relative one gets its `./`."""
    text = str(path)
    return shlex.quote(text if path.is_absolute() or text.startswith(".") else f"./{text}")
