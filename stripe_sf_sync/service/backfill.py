"""`stripe-sf backfill`: current state from Stripe's lists, then a gap-free hand-off to sync."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from stripe_sf_sync.config import require_org_values
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.pipeline import RunSummary
from stripe_sf_sync.pipeline.stop import stop_on_signals
from stripe_sf_sync.service.recorded import recorded_run
from stripe_sf_sync.service.runtime import Environment, Runtime, check_run_metrics, clients, parse_since
from stripe_sf_sync.stripe.hydrator import StripeHydrator


def run_backfill(config_path: Path | None, environment: Environment, *, since: str, until: str | None,
                 objects: str, dry_run: bool, resume: bool,
                 progress: Callable[[str, Any], None] | None = None, metrics_file: Path | None = None) -> Any:
    """`stripe-sf backfill`: current state from Stripe's lists, then a gap-free hand-off to sync."""
    from stripe_sf_sync.sources.backfill import OBJECT_TYPES, BackfillObjects, BackfillPlan

    runtime = Runtime(config_path, environment)
    require_org_values(runtime.loaded.settings, str(runtime.loaded.path))
    kinds = tuple(k.strip() for k in objects.split(",") if k.strip())
    bad = [k for k in kinds if k not in OBJECT_TYPES]
    since_ts = parse_since(since)
    until_ts = parse_since(until) if until else None
    problems = [f"--objects: unknown type {k!r} (choose from {', '.join(OBJECT_TYPES)})" for k in bad]
    if not kinds:
        problems.append("--objects is empty")
    if until_ts is not None and until_ts <= since_ts:
        problems.append("--until must be after --since")
    future = since_ts > environment.clock()  # refused as sync refuses it (sources/sync_events.py): nothing is there
    if future:
        problems.append(f"--since {since} is in the future")
    if problems:
        raise ConfigError(problems, source="invocation",
                          hint="Give a date in the past, e.g. `--since 2025-01-01`." if future else "")
    check_run_metrics(metrics_file, dry_run=dry_run)
    source, sf_factory = clients(runtime)
    b = runtime.loaded.settings.backfill
    plan = BackfillPlan(since_ts, until_ts, kinds, resume, bulk_threshold=b.bulk_threshold, bulk_chunk=b.bulk_chunk,
                        parallel_slices=b.parallel_slices)
    summary = RunSummary("backfill", dry_run=dry_run)
    with stop_on_signals() as stop, recorded_run(runtime, summary, source, sf_factory, stop=stop,
                                                 metrics_file=metrics_file, beat=progress is None) as run:
        if isinstance(run.ports.hydrator, StripeHydrator):  # the run's refunds and disputes net first invoices
            run.ports.hydrator.adjustments_since(plan.since)
        listing = BackfillObjects(source, run.state, plan, batch_size=runtime.loaded.settings.sync.batch_size,
                                  clock=environment.clock, progress=progress, stop=stop,
                                  log_every_pages=b.log_every_pages, dry_run=dry_run)
        try:
            run.apply(listing)
        finally:
            listing.close()  # no listing thread outlives the run
    return summary
