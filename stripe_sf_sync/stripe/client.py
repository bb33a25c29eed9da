"""The Stripe client: every request goes through `PacedClient.get` (the one pacer and the one retry policy)
and every list through `PacedClient.walk` (the one pager). It takes an injected `stripe.StripeClient`
(`http.build_client`); nothing else in the package talks to Stripe.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import stripe
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from stripe_sf_sync.deadline import Deadline
from stripe_sf_sync.errors import (
    FatalSyncError,
    StripeRefusedError,
    certificate_problem,
    connection_problem,
    tls_error,
    unreachable_error,
)
from stripe_sf_sync.logs import fields
from stripe_sf_sync.stripe.http import CountingRequestsClient
from stripe_sf_sync.stripe.pacing import (
    ENDPOINT_REQUESTS_PER_SECOND,
    RATE_LIMIT_SHARE,
    Pacer,
    paces_to_slow,
    rate_limited_reason,
)

log = logging.getLogger("stripe_sf_sync")

# A list call takes `limit` up to 100 (Stripe API reference: Pagination).
PAGE_LIMIT = 100
# The basil API version: payloads are read differently from it on (see where it is compared).
BASIL = "2025-03-31"
# A request is tried at most this many times, with a random wait before each retry of up to 0.5 s, 1 s,
# 2 s, 4 s, then 8 s (exponential backoff with full jitter). The SDK's own retries are off
# (build_client), so nothing multiplies it.
MAX_ATTEMPTS = 6
RETRY_LATER_HINT = "Retry later; if it persists, report it with --debug output."


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


def fatal(exc: stripe.StripeError, what: str, path: str | None = None, *, attempts: int = 1,
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


class PacedClient:
    """GETs from Stripe, paced, retried by one policy and paged by one pager; it counts what it sent."""

    def __init__(self, client: stripe.StripeClient, http: CountingRequestsClient | None = None, *,
                 api_version: str, requests_per_second: float = 20.0, max_attempts: int = MAX_ATTEMPTS,
                 sleep: Any = time.sleep, endpoint_requests_per_second: float | None = None) -> None:
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
        self._sleep = sleep
        self.calls_made = 0
        # The last response's headers, by lower-case name (`stripe-version`: the version Stripe answered in).
        self.last_headers: dict[str, str] = {}

    def pace_as(self, other: PacedClient) -> None:
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

    def get(self, what: str, path: str, params: dict[str, Any] | None = None, *,
            raw_refusal: bool = False) -> dict[str, Any]:
        """GET a Stripe path and return the JSON Stripe sent: paced, and tried at most `max_attempts` times.

        The one retry policy of this edge (see `_retry_reason`); the SDK's own retries are off
        (`build_client`), so an attempt is one HTTP request. An InvalidRequestError (a 400 or 404) goes
        to the caller, which knows whether a missing object matters; anything else that is not
        retried, or still fails on the last attempt, is fatal. `raw_request` skips the SDK's
        StripeObject construction, which profiling showed to be three quarters of a backfill's time for
        pages we only read as plain dicts (the rules take dicts); and the body is decoded once, by the HTTP
        client (`CountingRequestsClient`), not again by the SDK.
        """
        paces = (self._pacer, self.endpoint_pacer(_endpoint_of(path)))

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
                slowed = paces_to_slow(exc, paces)
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
            if raw_refusal and isinstance(exc, stripe.PermissionError):
                raise  # the caller can do without the answer (a restricted key without that permission)
            attempts = retrying.statistics.get("attempt_number", 1)
            raise fatal(exc, what, attempts=attempts, seconds=time.monotonic() - started, timeout=total) from None
        finally:
            if self._http is not None:
                self._http.limit_attempt(None)
        data = decoded if decoded is not None else getattr(resp, "data", None)
        if not isinstance(data, dict):
            raise FatalSyncError(f"Stripe sent a response that is not a JSON object while {what}.",
                                 hint=RETRY_LATER_HINT)
        self.last_headers = {str(k).lower(): str(v) for k, v in (getattr(resp, "headers", None) or {}).items()}
        return data

    def get_or_none(self, what: str, path: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """`get` of one object, None when Stripe no longer has it (`resource_missing`)."""
        try:
            return self.get(what, path, params)
        except stripe.InvalidRequestError as exc:
            if getattr(exc, "code", None) != "resource_missing":
                raise fatal(exc, what) from None
            return None

    def walk(self, kind: str, path: str, params: dict[str, Any], *, start: str | None = None,
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
                page = self.get(f"listing {kind}", path, {**params, key: cursor} if cursor else params)
            except stripe.InvalidRequestError as exc:
                if invalid is None:  # a list call Stripe refused: say which and why, never a traceback
                    raise fatal(exc, f"listing {kind}", path) from None
                raise invalid(exc) from None
            data = _raw_list(page)
            if not data:
                return
            guard.check(data)
            yield data
            if not _has_more(page):
                return
            cursor = data[0]["id"] if newer else data[-1]["id"]

    def first_page(self, kind: str, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The newest page of a list (one request): a `limit: 1` read answers a single question."""
        return next(self.walk(kind, path, params), [])

    def endpoint_pacer(self, endpoint: str) -> Pacer:
        """The pacer every request to `endpoint` shares, from every thread (ENDPOINT_REQUESTS_PER_SECOND)."""
        with self._pace_lock:
            if endpoint not in self._endpoint_pacers:
                self._endpoint_pacers[endpoint] = Pacer(self._endpoint_rate)
            return self._endpoint_pacers[endpoint]

    def end_thread(self) -> None:
        """Close the calling thread's HTTP session (a backfill lister that is done)."""
        if self._http is not None:
            self._http.close()


def _endpoint_of(path: str) -> str:
    """The named API operation a GET path belongs to, as Stripe counts it for its per-endpoint limit:
    `/v1/customers/cus_1` and `/v1/customers/cus_2` are one endpoint, `/v1/customers/{id}`."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    return "/" + "/".join(p if i % 2 == 1 or i == 0 else "{id}" for i, p in enumerate(parts))


def path_id(value: str) -> str:
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
