"""The ASGI app (the webhook route, /healthz, /readyz, /metrics; a worker per served pipeline for its lifespan)
and the uvicorn server around it, its connections bounded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import h11
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from stripe_sf_sync.config import require_org_values
from stripe_sf_sync.errors import ConfigError, StripeSfError
from stripe_sf_sync.serve.deliveries import Deliveries, Inbox, Metrics, webhook_route
from stripe_sf_sync.serve.options import (
    HEADER_TIMEOUT_S,
    KEEP_ALIVE_S,
    PARALLEL_RUNS,
    ServeOptions,
    key_livemode,
    webhook_secrets,
)
from stripe_sf_sync.serve.routing import served
from stripe_sf_sync.serve.worker import Worker
from stripe_sf_sync.service.runtime import Environment, Runtime, check_secrets

log = logging.getLogger("stripe_sf_sync")


def build_app(runtime: Runtime, options: ServeOptions, *, worker: bool = True) -> Starlette:
    """The ASGI app: the webhook route, health, readiness and metrics; a worker per served pipeline runs for its
    lifespan. `worker=False` receives only (tests of the receiver alone)."""
    env = runtime.environment.env
    secrets = webhook_secrets(env)
    targets = served(runtime.loaded.settings, runtime.environment.account)
    live = key_livemode(env, targets.key_env)
    metrics = Metrics(per_account=targets.named)
    state: dict[str, Any] = {"workers": {}}

    deliveries = Deliveries(metrics, len(secrets))
    webhook = webhook_route(options, secrets, live, deliveries, state, targets)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        lasts = {name: w.last_salesforce_ok for name, w in state["workers"].items()}
        last = max((t for t in lasts.values() if t is not None), default=None)
        try:
            depths = await run_in_threadpool(state["inbox"].depths)
        except StripeSfError as exc:
            return JSONResponse({"ready": False, "state": str(exc), "last_salesforce_success": last},
                                status_code=503)
        ready = {"ready": True, "state": "ok", "inbox_depth": sum(depths.values()), "last_salesforce_success": last}
        if targets.named:  # each pipeline's, by account
            ready["accounts"] = {name: {"inbox_depth": depth, "last_salesforce_success": lasts.get(name)}
                                 for name, depth in depths.items()}
        return JSONResponse(ready)

    async def metrics_view(request: Request) -> Response:
        with contextlib.suppress(StripeSfError):
            for name, depth in (await run_in_threadpool(state["inbox"].depths)).items():
                metrics.pipeline(name).inbox_depth.set(depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        every = [runtime.for_pipeline(p) for p in targets.pipelines]
        store = every[0].open_state()  # the home pipeline's first: it may adopt the state from before accounts
        state["inbox"] = Inbox({rt.pipeline.name: store.for_pipeline(rt.pipeline.name) for rt in every})
        workers = state["workers"] = _start_workers(every, metrics, options) if worker else {}
        state["worker"] = next(iter(workers.values()), None)  # the home pipeline's (benchmarks read it)
        log.info("Receiving Stripe webhooks on http://%s:%d%s for %s", options.host, options.port, options.path,
                 ", ".join(p.name for p in targets.pipelines))
        try:
            yield
        finally:
            # uvicorn has stopped taking requests and finished those in flight: let the drains under way end.
            for w in workers.values():
                w.stop_soon()
            for w in workers.values():
                w.stop()
            store.close()
            deliveries.flush()

    app = Starlette(routes=[Route(options.path, webhook, methods=["POST"]), Route("/healthz", healthz),
                            Route("/readyz", readyz), Route("/metrics", metrics_view)], lifespan=lifespan)
    app.state.metrics = metrics
    app.state.runtime_state = state
    return app


def _start_workers(every: list[Runtime], metrics: Metrics, options: ServeOptions) -> dict[str, Worker]:
    """A started worker per served pipeline, by name; at most PARALLEL_RUNS of them run at once."""
    slots = threading.BoundedSemaphore(PARALLEL_RUNS)
    workers = {rt.pipeline.name: Worker(rt, metrics, sync_every_s=options.sync_every_s,
                                        batch_window_s=options.batch_window_s, slots=slots) for rt in every}
    for w in workers.values():
        w.start()
    return workers


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
    """Everything `serve` needs, checked before it listens: the config, which pipelines it serves (a usage error
    when that is ambiguous), every served pipeline's secrets, both APIs' at once, and the signing secrets."""
    runtime = Runtime(config_path, environment)
    require_org_values(runtime.loaded.settings, str(runtime.loaded.path))
    check_secrets([runtime.for_pipeline(p) for p in served(runtime.loaded.settings, environment.account).pipelines])
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
