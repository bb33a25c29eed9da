"""The operations behind each command: build clients from config and environment, run, record.

The CLI parses arguments and calls exactly one function here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import requests

from stripe_sf_sync import rules
from stripe_sf_sync.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_SF_API_VERSION,
    LoadedConfig,
    load_config,
    masked_url,
    require_org_values,
    salesforce_secrets,
    state_url,
    state_url_problem,
    stripe_secrets,
    url_without_password,
    writable_file_problem,
)
from stripe_sf_sync.errors import ConfigError, ExitCode, NoStateError
from stripe_sf_sync.health import Thresholds, assess, iso, last_run, parse_duration, run_view
from stripe_sf_sync.logs import bind_run
from stripe_sf_sync.metrics import RunFigures, check_metrics_path, write_metrics
from stripe_sf_sync.pipeline import (
    BatchSettings,
    RunSummary,
    Source,
    run_batches,
)
from stripe_sf_sync.pipeline.heartbeat import Activity, heartbeat
from stripe_sf_sync.pipeline.ports import Ports, RecordWriter
from stripe_sf_sync.pipeline.run import finish, log_summary
from stripe_sf_sync.pipeline.stop import Stop, stop_on_signals
from stripe_sf_sync.reads import reads_last_30_days, record_reads
from stripe_sf_sync.salesforce.gateway import SalesforceAccess, SalesforceGateway, connect
from stripe_sf_sync.salesforce.lookups import SalesforceRecords
from stripe_sf_sync.salesforce.org import ORG_CACHE_KEY, OrgCheck
from stripe_sf_sync.salesforce.recorder import PlanRecorder
from stripe_sf_sync.salesforce.writers import bulk_writer, collections_writer
from stripe_sf_sync.sources import READ_THROUGH_KEY, DeadLetters, SyncEvents
from stripe_sf_sync.state import DeadLetter, StateStore, open_state
from stripe_sf_sync.state.dry_run import DryRunState
from stripe_sf_sync.stripe.hydrator import StripeHydrator
from stripe_sf_sync.stripe.source import StripeSource, build_client, default_requests_per_second

log = logging.getLogger("stripe_sf_sync")


@dataclass
class Environment:
    """What a command reads from outside: variables, a requests session factory, the clock.

    Tests and the demo swap this rather than monkey-patching SDKs (httpie habit).
    """

    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    session_factory: Callable[[], requests.Session] = requests.Session
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


def parse_since(value: str) -> int:
    """DATE (YYYY-MM-DD, UTC midnight) or an ISO DATETIME -> Unix time."""
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return int(dt.timestamp())
    except ValueError:
        raise ConfigError([f"--since {value!r} is not a date (YYYY-MM-DD) or datetime (YYYY-MM-DDTHH:MM:SSZ)"],
                          source="invocation") from None


class Runtime:
    """Config, state and lazily built clients for one command."""

    def __init__(self, config_path: Path | None, environment: Environment) -> None:
        self.environment = environment
        self.loaded: LoadedConfig = load_config(config_path)
        self.state_url = state_url(self.loaded.settings, environment.env)

    def open_state(self, *, create: bool = True, read_only: bool = False) -> StateStore:
        """The state store of this config: PostgreSQL when a state URL is set, else the SQLite file."""
        return open_state(self.loaded.state_path, self.state_url, create=create, read_only=read_only)

    def state_exists(self) -> bool:
        """Whether there may be state to read: a PostgreSQL store is asked (NoStateError), a file looked for."""
        return bool(self.state_url) or self.loaded.state_path.exists()

    def stripe_source(self) -> StripeSource:
        """A StripeSource from STRIPE_API_KEY (checked before any network call)."""
        secrets = stripe_secrets(self.environment.env)
        s = self.loaded.settings.stripe
        env = self.environment.env
        # The variables requests reads for every other session (its `merge_environment_settings`).
        ca_bundle = env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE") or None
        client, http = build_client(secrets.api_key, api_base=secrets.api_base, api_version=s.api_version,
                                    timeout=s.timeout_seconds, ca_bundle=ca_bundle)
        pace = s.requests_per_second or default_requests_per_second(secrets.api_key)
        endpoint: dict[str, Any] = ({"endpoint_requests_per_second": s.endpoint_requests_per_second}
                                    if s.endpoint_requests_per_second else {})
        return StripeSource(client, http, api_version=s.api_version, requests_per_second=pace,
                            clock=self.environment.clock, sleep=self.environment.sleep, **endpoint)

    def salesforce_factory(self) -> Callable[[], SalesforceGateway]:
        """A function that logs in on first need (secrets are checked now, before any network call)."""
        secrets = salesforce_secrets(self.environment.env)
        s = self.loaded.settings.salesforce

        def login() -> Any:
            return connect(secrets, api_version=s.api_version, session=self.environment.session_factory(),
                           timeout=s.timeout_seconds)

        def make() -> SalesforceGateway:
            # An access token cannot be renewed; the other modes log in again.
            return SalesforceGateway(login(), timeout=s.timeout_seconds, budget=s.api_budget,
                                     sleep=self.environment.sleep,
                                     reconnect=None if secrets.mode == "token" else login,
                                     bulk_poll_seconds=self.loaded.settings.backfill.bulk_poll_seconds)
        return make


def exit_code_for(summary: RunSummary) -> ExitCode:
    """Dead letters in this run make a distinct, non-zero exit; a budget stop counts as refusal; a run a
    signal stopped exits as shells report that signal (130 for Ctrl-C, 143 for SIGTERM). A dry run
    dead-letters nothing: the events it would dead-letter are part of its plan, not a failure."""
    if summary.stopped_by == "SIGTERM":
        return ExitCode.TERMINATED
    if summary.stopped_by == "SIGINT":
        return ExitCode.INTERRUPTED
    if summary.stopped_early:
        return ExitCode.UNAVAILABLE
    if summary.interrupted:
        return ExitCode.INTERRUPTED
    if summary.dead_lettered and not summary.dry_run:
        return ExitCode.DEAD_LETTERS
    return ExitCode.DRIFT if summary.reconcile and summary.reconcile.get("mismatches") else ExitCode.OK


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


def _ports(runtime: Runtime, state: Any, source: StripeSource, access: SalesforceAccess,
           dry_run: bool, stop: Stop | None = None) -> tuple[Ports, PlanRecorder | None]:
    """The batch step's ports. The one place a dry run differs: its writer records the plan."""
    env = runtime.environment
    org = OrgCheck(runtime.loaded, state, env.clock)
    recorder = PlanRecorder() if dry_run else None
    writer: RecordWriter = recorder or collections_writer(
        access, workers=runtime.loaded.settings.salesforce.write_concurrency, sleep=env.sleep)
    bulk: RecordWriter = recorder or bulk_writer(access, sleep=env.sleep, waiting=stop.abandonable if stop else None)
    hydrator = StripeHydrator(source, state,
                              account_mrr=runtime.loaded.settings.salesforce.fields.account_mrr is not None)
    return Ports(state, hydrator, SalesforceRecords(access, org), writer, bulk), recorder


def batch_settings(loaded: LoadedConfig, *, legacy_task_keys_before: int | None = None) -> BatchSettings:
    """What the batch step reads from the config (and, from state, when Tasks were first keyed by subject)."""
    s = loaded.settings
    ctx = rules.RuleContext(s.salesforce.won_stage or "", s.salesforce.fields, s.stripe.dashboard_url,
                            refunded_stage=s.salesforce.refunded_stage)
    return BatchSettings(ctx, s.salesforce.fields, s.record_type_id(), coalesce=s.sync.coalesce,
                         legacy_task_keys_before=legacy_task_keys_before,
                         currency_mismatch=s.salesforce.currency_mismatch)


TASK_KEYS_ABOUT_KEY = "task_keys_about_since"  # when this state's runs began keying Tasks by subject (issue 19)


def task_keys_about_since(state: Any, now: int) -> int:
    """When runs on this state began keying Tasks by what they are about, set by the first such run: now, when
    an earlier version ran on this state (it has a cursor or a run), else 0. Events older than that may have
    a Task under that version's key (the event id), which is then looked up too; newer ones cannot, and their
    lookups stay as small as before (benchmarks: no extra call)."""
    raw = state.get_meta(TASK_KEYS_ABOUT_KEY)
    if raw is not None and raw.isdigit():
        return int(raw)
    since = now if state.cursor() is not None or state.recent_runs(1) else 0
    state.set_meta(TASK_KEYS_ABOUT_KEY, str(since))
    return since


BACKFILL_CHECKPOINT_KEY = "backfill_checkpoint"  # backfill.CHECKPOINT_KEY (backfill.py is imported lazily)
# When a run last had a success answer from Salesforce. A quiet sync (nothing to write) reaches Salesforce once
# when this is older than SALESFORCE_CONTACT_EVERY_S, so that a revoked token or a broken CA bundle fails a run
# (and `status --check`) within a day, not when the next event comes.
SALESFORCE_CONTACT_KEY = "salesforce_contact_at"
SALESFORCE_CONTACT_EVERY_S = 86400


@contextlib.contextmanager
def recorded_run(runtime: Runtime, summary: RunSummary, source: StripeSource,
                  sf_factory: Callable[[], SalesforceGateway], *, create: bool = True,
                  stop: Stop | None = None, metrics_file: Path | None = None,
                  beat: bool = False) -> Iterator[RecordedRun]:
    """Lock the state, record the run and its exit code, and leave usage figures (and the metrics file)
    behind, however the run ends (a signal's stop included). A dry run's state records nothing. With `beat`
    (off a terminal), a heartbeat line says where the run is every `sync.heartbeat_seconds`."""
    started = time.monotonic()
    access = SalesforceAccess(sf_factory)
    with runtime.open_state(create=create) as store:
        store.acquire_lock()
        state: Any = DryRunState(store) if summary.dry_run else store
        ports, recorder = _ports(runtime, state, source, access, summary.dry_run, stop)
        settings = batch_settings(runtime.loaded, legacy_task_keys_before=task_keys_about_since(
            state, int(runtime.environment.clock())))
        run = RecordedRun(state, source, ports, settings, summary, state.start_run(summary.command), access, stop)
        bind_run(run.run_id or None)  # a dry run is not recorded: it has no id
        code: int = ExitCode.FAILURE
        mistake = False  # a usage error met once the state was open: not a run that failed (status --check)
        beating = (heartbeat(summary.command, run.activity, runtime.loaded.settings.sync.heartbeat_seconds) if beat
                   else contextlib.nullcontext())
        try:
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
    run.access.get().ping()


def check_run_metrics(metrics_file: Path | None, *, dry_run: bool) -> None:
    """`--metrics-file`: refused with --dry-run (its figures would read as a real run's), and checked to be
    writable before any network call."""
    if metrics_file is None:
        return
    if dry_run:
        raise ConfigError(["--metrics-file cannot be combined with --dry-run: a dry run's figures would read as "
                           "a real run's"], source="invocation", hint="Drop one of the two options.")
    check_metrics_path(metrics_file)


def clients(runtime: Runtime) -> tuple[StripeSource, Callable[[], SalesforceGateway]]:
    """Both clients, with every missing secret reported at once, before any network call."""
    problems: list[str] = []
    source = sf_factory = None
    try:
        source = runtime.stripe_source()
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        sf_factory = runtime.salesforce_factory()
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems or source is None or sf_factory is None:
        raise ConfigError(problems, source="environment",
                          hint="Export the variables listed in docs/environment.md; secrets are read "
                               "only from the environment.")
    return source, sf_factory


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
        listing = BackfillObjects(source, run.state, plan, batch_size=runtime.loaded.settings.sync.batch_size,
                                  clock=environment.clock, progress=progress, stop=stop,
                                  log_every_pages=b.log_every_pages, dry_run=dry_run)
        try:
            run.apply(listing)
        finally:
            listing.close()  # no listing thread outlives the run
    return summary


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
    reader = StripeReader(run.source, run.ports.hydrator, run.settings.rules,  # type: ignore[arg-type]
                          tag=tag, read_at=read_at, since=since or 0, stop=run.stop)
    if "subscriptions" in kinds or "accounts" in kinds:
        reader.subscriptions(spill, names)
    if "payment_intents" in kinds:
        reader.payment_intents(spill)
    facts = run.ports.lookup.org_facts()
    read_salesforce(spill, run.access.get(), names, multi_currency=facts.currencies is not None,
                    accounts="accounts" in kinds, stop=run.stop)
    if complete and "accounts" in kinds:
        reader.account_customers(spill)
    report = compare(spill, names, kinds, won_stage=run.settings.rules.won_stage, complete=complete,
                     refunded_stage=run.settings.rules.refunded_stage)
    if fix:
        repair = FixObjects(spill, report.findings, run.state.versions_for, tag=tag, read_at=read_at,
                            api_version=run.source.api_version, batch_size=runtime.loaded.settings.sync.batch_size)
        run.apply(repair)
        report.fix = {**repair.repaired, "dry_run": run.summary.dry_run}
    return report


def run_dlq_retry(config_path: Path | None, environment: Environment, *, event_ids: list[str],
                  retry_all: bool) -> RunSummary:
    """`stripe-sf dlq retry`: the chosen dead letters through the same pipeline."""
    runtime = Runtime(config_path, environment)
    require_org_values(runtime.loaded.settings, str(runtime.loaded.path))
    source, sf_factory = clients(runtime)
    summary = RunSummary("dlq retry")
    with stop_on_signals() as stop, recorded_run(runtime, summary, source, sf_factory, create=False,
                                                 stop=stop, beat=True) as run:
        letters = _chosen_dead_letters(run.state, event_ids, retry_all)
        run.apply(DeadLetters([_letter_event(dl) for dl in letters],
                              batch_size=runtime.loaded.settings.sync.batch_size))
    return summary


def _chosen_dead_letters(state: StateStore, event_ids: list[str], retry_all: bool) -> list[DeadLetter]:
    if retry_all:
        return state.dead_letters()
    letters = []
    for eid in event_ids:
        dl = state.dead_letter(eid)
        if dl is None or dl.status != "open":
            raise ConfigError([f"{eid} is not an open dead letter"], source="invocation",
                              hint="`stripe-sf dlq list` shows the open ones.")
        letters.append(dl)
    return letters


def _letter_event(dl: DeadLetter) -> dict[str, Any]:
    """The event a dead letter keeps (an unreadable payload is sent as a bare event, to fail again)."""
    try:
        event = json.loads(dl.payload)
    except json.JSONDecodeError:
        event = None
    return event if isinstance(event, dict) else {"id": dl.event_id, "type": dl.event_type, "created": dl.created}


def dlq_list(config_path: Path | None, environment: Environment) -> list[dict[str, Any]]:
    """Open dead letters, oldest first (payload excluded: it may hold customer data)."""
    runtime = Runtime(config_path, environment)
    with runtime.open_state(create=False) as state:
        return [{"event_id": d.event_id, "event_type": d.event_type, "created": d.created,
                 "reason": d.reason, "error_code": d.error_code, "attempts": d.attempts,
                 "last_failed_at": d.last_failed_at} for d in state.dead_letters()]


def dlq_drop(config_path: Path | None, environment: Environment, event_id: str) -> None:
    """Stop retrying one dead letter (kept in state for audit)."""
    runtime = Runtime(config_path, environment)
    with runtime.open_state(create=False) as state:
        if not state.drop_dead_letter(event_id):
            raise ConfigError([f"{event_id} is not an open dead letter"], source="invocation",
                              hint="`stripe-sf dlq list` shows the open ones.")


def run_state_migrate(config_path: Path | None, environment: Environment, to_url: str) -> dict[str, Any]:
    """`stripe-sf state migrate --to URL`: the SQLite state into an empty PostgreSQL store, verified table by
    table (rows and a checksum); the file is left as it was."""
    runtime = Runtime(config_path, environment)
    problem = state_url_problem(to_url)
    if problem:
        raise ConfigError([f"--to {problem}"], source="invocation")
    path = runtime.loaded.state_path
    with StateStore.open(path, create=False) as source, open_state(path, to_url) as target:
        from stripe_sf_sync.state.postgres import (  # psycopg is installed: open_state imported it
            PgStateStore,
            migrate_from,
        )

        assert isinstance(target, PgStateStore)  # a postgresql:// URL (state_url_problem above): open_state's store
        copied = migrate_from(source, target)
    return {"from": str(path), "to": masked_url(to_url), "state_url": url_without_password(to_url),
            "tables": {table: {"rows": rows, "checksum": digest} for table, (rows, digest) in copied.items()}}


def _backfill_status(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Where the last backfill got to."""
    return {"finished": bool(checkpoint.get("finished")), "since": checkpoint["key"]["since"],
            "until": checkpoint["key"]["until"], "objects": checkpoint["key"]["objects"],
            "types": checkpoint.get("types", {})}


def status_report(config_path: Path | None, environment: Environment, *,
                  max_cursor_age: str = "15m", max_dead_letters: int | None = None) -> dict[str, Any]:
    """Cursor and its age, the last run's end, exit code and counts, open dead letters, last API usage, and the
    health verdict (see health.py). Nothing run yet is a report too ("never run"). Reads only (WAL: never blocks
    sync)."""
    thresholds = Thresholds(parse_duration(max_cursor_age, "--max-cursor-age"), max_dead_letters)
    runtime = Runtime(config_path, environment)
    budget = runtime.loaded.settings.salesforce.api_budget
    now = environment.clock()
    report: dict[str, Any] = {"state_path": masked_url(runtime.state_url) if runtime.state_url else
                              str(runtime.loaded.state_path), "state_backend": "postgresql" if runtime.state_url
                              else "sqlite", "never_run": True, "cursor": None, "running": None, "last_run": None,
                              "dead_letters": 0, "api_usage": None, "backfill": None, "runs": [], "reconcile": None}
    with _existing_state(runtime, read_only=True) as state:  # status needs no write access
        if state is not None:
            cursor = state.cursor()
            usage = state.get_meta("api_usage")
            backfill = state.get_meta(BACKFILL_CHECKPOINT_KEY)
            read_through = int(state.get_meta(READ_THROUGH_KEY) or 0)
            rows = state.recent_runs(5)
            held = bool(rows) and rows[0].get("finished_at") is None and state.lock_held()
            runs = [run_view(r, newest=i == 0, lock_held=held)
                    for i, r in enumerate(_with_run_states(rows, lock_held=held))]
            current = max(cursor.created, read_through) if cursor else None
            report.update({
                "never_run": not runs and cursor is None,
                "backfill": _backfill_status(json.loads(backfill)) if backfill else None,
                "cursor": {"event_id": cursor.event_id, "created": cursor.created,
                           "created_iso": datetime.fromtimestamp(cursor.created, tz=UTC).isoformat(),
                           "age_s": int(now - cursor.created), "current_at": current, "current_iso": iso(current),
                           "current_age_s": int(now - (current or cursor.created))} if cursor else None,
                "running": next(({"run_id": r["run_id"], "command": r["command"], "started_at": r["started_at"],
                                  "started_iso": r["started_iso"]} for r in runs if r["running"]), None),
                "last_run": last_run(runs),
                "dead_letters": state.dead_letter_count(),
                "api_usage": _usage(json.loads(usage), budget) if usage else None,
                "runs": runs,
                "reconcile": _reconcile_status(state.last_run_of("reconcile")),
                "stripe_reads_30d": reads_last_30_days(state, now),
                "salesforce_contact_iso": iso(int(contact)) if (contact := state.get_meta(SALESFORCE_CONTACT_KEY))
                else None,
            })
    report["health"] = assess(report, thresholds)
    return report


@contextlib.contextmanager
def _existing_state(runtime: Runtime, *, read_only: bool = False) -> Iterator[StateStore | None]:
    """The state store to read, or None when there is none yet (never run). Never takes the run lock."""
    if not runtime.state_exists():
        yield None
        return
    try:
        state = runtime.open_state(create=False, read_only=read_only)
    except NoStateError:
        yield None
        return
    with state:
        yield state


def _reconcile_status(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """The last reconcile: when, its exit code, and its counts and MRR totals."""
    if row is None:
        return None
    found = (row.get("summary") or {}).get("reconcile") or {}
    keep = ("mismatches", "matched", "counts", "totals")
    return {"run_id": row["run_id"], "finished_at": row.get("finished_at"), "finished_iso": iso(row.get("finished_at")),
            "exit_code": row.get("exit_code"), **{k: found.get(k) for k in keep}}


def _usage(seen: dict[str, Any], budget: float) -> dict[str, Any]:
    """The org's daily API usage as last seen, with its share and the configured budget."""
    used, total = seen.get("used"), seen.get("max")
    fraction = used / total if isinstance(used, int) and isinstance(total, int) and total else None
    return {**seen, "fraction": fraction, "budget": budget}


def _check_config_writable(path: Path) -> None:
    """`discover-config --write` replaces the config through a temporary file next to it: checked before
    logging in, so that a wrong --config fails at once, not after the org was read."""
    problem = writable_file_problem(path, "--config", "sync.yaml")
    if problem:
        raise ConfigError([problem], source="config",
                          hint="Create the directory (or make it writable), or pass --config with another path.")


def _with_run_states(runs: list[dict[str, Any]], *, lock_held: bool) -> list[dict[str, Any]]:
    """Each run (newest first) with its state: "finished" (its exit code is recorded), "running" (the newest
    run, while a process holds the lock), or "ended abnormally" (killed, or the machine stopped, before it
    could record an exit code: its process, and so its lock, is gone)."""
    for i, run in enumerate(runs):
        if run.get("exit_code") is not None:
            run["state"] = "finished"
        else:
            run["state"] = "running" if lock_held and i == 0 else "ended abnormally"
    return runs


def run_discover(config_path: Path | None, environment: Environment, *, write: bool, example: str) -> Any:
    """`stripe-sf discover-config`: query the org; with write, store the values in sync.yaml."""
    from stripe_sf_sync.discover import discover, write_discovery

    path = config_path or DEFAULT_CONFIG_PATH
    loaded: LoadedConfig | None = None
    if path.exists():
        loaded = load_config(path)
    elif not write:
        raise ConfigError([f"{path} does not exist"], source="config",
                          hint="Pass --write to create it from sync.yaml.example with the org's values.")
    if write:
        _check_config_writable(path)
    secrets = salesforce_secrets(environment.env)
    version = loaded.settings.salesforce.api_version if loaded else DEFAULT_SF_API_VERSION
    sf = connect(secrets, api_version=version, session=environment.session_factory(),
                 timeout=loaded.settings.salesforce.timeout_seconds if loaded else 60.0)
    gw = SalesforceGateway(sf, sleep=environment.sleep)
    found = discover(gw, preferred=loaded.settings.salesforce.opportunity_record_type if loaded else None)
    if write:
        write_discovery(path, found, example)
        # The org may have changed: make the next sync describe it again.
        with _existing_state(Runtime(path, environment)) as state:
            if state is not None:
                state.delete_meta(ORG_CACHE_KEY)
    return found
