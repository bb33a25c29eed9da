"""The long soak: many SIGKILL points and many fuzz examples. Not part of the CI suite.

    .venv/bin/python -m tests.reliability.soak --kill-points 200 --fuzz-examples 100000

Kill points use a larger world than CI (the demo scenario plus about 95 generated events, so Stripe's event
list spans two pages) with batches of 5. Prints figures, and exits 1 on any divergence or unexpected crash.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stripe_sf_sync.config import load_config
from stripe_sf_sync.errors import ConfigError

from . import crash, fuzz


def fuzz_events(examples: int) -> tuple[collections.Counter, dict[str, str]]:
    counts: collections.Counter = collections.Counter()
    unexpected: dict[str, str] = {}

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(fuzz.hostile_events())
    def run(event: dict) -> None:
        try:
            outcome, _ = fuzz.process(event)
            counts[outcome] += 1
        except Exception as exc:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            key = f"{type(exc).__name__} in {frame.name} ({Path(frame.filename).name}:{frame.lineno})"
            counts["known bug" if fuzz.known_bug(exc) else "CRASH"] += 1
            if not fuzz.known_bug(exc):
                unexpected.setdefault(key, repr(event)[:400])

    run()
    return counts, unexpected


def fuzz_configs(examples: int) -> tuple[collections.Counter, dict[str, str]]:
    from .test_hostile_input import _valid_shaped, yaml_docs, yaml_text
    counts: collections.Counter = collections.Counter()
    unexpected: dict[str, str] = {}
    tmp = Path(tempfile.mkdtemp(prefix="soak-config-"))

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(yaml_docs, _valid_shaped()).map(yaml_text)
           | st.text(max_size=300))
    def run(text: str) -> None:
        path = tmp / "sync.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(path)
            counts["valid"] += 1
        except ConfigError:
            counts["ConfigError"] += 1
        except Exception as exc:
            counts["CRASH"] += 1
            unexpected.setdefault(f"{type(exc).__name__}: {exc}"[:120], text[:200])

    run()
    return counts, unexpected


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kill-points", type=int, default=200)
    ap.add_argument("--fuzz-examples", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2, help="kill points run in parallel")
    ap.add_argument("--extra", type=int, default=28, help="generated customers (about 4 events each)")
    args = ap.parse_args(argv)
    failed = False

    if args.fuzz_examples:
        started = time.monotonic()
        counts, unexpected = fuzz_events(args.fuzz_examples)
        print(f"event fuzz: {sum(counts.values())} examples in {time.monotonic() - started:.0f}s: {dict(counts)}",
              flush=True)
        for key, example in unexpected.items():
            print(f"  UNEXPECTED {key}: {example}")
        started = time.monotonic()
        ccounts, cunexpected = fuzz_configs(max(100, args.fuzz_examples // 20))
        print(f"config fuzz: {sum(ccounts.values())} examples in {time.monotonic() - started:.0f}s: "
              f"{dict(ccounts)}", flush=True)
        for key, example in cunexpected.items():
            print(f"  UNEXPECTED {key}: {example!r}")
        failed |= bool(unexpected or cunexpected)

    if args.kill_points:
        started = time.monotonic()
        ref = crash.reference_run(crash.now(), extra=args.extra)
        events = len(ref.rows["events"])
        print(f"kill points: world of {events} events, reference counts {ref.counts}", flush=True)
        points = crash.plan_points(ref, args.kill_points)
        done = [0]

        def progress(point: crash.KillPoint, problem: str | None) -> None:
            done[0] += 1
            if problem or done[0] % 20 == 0:
                print(f"  [{done[0]}/{len(points)}] {point}: {problem or 'converged'}", flush=True)

        results = crash.run_points(ref, points, workers=args.workers, progress=progress)
        bad = {p: r for p, r in results.items() if r}
        kinds = collections.Counter(p.kind for p in points)
        print(f"kill points: {len(points) - len(bad)}/{len(points)} converged in {time.monotonic() - started:.0f}s; "
              f"by kind {dict(kinds)}", flush=True)
        failed |= bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
