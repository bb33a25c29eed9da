"""Backfill at scale: N subscriptions created 40 to 400 days ago (no events), written through
Bulk API 2.0, with the peak RSS of the process that runs `stripe-sf backfill`.

    .venv/bin/python -m benchmarks.backfill_run --subscriptions 10000 100000 --json /tmp/backfill.json

The stand-ins run in this process; each backfill runs as a real CLI subprocess, so its peak RSS is the
tool's own. With 10,000 and 100,000 among the sizes, the peak-RSS target is judged (≤ 200 MB at
100,000 and within 20% of the 10,000 run); `benchmarks.run --backfill-json` reads the JSON back.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import set_yaml_value
from benchmarks.run import RSS_BIG, RSS_SMALL, machine_info, rss_goal, rss_target
from stripe_sf_sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync.config import example_config

ROOT = Path(__file__).resolve().parents[1]
DAY = 86400
RSS_LINE = "Maximum resident set size (kbytes)"
# Runs the CLI in this interpreter, then reports the process's own peak RSS (VmHWM, as benchmarks.child
# does) on stderr. Not ru_maxrss: the process is forked from this one, whose stand-ins hold hundreds of MB,
# and Linux carries that high-water mark over exec.
_WRAPPER = (
    "import runpy, sys\n"
    "from benchmarks.child import peak_rss_kib\n"
    "sys.argv = ['stripe-sf', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('stripe_sf_sync', run_name='__main__', alter_sys=True)\n"
    "finally:\n"
    f"    print('{RSS_LINE}:', peak_rss_kib(), file=sys.stderr)\n"
)


def seed(stripe: StripeSandbox, org: SalesforceOrg, n: int, *, seed: int = 1) -> None:
    """N customers with one subscription each, 40..400 days old, and a matching Account each."""
    f = StripeFactory(stripe, seed=seed)
    now = int(time.time())
    prices = [f.price(amount, "usd", interval) for amount, interval in
              ((2900, "month"), (9900, "month"), (99000, "year"), (4900, "month"))]
    statuses = ["active"] * 6 + ["trialing", "past_due", "canceled", "canceled"]
    for i in range(n):
        created = now - (40 + (i * 360) // max(n - 1, 1)) * DAY
        cus = f.customer(f"Customer {i}", f"c{i}@example.com", created=created)
        org.insert("Account", {"Name": f"Customer {i}", "Stripe_Customer_ID__c": cus["id"]})
        f.subscription(cus["id"], [(prices[i % len(prices)], 1 + i % 4)], status=statuses[i % len(statuses)],
                       created=created)


def _max_rss_kib(stderr: str) -> int | None:
    for line in stderr.splitlines():
        if line.startswith(RSS_LINE):
            return int(line.rsplit(":", 1)[1])
    return None


def write_config(path: Path, *, chunk: int, stripe_rps: float) -> Path:
    """sync.yaml from the packaged example: the stand-in's won stage, pacing, bulk chunk and a quick poll."""
    text = example_config()
    for key, value in (("won_stage", "Closed Won"), ("requests_per_second", f"{stripe_rps:g}"),
                       ("bulk_chunk", str(chunk)), ("bulk_poll_seconds", "0.5")):
        text = set_yaml_value(text, key, value)
    path.write_text(text, encoding="utf-8")
    return path


def run(n: int, *, sf_latency_ms: float, stripe_latency_ms: float, chunk: int, stripe_rps: float) -> dict[str, Any]:
    """Seed, backfill in a child process, and report."""
    with StripeSandbox(latency_ms=stripe_latency_ms) as stripe, \
            SalesforceSandbox(SalesforceOrg(won_stage="Closed Won"), latency_ms=sf_latency_ms) as sf, \
            tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        gc.disable()  # hundreds of thousands of small dicts and no cycles: full scans only slow seeding down
        try:
            seed(stripe, sf.org, n)
        finally:
            gc.enable()
        seeded = time.monotonic() - t0
        gc.collect()
        gc.freeze()  # nor should the collector rescan the stand-ins while they serve the backfill
        try:
            return _backfill(n, stripe, sf, Path(tmp), chunk=chunk, stripe_rps=stripe_rps, seeded=seeded)
        finally:
            gc.unfreeze()


def _backfill(n: int, stripe: StripeSandbox, sf: SalesforceSandbox, tmp: Path, *, chunk: int, stripe_rps: float,
              seeded: float) -> dict[str, Any]:
    config = write_config(tmp / "sync.yaml", chunk=chunk, stripe_rps=stripe_rps)
    env = {**os.environ, "STRIPE_API_KEY": stripe.api_key, "STRIPE_API_BASE": stripe.base_url,
           "SF_INSTANCE_URL": sf.instance_url, "SF_ACCESS_TOKEN": sf.access_token,
           "REQUESTS_CA_BUNDLE": sf.ca_path}
    since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 401 * DAY))
    sf_before, stripe_before = sf.org.api_used, stripe.request_count
    t1 = time.monotonic()
    cmd = [sys.executable, "-c", _WRAPPER, "backfill", "--config", str(config), "--since", since,
           "--objects", "subscriptions", "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=ROOT)
    wall = time.monotonic() - t1
    if proc.returncode not in (0, 3):
        raise SystemExit(f"backfill of {n} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    rss_kib = _max_rss_kib(proc.stderr)
    if rss_kib is None:
        raise SystemExit(f"backfill of {n}: no peak RSS reported:\n{proc.stderr[-3000:]}")
    return {"subscriptions": n, "seed_s": round(seeded, 1), "wall_s": round(wall, 1),
            "objects_per_s": round(n / wall), "peak_rss_mib": round(rss_kib / 1024, 1),
            "stripe_calls": summary["stripe_calls"], "stripe_requests_seen": stripe.request_count - stripe_before,
            "salesforce_calls": summary["salesforce_calls"], "salesforce_api_used": sf.org.api_used - sf_before,
            "bulk": summary["objects"]["subscriptions"]["bulk"], "opportunities": len(sf.org.records("Opportunity")),
            "dead_lettered": summary["dead_lettered"]}


def evaluate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The peak-RSS target over these runs (flatness needs both 10,000 and 100,000)."""
    by_size = {int(r["subscriptions"]): float(r["peak_rss_mib"]) for r in runs}
    measured, met = rss_target(by_size.get(RSS_SMALL), by_size.get(RSS_BIG), unit="subscriptions",
                               hint=f"needs --subscriptions {RSS_SMALL} {RSS_BIG}")
    return {"goal": rss_goal("subscriptions"), "measured": measured, "met": met,
            "verdict": "not measured" if met is None else ("met" if met else "NOT met")}


def markdown(report: dict[str, Any]) -> str:
    """The runs and the target as Markdown."""
    st, t = report["settings"], report["target"]
    lines = [f"Latency per request: Salesforce {st['sf_latency_ms']:g} ms, Stripe {st['stripe_latency_ms']:g} ms; "
             f"Stripe pacing {st['stripe_rps']:g}/s; bulk chunk {st['chunk']:,}.", "",
             "| Subscriptions | Wall time | Objects/s | Salesforce calls | Stripe calls | Opportunities | Peak RSS |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['subscriptions']:,} | {r['wall_s']:,.1f} s | {r['objects_per_s']:,} | {r['salesforce_calls']:,} "
              f"| {r['stripe_calls']:,} | {r['opportunities']:,} | {r['peak_rss_mib']:.0f} MiB |"
              for r in report["runs"]]
    lines += ["", "| Target | Goal | Measured | Verdict |", "|---|---|---|---|",
              f"| Peak RSS, backfill | {t['goal']} | {t['measured']} | **{t['verdict']}** |"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.backfill_run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscriptions", type=int, nargs="+", default=[RSS_SMALL, RSS_BIG],
                    help="backfill size(s); 10000 100000 (the default) judges the peak-RSS target")
    ap.add_argument("--sf-latency-ms", type=float, default=20.0)
    ap.add_argument("--stripe-latency-ms", type=float, default=10.0)
    ap.add_argument("--stripe-rps", type=float, default=100.0, help="stripe.requests_per_second (Stripe's live limit)")
    ap.add_argument("--chunk", type=int, default=5000, help="backfill.bulk_chunk")
    ap.add_argument("--json", type=Path, help="also write the results here (benchmarks.run --backfill-json reads it)")
    args = ap.parse_args(argv)
    if any(n < 1 for n in args.subscriptions):
        ap.error("--subscriptions must be positive")
    runs = []
    for n in args.subscriptions:
        print(f"[{n} subscriptions] seeding and backfilling ...", file=sys.stderr, flush=True)
        runs.append(run(n, sf_latency_ms=args.sf_latency_ms, stripe_latency_ms=args.stripe_latency_ms,
                        chunk=args.chunk, stripe_rps=args.stripe_rps))
        print(f"[{n} subscriptions] {runs[-1]['wall_s']} s, peak RSS {runs[-1]['peak_rss_mib']} MiB",
              file=sys.stderr, flush=True)
    report = {"machine": machine_info(),
              "settings": {"sf_latency_ms": args.sf_latency_ms, "stripe_latency_ms": args.stripe_latency_ms,
                           "stripe_rps": args.stripe_rps, "chunk": args.chunk},
              "runs": runs, "target": evaluate(runs)}
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
