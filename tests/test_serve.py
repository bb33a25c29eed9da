"""`stripe-sf serve` over real HTTP on loopback: uvicorn started by the test, the sandbox stand-ins behind it.

Deliveries are signed as Stripe signs them (api-facts.md §4): HMAC-SHA256 of `{t}.{raw body}`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from stripe_sf_sandbox.webhooks import signature_header
from stripe_sf_sync import serve, service
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.state import StateStore

from .conftest import since, snapshot

SECRET = "whsec_test_current"
OLD_SECRET = "whsec_test_previous"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def state_path(config: Path) -> Path:
    return config.parent / "stripe-sf-state.sqlite"


def with_secrets(env: service.Environment, secrets: str) -> service.Environment:
    return dataclasses.replace(env, env={**env.env, "STRIPE_WEBHOOK_SECRET": secrets})


@contextlib.contextmanager
def serving(config: Path, env: service.Environment, *, secrets: str = SECRET, worker: bool = True,
            sync_every: float = 0, **options: Any) -> Iterator[tuple[str, Any]]:
    """uvicorn with the app on a free loopback port, in a thread; stopped as SIGTERM stops it."""
    runtime = serve.prepare(config, with_secrets(env, secrets))
    port = free_port()
    srv = serve.server(runtime, serve.ServeOptions(port=port, sync_every_s=sync_every, **options), worker=worker)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", srv
    finally:
        srv.should_exit = True
        thread.join(30)
        assert not thread.is_alive()


def signed(event: dict[str, Any] | bytes, secret: str = SECRET, *, at: int | None = None) -> tuple[bytes, dict]:
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    header = signature_header(body, secret, timestamp=at)
    return body, {"Stripe-Signature": header, "Content-Type": "application/json"}


def deliver(url: str, event: dict[str, Any] | bytes, secret: str = SECRET, *, at: int | None = None,
            path: str = "/stripe/webhook") -> requests.Response:
    body, headers = signed(event, secret, at=at)
    return requests.post(url + path, data=body, headers=headers, timeout=10)


def eventually(check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def event_of(stripe_sb: Any, event_id: str) -> dict[str, Any]:
    return json.loads(json.dumps(next(e for e in stripe_sb.events if e["id"] == event_id)))


def outcome(config: Path, event_id: str) -> str | None:
    with StateStore.open(state_path(config)) as st:
        return st.outcomes_for([event_id]).get(event_id)


def inbox_rows(config: Path) -> list[tuple[str, str]]:
    import sqlite3
    with contextlib.closing(sqlite3.connect(state_path(config))) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT event_id, status FROM inbox ORDER BY event_id")]


def acme_opportunities(org: Any, sc: Any) -> list[dict[str, Any]]:
    return [o for o in org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == sc.subscriptions["acme"]]


def test_a_signed_event_is_applied_in_salesforce(config, env, org, sc, stripe_sb):
    event = event_of(stripe_sb, sc.events[0])  # Acme's subscription: a won Opportunity to create
    with serving(config, env) as (url, _srv):
        reply = deliver(url, event)
        assert reply.status_code == 200 and reply.json() == {"received": True, "duplicate": False}
        [opp] = eventually(lambda: acme_opportunities(org, sc))
        assert opp["StageName"] == "Closed Won"
        eventually(lambda: inbox_rows(config) == [(event["id"], "done")])
        assert outcome(config, event["id"]) == "applied"
        assert requests.get(url + "/healthz", timeout=5).json() == {"status": "ok"}
        # The worker records its Salesforce success and its figures just after the batch's commit marks the
        # inbox row done: read them once they are there (on a loaded machine, a moment later).
        ready = eventually(lambda: (r := requests.get(url + "/readyz", timeout=5).json())["last_salesforce_success"]
                           and r)
        assert ready["ready"] is True and ready["inbox_depth"] == 0
        def counted() -> str | None:
            text = requests.get(url + "/metrics", timeout=5).text
            return text if "stripe_sf_pipeline_latency_seconds_count 1.0" in text else None

        metrics = eventually(counted)
        assert "stripe_sf_webhook_received_total 1.0" in metrics
        assert "stripe_sf_events_applied_total 1.0" in metrics
        assert "stripe_sf_inbox_depth 0.0" in metrics
        assert "stripe_sf_pipeline_latency_seconds_count 1.0" in metrics
    with StateStore.open(state_path(config)) as st:
        serve_runs = [r for r in st.recent_runs(10) if r["command"] == "serve"]
        assert serve_runs and serve_runs[0]["exit_code"] == 0 and serve_runs[0]["summary"]["applied"] == 1
    report = service.status_report(config, env)
    assert report["last_run"]["command"] == "serve" and report["last_run"]["exit_code"] == 0


def test_refused_deliveries_write_nothing(config, env, org, sc, stripe_sb):
    event = event_of(stripe_sb, sc.events[0])
    now = int(time.time())
    with serving(config, env, worker=False) as (url, _srv):
        hook = url + "/stripe/webhook"
        body, _ = signed(event)
        cases = {
            "missing signature": requests.post(hook, data=body, timeout=10),
            "malformed signature": requests.post(hook, data=body, headers={"Stripe-Signature": "v1=abc"},
                                                 timeout=10),
            "wrong signature": deliver(url, event, "whsec_someone_else"),
            "stale timestamp": deliver(url, event, at=now - 301),
            "not a Stripe event": deliver(url, b"[1, 2]"),
        }
        for reason, reply in cases.items():
            assert (reply.status_code, reply.text.strip()) == (400, reason)
        too_big = deliver(url, {**event, "padding": "x" * serve.MAX_BODY_BYTES})
        assert too_big.status_code == 413
        assert requests.get(hook, timeout=10).status_code == 405
        assert requests.put(hook, data=body, headers=signed(event)[1], timeout=10).status_code == 405
        metrics = requests.get(url + "/metrics", timeout=5).text
        assert 'stripe_sf_webhook_rejected_total{reason="stale timestamp"} 1.0' in metrics
        assert 'stripe_sf_webhook_rejected_total{reason="body too large"} 1.0' in metrics
        # Within the SDK's tolerance, a delivery is taken (Stripe retries for days with fresh signatures).
        assert deliver(url, event, at=now - 250).status_code == 200
        assert inbox_rows(config) == [(event["id"], "pending")]
    assert acme_opportunities(org, sc) == []


def test_a_replayed_event_is_applied_once(config, env, org, sc, stripe_sb, sf_sb):
    event = event_of(stripe_sb, sc.events[0])
    with serving(config, env) as (url, _srv):
        assert deliver(url, event).json()["duplicate"] is False
        eventually(lambda: inbox_rows(config) == [(event["id"], "done")])
        calls = len(sf_sb.requests_log)
        again = deliver(url, event)  # Stripe delivers at least once
        assert again.status_code == 200 and again.json()["duplicate"] is True
        time.sleep(1.5)  # longer than the worker's idle wait
        assert len(sf_sb.requests_log) == calls
        assert len(acme_opportunities(org, sc)) == 1
        assert "stripe_sf_webhook_duplicate_total 1.0" in requests.get(url + "/metrics", timeout=5).text


def test_a_rotated_secret_is_accepted(config, env, sc, stripe_sb):
    first, second = (event_of(stripe_sb, e) for e in sc.events[:2])
    with serving(config, env, secrets=f"{SECRET}, {OLD_SECRET}", worker=False) as (url, _srv):
        assert deliver(url, first, OLD_SECRET).status_code == 200  # endpoints still signing with the old one
        assert deliver(url, second, SECRET).status_code == 200
        assert deliver(url, first, "whsec_neither").status_code == 400
    assert sorted(inbox_rows(config)) == sorted([(first["id"], "pending"), (second["id"], "pending")])


def test_webhook_then_cursor_sync_applies_each_event_once(config, env, org, sc, stripe_sb):
    with serving(config, env) as (url, _srv):
        for event_id in sc.events:  # Stripe does not promise order; here they come oldest first
            assert deliver(url, event_of(stripe_sb, event_id)).status_code == 200
        eventually(lambda: all(status == "done" for _, status in inbox_rows(config))
                   and len(inbox_rows(config)) == len(sc.events))
    after_webhooks = snapshot(org)
    assert len(org.records("Task")) == 6  # as the cursor sync alone writes them (test_sync_e2e)
    summary = service.run_sync(config, env, since=since(sc), dry_run=False, max_events=None)
    assert summary.skipped_duplicate == len(sc.events) and summary.applied == 0 and summary.records_written == 0
    assert snapshot(org) == after_webhooks


def test_cursor_sync_then_webhook_applies_each_event_once(config, env, org, sc, stripe_sb, sf_sb):
    service.run_sync(config, env, since=since(sc), dry_run=False, max_events=None)
    before, calls = snapshot(org), len(sf_sb.requests_log)
    with serving(config, env) as (url, _srv):
        for event_id in sc.events:
            assert deliver(url, event_of(stripe_sb, event_id)).status_code == 200
        eventually(lambda: all(status == "done" for _, status in inbox_rows(config)))
    assert snapshot(org) == before
    assert len(sf_sb.requests_log) == calls  # the ledger skipped every one before any lookup


def test_the_safety_net_sync_catches_up_missed_deliveries(config, env, org, sc):
    service.run_sync(config, env, since=since(sc), dry_run=False, max_events=2)  # a cursor, events left behind
    with serving(config, env, sync_every=0.5):
        eventually(lambda: len(org.records("Task")) == 6)
    with StateStore.open(state_path(config)) as st:
        runs = st.recent_runs(10)
    # The first run above, and at least one of the server's (the scenario's unmatched event dead-letters: 3).
    assert sum(r["command"] == "sync" and r["exit_code"] in (ExitCode.OK, ExitCode.DEAD_LETTERS) for r in runs) >= 2


def test_acknowledged_event_survives_a_killed_receiver(config, env, org, sc, stripe_sb):
    """Killed (SIGKILL) after the 200 and before applying: the restarted receiver applies it from the inbox."""
    event = event_of(stripe_sb, sc.events[0])
    port = free_port()
    child_env = {**os.environ, **with_secrets(env, SECRET).env}
    cmd = [sys.executable, "-m", "stripe_sf_sync", "serve", "--config", str(config), "--port", str(port),
           "--sync-every", "0"]
    with StateStore.open(state_path(config)) as blocker:
        blocker.acquire_lock()  # a cron `sync` holds the run lock: the worker cannot apply yet
        proc = subprocess.Popen(cmd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            url = f"http://127.0.0.1:{port}"
            eventually(lambda: _answers(url + "/healthz"))
            assert deliver(url, event).status_code == 200
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    assert acme_opportunities(org, sc) == [] and inbox_rows(config) == [(event["id"], "pending")]
    with serving(config, env):
        eventually(lambda: acme_opportunities(org, sc))
        eventually(lambda: inbox_rows(config) == [(event["id"], "done")])
    assert outcome(config, event["id"]) == "applied"


def test_sigterm_drains_and_exits_zero(config, env, org, sc, stripe_sb, sf_sb):
    event = event_of(stripe_sb, sc.events[0])
    port = free_port()
    child_env = {**os.environ, **with_secrets(env, SECRET).env,
                 "REQUESTS_CA_BUNDLE": _ca_bundle(config, stripe_sb, sf_sb)}
    cmd = [sys.executable, "-m", "stripe_sf_sync", "serve", "--config", str(config), "--port", str(port),
           "--sync-every", "0"]
    proc = subprocess.Popen(cmd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        eventually(lambda: _answers(url + "/healthz"))
        assert deliver(url, event).status_code == 200
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert outcome(config, event["id"]) == "applied"  # acknowledged, then drained before the exit
    assert inbox_rows(config) == [(event["id"], "done")]


def _ca_bundle(config: Path, stripe_sb: Any, sf_sb: Any) -> str:
    """The stand-ins' CAs in one bundle, for a child process that talks to both."""
    bundle = config.parent / "ca-bundle.pem"
    bundle.write_text("".join(Path(p).read_text() for p in (stripe_sb.ca_path, sf_sb.ca_path) if p))
    return str(bundle)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def test_serve_without_its_extra_says_how_to_install_it():
    code = ("import sys; sys.modules['uvicorn'] = None; sys.argv = ['stripe-sf', 'serve']; "
            "from stripe_sf_sync.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == ExitCode.CONFIG, done.stderr
    assert "`stripe-sf serve` needs the server extra, and uvicorn is not installed" in done.stderr
    assert "pip install 'stripe-sf-sync[server]'" in done.stderr and "Traceback" not in done.stderr


def test_serve_without_a_signing_secret_says_what_to_export(config, env):
    with pytest.raises(Exception) as caught:
        serve.prepare(config, env)
    assert "STRIPE_WEBHOOK_SECRET is not set" in str(caught.value)


def test_a_failing_salesforce_leaves_the_event_in_the_inbox_and_it_is_retried(config, env, org, sc, stripe_sb,
                                                                                sf_sb):
    sf_sb.faults.fail_matching("PATCH", r"composite/sobjects", 403,
                               [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}],
                               times=1)
    event = event_of(stripe_sb, sc.events[0])
    with serving(config, env) as (url, _srv):
        assert deliver(url, event).status_code == 200
        eventually(lambda: acme_opportunities(org, sc), timeout=30)  # after the worker's pause
        eventually(lambda: inbox_rows(config) == [(event["id"], "done")])
    with StateStore.open(state_path(config)) as st:
        codes = [r["exit_code"] for r in st.recent_runs(10) if r["command"] == "serve"]
    assert ExitCode.UNAVAILABLE in codes and codes[0] == ExitCode.OK  # the failed drain, then the one that applied
