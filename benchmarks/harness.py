"""One measured run: fresh stand-ins in this process, the scenario, discovery, then a sync in a spawned child."""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.scenario import Generated, benchmark_org, generate, generate_cold, seed_state
from stripe_sf_sandbox.demo import sandbox_environment
from stripe_sf_sandbox.salesforce_server import SalesforceSandbox
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync import service
from stripe_sf_sync.config import example_config
from stripe_sf_sync.salesforce.gateway import COLLECTION_LIMIT, COMPOSITE_QUERIES
from stripe_sf_sync.salesforce.lookups import IN_CHUNK

BATCHED = "batched"
PER_EVENT = "per-event"
ROOT = Path(__file__).resolve().parents[1]
STATE_FILE = "stripe-sf-state.sqlite"  # the config's `sync.state_path: null` puts it next to sync.yaml
# sync.yaml values per mode (key -> new value): the defaults, and the same pipeline forced to one event
# per batch without coalescing. Keys are matched whatever their current value (see set_yaml_value).
MAPPED = "mapped"
MODES: dict[str, dict[str, str]] = {
    BATCHED: {},
    PER_EVENT: {"batch_size": "1", "coalesce": "false"},
    MAPPED: {},  # the defaults, with MAPPING_OF_FIVE (benchmarks.mapping_run)
}
# A salesforce.mapping of five fields (docs/mapping.md): constants, a path, an `if_empty` on each object (read
# with the lookups), a default field made `once`. Only the `mapped` mode has it: the default scenario is unchanged.
MAPPING_OF_FIVE = """  mapping:
    Opportunity:
      Type: {value: New Business, write: once}
      LeadSource: {value: Stripe, write: if_empty}
      Description: {from: "items[0].price.id"}
      CloseDate: {write: once}
    Account:
      Description: {from: customer.name, write: if_empty}
"""
DESCRIBE_CALLS = 1  # one Composite describe of Opportunity, Account and Task per run, then cached in state


def set_yaml_value(text: str, key: str, value: str) -> str:
    """`text` with the scalar of its one `key:` line replaced by `value` (comments and indentation kept).

    Raises ValueError unless exactly one line has that key: a renamed or duplicated key must not let a
    run go ahead silently with the example's defaults.
    """
    pattern = re.compile(rf"(?m)^([ \t]*{re.escape(key)}:[ \t]*)[^\s#]+")
    new, count = pattern.subn(lambda m: m.group(1) + value, text)
    if count != 1:
        raise ValueError(f"sync.yaml.example: expected exactly one `{key}:` line to set to {value}, found {count}")
    return new


@dataclass(frozen=True)
class Floor:
    """The fewest Salesforce calls the scenario allows: every record written once, every key looked up once.

    As if the whole run were one perfectly coalesced batch: per sObject, its distinct records in calls of
    `write_limit` (sObject Collections); per lookup kind, its distinct keys in queries of `in_chunk` (the
    resolver's IN (...) size), the queries `per_composite` to a Composite call; plus the cached describe.
    """

    records: dict[str, int]  # sObject -> distinct records written
    lookup_keys: dict[str, int]  # "sObject.Field" -> distinct values looked up
    write_limit: int = COLLECTION_LIMIT
    in_chunk: int = IN_CHUNK
    per_composite: int = COMPOSITE_QUERIES
    describe_calls: int = DESCRIBE_CALLS

    @property
    def writes(self) -> dict[str, int]:
        """Write calls per sObject."""
        return {k: math.ceil(n / self.write_limit) for k, n in sorted(self.records.items()) if n}

    @property
    def queries(self) -> dict[str, int]:
        """SOQL queries per lookup kind."""
        return {k: math.ceil(n / self.in_chunk) for k, n in sorted(self.lookup_keys.items()) if n}

    @property
    def lookup_calls(self) -> int:
        """Composite calls carrying every query."""
        return math.ceil(sum(self.queries.values()) / self.per_composite)

    @property
    def total(self) -> int:
        """The floor: writes, lookups and the describe (none of it when there is nothing to do)."""
        work = sum(self.writes.values()) + self.lookup_calls
        return work + self.describe_calls if work else 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with every derived count."""
        return {"records": dict(sorted(self.records.items())), "write_calls": self.writes,
                "lookup_keys": dict(sorted(self.lookup_keys.items())), "queries": self.queries,
                "lookup_calls": self.lookup_calls, "describe_calls": self.describe_calls, "total": self.total,
                "write_limit": self.write_limit, "in_chunk": self.in_chunk, "per_composite": self.per_composite}


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
    # Distinct records written per sObject, and distinct keys looked up per "sObject.Field", during the sync
    # (the Salesforce stand-in's counters): the inputs of the floor.
    written: dict[str, int] = field(default_factory=dict)
    lookup_keys: dict[str, int] = field(default_factory=dict)
    sf_latency_ms: float = 0.0
    stripe_latency_ms: float = 0.0
    profiled: bool = False  # times and RSS include cProfile's overhead
    # Stripe requests during the sync by kind (`stripe_kind`): what the cold-start floor is compared with.
    stripe_by_kind: dict[str, int] = field(default_factory=dict)
    sync_cpu_s: float = 0.0  # the child's CPU time during run_sync only (imports excluded)
    standins_cpu_s: float = 0.0  # both stand-ins' CPU time (the harness process) while the child ran

    @property
    def sf_per_1000(self) -> float:
        """Salesforce calls per 1,000 events."""
        return 1000 * self.sf_calls / self.events if self.events else 0.0

    @property
    def stripe_per_1000(self) -> float:
        """Stripe calls per 1,000 events."""
        return 1000 * self.stripe_calls / self.events if self.events else 0.0

    @property
    def cpu_ms_per_1000(self) -> float:
        """The sync's own CPU time per 1,000 events, in ms: unlike wall time, it does not depend on the load."""
        return 1_000_000 * self.sync_cpu_s / self.events if self.events else 0.0

    @property
    def events_per_s(self) -> float:
        """Throughput of the sync itself (stand-in set-up excluded)."""
        return self.events / self.wall_s if self.wall_s else 0.0

    def floor(self) -> Floor:
        """The theoretical floor of what this run wrote and looked up."""
        return Floor(dict(self.written), dict(self.lookup_keys))

    def scaled(self) -> RunResult:
        """Calls and times extrapolated linearly to `extrapolated_to` events.

        RSS stays as measured, and so do the distinct-record counts: they are the sample's, not the run's.
        """
        if not self.extrapolated_to or not self.events:
            return self
        k = self.extrapolated_to / self.events
        return dataclasses.replace(
            self, events=self.extrapolated_to, applied=round(self.applied * k),
            dead_lettered=round(self.dead_lettered * k), records_written=round(self.records_written * k),
            sf_calls=round(self.sf_calls * k), sf_requests_seen=round(self.sf_requests_seen * k),
            sf_api_used=round(self.sf_api_used * k), stripe_calls=round(self.stripe_calls * k),
            stripe_requests_seen=round(self.stripe_requests_seen * k), wall_s=self.wall_s * k, cpu_s=self.cpu_s * k,
            sync_cpu_s=self.sync_cpu_s * k, standins_cpu_s=self.standins_cpu_s * k)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived rates."""
        return {**asdict(self), "sf_calls_per_1000_events": round(self.sf_per_1000, 2),
                "stripe_calls_per_1000_events": round(self.stripe_per_1000, 2),
                "events_per_s": round(self.events_per_s, 1), "cpu_ms_per_1000_events": round(self.cpu_ms_per_1000, 1)}


def write_config(path: Path, mode: str, stripe_rps: float | None = None) -> Path:
    """sync.yaml from the packaged example, with a CSM field and the mode's overrides.

    `stripe_rps` replaces the Stripe pacing: a what-if for `run.py --stripe-rps`, and what keeps the CI
    smoke test to seconds.
    """
    text = set_yaml_value(example_config(), "account_csm", "CSM__c")
    overrides = dict(MODES[mode])
    if stripe_rps is not None:
        overrides["requests_per_second"] = f"{stripe_rps:g}"
    for key, value in overrides.items():
        text = set_yaml_value(text, key, value)
    if mode == MAPPED:
        text = text.replace("  mapping: {}\n", MAPPING_OF_FIVE, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def profile_paths(base: Path) -> tuple[Path, Path]:
    """(text report, raw .prof) for `--profile base`."""
    if base.suffix == ".prof":
        return base.with_suffix(".txt"), base
    return base, base.with_name(base.name + ".prof")


def measure(mode: str, workdir: Path, *, events: int, customers: int | None, seed: int, now: int,
            sf_latency_ms: float, stripe_latency_ms: float, max_events: int | None = None,
            stripe_rps: float | None = None, profile: Path | None = None, cold: str | None = None) -> RunResult:
    """Build fresh stand-ins with the scenario, discover the org, and time one sync in a spawned child.

    `profile`: also write a cProfile report of the sync to this path (see `profile_paths`). `cold`: the
    cold-start scenario of that variant instead (`scenario.generate_cold`; `customers` beyond `events` exist
    without events), with no backfill state.
    """
    with StripeSandbox(latency_ms=stripe_latency_ms) as stripe, \
            SalesforceSandbox(benchmark_org(), latency_ms=sf_latency_ms) as sf:
        _disable_nagle(stripe)
        if cold is not None:
            gen = generate_cold(stripe, sf.org, events=events, variant=cold, seed=seed, now=now,
                                extra_customers=max(0, (customers or events) - events))
        else:
            gen = generate(stripe, sf.org, events=events, customers=customers, seed=seed, now=now)
        # The stand-ins' objects live as long as the run: keep the collector from rescanning them while serving.
        gc.collect()
        gc.freeze()
        try:
            result = _sync_in_child(mode, workdir / mode, gen, stripe, sf, max_events, stripe_rps, profile)
        finally:
            gc.unfreeze()
        result.sf_latency_ms, result.stripe_latency_ms = sf_latency_ms, stripe_latency_ms
        return result


def _disable_nagle(stripe: StripeSandbox) -> None:
    """Send each Stripe stand-in response without waiting for a delayed ACK.

    Its handler writes headers and body separately; with Nagle on, loopback adds ~40 ms to every request
    (measured 44 ms at zero latency, 1.4 ms without), which would swamp the latency being simulated. The
    Salesforce stand-in already sets this; the handler class is built per sandbox, so only this one changes.
    """
    server = stripe._server
    assert server is not None, "start the sandbox first"
    server.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]


def _counts(keys: Mapping[str, set[str]]) -> dict[str, int]:
    return {name: len(values) for name, values in sorted(keys.items()) if values}


def _sync_in_child(mode: str, workdir: Path, gen: Generated, stripe: StripeSandbox, sf: SalesforceSandbox,
                   max_events: int | None, stripe_rps: float | None, profile: Path | None = None) -> RunResult:
    for stale in workdir.glob(f"{STATE_FILE}*"):
        stale.unlink()  # a state file from an earlier run would make every event a duplicate
    config = write_config(workdir / "sync.yaml", mode, stripe_rps)
    service.run_discover(config, sandbox_environment(stripe, sf), write=True, example=example_config())

    # The state a backfill leaves: customers with an older subscription are known (benchmarks/README.md).
    seed_state(workdir / STATE_FILE, gen)

    env = {"STRIPE_API_KEY": stripe.api_key, "STRIPE_API_BASE": stripe.base_url,
           "SF_INSTANCE_URL": sf.instance_url, "SF_ACCESS_TOKEN": sf.access_token}
    since = time.strftime("%Y-%m-%d", time.gmtime(gen.since))
    sf_seen, sf_used, stripe_seen = len(sf.requests_log), sf.org.api_used, stripe.request_count
    stripe_logged = len(stripe.requests_log)
    sf.org.reset_key_counters()  # discovery's queries are not the sync's

    # A fresh interpreter per run: no memory shared with this process or the other run.
    request: dict[str, Any] = {"config": str(config), "env": env, "ca_path": sf.ca_path, "since": since,
                               "max_events": max_events}
    if profile is not None:
        text, raw = profile_paths(profile)
        text.parent.mkdir(parents=True, exist_ok=True)
        request["profile"] = {"text": str(text.resolve()), "stats": str(raw.resolve())}
    # This process only serves the stand-ins while the child syncs: its CPU meanwhile is theirs.
    serving = resource.getrusage(resource.RUSAGE_SELF)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.child"], input=json.dumps(request), text=True,
                          capture_output=True, cwd=ROOT, check=False)
    served = resource.getrusage(resource.RUSAGE_SELF)
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
        extrapolated_to=gen.events if max_events is not None and s["events_read"] < gen.events else None,
        written=_counts(sf.org.written_keys), lookup_keys=_counts(sf.org.queried_keys),
        profiled=profile is not None, sync_cpu_s=report.get("sync_cpu_s", 0.0),
        standins_cpu_s=(served.ru_utime + served.ru_stime) - (serving.ru_utime + serving.ru_stime),
        stripe_by_kind=dict(Counter(stripe_kind(path) for _, path, _ in stripe.requests_log[stripe_logged:])))


def stripe_kind(path: str) -> str:
    """A Stripe request's kind: a list (`/v1/customers`) or a read of one object (`/v1/customers/{id}`)."""
    parts = path.strip("/").split("/")
    return "/".join(parts[:2]) + ("/{id}" if len(parts) > 2 else "")
