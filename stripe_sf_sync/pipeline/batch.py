"""The one batch step every source goes through: plan (parse → guard → hydrate → plan: plan.py), then
resolve → write.

It reads state through the ports and commits nothing: it returns a BatchResult, and the run commits it
by the batch's own policy (cursor, checkpoint, dead letters).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stripe_sf_sync import model, rules
from stripe_sf_sync.config import FieldNames, IdentitySettings
from stripe_sf_sync.logs import fields
from stripe_sf_sync.pipeline.create import create_missing
from stripe_sf_sync.pipeline.events import HeldEvent, dead_letter, outcome_id
from stripe_sf_sync.pipeline.materialize import Materializer, WriteSettings
from stripe_sf_sync.pipeline.plan import Planned, events_text, plan_change, plan_events
from stripe_sf_sync.pipeline.ports import Ports
from stripe_sf_sync.pipeline.result import BatchResult, outcome
from stripe_sf_sync.pipeline.stop import Stop
from stripe_sf_sync.records import FieldReads, Lookups, SfOp, WriteResult

log = logging.getLogger("stripe_sf_sync")

__all__ = ["BatchResult", "BatchSettings", "apply_batch"]  # BatchResult: from result.py


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
    identity: IdentitySettings = field(default_factory=IdentitySettings)  # identity: creation (create.py)


def apply_batch(events: Sequence[HeldEvent], ports: Ports, settings: BatchSettings, *, retried: bool = False,
                bulk: bool = False, unordered: bool = False, stop: Stop | None = None,
                note: Callable[[str], None] = lambda step: None) -> BatchResult:
    """Apply one batch of events to Salesforce through `ports`; commit nothing.

    `retried`: dead letters sent again, which their recorded outcome must not skip. `bulk`: write through
    Bulk API 2.0 (backfill above its threshold). `unordered`: Stripe's order of the events is not known
    (webhook deliveries, events listed late, dead letters sent again): events of the same second as another
    of their object are applied with the object's current state (plan.py's `_guard`). `stop` is asked between the
    events' hydration calls (one Stripe call per event at worst: a chunk of failed invoices took minutes): once
    it is overdue (stop.py), the events hydrated so far are written and the rest dropped, and `result.cut` says
    how many events the result covers; once a stop is asked for, the writes go through sObject Collections, not
    a Bulk API job (which polls for seconds to minutes). `note(step)` is told what the step is doing (the
    heartbeat's "now ...").
    """
    planning = plan_events(events, ports.ledger, ports.hydrator, settings.rules, retried=retried,
                           unordered=unordered, stopping=stop.overdue if stop else lambda: False, note=note)
    result, planned = planning.result, planning.planned
    if planning.unplanned is not None:
        _cut(result, events, next(i for i, e in enumerate(events) if e is planning.unplanned))
    bulk = bulk and not (stop is not None and stop.requested)
    if planned:
        note(f"writing the records of {events_text(len(planned))} to Salesforce{' (Bulk API 2.0)' if bulk else ''}")
        _write(planned, ports, settings, result, bulk=bulk)
    verb = "dead-lettered" if ports.writer.sends else "would dead-letter"  # a dry run's writer sends nothing
    for o in result.outcomes:
        if o.kind == "dead_letter":
            log.warning("%s %s (%s): %s %s", verb, o.event_id, o.event_type, o.code, o.reason,
                        extra=fields(kind="dead_letter", event_id=o.event_id, event_type=o.event_type, code=o.code))
    return result


def _cut(result: BatchResult, events: Sequence[HeldEvent], keep: int) -> None:
    """Keep only what the first `keep` events did: the rest are read again by the next run, as if never read."""
    kept = {outcome_id(e) for e in events[:keep]}
    result.cut = result.events_read = keep
    last = events[keep - 1] if keep else None
    result.last_event = (last.id, last.created) if last and last.id and last.created is not None else None
    result.outcomes = [o for o in result.outcomes if o.event_id in kept]
    result.versions = {k: v for k, v in result.versions.items() if v[1] in kept}
    result.skipped_duplicate = sum(1 for eid in result.duplicates if eid in kept)


def _write(planned: Planned, ports: Ports, settings: BatchSettings, result: BatchResult, *, bulk: bool) -> None:
    """Resolve the planned intents against Salesforce, write them, and record each event's outcome."""
    write_settings = _write_settings(planned, ports, settings)
    planned, found = _find(planned, ports, settings, result, task_keyed=write_settings.task_keyed)
    created, made = create_missing(planned, found, ports, settings.identity, settings.names,
                                   settings.rules.stripe_account)
    if ports.writer.sends:
        result.records_written += made
    materializer = Materializer(found, write_settings)
    failures = _materialize([p for p in planned if p[1].meta.event_id not in created], materializer)
    failures.update(created)
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
        result.outcomes.append(outcome(change, "applied", None))
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
    customer (stripe/needs.py: needs_customer): when that Opportunity does not exist or has no Account, the customer's
    metadata is next in precedence, so the customer is read now, the change planned again, and the lookups
    made again (one more lookup call, for such batches only)."""
    intents = [it for _, _, plan in planned for it in plan.intents]
    legacy = _legacy_events(planned, settings.legacy_task_keys_before)
    reads = FieldReads(settings.rules.mapping.read_fields("Opportunity"), settings.rules.mapping.read_fields("Account"))
    account = settings.rules.stripe_account
    found = ports.lookup.find(settings.names, intents, task_keyed=task_keyed, legacy_events=legacy, reads=reads,
                              stripe_account=account)
    late = {i for i, (_, change, plan) in enumerate(planned) if _customer_still_needed(change, plan, found)}
    if not late:
        return planned, found
    again: Planned = []
    for i, (held, change, plan) in enumerate(planned):
        if i in late:
            change = ports.hydrator.hydrate(held, change, with_customer=True)
            replanned = plan_change(settings.rules, held, change)
            plan = replanned if replanned.intents else plan
        again.append((held, change, plan))
    result.customers.extend(ports.hydrator.fresh_customers())
    intents = [it for _, _, plan in again for it in plan.intents]
    return again, ports.lookup.find(settings.names, intents, task_keyed=task_keyed, legacy_events=legacy,
                                    reads=reads, stripe_account=account)


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
                         write_as_is=settings.currency_mismatch == "write_as_is", mapping=settings.rules.mapping,
                         stripe_account=settings.rules.stripe_account)


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


