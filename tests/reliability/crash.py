"""Kill points: SIGKILL `stripe-sf sync` (a real subprocess) at a chosen point, run it again, and check that
the result equals a run that was never killed. Shared by tests/reliability/test_crash.py and the soak."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stripe_sf_sync.errors import NoStateError

from ..conftest import snapshot
from ..state_backends import Backend
from .world import STATE_NAME, World, assert_converged, build_world, run_and_kill, state_rows, stripe_sf, write_config

# Share of kill points per kind (the soak scales these up).
MIX: list[tuple[str, int]] = [
    ("stripe", 4),         # during a Stripe request: paging or hydration (killed from the stand-in)
    ("sf-before", 4),      # during a Salesforce request, before the stand-in handles it
    ("sf-applied", 3),     # a collections write applied by Salesforce, the client killed before the reply
    ("write", 3),          # after a collections call returned, before the state commit
    ("commit-before", 2),  # on entry to a state commit
    ("commit-mid", 3),     # inside the commit's open transaction
    ("commit-after", 2),   # right after a commit
    ("deadletter", 3),     # right after a dead-letter row was written, inside the transaction
]


@dataclass(frozen=True)
class KillPoint:
    kind: str
    nth: int

    def __str__(self) -> str:
        return f"{self.kind}#{self.nth}"


@dataclass
class Reference:
    """A never-killed run of the same world."""

    now: int
    extra: int
    snapshot: dict[str, Any]
    rows: dict[str, Any]
    counts: dict[str, int]  # stripe, sf, sf_writes, commits, writes, deadletters

    def as_expected(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot, "events": self.rows["events"], "dead": self.rows["dead"]}


def _config(directory: Path, world: World) -> Path:
    from .world import discover
    return discover(write_config(directory), world)


def reference_run(now: int, extra: int) -> Reference:
    with build_world(now, extra=extra) as world, tempfile.TemporaryDirectory(prefix="ref-") as tmp:
        cfg = _config(Path(tmp), world)
        stripe_before, sf_before = world.stripe.request_count, len(world.sf.requests_log)
        counts_file = Path(tmp) / "counts.json"
        done = stripe_sf(["sync", "--config", str(cfg), "--since", world.since],
                         world.cli_env(STRIPE_SF_TEST_COUNTS=str(counts_file)))
        assert done.returncode in (0, 3), done.stderr
        counts = json.loads(counts_file.read_text())
        counts["stripe"] = world.stripe.request_count - stripe_before
        counts["sf"] = len(world.sf.requests_log) - sf_before
        counts["sf_writes"] = sum(1 for m, p in world.sf.requests_log[sf_before:] if "composite/sobjects" in p)
        return Reference(now, extra, snapshot(world.org), state_rows(Path(tmp) / STATE_NAME), counts)


def spread(k: int, total: int) -> list[int]:
    """k indexes in 1..total, evenly spread (deterministic; repeats when k > total)."""
    if total <= 0:
        return []
    return [1 + (i * total) // k if k <= total else 1 + i % total for i in range(k)]


def plan_points(ref: Reference, n: int) -> list[KillPoint]:
    """n kill points over every kind, in MIX proportions."""
    totals = {"stripe": ref.counts["stripe"], "sf-before": ref.counts["sf"], "sf-applied": ref.counts["sf_writes"],
              "write": ref.counts["writes"], "commit-before": ref.counts["commits"],
              "commit-mid": ref.counts["commits"], "commit-after": ref.counts["commits"] - 1,
              "deadletter": ref.counts["deadletters"]}
    weight = sum(w for _, w in MIX)
    share = {kind: max(1, round(n * w / weight)) for kind, w in MIX}
    while sum(share.values()) > n and any(v > 1 for v in share.values()):
        biggest = max(share, key=lambda k: share[k])
        share[biggest] -= 1
    kinds = [k for k, _ in MIX]
    i = 0
    while sum(share.values()) < n:
        share[kinds[i % len(kinds)]] += 1
        i += 1
    points = []
    for kind, _ in MIX:
        # Stripe request 1 and the first Salesforce requests are before anything happens: start later.
        points.extend(KillPoint(kind, x) for x in spread(share[kind], totals[kind]))
    return points


def _arm(world: World, point: KillPoint) -> Callable[[Callable[[], None]], None] | None:
    if point.kind == "stripe":
        base = world.stripe.request_count

        def arm_stripe(kill: Callable[[], None]) -> None:
            def hook(n: int, method: str, path: str) -> None:
                if n - base == point.nth:
                    kill()  # the answer goes to a process that is gone
            world.stripe.faults.on_request = hook
        return arm_stripe
    if point.kind in ("sf-before", "sf-applied"):
        base = len(world.sf.requests_log)
        writes = [0]

        def arm_sf(kill: Callable[[], None]) -> None:
            def hook(n: int, method: str, path: str) -> None:
                if point.kind == "sf-before" and n - base == point.nth:
                    kill()
                    raise ConnectionAbortedError("killed")  # never handled
                if point.kind == "sf-applied" and "composite/sobjects" in path:
                    writes[0] += 1
                    if writes[0] == point.nth:
                        kill()  # then the stand-in applies the write for a client that is gone
            world.sf.faults.on_request = hook
        return arm_sf
    return None


def _child_spec(point: KillPoint) -> str | None:
    return {"write": f"write:{point.nth}", "commit-before": f"commit:{point.nth}:before",
            "commit-mid": f"commit:{point.nth}:mid", "commit-after": f"commit:{point.nth}:after",
            "deadletter": f"deadletter:{point.nth}"}.get(point.kind)


def run_point(ref: Reference, point: KillPoint, pg: Any = None) -> str | None:
    """Kill at `point`, rerun to completion, compare. None when converged, else what went wrong. With `pg` (the
    test PostgreSQL server) the state is a fresh database there, and the rerun starts from another working
    directory: killed on "host A", continued on "host B"."""
    with build_world(ref.now, extra=ref.extra) as world, tempfile.TemporaryDirectory(prefix="kill-") as tmp:
        database = pg.create_database() if pg is not None else None
        try:
            return _kill_and_rerun(ref, point, world, Path(tmp), pg.url(database) if database else None,
                                   wait=(lambda: pg.wait_idle(database)) if database else None)
        finally:
            if database:
                pg.drop_database(database)


def _kill_and_rerun(ref: Reference, point: KillPoint, world: World, tmp: Path, url: str | None,
                    wait: Callable[[], None] | None = None) -> str | None:
    cfg = _config(tmp / "host-a", world)
    state = Backend("postgresql", tmp / "host-a" / STATE_NAME, url) if url else tmp / "host-a" / STATE_NAME
    base = {"STRIPE_SF_STATE_URL": url} if url else {}
    extra = dict(base)
    spec = _child_spec(point)
    if spec:
        extra["STRIPE_SF_TEST_KILL"] = spec
    killed = run_and_kill(["sync", "--config", str(cfg), "--since", world.since], world.cli_env(**extra),
                          arm=_arm(world, point))
    world.stripe.faults.clear()
    world.sf.faults.clear()
    if killed.returncode != -9:
        return f"{point}: the kill point was not reached (exit {killed.returncode}): {killed.stderr[-500:]}"
    if url:
        cfg = _config(tmp / "host-b", world)  # host B: its own directory, the same PostgreSQL store
    if wait is not None:
        wait()  # the killed run's session is over (as the next cron run would find it), its lock free
    args = ["sync", "--config", str(cfg)]
    if _cursor(state) is None:
        args += ["--since", world.since]
    again = stripe_sf(args, world.cli_env(**base))
    if again.returncode not in (0, 3):
        return f"{point}: the rerun failed (exit {again.returncode}): {again.stderr[-1000:]}"
    try:
        assert_converged(world, state, ref.as_expected())
    except AssertionError as exc:
        import traceback
        return f"{point}: {exc} {traceback.format_exc(limit=-1)}"
    return None


def _cursor(state: Path | Backend) -> str | None:
    """The stored cursor, None when there is none (or no state at all yet)."""
    if isinstance(state, Path) and not state.exists():
        return None
    try:
        return state_rows(state)["cursor"]
    except NoStateError:
        return None


def run_points(ref: Reference, points: list[KillPoint], *, workers: int = 2,
               progress: Callable[[KillPoint, str | None], None] | None = None,
               pg: Any = None) -> dict[KillPoint, str | None]:
    results: dict[KillPoint, str | None] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_point, ref, p, pg): p for p in points}
        for fut, p in futures.items():
            try:
                results[p] = fut.result()
            except Exception as exc:  # a harness failure is a failure of that point
                results[p] = f"{p}: {type(exc).__name__}: {exc}"
            if progress:
                progress(p, results[p])
    return results


def now() -> int:
    return int(time.time())
