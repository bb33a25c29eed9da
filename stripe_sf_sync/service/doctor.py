"""`stripe-sf doctor`: everything a run depends on, checked before the first write.

Salesforce (the login, what the integration user may do, every configured field, the won stage, the record
type, the daily API allowance), once: one org. Then each pipeline the command covers (`--account`'s, else every
account of stripe.accounts: service/doctor_stripe.py): its Stripe key, mode and API version, its cursor's age and
the account its key reaches. Then the local state store, and each pipeline's dead letters. Each check is one line,
ok, warning or error, every problem with its fix. Doctor only reads: it takes no lock, writes no state and sends
no record, so it is safe beside a running sync.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stripe_sf_sync.config import LoadedConfig, masked_url, salesforce_secrets, state_url
from stripe_sf_sync.discover import won_stages
from stripe_sf_sync.errors import ConfigError, ExitCode, FatalSyncError, NoStateError, StateError
from stripe_sf_sync.identity import SalesforceIdentity
from stripe_sf_sync.pipelines import DEFAULT_PIPELINE, Pipeline, chosen, legacy_heir
from stripe_sf_sync.records import OrgFacts
from stripe_sf_sync.salesforce.creation import creation_findings, owner_query
from stripe_sf_sync.salesforce.gateway import SalesforceGateway, connect
from stripe_sf_sync.salesforce.mapped_fields import mapped_field_checks
from stripe_sf_sync.salesforce.merges import merge_advice
from stripe_sf_sync.salesforce.org import (
    ORG_CURRENCY_SOQL,
    OrgProblem,
    currency_facts,
    field_needs,
    fields_by_object,
    need_problems,
    object_access_problems,
    org_identity,
    record_type_problems,
    refunded_stage_problems,
    stage_problems,
    won_stage_problems,
)
from stripe_sf_sync.service.doctor_checks import Area, Check, DoctorReport, PipelineState, sentence
from stripe_sf_sync.service.doctor_stripe import PipelineChecks
from stripe_sf_sync.service.identity import recorded_binding
from stripe_sf_sync.service.runtime import Environment, Runtime
from stripe_sf_sync.sources import HANDOFF_SINCE_KEY
from stripe_sf_sync.state import StateStore, open_state
from stripe_sf_sync.words import counted

# A warning when less than this share of the daily allowance is left below salesforce.api_budget.
BUDGET_MARGIN = 0.1
STATE_SUFFIXES = ("", "-wal", "-shm", ".lock")  # the state file and what SQLite and the run lock add


def _from_problem(area: Area, name: str, p: OrgProblem) -> Check:
    # An org that lacks what the config names is a configuration problem: sync stops with 2 on it.
    return Check(area, name, p.severity, p.problem, p.fix, p.subject,
                 int(ExitCode.CONFIG) if p.severity == "error" else int(ExitCode.OK))


def _problems_or_ok(area: Area, name: str, problems: list[OrgProblem], ok: str, subject: str | None) -> list[Check]:
    return [_from_problem(area, name, p) for p in problems] or [Check(area, name, "ok", ok, subject=subject)]


class Doctor:
    """Runs the checks of one config against the environment's services, for the pipelines given."""

    def __init__(self, loaded: LoadedConfig, env: Mapping[str, str], *,
                 session_factory: Callable[[], Any], clock: Callable[[], float],
                 sleep: Callable[[float], None], pipelines: list[Pipeline] | None = None) -> None:
        self.loaded = loaded
        self.env = env
        self.session_factory = session_factory
        self.clock = clock
        self.sleep = sleep
        self.pipelines = pipelines if pipelines is not None else chosen(loaded.settings, None)
        self.org_currencies: OrgFacts | None = None  # what the Salesforce checks learnt of the org's currencies
        self.reached_org: SalesforceIdentity | None = None  # the org the credentials reach (service/identity.py)

    def run(self, stripe_source: Callable[[Pipeline], Any]) -> DoctorReport:
        """Salesforce once, each pipeline's Stripe and identity checks, then the local state (read first: the
        pipelines' checks need their cursors and bindings) and each pipeline's dead letters."""
        local, states = self.local_checks()
        checks = self.salesforce_checks()
        named = bool(self.loaded.settings.stripe.accounts)
        for p in self.pipelines:
            one = PipelineChecks(self.loaded, self.env, p, states.get(p.name, PipelineState()), self.clock,
                                 self.org_currencies, self.reached_org)
            checks += one.run(functools.partial(stripe_source, p), named=named)
        dead = [_dead_letters_check(s.dead_letters, p.name if named else None) for p in self.pipelines
                if (s := states.get(p.name)) is not None and s.dead_letters is not None]
        return DoctorReport([*checks, *local, *dead])

    # --- Salesforce ---------------------------------------------------------------------------
    def salesforce_checks(self) -> list[Check]:
        """Login, object access, fields, won stage, record type, API usage (stops at the first check that
        leaves nothing to check further)."""
        s = self.loaded.settings.salesforce
        try:
            secrets = salesforce_secrets(self.env)
        except ConfigError as exc:
            return [Check("salesforce", "login", "error", "; ".join(exc.problems),
                          "export the SF_* variables of one mode (docs/environment.md)",
                          "SF_*", int(ExitCode.CONFIG))]
        try:
            sf = connect(secrets, api_version=s.api_version, session=self.session_factory(),
                         timeout=s.timeout_seconds)
            gw = SalesforceGateway(sf, timeout=s.timeout_seconds, budget=s.api_budget, sleep=self.sleep)
            identity = self.loaded.settings.identity
            owner = owner_query(identity)
            described = gw.describe_many(
                ["Opportunity", "Account", "Task", *(["Contact"] if identity.create_contacts else [])],
                queries={"Organization": ORG_CURRENCY_SOQL, **({"DefaultOwner": owner} if owner else {})})
            self.org_currencies = currency_facts(described)
            self.reached_org = org_identity(described.get("Organization"))
        except FatalSyncError as exc:
            return [Check("salesforce", "login", "error", exc.message, sentence(exc.hint), exc.code,
                          int(exc.exit_code))]
        checks = [Check("salesforce", "login", "ok", f"logged in to {sf.sf_instance} ({_MODES[secrets.mode]}), "
                        f"REST API {s.api_version}")]
        access = object_access_problems(described)
        for sobject in ("Opportunity", "Account", "Task"):
            mine = [p for p in access if p.subject == sobject]
            checks += _problems_or_ok("salesforce", sobject, mine, _ACCESS_OK[sobject], sobject)
        by_obj = fields_by_object(described)
        for need in field_needs(s.fields, creates_accounts=self.loaded.settings.identity.create_accounts):
            f = by_obj.get(need.sobject, {}).get(need.name.lower())
            ok = _field_summary(f) if f is not None else ""
            checks += _problems_or_ok("salesforce", need.subject, need_problems(need, by_obj, thorough=True), ok,
                                      need.subject)
        for mapped in mapped_field_checks(s.mapping, by_obj, s.fields):
            checks += _problems_or_ok("salesforce", mapped.subject, mapped.problems, mapped.ok, mapped.subject)
        if advice := merge_advice(by_obj, s.fields):
            checks.append(Check("salesforce", "Account merges", "ok", advice,
                                subject=f"Account.{s.fields.customer_id}"))
        checks += [Check("salesforce", "creation", f.status, f.message, f.fix, f.subject,
                         int(ExitCode.CONFIG) if f.status == "error" else int(ExitCode.OK))
                   for f in creation_findings(self.loaded.settings.identity, described, described.get("DefaultOwner"))]
        checks.append(self._won_stage(gw, by_obj))
        refunded = self.loaded.settings.salesforce.refunded_stage
        if refunded:
            checks += _problems_or_ok("salesforce", "refunded stage", refunded_stage_problems(
                refunded, by_obj["Opportunity"].get("stagename") or {}), f"{refunded!r} is an active stage", refunded)
        checks += _problems_or_ok("salesforce", "record type",
                                  record_type_problems(self.loaded, described["Opportunity"].get("recordTypeInfos",
                                                                                                 [])),
                                  self._record_type_ok(), self.loaded.settings.record_type_name())
        checks.append(self._api_usage(gw))
        return checks

    def _won_stage(self, gw: SalesforceGateway, by_obj: dict[str, dict[str, Any]]) -> Check:
        won_stage = self.loaded.settings.salesforce.won_stage
        if not won_stage:
            return Check("salesforce", "won stage", "error", "salesforce.won_stage is not set",
                         "run `stripe-sf discover-config --write` to read it from the org", "salesforce.won_stage",
                         int(ExitCode.CONFIG))
        problems = stage_problems(won_stage, by_obj["Opportunity"].get("stagename") or {})
        try:
            won = won_stages(gw)
        except FatalSyncError as exc:
            return Check("salesforce", "won stage", "error", f"cannot read OpportunityStage: {exc.message}",
                         "give the integration user read access to Opportunity stages", won_stage,
                         int(exc.exit_code))
        problems = problems or won_stage_problems(won_stage, won)
        if problems:
            return _from_problem("salesforce", "won stage", problems[0])
        label = dict(won).get(won_stage, won_stage)
        shown = f" (label {label!r})" if label != won_stage else ""
        return Check("salesforce", "won stage", "ok", f"{won_stage!r}{shown} is an active won and closed stage",
                     subject=won_stage)

    def _record_type_ok(self) -> str:
        settings = self.loaded.settings
        name, rid = settings.record_type_name(), settings.record_type_id()
        if rid is None:
            return "none configured: new Opportunities get the integration user's default record type"
        return f"new Opportunities get {name!r} ({rid}), active and available to the integration user"

    def _api_usage(self, gw: SalesforceGateway) -> Check:
        """The org's daily usage against salesforce.api_budget: from GET /limits (it needs "View Setup and
        Configuration"), else from the `Sforce-Limit-Info` header every response carries (REST API
        Developer Guide, "Limits" and "Limit Info Header")."""
        used, total, source = gw.usage.used, gw.usage.total, "Sforce-Limit-Info"
        try:
            daily = gw.limits().get("DailyApiRequests") or {}
            if isinstance(daily.get("Max"), int) and isinstance(daily.get("Remaining"), int):
                used, total, source = daily["Max"] - daily["Remaining"], daily["Max"], "GET /limits"
        except FatalSyncError:
            pass  # the header of the describe above tells the same, less fresh by two calls
        budget = gw.budget
        if used is None or not total:
            return Check("salesforce", "API usage", "warning", "Salesforce did not say how much of its daily API "
                         "allowance is used", "nothing: a run reads it from every response and stops at "
                         f"salesforce.api_budget ({budget:.0%})")
        frac = used / total
        text = f"{used:,} of {total:,} daily API requests used ({frac:.0%}; {source}), budget {budget:.0%}"
        if frac >= budget:
            return Check("salesforce", "API usage", "error", f"{text}: a run would stop before its first write",
                         "wait until the rolling 24-hour usage drops below the budget, or raise "
                         "salesforce.api_budget", "salesforce.api_budget", int(ExitCode.UNAVAILABLE))
        if frac >= budget - BUDGET_MARGIN:
            return Check("salesforce", "API usage", "warning", f"{text}: less than {BUDGET_MARGIN:.0%} of the "
                         "allowance is left before a run stops", "expect runs to stop early (exit 5) until usage "
                         "drops, or raise salesforce.api_budget", "salesforce.api_budget")
        return Check("salesforce", "API usage", "ok", text)

    # --- local --------------------------------------------------------------------------------
    def local_checks(self) -> tuple[list[Check], dict[str, PipelineState]]:
        """The state store (readable, writable) and its files' modes; each pipeline's binding, cursor and open
        dead letters."""
        url = state_url(self.loaded.settings, self.env)
        if url:
            return self.postgres_checks(url)
        path = self.loaded.state_path
        if not path.exists():
            parent = _existing_ancestor(path.parent)
            if not os.access(parent, os.W_OK | os.X_OK):
                return [Check("local", "state", "error", f"no state file at {path}, and {parent} is not writable, "
                              "so the first run cannot create it", f"make {parent} writable for this user, or set "
                              "sync.state_path", str(path), int(ExitCode.STATE))], {}
            return [Check("local", "state", "ok", f"no state file yet at {path}: the first run creates it "
                          "(mode 0600)")], {}
        try:
            with open_state(path, create=False) as store:
                integrity = store.integrity_check()
                states = self.pipeline_states(store, locks=False)
        except StateError as exc:
            return [Check("local", "state", "error", exc.message, sentence(exc.hint), str(path),
                          int(ExitCode.STATE))], {}
        if integrity != "ok":
            return [Check("local", "state", "error", f"{path} fails SQLite's integrity check ({integrity[:200]})",
                          "move it aside and restart with `stripe-sf sync --since DATE` (re-applying is idempotent), "
                          "or restore it from a backup", str(path), int(ExitCode.STATE))], {
                n: dataclasses.replace(s, dead_letters=None) for n, s in states.items()}
        unwritable = [p for p in (path, path.parent) if not os.access(p, os.W_OK)]
        checks = [Check("local", "state", "error", f"{', '.join(map(str, unwritable))} not writable: a run could "
                        "read the state but not commit a batch", "make the state file and its folder writable for "
                        "this user", str(path), int(ExitCode.STATE)) if unwritable else
                  Check("local", "state", "ok", f"{path} is readable, writable and passes SQLite's integrity check")]
        return [*checks, _file_modes(path)], states

    def postgres_checks(self, url: str) -> tuple[list[Check], dict[str, PipelineState]]:
        """The PostgreSQL state store answers (URL shown with its password masked); each pipeline's state. Only
        reads: the run lock is never taken."""
        where = masked_url(url)
        try:
            with open_state(self.loaded.state_path, url, create=False) as store:
                states = self.pipeline_states(store, locks=True)
        except NoStateError:
            return [Check("local", "state", "ok", f"PostgreSQL at {where}: no stripe-sf tables yet, the first run "
                          "creates them")], {}
        except (StateError, ConfigError) as exc:
            return [Check("local", "state", "error", exc.message, sentence(exc.hint), where,
                          int(exc.exit_code))], {}
        running = [name for name, s in states.items() if s.running]
        held = ("" if not running else " (a run holds the run lock now)" if not self.loaded.settings.stripe.accounts
                else f" (a run holds the run lock of {', '.join(running)} now)")
        return [Check("local", "state", "ok", f"PostgreSQL at {where} answers{held}")], states

    def pipeline_states(self, store: StateStore, *, locks: bool) -> dict[str, PipelineState]:
        """Each pipeline's binding, cursor (or backfill's hand-off), open dead letters and, with `locks`, whether
        a run holds its lock. The pipeline that inherits the state from before stripe.accounts (`legacy_heir`)
        reads it where it is until its first run adopts it, as a run would."""
        heir = legacy_heir(self.loaded.settings)
        held = store.pipelines() if heir is not None and heir in self.pipelines else []
        states = {}
        for p in self.pipelines:
            inherits = p == heir and p.name not in held and DEFAULT_PIPELINE in held
            view = store.for_pipeline(DEFAULT_PIPELINE if inherits else p.name)
            stored, handoff = view.cursor(), view.get_meta(HANDOFF_SINCE_KEY)
            cursor = ((stored.event_id, stored.created) if stored else
                      ("(backfill's hand-off)", int(handoff)) if handoff else None)
            states[p.name] = PipelineState(recorded_binding(view), cursor, view.dead_letter_count(),
                                           locks and view.lock_held())
        return states


_MODES = {"token": "access token", "client_credentials": "client credentials", "jwt": "JWT bearer",
          "password": "username-password"}
_ACCESS_OK = {"Opportunity": "the integration user may create and edit Opportunities",
              "Account": "the integration user may edit Accounts",
              "Task": "the integration user may create Tasks"}


_TYPE_NAMES = {"string": "Text", "textarea": "Text Area", "picklist": "Picklist", "currency": "Currency",
               "double": "Number", "reference": "Lookup"}


def _field_summary(f: Mapping[str, Any]) -> str:
    """What describe says a field is, as Setup names it: `Text(255), External ID, Unique`."""
    ftype = str(f.get("type"))
    kind = _TYPE_NAMES.get(ftype, ftype)
    if ftype in ("string", "textarea") and f.get("length"):
        kind += f"({f['length']})"
    elif ftype in ("currency", "double") and f.get("precision"):
        kind += f"({f['precision']}, {f.get('scale') or 0})"
    elif ftype == "reference":
        kind += f"({', '.join(f.get('referenceTo') or [])})"
    elif ftype == "picklist":
        n = sum(1 for p in f.get("picklistValues", []) if p.get("active", True))
        kind += f" ({'restricted, ' if f.get('restrictedPicklist') else ''}{counted(n, 'value')})"
    flags = [flag for flag, on in (("External ID", f.get("externalId")), ("Unique", f.get("unique"))) if on]
    return ", ".join([kind, *flags])


def _dead_letters_check(dead: int, account: str | None) -> Check:
    flag = f"--account {account} " if account else ""
    return (Check("local", "dead letters", "warning", counted(dead, "open dead letter"),
                  f"`stripe-sf {flag}dlq list`, fix the cause, then `stripe-sf {flag}dlq retry --all`",
                  account=account)
            if dead else Check("local", "dead letters", "ok", "none open", account=account))


def _file_modes(path: Path) -> Check:
    """The state holds customer names and metadata, so its files are created 0600 (state.py)."""
    loose = []
    for suffix in STATE_SUFFIXES:
        p = Path(f"{path}{suffix}")
        if p.exists() and stat.S_IMODE(p.stat().st_mode) & 0o077:
            loose.append(f"{p} ({stat.S_IMODE(p.stat().st_mode):o})")
    if loose:
        names = " ".join(f"'{entry.rsplit(' (', 1)[0]}'" for entry in loose)
        return Check("local", "file modes", "warning", f"readable by others: {', '.join(loose)}",
                     f"chmod 600 {names}", loose[0].rsplit(" (", 1)[0])
    return Check("local", "file modes", "ok", "the state files are mode 0600")


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def run_doctor(config_path: Path | None, environment: Environment) -> DoctorReport:
    """`stripe-sf doctor`: every check, for the config at `config_path` and the environment; each pipeline's
    (`--account`'s, else every one's) with its own key and state."""
    runtime = Runtime(config_path, environment)
    doctor = Doctor(runtime.loaded, environment.env, session_factory=environment.session_factory,
                    clock=environment.clock, sleep=environment.sleep,
                    pipelines=chosen(runtime.loaded.settings, environment.account))
    return doctor.run(lambda p: runtime.for_pipeline(p).stripe_source())
