"""Signals and run records, on real `stripe-sf` subprocesses: SIGTERM (what cron's `timeout`, systemd and
Kubernetes send) and Ctrl-C in the middle of a sync, a backfill and a dead-letter retry stop after the batch in
flight with its outcomes committed, say so on stderr, record the run's exit code (143 or 130) and exit with it;
a second signal aborts at once; the rerun converges. A run that dies without recording an exit (SIGKILL) shows
in `status` as "ended abnormally" once no process holds the lock, and as "running" while one does."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stripe_sf_sandbox import scenario
from stripe_sf_sandbox.demo import sandbox_environment
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sync import service
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.state import StateStore

from ..conftest import snapshot
from ..test_backfill import backfill, committed_backfill_events, configured, history, since_days
from .world import (
    DAY,
    ROOT,
    STATE_NAME,
    World,
    assert_converged,
    build_world,
    discover,
    expected_of,
    state_rows,
    stripe_sf,
    sync,
    write_config,
)

NOW = int(time.time())
EXTRA = 6
STOPPING = "Stopping ({}) within seconds; everything finished so far is saved."


class Child:
    """A `stripe-sf` subprocess whose stderr goes to a file, so that a stand-in's hook can watch it while the
    child waits for that stand-in's answer."""

    def __init__(self, args: list[str], env: dict[str, str], directory: Path) -> None:
        self.err_path = directory / f"stderr-{time.monotonic_ns()}.txt"
        self._err = self.err_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "stripe_sf_sync", *args], env=env, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True)
        self.signalled = threading.Event()
        self.saw_stopping = threading.Event()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def signal_and_wait(self, sig: int, *, then: int | None = None) -> None:
        """Send `sig`; wait until the child says it is stopping (its handler ran while a request of the batch in
        flight is held here); with `then`, send that second signal too."""
        if self.signalled.is_set():
            return
        self.signalled.set()
        os.kill(self.proc.pid, sig)
        line = STOPPING.format(signal.Signals(sig).name)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            if line in self.stderr:
                self.saw_stopping.set()
                break
            time.sleep(0.02)
        if then is not None:
            os.kill(self.proc.pid, then)

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self._err.close()
        return self.proc.returncode, out, self.stderr


def runs(state: Path) -> list[dict[str, Any]]:
    """The runs table, oldest first."""
    con = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in con.execute("SELECT * FROM runs ORDER BY run_id")]
    finally:
        con.close()
    for r in rows:
        r["summary"] = json.loads(r["summary"]) if r["summary"] else None
    return rows


def at_collections_write(world: World, nth: int, act: Any) -> None:
    """Call `act()` inside the stand-in when the child's `nth` sObject Collections write arrives (before the
    stand-in applies it and answers)."""
    writes = [0]

    def hook(n: int, method: str, path: str) -> None:
        if "composite/sobjects" in path:
            writes[0] += 1
            if writes[0] == nth:
                act()
    world.sf.faults.on_request = hook


@pytest.fixture(scope="module")
def clean() -> dict[str, Any]:
    """The final state of a sync that was never interrupted."""
    with build_world(NOW, extra=EXTRA) as world, tempfile.TemporaryDirectory() as tmp:
        cfg = discover(write_config(Path(tmp)), world)
        summary = sync(cfg, world.env(), since=world.since)
        assert summary.dead_lettered >= 3 and summary.applied > 20
        return expected_of(world, Path(tmp) / STATE_NAME)


@pytest.fixture
def world() -> Iterator[World]:
    with build_world(NOW, extra=EXTRA) as w:
        yield w


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, ExitCode.TERMINATED),
                                           (signal.SIGINT, ExitCode.INTERRUPTED)])
def test_a_signal_mid_sync_stops_after_the_batch_records_its_exit_code_and_the_rerun_converges(
        world, tmp_path, clean, sig, code):
    cfg = discover(write_config(tmp_path), world)
    child = Child(["sync", "--config", str(cfg), "--since", world.since], world.cli_env(), tmp_path)
    before: list[int] = []

    def stop_now() -> None:
        before.append(len(state_rows(tmp_path / STATE_NAME)["events"]))  # committed before the batch in flight
        child.signal_and_wait(sig)
    at_collections_write(world, 6, stop_now)
    returncode, stdout, stderr = child.finish()
    world.sf.faults.clear()
    name = signal.Signals(sig).name

    assert child.saw_stopping.is_set(), stderr  # said at once, while a write of the batch was in flight
    assert returncode == code == {"SIGTERM": 143, "SIGINT": 130}[name], stderr
    assert stderr.count(STOPPING.format(name)) == 1 and "Traceback" not in stderr
    [run] = runs(tmp_path / STATE_NAME)
    assert run["exit_code"] == code and run["finished_at"] is not None
    assert run["summary"]["stopped_by"] == name and run["summary"]["interrupted"] is True
    # Stopped part-way, with everything it read committed: the batch in flight included, nothing after it.
    rows = state_rows(tmp_path / STATE_NAME)
    assert rows["cursor"] is not None and before[0] < len(rows["events"]) < len(world.event_ids)
    assert len(rows["events"]) == run["summary"]["events_read"]
    assert run["summary"]["applied"] > 0 and "events read" in stdout

    again = stripe_sf(["sync", "--config", str(cfg)], world.cli_env())
    assert again.returncode in (0, 3), again.stderr
    assert_converged(world, tmp_path / STATE_NAME, clean)


def test_a_second_sigterm_aborts_at_once_records_143_and_the_rerun_converges(world, tmp_path, clean):
    cfg = discover(write_config(tmp_path), world)
    child = Child(["sync", "--config", str(cfg), "--since", world.since], world.cli_env(), tmp_path)
    before: list[int] = []

    def abort_now() -> None:
        before.append(len(state_rows(tmp_path / STATE_NAME)["events"]))
        child.signal_and_wait(signal.SIGTERM, then=signal.SIGTERM)
    at_collections_write(world, 6, abort_now)
    returncode, _, stderr = child.finish()
    world.sf.faults.clear()

    assert child.saw_stopping.is_set(), stderr
    assert returncode == ExitCode.TERMINATED, stderr
    assert "interrupted: the state is consistent" in stderr and "Traceback" not in stderr
    [run] = runs(tmp_path / STATE_NAME)
    assert run["exit_code"] == ExitCode.TERMINATED and run["finished_at"] is not None
    # The batch in flight was not committed (its writes reached Salesforce: the rerun repeats them idempotently).
    rows = state_rows(tmp_path / STATE_NAME)
    assert len(rows["events"]) == before[0] == run["summary"]["events_read"]

    args = ["sync", "--config", str(cfg)] + ([] if rows["cursor"] else ["--since", world.since])
    again = stripe_sf(args, world.cli_env())
    assert again.returncode in (0, 3), again.stderr
    assert_converged(world, tmp_path / STATE_NAME, clean)


def test_sigterm_mid_dlq_retry_stops_after_the_batch_and_leaves_the_rest_open(world, tmp_path):
    cfg = discover(write_config(tmp_path, batch_size=1), world)
    assert sync(cfg, world.env(), since=world.since).dead_lettered >= 3
    letters = state_rows(tmp_path / STATE_NAME)["dead"]
    child = Child(["dlq", "retry", "--all", "--config", str(cfg)], world.cli_env(), tmp_path)

    def first_request(n: int, method: str, path: str) -> None:
        child.signal_and_wait(signal.SIGTERM)
    world.sf.faults.on_request = first_request
    returncode, _, stderr = child.finish()
    world.sf.faults.clear()

    assert child.saw_stopping.is_set(), stderr
    assert returncode == ExitCode.TERMINATED, stderr
    assert STOPPING.format("SIGTERM") in stderr
    retry = runs(tmp_path / STATE_NAME)[-1]
    assert retry["command"] == "dlq retry" and retry["exit_code"] == ExitCode.TERMINATED
    after = state_rows(tmp_path / STATE_NAME)["dead"]
    retried = [eid for eid in letters if after[eid]["attempts"] == 2]
    assert 1 <= len(retried) < len(letters), after  # one batch of one letter, then the stop
    assert all(d["status"] == "open" for d in after.values())


def test_sigterm_mid_backfill_prints_the_exact_resume_command_which_converges(tmp_path, stripe_sb, sf_sb, org, env):
    _, h = history(stripe_sb, org, subs=250)
    cfg = configured(tmp_path, env, **{"bulk_threshold: 2000": "bulk_threshold: 10",
                                       "bulk_chunk: 5000": "bulk_chunk: 100",
                                       "bulk_poll_seconds: 5": "bulk_poll_seconds: 0"})
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith(("SF_", "STRIPE_"))}
    cli_env.update({"STRIPE_API_KEY": stripe_sb.api_key, "STRIPE_API_BASE": stripe_sb.base_url,
                    "SF_INSTANCE_URL": sf_sb.instance_url, "SF_ACCESS_TOKEN": sf_sb.access_token,
                    "REQUESTS_CA_BUNDLE": sf_sb.ca_path})
    since = since_days(400)
    prom = tmp_path / "backfill.prom"
    child = Child(["backfill", "--since", since, "--objects", "subscriptions, payment_intents,invoices",
                   "--config", str(cfg), "--metrics-file", str(prom)], cli_env, tmp_path)
    pages = [0]

    def once_a_chunk_is_committed(n: int, method: str, path: str) -> None:
        # Holds one slice's request while the other slices go on, until a chunk is committed; then the signal.
        if path.startswith("/v1/subscriptions"):
            pages[0] += 1
            if pages[0] == 2:
                deadline = time.monotonic() + 20
                while committed_backfill_events(tmp_path) == 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
                child.signal_and_wait(signal.SIGTERM)
    stripe_sb.faults.on_request = once_a_chunk_is_committed
    returncode, _, stderr = child.finish()
    stripe_sb.faults.clear()

    assert child.saw_stopping.is_set(), stderr
    assert returncode == ExitCode.TERMINATED, stderr
    command = (f"stripe-sf backfill --since {since} --objects subscriptions,payment_intents,invoices "
               f"--config {shlex.quote(str(cfg))} --resume")
    said = "Stopped (SIGTERM); everything finished so far is saved. Continue with: "
    assert said + command in stderr.replace("\n", " ")
    [run] = runs(tmp_path / STATE_NAME)
    assert run["command"] == "backfill" and run["exit_code"] == ExitCode.TERMINATED
    # The pages taken before the stop (slices are listed in parallel: how many is timing), committed; or, when
    # the last chunk was cut by the stop (its hydration ran past the grace, as on a loaded machine), its first
    # objects, with the checkpoint of the pages wholly inside them.
    first_read = run["summary"]["objects"]["subscriptions"]["read"]
    committed = committed_backfill_events(tmp_path)
    # On a loaded machine the other slices can list (and commit) every subscription while one request is held:
    # how far the stop came is timing; that it stopped, said how to resume, and that the resume converges is not.
    assert 0 < committed <= first_read <= 250
    assert 0 < len(org.records("Opportunity"))
    # Issue 20 §1: status --check and the metrics say the history is incomplete, and how to finish it.
    code, report = health_check(cfg, cli_env, "30d")
    assert code == ExitCode.UNHEALTHY
    [problem] = [p for p in report["health"]["problems"] if "backfill" in p]
    assert "stopped before its end: subscriptions, payment_intents, invoices not all in Salesforce" in problem
    assert f"`stripe-sf backfill --since {since} --objects subscriptions,payment_intents,invoices --resume`" in problem
    assert prom_values(prom)["stripe_sf_backfill_unfinished"] == 1

    resumed = subprocess.run([sys.executable, "-m", "stripe_sf_sync", *shlex.split(command)[1:],
                              "--metrics-file", str(prom)], env=cli_env,
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert resumed.returncode == ExitCode.OK, resumed.stderr
    assert prom_values(prom)["stripe_sf_backfill_unfinished"] == 0
    assert not [p for p in health_check(cfg, cli_env, "30d")[1]["health"]["problems"] if "backfill" in p]
    # The rest only: each slice from its own last committed page; what a cut chunk committed past its checkpoint
    # is listed again and skipped as already done, so every subscription is committed exactly once.
    again = runs(tmp_path / STATE_NAME)[-1]["summary"]
    assert 250 - first_read <= again["objects"]["subscriptions"]["read"] <= 250 - committed + again["skipped_duplicate"]
    assert again["objects"]["subscriptions"]["read"] - again["skipped_duplicate"] == 250 - committed
    assert committed_backfill_events(tmp_path) == 250 + len(h["pis"]) + len(h["invoices"])
    won = [s for s in h["subs"] if s["status"] in ("active", "trialing", "past_due", "unpaid")]
    assert len([o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c")]) == len(won)
    statuses = {a["Stripe_Customer_ID__c"]: a.get("Subscription_Status__c") for a in org.records("Account")}
    assert all(statuses[s["customer"]] == s["status"] for s in h["subs"])
    # Converged: a whole backfill from scratch finds nothing to change.
    resumed_org = snapshot(org)
    assert backfill(cfg, env, since=since).dead_lettered == 0
    assert snapshot(org) == resumed_org


def test_a_sigkilled_run_is_running_while_it_holds_the_lock_then_ended_abnormally(world, tmp_path):
    cfg = discover(write_config(tmp_path), world)
    pause = tmp_path / "paused"
    env = world.cli_env(STRIPE_SF_TEST_KILL="pause:commit:3", STRIPE_SF_TEST_PAUSE_FILE=str(pause))
    proc = subprocess.Popen([sys.executable, "-m", "stripe_sf_sync", "sync", "--config", str(cfg), "--since",
                             world.since], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not pause.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert pause.exists(), "the sync never reached its third commit"
        during = stripe_sf(["status", "--config", str(cfg), "--json"], world.cli_env(), timeout=30)
        assert during.returncode == 0, during.stderr
        [run] = json.loads(during.stdout)["runs"]
        assert run["state"] == "running" and run["exit_code"] is None
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    after = stripe_sf(["status", "--config", str(cfg), "--json"], world.cli_env(), timeout=30)
    [run] = json.loads(after.stdout)["runs"]
    assert run["state"] == "ended abnormally" and run["exit_code"] is None
    text = stripe_sf(["status", "--config", str(cfg)], world.cli_env(), timeout=30)
    assert text.returncode == 0 and re.search(r"exit:\s+ended abnormally", text.stdout)
    assert not re.search(r"exit:\s+running", text.stdout)

    # The next run is recorded as finished; the dead one stays "ended abnormally".
    again = stripe_sf(["sync", "--config", str(cfg)], world.cli_env())
    assert again.returncode in (0, 3), again.stderr
    newest, killed = json.loads(stripe_sf(["status", "--config", str(cfg), "--json"], world.cli_env()).stdout)["runs"]
    assert newest["state"] == "finished" and newest["exit_code"] == again.returncode
    assert killed["state"] == "ended abnormally"


def test_the_status_probe_of_the_lock_never_turns_a_starting_run_away(tmp_path):
    """`status` probes the run lock with a shared lock held for an instant; a run starting in that instant
    waits for it instead of exiting as if another run held the lock."""
    path = tmp_path / STATE_NAME
    with StateStore.open(path) as reader, StateStore.open(path) as starting:
        assert not reader.lock_held()
        probe = os.open(f"{path}.lock", os.O_RDONLY | os.O_CREAT, 0o600)
        fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # the probe, caught mid-instant
        release = threading.Timer(0.03, lambda: (fcntl.flock(probe, fcntl.LOCK_UN), os.close(probe)))
        release.start()
        try:
            starting.acquire_lock()
        finally:
            release.join()
        assert reader.lock_held()
        starting.release_lock()
        assert not reader.lock_held()


# --- issue 20: an interrupted run never looks current -----------------------------------------------------------

def with_latency(world: World) -> World:
    """The benchmarks' stand-in latency (Salesforce 20 ms, Stripe 10 ms a request)."""
    world.sf.latency_ms, world.stripe.latency_ms = 20.0, 10.0
    return world


def health_check(cfg: Path, env: dict[str, str], max_age: str = "1h") -> tuple[int, dict[str, Any]]:
    """`status --check --json --max-cursor-age MAX_AGE` in a subprocess: its exit code and report."""
    done = stripe_sf(["status", "--config", str(cfg), "--check", "--json", "--max-cursor-age", max_age], env,
                     timeout=60)
    return done.returncode, json.loads(done.stdout)


def prom_values(path: Path) -> dict[str, float]:
    """The metrics file's samples by name (one command and one pipeline per file here)."""
    from prometheus_client.parser import text_string_to_metric_families
    return {s.name: s.value for f in text_string_to_metric_families(path.read_text()) for s in f.samples
            if set(s.labels) == {"command", "account"}}


def assert_reported_behind(cfg: Path, env: dict[str, str], prom: Path) -> None:
    """status --check fails on the cursor's age, which is its own event's, and the metrics file says the same."""
    code, report = health_check(cfg, env)
    cursor = report["cursor"]
    assert code == ExitCode.UNHEALTHY, report["health"]
    assert cursor["current_at"] == cursor["created"] and cursor["current_age_s"] > 3600
    assert any(p.startswith("the cursor is ") and "more than 60 min" in p for p in report["health"]["problems"])
    assert prom_values(prom)["stripe_sf_cursor_current_timestamp_seconds"] == cursor["created"]


def test_a_sync_a_signal_stopped_is_reported_behind_until_a_run_reads_to_the_end(world, tmp_path):
    """Issue 20 §1: SIGTERM mid-run left the cursor days old, yet status --check passed with an age of seconds
    (the run was marked as having read the list to its end)."""
    with_latency(world)
    cfg = discover(write_config(tmp_path), world)
    prom = tmp_path / "sync.prom"
    child = Child(["sync", "--config", str(cfg), "--since", world.since, "--metrics-file", str(prom)],
                  world.cli_env(), tmp_path)
    at_collections_write(world, 6, lambda: child.signal_and_wait(signal.SIGTERM))
    returncode, _, stderr = child.finish()
    world.sf.faults.clear()
    assert returncode == ExitCode.TERMINATED, stderr
    assert_reported_behind(cfg, world.cli_env(), prom)
    values = prom_values(prom)
    assert values["stripe_sf_last_run_interrupted"] == 1

    again = stripe_sf(["sync", "--config", str(cfg), "--metrics-file", str(prom)], world.cli_env())
    assert again.returncode in (0, 3), again.stderr
    code, report = health_check(cfg, world.cli_env())
    assert code == ExitCode.OK, report["health"]
    assert abs(prom_values(prom)["stripe_sf_cursor_current_timestamp_seconds"] - time.time()) < 120
    assert prom_values(prom)["stripe_sf_last_run_interrupted"] == 0


def test_a_sync_the_api_budget_stopped_is_reported_behind(world, tmp_path):
    with_latency(world)
    cfg = discover(write_config(tmp_path), world)
    prom = tmp_path / "sync.prom"

    def spend() -> None:
        world.org.api_used = 85_000  # of 100,000; salesforce.api_budget is 0.8: the next batch is not sent
    at_collections_write(world, 4, spend)
    done = stripe_sf(["sync", "--config", str(cfg), "--since", world.since, "--metrics-file", str(prom)],
                     world.cli_env())
    world.sf.faults.clear()
    assert done.returncode == ExitCode.UNAVAILABLE, done.stderr
    assert "Stopped early: Salesforce API usage reached" in done.stderr
    assert state_rows(tmp_path / STATE_NAME)["cursor"] is not None
    assert_reported_behind(cfg, world.cli_env(), prom)


def test_a_first_sync_since_the_budget_stopped_before_its_first_commit_keeps_its_start(world, tmp_path, clean):
    """Issue 20 §1: it said "The next run continues from the cursor", and the next plain `sync` found none."""
    cfg = discover(write_config(tmp_path), world)
    world.org.api_used = 85_000
    done = stripe_sf(["sync", "--config", str(cfg), "--since", world.since], world.cli_env())
    assert done.returncode == ExitCode.UNAVAILABLE, done.stderr
    assert "The next run continues where this one stopped" in done.stderr.replace("\n", " ")
    assert state_rows(tmp_path / STATE_NAME)["cursor"] is None
    world.org.api_used = 0
    again = stripe_sf(["sync", "--config", str(cfg)], world.cli_env())
    assert again.returncode == ExitCode.DEAD_LETTERS, again.stderr
    assert_converged(world, tmp_path / STATE_NAME, clean)


# --- issue 20 §2: every command stops within seconds, and a long step says it is alive -------------------------

STOP_WITHIN_S = 10.0  # Kubernetes kills after 30 s by default, systemd after 90 s
FAILED_INVOICE_READ = re.compile(r"^/v1/invoices/in_")  # the hydration's one call per failed invoice


def failed_invoices(stripe: Any, org: Any, n: int, *, days_ago: int, api_version: str | None = None) -> None:
    """`n` customers with an Account, a subscription and an open invoice whose payment failed (its event too)."""
    f = StripeFactory(stripe, seed=9, **({"api_version": api_version} if api_version else {}))
    price = f.price(5000, "usd", "month")
    t0 = NOW - days_ago * DAY
    for i in range(n):
        cus = f.customer(f"Late payer {i}", f"late{i}@example.com", created=t0 - DAY)
        org.insert("Account", {"Name": f"Late payer {i}", "Stripe_Customer_ID__c": cus["id"]})
        sub = f.subscription(cus["id"], [(price, 1)], status="past_due", created=t0 - DAY)
        inv = f.invoice(sub["id"], cus["id"], 5000, "usd", attempt_count=2, created=t0 + i * 60)
        f.invoice_payment_failed(inv["id"], t0 + i * 60 + 30)


def signal_at_nth(stripe: Any, child: Child, nth: int, sent: list[float]) -> None:
    """SIGTERM the child when its `nth` failed-invoice read reaches the Stripe stand-in (mid-hydration)."""
    reads = [0]

    def hook(n: int, method: str, path: str) -> None:
        if FAILED_INVOICE_READ.match(path):
            reads[0] += 1
            if reads[0] == nth:
                sent.append(time.monotonic())
                child.signal_and_wait(signal.SIGTERM)
    stripe.faults.on_request = hook


def heartbeats(stderr: str, command: str) -> list[str]:
    return [line for line in stderr.splitlines() if f"{command} still running after" in line]


def test_sigterm_mid_backfill_chunk_of_invoices_stops_within_seconds_and_resume_finishes(
        tmp_path, stripe_sb, sf_sb, org, env):
    """Issue 20 §2: SIGTERM took 2 min 51 s to stop an invoices backfill (one Stripe call per invoice, the whole
    chunk finished first). Now the chunk is cut between calls: what was done is committed with the checkpoint
    of the pages it covers, and --resume lists the rest (the ledger skips what the cut chunk committed)."""
    n = 600
    failed_invoices(stripe_sb, org, n, days_ago=200)
    cfg = configured(tmp_path, env, **{"heartbeat_seconds: 30": "heartbeat_seconds: 1"})
    stripe_sb.latency_ms, sf_sb.latency_ms = 10.0, 20.0
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith(("SF_", "STRIPE_"))}
    cli_env.update({"STRIPE_API_KEY": stripe_sb.api_key, "STRIPE_API_BASE": stripe_sb.base_url,
                    "SF_INSTANCE_URL": sf_sb.instance_url, "SF_ACCESS_TOKEN": sf_sb.access_token,
                    "REQUESTS_CA_BUNDLE": sf_sb.ca_path})
    since = since_days(400)
    args = ["backfill", "--since", since, "--objects", "invoices", "--config", str(cfg)]
    child = Child(args, cli_env, tmp_path)
    sent: list[float] = []
    signal_at_nth(stripe_sb, child, 150, sent)
    returncode, _, stderr = child.finish()
    took = time.monotonic() - sent[0]
    stripe_sb.faults.clear()

    assert returncode == ExitCode.TERMINATED, stderr
    assert took < STOP_WITHIN_S, f"stopped {took:.1f} s after SIGTERM"
    assert "batch cut by the stop after" in stderr and "Traceback" not in stderr
    beats = heartbeats(stderr, "backfill")
    assert len(beats) >= 2 and any("events done" in b for b in beats), stderr  # alive, and where it is
    [run] = runs(tmp_path / STATE_NAME)
    first = run["summary"]["applied"]
    assert 0 < first < n and committed_backfill_events(tmp_path) == first
    assert len(org.records("Task")) == first  # what was written is what was committed

    resumed = stripe_sf([*args, "--resume"], cli_env, timeout=180)
    assert resumed.returncode == ExitCode.OK, resumed.stderr
    assert committed_backfill_events(tmp_path) == n
    assert len(org.records("Task")) == n  # each failed invoice's Task once


def test_sigterm_mid_sync_batch_stops_within_seconds_with_the_cursor_at_what_was_committed(tmp_path):
    """A sync batch whose events each need a Stripe call (failed invoices on an account pinned before
    2025-03-31.basil: the failure code is read invoice by invoice) is cut between calls: its first events are
    written and committed, the cursor at the last of them, and the next plain sync does the rest."""
    from stripe_sf_sandbox.salesforce_server import SalesforceSandbox
    from stripe_sf_sandbox.stripe_factory import API_VERSION_PRE_BASIL
    from stripe_sf_sandbox.stripe_server import StripeSandbox

    from ..conftest import write_config as write_test_config
    n = 400
    org = scenario.awkward_org()
    with StripeSandbox(latency_ms=10, account_api_version=API_VERSION_PRE_BASIL) as stripe, \
            SalesforceSandbox(org, latency_ms=20) as sf:
        failed_invoices(stripe, org, n, days_ago=10, api_version=API_VERSION_PRE_BASIL)
        cfg = write_test_config(tmp_path / "sync.yaml", **{'api_version: "2026-10-28.endive"': 'api_version: '
                                                           f'"{API_VERSION_PRE_BASIL}"',
                                                           "heartbeat_seconds: 30": "heartbeat_seconds: 1"})
        service.run_discover(cfg, sandbox_environment(stripe, sf), write=True, example=cfg.read_text())
        cli_env = {k: v for k, v in os.environ.items() if not k.startswith(("SF_", "STRIPE_"))}
        cli_env.update({"STRIPE_API_KEY": stripe.api_key, "STRIPE_API_BASE": stripe.base_url,
                        "SF_INSTANCE_URL": sf.instance_url, "SF_ACCESS_TOKEN": sf.access_token,
                        "REQUESTS_CA_BUNDLE": sf.ca_path})
        since = time.strftime("%Y-%m-%d", time.gmtime(NOW - 12 * DAY))
        child = Child(["sync", "--config", str(cfg), "--since", since], cli_env, tmp_path)
        sent: list[float] = []
        signal_at_nth(stripe, child, 100, sent)
        returncode, _, stderr = child.finish()
        took = time.monotonic() - sent[0]
        stripe.faults.clear()

        assert returncode == ExitCode.TERMINATED, stderr
        assert took < STOP_WITHIN_S, f"stopped {took:.1f} s after SIGTERM"
        assert "batch cut by the stop after" in stderr and "Traceback" not in stderr
        assert any("events done" in b for b in heartbeats(stderr, "sync")), stderr
        [run] = runs(tmp_path / STATE_NAME)
        rows = state_rows(tmp_path / STATE_NAME)
        first = run["summary"]["events_read"]
        assert 0 < first < n and len(rows["events"]) == first == len(org.records("Task"))
        ordered = [e["id"] for e in sorted(stripe.events, key=lambda e: e["created"])]
        assert rows["cursor"] == ordered[first - 1]  # the last event committed, nothing passed over

        again = stripe_sf(["sync", "--config", str(cfg)], cli_env, timeout=180)
        assert again.returncode == ExitCode.OK, again.stderr
        assert len(state_rows(tmp_path / STATE_NAME)["events"]) == n == len(org.records("Task"))


def test_a_first_sync_since_a_signal_stopped_before_its_first_commit_keeps_its_start(world, tmp_path, clean):
    """Issue 20 §1: SIGTERM while the first batch of a first `sync --since` was still being prepared (its
    customers read, for longer than the stop's grace) commits none of its events; the next plain `sync`
    continues from the --since start instead of answering that there is no cursor."""
    cfg = discover(write_config(tmp_path, batch_size=10_000), world)
    child = Child(["sync", "--config", str(cfg), "--since", world.since], world.cli_env(), tmp_path)

    def hold(n: int, method: str, path: str) -> None:
        if path.startswith("/v1/customers") and not child.signalled.is_set():
            child.signal_and_wait(signal.SIGTERM)
            time.sleep(2.5)  # past the grace (pipeline/stop.py GRACE_S): the batch is cut before its first event
    world.stripe.faults.on_request = hold
    returncode, _, stderr = child.finish()
    world.stripe.faults.clear()
    assert returncode == ExitCode.TERMINATED, stderr
    assert "batch cut by the stop after 0 of its" in stderr
    rows = state_rows(tmp_path / STATE_NAME)
    assert rows["cursor"] is None and rows["events"] == {}

    again = stripe_sf(["sync", "--config", str(cfg)], world.cli_env())
    assert again.returncode == ExitCode.DEAD_LETTERS, again.stderr
    assert_converged(world, tmp_path / STATE_NAME, clean)


def test_a_first_sync_since_aborted_by_a_second_signal_keeps_its_start(world, tmp_path, clean):
    cfg = discover(write_config(tmp_path, batch_size=10_000), world)
    child = Child(["sync", "--config", str(cfg), "--since", world.since], world.cli_env(), tmp_path)
    at_collections_write(world, 1, lambda: child.signal_and_wait(signal.SIGTERM, then=signal.SIGTERM))
    returncode, _, stderr = child.finish()
    world.sf.faults.clear()
    assert returncode == ExitCode.TERMINATED, stderr
    assert state_rows(tmp_path / STATE_NAME)["cursor"] is None

    again = stripe_sf(["sync", "--config", str(cfg)], world.cli_env())
    assert again.returncode == ExitCode.DEAD_LETTERS, again.stderr
    assert_converged(world, tmp_path / STATE_NAME, clean)


def test_sigterm_while_salesforce_processes_a_bulk_job_leaves_it_and_stops_within_seconds(
        tmp_path, stripe_sb, sf_sb, org, env):
    """A Bulk API 2.0 job is polled until Salesforce has processed it (simple-salesforce sleeps 5 s and more
    between polls; a large job takes minutes): a stop leaves the job to Salesforce, records nothing of its
    batch, and --resume sends it again (upserts and updates by Id: idempotent)."""
    _, h = history(stripe_sb, org, subs=60)
    cfg = configured(tmp_path, env, **{"bulk_threshold: 2000": "bulk_threshold: 10",
                                       "bulk_chunk: 5000": "bulk_chunk: 1000"})
    org.bulk_processing_seconds = 60  # the job stays InProgress for a minute
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith(("SF_", "STRIPE_"))}
    cli_env.update({"STRIPE_API_KEY": stripe_sb.api_key, "STRIPE_API_BASE": stripe_sb.base_url,
                    "SF_INSTANCE_URL": sf_sb.instance_url, "SF_ACCESS_TOKEN": sf_sb.access_token,
                    "REQUESTS_CA_BUNDLE": sf_sb.ca_path})
    args = ["backfill", "--since", since_days(400), "--objects", "subscriptions", "--config", str(cfg)]
    child = Child(args, cli_env, tmp_path)
    sent: list[float] = []

    def at_first_poll(n: int, method: str, path: str) -> None:
        if method == "GET" and re.search(r"/jobs/ingest/[^/]+$", path) and not sent:
            sent.append(time.monotonic())
            child.signal_and_wait(signal.SIGTERM)
    sf_sb.faults.on_request = at_first_poll
    returncode, _, stderr = child.finish()
    took = time.monotonic() - sent[0]
    sf_sb.faults.clear()

    assert returncode == ExitCode.TERMINATED, stderr
    assert took < STOP_WITHIN_S, f"stopped {took:.1f} s after SIGTERM"
    assert "Left a Bulk API 2.0 upsert job on Opportunity to Salesforce on the stop" in stderr.replace("\n", " ")
    assert "Traceback" not in stderr and committed_backfill_events(tmp_path) == 0

    org.bulk_processing_seconds = 0
    resumed = stripe_sf([*args, "--resume"], cli_env, timeout=180)
    assert resumed.returncode == ExitCode.OK, resumed.stderr
    won = [s for s in h["subs"] if s["status"] in ("active", "trialing", "past_due", "unpaid")]
    assert len([o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c")]) == len(won)
