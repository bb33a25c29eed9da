"""`stripe-sf sync`, and the cursor sync `serve` runs as its safety net."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from stripe_sf_sync.config import require_org_values
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.pipeline import RunSummary
from stripe_sf_sync.pipeline.stop import Stop, stop_on_signals
from stripe_sf_sync.service.recorded import RecordedRun, recorded_run
from stripe_sf_sync.service.runtime import (
    SALESFORCE_CONTACT_EVERY_S,
    SALESFORCE_CONTACT_KEY,
    Environment,
    Runtime,
    check_run_metrics,
    clients,
    parse_since,
)
from stripe_sf_sync.sources import SyncEvents


def run_sync(config_path: Path | None, environment: Environment, *, since: str | None, dry_run: bool,
             max_events: int | None, rewind: bool = False, metrics_file: Path | None = None,
             progress: Callable[[RunSummary], None] | None = None) -> RunSummary:
    """`stripe-sf sync`: validate everything, take the lock, apply events batch by batch; SIGINT or SIGTERM
    stop it after the batch being applied. `progress` is called with the summary after each committed batch."""
    runtime = Runtime(config_path, environment)
    require_org_values(runtime.loaded.settings, str(runtime.loaded.path))
    since_ts = parse_since(since) if since else None
    if rewind and since_ts is None:
        raise ConfigError(["--rewind needs --since DATE (where to re-read events from)"], source="invocation")
    check_run_metrics(metrics_file, dry_run=dry_run)
    source, sf_factory = clients(runtime)
    summary = RunSummary("sync", dry_run=dry_run)
    with stop_on_signals() as stop, recorded_run(runtime, summary, source, sf_factory, stop=stop,
                                                 metrics_file=metrics_file, beat=progress is None) as run:
        apply_sync(run, runtime, since=since_ts, max_events=max_events, rewind=rewind, stop=stop,
                   progress=(lambda: progress(summary)) if progress else None)
    return summary


def apply_sync(run: RecordedRun, runtime: Runtime, *, since: int | None = None, max_events: int | None = None,
               rewind: bool = False, stop: Stop | None = None, progress: Callable[[], None] | None = None) -> None:
    """The cursor sync inside a recorded run: `stripe-sf sync`, and `serve`'s safety net."""
    s = runtime.loaded.settings
    clock = runtime.environment.clock
    # The source's end keeps a first --since's start, prunes the ledger and records the read-through.
    run.apply(SyncEvents(run.source, run.state, since=since, lookback=s.stripe.lookback_seconds, clock=clock,
                         batch_size=s.sync.batch_size, max_events=max_events, rewind=rewind, stop=stop,
                         progress=progress, run_id=run.run_id or None,
                         prove_contact=lambda: prove_salesforce_contact(run, clock())))


def prove_salesforce_contact(run: RecordedRun, now: float) -> None:
    """One light Salesforce call when neither this run nor any in the last day reached Salesforce (a quiet
    account): a session or TLS failure then stops this run (exit 5) rather than waiting for the next event."""
    gw = run.access.connected
    if gw is not None and gw.reached:
        return
    last = run.state.get_meta(SALESFORCE_CONTACT_KEY)
    if last and now - float(last) < SALESFORCE_CONTACT_EVERY_S:
        return
    gw = run.access.get()  # connecting checks the org's identity (service/identity.py): a call that proves contact
    if not gw.reached:
        gw.ping()
