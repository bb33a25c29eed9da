"""`stripe-sf serve`: a verified Stripe webhook receiver, a faster trigger for the same pipeline.

The receiver verifies each delivery's `Stripe-Signature` against the raw body (api-facts.md §4), keeps the
event in the state's inbox (deduplicated by id) and only then answers 200. One worker thread drains the
inbox through the batch step (`InboxEvents`, committed with its entries marked done), under the same run
lock as `sync`, and every `--sync-every` runs the cursor sync as the safety net for missed deliveries. The
ledger makes the two ways in apply each event once.

Starlette and uvicorn are the optional [server] extra: this module is imported only by `stripe-sf serve`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import stripe
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from stripe_sf_sync.config import require_org_values
from stripe_sf_sync.errors import ConfigError, LockHeldError, StripeSfError
from stripe_sf_sync.pipeline import BatchResult, InboxEvents, RunSummary
from stripe_sf_sync.salesforce_sink import SalesforceGateway
from stripe_sf_sync.service import Environment, Runtime, apply_sync, clients, recorded_run
from stripe_sf_sync.state import InboxEntry, StateStore

log = logging.getLogger("stripe_sf_sync")

TOLERANCE_S = 300  # the SDK's default: a delivery signed longer ago is refused as a replay (api-facts.md §4)
MAX_BODY_BYTES = 1024 * 1024  # Stripe's event payloads are far smaller; anything larger is not one
DRAIN_LIMIT_BATCHES = 4  # a drain reads at most this many batches, so a stop waits for little
RETRY_S = 1.0  # the run lock held (a cron `sync`), or nothing pending: look again after this
BACKOFF_MAX_S = 60.0  # a failing drain (Salesforce down) waits longer each time, up to this

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

    def __init__(self, runtime: Runtime, metrics: Metrics, *, sync_every_s: float) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.sync_every_s = sync_every_s
        self.last_salesforce_ok: float | None = None
        # Told (event id, seconds from receipt to its committed outcome) for each drained entry (benchmarks).
        self.observers: list[Callable[[str, float], None]] = []
        self._sf = SharedGateway(clients(runtime)[1])
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stripe-sf-worker", daemon=True)
        self._next_sync = time.monotonic() + sync_every_s if sync_every_s > 0 else None
        self._pending = True  # drain once at start: entries acknowledged before a restart

    def start(self) -> None:
        """Start draining."""
        self._thread.start()

    def wake(self) -> None:
        """An entry was added: drain now."""
        self._pending = True
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
        with self._run(summary) as run:
            source = InboxEvents(run.state, batch_size=size, limit=limit, applied=self._applied)
            run.apply(source)
            self.metrics.inbox_depth.set(run.state.inbox_depth())
            run.state.prune_inbox(int(self.runtime.environment.clock()))
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
            with recorded_run(self.runtime, summary, self.runtime.stripe_source(), self._sf) as run:
                yield run
                ok = True
        finally:
            self._count(summary)
        if ok and summary.salesforce_calls:
            self.last_salesforce_ok = time.time()
            self.metrics.last_salesforce_ok.set(self.last_salesforce_ok)

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


def _webhook(options: ServeOptions, secrets: Sequence[str], live: bool, metrics: Metrics,
             state: dict[str, Any]) -> Callable[[Request], Awaitable[Response]]:
    """The webhook route: verify the signature on the raw body, then keep the event in the inbox before the
    2xx goes back (Stripe's webhook signatures: `t=…,v1=…`, HMAC-SHA256 of `t.body`)."""

    def reject(reason: str, status: int = 400) -> Response:
        metrics.rejected.labels(reason=reason).inc()
        return PlainTextResponse(reason + "\n", status_code=status)

    async def webhook(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > options.max_body):
            return reject("body too large", 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > options.max_body:
                return reject("body too large", 413)
        reason = verify(bytes(body), request.headers.get("stripe-signature"), secrets, options.tolerance_s)
        if reason is not None:
            return reject(reason)
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        if not (isinstance(event, dict) and isinstance(event.get("id"), str) and event["id"]
                and isinstance(event.get("created"), int) and not isinstance(event.get("created"), bool)):
            return reject("not a Stripe event")
        if bool(event.get("livemode")) != live:
            return reject("livemode differs from STRIPE_API_KEY's mode")
        inbox: Inbox = state["inbox"]
        new = await run_in_threadpool(inbox.add, event["id"], event["created"], body.decode("utf-8"))
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

    webhook = _webhook(options, secrets, live, metrics, state)

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
        state["worker"] = Worker(runtime, metrics, sync_every_s=options.sync_every_s) if worker else None
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


def server(runtime: Runtime, options: ServeOptions, *, worker: bool = True) -> uvicorn.Server:
    """A uvicorn server for the app (tests run it in a thread with `worker=False` or True)."""
    config = uvicorn.Config(build_app(runtime, options, worker=worker), host=options.host, port=options.port,
                            log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=30)
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
