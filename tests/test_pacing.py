"""Stripe pacing that knows the account's limits (issue 14, part 2): a default from the key's mode, halved on a
429 and probed back up, and the 429s a run met in its summary."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import pytest

from stripe_sf_sandbox.demo import sandbox_environment
from stripe_sf_sandbox.salesforce_server import SalesforceSandbox
from stripe_sf_sandbox.scenario import awkward_org
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync import service
from stripe_sf_sync.config import StripeSettings
from stripe_sf_sync.stripe.source import (
    MIN_RPS,
    PROBE_EVERY_S,
    RATE_LIMIT_SHARE,
    Pacer,
    default_requests_per_second,
)

from .conftest import write_config
from .test_hydration import FakeTime


@pytest.mark.parametrize(("key", "rps"), [("sk_test_abc", 20.0), ("rk_test_abc", 20.0), ("sk_live_abc", 80.0),
                                          ("rk_live_abc", 80.0)])
def test_the_default_pace_is_eighty_percent_of_the_key_mode_s_limit(key, rps):
    assert RATE_LIMIT_SHARE == 0.8
    assert default_requests_per_second(key) == rps


def test_the_config_leaves_the_pace_unset_by_default_and_still_bounds_an_override():
    assert StripeSettings().requests_per_second is None
    assert StripeSettings(requests_per_second=100).requests_per_second == 100
    # An account whose limits Stripe raised may go faster (docs.stripe.com/rate-limits), up to a sane bound.
    assert StripeSettings(requests_per_second=400, endpoint_requests_per_second=100).endpoint_requests_per_second == 100
    with pytest.raises(ValueError):
        StripeSettings(requests_per_second=1001)
    with pytest.raises(ValueError):
        StripeSettings(endpoint_requests_per_second=0)


def test_a_429_halves_the_pace_once_a_window_then_it_climbs_back_to_the_ceiling(caplog):
    t = FakeTime()
    pacer = Pacer(20, clock=t.clock, sleep=t.sleep)
    with caplog.at_level(logging.INFO, logger="stripe_sf_sync"):
        pacer.throttled()
        assert pacer.per_second == 10
        pacer.throttled()  # a second 429 of requests sent at the old pace: one signal, counted
        assert pacer.per_second == 10 and pacer.throttles == 2
        t.now += 1.0
        pacer.throttled()
        assert pacer.per_second == 5
        t.now += PROBE_EVERY_S - 0.1
        pacer.succeeded()
        assert pacer.per_second == 5  # not yet five quiet seconds
        t.now += 0.1
        pacer.succeeded()
        assert pacer.per_second == 6
        for _ in range(40):
            t.now += PROBE_EVERY_S
            pacer.succeeded()
        assert pacer.per_second == 20  # never above where it started
    assert "pacing lowered from 20 to 10 requests/s" in caplog.text
    assert "pacing lowered from 10 to 5 requests/s" in caplog.text
    assert "pacing raised from 5 to 6 requests/s" in caplog.text
    assert sum("pacing" in r.getMessage() for r in caplog.records) == 2 + 15  # each change logged once


def test_the_pace_never_falls_below_the_floor_and_a_lower_pace_spaces_requests():
    t = FakeTime()
    pacer = Pacer(4, clock=t.clock, sleep=t.sleep)
    for _ in range(6):
        pacer.throttled()
        t.now += 2.0
    assert pacer.per_second == MIN_RPS == 1.0
    start = t.now
    for _ in range(4):
        pacer.wait()
    assert t.now - start == 3.0  # one a second


def test_one_pacer_shared_by_threads_never_lets_more_than_its_pace_through_in_a_second():
    """Time stands still (the fake clock), so every slot a thread is given shows up as its sleep: 20 per
    second, whatever the interleaving."""
    t = FakeTime()
    lock = threading.Lock()
    slots: list[float] = []

    def sleep(s: float) -> None:
        with lock:
            slots.append(round(s, 6))

    pacer = Pacer(20, clock=t.clock, sleep=sleep)

    def work() -> None:
        for _ in range(25):
            pacer.wait()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert Counter(slots) == {1.0: 20, 2.0: 20, 3.0: 20, 4.0: 20}  # and 20 at once, without a sleep


def test_a_run_that_meets_429s_slows_down_applies_everything_and_reports_them(tmp_path, caplog):
    """The stand-in answers real 429s (`rate_limit`, as Stripe does) above 5 requests a second; the config asks
    for 100. The run halves its pace on the first 429, retries, applies every event and counts the 429s."""
    with StripeSandbox(rate_limit_per_s=5) as stripe_sb, SalesforceSandbox(awkward_org()) as sf_sb:
        org = sf_sb.org
        f = StripeFactory(stripe_sb, seed=71)
        t = int(time.time()) - 2 * 86400
        price = f.price(1000)
        for i in range(8):
            cus = f.customer(f"Busy {i}", f"b{i}@example.com", created=t - 90 * 86400)
            org.insert("Account", {"Name": f"Busy {i}", "Stripe_Customer_ID__c": cus["id"]})
            sub = f.subscription(cus["id"], [(price, 1)], status="active", created=t + i)
            f.subscription_created(sub, t + i)
        env = sandbox_environment(stripe_sb, sf_sb)
        config = write_config(tmp_path / "sync.yaml", **{"requests_per_second: null": "requests_per_second: 100"})
        time.sleep(1.0)  # discovery's own requests leave the stand-in's bucket full again
        service.run_discover(config, env, write=True, example=config.read_text())
        time.sleep(1.0)
        with caplog.at_level(logging.INFO, logger="stripe_sf_sync"):
            summary = service.run_sync(config, env, since=time.strftime("%Y-%m-%d", time.gmtime(t - 86400)),
                                       dry_run=False, max_events=None)
    assert (summary.applied, summary.dead_lettered) == (8, 0)
    assert summary.stripe_rate_limited >= 1 and summary.as_dict()["stripe_rate_limited"] >= 1
    assert "pacing lowered from 100 to 50 requests/s" in caplog.text


def test_the_429s_are_in_the_printed_summary_and_the_metrics_file(tmp_path, capsys):
    from prometheus_client.parser import text_string_to_metric_families

    from stripe_sf_sync import render
    from stripe_sf_sync.metrics import RunFigures, write_metrics
    from stripe_sf_sync.pipeline.run import RunSummary

    summary = RunSummary("sync", events_read=10, stripe_calls=14, stripe_rate_limited=3)
    render.print_human_summary(summary)
    assert "Stripe rate-limited 3 times (HTTP 429; pacing lowered)" in capsys.readouterr().out
    prom = tmp_path / "stripe_sf.prom"
    write_metrics(prom, RunFigures("sync", 0, time.time(), summary.as_dict(), 0, None, None, None))
    samples = {s.name: s.value for fam in text_string_to_metric_families(prom.read_text()) for s in fam.samples}
    assert samples["stripe_sf_last_run_stripe_rate_limited"] == 3


RATE_LIMIT_BODY = {"error": {"type": "invalid_request_error", "code": "rate_limit",
                             "message": "Too many requests hit the API too quickly."}}
LOCK_TIMEOUT_BODY = {"error": {"type": "invalid_request_error", "code": "lock_timeout",
                               "message": "This object cannot be accessed right now because another API request or "
                                          "Stripe process is currently accessing it."}}


def paced_source(stripe_sb: StripeSandbox, **kw: float):
    from stripe_sf_sandbox.stripe_factory import API_VERSION_CURRENT
    from stripe_sf_sync.stripe.source import StripeSource, build_client

    client, http = build_client(stripe_sb.api_key, api_base=stripe_sb.base_url, api_version=API_VERSION_CURRENT,
                                timeout=5)
    return StripeSource(client, http, api_version=API_VERSION_CURRENT, sleep=lambda s: None, **kw)


def paces(source) -> tuple[float, float]:
    """(global pace, the pace of GET /v1/events)."""
    return source._pacer.per_second, source.client.endpoint_pacer("/v1/events").per_second


@pytest.mark.parametrize(("headers", "body", "after", "counted"), [
    # Which limiter refused is in Stripe-Rate-Limited-Reason (docs.stripe.com/rate-limits): only its pace halves.
    ({"Stripe-Rate-Limited-Reason": "global-rate"}, RATE_LIMIT_BODY, (40.0, 20.0), 2),
    ({"Stripe-Rate-Limited-Reason": "global-concurrency"}, RATE_LIMIT_BODY, (40.0, 20.0), 2),
    ({"Stripe-Rate-Limited-Reason": "endpoint-rate"}, RATE_LIMIT_BODY, (80.0, 10.0), 2),
    ({"stripe-rate-limited-reason": "Endpoint-Concurrency"}, RATE_LIMIT_BODY, (80.0, 10.0), 2),
    ({"Stripe-Rate-Limited-Reason": "some-new-limiter"}, RATE_LIMIT_BODY, (40.0, 10.0), 2),
    # A 429 without a reason is no rate limit (a lock timeout on an object being updated): retried, same pace.
    ({}, LOCK_TIMEOUT_BODY, (80.0, 20.0), 0),
    ({}, RATE_LIMIT_BODY, (80.0, 20.0), 0),
])
def test_a_429_slows_only_the_limit_stripe_names_and_one_without_a_reason_none(stripe_sb, headers, body, after,
                                                                             counted):
    source = paced_source(stripe_sb, requests_per_second=80)
    assert paces(source) == (80.0, 20.0)
    stripe_sb.faults.fail_matching("GET", r"^/v1/events", 429, body, headers=headers, times=2)
    assert source.newest_event() is None  # retried until it went through
    assert source.calls == 3
    assert paces(source) == after  # halved once: the second 429 came within the same window
    assert source.rate_limited == counted


def test_the_stand_in_says_which_of_its_limits_refused(stripe_sb):
    import requests

    with StripeSandbox(rate_limit_per_s=2) as sb:
        got = [requests.get(f"{sb.base_url}/v1/events", headers={"Authorization": f"Bearer {sb.api_key}"}, timeout=5)
               for _ in range(4)]
    limited = [r for r in got if r.status_code == 429]
    assert limited and all(r.headers["Stripe-Rate-Limited-Reason"] == "global-rate" for r in limited)
    assert limited[0].json()["error"]["code"] == "rate_limit"


def test_raised_limits_can_be_configured_per_endpoint(stripe_sb):
    assert paces(paced_source(stripe_sb, requests_per_second=400)) == (400.0, 20.0)  # 80% of 25 by default
    assert paces(paced_source(stripe_sb, requests_per_second=400, endpoint_requests_per_second=150)) == (400.0,
                                                                                                         150.0)
    assert paces(paced_source(stripe_sb, requests_per_second=10, endpoint_requests_per_second=150)) == (10.0, 10.0)
