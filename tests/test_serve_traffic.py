"""`stripe-sf serve` against deliveries it cannot use and against hostile or heavy traffic (issues 19 §4,
20 §3-5), over real HTTP on loopback; raw sockets where a client misbehaves below HTTP."""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any

import requests

from stripe_sf_sandbox.webhooks import connected_account_event, signature_header, thin_event
from stripe_sf_sync import serve
from stripe_sf_sync.state import StateStore

from .test_serve import SECRET, acme_opportunities, deliver, event_of, eventually, inbox_rows, serving, state_path


def _metrics(url: str) -> str:
    return requests.get(url + "/metrics", timeout=5).text


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes the connection; raises TimeoutError if it keeps it open."""
    sock.settimeout(timeout)
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def test_authentic_deliveries_serve_cannot_use_are_acknowledged_and_not_applied(config, env, org, sc, stripe_sb,
                                                                                  caplog):
    event = event_of(stripe_sb, sc.events[0])  # Acme's subscription: applied, it would create an Opportunity
    cases = {"connected account": connected_account_event(event), "thin event": thin_event(event),
             "livemode differs from STRIPE_API_KEY's mode": {**event, "livemode": True}}
    with caplog.at_level(logging.INFO, logger="stripe_sf_sync"), serving(config, env) as (url, _srv):
        for reason, delivery in cases.items():
            reply = deliver(url, delivery)
            assert (reply.status_code, reply.json()) == (200, {"received": True, "ignored": reason})
        metrics = _metrics(url)
        for reason in cases:
            assert f'stripe_sf_webhook_ignored_total{{reason="{reason}"}} 1.0' in metrics
        assert "stripe_sf_webhook_rejected_total{" not in metrics
        time.sleep(1.5)  # longer than the worker's batch window and idle wait
    assert inbox_rows(config) == [] and acme_opportunities(org, sc) == []
    logged = [r.getMessage() for r in caplog.records if "ignored event" in r.getMessage()]
    assert len(logged) == 3 and all("nothing applied" in m and "127.0.0.1" in m for m in logged)
    assert "connected account" in logged[0] and event["id"] in logged[0]
    # A signature failure keeps its 400, connected account or not.
    with serving(config, env, worker=False) as (url, _srv):
        assert deliver(url, connected_account_event(event), "whsec_other").status_code == 400


def test_refused_deliveries_are_logged_rate_limited_with_the_rotation_hint(config, env, sc, stripe_sb, caplog):
    event = event_of(stripe_sb, sc.events[0])
    flood = serve.LOG_PER_MINUTE + 7
    with caplog.at_level(logging.INFO, logger="stripe_sf_sync"), \
            serving(config, env, worker=False) as (url, _srv):
        for _ in range(flood):
            assert deliver(url, event, "whsec_rotated_elsewhere").status_code == 400
        one_by_one = [r for r in caplog.records if r.getMessage().startswith("Refused a delivery")]
        assert len(one_by_one) == serve.LOG_PER_MINUTE
        first = one_by_one[0].getMessage()
        assert "127.0.0.1:" in first and "wrong signature" in first and event["id"] in first
        assert "The signing secret in STRIPE_WEBHOOK_SECRET did not sign it" in first and "rotated" in first
        assert one_by_one[0].levelno == logging.WARNING
    summary = [r.getMessage() for r in caplog.records if "were not logged one by one" in r.getMessage()]
    assert summary == [summary[0]] and summary[0].startswith("7 more refused deliveries")
    assert "7 wrong signature" in summary[0]


def test_throttled_log_counts_what_it_does_not_log_and_says_so_next_window(caplog):
    now = [0.0]
    throttled = serve.ThrottledLog("refused deliveries", per_window=2, window_s=60, clock=lambda: now[0])
    assert [throttled.allow("wrong signature") for _ in range(5)] == [True, True, False, False, False]
    now[0] = 61.0
    with caplog.at_level(logging.WARNING, logger="stripe_sf_sync"):
        assert throttled.allow("stale timestamp") is True
    assert [r.getMessage() for r in caplog.records] == [
        "3 more refused deliveries in the last 61 s were not logged one by one (3 wrong signature); "
        "/metrics counts them all."]


def test_signed_bodies_that_cannot_be_kept_get_a_400_not_a_500(config, env, sc, stripe_sb):
    event = event_of(stripe_sb, sc.events[0])
    def deep(levels: int) -> bytes:
        return ('{"id": "evt_deep", "object": "event", "created": 1700000000, "livemode": false, "data": '
                + "[" * levels + "]" * levels + "}").encode()

    with serving(config, env, worker=False) as (url, _srv):
        for body in (deep(1000), deep(5000), json.dumps({**event, "created": 10**30}).encode(), b"\xff\xfe{}"):
            reply = deliver(url, body)
            assert reply.status_code == 400, reply.text
        assert deliver(url, b"\xff\xfe{}").text.strip() == "body is not UTF-8"
    assert inbox_rows(config) == []


def test_a_413_answers_and_closes_the_connection(config, env):
    with serving(config, env, worker=False) as (url, _srv), _raw(url) as sock:
        sock.sendall(b"POST /stripe/webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Stripe-Signature: t=1,v1=00\r\n\r\n")
        chunk = b"x" * 65536
        sent = 0
        try:
            while sent < 64 * serve.MAX_BODY_BYTES:  # far more than the limit: the server stops reading
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            got = _read_until_closed(sock, 5)
        except ConnectionResetError:
            got = b"HTTP/1.1 413"  # closed with our bytes unread: the kernel resets; the answer went first
        assert got.startswith(b"HTTP/1.1 413")
        assert sent < 64 * serve.MAX_BODY_BYTES  # the connection closed long before (a reset stopped us)


def test_a_connection_that_sends_no_request_or_a_slow_body_is_closed(config, env):
    with serving(config, env, worker=False, header_timeout_s=0.5, body_timeout_s=0.5) as (url, _srv):
        with _raw(url) as idle:
            started = time.monotonic()
            assert _read_until_closed(idle, 5) == b""
            assert time.monotonic() - started < 3
        with _raw(url) as slow:
            slow.sendall(b"POST /stripe/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            got = _read_until_closed(slow, 5)
            assert got.startswith(b"HTTP/1.1 408") and b"body too slow" in got
        assert 'stripe_sf_webhook_rejected_total{reason="body too slow"} 1.0' in _metrics(url)


def test_connections_beyond_the_limit_get_a_503(config, env):
    with serving(config, env, worker=False, max_connections=2, header_timeout_s=30) as (url, _srv):
        held = [_raw(url) for _ in range(2)]
        try:
            time.sleep(0.2)
            assert requests.get(url + "/healthz", timeout=5).status_code == 503
        finally:
            for sock in held:
                sock.close()
        eventually(lambda: requests.get(url + "/healthz", timeout=5).status_code == 200)


def test_a_client_that_disconnects_mid_body_is_counted_without_a_traceback(config, env, caplog):
    with caplog.at_level(logging.INFO), serving(config, env, worker=False) as (url, _srv):
        for _ in range(5):
            with _raw(url) as sock:
                sock.sendall(b"POST /stripe/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
                time.sleep(0.05)
        eventually(lambda: "stripe_sf_webhook_disconnected_total 5.0" in _metrics(url))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert sum("disconnected before its whole body arrived" in r.getMessage() for r in caplog.records) == 5


def test_deliveries_within_the_batch_window_are_applied_as_one_drain(config, env, org, sc, stripe_sb, sf_sb,
                                                                      caplog):
    events = [event_of(stripe_sb, e) for e in sc.events]
    with caplog.at_level(logging.INFO, logger="stripe_sf_sync"), \
            serving(config, env, batch_window_s=1.5) as (url, _srv):
        eventually(lambda: "stripe_sf_inbox_drains_total 1.0" in _metrics(url))  # the drain at start
        for event in events:
            assert deliver(url, event).status_code == 200
        eventually(lambda: len(inbox_rows(config)) == len(events) and all(s == "done" for _, s in inbox_rows(config)))
        assert "stripe_sf_inbox_drains_total 2.0" in _metrics(url)  # all of them in one
    with StateStore.open(state_path(config)) as st:
        drains = [r for r in st.recent_runs(10) if r["command"] == "serve"]
    assert len(drains) == 2 and drains[0]["summary"]["events_read"] == len(events)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"inbox drain done: {len(events)} events read") for m in messages)
    assert not any("serve finished with exit code" in m for m in messages)


def test_the_runs_table_keeps_a_bounded_number_of_drains(backend):
    with backend.open() as st:
        good = st.start_run("serve")
        st.finish_run(good, 0, {})
        for _ in range(12):
            st.finish_run(st.start_run("serve"), 69, {})
        sync = st.start_run("sync")
        st.finish_run(sync, 0, {})
        assert st.prune_runs("serve", 5) == 7
        runs = st.recent_runs(50)
    serve_runs = [r["run_id"] for r in runs if r["command"] == "serve"]
    assert len(serve_runs) == 6 and good in serve_runs  # the newest 5, and the newest that did its work
    assert sync in [r["run_id"] for r in runs]


def test_the_inbox_prune_is_bounded(backend):
    old = time.time() - 50 * 86400
    with backend.open() as st:
        for i in range(30):
            st.inbox_add(f"evt_{i:03d}", int(old), "{}", old)
        st.inbox_add("evt_recent", int(time.time()), "{}", time.time())
    backend.execute("UPDATE inbox SET status = 'done'")
    with backend.open() as st:
        assert st.prune_inbox(limit=10) == 10
        assert st.prune_inbox(limit=100) == 20
        assert st.prune_inbox(limit=100) == 0
    assert backend.execute("SELECT event_id FROM inbox") == [("evt_recent",)]


def test_every_drain_paces_stripe_as_one_client(config, env, sc, stripe_sb):
    runtime = serve.prepare(config, _with_secret(env))
    worker = serve.Worker(runtime, serve.Metrics(), sync_every_s=0)
    first, second = worker._stripe_source(), worker._stripe_source()
    assert first is not second  # each run's caches are its own
    assert second._pacer is first._pacer and second._endpoint_pacers is first._endpoint_pacers


def _with_secret(env: Any) -> Any:
    import dataclasses
    return dataclasses.replace(env, env={**env.env, "STRIPE_WEBHOOK_SECRET": SECRET})


def test_signature_header_matches_the_sdk():
    import stripe
    body = '{"id": "evt_1", "object": "event"}'
    header = signature_header(body, SECRET)
    assert stripe.WebhookSignature.verify_header(body, header, SECRET, 300)
