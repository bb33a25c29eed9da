"""The one pacer of Stripe requests: a sliding window per second, rate-aware (a 429 halves it, quiet seconds
raise it again), one for the account and one per endpoint; and which of them a 429 slows."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

import stripe

from stripe_sf_sync.logs import fields

log = logging.getLogger("stripe_sf_sync")

# Each named API operation (`GET /v1/subscriptions`) has its own limit of 25 requests a second, live mode
# included, counted against the account's global one too (docs.stripe.com/rate-limits: "API endpoints have a
# default limit of 25 requests per second"; "Requests to GET /v1/payment_intents/{id} for different
# PaymentIntent IDs count against the same endpoint limit"). Sync's event pages and a cold start's customer
# reads each meet it before the live global limit; backfill lists one endpoint from several threads at once.
ENDPOINT_REQUESTS_PER_SECOND = 25.0

# Stripe's read limits (docs.stripe.com/rate-limits; api-facts.md §3): 25 requests/s in test mode, 100 live.
TEST_MODE_RPS = 25.0
LIVE_MODE_RPS = 100.0
# The share of that limit stripe-sf paces itself to when `stripe.requests_per_second` is unset: the limit is
# the account's, shared with the merchant's own app, the Dashboard and other integrations, so 20% is left
# to them (20/s with a test key, 80/s live).
RATE_LIMIT_SHARE = 0.8
# After a 429 the pace is halved, down to MIN_RPS; then every PROBE_EVERY_S seconds without a 429 it goes up
# by PROBE_STEP, back to where it started (additive increase, multiplicative decrease, as TCP does).
MIN_RPS = 1.0
PROBE_EVERY_S = 5.0
PROBE_STEP = 1.0


def default_requests_per_second(api_key: str) -> float:
    """The pace for a key when the config names none: RATE_LIMIT_SHARE of its mode's limit. A secret or
    restricted test key (sk_test_, rk_test_) is in test mode; any other key is taken as live."""
    test_mode = api_key.startswith(("sk_test_", "rk_test_"))
    return RATE_LIMIT_SHARE * (TEST_MODE_RPS if test_mode else LIVE_MODE_RPS)


class Pacer:
    """At most `per_second` requests in any window of one second (Stripe: 25/s test mode, 100/s live;
    docs.stripe.com/rate-limits). A sliding window rather than a fixed gap: a burst of page reads goes at once, and
    only a sustained rate above the limit waits.

    Rate-aware: `throttled` (a 429) halves the pace, at most once a window so a burst of 429s from requests
    already sent counts as one signal; `succeeded` raises it by PROBE_STEP after each PROBE_EVERY_S seconds
    without a 429, up to the starting pace (the ceiling). Each change is logged at INFO. Thread-safe: one
    Pacer may pace several threads (a slot is reserved under the lock, then slept for outside it).
    """

    def __init__(self, per_second: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.ceiling = per_second
        self.throttles = 0  # 429s met
        self._sent: deque[float] = deque()
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._set_rate(per_second)
        self._changed = clock()  # the last change of pace, or 429
        self._lowered = -math.inf  # the last halving

    @property
    def per_second(self) -> float:
        """The current pace."""
        return self._rate

    def _set_rate(self, per_second: float) -> None:
        self._rate = per_second
        # A fractional rate (0.5/s) becomes one request per 2 s; 2.5/s, two per 0.8 s.
        self._n = max(1, int(per_second))
        self._window = self._n / per_second

    def wait(self) -> None:
        """Sleep until one more request fits in the window, and count it."""
        with self._lock:
            now = self._clock()
            # The n-th most recent request must have left the window (also right after the pace changed).
            at = max(now, self._sent[-self._n] + self._window) if len(self._sent) >= self._n else now
            self._sent.append(at)
            while len(self._sent) > self._n:
                self._sent.popleft()
        if at > now:
            self._sleep(at - now)

    def throttled(self, reason: str = "rate") -> None:
        """Stripe answered 429 (`reason`: its Stripe-Rate-Limited-Reason): halve the pace (at most once a window),
        down to MIN_RPS."""
        with self._lock:
            self.throttles += 1
            now = self._clock()
            self._changed = now  # the probe's quiet seconds start again
            if now - self._lowered < self._window or self._rate <= MIN_RPS:
                return
            old = self._rate
            self._set_rate(max(MIN_RPS, old / 2))
            self._lowered = now
        log.info("Stripe: rate limited (HTTP 429, %s); pacing lowered from %g to %g requests/s", reason, old,
                 self._rate, extra=fields(kind="pacing", edge="stripe", reason="rate_limited", limiter=reason,
                                          old_rps=old, rps=self._rate))

    def succeeded(self) -> None:
        """A request went through: after PROBE_EVERY_S seconds without a 429, raise the pace by PROBE_STEP."""
        with self._lock:
            now = self._clock()
            if self._rate >= self.ceiling or now - self._changed < PROBE_EVERY_S:
                return
            old = self._rate
            self._set_rate(min(self.ceiling, old + PROBE_STEP))
            self._changed = now
        log.info("Stripe: no rate limiting for %g s; pacing raised from %g to %g requests/s", PROBE_EVERY_S, old,
                 self._rate, extra=fields(kind="pacing", edge="stripe", reason="probe", old_rps=old, rps=self._rate))

# Stripe-Rate-Limited-Reason (docs.stripe.com/rate-limits): which limiter refused a request. A 429 without it
# is not a rate limit (for example `lock_timeout` on an object being updated): retried, the pace left alone.
GLOBAL_REASONS = frozenset({"global-rate", "global-concurrency"})
ENDPOINT_REASONS = frozenset({"endpoint-rate", "endpoint-concurrency", "resource-specific"})


def rate_limited_reason(exc: stripe.StripeError) -> str | None:
    """The Stripe-Rate-Limited-Reason of a 429, lower case, or None when Stripe sent none."""
    value = {str(k).lower(): v for k, v in (exc.headers or {}).items()}.get("stripe-rate-limited-reason")
    reason = str(value or "").strip().lower()
    return reason or None


def paces_to_slow(exc: stripe.RateLimitError, paces: tuple[Pacer, Pacer]) -> tuple[Pacer, ...]:
    """The pacers a 429 slows: the global one for a global limit, the endpoint's for its own (or a resource's),
    both for a reason not known here, none without a reason (no rate limit: lock_timeout and the like)."""
    reason = rate_limited_reason(exc)
    if reason is None or getattr(exc, "code", None) == "lock_timeout":
        log.info("Stripe: HTTP 429 %s without Stripe-Rate-Limited-Reason: not a rate limit; retried at the same "
                 "pace", getattr(exc, "code", None) or "error",
                 extra=fields(kind="pacing", edge="stripe", reason="not_a_limit"))
        return ()
    if reason in GLOBAL_REASONS:
        return paces[:1]
    if reason in ENDPOINT_REASONS:
        return paces[1:]
    return paces
