"""`python -m benchmarks.serve_bench`: `stripe-sf serve` under a bounded load from a second local process.

This process runs the two stand-ins (with injected latency) and the receiver (uvicorn and its worker, as
`stripe-sf serve` runs them); a child process signs the generated scenario's events as Stripe does
(api-facts.md §4) and delivers them over loopback:

1. paced: `--rate` deliveries a second for `--seconds` (open loop: each is sent at its scheduled time,
   from a few threads, so a slow reply does not hold back the next ones);
2. burst: `--burst` more deliveries, as fast as `--concurrency` threads can send them: the requests per
   second the receiver acknowledges.

Reported: the acknowledgement latency (p50, p99) of each phase, and for the paced phase the latency from
receipt to the committed outcome (p50, p95): the entry is marked done in the transaction that records the
outcome, after Salesforce accepted the writes, so it bounds receipt-to-write from above. Targets: p99
acknowledgement under 50 ms at 200 requests/s, p95 receipt-to-write under 2 s at that load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SECRET = "whsec_benchmark"
ACK_P99_TARGET_S = 0.050
WRITE_P95_TARGET_S = 2.0


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of `values`."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def ms(value: float | None) -> float | None:
    return round(value * 1000, 1) if value is not None else None


# --- the client: the second process ----------------------------------------------------------------
def client(spec_path: Path, out_path: Path) -> None:
    """Deliver the events of `spec_path` (paced, then burst); write each phase's figures to `out_path`."""
    import requests

    from stripe_sf_sandbox.webhooks import signature_header

    spec = json.loads(spec_path.read_text())
    url = spec["url"]

    def phase(bodies: list[str], *, rate: float | None, threads: int) -> dict[str, Any]:
        latencies: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()
        nxt = [0]
        start = time.perf_counter() + 0.2

        def run() -> None:
            session = requests.Session()
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= len(bodies):
                    return
                if rate:
                    delay = start + i / rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                body = bodies[i]
                header = signature_header(body, SECRET)
                t0 = time.perf_counter()
                reply = session.post(url, data=body.encode(), timeout=30,
                                     headers={"Stripe-Signature": header, "Content-Type": "application/json"})
                took = time.perf_counter() - t0
                with lock:
                    latencies.append(took)
                    if reply.status_code != 200:
                        failures.append(f"{reply.status_code} {reply.text.strip()}")

        workers = [threading.Thread(target=run) for _ in range(threads)]
        began = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - max(began, start if rate else began)
        return {"requests": len(bodies), "seconds": round(elapsed, 3), "rps": round(len(bodies) / elapsed, 1),
                "ack_p50_ms": ms(percentile(latencies, 50)), "ack_p99_ms": ms(percentile(latencies, 99)),
                "ack_max_ms": ms(max(latencies) if latencies else None), "failures": failures[:5],
                "failed": len(failures)}

    paced = phase(spec["paced"], rate=spec["rate"], threads=spec["paced_threads"])
    burst = phase(spec["burst"], rate=None, threads=spec["concurrency"]) if spec["burst"] else None
    out_path.write_text(json.dumps({"paced": paced, "burst": burst}))


# --- the receiver and the stand-ins: this process ---------------------------------------------------
def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run both phases; the figures and whether the targets are met."""
    from benchmarks.harness import BATCHED, write_config
    from benchmarks.scenario import benchmark_org, generate, seed_state
    from stripe_sf_sandbox.demo import sandbox_environment
    from stripe_sf_sandbox.salesforce_server import SalesforceSandbox
    from stripe_sf_sandbox.stripe_server import StripeSandbox
    from stripe_sf_sync import serve, service
    from stripe_sf_sync.config import example_config

    paced_n = int(args.rate * args.seconds)
    with StripeSandbox(latency_ms=args.stripe_latency_ms) as stripe_sb, \
            SalesforceSandbox(benchmark_org(), latency_ms=args.sf_latency_ms) as sf, \
            tempfile.TemporaryDirectory(prefix="stripe-sf-serve-bench-") as tmp:
        gen = generate(stripe_sb, sf.org, events=paced_n + args.burst, seed=args.seed, now=int(time.time()))
        events = sorted(stripe_sb.events, key=lambda e: (e["created"], e["id"]))
        bodies = [json.dumps(e) for e in events]
        config = write_config(Path(tmp) / "sync.yaml", BATCHED)
        env = sandbox_environment(stripe_sb, sf)
        env = dataclasses.replace(env, env={**env.env, "STRIPE_WEBHOOK_SECRET": SECRET})
        service.run_discover(config, env, write=True, example=example_config())
        seed_state(Path(tmp) / "stripe-sf-state.sqlite", gen)

        runtime = serve.prepare(config, env)
        port = _free_port()
        srv = serve.server(runtime, serve.ServeOptions(port=port, sync_every_s=0, batch_window_s=args.batch_window))
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        while not srv.started:
            time.sleep(0.02)
        worker = srv.config.app.state.runtime_state["worker"]
        done: dict[str, float] = {}
        worker.observers.append(lambda eid, s: done.__setitem__(eid, s))

        while worker._pending:  # the drain at start (an empty inbox) is not the load's
            time.sleep(0.02)
        sf_calls_before = len(sf.requests_log)
        spec = Path(tmp) / "spec.json"
        out = Path(tmp) / "client.json"
        spec.write_text(json.dumps({"url": f"http://127.0.0.1:{port}/stripe/webhook", "rate": args.rate,
                                    "paced_threads": args.paced_threads, "concurrency": args.concurrency,
                                    "paced": bodies[:paced_n], "burst": bodies[paced_n:]}))
        child = subprocess.run([sys.executable, "-m", "benchmarks.serve_bench", "--client", str(spec), str(out)],
                               cwd=Path(__file__).resolve().parents[1], env=dict(os.environ), check=True)
        assert child.returncode == 0
        figures = json.loads(out.read_text())
        deadline = time.monotonic() + args.drain_timeout
        while len(done) < len(events) and time.monotonic() < deadline:
            time.sleep(0.1)
        sf_calls = len(sf.requests_log) - sf_calls_before
        drains = (worker.metrics.registry.get_sample_value("stripe_sf_inbox_drains_total") or 0) - 1
        srv.should_exit = True
        thread.join(60)

    paced_ids = [e["id"] for e in events[:paced_n]]
    to_write = [done[i] for i in paced_ids if i in done]
    figures["paced"].update({
        "applied": len(to_write), "write_p50_ms": ms(percentile(to_write, 50)),
        "write_p95_ms": ms(percentile(to_write, 95)), "write_max_ms": ms(max(to_write) if to_write else None)})
    figures["drained"] = len(done)
    figures["salesforce_calls"] = sf_calls
    figures["salesforce_calls_per_1000_events"] = round(sf_calls * 1000 / max(1, len(done)), 1)
    figures["drains"] = int(drains)
    figures["events"] = len(events)
    figures["settings"] = {"rate": args.rate, "seconds": args.seconds, "burst": args.burst,
                           "concurrency": args.concurrency, "sf_latency_ms": args.sf_latency_ms,
                           "stripe_latency_ms": args.stripe_latency_ms, "batch_window_s": args.batch_window,
                           "cpus": os.cpu_count()}
    p = figures["paced"]
    figures["targets"] = {
        "ack_p99_under_50ms_at_rate": p["ack_p99_ms"] is not None and p["ack_p99_ms"] < ACK_P99_TARGET_S * 1000
        and p["failed"] == 0,
        "write_p95_under_2s_at_rate": p["write_p95_ms"] is not None and p["applied"] == paced_n
        and p["write_p95_ms"] < WRITE_P95_TARGET_S * 1000,
    }
    return figures


SWEEP = ((2.0, 60.0), (20.0, 20.0), (200.0, 10.0))  # deliveries/s and seconds: 120, 400 and 2,000 events


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Salesforce calls per 1,000 events and receipt-to-write p95 at each rate, for window 0 (a drain per
    arrival, as before issue 20 §4) and for `--batch-window`."""
    rows: dict[str, Any] = {}
    for rate, seconds in SWEEP:
        for window in (0.0, args.batch_window):
            run = argparse.Namespace(**{**vars(args), "rate": rate, "seconds": seconds, "burst": 0,
                                        "batch_window": window})
            f = measure(run)
            rows[f"{rate:g}/s, window {window:g} s"] = {
                "events": f["events"], "drains": f["drains"], "salesforce_calls": f["salesforce_calls"],
                "salesforce_calls_per_1000_events": f["salesforce_calls_per_1000_events"],
                "write_p95_ms": f["paced"]["write_p95_ms"], "ack_p99_ms": f["paced"]["ack_p99_ms"]}
    return rows


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--client":
        client(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=200.0, help="paced deliveries per second")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the paced phase")
    ap.add_argument("--burst", type=int, default=2000, help="deliveries sent as fast as possible afterwards")
    ap.add_argument("--concurrency", type=int, default=16, help="client threads in the burst")
    ap.add_argument("--paced-threads", type=int, default=8, help="client threads in the paced phase")
    ap.add_argument("--sf-latency-ms", type=float, default=20.0)
    ap.add_argument("--stripe-latency-ms", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--drain-timeout", type=float, default=120.0, help="seconds to wait for the inbox to drain")
    ap.add_argument("--batch-window", type=float, default=0.5,
                    help="the worker's batch window in seconds (0: a drain as soon as a delivery arrives)")
    ap.add_argument("--sweep", action="store_true",
                    help="Salesforce calls per 1,000 events at 2, 20 and 200 deliveries/s, without and with the "
                         "batch window (no burst)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    import logging
    logging.basicConfig(level=logging.WARNING)
    figures = sweep(args) if args.sweep else measure(args)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if not args.sweep and not all(figures["targets"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
