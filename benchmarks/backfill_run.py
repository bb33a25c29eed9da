"""Backfill at scale: N subscriptions created 40 to 400 days ago (no events), written through
Bulk API 2.0, with peak RSS measured in the child process that runs `stripe-sf backfill`.

    .venv/bin/python -m benchmarks.backfill_run --subscriptions 30000

The stand-ins run in this process; the backfill runs as a real CLI subprocess, so its peak RSS
(`ru_maxrss` of the child) is the tool's own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stripe_sf_sync.sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox
from stripe_sf_sync.sandbox.stripe_factory import StripeFactory
from stripe_sf_sync.sandbox.stripe_server import StripeSandbox

ROOT = Path(__file__).resolve().parents[1]
DAY = 86400


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


def _time_prefix() -> list[str]:
    """GNU time reports the child's own peak RSS (`Maximum resident set size`)."""
    return ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []


def _max_rss_kb(stderr: str) -> int | None:
    for line in stderr.splitlines():
        if "Maximum resident set size" in line:
            return int(line.rsplit(":", 1)[1])
    return None


def run(n: int, *, sf_latency_ms: float, stripe_latency_ms: float, chunk: int) -> dict[str, Any]:
    """Seed, backfill in a child process, and report."""
    with StripeSandbox(latency_ms=stripe_latency_ms) as stripe, \
            SalesforceSandbox(SalesforceOrg(won_stage="Closed Won"), latency_ms=sf_latency_ms) as sf, \
            tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        seed(stripe, sf.org, n)
        seeded = time.monotonic() - t0
        example = (ROOT / "sync.yaml.example").read_text()
        config = Path(tmp) / "sync.yaml"
        config.write_text(example.replace("won_stage: null", "won_stage: Closed Won")
                          .replace("requests_per_second: 20", "requests_per_second: 100")
                          .replace("bulk_chunk: 5000", f"bulk_chunk: {chunk}")
                          .replace("bulk_poll_seconds: 5", "bulk_poll_seconds: 0.5"))
        env = {**os.environ, "STRIPE_API_KEY": stripe.api_key, "STRIPE_API_BASE": stripe.base_url,
               "SF_INSTANCE_URL": sf.instance_url, "SF_ACCESS_TOKEN": sf.access_token,
               "REQUESTS_CA_BUNDLE": sf.ca_path}
        since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 401 * DAY))
        sf_before, stripe_before = sf.org.api_used, stripe.request_count
        t1 = time.monotonic()
        cmd = [sys.executable, "-m", "stripe_sf_sync", "backfill", "--config", str(config), "--since", since,
               "--objects", "subscriptions", "--json"]
        proc = subprocess.run([*_time_prefix(), *cmd],
                              env=env, capture_output=True, text=True, check=False)
        wall = time.monotonic() - t1
        if proc.returncode not in (0, 3):
            raise SystemExit(f"backfill failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        summary = json.loads(proc.stdout)
        rss_kb = _max_rss_kb(proc.stderr) or resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        opps = len(sf.org.records("Opportunity"))
        return {"subscriptions": n, "seed_s": round(seeded, 1), "wall_s": round(wall, 1),
                "objects_per_s": round(n / wall), "peak_rss_mb": round(rss_kb / 1024, 1),
                "stripe_calls": summary["stripe_calls"], "stripe_requests_seen": stripe.request_count - stripe_before,
                "salesforce_calls": summary["salesforce_calls"], "salesforce_api_used": sf.org.api_used - sf_before,
                "bulk": summary["objects"]["subscriptions"]["bulk"], "opportunities": opps,
                "dead_lettered": summary["dead_lettered"]}


def main() -> None:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscriptions", type=int, default=30000)
    ap.add_argument("--sf-latency-ms", type=float, default=20.0)
    ap.add_argument("--stripe-latency-ms", type=float, default=10.0)
    ap.add_argument("--chunk", type=int, default=5000, help="backfill.bulk_chunk")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    result = run(args.subscriptions, sf_latency_ms=args.sf_latency_ms, stripe_latency_ms=args.stripe_latency_ms,
                 chunk=args.chunk)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
