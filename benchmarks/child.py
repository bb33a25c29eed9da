"""The measured side of a run: one `stripe-sf sync` in a fresh process (`python -m benchmarks.child`).

Kept apart from the harness so the child imports only stripe-sf itself, never the sandbox stand-ins
(which live in the parent): its peak RSS is then the tool's, not the harness's. The request comes as
JSON on stdin; the report goes as JSON on stdout.
"""

from __future__ import annotations

import cProfile
import json
import logging
import pstats
import resource
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import requests

from stripe_sf_sync import service


def _session(ca_path: str) -> requests.Session:
    """A session trusting only the Salesforce stand-in's CA (what REQUESTS_CA_BUNDLE does for the CLI)."""
    s = requests.Session()
    s.trust_env = False
    s.verify = ca_path
    return s


def run_sync(config: str, env: dict[str, str], ca_path: str, since: str, max_events: int | None,
             profile: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one sync exactly as tests/test_sync_e2e.py does; return the summary, wall time and peak RSS.

    `profile` ({"text": path, "stats": path}): run the sync under cProfile and write both reports.
    """
    # Dead letters are expected (customers without an Account); one warning line each would only add noise.
    logging.getLogger("stripe_sf_sync").setLevel(logging.ERROR)
    environment = service.Environment(env=env, session_factory=partial(_session, ca_path))
    profiler = cProfile.Profile() if profile else None
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    try:
        summary = service.run_sync(Path(config), environment, since=since, dry_run=False, max_events=max_events)
    finally:
        if profiler is not None:
            profiler.disable()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    if profiler is not None and profile:
        write_profile(profiler, Path(profile["text"]), Path(profile["stats"]), wall)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # CPU against wall time tells the tool's own work apart from waiting on the (simulated) network. The
    # sync's own share (imports and profile writing excluded) does not depend on what else the machine runs.
    sync_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"summary": summary.as_dict(), "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "sync_cpu_s": sync_cpu, "peak_rss_kib": peak_rss_kib(), "ru_maxrss_kib": usage.ru_maxrss}


def write_profile(profiler: cProfile.Profile, text: Path, stats: Path, wall_s: float, top: int = 60) -> None:
    """The raw stats (for snakeviz, `python -m pstats`) and a text report: by cumulative, then own time."""
    profiler.dump_stats(str(stats))
    with text.open("w", encoding="utf-8") as out:
        out.write(f"cProfile of one `stripe-sf sync` ({wall_s:.1f} s wall, profiler included); raw stats: {stats}\n")
        for key, n in (("cumulative", top), ("tottime", top // 2)):
            out.write(f"\n=== top {n} by {key} ===\n")
            pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(n)


def peak_rss_kib() -> int:
    """This process's own peak RSS in KiB: `VmHWM` of /proc/self/status.

    Not `ru_maxrss`: Linux carries the pre-exec high-water mark over execve, and this process was forked
    from the harness, whose stand-ins hold hundreds of MB, so `ru_maxrss` reports the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass  # not Linux: ru_maxrss is the best there is
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    """Read the request from stdin, print the report on stdout."""
    req = json.load(sys.stdin)
    report = run_sync(req["config"], req["env"], req["ca_path"], req["since"], req["max_events"],
                      req.get("profile"))
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
