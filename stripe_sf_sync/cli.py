"""The `stripe-sf` command line: parse, build, one call into the core, map errors to an exit code."""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

import stripe_sf_sync
from stripe_sf_sync.defaults import DEFAULT_CONFIG_PATH
from stripe_sf_sync.errors import ConfigError, ExitCode, StripeSfError, missing_extra, missing_sandbox
from stripe_sf_sync.health import DEFAULT_MAX_CURSOR_AGE, span
from stripe_sf_sync.lazy import lazy_module
from stripe_sf_sync.logs import LogFormat, active_settings, fields, setup_logging
from stripe_sf_sync.tables import Column, print_records
from stripe_sf_sync.words import counted

# Loaded when a command first uses them: `--help` and TAB completion start without the Stripe SDK,
# simple-salesforce, pydantic or requests (issue 20 §5; tests/test_cli.py checks it).
if TYPE_CHECKING:  # the modules themselves, to the type checker
    from rich.console import Console

    from stripe_sf_sync import config as configuration
    from stripe_sf_sync import service
else:
    service = lazy_module("stripe_sf_sync.service")
    configuration = lazy_module("stripe_sf_sync.config")

T = TypeVar("T")
log = logging.getLogger("stripe_sf_sync")

app = typer.Typer(help="Keep Salesforce true to what Stripe has actually collected.", no_args_is_help=True,
                  add_completion=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
dlq_app = typer.Typer(help="Inspect, retry and drop dead-lettered events.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
state_app = typer.Typer(help="Move the state to PostgreSQL (shared by more than one host).", no_args_is_help=True)
app.add_typer(state_app, name="state")

_GIVEN = "stripe_sf.global_options"  # ctx.meta key: the global options given before the command name


def _global(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
    """A global option (--config, --log-format, -v, --quiet) works before or after the command name: the
    root command and every command declare it. Given after the name, it wins; given only before, the
    command takes that value; otherwise its own (the environment variable, or the default)."""
    given: dict[str, Any] = ctx.meta.setdefault(_GIVEN, {})
    source = ctx.get_parameter_source(param.name or "")
    if source is not None and source.name == "COMMANDLINE":
        given[param.name or ""] = value
        return value
    return given.get(param.name or "", value)


ConfigOpt = Annotated[Path, typer.Option("--config", "-c", envvar="STRIPE_SF_CONFIG", callback=_global,
                                         help="Path to sync.yaml.", show_default=True)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", "--verbose", "-v", callback=_global,
                                        help="Debug logs (each API call), and a traceback on errors.")]
LogFormatOpt = Annotated[LogFormat | None, typer.Option(
    "--log-format", envvar="STRIPE_SF_LOG_FORMAT", callback=_global, case_sensitive=False,
    help="Log lines on stderr: auto (pretty on a terminal), plain, or json (one object a line). "
         "Default: sync.log_format in the config, else auto.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", callback=_global,
                                        help="Warnings and errors only; a run's summary only with --json.")]
MetricsOpt = Annotated[Path | None, typer.Option(
    "--metrics-file", help="Write the run's figures here in Prometheus text format (node_exporter's textfile "
                           "collector), atomically.")]


def _stdout() -> Console:
    from rich.console import Console  # here: TAB completion starts without rich

    return Console(file=sys.stdout, soft_wrap=True)


def _stderr() -> Console:
    from rich.console import Console

    return Console(file=sys.stderr, soft_wrap=True)


def guarded(fn: Callable[[], T], *, debug: bool) -> T:
    """The one error boundary: a domain error becomes one paragraph on stderr (with --log-format json, one
    JSON line with its exit code and error code) and its exit code."""
    try:
        return fn()
    except StripeSfError as exc:
        _error("error", str(exc), exc, debug, exit_code=int(exc.exit_code), error=type(exc).__name__,
               code=getattr(exc, "code", None), request_id=getattr(exc, "request_id", None),
               problems=getattr(exc, "problems", None), hint=exc.hint or None)
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt as exc:
        # A second SIGTERM aborts with 143, a second Ctrl-C (or Python's own) with 130.
        code = int(getattr(exc, "exit_code", ExitCode.INTERRUPTED))
        _say(logging.WARNING, "interrupted: the state is consistent; the next run continues from the last "
                              "committed batch.", kind="interrupted", exit_code=code)
        raise typer.Exit(code) from None
    except typer.Exit:
        raise
    except Exception as exc:
        _error("internal error", f"{type(exc).__name__}: {exc}. This is a bug in stripe-sf; rerun with --debug "
               "and report the output (it contains no secrets).", exc, debug, exit_code=int(ExitCode.FAILURE),
               error=type(exc).__name__)
        raise typer.Exit(int(ExitCode.FAILURE)) from None


def _error(label: str, text: str, exc: BaseException, debug: bool, **extra: Any) -> None:
    """An error on stderr: a paragraph for people, or one JSON line when the log is JSON. Tracebacks (only with
    --debug) never include local variables: they may hold secrets."""
    if active_settings().json:
        log.error("%s", text if label == "error" else f"{label}: {text}", exc_info=exc if debug else None,
                  extra=fields(kind="error", **extra))
        return
    if debug:
        traceback.print_exc(file=sys.stderr)
    # Escaped: messages quote brackets (`expand[]`, `.[sandbox]`) that rich would take for markup.
    from rich.markup import escape

    _stderr().print(f"[bold red]{label}:[/] {escape(text)}", highlight=False, markup=True)


def _say(level: int, text: str, **extra: Any) -> None:
    """A notice on stderr (a warning or an error): a log line when the log is JSON, so that every line there is
    a JSON object; printed as it is otherwise."""
    if active_settings().json:
        log.log(level, "%s", text, extra=fields(**extra))
    else:
        _stderr().print(text, highlight=False)


def _setup(debug: bool, log_format: str | None, config: Path | None = None, quiet: bool = False) -> None:
    """Logging for one command: the format from the option (or STRIPE_SF_LOG_FORMAT), else the config's
    sync.log_format, else auto."""
    if log_format is None and config is not None:
        log_format = _configured_log_format(config)
    if log_format not in (None, "auto", "plain", "json"):
        _stderr().print(f"error: --log-format must be auto, plain or json, not {log_format!r}.", highlight=False)
        raise typer.Exit(int(ExitCode.CONFIG))
    if debug and quiet:
        _stderr().print("error: --quiet and -v/--debug ask for opposite things; choose one.", highlight=False)
        raise typer.Exit(int(ExitCode.CONFIG))
    setup_logging(str(log_format or "auto"), debug=debug, quiet=quiet)


def _configured_log_format(config: Path) -> str | None:
    """sync.log_format from the config, if it can be read; full validation happens later."""
    try:
        data = configuration.load_yaml(config.read_text(encoding="utf-8"))
        value = data["sync"]["log_format"]
        return value if value in ("auto", "plain", "json") else None
    except Exception:  # any problem is reported properly when the config is loaded
        return None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stripe-sf {stripe_sf_sync.__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    log_format: LogFormatOpt = None,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Keep Salesforce true to what Stripe has actually collected.

    --config, --log-format, -v and --quiet work before or after the command name.

    Example: stripe-sf sync --config /etc/stripe-sf/sync.yaml
    """


def _print_summary(summary: service.RunSummary, as_json: bool) -> None:
    """The run's summary on stdout: as JSON with --json; for people otherwise, unless --quiet or a JSON log
    (there the summary is a log line, and stdout carries only what --json asks for)."""
    if as_json:
        typer.echo(json.dumps(summary.as_dict(), indent=2, default=str))
    elif not (active_settings().quiet or active_settings().json):
        _print_human_summary(summary)
    if summary.stopped_early:  # a warning, so that --quiet and a JSON log show it too
        _say(logging.WARNING, f"Stopped early: {summary.stopped_early}. The next run continues where this one stopped.",
             kind="stopped_early", reason=summary.stopped_early)
    if summary.dead_lettered and summary.dry_run:
        _say(logging.WARNING, f"A real run would dead-letter {counted(summary.dead_lettered, 'event')} (the "
                              "warnings above say why): fix the cause first, or apply the rest and retry them "
                              "with `stripe-sf dlq retry --all`.",
             kind="would_dead_letter", dead_lettered=summary.dead_lettered)
    elif summary.dead_lettered:
        _say(logging.WARNING, f"{counted(summary.dead_lettered, 'event was', 'events were')} dead-lettered: see "
                              "`stripe-sf dlq list`, fix the cause, then `stripe-sf dlq retry --all`.",
             kind="dead_letters", dead_lettered=summary.dead_lettered)


def _print_human_summary(summary: service.RunSummary) -> None:
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
    writes = (f"{counted(len(summary.planned_writes), 'write')} planned" if dry else
              f"{counted(summary.records_written, 'record')} written")
    out.print(
        f"{summary.command}{' (dry run)' if dry else ''}: {counted(summary.events_read, 'event')} read, "
        f"{outcomes}, {summary.skipped_stale} skipped as stale, "
        f"{summary.skipped_duplicate} already done, {summary.ignored} needing no write, "
        f"{dead}; {writes}; "
        f"{counted(summary.stripe_calls, 'Stripe call')}, {counted(summary.salesforce_calls, 'Salesforce call')}; "
        + (f"Stripe rate-limited {counted(summary.stripe_rate_limited, 'time')} (HTTP 429; pacing lowered); "
           if summary.stripe_rate_limited else "") +
        f"Salesforce API usage {api}; {summary.duration_s:.1f}s.", highlight=False)


@contextlib.contextmanager
def _terminal_progress(as_json: bool) -> Iterator[Callable[[str, str], None] | None]:
    """A live display on stderr when it is a terminal (never with --json, never in cron): `update(name,
    stats)` sets the line of `name`. None otherwise."""
    err = _stderr()
    if as_json or not err.is_terminal or active_settings().json or active_settings().quiet:
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
    since: Annotated[str | None, typer.Option(help="First run: start at this DATE or DATETIME (UTC), within "
                                                   "the last 30 days.")] = None,
    rewind: Annotated[bool, typer.Option("--rewind", help="With --since when a cursor exists: re-read events "
                                         "from that date. Events already recorded are not applied again, only "
                                         "unrecorded ones; the lookback floor moves back to the date, never "
                                         "forward.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the planned writes; change nothing.")] = False,
    max_events: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.")] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
    log_format: LogFormatOpt = None,
    quiet: QuietOpt = False,
    metrics_file: MetricsOpt = None,
) -> None:
    """Apply Stripe events since the saved cursor to Salesforce, in batches.

    Example (first run, then every 5 minutes from cron):

        stripe-sf sync --since 2026-11-01

        */5 * * * * cd /etc/stripe-sf && stripe-sf sync --log-format json

    Ctrl-C or SIGTERM stops it within seconds, with everything finished so far saved (exit 130 or 143); the
    next run continues from the cursor.
    """
    _setup(debug, log_format, config, quiet)
    started = time.monotonic()
    with _terminal_progress(as_json) as update:
        def show(s: service.RunSummary) -> None:
            if update is not None:
                rate = s.events_read / max(time.monotonic() - started, 1e-6)
                dead = f"would dead-letter {s.dead_lettered}" if s.dry_run else f"{s.dead_lettered} dead-lettered"
                update("sync", f"{s.events_read} read, {s.applied} applied, {dead}, {rate:.0f}/s")

        summary = guarded(lambda: service.run_sync(config, service.Environment(), since=since, dry_run=dry_run,
                                                   max_events=max_events, rewind=rewind, metrics_file=metrics_file,
                                                   progress=show if update is not None else None), debug=debug)
    _print_summary(summary, as_json)
    raise typer.Exit(int(service.exit_code_for(summary)))


@app.command()
def backfill(
    since: Annotated[str, typer.Option(help="Objects created at or after this DATE (UTC).")],
    until: Annotated[str | None, typer.Option(help="...and before this DATE.")] = None,
    objects: Annotated[str, typer.Option(help="Comma-separated, any of: subscriptions, payment_intents, invoices.",
                                         show_default="all three")] = "subscriptions,payment_intents,invoices",
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the planned writes; change nothing.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted backfill.")] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
    log_format: LogFormatOpt = None,
    quiet: QuietOpt = False,
    metrics_file: MetricsOpt = None,
) -> None:
    """Bring Salesforce to Stripe's current state for history older than the 30-day event window.

    Example: stripe-sf backfill --since 2024-01-01, then `stripe-sf sync` continues with no gap.

    Ctrl-C or SIGTERM stops it within seconds (exit 130 or 143), with what it finished saved, and prints the
    --resume command.
    """
    _setup(debug, log_format, config, quiet)
    from stripe_sf_sync.sources.backfill import TypeProgress

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
    if summary.interrupted and not dry_run:
        by = f" ({summary.stopped_by})" if summary.stopped_by else ""
        _say(logging.WARNING, f"Stopped{by}; everything finished so far is saved. "
                              f"Continue with: {_resume_command(config, since, until, objects)}", kind="interrupted")
    raise typer.Exit(int(service.exit_code_for(summary)))


def _resume_command(config: Path, since: str, until: str | None, objects: str) -> str:
    """The exact command that continues this backfill (its checkpoint is keyed by since, until and objects)."""
    import shlex

    kinds = ",".join(k.strip() for k in objects.split(",") if k.strip())
    args = ["stripe-sf", "backfill", "--since", since, *(["--until", until] if until else []), "--objects", kinds]
    if config != DEFAULT_CONFIG_PATH:
        args += ["--config", str(config)]
    return shlex.join([*args, "--resume"])


RECONCILE_SHOWN = 50  # findings printed for people; --csv and --json carry them all


@app.command()
def reconcile(
    since: Annotated[str | None, typer.Option(help="Only objects created at or after this DATE (UTC); the checks "
                                                   "that need every object are skipped.")] = None,
    objects: Annotated[str, typer.Option(help="Comma-separated, any of: subscriptions, payment_intents, accounts.",
                                         show_default="all three")] = "subscriptions,payment_intents,accounts",
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write every finding to this CSV file, the Stripe "
                                                                "and Salesforce values side by side.")] = None,
    fix: Annotated[bool, typer.Option("--fix", help="Repair the fixable drift through backfill's pipeline; never "
                                                    "deletes anything.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --fix: print the planned writes; change "
                                                            "nothing.")] = False,
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
    log_format: LogFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Compare Salesforce with Stripe object by object, and say exactly where they disagree.

    Exit 0 when they agree, 9 when anything drifted (docs/reconcile.md), 3 when a --fix repair was dead-lettered.

    Example: stripe-sf reconcile --csv drift.csv; then stripe-sf reconcile --fix --dry-run, and --fix
    """
    _setup(debug, log_format, config, quiet)
    summary, report = guarded(lambda: service.run_reconcile(config, service.Environment(), since=since,
                                                            objects=objects, fix=fix, dry_run=dry_run,
                                                            csv_path=csv_path), debug=debug)
    code = service.exit_code_for(summary)
    if as_json:
        doc = {**report.as_dict(), "exit_code": int(code), "stripe_calls": summary.stripe_calls,
               "salesforce_calls": summary.salesforce_calls, "duration_s": summary.duration_s}
        if summary.dry_run:
            doc["planned_writes"] = summary.planned_writes
        typer.echo(json.dumps(doc, indent=2))
    elif not (active_settings().quiet or active_settings().json):
        _print_reconcile(report, summary)
    if fix and not as_json:
        _print_summary(summary, as_json=False)  # the repair's run: events applied, dead letters, planned writes
    raise typer.Exit(int(code))


def _print_reconcile(report: Any, summary: service.RunSummary) -> None:
    """The reconcile report for people: readable at 80 columns and in a pipe (tables.py)."""
    out = _stdout()
    c = report.checked
    checked = ", ".join(counted(n, k.replace("_", " ")[:-1], k.replace("_", " ")) for k, n in c.items())
    out.print(f"Checked {checked}: {report.matched} matched, {counted(report.mismatches, 'mismatch', 'mismatches')}.",
              highlight=False)
    if report.totals:
        rows: list[tuple[Any, ...]] = [(cur, t["stripe_mrr"], t["salesforce_mrr"], t["difference"])
                                       for cur, t in report.totals.items()]
        print_records(out, "MRR per currency", [Column("currency", is_id=True), Column("Stripe", is_id=True),
                                                Column("Salesforce", is_id=True), Column("difference", is_id=True)],
                      rows)
        for cur, t in report.totals.items():
            if "apart_subscriptions" in t:  # mrr_totals: what Salesforce counts and Stripe's Dashboard does not
                n = int(t["apart_subscriptions"])
                out.print(f"  {cur}, counted apart: {n} won {'subscription' if n == 1 else 'subscriptions'} Stripe's "
                          f"MRR leaves out (trialing, unpaid, set to cancel): Salesforce {t['apart_salesforce_mrr']}, "
                          f"their MRR in Stripe {t['apart_stripe_mrr']}", highlight=False, markup=False)
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


@app.command("discover-config")
def discover_config(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    write: Annotated[bool, typer.Option("--write", help="Store the values in the config file.")] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
    log_format: LogFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Find the org's Opportunity RecordTypeIds and its won stage (by API name).

    Example: stripe-sf discover-config --write
    """
    _setup(debug, log_format, config, quiet)
    found = guarded(lambda: service.run_discover(config, service.Environment(), write=write,
                                                 example=configuration.example_config()), debug=debug)
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
def dlq_list(config: ConfigOpt = DEFAULT_CONFIG_PATH, as_json: JsonOpt = False, debug: DebugOpt = False,
             log_format: LogFormatOpt = None, quiet: QuietOpt = False) -> None:
    """List open dead letters with their reason and Salesforce error code.

    Example: stripe-sf dlq list --json
    """
    _setup(debug, log_format, config, quiet)
    rows = guarded(lambda: service.dlq_list(config, service.Environment()), debug=debug)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        _stdout().print("No open dead letters.")
        return
    print_records(_stdout(), f"{counted(len(rows), 'open dead letter')}",
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
    log_format: LogFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Send dead letters through the pipeline again, after fixing their cause.

    Example: stripe-sf dlq retry --all

    Ctrl-C or SIGTERM stops it after the current batch (exit 130 or 143); the rest stay open.
    """
    _setup(debug, log_format, config, quiet)
    if not event_id and not retry_all:
        _say(logging.ERROR, "error: name an EVENT_ID or pass --all.", kind="error", exit_code=int(ExitCode.CONFIG))
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
    log_format: LogFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Stop retrying a dead letter (it stays in the state file for audit).

    Example: stripe-sf dlq drop evt_1QxYz...
    """
    _setup(debug, log_format, config, quiet)
    guarded(lambda: service.dlq_drop(config, service.Environment(), event_id), debug=debug)
    _stdout().print(f"Dropped {event_id}.", highlight=False)


@app.command()
def status(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
    log_format: LogFormatOpt = None,
    quiet: QuietOpt = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 8 when unhealthy (for a monitoring check); "
                                                        "docs/reconcile.md says what counts.")] = False,
    max_cursor_age: Annotated[str, typer.Option(help="--check: the oldest the cursor may be (90s, 15m, 2h, 1d).")
                              ] = DEFAULT_MAX_CURSOR_AGE,
    max_dead_letters: Annotated[int | None, typer.Option(min=0, help="--check: more open dead letters than this "
                                                                     "is unhealthy (default: only a warning).")
                                ] = None,
) -> None:
    """Show the cursor and its age, the last runs, dead letters, API usage and health.

    Example: stripe-sf status --json; from a monitoring check: stripe-sf status --check --max-cursor-age 15m
    """
    _setup(debug, log_format, config, quiet)
    report = guarded(lambda: service.status_report(config, service.Environment(), max_cursor_age=max_cursor_age,
                                                   max_dead_letters=max_dead_letters), debug=debug)
    health = report["health"]
    code = ExitCode.UNHEALTHY if check and not health["healthy"] else ExitCode.OK
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        _print_status(report)
    raise typer.Exit(int(code))


def _print_status(report: dict[str, Any]) -> None:
    """`status` for people: where the cursor is, the last run, dead letters, usage, health, recent runs."""
    out = _stdout()
    health = report["health"]
    # The URL (password masked) for PostgreSQL; the file's name for SQLite (its full path: --json, state_path).
    where = report["state_path"] if report["state_backend"] == "postgresql" else Path(report["state_path"]).name
    out.print(f"State: {report['state_backend']}, {where}", highlight=False, markup=False)
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
    rec = report.get("reconcile")
    if rec:
        drifted = ", ".join(f"{n} {k}" for k, n in (rec.get("counts") or {}).items() if n)
        out.print(f"Last reconcile: #{rec['run_id']}, ended {_iso(rec['finished_at'])}, exit {rec['exit_code']}: "
                  f"{counted(rec.get('mismatches') or 0, 'mismatch', 'mismatches')}"
                  f"{f' ({drifted})' if drifted else ''}", highlight=False, markup=False)
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


def _print_runs(out: Console, runs: list[dict[str, Any]]) -> None:
    """The recent runs, newest first: an id or a time is never cut."""
    if runs:
        rows = []
        for r in runs:
            s: dict[str, Any] = r.get("summary") or {}
            ended = "running" if r["running"] else ("ended abnormally" if r["abnormal"] else str(r.get("exit_code")))
            rows.append((str(r["run_id"]), r["command"], _iso(r["started_at"]), _iso(r.get("finished_at")), ended,
                         str(s.get("events_read", "")), str(s.get("applied", "")), str(s.get("dead_lettered", ""))))
        print_records(out, "Recent runs", [Column("run"), Column("command"), Column("started", is_id=True),
                                           Column("ended", is_id=True), Column("exit"), Column("read"),
                                           Column("applied"), Column("dead-lettered")], rows)


@state_app.command("migrate")
def state_migrate(
    to: Annotated[str, typer.Option("--to", help="The URL of an empty store, like postgresql://USER@HOST/DB (the "
                                                 "password from PGPASSWORD).")],
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
    log_format: LogFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Copy the SQLite state (cursor, ledger, versions, dead letters, runs, customers, inbox) into an empty
    PostgreSQL store; every table is verified, and the file is left untouched.

    Example: PGPASSWORD=... stripe-sf state migrate --to postgresql://stripe_sf@db.internal:5432/stripe_sf
    """
    _setup(debug, log_format, config, quiet)
    result = guarded(lambda: service.run_state_migrate(config, service.Environment(), to), debug=debug)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        raise typer.Exit(0)
    out = _stdout()
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


@app.command()
def doctor(config: ConfigOpt = DEFAULT_CONFIG_PATH, as_json: JsonOpt = False, debug: DebugOpt = False,
           log_format: LogFormatOpt = None, quiet: QuietOpt = False) -> None:
    """Check everything a run depends on, before the first write: one line per check, each problem with its fix.

    Exit 0 when healthy (with warnings too), else the first error's code: 2, 5, 6 or 7 (docs/configure.md).

    Example: stripe-sf doctor --json
    """
    from stripe_sf_sync.doctor import run_doctor

    _setup(debug, log_format, config, quiet)
    report = guarded(lambda: run_doctor(config, service.Environment()), debug=debug)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        quiet_now = active_settings().quiet  # -q: warnings and errors only, and the count line when there are any
        for check in report.checks:
            if not (quiet_now and check.status == "ok"):
                typer.echo(check.line())
        c = report.counts()
        if not (quiet_now and not c["warning"] and not c["error"]):
            typer.echo(f"doctor: {c['ok']} ok, {counted(c['warning'], 'warning')}, {counted(c['error'], 'error')}.")
    raise typer.Exit(report.exit_code)


@app.command()
def serve(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    host: Annotated[str, typer.Option(help="Address to listen on (behind a load balancer or proxy that "
                                           "terminates TLS).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    path: Annotated[str, typer.Option(help="The webhook route registered in Stripe.")] = "/stripe/webhook",
    sync_every: Annotated[str, typer.Option(help="Run the cursor sync this often as a safety net for missed "
                                                 "deliveries (90s, 5m, 1h); 0 turns it off.")] = "5m",
    batch_window: Annotated[float, typer.Option(min=0, max=2, help="Seconds a delivery waits for others to "
                                                "be applied with it in one batch (fewer Salesforce calls).")] = 0.5,
    max_connections: Annotated[int, typer.Option(min=1, help="Open connections at most; more get a 503, "
                                                 "which Stripe retries. Keep it under the open-file limit.")] = 100,
    debug: DebugOpt = False,
    log_format: LogFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Receive Stripe webhooks, verified with STRIPE_WEBHOOK_SECRET, and apply them through the same pipeline.

    Each verified event is kept in the state's inbox before the 200 goes back; one worker applies the inbox,
    under the same lock as `sync`. GET /healthz, /readyz and /metrics serve operations. SIGTERM stops taking
    requests, finishes what is in flight and exits 0. Needs the optional server extra.

    Example: STRIPE_WEBHOOK_SECRET=whsec_... stripe-sf serve --host 0.0.0.0 --port 8080
    """
    from stripe_sf_sync.health import parse_duration

    _setup(debug, log_format, config, quiet)

    def load() -> Any:
        with _missing_extra("serve", "server"):
            from stripe_sf_sync import serve as serving
        if not path.startswith("/"):
            raise ConfigError([f"--path {path!r} must start with /"], source="invocation")
        options = serving.ServeOptions(host=host, port=port, path=path,
                                       sync_every_s=parse_duration(sync_every, "--sync-every"),
                                       batch_window_s=batch_window, max_connections=max_connections)
        return lambda: serving.run_serve(config, service.Environment(), options)

    run = guarded(load, debug=debug)
    raise typer.Exit(guarded(run, debug=debug))


@app.command()
def demo(debug: DebugOpt = False, log_format: LogFormatOpt = None, quiet: QuietOpt = False) -> None:
    """Run the real pipeline against local stand-ins of Stripe and Salesforce; no credentials needed.

    Example: stripe-sf demo
    """
    _setup(debug, log_format, None, quiet)
    run_demo = guarded(_sandbox_demo, debug=debug)
    from rich.console import Console

    out = Console(file=sys.stdout)  # the terminal's width (COLUMNS; 80 in a pipe): its tables fit or become blocks
    code = guarded(lambda: run_demo(out), debug=debug)
    raise typer.Exit(int(code))


def _sandbox_demo() -> Callable[[Console], int]:
    """The demo, imported only when asked for: its stand-ins are a distribution of their own."""
    with _sandbox_extra("demo"):
        from stripe_sf_sandbox.demo import run_demo
    return run_demo


def _missing_extra(command: str, extra: str) -> contextlib.AbstractContextManager[None]:
    """Imports of an optional part (the stand-ins, the webhook server): a missing extra is a usage error that
    says how to install it."""
    return missing_extra(f"`stripe-sf {command}`", extra, f"run `stripe-sf {command}` again")


def _sandbox_extra(command: str) -> contextlib.AbstractContextManager[None]:
    """Imports of the stand-ins (their own distribution, stripe-sf-sandbox)."""
    return missing_sandbox(f"`stripe-sf {command}`", f"run `stripe-sf {command}` again")


@app.command("sandbox")
def sandbox_command(
    env_file: Annotated[Path | None, typer.Option("--env-file", help="Run in the background: return once the "
                                                  "stand-ins answer and their export lines are in this file "
                                                  "(removed when they stop).")] = None,
    foreground: Annotated[bool, typer.Option("--foreground", help="With --env-file: keep serving in this "
                                             "process (a container, a service manager).")] = False,
    debug: DebugOpt = False, log_format: LogFormatOpt = None, quiet: QuietOpt = False,
) -> None:
    """Serve local stand-ins of Stripe and Salesforce, seeded with the demo data, until Ctrl-C (or SIGTERM).

    It prints the `export` lines that point the other commands at them (docs/rehearse.md).

    Example: stripe-sf sandbox --env-file sandbox.env && . ./sandbox.env && stripe-sf discover-config --write
    """
    _setup(debug, log_format, None, quiet)

    def load() -> Any:
        with _sandbox_extra("sandbox"):
            from stripe_sf_sandbox import rehearsal
        return rehearsal

    rehearsal = guarded(load, debug=debug)
    if env_file is not None and not foreground:
        pid = guarded(lambda: _detached_sandbox(rehearsal, env_file), debug=debug)
        typer.echo(f"sandbox running (pid {pid}); its export lines are in {env_file}: . {_sourced(env_file)}\n"
                   f"Stop it with: kill {pid}")
        raise typer.Exit(0)
    code = guarded(lambda: rehearsal.serve(typer.echo, env_file=env_file), debug=debug)
    _stderr().print("sandbox stopped.", highlight=False)
    raise typer.Exit(code)


def _detached_sandbox(rehearsal: Any, env_file: Path) -> int:
    problem = configuration.writable_file_problem(env_file, "--env-file", "sandbox.env")
    if problem:
        raise ConfigError([problem], source="invocation")
    try:
        return int(rehearsal.start_detached(env_file))
    except RuntimeError as exc:
        raise StripeSfError(f"The sandbox did not start: {exc}", hint="Run `stripe-sf sandbox` in the "
                            "foreground to see why.") from None


def _sourced(path: Path) -> str:
    """How to source `path` in sh: `.` searches PATH for a bare name, so a relative one gets its `./`."""
    text = str(path)
    return shlex.quote(text if path.is_absolute() or text.startswith(".") else f"./{text}")


def _iso(ts: int | None) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else ""


def main() -> None:
    """Console-script entry point."""
    app()
