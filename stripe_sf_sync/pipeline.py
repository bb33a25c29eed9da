"""One pipeline for sync and dead-letter retry: changes -> rules -> resolve -> sink -> state."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stripe_sf_sync import model, rules
from stripe_sf_sync.config import LoadedConfig
from stripe_sf_sync.errors import ConfigError, CursorExpiredError, StripeSfError
from stripe_sf_sync.model import (
    CustomerChange,
    InvoiceFailureChange,
    MalformedEvent,
    PaymentChange,
    SubscriptionChange,
)
from stripe_sf_sync.resolve import AccountCache, Materializer, SfOp, WriteSettings, find
from stripe_sf_sync.salesforce_sink import BulkWriter, CollectionsWriter, SalesforceGateway
from stripe_sf_sync.state import CachedCustomer, Cursor, Outcome, StateStore
from stripe_sf_sync.stripe_source import BASIL, RETENTION_S, StripeSource

log = logging.getLogger("stripe_sf_sync")

ORG_CACHE_KEY = "org_describe"
HANDOFF_SINCE_KEY = "handoff_since"
# The oldest `created` sync's history covers (`sync --since`, or just after backfill's hand-off event): the
# lookback never re-reads before it, so events from before the history began are never applied.
SYNC_FLOOR_KEY = "sync_floor"
ORG_CACHE_TTL_S = 24 * 3600
# Margin around a batch's time span when listing its invoice payments: clocks and Stripe's own steps
# (invoice finalised, PaymentIntent created, InvoicePayment linked) are seconds to minutes apart.
INVOICE_PAYMENT_MARGIN_S = 3600


@dataclass(frozen=True, slots=True)
class HeldEvent:
    """An event held as compact JSON, parsed on arrival, while its batch fills and is applied.

    Decoded, an event costs about four times its JSON in memory, and a batch holds thousands; decoding
    is also the slowest step of a run, so it is parsed once, on arrival, and decoded again only where
    its payload is needed later (a dead letter keeps `text`; a failed invoice's hydration reads it).
    """

    id: str | None
    created: int | None
    type: str | None
    text: str
    parsed: Any  # model.parse_event's result, or the exception it raised

    @classmethod
    def of(cls, event: Mapping[str, Any]) -> HeldEvent:
        """Hold `event` (its id, time and type stay readable without decoding)."""
        def field(key: str, kind: type) -> Any:
            value = event.get(key)
            return value if isinstance(value, kind) and not isinstance(value, bool) else None
        try:
            parsed: Any = model.parse_event(event)
        except Exception as exc:  # raised again where the batch parses it, to be dead-lettered there
            parsed = exc
        return cls(field("id", str), field("created", int), field("type", str),
                   json.dumps(event, default=str, separators=(",", ":")), parsed)

    def parse(self) -> model.Change | CustomerChange | model.Unsupported:
        """model.parse_event's result for this event (raising what it raised)."""
        if isinstance(self.parsed, Exception):
            raise self.parsed
        return self.parsed  # type: ignore[no-any-return]

    def get(self, key: str, default: Any = None) -> Any:
        """`id`, `created` or `type`, as on the event itself."""
        return {"id": self.id, "created": self.created, "type": self.type}.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def load(self) -> dict[str, Any]:
        """The event, decoded."""
        event = json.loads(self.text)
        return event if isinstance(event, dict) else {}


Raw = Mapping[str, Any] | HeldEvent  # an event as received, or held


@dataclass
class RunSummary:
    """What a run did; printed at the end, and stored with the run."""

    command: str
    dry_run: bool = False
    events_read: int = 0
    applied: int = 0
    skipped_stale: int = 0
    skipped_duplicate: int = 0
    listed_late: int = 0  # found behind the cursor by the lookback re-read, not recorded yet
    ignored: int = 0
    dead_lettered: int = 0
    records_written: int = 0
    stripe_calls: int = 0
    salesforce_calls: int = 0
    salesforce_api_used: int | None = None
    salesforce_api_max: int | None = None
    duration_s: float = 0.0
    cursor: str | None = None
    stopped_early: str | None = None
    planned_writes: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the planned writes only in dry runs)."""
        d = dataclasses.asdict(self)
        if not self.dry_run:
            d.pop("planned_writes")
        return d


@dataclass(frozen=True)
class OrgFacts:
    """What describe told us about the org, cached for a day in state."""

    task_keyed: bool  # Task has the key field: Tasks are looked up by it and created once
    # A multi-currency org's active currencies (upper-case ISO codes, from Opportunity.CurrencyIsoCode's
    # picklist); None for a single-currency org, which has no CurrencyIsoCode field (api-facts.md §12).
    currencies: frozenset[str] | None = None


class SalesforceAccess:
    """Connects to Salesforce only when a batch has something to write (quiet runs cost nothing)."""

    def __init__(self, factory: Callable[[], SalesforceGateway]) -> None:
        self._factory = factory
        self._gw: SalesforceGateway | None = None

    @property
    def connected(self) -> SalesforceGateway | None:
        """The gateway, if one was opened."""
        return self._gw

    def get(self) -> SalesforceGateway:
        """The gateway, connecting on first use."""
        if self._gw is None:
            self._gw = self._factory()
        return self._gw


def check_org(gw: SalesforceGateway, loaded: LoadedConfig) -> OrgFacts:
    """Describe Opportunity, Account and Task; list every missing field or stage as one config error."""
    s = loaded.settings.salesforce
    names = s.fields
    problems: list[str] = []
    described = gw.describe_many(["Opportunity", "Account", "Task"])
    by_obj = {name: {f["name"].lower(): f for f in d.get("fields", [])} for name, d in described.items()}

    def need(obj: str, fname: str, kind: str, *, external: bool = False) -> None:
        f = by_obj[obj].get(fname.lower())
        if f is None:
            problems.append(f"{obj}.{fname} does not exist in the org (create it as {kind})")
        elif external and not f.get("externalId"):
            problems.append(f"{obj}.{fname} must be marked External ID (and Unique)")

    need("Opportunity", names.subscription_id, "Text(255), External ID, Unique", external=True)
    need("Opportunity", names.payment_intent_id, "Text(255), External ID, Unique", external=True)
    need("Opportunity", names.customer_id, "Text(255)")
    need("Opportunity", names.mrr, "Currency(16, 2)")
    need("Opportunity", names.arr, "Currency(16, 2)")
    need("Account", names.customer_id, "Text(255), External ID, Unique")
    need("Account", names.subscription_status, "Picklist or Text(40)")
    if names.account_csm:
        need("Account", names.account_csm, "Lookup(User)")
    problems.extend(_stage_problems(s.won_stage or "", by_obj["Opportunity"].get("stagename") or {}))
    problems.extend(_record_type_problems(loaded, described["Opportunity"].get("recordTypeInfos", [])))
    # The Task key is looked up with SOQL `IN (...)` and written on create: a filterable, writable Text field.
    # Neither External ID nor Unique is needed, since no Task is ever upserted (api-facts.md §12).
    task_field = by_obj["Task"].get(names.task_event_id.lower())
    if task_field is not None and (task_field.get("type") != "string" or not task_field.get("filterable", True)
                                   or not task_field.get("createable", True)):
        problems.append(f"Task.{names.task_event_id} must be a writable Text(255) field (it is "
                        f"{task_field.get('type')}); External ID is recommended, Unique is not needed")
    if problems:
        fields_missing = any(" does not exist in the org" in p or " must be marked External ID" in p for p in problems)
        raise ConfigError(problems, source="Salesforce org setup",
                          hint="Create the fields (README: 'Salesforce fields'), or change salesforce.fields in "
                               "the config." if fields_missing else
                          "Run `stripe-sf discover-config --write`, then sync again.")
    if task_field is None:
        log.warning("Task.%s does not exist: Tasks are created without a key, so a rerun after a crash between "
                    "the write and the state commit, a `dlq retry` or a second backfill can create a Task again. "
                    "Create it as Text(255), External ID recommended (Unique is not needed): then each Task is "
                    "created once and never rewritten.", names.task_event_id)
    elif not (task_field.get("externalId") or task_field.get("unique")):
        # Salesforce indexes a custom field only when it is an External ID or Unique: without an index, the
        # per-batch lookup scans every Task of the org.
        log.warning("Task.%s is not indexed: mark it External ID (Unique is not needed) so that looking Tasks "
                    "up by it stays fast in an org with many Tasks.", names.task_event_id)
    currency = by_obj["Opportunity"].get("currencyisocode")
    currencies = None
    if currency is not None:
        currencies = frozenset(str(p["value"]).upper() for p in currency.get("picklistValues", [])
                               if p.get("active", True) and isinstance(p.get("value"), str))
    return OrgFacts(task_keyed=task_field is not None, currencies=currencies)


def _stage_problems(won_stage: str, stage_field: Mapping[str, Any]) -> list[str]:
    """StageName takes a picklist value, the stage's API name; describe's `label` is only what people
    see, and may differ after an admin renames the stage (api-facts.md §12)."""
    picklist = [p for p in stage_field.get("picklistValues", []) if p.get("active", True)]
    values = [str(p.get("value")) for p in picklist]
    if not values or won_stage in values:
        return []
    by_label = {str(p.get("label")): str(p.get("value")) for p in picklist}
    if won_stage in by_label:
        return [f"salesforce.won_stage {won_stage!r} is the label of the won stage; Salesforce takes its API name, "
                f"{by_label[won_stage]!r} (an earlier stripe-sf stored the label). `stripe-sf discover-config "
                f"--write` repairs sync.yaml"]
    return [f"salesforce.won_stage {won_stage!r} is not an Opportunity stage of this org (API names: "
            f"{', '.join(values)}); `stripe-sf discover-config --write` stores the won stage's API name"]


def _record_type_problems(loaded: LoadedConfig, infos: Sequence[Mapping[str, Any]]) -> list[str]:
    """A record type the integration user may not use fails every Opportunity create (describe's
    `recordTypeInfos[].available`; api-facts.md §12)."""
    rid = loaded.settings.record_type_id()
    if rid is None:
        return []
    name = loaded.settings.salesforce.opportunity_record_type or next(
        (n for n, i in loaded.settings.salesforce.record_types.items() if i == rid), rid)
    info = next((i for i in infos if str(i.get("recordTypeId"))[:15] == rid[:15]), None)
    if info is None or not info.get("active", True):
        return [f"salesforce.opportunity_record_type {name!r} ({rid}) is not an active Opportunity record type "
                "of this org; `stripe-sf discover-config --write` lists the current ones"]
    if not info.get("available"):
        return [f"salesforce.opportunity_record_type {name!r} is not available to the integration user, so every "
                "Opportunity it creates would fail; give the user's profile access to it, or run `stripe-sf "
                "discover-config --write` to choose one it may use"]
    return []


class Pipeline:
    """Applies events to Salesforce and records their outcomes, batch by batch."""

    def __init__(self, loaded: LoadedConfig, state: StateStore, source: StripeSource,
                 salesforce: SalesforceAccess, *, dry_run: bool = False,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 on_batch: Callable[[RunSummary], None] | None = None) -> None:
        self.loaded = loaded
        self.settings = loaded.settings
        self.state = state
        self.source = source
        self.salesforce = salesforce
        self.dry_run = dry_run
        self.clock = clock
        self.sleep = sleep
        self.on_batch = on_batch
        self._org: OrgFacts | None = None
        self._org_described = False  # whether this run described the org itself (not read the cache)
        self._accounts = AccountCache()  # Accounts read in this run: later batches skip their lookups
        won = self.settings.salesforce.won_stage or ""
        self.ctx = rules.RuleContext(won, self.settings.salesforce.fields, self.settings.stripe.dashboard_url)
        self.run_id: int | None = None

    # --- entry points -----------------------------------------------------------------------
    def sync(self, summary: RunSummary, *, since: int | None = None, max_events: int | None = None) -> None:
        """Apply every event after the cursor (or from `since` on the first run)."""
        cursor = self.state.cursor()
        events: Iterable[dict[str, Any]]
        floor: dict[str, str] | None = None  # committed with the batches of a run that starts the history
        if since is not None:
            if since < self.clock() - RETENTION_S:
                day = datetime.fromtimestamp(since, tz=UTC).date().isoformat()
                raise CursorExpiredError(
                    f"--since {day} is past Stripe's 30-day event retention.",
                    hint=f"Run `stripe-sf backfill --since {day}` for the older history, then `stripe-sf sync`.")
            events = self._events_since(since)
            floor = {SYNC_FLOOR_KEY: str(since)}
        elif cursor is not None:
            self.source.check_cursor_age(cursor.created)
            late, events = self._lookback(cursor)
            summary.listed_late += len(late)
            if late:
                log.info("%d events were listed late, behind the cursor: applying them first", len(late))
            # Late events are older than the cursor: applied first (oldest first), without moving it.
            if late and not self._run(late, summary, max_events=max_events, advance_cursor=False):
                return
        elif (handoff := self.state.get_meta(HANDOFF_SINCE_KEY)) is not None:
            # A backfill ran while Stripe had no events at all: start from when it began.
            events = self._events_since(int(handoff))
            floor = {SYNC_FLOOR_KEY: handoff}
        else:
            raise ConfigError(["there is no saved cursor yet"], source="invocation",
                              hint="For the first run, say where to start: `stripe-sf sync --since 2026-11-01` "
                                   "(within the last 30 days), or run `stripe-sf backfill --since DATE` first.")
        self._run(events, summary, max_events=max_events, commit_meta=floor)

    def _lookback(self, cursor: Cursor) -> tuple[list[dict[str, Any]], Iterable[dict[str, Any]]]:
        """(The events behind the cursor whose outcome is not recorded, oldest first; the events after it.)

        Stripe's event list is eventually consistent (api-facts.md §1): an event can become listable after
        newer ones were listed, behind the cursor, where `ending_before` never returns it. So each run re-reads
        the events created `stripe.lookback_seconds` before the cursor's (never before SYNC_FLOOR_KEY) and
        keeps those the ledger has no outcome for; the order guard then decides stale or applied as usual.

        One listing from the window's start, newest first, usually answers both: when the cursor is on its
        first page, the events listed before it are every event after the cursor, so a quiet run still costs
        one call. With more than a page of new events, the window is listed on its own and the new events are
        walked from the cursor, oldest first, as before (holding them all would grow with the backlog), up
        to that first page, which ends the walk.
        """
        lookback = self.settings.stripe.lookback_seconds
        floor = self.state.get_meta(SYNC_FLOOR_KEY)
        start = max(cursor.created - lookback, int(floor) if floor is not None else 0)
        if lookback == 0 or start > cursor.created:
            return [], self.source.events_after(cursor.event_id)
        pages = self.source.event_pages(start)
        first = next(pages, [])
        at = next((i for i, e in enumerate(first) if e.get("id") == cursor.event_id), None)
        if at is not None:
            late = self._unrecorded(itertools.chain([first[at + 1:]], pages))
            return late, list(reversed(first[:at]))
        window = self.source.event_pages(start, until=cursor.created)
        return self._unrecorded(window, behind=cursor.event_id), self._walk_to(cursor, first)

    def _walk_to(self, cursor: Cursor, newest: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The events after the cursor, oldest first, walked until `newest` (a first page, newest first,
        already read) begins, then `newest` itself: its page is not read twice. Without meeting it (the cursor
        sat inside it after all), the walk goes on to the end and `newest` adds nothing."""
        stop = newest[-1].get("id") if newest else None
        for event in self.source.events_after(cursor.event_id):
            if stop is not None and event.get("id") == stop:
                # Events listed since then are newer than `newest` (or late, and the next lookback finds them).
                yield from reversed(newest)
                return
            yield event

    def _unrecorded(self, pages: Iterable[list[dict[str, Any]]], *,
                    behind: str | None = None) -> list[dict[str, Any]]:
        """The events of `pages` (newest first) without a recorded outcome, oldest first. With `behind`, only
        those listed after that event: the ones before it sort after it, and `events_after` returns them.
        Each page is checked against the ledger as it comes, so only what is missing is held."""
        found: list[dict[str, Any]] = []
        for page in pages:
            # An event without an id cannot be matched to its outcome: it was dead-lettered as malformed when
            # the cursor passed it, and re-reading it would dead-letter it again on every run.
            ids = [e["id"] for e in page if isinstance(e.get("id"), str)]
            known = self.state.outcomes_for(ids)
            for event in page:
                eid = event.get("id")
                if eid == behind:
                    found.clear()
                elif isinstance(eid, str) and eid not in known:
                    found.append(event)
        found.reverse()
        return found

    def _events_since(self, since: int) -> Iterator[dict[str, Any]]:
        before = self.source.oldest_event_since(since)
        if before is not None:
            yield from self.source.events_after(before[0])
            return
        first = self.source.first_event_since(since)
        if first is None:
            return
        yield first
        yield from self.source.events_after(first["id"])

    def retry(self, events: Sequence[dict[str, Any]], summary: RunSummary) -> None:
        """Send dead-lettered events through the same pipeline again (the cursor does not move)."""
        ordered = sorted(events, key=lambda e: (int(e.get("created") or 0)))
        batch = self.settings.sync.batch_size
        for i in range(0, len(ordered), batch):
            self._batch(ordered[i:i + batch], summary, advance_cursor=False, retried=True)

    def apply(self, events: Sequence[dict[str, Any]], summary: RunSummary, *, bulk: bool = False,
              commit_meta: dict[str, str] | None = None) -> bool:
        """Apply a batch of (synthetic) events without moving the cursor; False when the budget is spent."""
        return self._batch(events, summary, advance_cursor=False, bulk=bulk, commit_meta=commit_meta)

    def _run(self, events: Iterable[dict[str, Any]], summary: RunSummary, *, max_events: int | None,
             advance_cursor: bool = True, commit_meta: dict[str, str] | None = None) -> bool:
        """Apply `events` batch by batch; False when the run must stop (API budget spent, max_events read)."""
        if max_events is not None and summary.events_read >= max_events:
            return False
        batch: list[dict[str, Any] | HeldEvent] = []
        size = self.settings.sync.batch_size
        for event in events:
            batch.append(HeldEvent.of(event))
            if max_events is not None and summary.events_read + len(batch) >= max_events:
                self._batch(batch, summary, advance_cursor=advance_cursor, commit_meta=commit_meta)
                return False
            if len(batch) >= size:
                if not self._batch(batch, summary, advance_cursor=advance_cursor, commit_meta=commit_meta):
                    return False
                batch = []
        if batch:
            return self._batch(batch, summary, advance_cursor=advance_cursor, commit_meta=commit_meta)
        return True

    # --- one batch --------------------------------------------------------------------------
    def _batch(self, events: Sequence[dict[str, Any] | HeldEvent], summary: RunSummary, *, advance_cursor: bool,
               retried: bool = False, bulk: bool = False, commit_meta: dict[str, str] | None = None) -> bool:
        """Process one batch; False when the API budget says stop."""
        gw = self.salesforce.connected
        if gw is not None and gw.over_budget():
            summary.stopped_early = (f"Salesforce API usage reached {gw.usage.used}/{gw.usage.total}, the "
                                     f"configured budget of {self.settings.salesforce.api_budget:.0%}")
            return False
        summary.events_read += len(events)
        outcomes: list[Outcome] = []
        versions: dict[str, tuple[int, str]] = {}
        known = self.state.outcomes_for([e.get("id") for e in events if isinstance(e.get("id"), str)])
        parsed: list[tuple[Raw, model.Change | CustomerChange]] = []
        for raw in events:
            eid = raw.get("id") if isinstance(raw.get("id"), str) else None
            if eid and eid in known and not (retried and known[eid] == "dead_letter"):
                summary.skipped_duplicate += 1
                continue
            try:
                change = raw.parse() if isinstance(raw, HeldEvent) else model.parse_event(raw)
            except MalformedEvent as exc:
                outcomes.append(_dead(raw, exc.reason, exc.code))
                continue
            except Exception as exc:  # a poison event must never stop every future run
                outcomes.append(_unexpected(raw, exc))
                continue
            if isinstance(change, model.Unsupported):
                outcomes.append(Outcome(change.meta.event_id, change.meta.event_type, change.meta.created,
                                        "ignored", reason=change.reason))
                continue
            parsed.append((raw, change))

        # Order guard (invariant 3): an event older than the newest applied to its object is stale.
        stored = self.state.versions_for(c.object_id for _, c in parsed)
        fresh: list[tuple[Raw, model.Change]] = []
        customers: list[CustomerChange] = []
        for raw, change in parsed:
            newest = stored.get(change.object_id)
            if newest is not None and change.meta.created < newest:
                outcomes.append(Outcome(change.meta.event_id, change.meta.event_type, change.meta.created, "stale",
                                        object_id=change.object_id,
                                        reason=f"{change.object_id} already has a newer event applied"))
                continue
            if isinstance(change, CustomerChange):
                customers.append(change)
                outcomes.append(Outcome(change.meta.event_id, change.meta.event_type, change.meta.created,
                                        "ignored", object_id=change.object_id,
                                        reason="customer details kept for resolving its other events"))
                versions[change.object_id] = (change.meta.created, change.meta.event_id)
                continue
            fresh.append((raw, change))
        self._prefetch(fresh, customers)

        planned: list[tuple[Raw, model.Change, rules.Plan]] = []
        for raw, change in fresh:
            try:
                change = self._hydrate(raw, change)
                plan = rules.plan(self.ctx, change)
                for warning in plan.warnings:
                    log.warning("%s (%s): %s", change.meta.event_id, change.meta.event_type, warning)
            except MalformedEvent as exc:
                outcomes.append(_dead(raw, exc.reason, exc.code))
                continue
            except StripeSfError:
                raise  # fatal: stop the run, commit nothing of this batch
            except Exception as exc:  # a poison event must never stop every future run
                outcomes.append(_unexpected(raw, exc))
                continue
            if plan.ignored or not plan.intents:
                outcomes.append(Outcome(change.meta.event_id, change.meta.event_type, change.meta.created,
                                        "ignored", object_id=change.object_id, reason=plan.ignored))
                versions[change.object_id] = (change.meta.created, change.meta.event_id)
                continue
            planned.append((raw, change, plan))

        if not self.dry_run:  # customers read this batch: later runs need not read them again
            self.state.remember_customers(self.source.take_fresh_customers())
        if planned:
            outcomes.extend(self._write(planned, versions, summary, bulk=bulk))

        for o in outcomes:
            if o.kind == "applied":
                summary.applied += 1
            elif o.kind == "stale":
                summary.skipped_stale += 1
            elif o.kind == "ignored":
                summary.ignored += 1
            else:
                summary.dead_lettered += 1
                log.warning("dead-lettered %s (%s): %s %s", o.event_id, o.event_type, o.code, o.reason)
        new_cursor = None
        if advance_cursor and events:
            last = events[-1]
            if isinstance(last.get("id"), str) and isinstance(last.get("created"), int):
                current = self.state.cursor()
                if current is None or last["created"] >= current.created:
                    new_cursor = Cursor(last["id"], last["created"])
        if self.dry_run:
            return True
        self.state.commit_batch(outcomes, cursor=new_cursor, versions=versions, run_id=self.run_id,
                                retried=retried, meta=commit_meta)
        if new_cursor:
            summary.cursor = new_cursor.event_id
        if self.on_batch:
            self.on_batch(summary)
        return True

    def _prefetch(self, fresh: Sequence[tuple[Raw, model.Change]],
                  customers: Sequence[CustomerChange]) -> None:
        """Gather, for a whole batch, what its events' payloads lack, so hydration costs a few calls per
        batch instead of one per event: customer details from state (kept current by customer.* events),
        and the batch's invoice payments in one listing."""
        self.source.forget()
        known = [CachedCustomer(c.customer_id, c.metadata, c.name, c.deleted, c.meta.created) for c in customers]
        for _, change in fresh:  # an expanded customer (backfill's lists) is as good as a customer event
            cust_meta = getattr(change, "customer_metadata", None)
            customer_id = getattr(change, "customer_id", None)
            if cust_meta is not None and customer_id:
                known.append(CachedCustomer(customer_id, cust_meta, getattr(change, "customer_name", None), False,
                                            change.meta.created))
        if known and not self.dry_run:
            self.state.remember_customers(known)
        wanted = {c.customer_id for _, c in fresh if _needs_customer(c)}
        wanted -= {c for c in wanted if self.source.knows_customer(c)}
        for cached in [*self.state.customers_for(wanted).values(), *known]:
            self.source.remember_customer(cached)  # the batch's own come last: newer than what state held

        if self.source.api_version < BASIL:
            return  # older payloads name the invoice and PaymentIntent themselves
        payments = [(raw, c) for raw, c in fresh if isinstance(c, PaymentChange) and not c.invoice_known]
        failures = [c for _, c in fresh if isinstance(c, InvoiceFailureChange) and c.failure_code is None]
        if not payments and not failures:
            return
        # A PaymentIntent is created before it succeeds: the window starts at its own `created`.
        starts = [c.meta.object_created or c.meta.created for _, c in payments] + [c.meta.created for c in failures]
        ends = [c.meta.created for _, c in payments] + [c.meta.created for c in failures]
        self.source.prefetch_invoice_payments(
            since=min(starts) - INVOICE_PAYMENT_MARGIN_S, until=max(ends) + INVOICE_PAYMENT_MARGIN_S,
            payment_intents=[c.payment_intent_id for _, c in payments], invoices=[c.invoice_id for c in failures])

    def _hydrate(self, raw: Raw, change: model.Change) -> model.Change:
        """Fill in what the payload lacks (customer metadata, invoice links, a failed invoice's failure
        code), from the batch's prefetch where it has it, else with a read of its own."""
        customer_id = getattr(change, "customer_id", None)
        if customer_id and _needs_customer(change):
            cust = self.source.customer(customer_id)
            change = dataclasses.replace(change, customer_metadata=dict(cust.metadata) if cust else {},
                                         customer_name=cust.name if cust else None)
        if isinstance(change, SubscriptionChange):
            foreign = model.foreign_price_ids(change)
            if foreign:  # billed in one of its Prices' currency_options: read them (once per run)
                change = model.in_billed_currency(
                    change, {price_id: self.source.price_currency_options(price_id) for price_id in foreign})
        if isinstance(change, PaymentChange) and not change.invoice_known:
            change = dataclasses.replace(change, invoice_id=self.source.invoice_of_payment_intent(
                change.payment_intent_id), invoice_known=True)
        if isinstance(change, InvoiceFailureChange) and change.failure_code is None:
            payments = self.source.prefetched_payments(change.invoice_id)
            inv: Mapping[str, Any] | None
            if payments and not _has_charge_payment(payments):
                obj = _get_obj(raw)
                inv = {**obj, "payments": {"object": "list", "data": payments}}
            else:
                inv = self.source.failed_invoice(change.invoice_id)
            if inv:
                try:
                    hydrated = model.parse_invoice_failure({"data": {"object": inv}}, change.meta)
                    change = dataclasses.replace(change, failure_code=hydrated.failure_code,
                                                 payment_intent_id=change.payment_intent_id
                                                 or hydrated.payment_intent_id)
                except MalformedEvent:
                    pass  # the event's own payload is authoritative; the code stays unknown
        return change

    def _write_bulk(self, gw: SalesforceGateway, ops: Sequence[SfOp]) -> list[Any]:
        return BulkWriter(gw, sleep=self.sleep).write(ops)

    def _org_facts(self, gw: SalesforceGateway, *, refresh: bool = False) -> OrgFacts:
        if self._org is not None and not refresh:
            return self._org
        fields = self.settings.salesforce.fields.model_dump_json()
        cache_key = f"{self.settings.salesforce.won_stage}|{self.settings.record_type_id()}|{fields}"
        cached = None if refresh else self.state.get_meta(ORG_CACHE_KEY)
        if cached:
            data = json.loads(cached)
            currencies = data.get("currencies", False)  # False: cached before currencies were learnt
            known = currencies is None or (isinstance(currencies, list)
                                           and all(isinstance(c, str) for c in currencies))
            # An older version's entry (no task_keyed, no currencies) is read again from the org.
            if (known and "task_keyed" in data and data.get("key") == cache_key
                    and self.clock() - data.get("at", 0) < ORG_CACHE_TTL_S):
                self._org = OrgFacts(task_keyed=bool(data["task_keyed"]),
                                     currencies=None if currencies is None else frozenset(currencies))
                return self._org
        self._org = check_org(gw, self.loaded)
        self._org_described = True
        if not self.dry_run:
            currencies = None if self._org.currencies is None else sorted(self._org.currencies)
            self.state.set_meta(ORG_CACHE_KEY, json.dumps({"key": cache_key, "at": self.clock(),
                                                           "task_keyed": self._org.task_keyed,
                                                           "currencies": currencies}))
        return self._org

    def _write(self, planned: Sequence[tuple[dict[str, Any], model.Change, rules.Plan]],
               versions: dict[str, tuple[int, str]], summary: RunSummary, *, bulk: bool = False) -> list[Outcome]:
        gw = self.salesforce.get()
        org = self._org_facts(gw)
        if org.currencies is not None and not self._org_described and _currencies(planned) - org.currencies:
            # The cached describe may predate a currency the admin has since activated (the dead letter's
            # advice): describe again, once per run, before dead-lettering on stale facts.
            org = self._org_facts(gw, refresh=True)
        settings = WriteSettings(self.settings.salesforce.fields, self.settings.record_type_id(), org.task_keyed,
                                 coalesce=self.settings.sync.coalesce, currencies=org.currencies)
        all_intents = [it for _, _, p in planned for it in p.intents]
        found = find(gw, settings.names, all_intents, self._accounts, task_keyed=org.task_keyed)
        mat = Materializer(found, settings)
        failures: dict[str, tuple[str, str]] = {}
        for _, change, plan in planned:
            try:
                err = mat.add_event(change.meta.event_id, plan.intents)
            except Exception as exc:  # never let one event's data stop the batch
                log.exception("unexpected error resolving %s", change.meta.event_id)
                failures[change.meta.event_id] = ("UNEXPECTED", f"{type(exc).__name__} while resolving; "
                                                  "report it with `stripe-sf dlq list --json` output")
                continue
            if err is not None:
                failures[change.meta.event_id] = (err.code, err.reason)
        ops = mat.result()
        if self.dry_run:
            summary.planned_writes.extend(_describe_op(op) for op in ops)
            results = []
        elif bulk:
            results = self._write_bulk(gw, ops)
            summary.records_written += sum(1 for r in results if r.success)
        else:
            results = CollectionsWriter(gw, workers=self.settings.salesforce.write_concurrency,
                                        sleep=self.sleep).write(ops)
            summary.records_written += sum(1 for r in results if r.success)
        if not self.dry_run:
            for op, res in zip(ops, results, strict=True):
                if res.success or _task_exists(op, res, settings):
                    if op.sobject == "Account" and op.kind == "update":
                        self._accounts.wrote(op.key, op.fields, settings.names)
                    continue
                for ev in op.events:
                    reason = f"{op.label}: {res.code} {res.message or ''}".strip()
                    failures.setdefault(ev, (res.code or "UNKNOWN", reason))
        out: list[Outcome] = []
        for raw, change, _ in planned:
            eid = change.meta.event_id
            if eid in failures:
                code, reason = failures[eid]
                out.append(_dead(raw, reason, code, object_id=change.object_id))
            else:
                out.append(Outcome(eid, change.meta.event_type, change.meta.created, "applied",
                                   object_id=change.object_id))
                prev = versions.get(change.object_id)
                if prev is None or prev[0] <= change.meta.created:
                    versions[change.object_id] = (change.meta.created, eid)
        return out


def _task_exists(op: SfOp, res: Any, settings: WriteSettings) -> bool:
    """A keyed Task create refused because a Task with that key exists (a Unique key field says so with
    DUPLICATE_VALUE): someone made it after the lookup, or it was out of the integration user's sight. The
    Task exists, so the event's Task is done, and that Task is left as it is."""
    key_field = settings.names.task_event_id
    return (op.sobject == "Task" and op.kind == "create" and settings.task_keyed and res.code == "DUPLICATE_VALUE"
            and key_field.lower() in (res.message or "").lower())


def _unexpected(raw: Raw, exc: Exception) -> Outcome:
    log.error("unexpected %s on event %s: dead-lettered so the run goes on", type(exc).__name__,
              raw.get("id"), exc_info=log.isEnabledFor(logging.DEBUG))
    return _dead(raw, f"{type(exc).__name__} while applying the rules: this is a stripe-sf bug; report it with "
                      "`stripe-sf dlq list --json` output", "UNEXPECTED")


def _dead(raw: Raw, reason: str, code: str, object_id: str | None = None) -> Outcome:
    eid = raw.get("id") if isinstance(raw.get("id"), str) else None
    payload = raw.text if isinstance(raw, HeldEvent) else json.dumps(raw, default=str, sort_keys=True)
    if eid is None:
        eid = "malformed_" + hashlib.sha256(payload.encode()).hexdigest()[:24]
    created = raw.get("created") if isinstance(raw.get("created"), int) else 0
    etype = raw.get("type") if isinstance(raw.get("type"), str) else "unknown"
    return Outcome(eid, etype, created, "dead_letter", object_id=object_id, reason=reason[:1000], code=code,
                   payload=payload)


def _describe_op(op: SfOp) -> dict[str, Any]:
    return {"action": op.kind, "sobject": op.sobject, "key": op.key, "external_id_field": op.ext_field,
            "fields": {k: (str(v) if not isinstance(v, str | int | bool | type(None)) else v)
                       for k, v in op.fields.items()},
            "events": list(op.events)}


def _currencies(planned: Sequence[tuple[Raw, model.Change, rules.Plan]]) -> set[str]:
    """The currencies (upper-case ISO codes) of a batch's Opportunity amounts."""
    return {it.currency.upper() for _, _, plan in planned for it in plan.intents
            if isinstance(it, rules.OpportunityIntent) and it.currency}


def _needs_customer(change: model.Change) -> bool:
    """Whether a rule needs the customer's metadata: the object's own metadata does not name every
    Salesforce Id the rules will use (the Opportunity and Account, and the Contact of a Task it raises)."""
    meta = getattr(change, "metadata", {}) or {}
    if not getattr(change, "customer_id", None) or getattr(change, "customer_metadata", None) is not None:
        return False
    if not (meta.get("salesforce_opportunity_id") and meta.get("salesforce_account_id")):
        return True
    return _raises_task(change) and not meta.get("salesforce_contact_id")


def _raises_task(change: model.Change) -> bool:
    """Whether the change's rule creates a Task (whose WhoId may come from the customer's metadata)."""
    if isinstance(change, InvoiceFailureChange):
        return True
    if isinstance(change, model.SubscriptionChange) and not change.meta.backfill:
        kind = change.meta.event_type.rsplit(".", 1)[-1]
        return kind == "deleted" or (kind == "updated" and (
            change.cancel_turned_on or (change.previous_status is not None
                                        and change.previous_status != change.status)))
    return False


def _get_obj(raw: Raw) -> dict[str, Any]:
    data = (raw.load() if isinstance(raw, HeldEvent) else raw).get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    return dict(obj) if isinstance(obj, Mapping) else {}


def _has_charge_payment(payments: Sequence[Mapping[str, Any]]) -> bool:
    """A payment of type charge needs its Charge read for the failure code (failed_invoice does that)."""
    return any(isinstance(p.get("payment"), Mapping) and p["payment"].get("type") == "charge" for p in payments)
