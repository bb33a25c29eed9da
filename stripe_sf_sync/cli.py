"""The `stripe-sf` command line: parse, build, one call into the core, map errors to an exit code."""

from __future__ import annotations

import contextlib
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from stripe_sf_sync import __version__, service
from stripe_sf_sync.config import DEFAULT_CONFIG_PATH, example_config, load_yaml
from stripe_sf_sync.console import setup_logging
from stripe_sf_sync.errors import ConfigError, ExitCode, StripeSfError
from stripe_sf_sync.health import DEFAULT_MAX_CURSOR_AGE, span
from stripe_sf_sync.tables import Column, print_records

T = TypeVar("T")

app = typer.Typer(help="Keep Salesforce true to what Stripe has actually collected.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
dlq_app = typer.Typer(help="Inspect, retry and drop dead-lettered events.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Path to sync.yaml.", show_default=True)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Debug logs, and a traceback on errors.")]
LogFormatOpt = Annotated[str | None, typer.Option("--log-format", help="auto, plain or json (stderr).")]
MetricsOpt = Annotated[Path | None, typer.Option(
    "--metrics-file", help="Write the run's figures here in Prometheus text format (node_exporter's textfile "
                           "collector), atomically.")]


def _stdout() -> Console:
    return Console(file=sys.stdout, soft_wrap=True)


def _stderr() -> Console:
    return Console(file=sys.stderr, soft_wrap=True)


def guarded(fn: Callable[[], T], *, debug: bool) -> T:
    """The one error boundary: a domain error becomes one paragraph on stderr and its exit code."""
    try:
        return fn()
    except StripeSfError as exc:
        if debug:
            traceback.print_exc(file=sys.stderr)
        # Escaped: messages quote brackets (`expand[]`, `.[sandbox]`) that rich would take for markup.
        _stderr().print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True)
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        _stderr().print("interrupted: the state is consistent; the next run continues from the last "
                        "committed batch.")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except typer.Exit:
        raise
    except Exception as exc:
        if debug:
            # Without locals: they may hold secrets.
            traceback.print_exc(file=sys.stderr)
        _stderr().print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}. This is a bug in "
                        "stripe-sf; rerun with --debug and report the output (it contains no secrets).",
                        highlight=False)
        raise typer.Exit(int(ExitCode.FAILURE)) from None


def _setup(debug: bool, log_format: str | None, config: Path | None = None) -> None:
    if log_format is None and config is not None:
        log_format = _configured_log_format(config)
    if log_format not in (None, "auto", "plain", "json"):
        _stderr().print(f"error: --log-format must be auto, plain or json, not {log_format!r}.", highlight=False)
        raise typer.Exit(int(ExitCode.CONFIG))
    setup_logging(log_format or "auto", debug=debug)


def _configured_log_format(config: Path) -> str | None:
    """sync.log_format from the config, if it can be read; full validation happens later."""
    try:
        data = load_yaml(config.read_text(encoding="utf-8"))
        value = data["sync"]["log_format"]
        return value if value in ("auto", "plain", "json") else None
    except Exception:  # any problem is reported properly when the config is loaded
        return None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stripe-sf {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Keep Salesforce true to what Stripe has actually collected.

    Example: stripe-sf sync --config /etc/stripe-sf/sync.yaml
    """


def _print_summary(summary: service.RunSummary, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary.as_dict(), indent=2, default=str))
        return
    out = _stdout()
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
    api = (f"{summary.salesforce_api_used}/{summary.salesforce_api_max}"
           if summary.salesforce_api_used is not None else "not contacted")
    outcomes = (f"would apply {summary.applied}" if dry else f"{summary.applied} applied")
    dead = (f"would dead-letter {summary.dead_lettered}" if dry else f"{summary.dead_lettered} dead-lettered")
    writes = (f"{len(summary.planned_writes)} writes planned" if dry else
              f"{summary.records_written} records written")
    out.print(
        f"{summary.command}{' (dry run)' if dry else ''}: {summary.events_read} events read, "
        f"{outcomes}, {summary.skipped_stale} skipped as stale, "
        f"{summary.skipped_duplicate} already done, {summary.ignored} needing no write, "
        f"{dead}; {writes}; "
        f"{summary.stripe_calls} Stripe and {summary.salesforce_calls} Salesforce calls; "
        f"Salesforce API usage {api}; {summary.duration_s:.1f}s.", highlight=False)
    if summary.stopped_early:
        out.print(f"Stopped early: {summary.stopped_early}. The next run continues from the cursor.",
                  highlight=False)
    if summary.dead_lettered and dry:
        _stderr().print(f"A real run would dead-letter {summary.dead_lettered} events (the warnings above say "
                        "why): fix the cause first, or apply the rest and retry them with `stripe-sf dlq retry "
                        "--all`.", highlight=False)
    elif summary.dead_lettered:
        _stderr().print(f"{summary.dead_lettered} events were dead-lettered: see `stripe-sf dlq list`, fix the "
                        "cause, then `stripe-sf dlq retry --all`.", highlight=False)


@contextlib.contextmanager
def _terminal_progress(as_json: bool) -> Iterator[Callable[[str, str], None] | None]:
    """A live display on stderr when it is a terminal (never with --json, never in cron): `update(name,
    stats)` sets the line of `name`. None otherwise."""
    err = _stderr()
    if as_json or not err.is_terminal:
        yield None
        return
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                  console=err, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def update(name: str, stats: str) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=None, stats="")
            bar.update(tasks[name], stats=stats)

        yield update


@app.command()
def sync(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    since: Annotated[str | None, typer.Option(help="First run: start at this DATE or DATETIME (UTC).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the planned writes; change nothing.")] = False,
    max_events: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.")] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
    log_format: LogFormatOpt = None,
    metrics_file: MetricsOpt = None,
) -> None:
    """Apply Stripe events since the saved cursor to Salesforce, in batches.

    Example (first run, then every 5 minutes from cron):

        stripe-sf sync --since 2026-11-01

        */5 * * * * cd /etc/stripe-sf && stripe-sf sync --log-format json
    """
    _setup(debug, log_format, config)
    started = time.monotonic()
    with _terminal_progress(as_json) as update:
        def show(s: service.RunSummary) -> None:
            if update is not None:
                rate = s.events_read / max(time.monotonic() - started, 1e-6)
                dead = f"would dead-letter {s.dead_lettered}" if s.dry_run else f"{s.dead_lettered} dead-lettered"
                update("sync", f"{s.events_read} read, {s.applied} applied, {dead}, {rate:.0f}/s")

        summary = guarded(lambda: service.run_sync(config, service.Environment(), since=since, dry_run=dry_run,
                                                   max_events=max_events, metrics_file=metrics_file,
                                                   progress=show if update is not None else None), debug=debug)
    _print_summary(summary, as_json)
    raise typer.Exit(int(service.exit_code_for(summary)))


@app.command()
def backfill(
    since: Annotated[str, typer.Option(help="Objects created at or after this DATE (UTC).")],
    until: Annotated[str | None, typer.Option(help="...and before this DATE.")] = None,
    objects: Annotated[str, typer.Option(help="Comma-separated: subscriptions,payment_intents,invoices.")] = (
        "subscriptions,payment_intents,invoices"),
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the planned writes; change nothing.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted backfill.")] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
    log_format: LogFormatOpt = None,
    metrics_file: MetricsOpt = None,
) -> None:
    """Bring Salesforce to Stripe's current state for history older than the 30-day event window.

    Example: stripe-sf backfill --since 2024-01-01, then `stripe-sf sync` continues with no gap.
    """
    _setup(debug, log_format, config)
    from stripe_sf_sync.backfill import TypeProgress

    err = _stderr()
    with _terminal_progress(as_json) as update:
        started: dict[str, float] = {}

        def show(kind: str, c: TypeProgress) -> None:
            if update is not None:
                started.setdefault(kind, time.monotonic())
                rate = c.read / max(time.monotonic() - started[kind], 1e-6)
                counts = (f"would write {c.written}, would dead-letter {c.dead_lettered}" if dry_run else
                          f"{c.written} written, {c.dead_lettered} dead-lettered")
                update(kind, f"{c.read} read, {counts}, {rate:.0f}/s{' (Bulk API)' if c.bulk else ''}")

        summary = guarded(lambda: service.run_backfill(config, service.Environment(), since=since, until=until,
                                                       objects=objects, dry_run=dry_run, resume=resume,
                                                       progress=show if update is not None else None,
                                                       metrics_file=metrics_file), debug=debug)
    _print_summary(summary, as_json)
    if summary.interrupted:
        err.print(f"Interrupted at a page boundary. Continue with `stripe-sf backfill --since {since}"
                  f"{' --until ' + until if until else ''} --objects {objects} --resume`.", highlight=False)
    raise typer.Exit(int(service.exit_code_for(summary)))


@app.command("discover-config")
def discover_config(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    write: Annotated[bool, typer.Option("--write", help="Store the values in the config file.")] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Find the org's Opportunity RecordTypeIds and its won stage (by API name).

    Example: stripe-sf discover-config --write
    """
    _setup(debug, None)
    found = guarded(lambda: service.run_discover(config, service.Environment(), write=write,
                                                 example=example_config()), debug=debug)
    if as_json:
        typer.echo(json.dumps(found.as_dict(), indent=2))
        return
    out = _stdout()
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


@dlq_app.command("list")
def dlq_list(config: ConfigOpt = DEFAULT_CONFIG_PATH, as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List open dead letters with their reason and Salesforce error code.

    Example: stripe-sf dlq list --json
    """
    _setup(debug, None)
    rows = guarded(lambda: service.dlq_list(config, service.Environment()), debug=debug)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        _stdout().print("No open dead letters.")
        return
    print_records(_stdout(), f"{len(rows)} open dead letters",
                  [Column("event", is_id=True), Column("type", is_id=True), Column("code", is_id=True),
                   Column("attempts"), Column("last failed"), Column("reason")],
                  [(r["event_id"], r["event_type"], r["error_code"], str(r["attempts"]), _iso(r["last_failed_at"]),
                    r["reason"]) for r in rows])


@dlq_app.command("retry")
def dlq_retry(
    event_id: Annotated[str | None, typer.Argument(help="The event to retry.")] = None,
    retry_all: Annotated[bool, typer.Option("--all", help="Retry every open dead letter.")] = False,
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Send dead letters through the pipeline again, after fixing their cause.

    Example: stripe-sf dlq retry --all
    """
    _setup(debug, None)
    if not event_id and not retry_all:
        _stderr().print("error: name an EVENT_ID or pass --all.")
        raise typer.Exit(int(ExitCode.CONFIG))
    summary = guarded(lambda: service.run_dlq_retry(config, service.Environment(),
                                                    event_ids=[event_id] if event_id else [],
                                                    retry_all=retry_all), debug=debug)
    _print_summary(summary, as_json)
    raise typer.Exit(int(service.exit_code_for(summary)))


@dlq_app.command("drop")
def dlq_drop(
    event_id: Annotated[str, typer.Argument(help="The event to stop retrying.")],
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    debug: DebugOpt = False,
) -> None:
    """Stop retrying a dead letter (it stays in the state file for audit).

    Example: stripe-sf dlq drop evt_1QxYz...
    """
    _setup(debug, None)
    guarded(lambda: service.dlq_drop(config, service.Environment(), event_id), debug=debug)
    _stdout().print(f"Dropped {event_id}.", highlight=False)


@app.command()
def status(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 8 when unhealthy (for a monitoring check); "
                                                        "the README says what counts.")] = False,
    max_cursor_age: Annotated[str, typer.Option(help="--check: the oldest the cursor may be (90s, 15m, 2h, 1d).")
                              ] = DEFAULT_MAX_CURSOR_AGE,
    max_dead_letters: Annotated[int | None, typer.Option(min=0, help="--check: more open dead letters than this "
                                                                     "is unhealthy (default: only a warning).")
                                ] = None,
) -> None:
    """Show the cursor and its age, the last runs, dead letters, API usage and health.

    Example: stripe-sf status --json; from a monitoring check: stripe-sf status --check --max-cursor-age 15m
    """
    _setup(debug, None)
    report = guarded(lambda: service.status_report(config, service.Environment(), max_cursor_age=max_cursor_age,
                                                   max_dead_letters=max_dead_letters), debug=debug)
    health = report["health"]
    code = ExitCode.UNHEALTHY if check and not health["healthy"] else ExitCode.OK
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        raise typer.Exit(int(code))
    out = _stdout()
    if report["never_run"]:
        out.print(f"Never run: no run is recorded in {report['state_path']}. Start with `stripe-sf sync --since "
                  "DATE` (or `stripe-sf backfill --since DATE`).", highlight=False, markup=False)
    cur = report["cursor"]
    if cur:
        out.print(f"Cursor: {cur['event_id']} from {_iso(cur['created'])} ({span(cur['age_s'])} ago)",
                  highlight=False)
        out.print(f"  current as of {_iso(cur['current_at'])} ({span(cur['current_age_s'])} ago)", highlight=False)
    elif not report["never_run"]:
        out.print("Cursor: none yet (run `stripe-sf sync --since DATE`)")
    if report["running"]:
        r = report["running"]
        out.print(f"Running now: {r['command']} #{r['run_id']}, started {r['started_iso']}", highlight=False)
    last = report["last_run"]
    if last:
        ended = ("ended abnormally (killed before it recorded an exit code)" if last["abnormal"] else
                 f"ended {_iso(last['finished_at'])}, exit {last['exit_code']}")
        out.print(f"Last run: {last['command']} #{last['run_id']}, {ended}", highlight=False)
        out.print(f"  {last['events_read'] or 0} read, {last['applied'] or 0} applied, "
                  f"{last['dead_lettered'] or 0} dead-lettered", highlight=False)
    out.print(f"Open dead letters: {report['dead_letters']}")
    bf = report.get("backfill")
    if bf:
        state_word = "finished" if bf["finished"] else "interrupted (continue with `stripe-sf backfill ... --resume`)"
        out.print(f"Last backfill since {_iso(bf['since'])[:10]}: {state_word}", highlight=False)
    usage = report["api_usage"]
    out.print("Salesforce API usage last seen: " + (f"{usage['used']}/{usage['max']}" if usage else "never"),
              highlight=False)
    out.print(f"Health: {'ok' if health['healthy'] else 'UNHEALTHY'}", highlight=False)
    for line in health["problems"]:
        out.print(f"  problem: {line}", highlight=False, markup=False)
    for line in health["warnings"]:
        out.print(f"  warning: {line}", highlight=False, markup=False)
    if report["runs"]:
        rows = []
        for r in report["runs"]:
            s: dict[str, Any] = r.get("summary") or {}
            ended = "running" if r["running"] else ("abnormal" if r["abnormal"] else str(r.get("exit_code")))
            rows.append((str(r["run_id"]), r["command"], _iso(r["started_at"]), _iso(r.get("finished_at")), ended,
                         str(s.get("events_read", "")), str(s.get("applied", "")), str(s.get("dead_lettered", ""))))
        print_records(out, "Recent runs", [Column("run"), Column("command"), Column("started", is_id=True),
                                           Column("ended", is_id=True), Column("exit"), Column("read"),
                                           Column("applied"), Column("dead-lettered")], rows)
    raise typer.Exit(int(code))


@app.command()
def demo(debug: DebugOpt = False) -> None:
    """Run the real pipeline against local stand-ins of Stripe and Salesforce; no credentials needed.

    Example: stripe-sf demo
    """
    _setup(debug, None)
    run_demo = guarded(_sandbox_demo, debug=debug)
    out = Console(file=sys.stdout, width=max(_stdout().width, 150))  # tables stay readable in a narrow pipe
    code = guarded(lambda: run_demo(out), debug=debug)
    raise typer.Exit(int(code))


def _sandbox_demo() -> Callable[[Console], int]:
    """The demo, imported only when asked for: its stand-ins need the optional [sandbox] extra."""
    try:
        from stripe_sf_sync.sandbox.demo import run_demo
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("stripe_sf_sync"):
            raise
        raise ConfigError([f"`stripe-sf demo` needs the sandbox extra, and {exc.name} is not installed"],
                          source="installation",
                          hint="Install it with `pip install 'stripe-sf-sync[sandbox]'` (from a clone: "
                               "`pip install -e '.[sandbox]'`), then run `stripe-sf demo` again.") from None
    return run_demo


def _iso(ts: int | None) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else ""


def main() -> None:
    """Console-script entry point."""
    app()
