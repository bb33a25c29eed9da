"""`python -m benchmarks.cron_run`: what cursor-driven cron runs cost in Stripe calls, with and without the
lookback re-read (`stripe.lookback_seconds`; 0 is the behaviour before it existed).

The benchmark scenario is generated, a first `sync --since` applies all but the newest `--new` events, then
two runs follow as cron would start them: one that applies those `--new` events from the cursor, and a quiet
one (nothing new). Counts only: the stand-ins run in this process without injected latency, so times are not
reported.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import BATCHED, set_yaml_value, write_config
from benchmarks.scenario import benchmark_org, generate, seed_state
from stripe_sf_sandbox.demo import sandbox_environment
from stripe_sf_sandbox.salesforce_server import SalesforceSandbox
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync import service
from stripe_sf_sync.config import example_config


def _sync(config: Path, env: service.Environment, **kw: Any) -> service.RunSummary:
    return service.run_sync(config, env, since=kw.get("since"), dry_run=False, max_events=kw.get("max_events"))


def measure(*, events: int, new: int, lookback: int, seed: int, now: int) -> dict[str, Any]:
    """The Stripe calls of each cron run for one lookback setting."""
    with StripeSandbox() as stripe, SalesforceSandbox(benchmark_org()) as sf, \
            tempfile.TemporaryDirectory(prefix="stripe-sf-cron-") as tmp:
        gen = generate(stripe, sf.org, events=events, seed=seed, now=now)
        config = write_config(Path(tmp) / "sync.yaml", BATCHED)
        config.write_text(set_yaml_value(config.read_text(), "lookback_seconds", str(lookback)))
        env = sandbox_environment(stripe, sf)
        env.sleep = lambda s: None
        service.run_discover(config, env, write=True, example=example_config())
        seed_state(Path(tmp) / "stripe-sf-state.sqlite", gen)
        first = _sync(config, env, since=time.strftime("%Y-%m-%d", time.gmtime(gen.since)),
                      max_events=events - new)
        cron = _sync(config, env)
        quiet = _sync(config, env)
        return {"lookback_seconds": lookback, "first_run_events": first.events_read,
                "cron_events": cron.events_read, "cron_stripe_calls": cron.stripe_calls,
                "cron_stripe_calls_per_1000": round(1000 * cron.stripe_calls / max(cron.events_read, 1), 1),
                "quiet_stripe_calls": quiet.stripe_calls, "quiet_salesforce_calls": quiet.salesforce_calls}


def main() -> None:
    """Print a Markdown table: lookback 0 (before) against the configured default."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cron_run", description=__doc__)
    parser.add_argument("--events", type=int, default=4000, help="scenario size (default 4000)")
    parser.add_argument("--new", type=int, default=1000, help="events the measured cron run applies (default 1000)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    logging.getLogger("stripe_sf_sync").setLevel(logging.ERROR)  # the scenario's dead letters are expected
    now = int(time.time())
    rows = [measure(events=args.events, new=args.new, lookback=lb, seed=args.seed, now=now) for lb in (0, 300)]
    print("| lookback_seconds | cron run: events | Stripe calls | per 1,000 events | quiet run: Stripe calls "
          "| quiet run: Salesforce calls |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['lookback_seconds']} | {r['cron_events']:,} | {r['cron_stripe_calls']} | "
              f"{r['cron_stripe_calls_per_1000']} | {r['quiet_stripe_calls']} | {r['quiet_salesforce_calls']} |")


if __name__ == "__main__":
    main()
