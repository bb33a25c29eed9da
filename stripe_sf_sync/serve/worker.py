"""A pipeline's worker thread: it drains the pipeline's inbox through the batch step (and runs its safety-net
sync), each as a recorded run under the pipeline's run lock, and feeds the metrics.

`serve` runs one worker per served pipeline (issue 26): each keeps its own pending flag, back-off, sync timer and
Stripe pacing, so one pipeline's failure (its lock held, its key refused, Salesforce refusing its writes) delays
only its own drains, and an idle worker is a thread waiting on an Event. `slots`, shared by the workers, bounds
how many of them run at once."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from stripe_sf_sync.errors import ConfigError, LockHeldError, StripeSfError
from stripe_sf_sync.pipeline import BatchResult, RunSummary
from stripe_sf_sync.salesforce.gateway import SalesforceGateway
from stripe_sf_sync.serve.deliveries import Metrics, PipelineMetrics
from stripe_sf_sync.serve.options import (
    BACKOFF_MAX_S,
    BATCH_WINDOW_S,
    DRAIN_LIMIT_BATCHES,
    HOUSEKEEPING_S,
    KEEP_SERVE_RUNS,
    RETRY_S,
)
from stripe_sf_sync.service.recorded import recorded_run
from stripe_sf_sync.service.runtime import Runtime, clients
from stripe_sf_sync.service.sync import apply_sync
from stripe_sf_sync.sources import InboxEvents
from stripe_sf_sync.state import InboxEntry
from stripe_sf_sync.stripe.source import StripeSource

log = logging.getLogger("stripe_sf_sync")


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
    """The thread that drains one pipeline's inbox (and runs its safety-net sync), each under its run lock."""

    def __init__(self, runtime: Runtime, metrics: Metrics, *, sync_every_s: float,
                 batch_window_s: float = BATCH_WINDOW_S, slots: threading.Semaphore | None = None) -> None:
        self.runtime = runtime
        self.name = runtime.pipeline.name
        self.metrics = metrics
        self._m: PipelineMetrics = metrics.pipeline(self.name)
        self._slots = slots if slots is not None else threading.Semaphore(1)
        self.sync_every_s = sync_every_s
        self.batch_window_s = batch_window_s
        self.last_salesforce_ok: float | None = None
        # Told (event id, seconds from receipt to its committed outcome) for each drained entry (benchmarks).
        self.observers: list[Callable[[str, float], None]] = []
        self._sf = SharedGateway(clients(runtime)[1])
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"stripe-sf-worker-{self.name}", daemon=True)
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

    def stop_soon(self) -> None:
        """Ask it to stop after the drain under way, without waiting (every worker is told before any is
        waited for, so that they finish side by side)."""
        self._stopping.set()
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the drain under way (its batches are committed), then stop."""
        self.stop_soon()
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
            log.debug("%s: the run lock is held (a `stripe-sf sync`?); the inbox is drained when it is released.",
                      self.name)
            return RETRY_S
        except StripeSfError as exc:
            self._pending = True
            wait = min(max(pause * 2, 2.0), BACKOFF_MAX_S)
            log.error("%s: the worker's run failed: %s; the events stay in the inbox, retried in %.0f s. %s",
                      self.name, exc, wait, exc.hint or "")
            return wait
        except Exception:
            self._pending = True
            log.exception("%s: unexpected error in the worker; the events stay in the inbox and are retried",
                          self.name)
            return BACKOFF_MAX_S

    def _drain(self) -> float:
        """Apply what the inbox holds, as one recorded run; the pause before the next step."""
        size = self.runtime.loaded.settings.sync.batch_size
        limit = size * DRAIN_LIMIT_BATCHES
        summary = RunSummary("serve")
        self._m.drains.inc()
        with self._run(summary) as run:
            source = InboxEvents(run.state, batch_size=size, limit=limit, applied=self._applied)
            run.apply(source)
            self._m.inbox_depth.set(run.state.inbox_depth())
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
            log.warning("%s: the safety-net sync cannot run: %s. %s", self.name, exc, exc.hint or "")

    @contextlib.contextmanager
    def _run(self, summary: RunSummary) -> Iterator[Any]:
        """A recorded run (the state lock, the run record); its counts go to the metrics however it ends."""
        ok = False
        try:
            with self._slots, recorded_run(self.runtime, summary, self._stripe_source(), self._sf) as run:
                yield run
                ok = True
        finally:
            self._count(summary)
        if ok and summary.salesforce_calls:
            self.last_salesforce_ok = time.time()
            self._m.last_salesforce_ok.set(self.last_salesforce_ok)

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
        m = self._m
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
            self._m.latency.observe(seconds)
            for observe in self.observers:
                observe(entry.event_id, seconds)
