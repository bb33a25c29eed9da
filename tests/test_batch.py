"""The batch step against in-memory ports: no HTTP, no state file. The sandbox tests stay the end-to-end
layer; these pin what the batch step itself decides."""

from __future__ import annotations

import datetime
import gc
import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from stripe_sf_sync import gc_pause, model, rules
from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.model import CachedCustomer
from stripe_sf_sync.pipeline import BatchSettings, CursorCommit, apply_batch
from stripe_sf_sync.pipeline.batches import Batch, NoRunState, in_batches, next_cursor
from stripe_sf_sync.pipeline.events import HeldEvent
from stripe_sf_sync.pipeline.plan import plan_events
from stripe_sf_sync.pipeline.ports import Ports
from stripe_sf_sync.pipeline.run import RunSummary, run_batches
from stripe_sf_sync.records import AccountRow, Lookups, OrgFacts, SfOp, WriteResult
from stripe_sf_sync.salesforce.recorder import PlanRecorder
from stripe_sf_sync.state import Cursor, Outcome

from . import payloads as p

NAMES = FieldNames()
SETTINGS = BatchSettings(rules.RuleContext("Closed Won", NAMES), NAMES, record_type_id=None)
ACCOUNT = AccountRow("001Hs00000CmAbcIAE", "Acme", "005Hs00000DnDefIAG", None, "trialing", "cus_Pabcdefghij")


@dataclass
class Ledger:
    outcomes: dict[str, str] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)

    def outcomes_for(self, event_ids: Sequence[str]) -> dict[str, str]:
        return {e: self.outcomes[e] for e in event_ids if e in self.outcomes}

    def versions_for(self, object_ids: Iterable[str]) -> dict[str, int]:
        return {o: self.versions[o] for o in object_ids if o in self.versions}


class AsIs:
    """A hydrator for payloads that already carry everything."""

    def prepare(self, fresh: Any, customer_changes: Sequence[model.CustomerChange]) -> list[CachedCustomer]:
        return [CachedCustomer(c.customer_id, c.metadata, c.name, c.deleted, c.meta.created)
                for c in customer_changes]

    def hydrate(self, held: HeldEvent, change: model.Change, *, with_customer: bool = False) -> model.Change:
        return change

    def fresh_customers(self) -> list[CachedCustomer]:
        return []

    def current_state(self, held: HeldEvent, change: model.Change) -> model.Change:
        return change


@dataclass
class Records:
    """One Account, found by its customer; the Task keys that exist."""

    task_keys: set[str] = field(default_factory=set)
    described: bool = True
    wrote: list[str] = field(default_factory=list)

    def org_facts(self, *, refresh: bool = False) -> OrgFacts:
        return OrgFacts(task_keyed=True)

    def find(self, names: FieldNames, intents: Any, *, task_keyed: bool, legacy_events: Any = None,
             reads: Any = None, stripe_account: Any = None) -> Lookups:
        found = Lookups(task_keys=set(self.task_keys))
        found.add_account(ACCOUNT)
        return found

    def wrote_account(self, account_id: str, fields: dict[str, Any], names: FieldNames) -> None:
        self.wrote.append(account_id)


@dataclass
class Writer:
    """Answers each op with `fail.get((sobject, kind))`, else success."""

    fail: dict[tuple[str, str], WriteResult] = field(default_factory=dict)
    sent: list[SfOp] = field(default_factory=list)
    sends: bool = True

    def write(self, ops: Sequence[SfOp]) -> list[WriteResult]:
        self.sent.extend(ops)
        return [self.fail.get((op.sobject, op.kind), WriteResult(True, record_id="x")) for op in ops]


def ports(ledger: Ledger | None = None, writer: Any = None, records: Records | None = None) -> Ports:
    writer = writer or Writer()
    return Ports(ledger or Ledger(), AsIs(), records or Records(), writer, writer)


def held(*events: dict[str, Any]) -> list[HeldEvent]:
    return [HeldEvent.of(e) for e in events]


def updated(event_id: str, created: int, status: str = "active", previous: str = "trialing") -> dict[str, Any]:
    sub = p.subscription(status=status)
    return p.event("customer.subscription.updated", sub, event_id=event_id, created=created,
                   previous={"status": previous})


def test_an_event_already_recorded_is_skipped_unless_it_is_a_dead_letter_sent_again():
    ledger = Ledger(outcomes={"evt_a": "applied", "evt_b": "dead_letter"})
    events = held(updated("evt_a", p.T0), updated("evt_b", p.T0 + 1))
    result = apply_batch(events, ports(ledger), SETTINGS)
    assert (result.skipped_duplicate, result.outcomes) == (2, [])
    retried = apply_batch(events, ports(ledger), SETTINGS, retried=True)
    assert retried.skipped_duplicate == 1 and [o.event_id for o in retried.outcomes] == ["evt_b"]


def test_planning_alone_plans_what_the_batch_step_writes_and_sends_nothing():
    """plan_events is the batch step's first half: the same outcomes for what needs no write, a plan for the rest,
    and no lookup or write (reconcile calls it to learn what Salesforce should hold)."""
    ledger = Ledger(outcomes={"evt_a": "applied"}, versions={"sub_1OHAabcdefghij": p.T0 + 100})
    events = held(updated("evt_a", p.T0), updated("evt_old", p.T0 + 1), updated("evt_new", p.T0 + 200, "past_due"))
    planning = plan_events(events, ledger, AsIs(), SETTINGS.rules)
    assert planning.result.skipped_duplicate == 1 and planning.unplanned is None
    assert [(o.event_id, o.kind) for o in planning.result.outcomes] == [("evt_old", "stale")]
    assert [h.id for h, _, plan in planning.planned if plan.intents] == ["evt_new"]
    writer = Writer()
    result = apply_batch(events, ports(ledger, writer), SETTINGS)
    assert [o.kind for o in result.outcomes] == ["stale", "applied"] and writer.sent


def test_planning_hands_an_unforeseen_error_to_its_caller():
    """By default a bug met while planning an event dead-letters it as UNEXPECTED; a caller may classify it."""

    class Broken(AsIs):
        def hydrate(self, held: HeldEvent, change: model.Change, *, with_customer: bool = False) -> model.Change:
            raise ValueError("cannot compute")

    events = held(updated("evt_1", p.T0))
    default = plan_events(events, Ledger(), Broken(), SETTINGS.rules)
    assert [(o.kind, o.code) for o in default.result.outcomes] == [("dead_letter", "UNEXPECTED")]
    mine = plan_events(events, Ledger(), Broken(), SETTINGS.rules, on_error=lambda h, exc: Outcome(
        h.id or "", h.type or "", h.created or 0, "dead_letter", reason=str(exc)))
    assert [o.reason for o in mine.result.outcomes] == ["cannot compute"] and mine.planned == []


def test_an_event_older_than_what_its_object_has_is_stale_and_writes_nothing():
    writer = Writer()
    ledger = Ledger(versions={"sub_1OHAabcdefghij": p.T0 + 100})
    result = apply_batch(held(updated("evt_old", p.T0)), ports(ledger, writer), SETTINGS)
    assert [(o.kind, o.object_id) for o in result.outcomes] == [("stale", "sub_1OHAabcdefghij")]
    assert writer.sent == [] and result.versions == {}


def test_applied_events_set_their_objects_version_and_the_batch_ends_at_its_last_event():
    result = apply_batch(held(updated("evt_1", p.T0), updated("evt_2", p.T0 + 5, "past_due", "active")),
                         ports(), SETTINGS)
    assert [o.kind for o in result.outcomes] == ["applied", "applied"]
    assert result.versions == {"sub_1OHAabcdefghij": (p.T0 + 5, "evt_2")}
    assert result.last_event == ("evt_2", p.T0 + 5) and result.records_written > 0


def test_a_malformed_event_is_dead_lettered_with_its_payload_and_the_rest_go_on():
    bad = {"id": "evt_bad", "type": "customer.subscription.updated", "created": p.T0, "data": {"object": 7}}
    result = apply_batch(held(bad, updated("evt_ok", p.T0 + 1)), ports(), SETTINGS)
    dead, ok = result.outcomes
    assert (dead.kind, dead.event_id, ok.kind) == ("dead_letter", "evt_bad", "applied")
    assert '"evt_bad"' in (dead.payload or "")


def test_a_failed_write_dead_letters_its_events_with_the_salesforce_code():
    writer = Writer(fail={("Account", "update"): WriteResult(False, code="FIELD_CUSTOM_VALIDATION_EXCEPTION",
                                                            message="no")})
    result = apply_batch(held(updated("evt_1", p.T0, "past_due", "active")), ports(writer=writer), SETTINGS)
    [dead] = result.outcomes
    assert dead.kind == "dead_letter" and dead.code == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert "Account" in (dead.reason or "")


def test_a_task_that_exists_is_not_written_again():
    event = p.event("customer.subscription.deleted", p.subscription(status="canceled"), event_id="evt_del")
    writer = Writer()
    records = Records(task_keys={"evt_del:follow-up", "evt_del:status"})
    result = apply_batch(held(event), ports(writer=writer, records=records), SETTINGS)
    assert [o.kind for o in result.outcomes] == ["applied"]
    assert not [op for op in writer.sent if op.sobject == "Task"]


def test_a_refused_duplicate_task_key_counts_as_done():
    event = p.event("customer.subscription.deleted", p.subscription(status="canceled"), event_id="evt_del")
    writer = Writer(fail={("Task", "create"): WriteResult(False, code="DUPLICATE_VALUE",
                                                         message="duplicate value found: Stripe_Event_ID__c")})
    result = apply_batch(held(event), ports(writer=writer), SETTINGS)
    assert [o.kind for o in result.outcomes] == ["applied"]


def test_a_dry_run_writer_records_the_plan_and_counts_nothing_written():
    recorder = PlanRecorder()
    result = apply_batch(held(updated("evt_1", p.T0, "past_due", "active")), ports(writer=recorder), SETTINGS)
    assert result.records_written == 0 and [o.kind for o in result.outcomes] == ["applied"]
    assert {w["sobject"] for w in recorder.planned} >= {"Account", "Task"}


def test_customer_events_need_no_write_and_their_details_are_kept():
    customer = {"id": "cus_Pabcdefghij", "object": "customer", "name": "Acme", "metadata": {"a": "b"},
                "created": p.T0}
    writer = Writer()
    result = apply_batch(held(p.event("customer.updated", customer, event_id="evt_c")), ports(writer=writer),
                         SETTINGS)
    assert [o.kind for o in result.outcomes] == ["ignored"] and writer.sent == []
    assert [(c.customer_id, dict(c.metadata)) for c in result.customers] == [("cus_Pabcdefghij", {"a": "b"})]


def test_the_cursor_only_moves_forward():
    assert next_cursor(None, ("evt_1", 10)) == Cursor("evt_1", 10)
    assert next_cursor(Cursor("evt_2", 20), ("evt_1", 10)) is None
    assert next_cursor(Cursor("evt_2", 20), ("evt_3", 20)) == Cursor("evt_3", 20)
    assert next_cursor(Cursor("evt_2", 20), None) is None


def test_batches_stop_at_a_limit_without_reading_one_event_too_many():
    read: list[int] = []

    def events() -> Any:
        for i in range(10):
            read.append(i)
            yield {"id": f"evt_{i}", "created": i, "type": "x"}

    left = [4]

    def more() -> bool:
        left[0] -= 1
        return left[0] > 0

    batches = list(in_batches(events(), 3, CursorCommit(), more=more))
    assert [[e.id for e in b.events] for b in batches] == [["evt_0", "evt_1", "evt_2"], ["evt_3"]]
    assert read == [0, 1, 2, 3]


def test_a_held_event_reads_back_as_the_json_module_wrote_it() -> None:
    """The held text (a dead letter's payload) is written by orjson where it can (issue 14): whatever the
    event holds, it decodes to what the json module's text decoded to, with either decoder."""
    event = {"id": "evt_held", "type": "customer.created", "created": 1_700_000_000, "big": 2**70,
             "at": datetime.datetime(2026, 1, 2, 3, 4, 5), 7: "seven", "name": "Zoë Ünïcode", "x": [1, 2.5, None]}
    held = HeldEvent.of(event)
    before = json.loads(json.dumps(event, default=str, separators=(",", ":")))
    assert held.load() == before == json.loads(held.text)
    assert (held.id, held.created, held.type) == ("evt_held", 1_700_000_000, "customer.created")
    nan = HeldEvent.of({"id": "evt_nan", "amount": float("nan")})
    assert nan.load()["id"] == "evt_nan"


def test_the_collector_is_paused_only_while_a_batch_is_read() -> None:
    """Reading a batch pauses the cyclic collector (issue 14); applying it, or a failed read, does not."""
    seen: list[bool] = []

    def events() -> Any:
        for i in range(5):
            seen.append(gc.isenabled())
            yield {"id": f"evt_{i}", "created": i, "type": "x"}
        raise RuntimeError("the listing failed")

    applying: list[bool] = []
    with pytest.raises(RuntimeError, match="listing failed"):
        for _ in in_batches(events(), 2, CursorCommit()):
            applying.append(gc.isenabled())
    assert seen == [False] * 5 and applying == [True, True] and gc.isenabled()


def test_a_pause_held_on_one_thread_is_not_ended_by_another_threads_pause() -> None:
    """A page decoded on another thread (a read-ahead) under its own pause while this thread applies a batch
    under its own: the first pause to end must not switch the collector back on under the other."""
    assert gc.isenabled()
    inside, leave = threading.Event(), threading.Event()

    def other() -> None:
        with gc_pause.paused():
            inside.set()
            leave.wait(5.0)

    thread = threading.Thread(target=other)
    thread.start()
    assert inside.wait(5.0)
    with gc_pause.paused():
        leave.set()
        thread.join(5.0)
        assert not gc.isenabled()  # the other thread's block ended; this one still holds the pause
    assert gc.isenabled()


@dataclass
class Commits:
    """A CommitStore that keeps what was committed, and whether the collector ran meanwhile."""

    committed: list[int] = field(default_factory=list)
    collecting: list[bool] = field(default_factory=list)

    def cursor(self) -> Cursor | None:
        return None

    def remember_customers(self, customers: Sequence[CachedCustomer]) -> None:
        pass

    def commit_batch(self, outcomes: Sequence[Any], **kw: Any) -> None:
        self.committed.append(len(outcomes))
        self.collecting.append(gc.isenabled())


@dataclass
class Batches(NoRunState):
    """A Source of given batches."""

    given: list[Batch]
    interrupted: bool = False
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)

    def batches(self) -> Iterator[Batch]:
        yield from self.given

    def applied(self, batch: Batch, result: Any) -> None:
        pass


class Watching(Writer):
    """A Writer noting whether the collector runs while a batch is applied; `fail` raises on a later write."""

    def __init__(self, raise_on: int | None = None) -> None:
        super().__init__()
        self.collecting: list[bool] = []
        self.raise_on = raise_on

    def write(self, ops: Sequence[SfOp]) -> list[WriteResult]:
        self.collecting.append(gc.isenabled())
        if self.raise_on is not None and len(self.collecting) >= self.raise_on:
            raise RuntimeError("the write failed")
        return super().write(ops)


def test_the_collector_is_paused_while_a_batch_is_applied_and_runs_again_after() -> None:
    """Applying a batch pauses the cyclic collector (issue 14); committing, or a failed apply, does not."""
    policy = CursorCommit()
    two = [Batch(held(updated("evt_1", p.T0)), policy), Batch(held(updated("evt_2", p.T0 + 1)), policy)]
    writer, state = Watching(), Commits()
    run_batches(Batches(two), ports(writer=writer), SETTINGS, state, RunSummary("sync"), run_id=None)
    assert writer.collecting and not any(writer.collecting)
    assert state.committed == [1, 1] and state.collecting == [True, True] and gc.isenabled()
    failing = Watching(raise_on=1)
    with pytest.raises(RuntimeError, match="write failed"):
        run_batches(Batches(two), ports(writer=failing), SETTINGS, Commits(), RunSummary("sync"), run_id=None)
    assert failing.collecting == [False] and gc.isenabled()


class StopAfter:
    """A hydrator that asks for a stop (overdue at once) while hydrating the `nth` event."""

    def __init__(self, stop: Any, nth: int) -> None:
        self.stop, self.nth, self.seen = stop, nth, 0

    def prepare(self, fresh: Any, customer_changes: Any) -> list[CachedCustomer]:
        return []

    def hydrate(self, held: HeldEvent, change: model.Change, *, with_customer: bool = False) -> model.Change:
        self.seen += 1
        if self.seen == self.nth:
            self.stop.request(15)  # SIGTERM
            self.stop.requested_at -= 60  # long past the grace
        return change

    def fresh_customers(self) -> list[CachedCustomer]:
        return []


def test_a_stop_overdue_mid_hydration_cuts_the_batch_after_the_events_done_and_writes_just_them():
    """Issue 20 §2: the batch step stops between its per-event calls; the result covers only the events before
    the cut (the cursor goes to the last of them), and a duplicate after the cut is not counted."""
    from stripe_sf_sync.pipeline.stop import Stop

    stop = Stop()
    writer = Writer()
    ledger = Ledger(outcomes={"evt_5": "applied"})
    events = held(*(updated(f"evt_{i}", p.T0 + i, "active" if i % 2 else "past_due",
                            "past_due" if i % 2 else "active") for i in range(1, 6)))
    the_ports = Ports(ledger, StopAfter(stop, 2), Records(), writer, writer)
    result = apply_batch(events, the_ports, SETTINGS, stop=stop, bulk=True)
    assert result.cut == result.events_read == 2  # the stop came while evt_2 was hydrated: evt_3 is not
    assert [o.event_id for o in result.outcomes] == ["evt_1", "evt_2"] and result.skipped_duplicate == 0
    assert result.last_event == ("evt_2", p.T0 + 2)
    assert {e for op in writer.sent for e in op.events} == {"evt_1", "evt_2"}
    cut = Batch(events, CursorCommit()).first(result.cut)
    assert [e.id for e in cut.events] == ["evt_1", "evt_2"] and isinstance(cut.commit, CursorCommit)
