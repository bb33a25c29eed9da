"""The HTTP under the Stripe client: the SDK's requests client, counting requests, decoding pages once with
orjson and logging each call; a session for a custom CA bundle; and `build_client`, the pinned StripeClient."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
import stripe

from stripe_sf_sync import gc_pause
from stripe_sf_sync.logs import fields

log = logging.getLogger("stripe_sf_sync")


class CountingRequestsClient(stripe.RequestsClient):
    """The SDK's requests client, counting real HTTP requests and logging each at debug.

    It also decodes the JSON objects `PacedClient.get` asks for (`decode_next`), once, with orjson. The SDK's
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
        # Per thread: a request and its decoding happen on the thread that called `PacedClient.get`.
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
                 ca_bundle: str | None = None,
                 stripe_account: str | None = None) -> tuple[stripe.StripeClient, CountingRequestsClient]:
    """A StripeClient pinned to `api_version`, with a counting HTTP client and no retries of its own:
    PacedClient retries (its `get`), so that a request is tried a known number of times. `ca_bundle`
    (REQUESTS_CA_BUNDLE) replaces the SDK's bundled CAs. `stripe_account`: a connected account, sent as the
    Stripe-Account header on every request (StripeClient's `stripe_account` option)."""
    http = CountingRequestsClient(timeout=timeout,
                                  session_factory=(lambda: CaBundleSession(ca_bundle)) if ca_bundle else None)
    kwargs: dict[str, Any] = {"stripe_version": api_version, "max_network_retries": 0, "http_client": http}
    if api_base:
        kwargs["base_addresses"] = {"api": api_base}
    if stripe_account:
        kwargs["stripe_account"] = stripe_account
    return stripe.StripeClient(api_key, **kwargs), http
