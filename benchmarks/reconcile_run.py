"""Reconcile at scale: N subscriptions (and their Accounts) brought into Salesforce by a real backfill, a
small share of them drifted by hand, then `stripe-sf reconcile` run as a real CLI process, with its wall time,
Stripe and Salesforce calls and peak RSS.

    .venv/bin/python -m benchmarks.reconcile_run --subscriptions 10000 100000 --json /tmp/reconcile.json

The stand-ins run in this process (seeded as `benchmarks.backfill_run` seeds them); the backfill and the
reconcile each run as a CLI subprocess, and the reconcile's peak RSS is its own (VmHWM, printed by the same
thin wrapper as backfill_run's). With 10,000 and 100,000 among the sizes, the peak-RSS target is judged.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.backfill_run import _WRAPPER, DAY, ROOT, _max_rss_kib, evaluate, seed, write_config
from benchmarks.run import RSS_BIG, RSS_SMALL, machine_info
from stripe_sf_sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox
from stripe_sf_sandbox.stripe_server import StripeSandbox

DRIFT_EVERY = 100  # one record in this many is drifted by hand, per kind


def drift(org: SalesforceOrg) -> dict[str, int]:
    """By hand, as people do: an Amount edited, an Opportunity deleted, an Account status changed."""
    opps = [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c")]
    edited = opps[::DRIFT_EVERY]
    for o in edited:
        org.update("Opportunity", o["Id"], {"Amount": 1})
    deleted = opps[DRIFT_EVERY // 2::DRIFT_EVERY]
    for o in deleted:
        org.delete("Opportunity", o["Id"])
    accounts = org.records("Account")[::DRIFT_EVERY]
    for a in accounts:
        wrong = "unpaid" if a.get("Subscription_Status__c") != "unpaid" else "active"
        org.update("Account", a["Id"], {"Subscription_Status__c": wrong})
    return {"value_mismatch": len(edited), "missing_opportunity": len(deleted), "status_mismatch": len(accounts)}


def _cli(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _WRAPPER, *args], env=env, capture_output=True, text=True,
                          check=False, cwd=ROOT)


def run(n: int, *, sf_latency_ms: float, stripe_latency_ms: float, stripe_rps: float) -> dict[str, Any]:
    """Seed, backfill, drift, reconcile in a child process, and report."""
    with StripeSandbox(latency_ms=stripe_latency_ms) as stripe, \
            SalesforceSandbox(SalesforceOrg(won_stage="Closed Won"), latency_ms=sf_latency_ms) as sf, \
            tempfile.TemporaryDirectory() as tmp:
        gc.disable()  # hundreds of thousands of small dicts and no cycles: full scans only slow seeding down
        try:
            seed(stripe, sf.org, n)
        finally:
            gc.enable()
        gc.collect()
        gc.freeze()
        try:
            return _reconcile(n, stripe, sf, Path(tmp), stripe_rps=stripe_rps)
        finally:
            gc.unfreeze()


def _reconcile(n: int, stripe: StripeSandbox, sf: SalesforceSandbox, tmp: Path, *, stripe_rps: float) -> dict[str, Any]:
    config = write_config(tmp / "sync.yaml", chunk=5000, stripe_rps=stripe_rps)
    env = {**os.environ, "STRIPE_API_KEY": stripe.api_key, "STRIPE_API_BASE": stripe.base_url,
           "SF_INSTANCE_URL": sf.instance_url, "SF_ACCESS_TOKEN": sf.access_token, "REQUESTS_CA_BUNDLE": sf.ca_path}
    since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 401 * DAY))
    done = _cli(["backfill", "--config", str(config), "--since", since, "--objects", "subscriptions", "--json"], env)
    if done.returncode != 0:
        raise SystemExit(f"backfill of {n} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    seeded = drift(sf.org)
    sf_before, stripe_before = sf.org.api_used, stripe.request_count
    t0 = time.monotonic()
    proc = _cli(["reconcile", "--config", str(config), "--json"], env)
    wall = time.monotonic() - t0
    if proc.returncode not in (0, 9):
        raise SystemExit(f"reconcile of {n} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout)
    rss_kib = _max_rss_kib(proc.stderr)
    if rss_kib is None:
        raise SystemExit(f"reconcile of {n}: no peak RSS reported:\n{proc.stderr[-3000:]}")
    found = {k: report["counts"][k] for k in seeded}
    if found != seeded:
        raise SystemExit(f"reconcile of {n} found {found}, but {seeded} were drifted")
    return {"subscriptions": n, "wall_s": round(wall, 1), "objects_per_s": round(n / wall),
            "peak_rss_mib": round(rss_kib / 1024, 1), "stripe_calls": report["stripe_calls"],
            "stripe_requests_seen": stripe.request_count - stripe_before,
            "salesforce_calls": report["salesforce_calls"], "salesforce_api_used": sf.org.api_used - sf_before,
            "checked": report["checked"], "matched": report["matched"], "mismatches": report["mismatches"],
            "exit_code": proc.returncode}


# The Markdown table: heading, and the cell of a run.
TABLE: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("Subscriptions", lambda r: f"{r['subscriptions']:,}"), ("Wall time", lambda r: f"{r['wall_s']:,.1f} s"),
    ("Objects/s", lambda r: f"{r['objects_per_s']:,}"), ("Stripe calls", lambda r: f"{r['stripe_calls']:,}"),
    ("Salesforce calls", lambda r: f"{r['salesforce_calls']:,}"), ("Mismatches", lambda r: f"{r['mismatches']:,}"),
    ("Peak RSS", lambda r: f"{r['peak_rss_mib']:.0f} MiB"))


def markdown(report: dict[str, Any]) -> str:
    """The settings, a row per run and the target, as Markdown."""
    st, t = report["settings"], report["target"]
    head = (f"Latency per request: Salesforce {st['sf_latency_ms']:g} ms, Stripe {st['stripe_latency_ms']:g} ms; "
            f"Stripe pacing {st['stripe_rps']:g}/s; one record in {DRIFT_EVERY} drifted per kind.")
    rows = ["| " + " | ".join(cell(r) for _, cell in TABLE) + " |" for r in report["runs"]]
    return "\n".join([head, "", "| " + " | ".join(h for h, _ in TABLE) + " |", "|" + "---:|" * len(TABLE), *rows, "",
                      "| Target | Goal | Measured | Verdict |", "|---|---|---|---|",
                      f"| Peak RSS, reconcile | {t['goal']} | {t['measured']} | **{t['verdict']}** |"]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: each size in turn, then the table (and the JSON)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.reconcile_run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscriptions", type=int, nargs="+", default=[RSS_SMALL, RSS_BIG],
                    help="reconcile size(s); 10000 100000 (the default) judges the peak-RSS target")
    for name, default in (("--sf-latency-ms", 20.0), ("--stripe-latency-ms", 10.0), ("--stripe-rps", 100.0)):
        ap.add_argument(name, type=float, default=default)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if min(args.subscriptions) < 1:
        ap.error("--subscriptions must be positive")
    settings = {"sf_latency_ms": args.sf_latency_ms, "stripe_latency_ms": args.stripe_latency_ms,
                "stripe_rps": args.stripe_rps}
    runs = []
    for n in args.subscriptions:
        print(f"[{n} subscriptions] seeding, backfilling, drifting, reconciling ...", file=sys.stderr, flush=True)
        runs.append(run(n, **settings))
        print(f"[{n}] {runs[-1]}", file=sys.stderr, flush=True)
    report = {"machine": machine_info(), "settings": settings, "runs": runs, "target": evaluate(runs)}
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
