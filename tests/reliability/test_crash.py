"""SIGKILL `stripe-sf sync` at 24 deterministic points (Stripe paging and hydration, Salesforce requests
before and after they are applied, between the collections write and the state commit, on entry to, inside
and after a state commit, inside a dead-letter write), then run it again: the org equals a never-killed
run's, no Task is duplicated, every event has exactly one durable outcome (the same one), dead letters
hold each expected event once, and the SQLite file passes `PRAGMA integrity_check`. Eight more points run with
the state on PostgreSQL, the rerun from another working directory (another host)."""

from __future__ import annotations

import pytest

from . import crash

CI_POINTS = 24


@pytest.fixture(scope="module")
def reference() -> crash.Reference:
    return crash.reference_run(crash.now(), extra=12)


@pytest.fixture(scope="module")
def outcomes(reference: crash.Reference) -> dict[str, str | None]:
    points = crash.plan_points(reference, CI_POINTS)
    return {str(p): r for p, r in crash.run_points(reference, points).items()}


def test_reference_run_has_many_batches_and_dead_letters(reference):
    assert reference.counts["commits"] >= 10 and reference.counts["deadletters"] >= 4
    assert reference.rows["integrity"] == "ok"
    assert set(reference.rows["events"].values()) == {"applied", "dead_letter"}


def test_kill_points_cover_every_kind(reference):
    points = crash.plan_points(reference, CI_POINTS)
    assert len(points) == CI_POINTS >= 20
    assert {p.kind for p in points} == {k for k, _ in crash.MIX}
    assert len(set(points)) == len(points)


@pytest.mark.parametrize("index", range(CI_POINTS))
def test_sigkill_then_rerun_converges(outcomes, index):
    _point, problem = sorted(outcomes.items())[index]
    assert problem is None, problem


PG_POINTS = 8  # one of each kind: the same harness, with the state on PostgreSQL


@pytest.fixture(scope="module")
def pg_outcomes(reference: crash.Reference, pg_server) -> dict[str, str | None]:
    points = crash.plan_points(reference, PG_POINTS)
    return {str(p): r for p, r in crash.run_points(reference, points, pg=pg_server).items()}


@pytest.mark.parametrize("index", range(PG_POINTS))
def test_postgres_sigkill_on_host_a_then_a_run_on_host_b_converges(pg_outcomes, index):
    """Killed on "host A" (one working directory), continued on "host B" (another) sharing the PostgreSQL store:
    the same Salesforce state as a run never killed, no duplicate Task, every event's outcome once."""
    _point, problem = sorted(pg_outcomes.items())[index]
    assert problem is None, problem
