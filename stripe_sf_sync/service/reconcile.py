"""`stripe-sf reconcile`: compare both sides object by object; with --fix, repair through the batch step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stripe_sf_sync.config import require_org_values, writable_file_problem
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.pipeline import RunSummary
from stripe_sf_sync.pipeline.stop import stop_on_signals
from stripe_sf_sync.service.recorded import RecordedRun, recorded_run
from stripe_sf_sync.service.runtime import Environment, Runtime, clients, parse_since
from stripe_sf_sync.stripe.hydrator import StripeHydrator


def _reconcile_objects(objects: str, *, fix: bool, dry_run: bool, csv_path: Path | None) -> tuple[str, ...]:
    """The object types to reconcile; every mistake in the command line at once, before any network call."""
    from stripe_sf_sync.reconcile import OBJECTS

    kinds = tuple(dict.fromkeys(k.strip() for k in objects.split(",") if k.strip()))
    problems = [f"--objects: unknown type {k!r} (choose from {', '.join(OBJECTS)})" for k in kinds if k not in OBJECTS]
    if not kinds:
        problems.append("--objects is empty")
    if dry_run and not fix:
        problems.append("--dry-run goes with --fix (a reconcile without --fix writes nothing anyway)")
    problem = writable_file_problem(csv_path, "--csv", "drift.csv") if csv_path is not None else None
    if problem:
        problems.append(problem)
    if problems:
        raise ConfigError(problems, source="invocation")
    return kinds


def run_reconcile(config_path: Path | None, environment: Environment, *, since: str | None, objects: str,
                  fix: bool, dry_run: bool, csv_path: Path | None = None) -> tuple[RunSummary, Any]:
    """`stripe-sf reconcile`: compare Salesforce with Stripe object by object; with `fix`, feed the objects
    behind the fixable drift through backfill's pipeline. Recorded in the runs table like every command."""
    from stripe_sf_sync.reconcile import Spill, write_csv

    runtime = Runtime(config_path, environment)
    require_org_values(runtime.loaded.settings, str(runtime.loaded.path))
    kinds = _reconcile_objects(objects, fix=fix, dry_run=dry_run, csv_path=csv_path)
    since_ts = parse_since(since) if since else None
    source, sf_factory = clients(runtime)
    summary = RunSummary("reconcile", dry_run=dry_run)
    with (stop_on_signals() as stop, recorded_run(runtime, summary, source, sf_factory, stop=stop, beat=True) as run,
          Spill() as spill):
        report = _reconcile_in(run, runtime, spill, kinds, since_ts, fix=fix)
        summary.reconcile = report.summary()
    if csv_path is not None:
        write_csv(csv_path, report)
    return summary, report


def _reconcile_in(run: RecordedRun, runtime: Runtime, spill: Any, kinds: tuple[str, ...], since: int | None, *,
                  fix: bool) -> Any:
    """Read both sides into the spill, compare them, and (with `fix`) repair through the batch step."""
    from stripe_sf_sync.reconcile import compare
    from stripe_sf_sync.reconcile.read import StripeReader, read_salesforce
    from stripe_sf_sync.sources.repairs import FixObjects

    read_at = int(runtime.environment.clock())
    run.activity.note("reading Stripe and Salesforce to compare them")
    tag = f"rc{run.run_id}t{read_at}"  # new event ids each run: the ledger never takes a repair for one done
    names = runtime.loaded.settings.salesforce.fields
    complete = since is None
    if isinstance(run.ports.hydrator, StripeHydrator):  # the window's refunds and disputes net first invoices
        run.ports.hydrator.adjustments_since(since or 0)
    reader = StripeReader(run.source, run.ports.hydrator, run.settings.rules,  # type: ignore[arg-type]
                          tag=tag, read_at=read_at, since=since or 0, stop=run.stop)
    if "subscriptions" in kinds or "accounts" in kinds:
        reader.subscriptions(spill, names)
    if "payment_intents" in kinds:
        reader.payment_intents(spill)
    facts = run.ports.lookup.org_facts()
    read_salesforce(spill, run.access.get(), names, multi_currency=facts.currencies is not None,
                    accounts="accounts" in kinds, stop=run.stop, stripe_account=run.settings.rules.stripe_account)
    if complete and "accounts" in kinds:
        reader.account_customers(spill)
    report = compare(spill, names, kinds, won_stage=run.settings.rules.won_stage, complete=complete,
                     refunded_stage=run.settings.rules.refunded_stage, mapping=run.settings.rules.mapping,
                     several_accounts=len(runtime.loaded.settings.stripe.accounts) > 1)
    if fix:
        repair = FixObjects(spill, report.findings, run.state.versions_for, tag=tag, read_at=read_at,
                            api_version=run.source.api_version, batch_size=runtime.loaded.settings.sync.batch_size)
        run.apply(repair)
        report.fix = {**repair.repaired, "dry_run": run.summary.dry_run}
    return report
