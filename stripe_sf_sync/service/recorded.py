"""A recorded run: the state locked, the batch step's ports built (a dry run's writer records the plan),
the run and its exit code recorded however it ends, usage and the metrics file left behind."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stripe_sf_sync.errors import ConfigError, ExitCode
from stripe_sf_sync.logs import bind_run
from stripe_sf_sync.metrics import RunFigures, write_metrics
from stripe_sf_sync.pipeline import BatchSettings, RunSummary, Source, run_batches
from stripe_sf_sync.pipeline.heartbeat import Activity, heartbeat
from stripe_sf_sync.pipeline.ports import Ports, RecordWriter
from stripe_sf_sync.pipeline.run import finish, log_summary
from stripe_sf_sync.pipeline.stop import Stop
from stripe_sf_sync.reads import reads_last_30_days, record_reads
from stripe_sf_sync.salesforce.gateway import SalesforceAccess, SalesforceGateway
from stripe_sf_sync.salesforce.lookups import SalesforceRecords
from stripe_sf_sync.salesforce.org import OrgCheck
from stripe_sf_sync.salesforce.recorder import PlanRecorder
from stripe_sf_sync.salesforce.writers import bulk_writer, collections_writer
from stripe_sf_sync.service.identity import IdentityGuard
from stripe_sf_sync.service.runtime import (
    BACKFILL_CHECKPOINT_KEY,
    SALESFORCE_CONTACT_KEY,
    Runtime,
    batch_settings,
    exit_code_for,
    task_keys_about_since,
)
from stripe_sf_sync.sources import READ_THROUGH_KEY
from stripe_sf_sync.state import StateStore
from stripe_sf_sync.state.dry_run import DryRunState
from stripe_sf_sync.stripe.hydrator import StripeHydrator
from stripe_sf_sync.stripe.source import StripeSource

log = logging.getLogger("stripe_sf_sync")


@dataclass
class RecordedRun:
    """What a command's run works with: state (a dry run's writes nothing), the Stripe source, the batch
    step's ports and settings, and the run's summary."""

    state: Any  # StateStore, or DryRunState
    source: StripeSource
    ports: Ports
    settings: BatchSettings
    summary: RunSummary
    run_id: int
    access: SalesforceAccess
    stop: Stop | None = None
    activity: Activity = field(default_factory=Activity)  # where the run is, for the heartbeat

    def apply(self, batches: Source) -> None:
        """Every batch of `batches` through the batch step, each committed by its policy."""
        run_batches(batches, self.ports, self.settings, self.state, self.summary, run_id=self.run_id,
                    budget=self.access.budget_spent, calls=self.calls, stop=self.stop, activity=self.activity)

    def calls(self) -> tuple[int, int]:
        """Stripe and Salesforce calls this run has made so far."""
        gw = self.access.connected
        return self.source.calls, gw.usage.calls if gw is not None else 0


def _ports(runtime: Runtime, state: Any, source: StripeSource, access: SalesforceAccess, org: OrgCheck,
           dry_run: bool, stop: Stop | None = None) -> tuple[Ports, PlanRecorder | None]:
    """The batch step's ports. The one place a dry run differs: its writer records the plan."""
    env = runtime.environment
    recorder = PlanRecorder() if dry_run else None
    writer: RecordWriter = recorder or collections_writer(
        access, workers=runtime.loaded.settings.salesforce.write_concurrency, sleep=env.sleep)
    bulk: RecordWriter = recorder or bulk_writer(access, sleep=env.sleep, waiting=stop.abandonable if stop else None)
    salesforce = runtime.loaded.settings.salesforce
    hydrator = StripeHydrator(source, state, account_mrr=salesforce.fields.account_mrr is not None,
                              customer_email=salesforce.mapping.reads_customer_email(),
                              product_items=salesforce.mapping.product_items())
    return Ports(state, hydrator, SalesforceRecords(access, org), writer, bulk), recorder


@contextlib.contextmanager
def recorded_run(runtime: Runtime, summary: RunSummary, source: StripeSource,
                  sf_factory: Callable[[], SalesforceGateway], *, create: bool = True,
                  stop: Stop | None = None, metrics_file: Path | None = None,
                  beat: bool = False) -> Iterator[RecordedRun]:
    """Lock the state, record the run and its exit code, and leave usage figures (and the metrics file)
    behind, however the run ends (a signal's stop included). A dry run's state records nothing. With `beat`
    (off a terminal), a heartbeat line says where the run is every `sync.heartbeat_seconds`."""
    started = time.monotonic()
    with runtime.open_state(create=create) as store:
        store.acquire_lock()
        state: Any = DryRunState(store) if summary.dry_run else store
        # Before any write: the Stripe account and mode, and the Salesforce org, when the run first connects to
        # Salesforce (a run that has nothing to write never does; a bad --since costs no call); and a Stripe key
        # the state has not seen, before anything is read.
        guard = IdentityGuard(state, runtime.loaded, source, runtime.stripe_key(), runtime.pipeline)
        org = OrgCheck(runtime.loaded, state, runtime.environment.clock)
        access = SalesforceAccess(guard.connect(sf_factory, org))
        ports, recorder = _ports(runtime, state, source, access, org, summary.dry_run, stop)
        settings = batch_settings(runtime.loaded, legacy_task_keys_before=task_keys_about_since(
            state, int(runtime.environment.clock())))
        run = RecordedRun(state, source, ports, settings, summary, state.start_run(summary.command), access, stop)
        bind_run(run.run_id or None)  # a dry run is not recorded: it has no id
        code: int = ExitCode.FAILURE
        mistake = False  # a usage error met once the state was open: not a run that failed (status --check)
        beating = (heartbeat(summary.command, run.activity, runtime.loaded.settings.sync.heartbeat_seconds) if beat
                   else contextlib.nullcontext())
        try:
            guard.check_new_key()
            with beating:
                yield run
            if stop is not None and stop.requested:  # also when it came after the last batch
                summary.stopped_by = stop.signal
                summary.interrupted = True
            code = exit_code_for(summary)
        except BaseException as exc:
            code = int(getattr(exc, "exit_code", ExitCode.INTERRUPTED if isinstance(exc, KeyboardInterrupt)
                               else ExitCode.FAILURE))
            mistake = isinstance(exc, ConfigError) and exc.source == "invocation"
            raise
        finally:
            if mistake:
                state.discard_run(run.run_id)
            else:
                _record_end(runtime, state, run, summary, code, started=started, planned=recorder,
                            metrics_file=metrics_file)


def _record_end(runtime: Runtime, state: Any, run: RecordedRun, summary: RunSummary, code: int, *, started: float,
                planned: PlanRecorder | None, metrics_file: Path | None) -> None:
    """Close the summary and record how the run ended: its exit code, the usage seen, the metrics file."""
    gw = run.access.connected
    if gw is not None and gw.reached:
        state.set_meta(SALESFORCE_CONTACT_KEY, str(int(runtime.environment.clock())))
    finish(summary, started=started, stripe_calls=run.source.calls, usage=gw.usage if gw else None,
           cursor=state.cursor(), planned=planned.planned if planned else (),
           stripe_rate_limited=run.source.rate_limited)
    record_reads(state, summary.stripe_calls, runtime.environment.clock())  # Stripe's 30-day read allocation
    if summary.salesforce_api_used is not None:
        state.set_meta("api_usage", json.dumps({"used": summary.salesforce_api_used,
                                                 "max": summary.salesforce_api_max,
                                                 "at": int(runtime.environment.clock())}))
    state.finish_run(run.run_id, code, summary.as_dict())
    log_summary(summary, code)
    if metrics_file is not None:
        _write_run_metrics(metrics_file, state, summary, code, runtime.environment.clock())


def _write_run_metrics(path: Path, state: StateStore, summary: RunSummary, code: int, now: float) -> None:
    """The run's figures for the textfile collector; a failure to write them is logged, and leaves the run's
    exit code as it is (the path was checked before the run)."""
    try:
        cursor = state.cursor()
        read_through = state.get_meta(READ_THROUGH_KEY)
        current = max(cursor.created if cursor else 0, int(read_through or 0)) or None
        checkpoint = state.get_meta(BACKFILL_CHECKPOINT_KEY)
        unfinished = not json.loads(checkpoint).get("finished") if checkpoint else None
        write_metrics(path, RunFigures(summary.command, code, now, summary.as_dict(), state.dead_letter_count(),
                                       cursor.created if cursor else None, current,
                                       state.last_success(summary.command),
                                       stripe_reads_30d=reads_last_30_days(state, now), backfill_unfinished=unfinished))
    except OSError as exc:
        log.error("Could not write the metrics file %s: %s. Check its directory's space and permissions; the "
                  "next run writes it again.", path, exc.strerror or exc)
