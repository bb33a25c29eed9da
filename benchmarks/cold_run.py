"""`python -m benchmarks.cold_run`: a first `sync --since` without backfill (issue 14, the cold start).

Existing customers (created before the window, so no customer event is in reach and state knows none of
them), one `customer.subscription.created` each in the window, each customer distinct. Two variants: the
subscription's own metadata names its Opportunity (`opportunity`), or only the customer's metadata names
its Account (`customer-metadata`). Each runs as `benchmarks.run` runs the batched mode: fresh stand-ins with
injected latency, discovery, then the sync in a fresh child process.

The Stripe floor: event pages + min(unknown customers, customers / 100) + invoice-payment listings, where
the unknown customers are those whose metadata the rules need (none when the subscription names its
Opportunity; every one when only the customer names its Account), and the scenario has no payment to link.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import BATCHED, RunResult, measure
from benchmarks.scenario import COLD_CUSTOMER_METADATA, COLD_OPPORTUNITY, COLD_VARIANTS
from stripe_sf_sync.stripe.source import PAGE_LIMIT

FLOOR_FACTOR = 1.5  # target: Stripe calls within 1.5x the floor, both variants
OPPORTUNITY_PER_1000 = 15  # target: Stripe calls per 1,000 events with the Opportunity in subscription metadata


@dataclass(frozen=True)
class StripeFloor:
    """The fewest Stripe calls a cold start of `events` events over `customers` customers allows."""

    events: int
    customers: int
    unknown_customers: int
    invoice_payment_listings: int = 0
    # A first run reads the key's account once (GET /v1/account), to bind the state to it (identity.py).
    account_reads: int = 1

    @property
    def event_pages(self) -> int:
        return math.ceil(self.events / PAGE_LIMIT)

    @property
    def customer_calls(self) -> int:
        return min(self.unknown_customers, math.ceil(self.customers / PAGE_LIMIT))

    @property
    def total(self) -> int:
        return self.event_pages + self.customer_calls + self.invoice_payment_listings + self.account_reads


def floor_of(variant: str, events: int, customers: int) -> StripeFloor:
    """The floor of one variant: its customers are unknown only when the rules need their metadata."""
    return StripeFloor(events, customers, events if variant == COLD_CUSTOMER_METADATA else 0)


def verdicts(variant: str, r: RunResult, floor: StripeFloor) -> dict[str, bool]:
    """The issue's targets for one run."""
    out = {"within_1.5x_floor": r.stripe_calls <= FLOOR_FACTOR * floor.total}
    if variant == COLD_OPPORTUNITY:
        out["at_most_15_per_1000"] = r.stripe_per_1000 <= OPPORTUNITY_PER_1000
    return out


def row(variant: str, r: RunResult, floor: StripeFloor) -> str:
    """One Markdown table row."""
    k = r.stripe_by_kind
    lists, reads = k.get("v1/customers", 0), k.get("v1/customers/{id}", 0)
    met = ", ".join(f"{name} {'met' if ok else 'NOT met'}" for name, ok in verdicts(variant, r, floor).items())
    return (f"| {variant} | {r.events:,} | {r.stripe_calls:,} ({k.get('v1/events', 0)} event pages, {lists} customer "
            f"lists, {reads} customer reads) | {r.stripe_per_1000:.1f} | {floor.total} ({floor.event_pages} + "
            f"{floor.customer_calls} + {floor.invoice_payment_listings} + {floor.account_reads}) | "
            f"{r.stripe_calls / floor.total:.2f} | "
            f"{r.sf_calls} ({r.sf_per_1000:.1f}/1,000) | {r.wall_s:.1f} | {r.cpu_s:.1f} | {r.peak_rss_mib:.0f} | "
            f"{r.applied}/{r.dead_lettered} | {met} |")


HEADER = ("| Variant | Events | Stripe calls | Stripe /1,000 | Stripe floor (pages + customers + listings) | "
          "÷ floor | Salesforce calls | Wall s | CPU s | Peak RSS MiB | applied/dead | Targets |\n"
          "|---|---:|---|---:|---|---:|---|---:|---:|---:|---|---|")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cold_run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000, help="subscription events = customers with one (2000)")
    parser.add_argument("--customers", type=int, default=None,
                        help="customers in the account (default: --events; more exist without events)")
    parser.add_argument("--variants", nargs="+", choices=COLD_VARIANTS, default=list(COLD_VARIANTS))
    parser.add_argument("--sf-latency-ms", type=float, default=20.0)
    parser.add_argument("--stripe-latency-ms", type=float, default=10.0)
    parser.add_argument("--stripe-rps", type=float, default=None, help="what-if: stripe.requests_per_second")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, default=None, help="also write the runs and floors as JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run each variant once (batched, the packaged config) and print the table."""
    args = parse_args(argv)
    customers = max(args.customers or args.events, args.events)
    now = int(time.time())
    lines, dump = [HEADER], []
    with tempfile.TemporaryDirectory(prefix="stripe-sf-cold-") as tmp:
        for variant in args.variants:
            print(f"cold start, {variant}: {args.events} events ...", file=sys.stderr)
            r = measure(BATCHED, Path(tmp) / variant, events=args.events, customers=customers, seed=args.seed,
                        now=now, sf_latency_ms=args.sf_latency_ms, stripe_latency_ms=args.stripe_latency_ms,
                        stripe_rps=args.stripe_rps, cold=variant)
            floor = floor_of(variant, args.events, customers)
            lines.append(row(variant, r, floor))
            dump.append({"variant": variant, "run": r.as_dict(), "floor": {
                "event_pages": floor.event_pages, "customer_calls": floor.customer_calls,
                "invoice_payment_listings": floor.invoice_payment_listings, "account_reads": floor.account_reads,
                "total": floor.total},
                "targets": verdicts(variant, r, floor)})
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": dump},
                                        indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
