"""`python -m benchmarks.accounts_run`: many small Stripe accounts synced into one org with `stripe-sf sync --all`
(issue 26), at several `--parallel` values, against the floor Stripe's per-account rate limits set.

For each `--parallel` value, fresh stand-ins with the injected latency of the other benchmarks: one Stripe
sandbox serving `--accounts` separate accounts (each its own key), each filled with the benchmark scenario
(`scenario.generate`, `--events` events, its own seed), and one Salesforce org. The state starts as a backfill
leaves it (each pipeline's known customers, as `scenario.seed_state` does for one). Then one
`python -m stripe_sf_sync sync --all --parallel N --json` runs in a fresh process and is timed. One more run,
`--account` of the first account alone, measures what one account takes by itself.

The floor: Stripe limits each account (its key's mode: 25/s in test mode), and stripe-sf paces each pipeline to
`stripe.requests_per_second` (null: 80% of that, 20/s), a sliding window of one second: at most `rate` calls in any
second, a burst of up to `rate` at once. An account's `calls` therefore take at least (ceil(calls / rate) - 1)
seconds (`floor_s`); the slowest account's is the floor of any parallel run, the sum over the accounts the floor of
a serial one (--parallel 1), and max(slowest, sum / N) the floor at N at once. (calls / rate, the steady pace, is
in the JSON too.) `--stripe-rps R` adds runs at another pace, a what-if where the pace binds. The Salesforce
budget is the org's, shared by every pipeline.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import BATCHED, ROOT, STATE_FILE, _disable_nagle, write_config
from benchmarks.scenario import Generated, benchmark_org, generate
from stripe_sf_sandbox.demo import sandbox_environment
from stripe_sf_sandbox.salesforce_server import SalesforceSandbox
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync import service
from stripe_sf_sync.config import example_config
from stripe_sf_sync.model import CachedCustomer
from stripe_sf_sync.state import StateStore

TEST_MODE_RPS = 20.0  # stripe.requests_per_second null, test-mode key: 80% of Stripe's 25/s (sync.yaml.example)


def _key_env(i: int) -> str:
    return "STRIPE_API_KEY" if i == 0 else f"STRIPE_API_KEY_{i:02d}"


def _accounts_yaml(accounts: list[StripeSandbox]) -> str:
    lines = ["  accounts:\n"]
    for i, account in enumerate(accounts):
        lines.append(f"    - id: {account.account_id}\n")
        if i:
            lines.append(f"      api_key_env: {_key_env(i)}\n")
    return "".join(lines)


def _seed(state_path: Path, pipeline: str, gen: Generated) -> None:
    """One pipeline's state as a backfill leaves it (scenario.seed_state, for that pipeline)."""
    with StateStore.open(state_path, pipeline=pipeline) as state:
        state.remember_customers(CachedCustomer(cid, md, name, False, at) for cid, md, name, at in gen.known_customers)


def _world(workdir: Path, *, accounts: int, events: int, seed: int, now: int, stripe_latency_ms: float,
           sf_latency_ms: float, stripe_rps: float | None
           ) -> tuple[StripeSandbox, SalesforceSandbox, list[StripeSandbox], Path, str]:
    """Started stand-ins, every account filled, the discovered config naming them, the pipelines' state seeded."""
    stripe = StripeSandbox(latency_ms=stripe_latency_ms).start()
    sf = SalesforceSandbox(benchmark_org(), latency_ms=sf_latency_ms).start()
    _disable_nagle(stripe)  # one server answers every account
    every = [stripe] + [stripe.add_account() for _ in range(accounts - 1)]
    gens = [generate(a, sf.org, events=events, seed=seed + i, now=now) for i, a in enumerate(every)]
    config = write_config(workdir / "sync.yaml", BATCHED, stripe_rps)
    env = sandbox_environment(stripe, sf)
    env.sleep = lambda s: None
    service.run_discover(config, env, write=True, example=example_config())
    text = config.read_text()
    assert "  accounts: []\n" in text, "sync.yaml.example no longer has `accounts: []`"
    config.write_text(text.replace("  accounts: []\n", _accounts_yaml(every), 1))
    for account, gen in zip(every, gens, strict=True):
        _seed(workdir / STATE_FILE, account.account_id, gen)
    return stripe, sf, every, config, time.strftime("%Y-%m-%d", time.gmtime(min(g.since for g in gens)))


def _run(args: list[str], stripe: StripeSandbox, sf: SalesforceSandbox, every: list[StripeSandbox]
         ) -> tuple[float, dict[str, Any]]:
    env = {"PATH": "/usr/bin:/bin", "STRIPE_API_BASE": stripe.base_url, "SF_INSTANCE_URL": sf.instance_url,
           "SF_ACCESS_TOKEN": sf.access_token, "REQUESTS_CA_BUNDLE": sf.ca_path,
           **{_key_env(i): a.api_key for i, a in enumerate(every)}}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stripe_sf_sync", *args, "--json"], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 3):  # 3: the scenario's customers without an Account are dead letters
        raise RuntimeError(f"{' '.join(args)} exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    return wall, json.loads(proc.stdout)


def floor_s(calls: int, rate: float) -> float:
    """The fewest seconds the pacer (stripe/pacing.py) lets `calls` take: at most int(rate) calls in any window of
    int(rate) / rate seconds, the first window's at once."""
    per_window = max(1, int(rate))
    return max(0, math.ceil(calls / per_window) - 1) * per_window / rate


def measure(parallel: int, *, accounts: int, events: int, seed: int, now: int, stripe_latency_ms: float,
            sf_latency_ms: float, stripe_rps: float | None) -> dict[str, Any]:
    """One `sync --all --parallel N` over fresh stand-ins: wall time, calls in all and per account, the floor."""
    rate = stripe_rps or TEST_MODE_RPS
    with tempfile.TemporaryDirectory(prefix="stripe-sf-accounts-") as tmp:
        stripe, sf, every, config, since = _world(Path(tmp), accounts=accounts, events=events, seed=seed, now=now,
                                                  stripe_latency_ms=stripe_latency_ms, sf_latency_ms=sf_latency_ms,
                                                  stripe_rps=stripe_rps)
        try:
            sf_before = len(sf.requests_log)
            wall, doc = _run(["sync", "--all", "--parallel", str(parallel), "--since", since, "--config",
                              str(config)], stripe, sf, every)
            per_account = [{"account": r["account"], "exit_code": r["exit_code"],
                            "events": r["summary"]["events_read"], "applied": r["summary"]["applied"],
                            "stripe_calls": r["summary"]["stripe_calls"],
                            "salesforce_calls": r["summary"]["salesforce_calls"],
                            "stripe_requests_seen": len(a.requests_log),
                            "stripe_rate_limited": r["summary"]["stripe_rate_limited"],
                            "duration_s": round(r["summary"]["duration_s"], 2),
                            "floor_s": round(floor_s(r["summary"]["stripe_calls"], rate), 2)}
                           for r, a in zip(doc["accounts"], every, strict=True)]
            sf_seen = len(sf.requests_log) - sf_before
            alone: dict[str, Any] | None = None
            if parallel == 1:  # one account by itself, from the start: what the slowest pipeline can reach
                stripe2, sf2, every2, config2, since2 = _world(
                    Path(tmp) / "alone", accounts=1, events=events, seed=seed, now=now,
                    stripe_latency_ms=stripe_latency_ms, sf_latency_ms=sf_latency_ms, stripe_rps=stripe_rps)
                try:
                    alone_wall, alone_doc = _run(["--account", every2[0].account_id, "sync", "--since", since2,
                                                  "--config", str(config2)], stripe2, sf2, every2)
                    alone = {"wall_s": round(alone_wall, 2), "duration_s": round(alone_doc["duration_s"], 2),
                             "stripe_calls": alone_doc["stripe_calls"],
                             "salesforce_calls": alone_doc["salesforce_calls"], "events": alone_doc["events_read"]}
                finally:
                    stripe2.stop()
                    sf2.stop()
        finally:
            stripe.stop()
            sf.stop()
    stripe_calls = [a["stripe_calls"] for a in per_account]
    floors = [floor_s(c, rate) for c in stripe_calls]
    return {"parallel": parallel, "stripe_requests_per_second": rate, "what_if": stripe_rps is not None,
            "steady_pace_s": {"slowest_account": round(max(stripe_calls) / rate, 2),
                              "serial_sum": round(sum(stripe_calls) / rate, 2)},
            "accounts": accounts, "events_per_account": events, "wall_s": round(wall, 2),
            "events": sum(a["events"] for a in per_account), "applied": sum(a["applied"] for a in per_account),
            "stripe_calls": sum(stripe_calls), "salesforce_calls": sum(a["salesforce_calls"] for a in per_account),
            "salesforce_requests_seen": sf_seen,
            "stripe_rate_limited": sum(a["stripe_rate_limited"] for a in per_account),
            "pipeline_s": {"mean": round(sum(a["duration_s"] for a in per_account) / len(per_account), 2),
                           "max": max(a["duration_s"] for a in per_account)},
            "stripe_calls_per_account": {"min": min(stripe_calls), "max": max(stripe_calls),
                                         "mean": round(sum(stripe_calls) / len(stripe_calls), 1)},
            "floor_slowest_account_s": round(max(floors), 2), "floor_serial_sum_s": round(sum(floors), 2),
            "floor_at_parallel_s": round(max(max(floors), sum(floors) / parallel), 2),
            "exit_code": doc["exit_code"], "per_account": per_account, "one_account_alone": alone}


def table(runs: list[dict[str, Any]]) -> str:
    """The Markdown table of docs/performance.md."""
    out = ["| Stripe pace /s | --parallel | wall s | floor s at N (slowest account; serial sum) | wall / floor "
           "| one pipeline s (mean; max) | events | Stripe calls (per account min–max) | Stripe 429s "
           "| Salesforce calls (per account mean) |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        per = r["stripe_calls_per_account"]
        sf_mean = r["salesforce_calls"] / r["accounts"]
        floor = r["floor_at_parallel_s"]
        ratio = f"{r['wall_s'] / floor:.1f}×" if floor else "—"
        pace = f"{r['stripe_requests_per_second']:g}" + (" (what-if)" if r["what_if"] else "")
        out.append(f"| {pace} | {r['parallel']} | {r['wall_s']:.1f} | {floor:.1f} "
                   f"({r['floor_slowest_account_s']:.1f}; {r['floor_serial_sum_s']:.1f}) | {ratio} "
                   f"| {r['pipeline_s']['mean']:.2f}; {r['pipeline_s']['max']:.2f} | {r['events']:,} "
                   f"| {r['stripe_calls']:,} ({per['min']}–{per['max']}) | {r['stripe_rate_limited']} "
                   f"| {r['salesforce_calls']:,} ({sf_mean:.1f}) |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accounts_run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=20, help="separate Stripe accounts (default 20)")
    parser.add_argument("--events", type=int, default=200, help="events per account (default 200)")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 4, 8], help="--parallel values (1 4 8)")
    parser.add_argument("--stripe-latency-ms", type=float, default=10.0)
    parser.add_argument("--sf-latency-ms", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--stripe-rps", type=float, nargs="*", default=[],
                        help="also run at these stripe.requests_per_second paces (what-ifs)")
    parser.add_argument("--json", type=Path, help="also write everything as JSON here")
    args = parser.parse_args()
    logging.getLogger("stripe_sf_sync").setLevel(logging.ERROR)
    now = int(time.time())
    runs = []
    for pace in [None, *args.stripe_rps]:
        for n in args.parallel:
            print(f"sync --all --parallel {n} over {args.accounts} accounts, Stripe pace {pace or 'configured'} …",
                  file=sys.stderr, flush=True)
            runs.append(measure(n, accounts=args.accounts, events=args.events, seed=args.seed, now=now,
                                stripe_latency_ms=args.stripe_latency_ms, sf_latency_ms=args.sf_latency_ms,
                                stripe_rps=pace))
    print(table(runs))
    for r in runs:
        alone = r["one_account_alone"]
        if not alone:
            continue
        print(f"\nStripe pace {r['stripe_requests_per_second']:g}/s: one account alone (`--account`, "
              f"{alone['events']} events): {alone['wall_s']:.1f} s "
              f"(the sync itself {alone['duration_s']:.2f} s), "
              f"{alone['stripe_calls']} Stripe and {alone['salesforce_calls']} Salesforce calls.")
    if args.json:
        args.json.write_text(json.dumps({"configured_stripe_requests_per_second": TEST_MODE_RPS,
                                         "stripe_latency_ms": args.stripe_latency_ms,
                                         "sf_latency_ms": args.sf_latency_ms, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
