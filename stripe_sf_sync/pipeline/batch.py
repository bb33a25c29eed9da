"""The one batch step every source goes through: parse → guard → hydrate → plan → resolve → write.

It reads state through the ports and commits nothing: it returns a BatchResult, and the run commits it
by the batch's own policy (cursor, checkpoint, dead letters).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stripe_sf_sync import model, rules
from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.errors import StripeSfError
from stripe_sf_sync.logs import fields
from stripe_sf_sync.model import CachedCustomer, CustomerChange, MalformedEvent
from stripe_sf_sync.pipeline.events import HeldEvent, dead_letter, outcome_id, unexpected
from stripe_sf_sync.pipeline.materialize import Materializer, WriteSettings
from stripe_sf_sync.pipeline.ports import Ports
from stripe_sf_sync.pipeline.stop import Stop
from stripe_sf_sync.records import Lookups, SfOp, WriteResult
from stripe_sf_sync.state import Outcome

log = logging.getLogger("stripe_sf_sync")

Versions = dict[str, tuple[int, str]]  # Stripe object id -> (newest applied event time, its id)
Planned = list[tuple[HeldEvent, model.Change, rules.Plan]]


@dataclass(frozen=True)
class BatchSettings:
    """The configuration the batch step reads."""

    rules: rules.RuleContext
    names: FieldNames
    record_type_id: str | None
    coalesce: bool = True
    # When Tasks were first keyed by what they are about in this state (issue 19): only events older than
    # that can have a Task under the event-id key of earlier versions. None: look that key up for every event.
    legacy_task_keys_before: int | None = None
    currency_mismatch: str = "dead_letter"  # salesforce.currency_mismatch


@dataclass
class BatchResult:
    """What one batch did: every event's outcome, and what state should keep of it."""

    events_read: int = 0
    skipped_duplicate: int = 0
    records_written: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    versions: Versions = field(default_factory=dict)
    customers: list[CachedCustomer] = field(default_factory=list)
    last_event: tuple[str, int] | None = None  # (id, created) of the batch's last event, for the cursor
    # A stop cut the batch short: only its first `cut` events have outcomes (and are to be committed).
    cut: int | None = None
    duplicates: list[str] = field(default_factory=list, repr=False)  # ids skipped as already recorded

    def count(self, kind: str) -> int:
        """Outcomes of one kind (applied, stale, ignored, dead_letter)."""
        return sum(1 for o in self.outcomes if o.kind == kind)


def apply_batch(events: Sequence[HeldEvent], ports: Ports, settings: BatchSettings, *, retried: bool = False,
                bulk: bool = False, unordered: bool = False, stop: Stop | None = None,
                note: Callable[[str], None] = lambda step: None) -> BatchResult:
    """Apply one batch of events to Salesforce through `ports`; commit nothing.

    `retried`: dead letters sent again, which their recorded outcome must not skip. `bulk`: write through
    Bulk API 2.0 (backfill above its threshold). `unordered`: Stripe's order of the events is not known
    (webhook deliveries, events listed late, dead letters sent again): events of the same second as another
    of their object are applied with the object's current state (`_guard`). `stop` is asked between the
    events' hydration calls (one Stripe call per event at worst: a chunk of failed invoices took minutes): once
    it is overdue (stop.py), the events hydrated so far are written and the rest dropped, and `result.cut` says
    how many events the result covers; once a stop is asked for, the writes go through sObject Collections, not
    a Bulk API job (which polls for seconds to minutes). `note(step)` is told what the step is doing (the
    heartbeat's "now ...").
    """
    last = events[-1] if events else None
    result = BatchResult(events_read=len(events),
                         last_event=(last.id, last.created) if last and last.id and last.created is not None else None)
    parsed = _parse(events, ports, result, retried=retried)
    fresh, customer_changes = _guard(parsed, ports, result, unordered=unordered)
    note(f"reading from Stripe what {_events(len(fresh))} of a batch of {len(events):,} need")
    result.customers.extend(ports.hydrator.prepare(fresh, customer_changes))
    planned, cut_at = _plan(fresh, ports, settings, result, stop.overdue if stop else lambda: False, note)
    if cut_at is not None:
        _cut(result, events, next(i for i, e in enumerate(events) if e is cut_at))
    bulk = bulk and not (stop is not None and stop.requested)
    result.customers.extend(ports.hydrator.fresh_customers())
    if planned:
        note(f"writing the records of {_events(len(planned))} to Salesforce{' (Bulk API 2.0)' if bulk else ''}")
        _write(planned, ports, settings, result, bulk=bulk)
    verb = "dead-lettered" if ports.writer.sends else "would dead-letter"  # a dry run's writer sends nothing
    for o in result.outcomes:
        if o.kind == "dead_letter":
            log.warning("%s %s (%s): %s %s", verb, o.event_id, o.event_type, o.code, o.reason,
                        extra=fields(kind="dead_letter", event_id=o.event_id, event_type=o.event_type, code=o.code))
    return result


def _events(n: int) -> str:
    return f"{n:,} event" if n == 1 else f"{n:,} events"


def _cut(result: BatchResult, events: Sequence[HeldEvent], keep: int) -> None:
    """Keep only what the first `keep` events did: the rest are read again by the next run, as if never read."""
    kept = {outcome_id(e) for e in events[:keep]}
    result.cut = result.events_read = keep
    last = events[keep - 1] if keep else None
    result.last_event = (last.id, last.created) if last and last.id and last.created is not None else None
    result.outcomes = [o for o in result.outcomes if o.event_id in kept]
    result.versions = {k: v for k, v in result.versions.items() if v[1] in kept}
    result.skipped_duplicate = sum(1 for eid in result.duplicates if eid in kept)


def _parse(events: Sequence[HeldEvent], ports: Ports, result: BatchResult, *,
           retried: bool) -> list[tuple[HeldEvent, model.Change | CustomerChange]]:
    """Drop events already recorded; parse the rest (a malformed one is dead-lettered)."""
    known = ports.ledger.outcomes_for([e.id for e in events if e.id])
    parsed: list[tuple[HeldEvent, model.Change | CustomerChange]] = []
    for held in events:
        if held.id and held.id in known and not (retried and known[held.id] == "dead_letter"):
            result.skipped_duplicate += 1
            result.duplicates.append(held.id)
            continue
        try:
            change = held.parse()
        except MalformedEvent as exc:
            result.outcomes.append(dead_letter(held, exc.reason, exc.code))
            continue
        except Exception as exc:  # a poison event must never stop every future run
            result.outcomes.append(unexpected(held, exc))
            continue
        if isinstance(change, model.Unsupported):
            result.outcomes.append(_outcome(change, "ignored", change.reason, object_id=False))
            continue
        parsed.append((held, change))
    return parsed


def _guard(parsed: Sequence[tuple[HeldEvent, model.Change | CustomerChange]], ports: Ports,
           result: BatchResult, *, unordered: bool = False) -> tuple[list[tuple[HeldEvent, model.Change]],
                                                                     list[CustomerChange]]:
    """The order guard: an event older than the newest applied to its object is stale. Customer events
    need no write: their details are kept for resolving the customer's other events.

    Of two events of one object in the same second, the newer by Stripe's list order wins: a listing's
    order is the batch's, and a later batch's events come after an earlier one's. Where the order is not
    known (`unordered`), such an event is applied with the object's current state, read once per object and
    batch (Stripe: "order is not guaranteed", docs.stripe.com/webhooks).
    """
    stored = ports.ledger.versions_for(c.object_id for _, c in parsed)
    seconds = Counter((c.object_id, c.meta.created) for _, c in parsed)
    fresh: list[tuple[HeldEvent, model.Change]] = []
    customers: list[CustomerChange] = []
    for held, change in parsed:
        newest = stored.get(change.object_id)
        if newest is not None and change.meta.created < newest:
            result.outcomes.append(_outcome(change, "stale", f"{change.object_id} already has a newer event applied"))
        elif isinstance(change, CustomerChange):
            customers.append(change)
            result.outcomes.append(_outcome(change, "ignored", "customer details kept for resolving its other events"))
            result.versions[change.object_id] = (change.meta.created, change.meta.event_id)
        elif unordered and (newest == change.meta.created or seconds[(change.object_id, change.meta.created)] > 1):
            fresh.append((held, ports.hydrator.current_state(held, change)))
        else:
            fresh.append((held, change))
    return fresh, customers


def _plan(fresh: Sequence[tuple[HeldEvent, model.Change]], ports: Ports, settings: BatchSettings,
          result: BatchResult, stopping: Callable[[], bool],
          note: Callable[[str], None]) -> tuple[Planned, HeldEvent | None]:
    """Hydrate each change and apply the rules; a change that needs no write is recorded as ignored. Returns
    the plan, and the first event left unplanned when `stopping()` said to stop (None when all were)."""
    planned: Planned = []
    said: set[str] = set()  # a warning about a subscription or customer (a value left alone) is said once a batch
    for done, (held, change) in enumerate(fresh):
        if stopping():
            return planned, held
        if done % 50 == 0 and done:
            note(f"reading from Stripe what each event needs: {done:,} of {len(fresh):,} events done")
        try:
            change = ports.hydrator.hydrate(held, change)
            plan = rules.plan(settings.rules, change)
        except MalformedEvent as exc:
            result.outcomes.append(dead_letter(held, exc.reason, exc.code))
            continue
        except StripeSfError:
            raise  # fatal: stop the run, commit nothing of this batch
        except Exception as exc:  # a poison event must never stop every future run
            result.outcomes.append(unexpected(held, exc))
            continue
        for warning in plan.warnings:
            if warning in said:
                continue
            said.add(warning)
            log.warning("%s (%s): %s", change.meta.event_id, change.meta.event_type, warning,
                        extra=fields(kind="rule_warning", event_id=change.meta.event_id,
                                     event_type=change.meta.event_type))
        if plan.ignored or not plan.intents:
            result.outcomes.append(_outcome(change, "ignored", plan.ignored))
            result.versions[change.object_id] = (change.meta.created, change.meta.event_id)
            continue
        planned.append((held, change, plan))
    return planned, None


def _write(planned: Planned, ports: Ports, settings: BatchSettings, result: BatchResult, *, bulk: bool) -> None:
    """Resolve the planned intents against Salesforce, write them, and record each event's outcome."""
    write_settings = _write_settings(planned, ports, settings)
    planned, found = _find(planned, ports, settings, result, task_keyed=write_settings.task_keyed)
    materializer = Materializer(found, write_settings)
    failures = _materialize(planned, materializer)
    _log_no_opportunity(materializer.no_opportunity, failures, settings.names)
    ops = materializer.result()
    writer = ports.bulk_writer if bulk else ports.writer
    results = writer.write(ops)
    if writer.sends:
        result.records_written += sum(1 for r in results if r.success)
    failures.update({ev: f for ev, f in _failed_writes(ops, results, write_settings, ports).items()
                     if ev not in failures})
    for held, change, _ in planned:
        eid = change.meta.event_id
        if eid in failures:
            code, reason = failures[eid]
            result.outcomes.append(dead_letter(held, reason, code, object_id=change.object_id))
            continue
        result.outcomes.append(_outcome(change, "applied", None))
        prev = result.versions.get(change.object_id)
        if prev is None or prev[0] <= change.meta.created:
            result.versions[change.object_id] = (change.meta.created, eid)


def _log_no_opportunity(unmatched: dict[str, str], failures: dict[str, tuple[str, str]], names: FieldNames) -> None:
    """One line per subscription whose plan changed but that no Opportunity tracks: its amounts are not
    written, the rest of its events applies."""
    events: dict[str, list[str]] = {}
    for event_id, subscription_id in unmatched.items():
        if event_id not in failures:
            events.setdefault(subscription_id, []).append(event_id)
    for subscription_id, ids in events.items():
        n = len(ids)
        log.warning("%s changed plan (%d event%s, last %s) but no Opportunity has %s = %s: its Amount, MRR and ARR "
                    "were not written; the rest of the event%s applied. Create the Opportunity, or run `stripe-sf "
                    "backfill`; `stripe-sf reconcile` lists it meanwhile", subscription_id, n, "" if n == 1 else "s",
                    ids[-1], names.subscription_id, subscription_id, "" if n == 1 else "s",
                    extra=fields(kind="no_opportunity", subscription_id=subscription_id, event_id=ids[-1]))


def _find(planned: Planned, ports: Ports, settings: BatchSettings, result: BatchResult, *,
          task_keyed: bool) -> tuple[Planned, Lookups]:
    """The batch's lookups. A change whose own metadata names its Opportunity was planned without its
    customer (hydrate.needs_customer): when that Opportunity does not exist or has no Account, the customer's
    metadata is next in precedence, so the customer is read now, the change planned again, and the lookups
    made again (one more lookup call, for such batches only)."""
    intents = [it for _, _, plan in planned for it in plan.intents]
    legacy = _legacy_events(planned, settings.legacy_task_keys_before)
    found = ports.lookup.find(settings.names, intents, task_keyed=task_keyed, legacy_events=legacy)
    late = {i for i, (_, change, plan) in enumerate(planned) if _customer_still_needed(change, plan, found)}
    if not late:
        return planned, found
    again: Planned = []
    for i, (held, change, plan) in enumerate(planned):
        if i in late:
            change = ports.hydrator.hydrate(held, change, with_customer=True)
            replanned = rules.plan(settings.rules, change)
            plan = replanned if replanned.intents else plan
        again.append((held, change, plan))
    result.customers.extend(ports.hydrator.fresh_customers())
    intents = [it for _, _, plan in again for it in plan.intents]
    return again, ports.lookup.find(settings.names, intents, task_keyed=task_keyed, legacy_events=legacy)


def _legacy_events(planned: Planned, before: int | None) -> set[str] | None:
    """The events whose Tasks an earlier version may have made under their event-id key: those older than
    `before` (a backfill's, by its object's own time: its events are made now). None: every event."""
    if before is None:
        return None
    return {c.meta.event_id for _, c, _ in planned
            if ((c.meta.object_created or c.meta.created) if c.meta.backfill else c.meta.created) < before}


def _customer_still_needed(change: model.Change, plan: rules.Plan, found: Lookups) -> bool:
    """Whether a change planned without its customer names an Opportunity whose Account was not found."""
    if not getattr(change, "customer_id", None) or getattr(change, "customer_metadata", None) is not None:
        return False
    return any(it.account.opportunity_id and found.account_of_opportunity(it.account.opportunity_id) is None
               for it in plan.intents)


def _write_settings(planned: Planned, ports: Ports, settings: BatchSettings) -> WriteSettings:
    org = ports.lookup.org_facts()
    currencies = {it.currency.upper() for _, _, plan in planned for it in plan.intents
                  if isinstance(it, rules.OpportunityIntent) and it.currency}
    if not ports.lookup.described and any(org.holds(c) is False for c in currencies):
        # The cached describe may predate a currency the admin has since activated, or multiple currencies
        # turned on (the dead letter's advice): describe again, once per run, before dead-lettering on stale facts.
        org = ports.lookup.org_facts(refresh=True)
    return WriteSettings(settings.names, settings.record_type_id, org.task_keyed, coalesce=settings.coalesce,
                         currencies=org.currencies, org_currency=org.currency,
                         write_as_is=settings.currency_mismatch == "write_as_is")


def _materialize(planned: Planned, materializer: Materializer) -> dict[str, tuple[str, str]]:
    """Turn each event's intents into writes; (code, reason) of the events that cannot be."""
    failures: dict[str, tuple[str, str]] = {}
    for _, change, plan in planned:
        try:
            err = materializer.add_event(change.meta.event_id, plan.intents)
        except Exception as exc:  # never let one event's data stop the batch
            log.exception("unexpected error resolving %s", change.meta.event_id)
            failures[change.meta.event_id] = ("UNEXPECTED", f"{type(exc).__name__} while resolving; "
                                              "report it with `stripe-sf dlq list --json` output")
            continue
        if err is not None:
            failures[change.meta.event_id] = (err.code, err.reason)
    return failures


def _failed_writes(ops: Sequence[SfOp], results: Sequence[WriteResult], write_settings: WriteSettings,
                   ports: Ports) -> dict[str, tuple[str, str]]:
    """(code, reason) for every event whose write failed; successful Account updates are remembered."""
    failures: dict[str, tuple[str, str]] = {}
    for op, res in zip(ops, results, strict=True):
        if res.success or _task_exists(op, res, write_settings):
            if op.sobject == "Account" and op.kind == "update":
                ports.lookup.wrote_account(op.key, op.fields, write_settings.names)
            continue
        for ev in op.events:
            failures.setdefault(ev, (res.code or "UNKNOWN", f"{op.label}: {res.code} {res.message or ''}".strip()))
    return failures


def _task_exists(op: SfOp, res: WriteResult, settings: WriteSettings) -> bool:
    """A keyed Task create refused because a Task with that key exists (a Unique key field says so with
    DUPLICATE_VALUE): someone made it after the lookup, or it was out of the integration user's sight. The
    Task exists, so the event's Task is done, and that Task is left as it is."""
    key_field = settings.names.task_event_id
    return (op.sobject == "Task" and op.kind == "create" and settings.task_keyed and res.code == "DUPLICATE_VALUE"
            and key_field.lower() in (res.message or "").lower())


def _outcome(change: Any, kind: Any, reason: str | None, *, object_id: bool = True) -> Outcome:
    meta = change.meta
    return Outcome(meta.event_id, meta.event_type, meta.created, kind,
                   object_id=change.object_id if object_id else None, reason=reason)
