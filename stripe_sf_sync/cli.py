"""The `stripe-sf` command line: parse, one call into the service layer, hand the result to `render`, map
errors to an exit code."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

import stripe_sf_sync
from stripe_sf_sync import render
from stripe_sf_sync.cli_options import (
    DryRunOpt,
    GlobalOptions,
    JsonOpt,
    MetricsOpt,
    command,
    with_global_options,
)
from stripe_sf_sync.defaults import DEFAULT_CONFIG_PATH
from stripe_sf_sync.errors import ExitCode, StripeSfError
from stripe_sf_sync.health import DEFAULT_MAX_CURSOR_AGE
from stripe_sf_sync.lazy import lazy_module
from stripe_sf_sync.render.link import print_link

# Loaded when a command first uses them: `--help` and TAB completion start without the Stripe SDK,
# simple-salesforce, pydantic or requests (issue 20 §5; tests/test_cli.py checks it).
if TYPE_CHECKING:  # the modules themselves, to the type checker
    from stripe_sf_sync import config as configuration
    from stripe_sf_sync import service
    from stripe_sf_sync.sources.backfill import TypeProgress
else:
    service = lazy_module("stripe_sf_sync.service")
    configuration = lazy_module("stripe_sf_sync.config")

T = TypeVar("T")

app = typer.Typer(help="Keep Salesforce true to what Stripe has actually collected.", no_args_is_help=True,
                  add_completion=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
dlq_app = typer.Typer(help="Inspect, retry and drop dead-lettered events.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
state_app = typer.Typer(help="Move the state to PostgreSQL (shared by more than one host), or bind it to another "
                        "Salesforce org or Stripe account.", no_args_is_help=True)
app.add_typer(state_app, name="state")


def guarded(fn: Callable[[], T], *, debug: bool) -> T:
    """The one error boundary: a domain error becomes one paragraph on stderr (with --log-format json, one
    JSON line with its exit code and error code) and its exit code."""
    try:
        return fn()
    except StripeSfError as exc:
        render.error("error", str(exc), exc, debug, exit_code=int(exc.exit_code), error=type(exc).__name__,
                     code=getattr(exc, "code", None), request_id=getattr(exc, "request_id", None),
                     problems=getattr(exc, "problems", None), hint=exc.hint or None)
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt as exc:
        # A second SIGTERM aborts with 143, a second Ctrl-C (or Python's own) with 130.
        code = int(getattr(exc, "exit_code", ExitCode.INTERRUPTED))
        render.say(logging.WARNING, "interrupted: the state is consistent; the next run continues from the last "
                                   "committed batch.", kind="interrupted", exit_code=code)
        raise typer.Exit(code) from None
    except typer.Exit:
        raise
    except Exception as exc:
        render.error("internal error", f"{type(exc).__name__}: {exc}. This is a bug in stripe-sf; rerun with "
                     "--debug and report the output (it contains no secrets).", exc, debug,
                     exit_code=int(ExitCode.FAILURE), error=type(exc).__name__)
        raise typer.Exit(int(ExitCode.FAILURE)) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stripe-sf {stripe_sf_sync.__version__}")
        raise typer.Exit()


def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
    opts: GlobalOptions | None = None,
) -> None:
    """Keep Salesforce true to what Stripe has actually collected.

    --config, --log-format, -v and --quiet work before or after the command name.

    Example: stripe-sf sync --config /etc/stripe-sf/sync.yaml
    """


app.callback()(with_global_options(main_callback, config=True, setup=False))


def _env(opts: GlobalOptions) -> service.Environment:
    """What a command reads from outside, with the pipeline --account chose."""
    return service.Environment(account=opts.account)


@command(app)
def sync(
    opts: GlobalOptions,
    since: Annotated[str | None, typer.Option(help="First run: start at this DATE or DATETIME (UTC), within "
                                                   "the last 30 days.")] = None,
    rewind: Annotated[bool, typer.Option("--rewind", help="With --since when a cursor exists: re-read events "
                                         "from that date. Events already recorded are not applied again, only "
                                         "unrecorded ones; the lookback floor moves back to the date, never "
                                         "forward.")] = False,
    dry_run: DryRunOpt = False,
    max_events: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.")] = None,
    as_json: JsonOpt = False,
    metrics_file: MetricsOpt = None,
    every: Annotated[bool, typer.Option("--all", help="Every account of stripe.accounts, each from its own "
                                        "cursor; --since starts those with none yet.")] = False,
    parallel: Annotated[int, typer.Option(min=1, max=64, help="With --all: how many accounts at once.")] = 4,
) -> None:
    """Apply Stripe events since the saved cursor to Salesforce, in batches.

    Example (first run, then every 5 minutes from cron):

        stripe-sf sync --since 2026-11-01

        */5 * * * * cd /etc/stripe-sf && stripe-sf sync --log-format json

    Several Stripe accounts (stripe.accounts): stripe-sf sync --all --parallel 4, or one with --account ACCT.

    Ctrl-C or SIGTERM stops it within seconds, with everything finished so far saved (exit 130 or 143); the
    next run continues from the cursor.
    """
    if every:
        _sync_all(opts, since=since, rewind=rewind, dry_run=dry_run, max_events=max_events, as_json=as_json,
                  metrics_file=metrics_file, parallel=parallel)
    started = time.monotonic()
    with render.terminal_progress(as_json) as update:
        def show(s: service.RunSummary) -> None:
            if update is not None:
                update("sync", render.sync_progress(s, time.monotonic() - started))

        summary = guarded(lambda: service.run_sync(opts.config, _env(opts), since=since, dry_run=dry_run,
                                                   max_events=max_events, rewind=rewind, metrics_file=metrics_file,
                                                   progress=show if update is not None else None), debug=opts.debug)
    render.print_summary(summary, as_json)
    raise typer.Exit(int(service.exit_code_for(summary)))


def _sync_all(opts: GlobalOptions, *, since: str | None, rewind: bool, dry_run: bool, max_events: int | None,
              as_json: bool, metrics_file: Path | None, parallel: int) -> None:
    """`sync --all`: every pipeline, at most `parallel` at once; exits with the worst pipeline's code."""
    clash = [name for name, given in (("--account", opts.account), ("--rewind", rewind)) if given]
    if clash:
        render.usage_error(f"error: --all cannot be combined with {', '.join(clash)}: run one account with "
                           "`stripe-sf sync --account ACCT` for that.")
        raise typer.Exit(int(ExitCode.CONFIG))
    runs = guarded(lambda: service.run_sync_all(opts.config, _env(opts), parallel=parallel, dry_run=dry_run,
                                                max_events=max_events, since=since, metrics_file=metrics_file),
                   debug=opts.debug)
    code = service.worst_exit_code([r.exit_code for r in runs])
    render.print_pipeline_runs(runs, code, as_json=as_json)
    raise typer.Exit(code)


@command(app)
def backfill(
    opts: GlobalOptions,
    since: Annotated[str, typer.Option(help="Objects created at or after this DATE (UTC).")],
    until: Annotated[str | None, typer.Option(help="...and before this DATE.")] = None,
    objects: Annotated[str, typer.Option(help="Comma-separated, any of: subscriptions, payment_intents, invoices.",
                                         show_default="all three")] = "subscriptions,payment_intents,invoices",
    dry_run: DryRunOpt = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted backfill.")] = False,
    as_json: JsonOpt = False,
    metrics_file: MetricsOpt = None,
) -> None:
    """Bring Salesforce to Stripe's current state for history older than the 30-day event window.

    Example: stripe-sf backfill --since 2024-01-01, then `stripe-sf sync` continues with no gap.

    Ctrl-C or SIGTERM stops it within seconds (exit 130 or 143), with what it finished saved, and prints the
    --resume command.
    """
    with render.terminal_progress(as_json) as update:
        started: dict[str, float] = {}

        def show(kind: str, c: TypeProgress) -> None:
            if update is not None:
                elapsed = time.monotonic() - started.setdefault(kind, time.monotonic())
                update(kind, render.backfill_progress(c, elapsed, dry_run=dry_run))

        summary = guarded(lambda: service.run_backfill(opts.config, _env(opts), since=since, until=until,
                                                       objects=objects, dry_run=dry_run, resume=resume,
                                                       progress=show if update is not None else None,
                                                       metrics_file=metrics_file), debug=opts.debug)
    render.print_summary(summary, as_json)
    if summary.interrupted and not dry_run:
        render.backfill_stopped(summary, render.resume_command(opts.config, since, until, objects))
    raise typer.Exit(int(service.exit_code_for(summary)))


@command(app)
def reconcile(
    opts: GlobalOptions,
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
    as_json: JsonOpt = False,
) -> None:
    """Compare Salesforce with Stripe object by object, and say exactly where they disagree.

    Exit 0 when they agree, 9 when anything drifted (docs/reconcile.md), 3 when a --fix repair was dead-lettered.

    Example: stripe-sf reconcile --csv drift.csv; then stripe-sf reconcile --fix --dry-run, and --fix
    """
    summary, report = guarded(lambda: service.run_reconcile(opts.config, _env(opts), since=since,
                                                            objects=objects, fix=fix, dry_run=dry_run,
                                                            csv_path=csv_path), debug=opts.debug)
    code = service.exit_code_for(summary)
    if as_json:
        render.print_json(render.reconcile_json(report, summary, int(code)))
    elif render.for_people():
        render.print_reconcile(report, summary)
    if fix and not as_json:
        render.print_summary(summary, as_json=False)  # the repair's run: events applied, dead letters, planned writes
    raise typer.Exit(int(code))


@command(app, "discover-config")
def discover_config(
    opts: GlobalOptions,
    write: Annotated[bool, typer.Option("--write", help="Store the values in the config file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Find the org's Opportunity RecordTypeIds and its won stage (by API name).

    Example: stripe-sf discover-config --write
    """
    found = guarded(lambda: service.run_discover(opts.config, _env(opts), write=write,
                                                 example=configuration.example_config()), debug=opts.debug)
    if as_json:
        render.print_json(found.as_dict())
    else:
        render.print_discovered(found, config=opts.config or DEFAULT_CONFIG_PATH, write=write)


@command(app)
def setup(
    opts: GlobalOptions,
    plan: Annotated[bool, typer.Option("--plan", help="Print what the org lacks; change nothing.")] = False,
    apply: Annotated[bool, typer.Option("--apply", help="Create it: one Metadata API deployment, validated "
                                        "first. Needs an admin (Modify Metadata, Customize Application).")] = False,
    assign: Annotated[str | None, typer.Option("--assign", metavar="USERNAME", help="Assign the Stripe_SF_Sync "
                                               "permission set to this user (the integration user).")] = None,
    sfdx: Annotated[Path | None, typer.Option("--sfdx", metavar="DIR", help="Write it as a Salesforce DX project "
                                              "here instead, for your own change control.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create the custom fields and the permission set the config needs; never deletes, changes a type or narrows.

    Exit 0 when done (or nothing to do), 2 when something is refused or left for a person (docs/setup.md).

    Example: stripe-sf setup --plan, then stripe-sf setup --apply --assign integration@example.com
    """
    result = guarded(lambda: service.run_setup_command(opts.config, _env(opts), plan=plan, apply=apply,
                                                       assign=assign, sfdx_dir=sfdx), debug=opts.debug)
    render.print_setup(result, as_json=as_json)
    raise typer.Exit(int(result.exit_code))


@command(dlq_app, "list")
def dlq_list(opts: GlobalOptions, as_json: JsonOpt = False) -> None:
    """List open dead letters with their reason and Salesforce error code.

    Example: stripe-sf dlq list --json
    """
    rows = guarded(lambda: service.dlq_list(opts.config, _env(opts)), debug=opts.debug)
    if as_json:
        render.print_json(rows)
    else:
        render.print_dead_letters(rows)


@command(dlq_app, "retry")
def dlq_retry(
    opts: GlobalOptions,
    event_id: Annotated[str | None, typer.Argument(help="The event to retry.")] = None,
    retry_all: Annotated[bool, typer.Option("--all", help="Retry every open dead letter.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Send dead letters through the pipeline again, after fixing their cause.

    Example: stripe-sf dlq retry --all

    Ctrl-C or SIGTERM stops it after the current batch (exit 130 or 143); the rest stay open.
    """
    if not event_id and not retry_all:
        render.say(logging.ERROR, "error: name an EVENT_ID or pass --all.", kind="error",
                   exit_code=int(ExitCode.CONFIG))
        raise typer.Exit(int(ExitCode.CONFIG))
    summary = guarded(lambda: service.run_dlq_retry(opts.config, _env(opts),
                                                    event_ids=[event_id] if event_id else [],
                                                    retry_all=retry_all), debug=opts.debug)
    render.print_summary(summary, as_json)
    raise typer.Exit(int(service.exit_code_for(summary)))


@command(dlq_app, "drop")
def dlq_drop(opts: GlobalOptions,
             event_id: Annotated[str, typer.Argument(help="The event to stop retrying.")]) -> None:
    """Stop retrying a dead letter (it stays in the state file for audit).

    Example: stripe-sf dlq drop evt_1QxYz...
    """
    guarded(lambda: service.dlq_drop(opts.config, _env(opts), event_id), debug=opts.debug)
    render.print_dropped(event_id)


@command(app)
def link(
    opts: GlobalOptions,
    csv_path: Annotated[Path | None, typer.Option("--csv", metavar="FILE", help="Write the proposals here, one row "
                                                  "a customer, for a person to review.")] = None,
    apply: Annotated[Path | None, typer.Option("--apply", metavar="FILE", help="Write the links of this reviewed "
                                               "file: Stripe_Customer_ID__c on each Account.")] = None,
    to_stripe: Annotated[bool, typer.Option("--to-stripe", help="With --apply: also write salesforce_account_id "
                                            "into each customer's metadata (needs STRIPE_WRITE_API_KEY).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Propose an Account for every Stripe customer with no link (Contact email, website domain, Account name);
    then write the links a person kept. Proposing writes nothing but the file.

    Exit 0, or 3 when --apply refused some links (each is named); docs/link.md.

    Example: stripe-sf link --csv links.csv, review it, then stripe-sf link --apply links.csv
    """
    if (csv_path and apply) or (to_stripe and not apply):
        render.usage_error("error: use --csv FILE to propose, or --apply FILE [--to-stripe] to write the links.")
        raise typer.Exit(int(ExitCode.CONFIG))
    from stripe_sf_sync.service import link as link_service  # here: the CLI starts without what it imports

    result = guarded(lambda: link_service.run_link_apply_file(opts.config, _env(opts), path=apply,
                                                              to_stripe=to_stripe) if apply else
                     link_service.run_link_propose(opts.config, _env(opts), csv_path=csv_path),
                     debug=opts.debug)
    print_link(result, as_json=as_json)
    raise typer.Exit(int(link_service.link_exit_code(result)))


@command(app)
def status(
    opts: GlobalOptions,
    as_json: JsonOpt = False,
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
    report = guarded(lambda: service.status_report(opts.config, _env(opts), max_cursor_age=max_cursor_age,
                                                   max_dead_letters=max_dead_letters), debug=opts.debug)
    code = ExitCode.UNHEALTHY if check and not report["health"]["healthy"] else ExitCode.OK
    if as_json:
        render.print_json(report)
    else:
        render.print_status(report)
    raise typer.Exit(int(code))


@command(state_app, "migrate")
def state_migrate(
    opts: GlobalOptions,
    to: Annotated[str, typer.Option("--to", help="The URL of an empty store, like postgresql://USER@HOST/DB (the "
                                                 "password from PGPASSWORD).")],
    as_json: JsonOpt = False,
) -> None:
    """Copy the SQLite state (cursor, ledger, versions, dead letters, runs, customers, inbox) into an empty
    PostgreSQL store; every table is verified, and the file is left untouched.

    Example: PGPASSWORD=... stripe-sf state migrate --to postgresql://stripe_sf@db.internal:5432/stripe_sf
    """
    result = guarded(lambda: service.run_state_migrate(opts.config, _env(opts), to), debug=opts.debug)
    if as_json:
        render.print_json(result)
    else:
        render.print_migrated(result)


@command(state_app, "rebind")
def state_rebind(
    opts: GlobalOptions,
    yes: Annotated[bool, typer.Option("--yes", help="Bind the state to the org and account the credentials reach "
                                                    "now (exit 2 without it when they differ).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show the Salesforce org and Stripe account the state belongs to, and those the credentials reach now.

    Runs refuse (exit 10) to write into another org or account than the state's; after a sandbox refresh or a
    new Stripe account, a person rebinds it with --yes. The cursor and the ledger stay as they are.

    Example: stripe-sf state rebind, then stripe-sf state rebind --yes
    """
    result = guarded(lambda: service.run_state_rebind(opts.config, _env(opts), yes=yes), debug=opts.debug)
    if as_json:
        render.print_json(result)
    else:
        render.print_rebind(result)


@command(app)
def doctor(opts: GlobalOptions, as_json: JsonOpt = False) -> None:
    """Check everything a run depends on, before the first write: one line per check, each problem with its fix.

    Exit 0 when healthy (with warnings too), else the first error's code: 2, 5, 6, 7 or 10 (docs/exit-codes.md).

    Example: stripe-sf doctor --json
    """
    report = guarded(lambda: service.run_doctor(opts.config, _env(opts)), debug=opts.debug)
    if as_json:
        render.print_json(report.as_dict())
    else:
        render.print_doctor(report)
    raise typer.Exit(report.exit_code)


@command(app)
def serve(
    opts: GlobalOptions,
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
) -> None:
    """Receive Stripe webhooks, verified with STRIPE_WEBHOOK_SECRET, and apply them through the same pipeline.

    Each verified event is kept in the state's inbox before the 200 goes back; a worker applies the inbox,
    under the same lock as `sync`. With stripe.accounts, it serves one platform (--account, else the only
    account not `connected`) and its connected accounts, each event to its own account's pipeline. GET
    /healthz, /readyz and /metrics serve operations. SIGTERM stops taking requests, finishes what is in flight
    and exits 0. Needs the optional server extra.

    Example: STRIPE_WEBHOOK_SECRET=whsec_... stripe-sf serve --host 0.0.0.0 --port 8080
    """
    code = guarded(lambda: service.serve_webhooks(opts.config, _env(opts), host=host, port=port, path=path,
                                                  sync_every=sync_every, batch_window=batch_window,
                                                  max_connections=max_connections), debug=opts.debug)
    raise typer.Exit(code)


@command(app, config=False)
def demo(opts: GlobalOptions) -> None:
    """Run the real pipeline against local stand-ins of Stripe and Salesforce; no credentials needed.

    Example: stripe-sf demo
    """
    code = guarded(lambda: service.run_demo(render.terminal_console()), debug=opts.debug)
    raise typer.Exit(int(code))


@command(app, "sandbox", config=False)
def sandbox_command(
    opts: GlobalOptions,
    env_file: Annotated[Path | None, typer.Option("--env-file", help="Run in the background: return once the "
                                                  "stand-ins answer and their export lines are in this file "
                                                  "(removed when they stop).")] = None,
    foreground: Annotated[bool, typer.Option("--foreground", help="With --env-file: keep serving in this "
                                             "process (a container, a service manager).")] = False,
    empty_org: Annotated[bool, typer.Option("--empty-org", help="An org without stripe-sf's custom fields, for "
                                            "`stripe-sf setup` to create (docs/setup.md).")] = False,
    strict_org: Annotated[bool, typer.Option("--strict-org", help="The org refuses a new Opportunity without a "
                                             "Type (a validation rule) or a Region__c (a required field): "
                                             "rehearse salesforce.mapping (docs/mapping.md).")] = False,
) -> None:
    """Serve local stand-ins of Stripe and Salesforce, seeded with the demo data, until Ctrl-C (or SIGTERM).

    It prints the `export` lines that point the other commands at them (docs/rehearse.md).

    Example: stripe-sf sandbox --env-file sandbox.env && . ./sandbox.env && stripe-sf discover-config --write
    """
    if env_file is not None and not foreground:
        pid = guarded(lambda: service.start_sandbox(env_file, empty_org=empty_org, strict_org=strict_org),
                      debug=opts.debug)
        render.print_sandbox_started(pid, env_file)
        raise typer.Exit(0)
    code = guarded(lambda: service.serve_sandbox(render.echo, env_file=env_file, empty_org=empty_org,
                                                 strict_org=strict_org), debug=opts.debug)
    render.stderr().print("sandbox stopped.", highlight=False)
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point."""
    app()
