"""Planning, the first half of the batch step: parse → guard → hydrate → plan.

`plan_events` turns a batch of events into what the rules ask of Salesforce, event by event, and the outcome
of every event that needs no write (already recorded, stale, ignored, dead-lettered). It writes nothing and
commits nothing: `apply_batch` (batch.py) resolves and writes its plans; reconcile calls it on synthetic
events to learn what Salesforce should hold, so the two cannot disagree.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stripe_sf_sync import model, rules
from stripe_sf_sync.errors import StripeSfError
from stripe_sf_sync.logs import fields
from stripe_sf_sync.model import CustomerChange, CustomerDeleted, CustomerDeletedChange, MalformedEvent
from stripe_sf_sync.pipeline.events import HeldEvent, dead_letter, unexpected
from stripe_sf_sync.pipeline.ports import Hydrator, Ledger
from stripe_sf_sync.pipeline.result import BatchResult, outcome
from stripe_sf_sync.rules.mapped import with_sources
from stripe_sf_sync.state.records import Outcome

log = logging.getLogger("stripe_sf_sync")

Planned = list[tuple[HeldEvent, model.Change, rules.Plan]]
# What an event becomes when parsing or planning it raises anything but a MalformedEvent (a dead letter with
# its reason) or a StripeSfError (fatal: it stops the run).
OnError = Callable[[HeldEvent, Exception], Outcome]


@dataclass
class Planning:
    """What planning made of a batch."""

    # The outcomes of the events that need no write (skipped duplicates, stale, ignored, dead letters), their
    # objects' versions, and the customer details read: the batch's result so far.
    result: BatchResult
    planned: Planned = field(default_factory=list)  # the events to write, hydrated, with their plans, in order
    unplanned: HeldEvent | None = None  # the first event left unplanned when `stopping()` said to stop


def plan_events(events: Sequence[HeldEvent], ledger: Ledger, hydrator: Hydrator, ctx: rules.RuleContext, *,
                retried: bool = False, unordered: bool = False, stopping: Callable[[], bool] = lambda: False,
                note: Callable[[str], None] = lambda step: None, on_error: OnError = unexpected,
                quiet: bool = False) -> Planning:
    """Parse, guard, hydrate and plan a batch; write and commit nothing.

    `retried`: dead letters sent again, which their recorded outcome must not skip. `unordered`: Stripe's order
    of the events is not known (`_guard`). `stopping()` is asked before each event's hydration: once it says
    to stop, the rest is left unplanned (`Planning.unplanned`). `note(step)` is told what planning is doing.
    `on_error`: what an event that fails for an unforeseen reason becomes (by default an UNEXPECTED dead
    letter: a poison event must never stop every later run). `quiet`: no log line for the rules' warnings.
    """
    last = events[-1] if events else None
    result = BatchResult(events_read=len(events),
                         last_event=(last.id, last.created) if last and last.id and last.created is not None else None)
    parsed = _parse(events, ledger, result, retried=retried, on_error=on_error)
    fresh, customer_changes = _guard(parsed, ledger, hydrator, result, unordered=unordered)
    note(f"reading from Stripe what {events_text(len(fresh))} of a batch of {len(events):,} need")
    result.customers.extend(hydrator.prepare(fresh, customer_changes))
    planning = Planning(result)
    _plan(fresh, hydrator, ctx, planning, stopping, note, on_error=on_error, quiet=quiet)
    result.customers.extend(hydrator.fresh_customers())
    return planning


def plan_change(ctx: rules.RuleContext, held: HeldEvent, change: model.Change) -> rules.Plan:
    """The rules' plan of one hydrated change, with what the mapping's `from` values read of it."""
    return with_sources(rules.plan(ctx, change), change, ctx.mapping, held.data_object)


def events_text(n: int) -> str:
    """`n` events, as the heartbeat says it."""
    return f"{n:,} event" if n == 1 else f"{n:,} events"


def _parse(events: Sequence[HeldEvent], ledger: Ledger, result: BatchResult, *, retried: bool,
           on_error: OnError) -> list[tuple[HeldEvent, model.Change | CustomerChange]]:
    """Drop events already recorded; parse the rest (a malformed one is dead-lettered)."""
    known = ledger.outcomes_for([e.id for e in events if e.id])
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
            result.outcomes.append(on_error(held, exc))
            continue
        if isinstance(change, model.Unsupported):
            result.outcomes.append(outcome(change, "ignored", change.reason, object_id=False))
            continue
        parsed.append((held, change))
    return parsed


def _guard(parsed: Sequence[tuple[HeldEvent, model.Change | CustomerChange]], ledger: Ledger, hydrator: Hydrator,
           result: BatchResult, *, unordered: bool = False) -> tuple[list[tuple[HeldEvent, model.Change]],
                                                                     list[CustomerChange]]:
    """The order guard: an event older than the newest applied to its object is stale. Customer events
    need no write: their details are kept for resolving the customer's other events.

    Of two events of one object in the same second, the newer by Stripe's list order wins: a listing's
    order is the batch's, and a later batch's events come after an earlier one's. Where the order is not
    known (`unordered`), such an event is applied with the object's current state, read once per object and
    batch (Stripe: "order is not guaranteed", docs.stripe.com/webhooks).
    """
    stored = ledger.versions_for(c.object_id for _, c in parsed)
    seconds = Counter((c.object_id, c.meta.created) for _, c in parsed)
    fresh: list[tuple[HeldEvent, model.Change]] = []
    customers: list[CustomerChange] = []
    for held, change in parsed:
        newest = stored.get(change.object_id)
        if newest is not None and change.meta.created < newest:
            result.outcomes.append(outcome(change, "stale", f"{change.object_id} already has a newer event applied"))
        elif isinstance(change, CustomerChange):
            customers.append(change)
            result.outcomes.append(outcome(change, "ignored", "customer details kept for resolving its other events"))
            result.versions[change.object_id] = (change.meta.created, change.meta.event_id)
        elif isinstance(change, CustomerDeletedChange):  # kept as a deleted customer, and its Account marked
            customers.append(change.details)
            fresh.append((held, change))
        elif unordered and (newest == change.meta.created or seconds[(change.object_id, change.meta.created)] > 1):
            fresh.append((held, hydrator.current_state(held, change)))
        else:
            fresh.append((held, change))
    return fresh, customers


def _plan(fresh: Sequence[tuple[HeldEvent, model.Change]], hydrator: Hydrator, ctx: rules.RuleContext,
          planning: Planning, stopping: Callable[[], bool], note: Callable[[str], None], *, on_error: OnError,
          quiet: bool) -> None:
    """Hydrate each change and apply the rules; a change that needs no write is recorded as ignored. Stops
    before the first event left unplanned when `stopping()` says to (`planning.unplanned`)."""
    result = planning.result
    said: set[str] = set()  # a warning about a subscription or customer (a value left alone) is said once a batch
    for done, (held, change) in enumerate(fresh):
        if stopping():
            planning.unplanned = held
            return
        if done % 50 == 0 and done:
            note(f"reading from Stripe what each event needs: {done:,} of {len(fresh):,} events done")
        try:
            try:
                change = hydrator.hydrate(held, change)
            except CustomerDeleted as gone:
                if not gone.mark:  # its Account was marked already: this event writes nothing
                    result.outcomes.append(outcome(change, "ignored", str(gone)))
                    result.versions[change.object_id] = (change.meta.created, change.meta.event_id)
                    continue
                change = gone.as_change(change.meta)  # first learned now: marked as customer.deleted would
            plan = plan_change(ctx, held, change)
        except MalformedEvent as exc:
            result.outcomes.append(dead_letter(held, exc.reason, exc.code))
            continue
        except StripeSfError:
            raise  # fatal: stop the run, commit nothing of this batch
        except Exception as exc:  # a poison event must never stop every future run
            result.outcomes.append(on_error(held, exc))
            continue
        if not quiet:
            _say_warnings(change, plan, said)
        if plan.ignored or not plan.intents:
            result.outcomes.append(outcome(change, "ignored", plan.ignored))
            result.versions[change.object_id] = (change.meta.created, change.meta.event_id)
            continue
        planning.planned.append((held, change, plan))


def _say_warnings(change: model.Change, plan: rules.Plan, said: set[str]) -> None:
    """One log line per warning of the plan not yet said in this batch."""
    for warning in plan.warnings:
        if warning in said:
            continue
        said.add(warning)
        log.warning("%s (%s): %s", change.meta.event_id, change.meta.event_type, warning,
                    extra=fields(kind="rule_warning", event_id=change.meta.event_id,
                                 event_type=change.meta.event_type))
