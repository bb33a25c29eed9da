"""The Stripe edge against the Stripe stand-in: one pager for every list, and one retry policy that tries a
request a known number of times (faults come from the stand-in's fault plan, as in tests/reliability)."""

from __future__ import annotations

import gc
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from stripe_sf_sandbox.stripe_factory import API_VERSION_CURRENT, StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync.errors import FatalSyncError
from stripe_sf_sync.stripe.source import MAX_ATTEMPTS, StripeSource, build_client

NOW = int(time.time())
RATE_LIMIT = {"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests"}}
SERVER_ERROR = {"error": {"type": "api_error", "message": "Something went wrong on Stripe's end."}}
CONFLICT = {"error": {"type": "invalid_request_error", "code": "lock_timeout", "message": "Conflict"}}
BAD_REQUEST = {"error": {"type": "invalid_request_error", "code": "parameter_invalid", "message": "Bad"}}


class Retries:
    """The waits a source asked for, and the warnings it logged."""

    def __init__(self) -> None:
        self.slept: list[float] = []
        self.logged: list[str] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


@pytest.fixture
def retries() -> Iterator[Retries]:
    seen = Retries()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.logged.append(record.getMessage())

    logger = logging.getLogger("stripe_sf_sync")
    handler, level = Keep(level=logging.WARNING), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def source_for(sb: StripeSandbox, retries: Retries, timeout: float = 30) -> StripeSource:
    client, http = build_client(sb.api_key, api_base=sb.base_url, api_version=API_VERSION_CURRENT, timeout=timeout)
    return StripeSource(client, http, api_version=API_VERSION_CURRENT, sleep=retries.sleep)


def a_customer(sb: StripeSandbox) -> str:
    return StripeFactory(sb, seed=71).customer("Retry Co", "r@example.com", created=NOW - 86400)["id"]


def test_a_429_without_should_retry_is_retried(stripe_sb, retries):
    cus = a_customer(stripe_sb)
    stripe_sb.faults.fail_matching("GET", r"^/v1/customers/", 429, RATE_LIMIT, times=2)
    mark = stripe_sb.request_count
    source = source_for(stripe_sb, retries)
    found = source.customer(cus)
    assert found is not None and found.name == "Retry Co"
    assert source.calls == stripe_sb.request_count - mark == 3  # every attempt is one counted request
    assert len(retries.slept) == 2


@pytest.mark.parametrize(("status", "body", "headers", "message"), [
    (500, SERVER_ERROR, {"Stripe-Should-Retry": "false"}, "HTTP 500"),
    (409, CONFLICT, {"Stripe-Should-Retry": "false"}, "HTTP 409"),
    (400, BAD_REQUEST, {}, "HTTP 400 parameter_invalid"),
    (401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}}, {}, "rejected the API key"),
])
def test_what_stripe_says_not_to_retry_is_tried_once(stripe_sb, retries, status, body, headers, message):
    cus = a_customer(stripe_sb)
    stripe_sb.faults.fail_matching("GET", r"^/v1/customers/", status, body, headers=headers, times=10)
    mark = stripe_sb.request_count
    source = source_for(stripe_sb, retries)
    with pytest.raises(FatalSyncError, match=message):
        source.customer(cus)
    assert source.calls == stripe_sb.request_count - mark == 1
    assert retries.slept == [] and retries.logged == []


@pytest.mark.parametrize(("status", "body", "headers"), [
    (500, SERVER_ERROR, {}),
    (503, None, {}),
    (409, CONFLICT, {}),
    (429, RATE_LIMIT, {}),
    (429, RATE_LIMIT, {"Stripe-Should-Retry": "true"}),
    (400, BAD_REQUEST, {"Stripe-Should-Retry": "true"}),
])
def test_a_failing_request_is_tried_exactly_max_attempts_times(stripe_sb, retries, status, body, headers):
    cus = a_customer(stripe_sb)
    stripe_sb.faults.fail_matching("GET", r"^/v1/customers/", status, body, headers=headers, times=100)
    mark = stripe_sb.request_count
    source = source_for(stripe_sb, retries)
    with pytest.raises(FatalSyncError, match=f"HTTP {status} .*after retries. Nothing was lost"):
        source.customer(cus)
    assert MAX_ATTEMPTS == 6
    assert source.calls == stripe_sb.request_count - mark == MAX_ATTEMPTS  # not 3, not 18
    assert len(retries.slept) == MAX_ATTEMPTS - 1
    assert all(0 <= s <= 8 for s in retries.slept)


def test_a_request_and_its_retries_end_within_the_configured_timeout(stripe_sb, retries):
    """stripe.timeout_seconds bounds the whole request (deadline.py): each attempt gets half of what is left, so
    a server that never answers fails when the time is up (it was MAX_ATTEMPTS x the timeout, plus the waits:
    3 min 11 s with the defaults), and a single stall is tried again within it."""
    mark = stripe_sb.request_count
    for n in range(mark + 1, mark + 3 * MAX_ATTEMPTS + 1):
        stripe_sb.faults.hang_request(n, 3.0)
    source = source_for(stripe_sb, retries, timeout=0.8)
    started = time.monotonic()
    with pytest.raises(FatalSyncError, match=r"did not answer within 0\.8 s; gave up after \d attempts") as caught:
        source.newest_event()
    assert 0.6 < time.monotonic() - started < 1.5
    assert 2 <= source.calls <= MAX_ATTEMPTS and caught.value.code == "TIMEOUT"
    assert f"127.0.0.1:{stripe_sb.base_url.rsplit(':', 1)[1]}" in caught.value.message

    stripe_sb.faults.clear()
    stripe_sb.faults.hang_request(stripe_sb.request_count + 1, 3.0)  # one stall: the next attempt answers
    assert source.newest_event() is None


def test_each_retry_logs_one_warning_with_the_reason_and_the_attempt(stripe_sb, retries):
    stripe_sb.faults.fail_matching("GET", r"^/v1/events", 429, RATE_LIMIT, times=2)
    source = source_for(stripe_sb, retries)
    assert source.newest_event() is None
    assert len(retries.logged) == 2
    for attempt, (line, slept) in enumerate(zip(retries.logged, retries.slept, strict=True), start=2):
        assert re.fullmatch(rf"Stripe: HTTP 429 rate_limit on GET /v1/events; retrying \(attempt {attempt} of "
                            rf"{MAX_ATTEMPTS}\) in \d+\.\d s", line)
        assert line.endswith(f"in {slept:.1f} s")
        assert stripe_sb.api_key not in line and "Too many requests" not in line  # no secret, no body


def test_events_after_walks_towards_now_and_stops_when_stripe_has_no_more(stripe_sb, retries):
    f = StripeFactory(stripe_sb, seed=72)
    events = [f.emit("customer.created", f.customer(f"C{i}", f"c{i}@example.com"), NOW - 1000 + i)
              for i in range(5)]
    source = source_for(stripe_sb, retries)
    got = [e["id"] for e in source.events_after(events[0]["id"], page_limit=2)]
    assert got == [e["id"] for e in events[1:]]  # oldest first
    assert source.calls == 2  # two full pages; the second says has_more: false, so no empty third read
    listed = [p for m, path, p in stripe_sb.requests_log if path == "/v1/events"]
    assert [p.get("ending_before") for p in listed] == [events[0]["id"], events[2]["id"]]
    assert source.first_event_since(NOW - 1000)["id"] == events[0]["id"]


def pages_from(*pages: dict[str, Any]) -> StripeSource:
    """A source whose requests answer `pages` in turn (to script a list Stripe would never send)."""
    answers = iter(pages)
    source = StripeSource(None, api_version="2025-03-31")  # type: ignore[arg-type]  # no request reaches it
    source.client.get = lambda *a, **k: next(answers)  # type: ignore[method-assign]
    return source


def test_a_list_walking_back_that_jumps_forward_in_time_stops_the_run():
    newer = {"data": [{"id": f"sub_n{i}", "created": 200 - i} for i in range(3)], "has_more": True}
    later = {"data": [{"id": f"sub_l{i}", "created": 300 - i} for i in range(3)], "has_more": True}
    source = pages_from(newer, later)
    pages = source.list_pages("subscriptions", since=0, until=None)
    assert [s["id"] for s in next(pages)] == ["sub_n0", "sub_n1", "sub_n2"]
    with pytest.raises(FatalSyncError, match="same page of subscriptions") as info:
        next(pages)
    assert "--resume" in info.value.hint


def test_a_page_reaches_neither_the_sdks_decoder_nor_its_debug_log(stripe_sb, retries):
    """Pages are decoded once, by the edge: the SDK neither decodes them again nor formats them for its log
    (issue 14: its json.loads and logfmt were most of a run's CPU)."""
    f = StripeFactory(stripe_sb, seed=73)
    events = [f.emit("customer.created", f.customer(f"Quiet {i}", f"q{i}@example.com"), NOW - 900 + i)
              for i in range(3)]
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    sdk_log = logging.getLogger("stripe")
    handler, level = Keep(level=logging.DEBUG), sdk_log.level
    sdk_log.addHandler(handler)
    sdk_log.setLevel(logging.DEBUG)
    try:
        source = source_for(stripe_sb, retries)
        got = [e["id"] for e in source.events_after(events[0]["id"])]
    finally:
        sdk_log.removeHandler(handler)
        sdk_log.setLevel(level)
    assert got == [e["id"] for e in events[1:]] and type(next(source.events_after(events[0]["id"]))) is dict
    bodies = [m for m in seen if "API response body" in m]
    assert bodies and all("Quiet" not in m and events[1]["id"] not in m for m in bodies)


@pytest.mark.parametrize(("body", "outcome"), [
    ("<html>maintenance</html>", "did not answer usefully"),  # the SDK's APIError, as before
    ('[{"id": "evt_1"}]', "not a JSON object"),
    ('{"data": [], "has_more": false, "x": NaN}', None),  # orjson refuses NaN; the SDK's decoder reads it
])
def test_a_success_body_the_fast_decoder_does_not_take_goes_to_the_sdk(stripe_sb, retries, body, outcome):
    stripe_sb.faults.fail_matching("GET", r"^/v1/events", 200, body)
    source = source_for(stripe_sb, retries)
    if outcome is None:
        assert source.newest_event() is None and source.calls == 1 and gc.isenabled()
        return
    with pytest.raises(FatalSyncError, match=outcome):
        source.newest_event()
    assert source.calls == 1  # a 200 is not retried
    assert gc.isenabled()  # paused while a page is decoded only


def test_parallel_slices_share_one_pacer_per_list_endpoint(retries):
    """Stripe limits each list endpoint on its own (docs.stripe.com/rate-limits, 25/s by default): slices listed
    from several threads stay under it together, so none of their requests meets a 429."""
    from stripe_sf_sync.pipeline.stop import Stop
    from stripe_sf_sync.sources.slices import SliceListing, plan_slices

    with StripeSandbox(endpoint_limit_per_s=5) as sb:
        f = StripeFactory(sb, seed=41)
        price = f.price(1000)
        for i in range(450):
            cus = f.customer(f"C{i}", f"c{i}@example.com", created=NOW - 5000 + i * 10)
            f.subscription(cus["id"], [(price, 1)], created=NOW - 5000 + i * 10)
        client, http = build_client(sb.api_key, api_base=sb.base_url, api_version=API_VERSION_CURRENT, timeout=10)
        source = StripeSource(client, http, api_version=API_VERSION_CURRENT, requests_per_second=100,
                              endpoint_requests_per_second=5, sleep=retries.sleep)
        slices = plan_slices(NOW - 5001, None, NOW, 12)
        before = len(sb.requests_log)
        with SliceListing(source, "subscriptions", slices, workers=4, keep=lambda page: page) as listing:
            ids = [o["id"] for page in listing.pages(Stop()) for o in page.objects]
        assert len(ids) == len(set(ids)) == 450  # every slice listed, each object once
        assert retries.slept == []  # no 429 was met: nothing retried
        assert http.calls == len(sb.requests_log) - before


def test_reads_of_one_object_kind_share_their_endpoint_pacer(retries):
    """GET /v1/customers/{id} for different ids is one endpoint with its own limit (docs.stripe.com/rate-limits):
    a cold start's customer reads stay under it even when the global pace would allow more."""
    with StripeSandbox(endpoint_limit_per_s=5) as sb:
        f = StripeFactory(sb, seed=43)
        ids = [f.customer(f"R{i}", f"r{i}@example.com")["id"] for i in range(12)]
        client, http = build_client(sb.api_key, api_base=sb.base_url, api_version=API_VERSION_CURRENT, timeout=10)
        source = StripeSource(client, http, api_version=API_VERSION_CURRENT, requests_per_second=100,
                              endpoint_requests_per_second=5, sleep=retries.sleep)
        started = time.monotonic()
        assert all(source.customer(c) is not None for c in ids)
        assert retries.slept == []  # no 429 met
        assert http.calls == 12 and time.monotonic() - started >= 1.0  # 12 reads at 4/s (80% of 5) wait


def test_the_stripe_edge_imports_no_layer_above_it():
    """stripe/ is an edge (issue 21): it imports the core's data types and rules, never the pipeline, the sources,
    the service layer or the CLI (each module read as source: nothing is imported to check it)."""
    import ast
    from pathlib import Path

    import stripe_sf_sync.stripe as edge

    above = ("pipeline", "sources", "service", "cli", "serve", "doctor", "backfill", "slices", "reconcile")
    found = []
    for path in sorted(Path(edge.__path__[0]).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):  # `from stripe_sf_sync import cli` names the module in its alias
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            found += [(path.name, n) for n in names
                      if n.startswith("stripe_sf_sync.") and n.split(".")[1] in above]
    assert found == []
