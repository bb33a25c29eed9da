"""`stripe-sf sync`, and the cursor sync `serve` runs as its safety net."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from stripe_sf_sync.config import require_org_values
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.pipeline import RunSummary, SyncEvents
from stripe_sf_sync.pipeline.cursor import HANDOFF_SINCE_KEY, SYNC_FLOOR_KEY
from stripe_sf_sync.pipeline.stop import Stop, stop_on_signals
from stripe_sf_sync.service.recorded import RecordedRun, recorded_run
from stripe_sf_sync.service.runtime import (
    READ_THROUGH_KEY,
    SALESFORCE_CONTACT_EVERY_S,
    SALESFORCE_CONTACT_KEY,
    Environment,
    Runtime,
    check_run_metrics,
    clients,
    parse_since,
)


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
    started = int(clock())
    events = SyncEvents(run.source, run.state, since=since, lookback=s.stripe.lookback_seconds, clock=clock,
                        batch_size=s.sync.batch_size, max_events=max_events, rewind=rewind, stop=stop,
                        progress=progress)
    try:
        run.apply(events)
    except KeyboardInterrupt:  # a second signal (Aborted) or Ctrl-C outside a handler: the start still counts
        _keep_sync_start(run, since)
        raise
    _keep_sync_start(run, since)
    run.state.prune_ledger(int(clock()))
    if stop is None or not stop.requested:
        prove_salesforce_contact(run, clock())
    stopped = run.summary.stopped_early or run.summary.stopped_by or (stop is not None and stop.requested)
    if events.read_to_end and not stopped:
        # Read to the end of the list: every event created before this run started is applied, so the
        # cursor is current as of then, even when no new event came (status --check's cursor age). A run
        # stopped before the end (a signal, the API budget, --max-events) leaves it: the cursor's own time is
        # then how current Salesforce is, and the backlog shows in status and the metrics (issue 20).
        run.state.set_meta(READ_THROUGH_KEY, str(started))


def prove_salesforce_contact(run: RecordedRun, now: float) -> None:
    """One light Salesforce call when neither this run nor any in the last day reached Salesforce (a quiet
    account): a session or TLS failure then stops this run (exit 5) rather than waiting for the next event."""
    gw = run.access.connected
    if gw is not None and gw.reached:
        return
    last = run.state.get_meta(SALESFORCE_CONTACT_KEY)
    if last and now - float(last) < SALESFORCE_CONTACT_EVERY_S:
        return
    run.access.get().ping()


def _keep_sync_start(run: RecordedRun, since: int | None) -> None:
    """A first `sync --since` that committed no event (stopped by a signal or the API budget before its first
    commit) still records where sync's history starts: the next plain `sync` lists from there."""
    if since is None or run.state.cursor() is not None or run.state.get_meta(HANDOFF_SINCE_KEY) == str(since):
        return
    run.state.commit_batch([], cursor=None, versions={}, run_id=run.run_id or None,
                           meta={SYNC_FLOOR_KEY: str(since), HANDOFF_SINCE_KEY: str(since)})
