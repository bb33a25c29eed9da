"""`stripe-sf serve`: a verified Stripe webhook receiver, a faster trigger for the same pipeline.

The receiver verifies each delivery's `Stripe-Signature` against the raw body (api-facts.md §4), keeps the
event in the state's inbox (deduplicated by id) and only then answers 200. One worker thread drains the
inbox through the batch step (`InboxEvents`, committed with its entries marked done), under the same run
lock as `sync`, and every `--sync-every` runs the cursor sync as the safety net for missed deliveries. The
ledger makes the two ways in apply each event once.

Authentic events it cannot use (a connected account's, a thin event, the other mode's) are acknowledged and
counted, not applied: Stripe retries any non-2xx for three days. Refusals are logged, rate limited. What a
client can hold is bounded: connections, the time to send headers and body, the body's size (issue 20 §4).

Starlette and uvicorn are the optional [server] extra: this module is imported only by `stripe-sf serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import orjson
import stripe
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from stripe_sf_sync.config import require_org_values
from stripe_sf_sync.errors import ConfigError, LockHeldError, StripeSfError
from stripe_sf_sync.pipeline import BatchResult, InboxEvents, RunSummary
from stripe_sf_sync.salesforce.sink import SalesforceGateway
from stripe_sf_sync.service.recorded import recorded_run
from stripe_sf_sync.service.runtime import Environment, Runtime, clients
from stripe_sf_sync.service.sync import apply_sync
from stripe_sf_sync.state import InboxEntry, StateStore
from stripe_sf_sync.stripe.source import StripeSource

log = logging.getLogger("stripe_sf_sync")

TOLERANCE_S = 300  # the SDK's default: a delivery signed longer ago is refused as a replay (api-facts.md §4)
MAX_BODY_BYTES = 1024 * 1024  # Stripe's event payloads are far smaller; anything larger is not one
DRAIN_LIMIT_BATCHES = 4  # a drain reads at most this many batches, so a stop waits for little
RETRY_S = 1.0  # the run lock held (a cron `sync`), or nothing pending: look again after this
BACKOFF_MAX_S = 60.0  # a failing drain (Salesforce down) waits longer each time, up to this
BATCH_WINDOW_S = 0.5  # a delivery waits this long for others to share its drain (receipt-to-write p95 < 2 s)
MAX_CONNECTIONS = 100  # open connections at most; beyond them uvicorn answers 503 (Stripe retries)
HEADER_TIMEOUT_S = 10.0  # a new connection's request line and headers must arrive within this
BODY_TIMEOUT_S = 10.0  # and its body within this once the headers are in
KEEP_ALIVE_S = 5  # an idle kept-alive connection is closed after this (uvicorn's default)
HOUSEKEEPING_S = 60.0  # the inbox and the runs table are pruned at most this often
KEEP_SERVE_RUNS = 1000  # inbox drains kept in the runs table (`status` shows the newest)
LOG_PER_MINUTE = 20  # refused, ignored or broken deliveries logged one by one each minute; the rest counted
MAX_DEPTH = 64  # JSON nesting a delivery may have; Stripe's events nest about ten levels
MAX_CREATED = 253402300799  # 9999-12-31T23:59:59Z: a `created` beyond any timestamp is not one (and overflows)

SIGNING_HINT = ("Export STRIPE_WEBHOOK_SECRET with the endpoint's signing secret (whsec_…, shown on the "
               "endpoint's page in the Dashboard); during a rotation give both, comma-separated.")


@dataclass(frozen=True)
class ServeOptions:
    """Where to listen and how often the safety-net sync runs (0: never)."""

    host: str = "127.0.0.1"
    port: int = 8080
    path: str = "/stripe/webhook"
    sync_every_s: float = 300.0
    max_body: int = MAX_BODY_BYTES
    tolerance_s: int = TOLERANCE_S
    batch_window_s: float = BATCH_WINDOW_S
    max_connections: int = MAX_CONNECTIONS
    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S


def webhook_secrets(env: Mapping[str, str]) -> list[str]:
    """STRIPE_WEBHOOK_SECRET: one or more signing secrets, comma-separated (several while rotating)."""
    secrets = [s.strip() for s in env.get("STRIPE_WEBHOOK_SECRET", "").split(",") if s.strip()]
    if not secrets:
        raise ConfigError(["STRIPE_WEBHOOK_SECRET is not set"], source="environment", hint=SIGNING_HINT)
    return secrets


def key_livemode(env: Mapping[str, str]) -> bool:
    """Whether STRIPE_API_KEY is a live key: a live event must not be applied with a test key, nor the reverse."""
    return env.get("STRIPE_API_KEY", "").startswith(("sk_live_", "rk_live_"))


def verify(body: bytes, header: str | None, secrets: Sequence[str], tolerance: int) -> str | None:
    """None when one of `secrets` signed `body` within `tolerance` seconds; else why not, in a few words
    (missing, malformed, wrong or stale signature). The SDK checks the signature before the timestamp, so
    a stale one was signed by a known secret (api-facts.md §4)."""
    if not header:
        return "missing signature"
    try:
        # On text: from 12.0.0 to 15.3.1 `verify_header` formats the payload as given ("%d.%s"), so bytes
        # never match; 16.x decodes first (api-facts.md §4, stripe-python `stripe/_webhook.py`).
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8"
    reasons: list[str] = []
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, header, secret, tolerance)
            return None
        except stripe.SignatureVerificationError as exc:
            reasons.append(_reason(str(exc)))
    for reason in ("stale timestamp", "malformed signature"):
        if reason in reasons:
            return reason
    return reasons[0]


def _reason(message: str) -> str:
    """The SDK's message, in the few words a 400 and a metric label carry."""
    if message.startswith("Timestamp outside the tolerance zone"):
        return "stale timestamp"
    if message.startswith(("Unable to extract", "No signatures found with expected scheme")):
        return "malformed signature"
    return "wrong signature"


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
    """The receiver's Prometheus metrics, in a registry of its own (GET /metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
        self.drains = Counter("stripe_sf_inbox_drains", "Inbox drains run by the worker.", registry=r)
        self.applied = Counter("stripe_sf_events_applied", "Events applied to Salesforce (inbox and safety-net "
                               "sync).", registry=r)
        self.dead_lettered = Counter("stripe_sf_events_dead_lettered", "Events dead-lettered.", registry=r)
        self.inbox_depth = Gauge("stripe_sf_inbox_depth", "Inbox entries not applied yet.", registry=r)
        self.api_used = Gauge("stripe_sf_salesforce_api_used", "The org's daily API requests used, as last "
                              "seen.", registry=r)
        self.api_max = Gauge("stripe_sf_salesforce_api_max", "The org's daily API request allowance.", registry=r)
        self.salesforce_calls = Counter("stripe_sf_salesforce_calls", "Salesforce API calls made.", registry=r)
        self.latency = Histogram("stripe_sf_pipeline_latency_seconds", "From receipt to the committed outcome.",
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300), registry=r)
        self.last_salesforce_ok = Gauge("stripe_sf_salesforce_last_success_timestamp_seconds",
                                        "When a run last finished with Salesforce calls that all succeeded.",
                                        registry=r)


class SharedGateway:
    """One Salesforce login for the server's life (a login per drain would cost a call each time); each run
    gets it with its call count at zero, so the run's summary counts its own calls."""

    def __init__(self, make: Callable[[], SalesforceGateway]) -> None:
        self._make = make
        self._gw: SalesforceGateway | None = None

    def __call__(self) -> SalesforceGateway:
        if self._gw is None:
            self._gw = self._make()
        self._gw.usage.calls = 0
        return self._gw


class Worker:
    """The one thread that drains the inbox (and runs the safety-net sync), each under the run lock."""

    def __init__(self, runtime: Runtime, metrics: Metrics, *, sync_every_s: float,
                 batch_window_s: float = BATCH_WINDOW_S) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.sync_every_s = sync_every_s
        self.batch_window_s = batch_window_s
        self.last_salesforce_ok: float | None = None
        # Told (event id, seconds from receipt to its committed outcome) for each drained entry (benchmarks).
        self.observers: list[Callable[[str, float], None]] = []
        self._sf = SharedGateway(clients(runtime)[1])
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stripe-sf-worker", daemon=True)
        self._next_sync = time.monotonic() + sync_every_s if sync_every_s > 0 else None
        self._pending = True  # drain once at start: entries acknowledged before a restart
        self._gather = False  # woken by a delivery: wait the batch window for others before draining
        self._pacing: StripeSource | None = None  # the first run's Stripe pacers, shared by every later run
        self._next_housekeeping = 0.0

    def start(self) -> None:
        """Start draining."""
        self._thread.start()

    def wake(self) -> None:
        """An entry was added: drain it, with what else arrives within the batch window."""
        self._pending = True
        self._gather = True
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the drain under way (its batches are committed), then stop."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        pause = 0.0
        while not self._stopping.is_set():
            if pause:
                self._wake.wait(pause)
            self._wake.clear()
            if self._stopping.is_set():
                break
            pause = self._step(pause)
        if self._pending:
            # Stopping (SIGTERM): the receiver has answered its last request; apply what it acknowledged
            # since the last drain, once. What this cannot apply stays in the inbox for the next start.
            self._next_sync = None
            self._step(0.0)

    def _step(self, pause: float) -> float:
        """One drain or sync; the pause before the next step."""
        try:
            if self._next_sync is not None and time.monotonic() >= self._next_sync:
                self._sync()
                self._next_sync = time.monotonic() + self.sync_every_s
            elif self._pending:
                if self._gather and self.batch_window_s > 0:
                    # One drain for what arrives within the window: its lookups and writes are shared, so a
                    # steady stream costs Salesforce calls per batch rather than per event (issue 20 §4).
                    self._stopping.wait(self.batch_window_s)
                self._gather = False
                self._pending = False
                return self._drain()
            return RETRY_S
        except LockHeldError:
            self._pending = True
            log.debug("The run lock is held (a `stripe-sf sync`?); the inbox is drained when it is released.")
            return RETRY_S
        except StripeSfError as exc:
            self._pending = True
            wait = min(max(pause * 2, 2.0), BACKOFF_MAX_S)
            log.error("The worker's run failed: %s; the events stay in the inbox, retried in %.0f s. %s", exc,
                      wait, exc.hint or "")
            return wait
        except Exception:
            self._pending = True
            log.exception("unexpected error in the worker; the events stay in the inbox and are retried")
            return BACKOFF_MAX_S

    def _drain(self) -> float:
        """Apply what the inbox holds, as one recorded run; the pause before the next step."""
        size = self.runtime.loaded.settings.sync.batch_size
        limit = size * DRAIN_LIMIT_BATCHES
        summary = RunSummary("serve")
        self.metrics.drains.inc()
        with self._run(summary) as run:
            source = InboxEvents(run.state, batch_size=size, limit=limit, applied=self._applied)
            run.apply(source)
            self.metrics.inbox_depth.set(run.state.inbox_depth())
            if time.monotonic() >= self._next_housekeeping:
                # Bounded, and at most once a minute: not a scan of every applied row per drain (issue 20 §4).
                run.state.prune_inbox(int(self.runtime.environment.clock()))
                run.state.prune_runs("serve", KEEP_SERVE_RUNS)
                self._next_housekeeping = time.monotonic() + HOUSEKEEPING_S
        if summary.stopped_early:
            # The org's API budget is spent: what is left waits in the inbox, tried again later.
            self._pending = True
            return BACKOFF_MAX_S
        if summary.events_read >= limit:
            self._pending = True  # a full drain: more may wait
            return 0.0
        return RETRY_S

    def _sync(self) -> None:
        """The cursor sync, as `stripe-sf sync` runs it: missed or disabled deliveries are caught up."""
        summary = RunSummary("sync")
        try:
            with self._run(summary) as run:
                apply_sync(run, self.runtime)
        except ConfigError as exc:
            if exc.source != "invocation":
                raise
            log.warning("The safety-net sync cannot run: %s. %s", exc, exc.hint or "")

    @contextlib.contextmanager
    def _run(self, summary: RunSummary) -> Iterator[Any]:
        """A recorded run (the state lock, the run record); its counts go to the metrics however it ends."""
        ok = False
        try:
            with recorded_run(self.runtime, summary, self._stripe_source(), self._sf) as run:
                yield run
                ok = True
        finally:
            self._count(summary)
        if ok and summary.salesforce_calls:
            self.last_salesforce_ok = time.time()
            self.metrics.last_salesforce_ok.set(self.last_salesforce_ok)

    def _stripe_source(self) -> StripeSource:
        """A Stripe source for one run (its caches are the run's), paced with every other run's: Stripe's
        limits are per account, and a fresh pace per drain would start over at full speed after a 429."""
        source = self.runtime.stripe_source()
        if self._pacing is None:
            self._pacing = source
        else:
            source.pace_as(self._pacing)
        return source

    def _count(self, summary: RunSummary) -> None:
        m = self.metrics
        m.applied.inc(summary.applied)
        m.dead_lettered.inc(summary.dead_lettered)
        m.salesforce_calls.inc(summary.salesforce_calls)
        if summary.salesforce_api_used is not None:
            m.api_used.set(summary.salesforce_api_used)
            m.api_max.set(summary.salesforce_api_max or 0)

    def _applied(self, entries: list[InboxEntry], result: BatchResult) -> None:
        now = time.time()
        for entry in entries:
            seconds = max(0.0, now - entry.received_at)
            self.metrics.latency.observe(seconds)
            for observe in self.observers:
                observe(entry.event_id, seconds)


class Inbox:
    """The receiver's side of the inbox: one connection, used by one request thread at a time."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._lock = threading.Lock()

    def add(self, event_id: str, created: int, payload: str) -> bool:
        """Keep a verified event (committed before the 200 goes back); False for a duplicate."""
        with self._lock:
            return self.store.inbox_add(event_id, created, payload, time.time())

    def depth(self) -> int:
        """Pending entries (also proves the state store answers)."""
        with self._lock:
            return self.store.inbox_depth()


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


def unusable(event: Mapping[str, Any], live: bool) -> str | None:
    """Why an authentic event is not for this receiver to apply, or None. Acknowledged all the same: Stripe
    retries any non-2xx for three days, and no retry would change these (issue 19 §4, api-facts.md §4)."""
    if event.get("object") == "v2.core.event" or isinstance(event.get("created"), str):
        return "thin event"  # an event destination's thin event: no `data`, `created` an ISO string
    if event.get("account"):
        return "connected account"  # a connected account's objects are read with Stripe-Account; unsupported
    if bool(event.get("livemode")) != live:
        return "livemode differs from STRIPE_API_KEY's mode"
    return None


def _well_formed(event: Mapping[str, Any]) -> bool:
    """An id and a `created` the store can hold (a too large one overflowed into a 500)."""
    created = event.get("created")
    return (isinstance(event.get("id"), str) and bool(event["id"]) and isinstance(created, int)
            and not isinstance(created, bool) and 0 <= created <= MAX_CREATED)


class _Deliveries:
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
            log.warning("Acknowledged and ignored event %s (%s) from %s: %s; nothing applied.", event.get("id"),
                        event.get("type"), _client(request), reason)
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


def _event_id_of(body: bytes | None) -> str:
    """`, event evt_…` when the (unverified) body names one, for the operator to look up in the Dashboard."""
    event = _parse(body) if body else None
    event_id = event.get("id") if event else None
    return f", event {event_id[:64]}" if isinstance(event_id, str) and event_id else ""


def _webhook(options: ServeOptions, secrets: Sequence[str], live: bool, deliveries: _Deliveries,
             state: dict[str, Any]) -> Callable[[Request], Awaitable[Response]]:
    """The webhook route: verify the signature on the raw body, then keep the event in the inbox before the
    2xx goes back (Stripe's webhook signatures: `t=…,v1=…`, HMAC-SHA256 of `t.body`)."""
    metrics = deliveries.metrics

    async def webhook(request: Request) -> Response:
        body = None
        try:
            body = await _read_body(request, options)
            reason = verify(body, request.headers.get("stripe-signature"), secrets, options.tolerance_s)
            if reason is not None:
                raise _Refused(reason)
            event = _parse(body)
            if event is not None and (why := unusable(event, live)) is not None:
                return deliveries.ignore(request, why, event)
            if event is None or not _well_formed(event):
                raise _Refused("not a Stripe event")
        except _Refused as refusal:
            return deliveries.refused(request, refusal, body)
        except ClientDisconnect:
            return deliveries.disconnected(request)
        inbox: Inbox = state["inbox"]
        try:
            new = await run_in_threadpool(inbox.add, event["id"], event["created"], body.decode("utf-8"))
        except StripeSfError as exc:  # the state store cannot keep it now: Stripe retries a 503
            log.error("Could not keep event %s in the inbox: %s. Stripe delivers it again.", event["id"], exc)
            return PlainTextResponse("state store unavailable\n", status_code=503)
        metrics.received.inc()
        if new and state["worker"] is not None:
            state["worker"].wake()
        elif not new:
            metrics.duplicates.inc()
        return JSONResponse({"received": True, "duplicate": not new})

    return webhook


def build_app(runtime: Runtime, options: ServeOptions, *, worker: bool = True) -> Starlette:
    """The ASGI app: the webhook route, health, readiness and metrics; the worker runs for its lifespan.
    `worker=False` receives only (tests of the receiver alone)."""
    env = runtime.environment.env
    secrets = webhook_secrets(env)
    live = key_livemode(env)
    metrics = Metrics()
    state: dict[str, Any] = {}

    deliveries = _Deliveries(metrics, len(secrets))
    webhook = _webhook(options, secrets, live, deliveries, state)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        w: Worker | None = state["worker"]
        last = w.last_salesforce_ok if w is not None else None
        try:
            depth = await run_in_threadpool(state["inbox"].depth)
        except StripeSfError as exc:
            return JSONResponse({"ready": False, "state": str(exc), "last_salesforce_success": last},
                                status_code=503)
        return JSONResponse({"ready": True, "state": "ok", "inbox_depth": depth, "last_salesforce_success": last})

    async def metrics_view(request: Request) -> Response:
        with contextlib.suppress(StripeSfError):
            metrics.inbox_depth.set(await run_in_threadpool(state["inbox"].depth))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = runtime.open_state()
        state["inbox"] = Inbox(store)
        state["worker"] = (Worker(runtime, metrics, sync_every_s=options.sync_every_s,
                                  batch_window_s=options.batch_window_s) if worker else None)
        if state["worker"] is not None:
            state["worker"].start()
        log.info("Receiving Stripe webhooks on http://%s:%d%s", options.host, options.port, options.path)
        try:
            yield
        finally:
            # uvicorn has stopped taking requests and finished those in flight: let the drain under way end.
            if state["worker"] is not None:
                state["worker"].stop()
            store.close()
            deliveries.flush()

    app = Starlette(routes=[Route(options.path, webhook, methods=["POST"]), Route("/healthz", healthz),
                            Route("/readyz", readyz), Route("/metrics", metrics_view)], lifespan=lifespan)
    app.state.metrics = metrics
    app.state.runtime_state = state
    return app


class _Server(uvicorn.Server):
    """uvicorn, without raising the signal again after its graceful shutdown: SIGTERM ends `serve` with exit
    0 once in-flight requests and the worker's drain are done."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on a new connection's request line and headers: uvicorn arms
    its keep-alive timer only after a first response, so a connection that never sends a request held a file
    descriptor for as long as its client liked (300 idle ones exhausted them; issue 20 §4)."""

    header_timeout_s = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.loop.call_later(self.header_timeout_s, self._headers_due)

    def _headers_due(self) -> None:
        if self.cycle is None and self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()  # no request began: nothing to answer


def server(runtime: Runtime, options: ServeOptions, *, worker: bool = True) -> uvicorn.Server:
    """A uvicorn server for the app (tests run it in a thread with `worker=False` or True), its connections
    bounded: at most `max_connections` open (then 503, which Stripe retries), a deadline for a new
    connection's headers and for each body (in the handler), idle kept-alive ones closed after 5 s."""
    protocol = type("Protocol", (_Protocol,), {"header_timeout_s": options.header_timeout_s})
    config = uvicorn.Config(build_app(runtime, options, worker=worker), host=options.host, port=options.port,
                            log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=30,
                            http=protocol, limit_concurrency=options.max_connections,
                            timeout_keep_alive=KEEP_ALIVE_S)
    return _Server(config)


def prepare(config_path: Path | None, environment: Environment) -> Runtime:
    """Everything `serve` needs, checked before it listens: the config, both APIs' secrets and the signing
    secrets."""
    runtime = Runtime(config_path, environment)
    require_org_values(runtime.loaded.settings, str(runtime.loaded.path))
    clients(runtime)
    webhook_secrets(environment.env)
    return runtime


def run_serve(config_path: Path | None, environment: Environment, options: ServeOptions) -> int:
    """`stripe-sf serve`: listen until SIGTERM or Ctrl-C, then drain what is in flight; exit code 0."""
    runtime = prepare(config_path, environment)
    srv = server(runtime, options)
    srv.run()
    if not srv.started:
        raise ConfigError([f"could not listen on {options.host}:{options.port}"], source="invocation",
                          hint="Another program may use that port: pass --port, or stop it.")
    return 0
