"""One measured run: fresh stand-ins in this process, the scenario, discovery, then a sync in a spawned child."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from benchmarks.scenario import Generated, benchmark_org, generate
from stripe_sf_sync import service
from stripe_sf_sync.sandbox.demo import sandbox_environment
from stripe_sf_sync.sandbox.salesforce_server import SalesforceSandbox
from stripe_sf_sync.sandbox.stripe_server import StripeSandbox

BATCHED = "batched"
PER_EVENT = "per-event"
# sync.yaml overrides per mode: the defaults, and the same pipeline forced to one event per batch.
ROOT = Path(__file__).resolve().parents[1]
MODES: dict[str, dict[str, str]] = {
    BATCHED: {},
    PER_EVENT: {"batch_size: 500": "batch_size: 1", "coalesce: true": "coalesce: false"},
}


@dataclass
class RunResult:
    """What one run measured. `extrapolated_to` is set when a sample stands for a larger run."""

    mode: str
    scenario_events: int
    events: int
    applied: int
    dead_lettered: int
    records_written: int
    sf_calls: int  # from the run's summary
    sf_requests_seen: int  # requests the Salesforce stand-in served during the sync
    sf_api_used: int  # the stand-in org's own API-usage counter, during the sync
    stripe_calls: int  # from the run's summary
    stripe_requests_seen: int
    wall_s: float
    cpu_s: float  # the child's own CPU time (user + system), imports included
    peak_rss_mib: float  # VmHWM of the child (see child.peak_rss_kib)
    ru_maxrss_mib: float  # kept for reference: inflated by the harness's own size (see child.peak_rss_kib)
    extrapolated_to: int | None = None

    @property
    def sf_per_1000(self) -> float:
        """Salesforce calls per 1,000 events."""
        return 1000 * self.sf_calls / self.events if self.events else 0.0

    @property
    def events_per_s(self) -> float:
        """Throughput of the sync itself (stand-in set-up excluded)."""
        return self.events / self.wall_s if self.wall_s else 0.0

    def scaled(self) -> RunResult:
        """Calls and wall time extrapolated linearly to `extrapolated_to` events (RSS stays as measured)."""
        if not self.extrapolated_to or not self.events:
            return self
        k = self.extrapolated_to / self.events
        return RunResult(self.mode, self.scenario_events, self.extrapolated_to, round(self.applied * k),
                         round(self.dead_lettered * k), round(self.records_written * k), round(self.sf_calls * k),
                         round(self.sf_requests_seen * k), round(self.sf_api_used * k), round(self.stripe_calls * k),
                         round(self.stripe_requests_seen * k), self.wall_s * k, self.cpu_s * k, self.peak_rss_mib,
                         self.ru_maxrss_mib, self.extrapolated_to)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived rates."""
        return {**asdict(self), "sf_calls_per_1000_events": round(self.sf_per_1000, 2),
                "events_per_s": round(self.events_per_s, 1)}


def write_config(path: Path, mode: str, stripe_rps: float | None = None) -> Path:
    """sync.yaml from the packaged example, with a CSM field and the mode's overrides.

    `stripe_rps` replaces the Stripe pacing (20/s) only for the CI smoke test, which must take seconds.
    """
    text = example_config().replace("account_csm: null", "account_csm: CSM__c")
    overrides = dict(MODES[mode])
    if stripe_rps is not None:
        overrides["requests_per_second: 20"] = f"requests_per_second: {stripe_rps:g}"
    for old, new in overrides.items():
        assert old in text, old  # the example changed: the mode would silently run with defaults
        text = text.replace(old, new)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def example_config() -> str:
    """The sync.yaml.example shipped in the package."""
    return resources.files("stripe_sf_sync").joinpath("sync.yaml.example").read_text(encoding="utf-8")


def measure(mode: str, workdir: Path, *, events: int, customers: int | None, seed: int, now: int,
            sf_latency_ms: float, stripe_latency_ms: float, max_events: int | None = None,
            stripe_rps: float | None = None) -> RunResult:
    """Build fresh stand-ins with the scenario, discover the org, and time one sync in a spawned child."""
    with StripeSandbox(latency_ms=stripe_latency_ms) as stripe, \
            SalesforceSandbox(benchmark_org(), latency_ms=sf_latency_ms) as sf:
        _disable_nagle(stripe)
        gen = generate(stripe, sf.org, events=events, customers=customers, seed=seed, now=now)
        # The stand-ins' objects live as long as the run: keep the collector from rescanning them while serving.
        gc.collect()
        gc.freeze()
        try:
            return _sync_in_child(mode, workdir / mode, gen, stripe, sf, max_events, stripe_rps)
        finally:
            gc.unfreeze()


def _disable_nagle(stripe: StripeSandbox) -> None:
    """Send each Stripe stand-in response without waiting for a delayed ACK.

    Its handler writes headers and body separately; with Nagle on, loopback adds ~40 ms to every request
    (measured 44 ms at zero latency, 1.4 ms without), which would swamp the latency being simulated. The
    Salesforce stand-in already sets this; the handler class is built per sandbox, so only this one changes.
    """
    server = stripe._server
    assert server is not None, "start the sandbox first"
    server.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]


def _sync_in_child(mode: str, workdir: Path, gen: Generated, stripe: StripeSandbox, sf: SalesforceSandbox,
                   max_events: int | None, stripe_rps: float | None) -> RunResult:
    for stale in workdir.glob("stripe-sf-state.sqlite*"):
        stale.unlink()  # a state file from an earlier run would make every event a duplicate
    config = write_config(workdir / "sync.yaml", mode, stripe_rps)
    service.run_discover(config, sandbox_environment(stripe, sf), write=True, example=example_config())
    env = {"STRIPE_API_KEY": stripe.api_key, "STRIPE_API_BASE": stripe.base_url,
           "SF_INSTANCE_URL": sf.instance_url, "SF_ACCESS_TOKEN": sf.access_token}
    since = time.strftime("%Y-%m-%d", time.gmtime(gen.since))
    sf_seen, sf_used, stripe_seen = len(sf.requests_log), sf.org.api_used, stripe.request_count

    # A fresh interpreter per run: no memory shared with this process or the other run.
    request = {"config": str(config), "env": env, "ca_path": sf.ca_path, "since": since, "max_events": max_events}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.child"], input=json.dumps(request), text=True,
                          capture_output=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the {mode} run exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    report = json.loads(proc.stdout)
    s = report["summary"]
    return RunResult(
        mode=mode, scenario_events=gen.events, events=s["events_read"], applied=s["applied"],
        dead_lettered=s["dead_lettered"], records_written=s["records_written"], sf_calls=s["salesforce_calls"],
        sf_requests_seen=len(sf.requests_log) - sf_seen, sf_api_used=sf.org.api_used - sf_used,
        stripe_calls=s["stripe_calls"], stripe_requests_seen=stripe.request_count - stripe_seen,
        wall_s=report["wall_s"], cpu_s=report.get("cpu_s", 0.0), peak_rss_mib=report["peak_rss_kib"] / 1024,
        ru_maxrss_mib=report["ru_maxrss_kib"] / 1024,
        extrapolated_to=gen.events if max_events is not None and s["events_read"] < gen.events else None)
