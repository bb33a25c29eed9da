"""Stripe edge: events since the cursor (oldest first), hydration with a per-run cache.

Only this module talks to Stripe. It takes an injected `stripe.StripeClient`. Every request goes through
`StripeSource._get` (pacing and the one retry policy) and every list through `StripeSource._walk` (the
one pager).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
import stripe
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from stripe_sf_sync import gc_pause
from stripe_sf_sync.deadline import Deadline
from stripe_sf_sync.errors import (
    CursorExpiredError,
    FatalSyncError,
    StripeRefusedError,
    certificate_problem,
    connection_problem,
    tls_error,
    unreachable_error,
)
from stripe_sf_sync.logs import fields
from stripe_sf_sync.model import EVENT_TYPES, CachedCustomer

log = logging.getLogger("stripe_sf_sync")

# Stripe lists events of the last 30 days only, and `types[]` takes at most 20 names
# (Stripe API reference: List all events).
RETENTION_S = 30 * 86400
TYPES_PER_REQUEST = 20
PAGE_LIMIT = 100
BASIL = "2025-03-31"
# A request is tried at most this many times, with a random wait before each retry of up to 0.5 s, 1 s,
# 2 s, 4 s, then 8 s (exponential backoff with full jitter). The SDK's own retries are off
# (build_client), so nothing multiplies it.
MAX_ATTEMPTS = 6
RETRY_LATER_HINT = "Retry later; if it persists, report it with --debug output."
# Late attaches (see StripeSource._late_attachments): links kept for a run at most, and how stale the kept
# listing may get before what was created since is listed too.
MAX_ATTACHED = 100_000
ATTACHED_REFRESH_S = 300
# Unknown customers of a batch, from this many on, are looked for in the customer list (100 a call, newest
# first) before any is read on its own. Below it, reading each costs at most a few calls, which a listing
# that finds none of them could double (see StripeSource.prefetch_customers).
CUSTOMER_LIST_FROM = 10
# Prices read for their currency_options are kept for the whole run (an account has few Prices); the
# bound only guards memory against an unusual account, dropping the oldest entry first.
MAX_CACHED_PRICES = 10_000
# Each named API operation (`GET /v1/subscriptions`) has its own limit of 25 requests a second, live mode
# included, counted against the account's global one too (docs.stripe.com/rate-limits: "API endpoints have a
# default limit of 25 requests per second"; "Requests to GET /v1/payment_intents/{id} for different
# PaymentIntent IDs count against the same endpoint limit"). Sync's event pages and a cold start's customer
# reads each meet it before the live global limit; backfill lists one endpoint from several threads at once.
ENDPOINT_REQUESTS_PER_SECOND = 25.0


class CountingRequestsClient(stripe.RequestsClient):
    """The SDK's requests client, counting real HTTP requests and logging each at debug.

    It also decodes the JSON objects `StripeSource._get` asks for (`decode_next`), once, with orjson. The SDK's
    `raw_request` would decode every body again into OrderedDicts (stripe/_stripe_response.py) and format it
    for its debug log even when that is off (stripe/_api_requestor.py `request_raw`, "API response body"):
    profiled, three quarters of reading a page. So a success body decoded here reaches the SDK as `{}`. An
    error body, or one orjson cannot read, reaches the SDK as sent: it still raises its typed errors.

    Thread-safe: the count is locked, and each thread gets its own session from `session_factory` (the SDK
    keeps one session per thread, `RequestsClient._thread_local`, but shares a session passed in to every
    thread; stripe/_http_client.py `_request_internal`).
    """

    def __init__(self, *args: Any, session_factory: Callable[[], requests.Session] | None = None,
                 **kwargs: Any) -> None:
        self._attempt = threading.local()  # this thread's time left for the request at hand (`limit_attempt`)
        super().__init__(*args, **kwargs)
        self.calls = 0
        self._count_lock = threading.Lock()
        self._session_factory = session_factory
        # Per thread: a request and its decoding happen on the thread that called `_get`.
        self._decoding = threading.local()

    # The SDK reads `self._timeout` for every request (stripe/_http_client.py, RequestsClient._request_internal):
    # a property lets `limit_attempt` shorten this thread's next attempt to what is left of the request's time.
    @property  # type: ignore[override]
    def _timeout(self) -> float | None:
        left = getattr(self._attempt, "left", None)
        return self.timeout if left is None or self.timeout is None else min(self.timeout, left)

    @_timeout.setter
    def _timeout(self, value: float | None) -> None:
        self.timeout = value

    def limit_attempt(self, seconds: float | None) -> None:
        """The most this thread's next attempts may take (None: the configured timeout)."""
        self._attempt.left = seconds

    def decode_next(self) -> None:
        """Decode the next success body on this thread here, for `take_decoded`."""
        self._decoding.wanted, self._decoding.value = True, None

    def take_decoded(self) -> dict[str, Any] | None:
        """The object `decode_next` asked for, or None when the SDK had the body (an error, not an object)."""
        value, self._decoding.wanted, self._decoding.value = getattr(self._decoding, "value", None), False, None
        return value

    # The SDK's own RequestsClient.request has this signature (bytes, no `_usage`), at odds with HTTPClient's.
    def request(self, method: str, url: str, headers: Mapping[str, str] | None,  # type: ignore[override]
                post_data: Any = None) -> tuple[bytes, int, Mapping[str, str]]:
        with self._count_lock:
            self.calls += 1
        if self._session_factory is not None and getattr(self._thread_local, "session", None) is None:
            self._thread_local.session = self._session_factory()
        started = time.monotonic()
        status: int | None = None
        request_id: str | None = None
        try:
            body, status, rheaders = super().request(method, url, headers, post_data)
            request_id = rheaders.get("Request-Id")
            if 200 <= status < 300 and getattr(self._decoding, "wanted", False):
                body = self._decode(body)
            return body, status, rheaders
        finally:
            _log_call(method, url, status, time.monotonic() - started, request_id)

    def _decode(self, body: bytes) -> bytes:
        """Keep the decoded object and give the SDK `{}`; or the body itself when it is not a JSON object."""
        try:
            with gc_pause.paused():  # a page is some 30,000 new objects and no cycle
                value = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body  # the SDK decodes it as before (NaN, integers past 64 bits) or raises its APIError
        if not isinstance(value, dict):
            return body
        self._decoding.value = value
        return b"{}"


def _log_call(method: str, url: str, status: int | None, seconds: float, request_id: str | None) -> None:
    """One debug line per HTTP request: method, path, status, duration and Stripe's request id. Never the
    query string (list filters, customer ids), a header (the API key) or a body (customer data)."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    path = urlsplit(url).path
    log.debug("Stripe: %s %s -> %s in %.0f ms%s", method.upper(), path, status or "no response", seconds * 1000,
              f" (request {request_id})" if request_id else "",
              extra=fields(kind="api_call", edge="stripe", method=method.upper(), path=path, status=status,
                           duration_ms=round(seconds * 1000, 1), request_id=request_id))


class CaBundleSession(requests.Session):
    """A session that verifies Stripe's certificate against `ca_bundle` (REQUESTS_CA_BUNDLE). The SDK passes its
    own bundled CAs as `verify=` on every request (stripe/_http_client.py, `RequestsClient._request_internal`),
    and an explicit `verify` makes requests ignore REQUESTS_CA_BUNDLE: behind a TLS-inspecting proxy the
    variable would work for Salesforce and not for Stripe."""

    def __init__(self, ca_bundle: str) -> None:
        super().__init__()
        self.ca_bundle = ca_bundle

    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("verify") is not False:  # verification is never switched off; only its CAs change
            kwargs["verify"] = self.ca_bundle
        return super().request(method, url, *args, **kwargs)


def build_client(api_key: str, *, api_base: str | None, api_version: str, timeout: float,
                 ca_bundle: str | None = None) -> tuple[stripe.StripeClient, CountingRequestsClient]:
    """A StripeClient pinned to `api_version`, with a counting HTTP client and no retries of its own:
    StripeSource retries (its `_get`), so that a request is tried a known number of times. `ca_bundle`
    (REQUESTS_CA_BUNDLE) replaces the SDK's bundled CAs."""
    http = CountingRequestsClient(timeout=timeout,
                                  session_factory=(lambda: CaBundleSession(ca_bundle)) if ca_bundle else None)
    kwargs: dict[str, Any] = {"stripe_version": api_version, "max_network_retries": 0, "http_client": http}
    if api_base:
        kwargs["base_addresses"] = {"api": api_base}
    return stripe.StripeClient(api_key, **kwargs), http


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


def _refused(exc: stripe.InvalidRequestError, what: str, path: str | None = None) -> StripeRefusedError:
    """A 400 Stripe answered as `invalid_request_error`: which request, Stripe's own message (it names the
    parameter and never echoes secrets: Stripe API reference, Errors) and its request id."""
    rid = getattr(exc, "request_id", None)
    code = getattr(exc, "code", None)
    error = exc.json_body.get("error") if isinstance(exc.json_body, dict) else None
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or getattr(exc, "user_message", None) or "no message").strip().rstrip(".")
    request = f"GET {path}" if path else "a request"
    status = f"HTTP {getattr(exc, 'http_status', None) or 400}{' ' + code if code else ''}"
    detail = ", ".join(part for part in (status, f"parameter {error['param']}" if error.get("param") else None,
                                         f"request {rid}" if rid else None) if part)
    return StripeRefusedError(
        f"Stripe refused {request} while {what}: {message} ({detail}).", stripe_message=message, code=code,
        request_id=rid,
        hint="Sending it again would be refused again. Check stripe.api_version in sync.yaml and the command's "
             "options; if they are right, report this with the request id. Nothing of this batch was written.")


def _fatal(exc: stripe.StripeError, what: str, path: str | None = None, *, attempts: int = 1,
           seconds: float = 0.0, timeout: float | None = None) -> FatalSyncError:
    if isinstance(exc, stripe.InvalidRequestError) and _retry_reason(exc) is None:  # not retried: refused
        return _refused(exc, what, path)
    rid = getattr(exc, "request_id", None)
    code = getattr(exc, "code", None)
    status = getattr(exc, "http_status", None)
    ref = f" (request {rid})" if rid else ""
    problem = certificate_problem(exc) if isinstance(exc, stripe.APIConnectionError) else None
    if problem is not None:
        return tls_error("Stripe", what, problem)
    reached = connection_problem(exc) if isinstance(exc, stripe.APIConnectionError) else None
    if reached is not None:
        return unreachable_error("Stripe", f"while {what}", reached, attempts=attempts, seconds=seconds,
                                 timeout=timeout, address_setting="STRIPE_API_BASE, or api.stripe.com",
                                 timeout_setting="stripe.timeout_seconds")
    if isinstance(exc, stripe.AuthenticationError):
        return FatalSyncError(f"Stripe rejected the API key while {what}{ref}.", code=code, request_id=rid,
                              hint="Check STRIPE_API_KEY: it may be revoked, or a live/test mismatch.")
    if isinstance(exc, stripe.PermissionError):
        return FatalSyncError(f"Stripe refused access while {what}{ref}.", code=code, request_id=rid,
                              hint="Give the restricted key read access to events, customers, "
                                   "subscriptions, invoices and payment intents.")
    return FatalSyncError(f"Stripe did not answer usefully while {what}: HTTP {status or 'no response'} "
                          f"{code or type(exc).__name__}{ref}, after retries.", code=code, request_id=rid,
                          hint="Nothing was lost: the next run resumes from the saved cursor.")


def _retry_reason(exc: BaseException) -> str | None:
    """Why a failed request deserves another attempt, in a few words, or None when it does not.

    The SDK's rule (stripe/_http_client.py `_should_retry`): a connection error or timeout the SDK marks
    retriable, a 409, a 5xx, or `Stripe-Should-Retry: true`; never when that header is "false". Plus a 429,
    which the SDK does not retry: Stripe asks clients to back off and retry it (docs.stripe.com/rate-limits).
    """
    if isinstance(exc, stripe.APIConnectionError):
        if certificate_problem(exc) is not None:  # an untrusted certificate does not clear by itself
            return None
        if not getattr(exc, "should_retry", False):
            return None
        problem = connection_problem(exc)
        return f"no response ({problem.describe()})" if problem else "no response (connection error or timeout)"
    if not isinstance(exc, stripe.StripeError):
        return None
    status = exc.http_status or 0
    error = exc.json_body.get("error") if isinstance(exc.json_body, dict) else None
    code = (error.get("code") or error.get("type")) if isinstance(error, dict) else None
    reason = f"HTTP {status or 'error'} {code or type(exc).__name__}"  # Stripe's error code, never the message
    if isinstance(exc, stripe.RateLimitError):
        return reason
    should_retry = {str(k).lower(): v for k, v in (exc.headers or {}).items()}.get("stripe-should-retry")
    if should_retry == "false":
        return None
    return reason if should_retry == "true" or status == 409 or status >= 500 else None


# Stripe-Rate-Limited-Reason (docs.stripe.com/rate-limits): which limiter refused a request. A 429 without it
# is not a rate limit (for example `lock_timeout` on an object being updated): retried, the pace left alone.
GLOBAL_REASONS = frozenset({"global-rate", "global-concurrency"})
ENDPOINT_REASONS = frozenset({"endpoint-rate", "endpoint-concurrency", "resource-specific"})


def rate_limited_reason(exc: stripe.StripeError) -> str | None:
    """The Stripe-Rate-Limited-Reason of a 429, lower case, or None when Stripe sent none."""
    value = {str(k).lower(): v for k, v in (exc.headers or {}).items()}.get("stripe-rate-limited-reason")
    reason = str(value or "").strip().lower()
    return reason or None


def _paces_to_slow(exc: stripe.RateLimitError, paces: tuple[Pacer, Pacer]) -> tuple[Pacer, ...]:
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


def _log_retry(state: RetryCallState, path: str, attempts: int) -> None:
    """One warning per retry: the reason, the request and the attempt (never a body or a secret)."""
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    reason = _retry_reason(exc) if exc is not None else "error"
    log.warning("Stripe: %s on GET %s; retrying (attempt %d of %d) in %.1f s",
                reason, path, state.attempt_number + 1, attempts, wait,
                extra=fields(kind="retry", edge="stripe", reason=reason, method="GET", path=path,
                             attempt=state.attempt_number + 1, max_attempts=attempts, wait_s=round(wait, 2),
                             code=getattr(exc, "code", None), status=getattr(exc, "http_status", None)))


def _unknown_cursor(exc: stripe.InvalidRequestError, cursor_id: str) -> Exception:
    """What a 400/404 while listing events after `cursor_id` means."""
    if getattr(exc, "code", None) == "resource_missing":
        return CursorExpiredError(
            f"Stripe no longer knows the saved cursor event {cursor_id}: it is past the 30-day event retention "
            "or from another account.",
            hint="Run `stripe-sf backfill --since DATE` (the date of your last good sync), then `stripe-sf sync`.")
    return _fatal(exc, "listing events")


class _PageGuard:
    """Stops a listing whose pages do not move on (meltano's paginator refuses a repeated page token): a
    page repeating the last one, or going back in time, would loop forever. It keeps the last page's ids
    and the furthest `created` reached only, so memory stays flat over a run of millions of objects."""

    def __init__(self, kind: str, *, newer: bool, hint: str) -> None:
        self._kind = kind
        self._newer = newer
        self._hint = hint
        self._last: set[Any] = set()
        self._reached: int | None = None

    def check(self, data: list[dict[str, Any]]) -> None:
        """Raise if `data` (a page, newest first) repeats or goes behind what was read; then remember it."""
        times = [o["created"] for o in data if isinstance(o.get("created"), int)]
        behind = bool(times) and self._reached is not None and (
            min(times) < self._reached if self._newer else max(times) > self._reached)
        if behind or data[0].get("id") in self._last or data[-1].get("id") in self._last:
            raise FatalSyncError(f"Stripe returned the same page of {self._kind} twice.", hint=self._hint)
        self._last = {o.get("id") for o in data}
        if times:  # a page that passed is at or beyond the furthest time reached
            self._reached = max(times) if self._newer else min(times)


class StripeSource:
    """Reads events and the objects they point to."""


    def __init__(self, client: stripe.StripeClient, http: CountingRequestsClient | None = None, *,
                 api_version: str, requests_per_second: float = 20.0, max_attempts: int = MAX_ATTEMPTS,
                 clock: Any = time.time, sleep: Any = time.sleep,
                 endpoint_requests_per_second: float | None = None) -> None:
        self._client = client
        self._http = http
        self._api_version = api_version
        self._pacer = Pacer(requests_per_second)
        # Every endpoint (a named API operation) has a pacer of its own besides the global one; backfill's
        # listing threads share them (the Pacer is thread-safe). The lock guards the pacers' table and the count.
        self._pace_lock = threading.Lock()
        self._endpoint_pacers: dict[str, Pacer] = {}
        self._rate_limited = 0
        # The same share of the endpoint's default limit as of the global one: the account's own app calls these
        # too. A pace configured (stripe.endpoint_requests_per_second, for raised limits) is used as it is.
        endpoint_rate = endpoint_requests_per_second or ENDPOINT_REQUESTS_PER_SECOND * RATE_LIMIT_SHARE
        self._endpoint_rate = min(requests_per_second, endpoint_rate)
        self._max_attempts = max_attempts
        self._clock = clock
        self._sleep = sleep
        self._customers: dict[str, CachedCustomer] = {}
        self._fresh_customers: list[str] = []  # read from Stripe this run, not yet kept in state
        self._invoice_of_pi: dict[str, str | None] = {}
        self._payments_of_invoice: dict[str, list[dict[str, Any]]] = {}
        # Run-level: PaymentIntent -> invoice for the PaymentIntent payments listed in _attached_span.
        self._attached: dict[str, str] = {}
        self._attached_span: tuple[int, int] | None = None
        # price id -> {currency: {unit_amount, unit_amount_decimal}}, None for a Price Stripe no longer has.
        self._price_options: dict[str, dict[str, dict[str, Any]] | None] = {}
        # Coupons and expanded Prices for MRR (mrr.py): their amounts, currency and duration cannot change
        # (pkg `_coupon.py` update: "by design, not editable"; a Price's amounts likewise), so kept for the run.
        self._coupons: dict[str, dict[str, Any] | None] = {}
        # Discounts by id: what one says (its coupon, start and end) never changes; removed, it leaves the lists.
        self._discounts: dict[str, dict[str, Any]] = {}
        self._prices: dict[str, dict[str, Any] | None] = {}
        # Run-level: where the customer listing stopped (its `created` bound and last id), and whether it ended.
        self._customer_list: tuple[int, str | None] | None = None
        self._customer_list_ended = False
        self.calls_made = 0
        # The last response's headers, by lower-case name (`stripe-version`: the version Stripe answered in).
        self.last_headers: dict[str, str] = {}

    def pace_as(self, other: StripeSource) -> None:
        """Share `other`'s pacers (the global one and each endpoint's): a long-lived process (`serve`) builds
        a source per run, and paces them all as the one client Stripe sees, its 429s remembered."""
        self._pacer, self._endpoint_pacers, self._pace_lock = other._pacer, other._endpoint_pacers, other._pace_lock

    @property
    def api_version(self) -> str:
        """The Stripe API version requests are made with (it decides the payload shapes)."""
        return self._api_version

    @property
    def rate_limited(self) -> int:
        """Rate-limit 429s Stripe answered this run (each retried; see Pacer for what they do to the pace). A 429
        without Stripe-Rate-Limited-Reason is no rate limit and is not counted."""
        return self._rate_limited

    @property
    def calls(self) -> int:
        """HTTP requests made to Stripe, every retry included (each attempt is one request)."""
        return self._http.calls if self._http is not None else self.calls_made

    def _get(self, what: str, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET a Stripe path and return the JSON Stripe sent: paced, and tried at most `max_attempts` times.

        The one retry policy of this edge (see `_retry_reason`); the SDK's own retries are off
        (`build_client`), so an attempt is one HTTP request. An InvalidRequestError (a 400 or 404) goes
        to the caller, which knows whether a missing object matters; anything else that is not
        retried, or still fails on the last attempt, is fatal. `raw_request` skips the SDK's
        StripeObject construction, which profiling showed to be three quarters of a backfill's time for
        pages we only read as plain dicts (the rules take dicts); and the body is decoded once, by the HTTP
        client (`CountingRequestsClient`), not again by the SDK.
        """
        paces = (self._pacer, self._endpoint_pacer(_endpoint_of(path)))

        def attempt() -> tuple[Any, dict[str, Any] | None]:
            for pacer in paces:
                pacer.wait()
            with self._pace_lock:
                self.calls_made += 1
            if self._http is not None:
                self._http.decode_next()
            try:
                resp = self._client.raw_request("get", path, **(params or {}))
            except stripe.RateLimitError as exc:
                slowed = _paces_to_slow(exc, paces)
                with self._pace_lock:
                    self._rate_limited += bool(slowed)
                for pacer in slowed:
                    pacer.throttled(rate_limited_reason(exc) or "rate")
                raise
            finally:
                decoded = self._http.take_decoded() if self._http is not None else None
            for pacer in paces:
                pacer.succeeded()
            return resp, decoded

        # The whole request, its retries and their waits included, ends within stripe.timeout_seconds (see
        # deadline.py): a stall is tried again within that time, and a server that accepts the connection and
        # never answers fails when it is up, not after MAX_ATTEMPTS full timeouts.
        total = self._http.timeout if self._http is not None else None
        deadline = Deadline(total) if total else None

        def limited() -> tuple[Any, dict[str, Any] | None]:
            if self._http is not None and deadline is not None:
                self._http.limit_attempt(deadline.attempt_timeout())
            return attempt()

        wait = wait_random_exponential(multiplier=0.5, max=8)
        retrying = Retrying(
            retry=retry_if_exception(lambda exc: _retry_reason(exc) is not None),
            wait=deadline.wait(wait) if deadline else wait,
            stop=deadline.stop(self._max_attempts) if deadline else stop_after_attempt(self._max_attempts),
            sleep=self._sleep, before_sleep=lambda state: _log_retry(state, path, self._max_attempts),
            reraise=True)
        started = time.monotonic()
        try:
            resp, decoded = retrying(limited)
        except stripe.InvalidRequestError:
            raise
        except stripe.StripeError as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise _fatal(exc, what, attempts=attempts, seconds=time.monotonic() - started, timeout=total) from None
        finally:
            if self._http is not None:
                self._http.limit_attempt(None)
        data = decoded if decoded is not None else getattr(resp, "data", None)
        if not isinstance(data, dict):
            raise FatalSyncError(f"Stripe sent a response that is not a JSON object while {what}.",
                                 hint=RETRY_LATER_HINT)
        self.last_headers = {str(k).lower(): str(v) for k, v in (getattr(resp, "headers", None) or {}).items()}
        return data

    def _get_or_none(self, what: str, path: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """`_get` of one object, None when Stripe no longer has it (`resource_missing`)."""
        try:
            return self._get(what, path, params)
        except stripe.InvalidRequestError as exc:
            if getattr(exc, "code", None) != "resource_missing":
                raise _fatal(exc, what) from None
            return None

    def _walk(self, kind: str, path: str, params: dict[str, Any], *, start: str | None = None,
              newer: bool = False, invalid: Callable[[stripe.InvalidRequestError], Exception] | None = None,
              hint: str = RETRY_LATER_HINT) -> Iterator[list[dict[str, Any]]]:
        """The one pager: the pages of a Stripe list, each as Stripe sends it (newest first).

        Stripe lists newest first and takes one ID cursor per request (Stripe API reference: Pagination).
        By default the walk goes back in time with `starting_after` = the page's last (oldest) id, from
        the newest object or the one just older than `start`. With `newer`, it goes towards now with
        `ending_before` = the page's first (newest) id, from the page just newer than `start`, as the
        SDK's `auto_paging_iter` does (stripe/_list_object.py). It stops on an empty page or
        `has_more: false`, and refuses a page that does not move on (`_PageGuard`). A 400/404 goes to
        `invalid`, which returns the error to raise, or to the caller without it.
        """
        key = "ending_before" if newer else "starting_after"
        guard = _PageGuard(kind, newer=newer, hint=hint)
        cursor = start
        while True:
            try:
                page = self._get(f"listing {kind}", path, {**params, key: cursor} if cursor else params)
            except stripe.InvalidRequestError as exc:
                if invalid is None:  # a list call Stripe refused: say which and why, never a traceback
                    raise _fatal(exc, f"listing {kind}", path) from None
                raise invalid(exc) from None
            data = _raw_list(page)
            if not data:
                return
            guard.check(data)
            yield data
            if not _has_more(page):
                return
            cursor = data[0]["id"] if newer else data[-1]["id"]

    def _first_page(self, kind: str, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The newest page of a list (one request): a `limit: 1` read answers a single question."""
        return next(self._walk(kind, path, params), [])

    # --- events -----------------------------------------------------------------------------
    def check_cursor_age(self, cursor_created: int) -> None:
        """Refuse a cursor whose event Stripe no longer lists."""
        if cursor_created < self._clock() - RETENTION_S:
            since = time.strftime("%Y-%m-%d", time.gmtime(cursor_created))
            raise CursorExpiredError(
                f"The saved cursor is from {since}, past Stripe's 30-day event retention, so events after "
                "it can no longer be listed.",
                hint=f"Run `stripe-sf backfill --since {since}` to rebuild from Stripe's lists, then "
                     "`stripe-sf sync`.")

    def events_after(self, cursor_id: str, types: Sequence[str] = EVENT_TYPES,
                     page_limit: int = PAGE_LIMIT) -> Iterator[dict[str, Any]]:
        """Every event newer than `cursor_id`, oldest first, one page at a time (each page reversed)."""
        chunks = [list(types[i:i + TYPES_PER_REQUEST]) for i in range(0, len(types), TYPES_PER_REQUEST)]
        if len(chunks) > 1:
            # Separate listings cannot share one cursor position safely; only 8 types are used today.
            raise ValueError("more than 20 event types need a merged listing")
        params: dict[str, Any] = {"limit": page_limit, "types": chunks[0]}
        for data in self._walk("events", "/v1/events", params, start=cursor_id, newer=True,
                               invalid=lambda exc: _unknown_cursor(exc, cursor_id)):
            yield from reversed(data)

    def event_pages(self, since: int, until: int | None = None,
                    types: Sequence[str] = EVENT_TYPES) -> Iterator[list[dict[str, Any]]]:
        """Pages of the events created in [since, until] (no upper bound without `until`), newest first,
        walking `starting_after`: the lookback re-read behind the cursor (Stripe lists events
        eventually consistently, so a late one can appear behind a cursor already past it)."""
        created: dict[str, int] = {"gte": since}
        if until is not None:
            created["lte"] = until
        params: dict[str, Any] = {"limit": PAGE_LIMIT, "types": list(types), "created": created}
        yield from self._walk("events", "/v1/events", params,
                              invalid=lambda exc: _fatal(exc, "re-reading recent events"))

    def oldest_event_since(self, since: int, types: Sequence[str] = EVENT_TYPES) -> tuple[str, int] | None:
        """A cursor just before `since`: the newest event created before it, if Stripe still has one.

        Returns None when no such event exists; then `first_event_since` walks from the start.
        """
        data = self._first_page("events", "/v1/events", {"limit": 1, "types": list(types), "created": {"lt": since}})
        return (data[0]["id"], int(data[0]["created"])) if data else None

    def first_event_since(self, since: int, types: Sequence[str] = EVENT_TYPES) -> dict[str, Any] | None:
        """The oldest event created at or after `since` (walks newest-first pages keeping one event)."""
        oldest: dict[str, Any] | None = None
        params: dict[str, Any] = {"limit": PAGE_LIMIT, "types": list(types), "created": {"gte": since}}
        for data in self._walk("events", "/v1/events", params):
            oldest = data[-1]
        return oldest

    def newest_event(self, types: Sequence[str] = EVENT_TYPES) -> tuple[str, int] | None:
        """The newest event of these types (backfill's hand-off point for sync)."""
        data = self._first_page("events", "/v1/events", {"limit": 1, "types": list(types)})
        return (data[0]["id"], int(data[0]["created"])) if data else None

    def recent_currencies(self, types: Sequence[str] = EVENT_TYPES) -> dict[str, int]:
        """How many of the newest PAGE_LIMIT events (one request) are in each currency (upper-case ISO code),
        read from `data.object.currency` (subscriptions, invoices and PaymentIntents all carry one)."""
        counts: dict[str, int] = {}
        for event in self._first_page("events", "/v1/events", {"limit": PAGE_LIMIT, "types": list(types)}):
            obj = (event.get("data") or {}).get("object") or {}
            code = obj.get("currency") if isinstance(obj, dict) else None
            if isinstance(code, str) and code:
                counts[code.upper()] = counts.get(code.upper(), 0) + 1
        return counts

    # --- backfill lists -----------------------------------------------------------------------
    def list_pages(self, kind: str, *, since: int, until: int | None,
                   starting_after: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """Pages of one list endpoint, newest first, each a list of raw objects with the customer
        expanded (`expand[]=data.customer` saves a call per object; Stripe API reference: Expanding
        responses)."""
        created: dict[str, int] = {"gte": since}
        if until is not None:
            created["lt"] = until
        params: dict[str, Any] = {"limit": PAGE_LIMIT, "created": created, "expand": ["data.customer"]}
        if kind == "subscriptions":
            path = "/v1/subscriptions"
            # Without it canceled subscriptions are left out (Stripe API reference: List subscriptions).
            params["status"] = "all"
            # Its latest invoice: while it is the first (`subscription_create`), whether credit notes or
            # (pre-basil, its Charge) refunds and disputes changed what it kept (hydrate._first_period), with
            # no read for the many it did not.
            latest = "data.latest_invoice" if self._api_version >= BASIL else "data.latest_invoice.charge"
            params["expand"] = ["data.customer", latest]
            if self._api_version >= BASIL:  # their Discounts for MRR (mrr.py), instead of a read each;
                # depth 4 is Stripe's maximum (api-facts "Discounts": ids from basil on)
                params["expand"] = ["data.customer", latest, "data.discounts", "data.items.data.discounts"]
        elif kind == "payment_intents":
            path = "/v1/payment_intents"  # no status filter exists: filtered by the caller
            # What each payment kept: its Charge's refunds (issue 22 §1), and whether it is disputed (read apart,
            # for those few: hydrate.collected). Four levels deep at most (Stripe docs, Expanding responses).
            params["expand"] = ["data.customer", "data.latest_charge.refunds"]
        elif kind == "invoices":
            path = "/v1/invoices"
            params["status"] = "open"  # unpaid; the caller keeps those with a failed attempt
        else:
            raise ValueError(f"unknown backfill object type {kind!r}")
        yield from self._walk(kind, path, params, start=starting_after,
                              hint="Retry later (a backfill with --resume); if it persists, report it "
                                   "with --debug output.")

    def _endpoint_pacer(self, endpoint: str) -> Pacer:
        """The pacer every request to `endpoint` shares, from every thread (ENDPOINT_REQUESTS_PER_SECOND)."""
        with self._pace_lock:
            if endpoint not in self._endpoint_pacers:
                self._endpoint_pacers[endpoint] = Pacer(self._endpoint_rate)
            return self._endpoint_pacers[endpoint]

    def end_thread(self) -> None:
        """Close the calling thread's HTTP session (a backfill lister that is done)."""
        if self._http is not None:
            self._http.close()

    # --- hydration --------------------------------------------------------------------------
    def forget(self) -> None:
        """Drop what hydration holds (called per batch): state keeps the customers, so memory stays
        bounded by the batch, not by the run."""
        self._customers.clear()
        self._fresh_customers.clear()
        self._invoice_of_pi.clear()
        self._payments_of_invoice.clear()

    def knows_customer(self, customer_id: str) -> bool:
        """Whether `customer` answers without a call."""
        return customer_id in self._customers

    def remember_customer(self, customer: CachedCustomer) -> None:
        """Details known without a read (state, a customer.* event, an expanded payload)."""
        self._customers[customer.customer_id] = customer

    def take_fresh_customers(self) -> list[CachedCustomer]:
        """Customers read from Stripe since the last call, for the caller to keep in state."""
        fresh = [self._customers[c] for c in self._fresh_customers]
        self._fresh_customers = []
        return fresh

    def customer(self, customer_id: str) -> CachedCustomer | None:
        """The customer's metadata and name (cached per batch); None if Stripe has deleted it."""
        if customer_id not in self._customers:
            obj = self._get_or_none("reading a customer", f"/v1/customers/{_path_id(customer_id)}") or {"deleted": True}
            self._keep_customer(customer_id, obj)
        cached = self._customers[customer_id]
        return None if cached.deleted else cached

    def _keep_customer(self, customer_id: str, obj: Mapping[str, Any]) -> None:
        """Cache a customer read from Stripe, for this batch and (as fresh) for state."""
        metadata = meta if isinstance(meta := obj.get("metadata"), Mapping) else {}
        # Only what rules read is kept: a run may see tens of thousands of customers.
        self._customers[customer_id] = CachedCustomer(
            customer_id, {k: v for k, v in metadata.items() if isinstance(v, str)},
            obj.get("name") if isinstance(obj.get("name"), str) else None, obj.get("deleted") is True,
            int(self._clock()))
        self._fresh_customers.append(customer_id)

    def customer_pages(self, *, created: dict[str, int], start: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """Pages of the customer list, newest first, 100 a call, from the one just older than `start`. Stripe never
        lists a deleted customer (Stripe API reference: List all customers)."""
        return self._walk("customers", "/v1/customers", {"limit": PAGE_LIMIT, "created": created}, start=start)

    def prefetch_customers(self, customer_ids: Iterable[str], *, created_until: int) -> None:
        """Look for many unknown customers in the customer list (100 a call) instead of one read each.

        From CUSTOMER_LIST_FROM unknown customers on, list `/v1/customers` newest first, created at or before
        `created_until` (a customer exists before any event naming it; `created` filter:
        stripe/params/_customer_list_params.py), keeping every customer listed (for later batches and runs),
        until every unknown one is found, the list ends, or its pages are as many as the customers still
        missing. How many pages finding them takes is not known beforehand (the account's size is not), so
        this is the rent-or-buy rule: the listing never costs more than reading the rest would, and the
        batch's customer calls are at most twice the cheaper of listing and reading each. Later batches of
        the run go on from where it stopped. A deleted customer is never listed (Stripe API reference: List
        all customers; airbyte PR 19975): one not found is read on its own by `customer`, which learns it is
        deleted.
        """
        missing = {c for c in customer_ids if c not in self._customers}
        if len(missing) < CUSTOMER_LIST_FROM or self._customer_list_ended:
            return
        until, cursor = self._customer_list or (created_until, None)
        pages = 0
        for data in self.customer_pages(created={"lte": until}, start=cursor):
            pages += 1
            for obj in data:
                if obj["id"] not in self._customers:  # state and the batch's own customer events stand
                    self._keep_customer(obj["id"], obj)
            missing -= {o["id"] for o in data}
            self._customer_list = (until, data[-1]["id"])
            if pages >= len(missing):  # also when none is missing any more
                return
        self._customer_list_ended = True

    def prefetch_invoice_payments(self, *, since: int, until: int, payment_intents: Sequence[str],
                                  invoices: Sequence[str]) -> None:
        """Link a batch's PaymentIntents and failed invoices with one listing instead of a call each.

        Lists `/v1/invoice_payments` created in [since, until] (Stripe API reference: List all payments for
        an invoice; the `created` filter since stripe-python 14),
        the PaymentIntents expanded when failure codes are wanted. An InvoicePayment names a PaymentIntent
        that already exists, so one created before `since` (the batch's oldest PaymentIntent, less a margin)
        cannot belong to it: a PaymentIntent absent from the listing paid no invoice. A failed invoice
        absent from it (a retry whose payment is older) is read on its own later, as before.
        """
        wanted_pi, wanted_inv = set(payment_intents), set(invoices)
        params: dict[str, Any] = {"limit": PAGE_LIMIT, "created": {"gte": since, "lte": until}}
        if wanted_inv:
            params["expand"] = ["data.payment.payment_intent"]
        found_pi: dict[str, str | None] = {}
        found_inv: dict[str, list[dict[str, Any]]] = {}
        listed = 0
        for data in self._walk("invoice payments", "/v1/invoice_payments", params):
            listed += len(data)
            for p in data:
                pi_id, inv = _payment_link(p)
                if pi_id in wanted_pi:
                    found_pi[pi_id] = inv
                if inv in wanted_inv:
                    found_inv.setdefault(inv, []).append(p)
        self._late_attachments(wanted_pi - found_pi.keys(), found_pi, after=until,
                               density=listed / max(until - since, 1))
        for pi_id in wanted_pi:
            self._invoice_of_pi[pi_id] = found_pi.get(pi_id)
        self._payments_of_invoice.update(found_inv)

    def _late_attachments(self, missing: set[str], found: dict[str, str | None], *, after: int,
                          density: float) -> None:
        """Invoices that PaymentIntents were attached to after the batch's window.

        A PaymentIntent that has already succeeded can be attached to an invoice long after; the
        InvoicePayment is created then (Stripe API reference: Attach a payment to an Invoice). When the
        window ends before now (a catch-up run, a first `sync --since`, a dead-letter retry), look at
        (after, now] too, by whichever costs fewer calls: one listing of the PaymentIntent payments in
        that span (its size estimated from the window's density), or one lookup per PaymentIntent still
        unlinked. The listing is kept for the run (up to MAX_ATTACHED links): batches move forward in
        time, so a later batch's span is inside it, and only what was created since needs listing. A
        cron run every few minutes has no such span and pays nothing. An attach after this run has read
        the payment is not seen: the payment was a one-time payment when it was applied.
        """
        now = int(self._clock())
        if not missing or now <= after:
            return
        if self._attached_span is not None and self._attached_span[0] <= after:
            if now - self._attached_span[1] > ATTACHED_REFRESH_S:
                self._list_attached(self._attached_span[1], now, missing, found)
            found.update({pi: self._attached[pi] for pi in missing if pi in self._attached})
            return
        pages = math.ceil(density * (now - after) / PAGE_LIMIT) + 1
        if pages >= len(missing):
            for pi_id in sorted(missing):
                found[pi_id] = self.invoice_of_payment_intent(pi_id)
            return
        self._attached, self._attached_span = {}, (after, after)
        self._list_attached(after, now, missing, found)

    def _list_attached(self, after: int, until: int, missing: set[str], found: dict[str, str | None]) -> None:
        """List the PaymentIntent payments created in (after, until]: answer `missing`, and keep the links
        for later batches while there are at most MAX_ATTACHED of them (memory stays bounded)."""
        params = {"limit": PAGE_LIMIT, "created": {"gt": after, "lte": until}, "payment": {"type": "payment_intent"}}
        for data in self._walk("invoice payments", "/v1/invoice_payments", params):
            for p in data:
                pi_id, inv = _payment_link(p)
                if pi_id is None or inv is None:
                    continue
                if pi_id in missing:
                    found[pi_id] = inv
                if self._attached_span is not None:
                    self._attached[pi_id] = inv
            if len(self._attached) > MAX_ATTACHED:
                self._attached, self._attached_span = {}, None  # too many to keep: each batch lists its own
        if self._attached_span is not None:
            self._attached_span = (self._attached_span[0], until)

    def prefetched_payments(self, invoice_id: str) -> list[dict[str, Any]] | None:
        """A failed invoice's payments from `prefetch_invoice_payments`, newest first, if it found them."""
        return self._payments_of_invoice.pop(invoice_id, None)

    def invoice_of_payment_intent(self, pi_id: str) -> str | None:
        """The invoice a PaymentIntent paid, if any (current API versions no longer embed it;
        /v1/invoice_payments filtered by `payment[payment_intent]` answers it; stripe/_payment_intent.py)."""
        if pi_id not in self._invoice_of_pi:
            params = {"limit": 1, "payment": {"type": "payment_intent", "payment_intent": pi_id}}
            data = self._first_page("invoice payments", "/v1/invoice_payments", params)
            inv = data[0].get("invoice") if data else None
            self._invoice_of_pi[pi_id] = inv if isinstance(inv, str) else None
        return self._invoice_of_pi[pi_id]

    def current_object(self, object_id: str) -> dict[str, Any] | None:
        """A subscription, invoice or PaymentIntent as Stripe holds it now (None when it is gone, or of
        another kind)."""
        path = _CURRENT_PATHS.get(object_id.split("_", 1)[0])
        if path is None:
            return None
        return self._get_or_none("reading an object's current state", f"{path}/{_path_id(object_id)}")

    def subscription_items(self, subscription_id: str) -> list[dict[str, Any]]:
        """Every item of a subscription, read to the end of `/v1/subscription_items?subscription=…` (Stripe API
        reference: List all subscription items; `limit` up to 100). A subscription's embedded `items` list is a
        first page: with `has_more` the rest is only here."""
        items: list[dict[str, Any]] = []
        for page in self._walk("subscription items", "/v1/subscription_items",
                               {"subscription": _path_id(subscription_id), "limit": 100}):
            items.extend(page)
        return items

    def price_currency_options(self, price_id: str) -> dict[str, dict[str, Any]] | None:
        """A Price's amounts per currency (`currency_options`), read once per run; None if it is gone.

        Stripe returns `currency_options` only when expanded (Stripe API reference: The Price object), and
        only a subscription billed in another currency than its Price's default needs them. Kept for the run, unlike the
        per-batch hydration caches: many subscriptions share few Prices.
        """
        if price_id not in self._price_options:
            obj = self.price(price_id)  # one read serves the amounts and MRR (tiers)
            options: dict[str, dict[str, Any]] | None = None
            if obj is not None:
                raw = opts if isinstance(opts := obj.get("currency_options"), dict) else {}
                # Only what the amounts need (tiers and custom amounts leave the unit amount unknown).
                options = {str(cur).lower(): {k: o.get(k) for k in ("unit_amount", "unit_amount_decimal")}
                           for cur, o in raw.items() if isinstance(o, dict)}
            if len(self._price_options) >= MAX_CACHED_PRICES:
                self._price_options.pop(next(iter(self._price_options)))
            self._price_options[price_id] = options
        return self._price_options[price_id]

    def subscription_discounts(self, subscription_id: str) -> list[dict[str, Any]]:
        """The Discount objects of a subscription and of its items, as Stripe holds them now. A Discount cannot
        be retrieved by id (pkg `_discount.py`): the subscription is re-read with them expanded."""
        obj = self._get_or_none("reading a subscription's discounts", f"/v1/subscriptions/{_path_id(subscription_id)}",
                                {"expand": ["discounts", "items.data.discounts"]})
        if obj is None:
            return []
        items = (obj.get("items") or {}).get("data") or []
        refs = [*(obj.get("discounts") or []), *(d for i in items for d in (i.get("discounts") or []))]
        found = [d for d in refs if isinstance(d, dict)]
        for d in found:
            self._bounded(self._discounts)
            self._discounts[str(d.get("id"))] = d
        return found

    def known_discounts(self, discount_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The Discounts read earlier in this run, of these ids."""
        return {d: self._discounts[d] for d in discount_ids if d in self._discounts}

    def first_invoice(self, subscription_id: str, by: int) -> dict[str, Any] | None:
        """The subscription's newest invoice created at or before `by` (its start, or its trial's end: the
        first paid invoice), or None (Stripe API reference: List invoices, newest first)."""
        params: dict[str, Any] = {"subscription": _path_id(subscription_id), "created": {"lte": by}, "limit": 1}
        if self._api_version < BASIL:  # its Charge: whether refunds or disputes changed what it kept
            params["expand"] = ["data.charge"]
        for page in self._walk("a subscription's first invoice", "/v1/invoices", params):
            return page[0] if page else None
        return None

    def credit_notes(self, invoice_id: str) -> list[dict[str, Any]]:
        """An invoice's credit notes, every status (/v1/credit_notes?invoice=…)."""
        notes: list[dict[str, Any]] = []
        for page in self._walk("credit notes", "/v1/credit_notes", {"invoice": _path_id(invoice_id), "limit": 100}):
            notes.extend(page)
        return notes

    def customer_subscriptions(self, customer_id: str) -> list[dict[str, Any]]:
        """A customer's subscriptions that are not canceled (the list's default: Stripe API reference, List
        subscriptions `status`), with their Discounts expanded (depth 4, Stripe's maximum)."""
        subs: list[dict[str, Any]] = []
        for page in self._walk("a customer's subscriptions", "/v1/subscriptions", {
                "customer": _path_id(customer_id), "limit": 100,
                "expand": ["data.discounts", "data.items.data.discounts"]}):
            subs.extend(page)
        return subs

    def coupon(self, coupon_id: str) -> dict[str, Any] | None:
        """A Coupon with the products it is limited to (`expand[]=applies_to`, includable only), once per run."""
        if coupon_id not in self._coupons:
            self._bounded(self._coupons)
            # Coupon ids are chosen by the merchant ("SUMMER-20"): hyphens too, unlike object ids.
            self._coupons[coupon_id] = self._get_or_none(
                "reading a coupon", f"/v1/coupons/{coupon_id}", {"expand": ["applies_to"]}
            ) if re.fullmatch(r"[A-Za-z0-9_-]{1,200}", coupon_id) else None
        return self._coupons[coupon_id]

    def price(self, price_id: str) -> dict[str, Any] | None:
        """A Price with its `tiers` and `currency_options` (both includable only, pkg `_price.py`), once per run."""
        if price_id not in self._prices:
            self._bounded(self._prices)
            self._prices[price_id] = self._get_or_none(
                "reading a price", f"/v1/prices/{_path_id(price_id)}", {"expand": ["tiers", "currency_options"]})
        return self._prices[price_id]

    @staticmethod
    def _bounded(cache: dict[str, Any]) -> None:
        if len(cache) >= MAX_CACHED_PRICES:
            cache.pop(next(iter(cache)))

    def failed_invoice(self, invoice_id: str) -> dict[str, Any] | None:
        """The invoice with its PaymentIntent/Charge expanded, to read the failure code
        (an Invoice itself has no `last_payment_error`; stripe/_invoice.py)."""
        if self._api_version >= BASIL:
            # Only the PaymentIntent is expanded: a payment of type "charge" is read separately below.
            expand = ["payments.data.payment.payment_intent"]
        else:
            expand = ["payment_intent", "charge"]
        invoice = self._get_or_none("reading a failed invoice", f"/v1/invoices/{_path_id(invoice_id)}",
                                    {"expand": expand})
        if invoice is None:
            return None
        payments = invoice.get("payments")
        for p in (payments.get("data") if isinstance(payments, dict) else None) or []:
            payment = p.get("payment") if isinstance(p, dict) else None
            if isinstance(payment, dict) and payment.get("type") == "charge" and isinstance(payment.get("charge"), str):
                try:
                    payment["charge"] = self._get("reading a failed charge",
                                                  f"/v1/charges/{_path_id(payment['charge'])}")
                except stripe.InvalidRequestError:
                    pass  # the invoice still names the failure's amount and attempt; the code stays unknown
        return invoice

    def payment_collected(self, pi_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """A PaymentIntent as it is now, with its latest Charge and that Charge's refunds expanded (one read),
        and its disputes when the Charge is `disputed`: what was received, refunded and lost. A refund never
        lowers `amount_received`; a refund's `status` says whether it kept anything back (api-facts "Refunds";
        stripe/_payment_intent.py, _charge.py, _refund.py). Since 2022-11-15 `Charge.refunds` comes only when
        expanded; a first page (`has_more`) is read to its end from /v1/refunds?charge=…"""
        pi = self._get_or_none("reading a payment's refunds and disputes", f"/v1/payment_intents/{_path_id(pi_id)}",
                               {"expand": ["latest_charge.refunds"]})
        charge = pi.get("latest_charge") if pi else None
        if not isinstance(charge, dict):
            return pi, []
        refunds = charge.get("refunds")
        if isinstance(refunds, dict) and refunds.get("has_more"):
            every: list[dict[str, Any]] = []
            for page in self._walk("refunds", "/v1/refunds", {"charge": _path_id(str(charge["id"])), "limit": 100}):
                every.extend(page)
            charge["refunds"] = {"object": "list", "data": every, "has_more": False}
        disputes: list[dict[str, Any]] = []
        if charge.get("disputed"):  # api-facts "Disputes": List all disputes filters by payment_intent
            for page in self._walk("disputes", "/v1/disputes", {"payment_intent": _path_id(pi_id), "limit": 100}):
                disputes.extend(page)
        return pi, disputes


    def invoice_credit_notes(self, invoice_id: str) -> tuple[dict[str, Any] | None, str | None, list[dict[str, Any]]]:
        """An invoice as it is now, the PaymentIntent that paid it (pre-basil: `payment_intent`; from basil:
        its `payments`, expanded), and its credit notes (/v1/credit_notes?invoice=…, every status: a void one
        says so). Two reads: what a subscription's first invoice kept (issue 22 §1, §2)."""
        expand = ["payments"] if self._api_version >= BASIL else []
        invoice = self._get_or_none("reading an invoice's credit notes", f"/v1/invoices/{_path_id(invoice_id)}",
                                    {"expand": expand} if expand else None)
        if invoice is None:
            return None, None, []
        pi = invoice.get("payment_intent")
        payments = listed if isinstance(listed := invoice.get("payments"), dict) else {}
        for p in payments.get("data") or []:
            payment = p.get("payment") if isinstance(p, dict) and p.get("status") == "paid" else None
            if isinstance(payment, dict) and payment.get("payment_intent"):
                pi = payment["payment_intent"]
        pi_id = pi.get("id") if isinstance(pi, dict) else pi
        notes: list[dict[str, Any]] = []
        if invoice.get("billing_reason") == "subscription_create":
            for page in self._walk("credit notes", "/v1/credit_notes", {"invoice": _path_id(invoice_id), "limit": 100}):
                notes.extend(page)
        return invoice, pi_id if isinstance(pi_id, str) else None, notes


# Id prefix -> the path its object is read at (the objects whose events have rules).
_CURRENT_PATHS = {"sub": "/v1/subscriptions", "in": "/v1/invoices", "pi": "/v1/payment_intents"}


def _payment_link(payment: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(PaymentIntent id, invoice id) of an InvoicePayment (the PaymentIntent may be expanded)."""
    inner = paid if isinstance(paid := payment.get("payment"), Mapping) else {}
    pi = inner.get("payment_intent")
    pi_id = pi.get("id") if isinstance(pi, Mapping) else pi
    inv = payment.get("invoice")
    return (pi_id if isinstance(pi_id, str) else None), (inv if isinstance(inv, str) else None)


def _endpoint_of(path: str) -> str:
    """The named API operation a GET path belongs to, as Stripe counts it for its per-endpoint limit:
    `/v1/customers/cus_1` and `/v1/customers/cus_2` are one endpoint, `/v1/customers/{id}`."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    return "/" + "/".join(p if i % 2 == 1 or i == 0 else "{id}" for i, p in enumerate(parts))


def _path_id(value: str) -> str:
    """A Stripe id checked before it goes into a URL path (ids come from event payloads)."""
    if not re.fullmatch(r"[A-Za-z0-9_]{3,255}", value or ""):
        raise FatalSyncError(f"Refusing to request a malformed Stripe id {value[:40]!r}.",
                             hint="The event carrying it is malformed; report it with --debug output.")
    return value


def _raw_list(page: dict[str, Any]) -> list[dict[str, Any]]:
    data = page.get("data")
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def _has_more(page: dict[str, Any]) -> bool:
    return bool(page.get("has_more"))
