"""`python -m benchmarks.run --events 10000`: batched against per-event, in one run, as a Markdown table.

Each size gets two runs against fresh, identical stand-ins (same seed): the pipeline with its defaults
(batch_size 500, coalesce on) and the same pipeline forced to one event per batch without coalescing
(the per-event baseline, what a Zapier-style integration spends at least).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import BATCHED, PER_EVENT, RunResult, measure

DEFAULT_SF_LATENCY_MS = 20.0
DEFAULT_STRIPE_LATENCY_MS = 10.0
CALLS_RATIO_TARGET = 20  # batched must use at most 1/20 of the per-event calls
TIME_TARGET_EVENTS = 10_000
TIME_TARGET_S = 120.0
RSS_TARGET_EVENTS = 100_000
RSS_TARGET_MIB = 200.0
RSS_FLAT_SHARE = 0.20


@dataclass
class SizeReport:
    """Both runs of one scenario size."""

    events: int
    batched: RunResult
    baseline: RunResult | None  # measured; `scaled()` gives the extrapolated view when sampled

    @property
    def ratio(self) -> float | None:
        """Per-event Salesforce calls per batched call."""
        if self.baseline is None or not self.batched.sf_calls:
            return None
        return self.baseline.scaled().sf_calls / self.batched.sf_calls


@dataclass
class Target:
    """One target from the issue, with what was measured."""

    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measured in this invocation

    @property
    def verdict(self) -> str:
        """met / not met / not measured."""
        return "not measured" if self.met is None else ("met" if self.met else "NOT met")


@dataclass
class Report:
    """Everything one invocation measured."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    sizes: list[SizeReport] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)


def machine_info() -> dict[str, Any]:
    """Where the numbers came from: CPU model and count, memory, Python."""
    model, mem_kib = "unknown", 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass  # not Linux: the table still says what it can
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).resolve().parents[1],
                                capture_output=True, text=True, check=False, timeout=10).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"  # no git: the numbers still stand, unattributed
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_model": model, "cpus": cpus, "memory_gib": round(mem_kib / 1024**2, 1),
            "python": platform.python_version(), "platform": platform.platform(), "commit": commit}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see benchmarks/README.md)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, nargs="+", default=[10_000],
                   help="scenario size(s) in events; several sizes also check that peak RSS stays flat")
    p.add_argument("--customers", type=int, default=None, help="customers per scenario (default: events / 10)")
    p.add_argument("--sf-latency-ms", type=float, default=DEFAULT_SF_LATENCY_MS,
                   help="latency the Salesforce stand-in adds to every request")
    p.add_argument("--stripe-latency-ms", type=float, default=DEFAULT_STRIPE_LATENCY_MS,
                   help="latency the Stripe stand-in adds to every request")
    p.add_argument("--seed", type=int, default=42, help="scenario seed: same seed, same events, same call counts")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--skip-baseline", action="store_true", help="run only the batched mode")
    p.add_argument("--baseline-sample", type=int, default=10_000, metavar="K",
                   help="the per-event run covers the first min(events, K) events; above K its calls and time "
                        "are extrapolated linearly and marked as such (default 10000)")
    p.add_argument("--stripe-rps", type=float, default=None, metavar="N",
                   help="what-if: replace stripe.requests_per_second (default: the config's 20/s)")
    p.add_argument("--workdir", type=Path, default=None, help="where configs and state files go (default: a temp dir)")
    args = p.parse_args(argv)
    if any(n < 1 for n in args.events) or args.baseline_sample < 1:
        p.error("--events and --baseline-sample must be positive")
    return args


def run(args: argparse.Namespace, workdir: Path, log: Any = sys.stderr) -> Report:
    """Measure every requested size; the stand-ins share one `now` so both modes see identical events."""
    now = int(time.time())
    report = Report(machine_info(), {"sf_latency_ms": args.sf_latency_ms, "stripe_latency_ms": args.stripe_latency_ms,
                                     "seed": args.seed, "customers": args.customers, "stripe_rps": args.stripe_rps,
                                     "baseline_sample": None if args.skip_baseline else args.baseline_sample})
    common = {"customers": args.customers, "seed": args.seed, "now": now, "sf_latency_ms": args.sf_latency_ms,
              "stripe_latency_ms": args.stripe_latency_ms, "stripe_rps": args.stripe_rps}
    for n in args.events:
        print(f"[{n} events] batched run ...", file=log, flush=True)
        batched = measure(BATCHED, workdir / str(n), events=n, **common)
        print(f"[{n} events] batched: {batched.sf_calls} Salesforce calls in {batched.wall_s:.1f}s", file=log,
              flush=True)
        baseline = None
        if not args.skip_baseline:
            sample = min(n, args.baseline_sample)
            print(f"[{n} events] per-event run over {sample} events ...", file=log, flush=True)
            baseline = measure(PER_EVENT, workdir / str(n), events=n, max_events=sample if sample < n else None,
                               **common)
            print(f"[{n} events] per-event: {baseline.sf_calls} Salesforce calls in {baseline.wall_s:.1f}s",
                  file=log, flush=True)
        report.sizes.append(SizeReport(n, batched, baseline))
    report.targets = evaluate(report, args)
    return report


def evaluate(report: Report, args: argparse.Namespace) -> list[Target]:
    """The issue's three targets against what this invocation measured."""
    targets: list[Target] = []
    ratios = [(s.events, s.ratio) for s in report.sizes if s.ratio is not None]
    targets.append(Target(
        "Salesforce calls", f"batched ≤ 1/{CALLS_RATIO_TARGET} of per-event",
        ", ".join(f"1/{r:.0f} at {n:,} events" for n, r in ratios) or "no baseline run",
        all(r >= CALLS_RATIO_TARGET for _, r in ratios) if ratios else None))

    defaults = (args.sf_latency_ms == DEFAULT_SF_LATENCY_MS and args.stripe_latency_ms == DEFAULT_STRIPE_LATENCY_MS
                and args.stripe_rps is None)
    timed = [s.batched for s in report.sizes if s.events == TIME_TARGET_EVENTS]
    targets.append(Target(
        "Wall time", f"{TIME_TARGET_EVENTS:,}-event sync < {TIME_TARGET_S:.0f} s at the default latencies",
        f"{timed[0].wall_s:.1f} s" if timed and defaults else "needs --events 10000 at the default latencies",
        timed[0].wall_s < TIME_TARGET_S if timed and defaults else None))

    big = [s.batched for s in report.sizes if s.events == RSS_TARGET_EVENTS]
    small = [s.batched for s in report.sizes if s.events == TIME_TARGET_EVENTS]
    if big:
        measured = f"{big[0].peak_rss_mib:.0f} MiB at {RSS_TARGET_EVENTS:,}"
        met: bool | None = big[0].peak_rss_mib <= RSS_TARGET_MIB
        if small:
            growth = big[0].peak_rss_mib / small[0].peak_rss_mib - 1
            measured += f", {small[0].peak_rss_mib:.0f} MiB at {TIME_TARGET_EVENTS:,} ({growth:+.0%})"
            met = bool(met and growth <= RSS_FLAT_SHARE)
        else:
            measured += "; flatness needs --events 10000 100000"
            met = False if not met else None
    else:
        measured, met = "needs --events 10000 100000", None
    targets.append(Target("Peak RSS", f"≤ {RSS_TARGET_MIB:.0f} MB at {RSS_TARGET_EVENTS:,} events and within "
                          f"{RSS_FLAT_SHARE:.0%} of the {TIME_TARGET_EVENTS:,}-event run", measured, met))
    return targets


def _row(r: RunResult, label: str) -> str:
    check = "" if r.sf_calls == r.sf_api_used == r.sf_requests_seen else " ⚠"
    return (f"| {label} | {r.events:,} | {r.sf_calls:,} / {r.sf_api_used:,}{check} | {r.sf_per_1000:,.1f} | "
            f"{r.stripe_calls:,} | {r.wall_s:,.1f} s | {r.cpu_s:,.1f} s | {r.events_per_s:,.0f} | "
            f"{r.peak_rss_mib:.0f} MiB |")


def markdown(report: Report) -> str:
    """The results table, the targets and the machine, as Markdown."""
    m, st = report.machine, report.settings
    lines = [
        f"Machine: {m['cpu_model']}, {m['cpus']} CPUs, {m['memory_gib']} GiB RAM, Python {m['python']}; "
        f"stripe-sf at {m['commit']}. "
        f"Latency per request: Salesforce {st['sf_latency_ms']:g} ms, Stripe {st['stripe_latency_ms']:g} ms; "
        f"seed {st['seed']}"
        + (f"; what-if Stripe pacing {st['stripe_rps']:g}/s." if st.get("stripe_rps") else "; config defaults."),
        "",
        "| Run | Events | Salesforce calls (summary / org counter) | SF calls per 1,000 events | Stripe calls "
        "| Wall time | CPU (sync process) | Events/s | Peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    for s in report.sizes:
        lines.append(_row(s.batched, f"batched ({s.events:,})"))
        if s.baseline is not None:
            b = s.baseline
            if b.extrapolated_to:
                lines.append(_row(b, f"per-event ({s.events:,}), sample"))
                lines.append(_row(b.scaled(), f"per-event ({s.events:,}), *extrapolated*"))
                notes.append(f"Per-event at {s.events:,} events: measured on the first {b.events:,} events, calls "
                             f"and time extrapolated linearly (×{s.events / b.events:g}); RSS as measured.")
            else:
                lines.append(_row(b, f"per-event ({s.events:,})"))
            lines.append(f"| **ratio** ({s.events:,}) | | **1/{s.ratio:.0f}** of per-event | | | "
                         f"{b.scaled().wall_s / s.batched.wall_s:.1f}× faster | | | |")
    lines.append("")
    lines.extend(f"- {n}" for n in notes)
    if notes:
        lines.append("")
    lines += ["| Target | Goal | Measured | Verdict |", "|---|---|---|---|"]
    lines += [f"| {t.name} | {t.goal} | {t.measured} | **{t.verdict}** |" for t in report.targets]
    return "\n".join(lines) + "\n"


def as_json(report: Report) -> dict[str, Any]:
    """The report as JSON (extrapolated baselines carry `extrapolated_to`)."""
    sizes = []
    for s in report.sizes:
        entry: dict[str, Any] = {"events": s.events, "batched": s.batched.as_dict(),
                                 "sf_calls_ratio": round(s.ratio, 1) if s.ratio else None}
        if s.baseline is not None:
            entry["per_event"] = s.baseline.as_dict()
            if s.baseline.extrapolated_to:
                entry["per_event_extrapolated"] = s.baseline.scaled().as_dict()
        sizes.append(entry)
    return {"machine": report.machine, "settings": report.settings, "sizes": sizes,
            "targets": [{"name": t.name, "goal": t.goal, "measured": t.measured, "met": t.met}
                        for t in report.targets]}


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the Markdown table, optionally write JSON."""
    args = parse_args(argv)
    started = time.monotonic()
    if args.workdir is not None:
        report = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="stripe-sf-bench-") as tmp:
            report = run(args, Path(tmp))
    print(markdown(report))
    if args.json is not None:
        args.json.write_text(json.dumps(as_json(report), indent=2) + "\n", encoding="utf-8")
    print(f"(benchmark took {time.monotonic() - started:.0f} s, stand-in set-up included)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
