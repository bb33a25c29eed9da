"""The closed set of commit kinds (pipeline/batches.py): what `commit` writes for each, in one transaction, and
the run's begin and end of a source (pipeline/run.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from stripe_sf_sync.model import CachedCustomer
from stripe_sf_sync.pipeline import (
    Batch,
    BatchResult,
    CheckpointCommit,
    CursorCommit,
    DeadLetterCommit,
    InboxCommit,
    NoRunState,
    OutcomesCommit,
    RunSummary,
    run_batches,
)
from stripe_sf_sync.pipeline.events import HeldEvent
from stripe_sf_sync.pipeline.run import commit
from stripe_sf_sync.state import Cursor


@dataclass
class Store:
    """A CommitStore keeping the keyword arguments of each commit_batch."""

    stored: Cursor | None = None
    commits: list[dict[str, Any]] = field(default_factory=list)

    def cursor(self) -> Cursor | None:
        return self.stored

    def remember_customers(self, customers: Sequence[CachedCustomer]) -> None:
        pass

    def commit_batch(self, outcomes: Sequence[Any], **kw: Any) -> None:
        self.commits.append(kw)


def events(*ids: str) -> list[HeldEvent]:
    return [HeldEvent.of({"id": i, "created": 100 + n, "type": "x"}) for n, i in enumerate(ids)]


def committed(kind: Any, *, stored: Cursor | None = None, ids: tuple[str, ...] = ("evt_1", "evt_2")) -> dict[str, Any]:
    store = Store(stored)
    result = BatchResult(events_read=len(ids), last_event=(ids[-1], 100 + len(ids) - 1) if ids else None)
    result.versions = {"sub_1": (101, "evt_2")}
    commit(store, Batch(events(*ids), kind), result, run_id=7)
    assert len(store.commits) == 1
    return store.commits[0]


def test_a_cursor_commit_moves_the_cursor_to_the_last_event_with_its_meta_never_back():
    kw = committed(CursorCommit(meta={"sync_floor": "90"}))
    assert kw == {"cursor": Cursor("evt_2", 101), "versions": {"sub_1": (101, "evt_2")}, "run_id": 7,
                  "retried": False, "meta": {"sync_floor": "90"}}
    assert committed(CursorCommit(), stored=Cursor("evt_9", 500))["cursor"] is None
    assert committed(CursorCommit(meta={"handoff_since": "90"}), ids=())["cursor"] is None  # a first --since


def test_a_checkpoint_commit_carries_its_meta_and_versions_and_leaves_the_cursor():
    kw = committed(CheckpointCommit(meta={"backfill_checkpoint": "{}"}, versions={"cus_1#status": (5, "1:2:e")}))
    assert kw == {"cursor": None, "versions": {"cus_1#status": (5, "1:2:e"), "sub_1": (101, "evt_2")}, "run_id": 7,
                  "retried": False, "meta": {"backfill_checkpoint": "{}"}}
    assert committed(CheckpointCommit())["meta"] is None


def test_the_inbox_dead_letter_and_outcomes_commits_each_write_only_what_they_name():
    assert committed(InboxCommit())["inbox_done"] == ["evt_1", "evt_2"]
    letters = committed(DeadLetterCommit())
    assert letters["retried"] is True and letters["cursor"] is None and "inbox_done" not in letters
    assert committed(OutcomesCommit()) == {"cursor": None, "versions": {"sub_1": (101, "evt_2")}, "run_id": 7,
                                           "retried": False, "meta": None}


def test_a_cut_batch_keeps_its_attributes_and_takes_the_partial_commit():
    cut = CheckpointCommit(meta={"backfill_checkpoint": "cut"})
    batch = Batch(events("evt_1", "evt_2"), CheckpointCommit(), bulk=True, partial=lambda n: cut)
    first = batch.first(1)
    assert [e.id for e in first.events] == ["evt_1"] and first.commit is cut and first.bulk
    late = Batch(events("evt_1", "evt_2"), OutcomesCommit(), late=True).first(1)
    assert late.late and late.unordered and late.commit == OutcomesCommit()
    assert Batch([], InboxCommit()).unordered and Batch([], DeadLetterCommit()).unordered
    assert not Batch([], CursorCommit()).unordered and not Batch([], CheckpointCommit()).unordered


@dataclass
class Told(NoRunState):
    """A source with no batch, noting its begin and end; `fail` raises when its batches are read."""

    fail: BaseException | None = None
    seen: list[str] = field(default_factory=list)
    interrupted: bool = False
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)

    def begin(self) -> None:
        self.seen.append("begin")

    def batches(self) -> Iterator[Batch]:
        self.seen.append("batches")
        if self.fail is not None:
            raise self.fail
        yield from ()

    def applied(self, batch: Batch, result: BatchResult) -> None:
        pass

    def end(self, *, aborted: bool) -> None:
        self.seen.append(f"end aborted={aborted}")


def test_the_run_begins_and_ends_its_source_and_an_abort_still_ends_it_but_an_error_does_not():
    def run(source: Told) -> None:
        run_batches(source, None, None, Store(), RunSummary("sync"), run_id=None)  # type: ignore[arg-type]

    plain = Told()
    run(plain)
    assert plain.seen == ["begin", "batches", "end aborted=False"]
    aborted = Told(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run(aborted)
    assert aborted.seen == ["begin", "batches", "end aborted=True"]
    failed = Told(RuntimeError("Stripe failed"))
    with pytest.raises(RuntimeError):
        run(failed)
    assert failed.seen == ["begin", "batches"]
