"""The receiving side: a delivery read within its bounds, verified, parsed and kept in the inbox before the
2xx goes back; what was refused or ignored counted in the metrics and logged, rate limited."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from stripe_sf_sync.config import DEFAULT_KEY_ENV
from stripe_sf_sync.errors import StripeSfError
from stripe_sf_sync.pipelines import DEFAULT_PIPELINE, Pipeline
from stripe_sf_sync.serve.options import LOG_PER_MINUTE, MAX_CREATED, MAX_DEPTH, ServeOptions
from stripe_sf_sync.serve.routing import UNCONFIGURED, Served
from stripe_sf_sync.serve.signature import verify
from stripe_sf_sync.state import StateStore

log = logging.getLogger("stripe_sf_sync")

SINGLE = Served(Pipeline(DEFAULT_PIPELINE))  # a config without stripe.accounts: its one pipeline
UNCONFIGURED_HINT = (" To sync that account, add it to stripe.accounts (`connected: true` for a connected account) "
                     "and restart serve.")


class ThrottledLog:
    """Lines of one kind logged one by one at most `per_window` times a window; the rest are counted by reason,
    and the count is logged when a later window opens (or on `flush`), so a flood cannot fill the disk."""

    def __init__(self, what: str, per_window: int = LOG_PER_MINUTE, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.per_window = per_window
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._logged = 0
        self._unlogged: Tally[str] = Tally()

    def allow(self, reason: str) -> bool:
        """Whether this one may be logged; if not, it is counted for the summary."""
        with self._lock:
            if self._clock() - self._start >= self.window_s:
                self._summarize()
            if self._logged < self.per_window:
                self._logged += 1
                return True
            self._unlogged[reason] += 1
            return False

    def flush(self) -> None:
        """Log the count of what was not logged (at shutdown)."""
        with self._lock:
            self._summarize()

    def _summarize(self) -> None:
        total = sum(self._unlogged.values())
        if total:
            by_reason = ", ".join(f"{n} {r}" for r, n in self._unlogged.most_common())
            log.warning("%d more %s in the last %.0f s were not logged one by one (%s); /metrics counts them all.",
                        total, self.what, self._clock() - self._start, by_reason)
        self._start, self._logged, self._unlogged = self._clock(), 0, Tally()


class Metrics:
    """The receiver's Prometheus metrics, in a registry of its own (GET /metrics). `per_account`: the config lists
    its accounts, and what a pipeline's worker counts (drains, outcomes, inbox depth, latency, Salesforce calls
    and success) carries its `account` label; without accounts the series are unlabelled, as before."""

    def __init__(self, per_account: bool = False) -> None:
        self.registry = CollectorRegistry()
        self.per_account = per_account
        r = self.registry
        a = ["account"] if per_account else []
        self.received = Counter("stripe_sf_webhook_received", "Verified webhook deliveries received "
                                "(duplicates included).", registry=r)
        self.duplicates = Counter("stripe_sf_webhook_duplicate", "Verified deliveries of an event id already "
                                  "in the inbox.", registry=r)
        self.rejected = Counter("stripe_sf_webhook_rejected", "Deliveries refused, by reason.", ["reason"],
                                registry=r)
        self.ignored = Counter("stripe_sf_webhook_ignored", "Authentic deliveries acknowledged (2xx) and not "
                               "applied, by reason.", ["reason"], registry=r)
        self.disconnected = Counter("stripe_sf_webhook_disconnected", "Clients that went away before their "
                                    "whole body arrived.", registry=r)
        self.drains = Counter("stripe_sf_inbox_drains", "Inbox drains run by the worker.", a, registry=r)
        self.applied = Counter("stripe_sf_events_applied", "Events applied to Salesforce (inbox and safety-net "
                               "sync).", a, registry=r)
        self.dead_lettered = Counter("stripe_sf_events_dead_lettered", "Events dead-lettered.", a, registry=r)
        self.inbox_depth = Gauge("stripe_sf_inbox_depth", "Inbox entries not applied yet.", a, registry=r)
        self.api_used = Gauge("stripe_sf_salesforce_api_used", "The org's daily API requests used, as last "
                              "seen.", registry=r)
        self.api_max = Gauge("stripe_sf_salesforce_api_max", "The org's daily API request allowance.", registry=r)
        self.salesforce_calls = Counter("stripe_sf_salesforce_calls", "Salesforce API calls made.", a, registry=r)
        self.latency = Histogram("stripe_sf_pipeline_latency_seconds", "From receipt to the committed outcome.",
                                 a, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300), registry=r)
        self.last_salesforce_ok = Gauge("stripe_sf_salesforce_last_success_timestamp_seconds",
                                        "When a run last finished with Salesforce calls that all succeeded.", a,
                                        registry=r)

    def pipeline(self, name: str) -> PipelineMetrics:
        """What one pipeline's worker counts: its labelled series (or the unlabelled ones, without accounts)."""
        def of(metric: Any) -> Any:
            return metric.labels(account=name) if self.per_account else metric
        return PipelineMetrics(of(self.drains), of(self.applied), of(self.dead_lettered), of(self.inbox_depth),
                               of(self.salesforce_calls), of(self.latency), of(self.last_salesforce_ok),
                               self.api_used, self.api_max)


@dataclass(frozen=True)
class PipelineMetrics:
    """One pipeline's series of the receiver's metrics; the org's API usage is the org's, shared."""

    drains: Counter
    applied: Counter
    dead_lettered: Counter
    inbox_depth: Gauge
    salesforce_calls: Counter
    latency: Histogram
    last_salesforce_ok: Gauge
    api_used: Gauge
    api_max: Gauge


class Inbox:
    """The receiver's side of the inbox: each served pipeline's store, over one connection used by one request
    thread at a time."""

    def __init__(self, stores: Mapping[str, StateStore]) -> None:
        self.stores = dict(stores)
        self._lock = threading.Lock()

    def add(self, pipeline: str, event_id: str, created: int, payload: str) -> bool:
        """Keep a verified event in `pipeline`'s inbox (committed before the 200 goes back); False for a
        duplicate."""
        with self._lock:
            return self.stores[pipeline].inbox_add(event_id, created, payload, time.time())

    def depths(self) -> dict[str, int]:
        """Each pipeline's pending entries (also proves the state store answers)."""
        with self._lock:
            return {name: store.inbox_depth() for name, store in self.stores.items()}


class _Refused(Exception):
    """A delivery refused before it was verified and parsed: its reason, status, and whether to close."""

    def __init__(self, reason: str, status: int = 400, *, close: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.status, self.close = reason, status, close


async def _read_body(request: Request, options: ServeOptions) -> bytes:
    """The raw body, within `max_body` bytes and `body_timeout_s` seconds; else `_Refused`, closing the
    connection: an unread rest is not read (a 413 that kept reading let one client push 25.8 GiB)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > options.max_body):
        raise _Refused("body too large", 413, close=True)
    body = bytearray()
    try:
        async with asyncio.timeout(options.body_timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > options.max_body:
                    raise _Refused("body too large", 413, close=True)
    except TimeoutError:
        raise _Refused("body too slow", 408, close=True) from None
    return bytes(body)


def _parse(body: bytes) -> dict[str, Any] | None:
    """The delivery's JSON object, or None when it is none or nests deeper than MAX_DEPTH: the json module's
    RecursionError on ~1,000 levels was a 500 that Stripe retried for days, and the worker reads the payload
    again with it (orjson itself stops at 1,024 levels, with an error)."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and _depth_within(event, MAX_DEPTH) else None


def _depth_within(value: Any, limit: int) -> bool:
    """Whether `value` nests at most `limit` containers deep (iteratively: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


def unusable(event: Mapping[str, Any], live: bool, served: Served = SINGLE, key_env: str = DEFAULT_KEY_ENV
             ) -> str | None:
    """Why an authentic event is not for this receiver to apply, or None. Acknowledged all the same: Stripe
    retries any non-2xx for three days, and no retry would change these (issue 19 §4, api-facts.md §4)."""
    if event.get("object") == "v2.core.event" or isinstance(event.get("created"), str):
        return "thin event"  # an event destination's thin event: no `data`, `created` an ISO string
    if (why := served.route(event)[1]) is not None:
        return why  # an account no served pipeline reads (a connected account's objects need its header)
    if bool(event.get("livemode")) != live:
        return f"livemode differs from {key_env}'s mode"
    return None


def _well_formed(event: Mapping[str, Any]) -> bool:
    """An id and a `created` the store can hold (a too large one overflowed into a 500)."""
    created = event.get("created")
    return (isinstance(event.get("id"), str) and bool(event["id"]) and isinstance(created, int)
            and not isinstance(created, bool) and 0 <= created <= MAX_CREATED)


class Deliveries:
    """What the receiver tells the operator about deliveries it did not keep: a metric per reason and a log
    line per delivery (reason, client address, event id when there is one), rate limited."""

    def __init__(self, metrics: Metrics, secrets: int) -> None:
        self.metrics = metrics
        self.secrets = secrets
        self.refusals = ThrottledLog("refused deliveries")
        self.ignored = ThrottledLog("acknowledged and ignored deliveries")
        self.disconnects = ThrottledLog("deliveries cut short by the client")

    def refused(self, request: Request, refusal: _Refused, body: bytes | None = None) -> Response:
        self.metrics.rejected.labels(reason=refusal.reason).inc()
        if self.refusals.allow(refusal.reason):
            log.warning("Refused a delivery from %s with %d: %s%s.%s", _client(request), refusal.status,
                        refusal.reason, _event_id_of(body), self._hint(refusal.reason))
        headers = {"Connection": "close"} if refusal.close else None
        return PlainTextResponse(refusal.reason + "\n", status_code=refusal.status, headers=headers)

    def ignore(self, request: Request, reason: str, event: Mapping[str, Any]) -> Response:
        self.metrics.ignored.labels(reason=reason).inc()
        if self.ignored.allow(reason):
            log.warning("Acknowledged and ignored event %s (%s) from %s: %s%s; nothing applied.%s", event.get("id"),
                        event.get("type"), _client(request), reason, _account_of(event),
                        UNCONFIGURED_HINT if reason == UNCONFIGURED else "")
        return JSONResponse({"received": True, "ignored": reason})

    def disconnected(self, request: Request) -> Response:
        self.metrics.disconnected.inc()
        if self.disconnects.allow("disconnected"):
            log.info("A client at %s disconnected before its whole body arrived; nothing kept.", _client(request))
        return Response(status_code=400)  # nobody reads it: the connection is gone

    def flush(self) -> None:
        for throttled in (self.refusals, self.ignored, self.disconnects):
            throttled.flush()

    def _hint(self, reason: str) -> str:
        if reason == "wrong signature":
            which = ("The signing secret in STRIPE_WEBHOOK_SECRET did not sign it" if self.secrets == 1 else
                     f"None of the {self.secrets} signing secrets in STRIPE_WEBHOOK_SECRET signed it")
            return (f" {which}: if the endpoint's secret was rotated (or this is another endpoint's delivery), "
                    "export the secret shown on the endpoint's page in the Dashboard.")
        if reason == "stale timestamp":
            return " Signed more than the tolerance ago: a replay, or this host's clock is wrong (check NTP)."
        return ""


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "an unknown address"


def _account_of(event: Mapping[str, Any]) -> str:
    account = event.get("account")
    return f" {str(account)[:64]}" if account else ""


def _event_id_of(body: bytes | None) -> str:
    """`, event evt_…` when the (unverified) body names one, for the operator to look up in the Dashboard."""
    event = _parse(body) if body else None
    event_id = event.get("id") if event else None
    return f", event {event_id[:64]}" if isinstance(event_id, str) and event_id else ""


def webhook_route(options: ServeOptions, secrets: Sequence[str], live: bool, deliveries: Deliveries,
                  state: dict[str, Any], served: Served = SINGLE) -> Callable[[Request], Awaitable[Response]]:
    """The webhook route: verify the signature on the raw body, then keep the event in its pipeline's inbox
    before the 2xx goes back (Stripe's webhook signatures: `t=…,v1=…`, HMAC-SHA256 of `t.body`)."""
    metrics = deliveries.metrics

    async def webhook(request: Request) -> Response:
        body = None
        try:
            body = await _read_body(request, options)
            reason = verify(body, request.headers.get("stripe-signature"), secrets, options.tolerance_s)
            if reason is not None:
                raise _Refused(reason)
            event = _parse(body)
            if event is not None and (why := unusable(event, live, served, served.key_env)) is not None:
                return deliveries.ignore(request, why, event)
            if event is None or not _well_formed(event):
                raise _Refused("not a Stripe event")
        except _Refused as refusal:
            return deliveries.refused(request, refusal, body)
        except ClientDisconnect:
            return deliveries.disconnected(request)
        inbox: Inbox = state["inbox"]
        pipeline = served.route(event)[0] or ""  # unusable() answered for an event without one
        try:
            new = await run_in_threadpool(inbox.add, pipeline, event["id"], event["created"], body.decode("utf-8"))
        except StripeSfError as exc:  # the state store cannot keep it now: Stripe retries a 503
            log.error("Could not keep event %s in the inbox: %s. Stripe delivers it again.", event["id"], exc)
            return PlainTextResponse("state store unavailable\n", status_code=503)
        metrics.received.inc()
        if new and (worker := state["workers"].get(pipeline)) is not None:
            worker.wake()
        elif not new:
            metrics.duplicates.inc()
        return JSONResponse({"received": True, "duplicate": not new})

    return webhook
