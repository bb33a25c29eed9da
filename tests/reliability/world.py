"""A deterministic world for the reliability suite: both stand-ins, the demo scenario plus generated
events, a config with small batches, and helpers to run `stripe-sf` as a real subprocess and to check
the state file afterwards."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stripe_sf_sandbox import scenario
from stripe_sf_sandbox.demo import sandbox_environment
from stripe_sf_sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync import service

from ..conftest import EXAMPLE, snapshot
from ..state_backends import Backend

ROOT = Path(__file__).resolve().parents[2]
CHILDHOOK = Path(__file__).resolve().parent / "childhook"
DAY = 86400
STATE_NAME = "stripe-sf-state.sqlite"


@dataclass
class World:
    """Both stand-ins, seeded identically for the same `now` and `extra`."""

    stripe: StripeSandbox
    sf: SalesforceSandbox
    sc: scenario.Scenario
    since: str
    expected_dead: set[str] = field(default_factory=set)  # event ids that must (at least) be dead letters

    @property
    def org(self) -> SalesforceOrg:
        return self.sf.org

    @property
    def event_ids(self) -> list[str]:
        return [e["id"] for e in self.stripe.events]

    def env(self, *, sleep: bool = False) -> service.Environment:
        environment = sandbox_environment(self.stripe, self.sf)
        if not sleep:
            environment.sleep = lambda s: None
        return environment

    def cli_env(self, **extra: str) -> dict[str, str]:
        """Process environment for a `stripe-sf` subprocess (token mode)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SF_", "STRIPE_", "STRIPE_SF_TEST"))}
        env.update({"STRIPE_API_KEY": self.stripe.api_key, "STRIPE_API_BASE": self.stripe.base_url,
                    "SF_INSTANCE_URL": self.sf.instance_url, "SF_ACCESS_TOKEN": self.sf.access_token,
                    "REQUESTS_CA_BUNDLE": self.sf.ca_path, "PYTHONPATH": str(CHILDHOOK),
                    "COLUMNS": "200"})
        env.update(extra)
        return env

    def close(self) -> None:
        self.sf.stop()
        self.stripe.stop()

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_world(now: int, *, extra: int = 12) -> World:
    """The demo scenario plus `extra` generated customers (about 4 events each, two without an Account,
    and one malformed event): identical Ids and events for identical arguments."""
    stripe = StripeSandbox().start()
    org = scenario.awkward_org()
    sf = SalesforceSandbox(org).start()
    sc = scenario.load(stripe, org, now=now)
    world = World(stripe, sf, sc, since=time.strftime("%Y-%m-%d", time.gmtime(sc.start)))
    world.expected_dead.update(sc.unmatched_events)
    f = StripeFactory(stripe, seed=4242)
    owners = [org.user_id("Ava Owner"), org.user_id("Ben Owner")]
    t0 = now - 5 * DAY
    monthly = f.price(2900, "usd", "month", product_name="Starter")
    yearly = f.price(120000, "eur", "year", product_name="Annual")
    for i in range(extra):
        base = t0 + i * 1800
        cus = f.customer(f"Gen {i}", f"gen{i}@example.com", created=base - 10 * DAY)
        has_account = i % 6 != 5
        if has_account:
            org.insert("Account", {"Name": f"Gen {i}", "OwnerId": owners[i % 2], "Stripe_Customer_ID__c": cus["id"]})
        price = monthly if i % 2 else yearly
        sub = f.subscription(cus["id"], [(price, 1 + i % 3)], status="active", created=base)
        ev = f.subscription_created(sub, base)
        if not has_account:
            world.expected_dead.add(ev["id"])
        if i % 3 == 0:
            inv = f.invoice(sub["id"], cus["id"], 2900, "usd", created=base + DAY)
            f.invoice_payment_failed(inv["id"], base + DAY)
            f.subscription_updated(sub["id"], {"status": "past_due"}, base + DAY + 60)
            f.subscription_updated(sub["id"], {"status": "active"}, base + 2 * DAY)
        elif i % 3 == 1:
            f.subscription_updated(sub["id"], {"items": [(price, 5)]}, base + DAY)
            f.subscription_updated(sub["id"], {"cancel_at_period_end": True}, base + 2 * DAY)
            f.subscription_deleted(sub["id"], base + 3 * DAY)
        else:
            pi = f.payment_intent(cus["id"], 15000 + i, "usd", status="requires_payment_method",
                                  created=base + DAY)
            f.payment_succeeded(pi["id"], base + DAY + 30)
    # A malformed event: an unknown currency. It must be dead-lettered, never stop the run.
    bad = stripe.emit("customer.subscription.updated",
                      {"id": "sub_MalformedCurrency01", "object": "subscription", "customer": "cus_Nobody0001",
                       "status": "active", "currency": "zzz9", "items": {"object": "list", "data": []}},
                      created=t0 + 3 * DAY + 7, store=False, event_id="evt_MalformedCurrencyEvent000001")
    world.expected_dead.add(bad["id"])
    return world


def write_config(directory: Path, *, batch_size: int = 5, extra: str = "") -> Path:
    """sync.yaml with the awkward org's discovered values (deterministic across worlds) and small batches."""
    directory.mkdir(parents=True, exist_ok=True)
    text = EXAMPLE.replace("account_csm: null", "account_csm: CSM__c")
    assert "batch_size: 10000" in text and "requests_per_second: null" in text, "sync.yaml.example defaults moved"
    text = text.replace("batch_size: 10000", f"batch_size: {batch_size}")
    text = text.replace("requests_per_second: null", "requests_per_second: 100")
    path = directory / "sync.yaml"
    path.write_text(text + extra)
    return path


def discover(config: Path, world: World) -> Path:
    service.run_discover(config, world.env(), write=True, example=config.read_text())
    return config


# --- subprocesses ---------------------------------------------------------------------------------

def stripe_sf(args: list[str], env: dict[str, str], *, timeout: float = 120,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m stripe_sf_sync ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "stripe_sf_sync", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd or ROOT)


@dataclass
class Killed:
    """What a run that was SIGKILLed at a kill point left behind."""

    returncode: int
    stdout: str
    stderr: str


def run_and_kill(args: list[str], env: dict[str, str], *, arm: Callable[[Callable[[], None]], None] | None = None,
                 timeout: float = 120) -> Killed:
    """Start `stripe-sf ARGS`; `arm(kill)` may install a stand-in hook that calls `kill()` (SIGKILL from outside).
    The child may also kill itself (STRIPE_SF_TEST_KILL)."""
    proc = subprocess.Popen([sys.executable, "-m", "stripe_sf_sync", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    killed = threading.Event()

    def kill() -> None:
        if not killed.is_set():
            killed.set()
            os.kill(proc.pid, signal.SIGKILL)
            # Stay in the stand-in's handler until the process is gone, so nothing after this request runs.
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)

    if arm is not None:
        arm(kill)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return Killed(proc.returncode, out, err)


# --- checks ---------------------------------------------------------------------------------------

def state_rows(state_path: Path | Backend) -> dict[str, Any]:
    """The ledger, dead letters, cursor and integrity of a state file (read-only), or of a state Backend."""
    if isinstance(state_path, Backend):
        return state_path.rows()
    con = sqlite3.connect(f"file:{state_path}?mode=ro", uri=True)
    try:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        events = {r[0]: r[1] for r in con.execute("SELECT event_id, outcome FROM events")}
        dead = {r[0]: {"attempts": r[1], "status": r[2], "code": r[3], "reason": r[4], "payload": r[5]}
                for r in con.execute("SELECT event_id, attempts, status, error_code, reason, payload "
                                     "FROM dead_letters")}
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    finally:
        con.close()
    return {"integrity": integrity, "events": events, "dead": dead, "cursor": meta.get("cursor_event_id")}


def assert_converged(world: World, state_path: Path | Backend, reference: dict[str, Any]) -> None:
    """The org equals a never-killed run's, no duplicate Task, every event has exactly one outcome
    (and the same one), dead letters hold exactly the expected events once, and the file is sound."""
    snap = snapshot(world.org)
    assert snap == reference["snapshot"], _diff(snap, reference["snapshot"])
    keys = [t.get("Stripe_Event_ID__c") for t in world.org.records("Task")]
    assert len(keys) == len(set(keys)), "duplicate Task"
    rows = state_rows(state_path)
    assert rows["integrity"] == "ok"
    assert set(rows["events"]) == set(world.event_ids), "an event without a durable outcome, or an extra one"
    assert rows["events"] == reference["events"]
    assert set(rows["events"].values()) <= {"applied", "stale", "ignored", "dead_letter"}
    assert set(rows["dead"]) == set(reference["dead"]) >= world.expected_dead
    assert {d["attempts"] for d in rows["dead"].values()} == {1}, "a dead letter was recorded twice"
    assert all(d["status"] == "open" and d["reason"] and d["code"] and json.loads(d["payload"])["id"] == eid
               for eid, d in rows["dead"].items())
    newest = max(enumerate(world.stripe.events), key=lambda ie: (ie[1]["created"], ie[0]))[1]["id"]
    assert rows["cursor"] == newest, "the cursor is not the newest event"


def _diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    out = []
    for obj in a:
        extra = [r for r in a[obj] if r not in b[obj]]
        missing = [r for r in b[obj] if r not in a[obj]]
        if extra or missing:
            out.append(f"{obj}: +{extra[:3]} -{missing[:3]}")
    return "; ".join(out)


def expected_of(world: World, state_path: Path) -> dict[str, Any]:
    """What assert_converged compares against, taken from a finished run."""
    rows = state_rows(state_path)
    return {"snapshot": snapshot(world.org), "events": rows["events"], "dead": rows["dead"]}


def sync(config: Path, environment: service.Environment, since: str | None = None) -> service.RunSummary:
    """`stripe-sf sync` in-process."""
    return service.run_sync(config, environment, since=since, dry_run=False, max_events=None)
