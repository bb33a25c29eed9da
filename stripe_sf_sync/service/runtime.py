"""A command's runtime: what it reads from outside (Environment), its config and state (Runtime), both
clients with every missing secret reported at once, and the exit code a run's summary makes."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
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
from stripe_sf_sync.config import LoadedConfig, load_config, salesforce_secrets, state_url, stripe_secrets
from stripe_sf_sync.errors import ConfigError, ExitCode, NoStateError
from stripe_sf_sync.metrics import check_metrics_path
from stripe_sf_sync.pipeline import BatchSettings, RunSummary
from stripe_sf_sync.pipelines import DEFAULT_PIPELINE, Pipeline, legacy_heir, select
from stripe_sf_sync.salesforce.gateway import SalesforceGateway, connect
from stripe_sf_sync.state import StateStore, open_state
from stripe_sf_sync.stripe.source import StripeSource, build_client, default_requests_per_second
from stripe_sf_sync.words import counted

log = logging.getLogger("stripe_sf_sync")


@dataclass
class Environment:
    """What a command reads from outside: variables, a requests session factory, the clock.

    Tests and the demo swap this rather than monkey-patching SDKs (httpie habit).
    """

    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    account: str | None = None  # --account: the pipeline a command acts on (pipelines.py); None: the only one
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

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline this command acts on: --account's, or the config's only one (ConfigError otherwise)."""
        return select(self.loaded.settings, self.environment.account)

    def for_pipeline(self, pipeline: Pipeline) -> Runtime:
        """This runtime, acting on `pipeline` (`sync --all`, and the reports that cover every pipeline)."""
        other = copy.copy(self)
        other.environment = dataclasses.replace(self.environment, account=pipeline.name)
        return other

    def stripe_key(self) -> str:
        """The pipeline's Stripe key, from its variable (checked: a ConfigError names a missing one)."""
        return stripe_secrets(self.environment.env, self.pipeline.key_env).api_key

    def open_state(self, *, create: bool = True, read_only: bool = False) -> StateStore:
        """The state store of this config, for this command's pipeline: PostgreSQL when a state URL is set, else
        the SQLite file. The pipeline that inherits a state from before the config named its accounts
        (`legacy_heir`) adopts the `default` pipeline's state first; read-only, it reads that state as it is."""
        name = self.pipeline.name
        store = open_state(self.loaded.state_path, self.state_url, pipeline=name, create=create,
                           read_only=read_only)
        heir = legacy_heir(self.loaded.settings)
        if heir is None or heir.name != name:
            return store
        try:
            held = store.pipelines()
            if DEFAULT_PIPELINE not in held or name in held:
                return store
            legacy = store.for_pipeline(DEFAULT_PIPELINE)
            if read_only:
                return legacy  # what the next run adopts; a reader writes nothing
            legacy.acquire_lock()  # no run of the single pipeline (an older stripe-sf) is writing it meanwhile
            try:
                moved = store.adopt(DEFAULT_PIPELINE, name)
            finally:
                legacy.release_lock()
        except BaseException:
            store.close()
            raise
        log.info("The state from before stripe.accounts (pipeline default, %s) is now pipeline %s's.",
                 counted(moved, "row and key", "rows and keys"), name)
        return store

    def state_exists(self) -> bool:
        """Whether there may be state to read: a PostgreSQL store is asked (NoStateError), a file looked for."""
        return bool(self.state_url) or self.loaded.state_path.exists()

    def stripe_source(self) -> StripeSource:
        """A StripeSource of the pipeline: its key (checked before any network call), and for a connected account
        the Stripe-Account header on every request."""
        pipeline = self.pipeline
        secrets = stripe_secrets(self.environment.env, pipeline.key_env)
        s = self.loaded.settings.stripe
        env = self.environment.env
        # The variables requests reads for every other session (its `merge_environment_settings`).
        ca_bundle = env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE") or None
        client, http = build_client(secrets.api_key, api_base=secrets.api_base, api_version=s.api_version,
                                    timeout=s.timeout_seconds, ca_bundle=ca_bundle,
                                    stripe_account=pipeline.stripe_account_header)
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


def clients(runtime: Runtime) -> tuple[StripeSource, Callable[[], SalesforceGateway]]:
    """Both clients, with every missing secret reported at once, before any network call."""
    runtime.pipeline  # noqa: B018 -- which account: a usage error of its own, before the secrets are looked at
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


def check_secrets(runtimes: list[Runtime]) -> None:
    """Every pipeline's missing or malformed secret, reported at once (each problem once), before any network
    call: `sync --all` and `serve` start several pipelines."""
    problems: list[str] = []
    for rt in runtimes:
        try:
            clients(rt)
        except ConfigError as exc:
            problems.extend(p for p in exc.problems if p not in problems)
    if problems:
        raise ConfigError(problems, source="environment",
                          hint="Export each account's key in the variable its api_key_env names (default "
                               "STRIPE_API_KEY), and the Salesforce variables of docs/environment.md; secrets "
                               "are read only from the environment.")


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


def batch_settings(loaded: LoadedConfig, *, legacy_task_keys_before: int | None = None,
                   stripe_account: str | None = None) -> BatchSettings:
    """What the batch step reads from the config (and, from state, when Tasks were first keyed by subject;
    `stripe_account`: the pipeline's account, which its records carry and its lookups keep to)."""
    s = loaded.settings
    ctx = rules.RuleContext(s.salesforce.won_stage or "", s.salesforce.fields, s.stripe.dashboard_url,
                            refunded_stage=s.salesforce.refunded_stage, mapping=s.salesforce.mapping,
                            stripe_account=stripe_account)
    return BatchSettings(ctx, s.salesforce.fields, s.record_type_id(), coalesce=s.sync.coalesce,
                         legacy_task_keys_before=legacy_task_keys_before,
                         currency_mismatch=s.salesforce.currency_mismatch, identity=s.identity)


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


BACKFILL_CHECKPOINT_KEY = "backfill_checkpoint"  # sources/backfill.py's CHECKPOINT_KEY (imported lazily)
# When a run last had a success answer from Salesforce. A quiet sync (nothing to write) reaches Salesforce once
# when this is older than SALESFORCE_CONTACT_EVERY_S, so that a revoked token or a broken CA bundle fails a run
# (and `status --check`) within a day, not when the next event comes.
SALESFORCE_CONTACT_KEY = "salesforce_contact_at"
SALESFORCE_CONTACT_EVERY_S = 86400


def check_run_metrics(metrics_file: Path | None, *, dry_run: bool) -> None:
    """`--metrics-file`: refused with --dry-run (its figures would read as a real run's), and checked to be
    writable before any network call."""
    if metrics_file is None:
        return
    if dry_run:
        raise ConfigError(["--metrics-file cannot be combined with --dry-run: a dry run's figures would read as "
                           "a real run's"], source="invocation", hint="Drop one of the two options.")
    check_metrics_path(metrics_file)


@contextlib.contextmanager
def existing_state(runtime: Runtime, *, read_only: bool = False) -> Iterator[StateStore | None]:
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
