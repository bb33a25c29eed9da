"""`python -m benchmarks.mapping_run --events 10000`: Salesforce and Stripe calls per 1,000 events with a
salesforce.mapping of five fields (harness.MAPPING_OF_FIVE) against none, on the default scenario (issue 23:
the mapping's `if_empty` values are read with the lookups each batch already makes)."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness import BATCHED, MAPPED, MAPPING_OF_FIVE, RunResult, measure


def row(name: str, r: RunResult) -> str:
    """One Markdown row of a run."""
    return (f"| {name} | {r.events:,} | {r.sf_calls:,} | {r.sf_per_1000:.1f} | {r.stripe_calls:,} | "
            f"{r.stripe_per_1000:.1f} | {r.records_written:,} | {r.dead_lettered:,} | {r.wall_s:.1f} |")


def main(argv: Sequence[str] | None = None) -> int:
    """Run both, print a Markdown table."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.mapping_run", description=__doc__)
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--sf-latency-ms", type=float, default=20.0)
    p.add_argument("--stripe-latency-ms", type=float, default=10.0)
    args = p.parse_args(argv)
    now = int(time.time())
    with tempfile.TemporaryDirectory(prefix="stripe-sf-mapping-bench-") as tmp:
        runs = {name: measure(mode, Path(tmp), events=args.events, customers=None, seed=args.seed, now=now,
                              sf_latency_ms=args.sf_latency_ms, stripe_latency_ms=args.stripe_latency_ms)
                for name, mode in (("no mapping", BATCHED), ("a mapping of five fields", MAPPED))}
    print("| salesforce.mapping | events | Salesforce calls | per 1,000 events | Stripe calls | per 1,000 events "
          "| records written | dead-lettered | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        print(row(name, r))
    print("\nThe mapping of five fields:\n\n```yaml\n" + MAPPING_OF_FIVE + "```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
