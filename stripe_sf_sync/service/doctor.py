"""`stripe-sf doctor`: everything a run depends on, checked before the first write.

Salesforce (the login, what the integration user may do, every configured field, the won stage, the record
type, the daily API allowance), Stripe (the key, its mode, the API version, the cursor's age) and the local
state store. Each check is one line, ok, warning or error, every problem with its fix. Doctor only reads:
it takes no lock, writes no state and sends no record, so it is safe beside a running sync.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import stripe

from stripe_sf_sync.config import LoadedConfig, masked_url, salesforce_secrets, state_url
from stripe_sf_sync.discover import won_stages
from stripe_sf_sync.errors import ConfigError, ExitCode, FatalSyncError, NoStateError, StateError, StripeRefusedError
from stripe_sf_sync.identity import Binding, SalesforceIdentity, StripeIdentity
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
from stripe_sf_sync.service.identity import current_stripe, identity_findings, recorded_binding
from stripe_sf_sync.service.runtime import Environment, Runtime
from stripe_sf_sync.sources import HANDOFF_SINCE_KEY
from stripe_sf_sync.state import open_state
from stripe_sf_sync.stripe.source import RETENTION_S
from stripe_sf_sync.words import counted

Status = Literal["ok", "warning", "error"]
Area = Literal["salesforce", "stripe", "local"]
AREAS: tuple[Area, ...] = ("salesforce", "stripe", "local")
# A warning when less than this share of the daily allowance is left below salesforce.api_budget.
BUDGET_MARGIN = 0.1
# A warning when the cursor has less than this left before Stripe stops listing the events after it.
CURSOR_MARGIN_S = 7 * 86400
STATE_SUFFIXES = ("", "-wal", "-shm", ".lock")  # the state file and what SQLite and the run lock add


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    area: Area
    name: str  # what was checked: "login", "Account.Subscription_Status__c", "won stage"
    status: Status
    message: str
    fix: str = ""
    subject: str | None = None  # the field, picklist, stage, record type or file at fault
    exit_code: int = int(ExitCode.OK)  # what an error makes doctor exit with (the code a run would meet)


@dataclass
class DoctorReport:
    """Every check, in the order printed."""

    checks: list[Check] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many checks ended ok, with a warning, with an error."""
        return {s: sum(1 for c in self.checks if c.status == s) for s in ("ok", "warning", "error")}

    @property
    def exit_code(self) -> int:
        """0 without errors (warnings alone included); else the code of the first error listed."""
        return next((c.exit_code for c in self.checks if c.status == "error"), int(ExitCode.OK))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"healthy": self.exit_code == ExitCode.OK, "exit_code": self.exit_code, "counts": self.counts(),
                "checks": [asdict(c) for c in self.checks]}


def _from_problem(area: Area, name: str, p: OrgProblem) -> Check:
    # An org that lacks what the config names is a configuration problem: sync stops with 2 on it.
    return Check(area, name, p.severity, p.problem, p.fix, p.subject,
                 int(ExitCode.CONFIG) if p.severity == "error" else int(ExitCode.OK))


def _problems_or_ok(area: Area, name: str, problems: list[OrgProblem], ok: str, subject: str | None) -> list[Check]:
    return [_from_problem(area, name, p) for p in problems] or [Check(area, name, "ok", ok, subject=subject)]


class Doctor:
    """Runs the checks of one config against the environment's services."""

    def __init__(self, loaded: LoadedConfig, env: Mapping[str, str], *,
                 session_factory: Callable[[], Any], clock: Callable[[], float],
                 sleep: Callable[[float], None]) -> None:
        self.loaded = loaded
        self.env = env
        self.session_factory = session_factory
        self.clock = clock
        self.sleep = sleep
        self.org_currencies: OrgFacts | None = None  # what the Salesforce checks learnt of the org's currencies
        # The org and account the state is bound to, and those the credentials reach (service/identity.py).
        self.binding = Binding()
        self.reached: tuple[SalesforceIdentity | None, StripeIdentity | None] = (None, None)

    def run(self, stripe_source: Callable[[], Any]) -> DoctorReport:
        """Every check: Salesforce, Stripe, then the local state (whose cursor the Stripe checks read)."""
        local, cursor = self.local_checks()
        checks = [*self.salesforce_checks(), *self.stripe_checks(stripe_source, cursor)]
        found = identity_findings(self.binding, *self.reached,
                                  allowed=self.loaded.settings.salesforce.allow_mode_mismatch)
        return DoctorReport([*checks, *(Check(a, n, s, m, f, None, c) for a, n, s, m, f, c in found), *local])

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
            self.reached = (org_identity(described.get("Organization")), self.reached[1])
        except FatalSyncError as exc:
            return [Check("salesforce", "login", "error", exc.message, _sentence(exc.hint), exc.code,
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

    # --- Stripe -------------------------------------------------------------------------------
    def stripe_checks(self, stripe_source: Callable[[], Any], cursor: tuple[str, int] | None) -> list[Check]:
        """The key (and its mode), the API version, and the cursor's age against the 30-day retention."""
        try:
            source = stripe_source()
        except ConfigError as exc:
            return [Check("stripe", "key", "error", "; ".join(exc.problems), _sentence(exc.hint), "STRIPE_API_KEY",
                          int(ExitCode.CONFIG)), *self._cursor(cursor)]
        key = str(self.env.get("STRIPE_API_KEY", "")).strip()
        kind = "restricted" if key.startswith("rk_") else "secret"
        mode = "live" if "_live_" in key[:8] else "test"
        version = self.loaded.settings.stripe.api_version
        try:
            source.newest_event()
        except (stripe.InvalidRequestError, StripeRefusedError) as exc:  # the edge raises the latter (a 400)
            said = exc.stripe_message if isinstance(exc, StripeRefusedError) else str(exc.user_message or exc)
            message = said[:300]
            if "version" in message.lower():
                return [Check("stripe", "API version", "error", f"Stripe refused stripe.api_version {version!r}: "
                              f"{message}", "set stripe.api_version to a version Stripe lists, e.g. the default "
                              "of sync.yaml.example", "stripe.api_version", int(ExitCode.CONFIG)),
                        *self._cursor(cursor)]
            return [Check("stripe", "key", "error", f"Stripe refused to list events: {message}",
                          "check STRIPE_API_KEY and STRIPE_API_BASE", "STRIPE_API_KEY", int(ExitCode.UNAVAILABLE)),
                    *self._cursor(cursor)]
        except FatalSyncError as exc:
            return [Check("stripe", "key", "error", exc.message, _sentence(exc.hint), "STRIPE_API_KEY",
                          int(exc.exit_code)), *self._cursor(cursor)]
        checks = [Check("stripe", "key", "ok", f"the {kind} key lists events ({mode} mode)")]
        self.reached = (self.reached[0], current_stripe(self.binding, source, key))
        answered = source.last_headers.get("stripe-version")
        if answered and answered != version:
            checks.append(Check("stripe", "API version", "warning", f"stripe-sf asked for {version} and Stripe "
                                f"answered in {answered}", "check stripe.api_version", "stripe.api_version"))
        else:
            checks.append(Check("stripe", "API version", "ok", f"{version} (stripe.api_version), accepted by Stripe"))
        return checks + self._currencies(source) + self._cursor(cursor)

    def _currencies(self, source: Any) -> list[Check]:
        """Whether the newest events (one page) are in currencies the org holds: an org without multiple
        currencies reads every amount in its own (salesforce.currency_mismatch decides what a run does)."""
        org = self.org_currencies
        if org is None or (org.currencies is None and org.currency is None):
            return []  # Salesforce was not reached, or did not say
        try:
            seen = source.recent_currencies()
        except FatalSyncError:
            return []  # the key check above has said what is wrong with Stripe
        foreign = {code: n for code, n in sorted(seen.items()) if org.holds(code) is False}
        held = (f"active currencies {', '.join(sorted(org.currencies))}" if org.currencies is not None
                else f"a single currency, {org.currency}")
        if not foreign:
            shown = ", ".join(sorted(seen)) or "none yet"
            return [Check("stripe", "currencies", "ok", f"recent Stripe activity is in {shown}; the org has {held}")]
        what = ", ".join(f"{code} ({_count(n, 'event')})" for code, n in foreign.items())
        codes = ", ".join(foreign)
        if org.currencies is not None:
            return [Check("stripe", "currencies", "warning", f"recent Stripe activity is in {what}, which the org "
                          f"does not hold (it has {held}): those events wait as CURRENCY_NOT_ACTIVE",
                          f"activate {codes} in Setup > Company Information > Currencies", codes)]
        mismatch = self.loaded.settings.salesforce.currency_mismatch
        effect = ("their amounts are written as they are, and read as " + str(org.currency)
                  if mismatch == "write_as_is" else "those events wait as CURRENCY_MISMATCH")
        return [Check("stripe", "currencies", "warning", f"recent Stripe activity is in {what}, which the org does "
                      f"not use (it has {held}): {effect}", "turn on multiple currencies in Setup > Company "
                      f"Information and activate {codes}, or set salesforce.currency_mismatch "
                      "(README: 'Currencies')", "salesforce.currency_mismatch")]

    def _cursor(self, cursor: tuple[str, int] | None) -> list[Check]:
        if cursor is None:
            return [Check("stripe", "cursor", "ok", "none yet: the first `stripe-sf sync --since DATE` (a DATE within "
                          "the last 30 days) or a `stripe-sf backfill` sets it")]
        event_id, created = cursor
        age = self.clock() - created
        day = datetime.fromtimestamp(created, tz=UTC).date().isoformat()
        text = f"{event_id} from {day}, {_age(age)} old (Stripe lists events for 30 days)"
        if age > RETENTION_S:
            return [Check("stripe", "cursor", "error", f"{text}: the events after it can no longer be listed",
                          f"run `stripe-sf backfill --since {day}`, then `stripe-sf sync`", event_id,
                          int(ExitCode.CURSOR_EXPIRED))]
        if age > RETENTION_S - CURSOR_MARGIN_S:
            return [Check("stripe", "cursor", "warning", f"{text}: it passes the retention in "
                          f"{_age(RETENTION_S - age)}", "run `stripe-sf sync` (cron) before then", event_id)]
        return [Check("stripe", "cursor", "ok", text)]

    # --- local --------------------------------------------------------------------------------
    def local_checks(self) -> tuple[list[Check], tuple[str, int] | None]:
        """The state store (readable, writable), its files' modes, open dead letters; and the cursor."""
        url = state_url(self.loaded.settings, self.env)
        if url:
            return self.postgres_checks(url)
        path = self.loaded.state_path
        if not path.exists():
            parent = _existing_ancestor(path.parent)
            if not os.access(parent, os.W_OK | os.X_OK):
                return [Check("local", "state", "error", f"no state file at {path}, and {parent} is not writable, "
                              "so the first run cannot create it", f"make {parent} writable for this user, or set "
                              "sync.state_path", str(path), int(ExitCode.STATE))], None
            return [Check("local", "state", "ok", f"no state file yet at {path}: the first run creates it "
                          "(mode 0600)")], None
        try:
            with open_state(path, create=False) as store:
                integrity = store.integrity_check()
                self.binding = recorded_binding(store)
                stored = store.cursor()
                handoff = store.get_meta(HANDOFF_SINCE_KEY)
                dead = store.dead_letter_count()
        except StateError as exc:
            return [Check("local", "state", "error", exc.message, _sentence(exc.hint), str(path),
                          int(ExitCode.STATE))], None
        cursor = (stored.event_id, stored.created) if stored else None
        if cursor is None and handoff:
            cursor = ("(backfill's hand-off)", int(handoff))
        if integrity != "ok":
            return [Check("local", "state", "error", f"{path} fails SQLite's integrity check ({integrity[:200]})",
                          "move it aside and restart with `stripe-sf sync --since DATE` (re-applying is idempotent), "
                          "or restore it from a backup", str(path), int(ExitCode.STATE))], cursor
        unwritable = [p for p in (path, path.parent) if not os.access(p, os.W_OK)]
        checks = [Check("local", "state", "error", f"{', '.join(map(str, unwritable))} not writable: a run could "
                        "read the state but not commit a batch", "make the state file and its folder writable for "
                        "this user", str(path), int(ExitCode.STATE)) if unwritable else
                  Check("local", "state", "ok", f"{path} is readable, writable and passes SQLite's integrity check")]
        checks.append(_file_modes(path))
        checks.append(_dead_letters_check(dead))
        return checks, cursor

    def postgres_checks(self, url: str) -> tuple[list[Check], tuple[str, int] | None]:
        """The PostgreSQL state store answers (URL shown with its password masked), its dead letters; the cursor.
        Only reads: the run lock is never taken."""
        where = masked_url(url)
        try:
            with open_state(self.loaded.state_path, url, create=False) as store:
                stored = store.cursor()
                self.binding = recorded_binding(store)
                handoff = store.get_meta(HANDOFF_SINCE_KEY)
                dead = store.dead_letter_count()
                running = store.lock_held()
        except NoStateError:
            return [Check("local", "state", "ok", f"PostgreSQL at {where}: no stripe-sf tables yet, the first run "
                          "creates them")], None
        except (StateError, ConfigError) as exc:
            return [Check("local", "state", "error", exc.message, _sentence(exc.hint), where,
                          int(exc.exit_code))], None
        cursor = (stored.event_id, stored.created) if stored else None
        if cursor is None and handoff:
            cursor = ("(backfill's hand-off)", int(handoff))
        state = f"PostgreSQL at {where} answers" + (" (a run holds the run lock now)" if running else "")
        return [Check("local", "state", "ok", state), _dead_letters_check(dead)], cursor


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


def _dead_letters_check(dead: int) -> Check:
    return (Check("local", "dead letters", "warning", counted(dead, "open dead letter"),
                  "`stripe-sf dlq list`, fix the cause, then `stripe-sf dlq retry --all`")
            if dead else Check("local", "dead letters", "ok", "none open"))


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


def _age(seconds: float) -> str:
    if seconds < 2 * 3600:
        return f"{max(seconds, 0) / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _sentence(hint: str) -> str:
    """A hint as a fix: without its final full stop (the line adds one)."""
    hint = hint.strip()
    return hint[:1].lower() + hint[1:].rstrip(".") if hint else ""


def run_doctor(config_path: Path | None, environment: Environment) -> DoctorReport:
    """`stripe-sf doctor`: every check, for the config at `config_path` and the environment."""
    runtime = Runtime(config_path, environment)
    doctor = Doctor(runtime.loaded, environment.env, session_factory=environment.session_factory,
                    clock=environment.clock, sleep=environment.sleep)
    return doctor.run(runtime.stripe_source)


def _count(n: int, word: str) -> str:
    """`1 event`, `2 events`."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"
