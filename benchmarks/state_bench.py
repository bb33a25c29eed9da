"""Time per batch commit on each state backend: `StateStore.commit_batch` with 10,000 events (outcomes, object
versions, a few dead letters and the cursor in one transaction), as a sync at the default batch size commits.

    .venv/bin/python -m benchmarks.state_bench --events 10000 --batches 5 [--postgres-url URL] [--json PATH]

Without --postgres-url a throwaway PostgreSQL server is started on loopback (tests/pgserver.py), with fsync on,
as a real server runs; SQLite runs as stripe-sf opens it (WAL, synchronous=FULL). Both in this process, one
connection each, on the same disk."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stripe_sf_sync.state import Cursor, Outcome, StateStore, open_state

DEAD_EVERY = 50  # 2 % dead letters, each with a payload, as in the sync benchmark's scenario


def batch(start: int, size: int) -> tuple[list[Outcome], dict[str, tuple[int, str]], Cursor]:
    """`size` events from `start`: outcomes, a version for every other object, and the cursor at the last one."""
    outcomes, versions = [], {}
    for i in range(start, start + size):
        eid, created = f"evt_{i:012d}", 1_700_000_000 + i
        if i % DEAD_EVERY == 0:
            outcomes.append(Outcome(eid, "invoice.payment_failed", created, "dead_letter", object_id=f"in_{i}",
                                    reason="NO_ACCOUNT", code="NO_ACCOUNT", payload=json.dumps({"id": eid})))
        else:
            outcomes.append(Outcome(eid, "customer.subscription.updated", created, "applied", object_id=f"sub_{i}"))
            if i % 2:
                versions[f"sub_{i}"] = (created, eid)
    return outcomes, versions, Cursor(outcomes[-1].event_id, outcomes[-1].created)


def measure(store: StateStore, events: int, batches: int) -> dict[str, Any]:
    """Seconds per commit of `events` events, `batches` times (each batch new events, as a sync commits)."""
    store.acquire_lock()
    run_id = store.start_run("bench")
    times = []
    for b in range(batches):
        outcomes, versions, cursor = batch(b * events, events)
        started = time.perf_counter()
        store.commit_batch(outcomes, cursor=cursor, versions=versions, run_id=run_id)
        times.append(time.perf_counter() - started)
    return {"backend": store.backend, "events_per_batch": events, "batches": batches,
            "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "per_event_us": statistics.median(times) / events * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="state-bench-") as tmp:
        with open_state(Path(tmp) / "state.sqlite") as store:
            results.append(measure(store, args.events, args.batches))
        server = None
        url = args.postgres_url
        if url is None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests import pgserver

            server = pgserver.start_server(fsync=True)
            url = server.url(server.create_database())
        try:
            with open_state(Path(tmp) / "unused", url) as store:
                results.append(measure(store, args.events, args.batches))
        finally:
            if server is not None:
                pgserver.remove(server)
    for r in results:
        print(f"{r['backend']:>10}: {r['median_s'] * 1000:8.1f} ms per commit of {r['events_per_batch']} events "
              f"(median of {r['batches']}; min {r['min_s'] * 1000:.1f}, max {r['max_s'] * 1000:.1f}; "
              f"{r['per_event_us']:.1f} µs per event)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
