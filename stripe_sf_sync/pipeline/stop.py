"""Stopping a run on request. SIGINT (Ctrl-C) and SIGTERM (what cron's `timeout`, systemd and Kubernetes
send) ask the run to stop at the next batch or page boundary, with every finished outcome committed; a
second signal aborts at once. The run loop (`run_batches`, between batches) and the sources that read for
a long time before they yield a batch (sync's event pages, backfill's list pages) check the same `Stop`.

Within a batch, the batch step stops between its per-event Stripe calls once the stop is `GRACE_S` old (a
chunk of failed invoices, one call each, took minutes): the events done so far are written and committed with
the matching cursor or checkpoint, so that every command stops within seconds (Kubernetes kills after 30 s by
default, systemd after 90 s). The grace lets a batch that is nearly done finish rather than be cut."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

log = logging.getLogger("stripe_sf_sync")

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 2.0  # how long the batch in flight goes on after a stop is asked before it is cut


class Aborted(KeyboardInterrupt):
    """A second signal: stop now. The open batch is not committed (its transaction rolls back), and the next
    run repeats it idempotently. A KeyboardInterrupt, so everything that cleans up after Ctrl-C does so."""

    def __init__(self, signal_name: str, exit_code: int) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = exit_code


class Abandoned(BaseException):
    """A stop asked for during a wait that can be left (a Bulk API job being polled): the batch in flight is not
    committed, and the next run repeats it (its writes are idempotent upserts and updates). A BaseException, so
    that no retry loop (`except Exception`) takes it for a failed call."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class Stop:
    """Whether a stop was asked for, and by which signal."""

    def __init__(self) -> None:
        self.signal: str | None = None  # "SIGINT" or "SIGTERM", once asked
        self.exit_code: int | None = None  # 128 + the signal's number, as shells report a signalled process
        self.requested_at: float | None = None  # time.monotonic() when it was asked
        self._leaving: str | None = None  # the wait a stop leaves at once (`abandonable`), while in it

    def overdue(self, grace: float = GRACE_S) -> bool:
        """True once a stop was asked for at least `grace` seconds ago: the batch in flight is cut there."""
        return self.requested_at is not None and time.monotonic() - self.requested_at >= grace

    @property
    def requested(self) -> bool:
        """True once a stop was asked for."""
        return self.signal is not None

    def request(self, signum: int) -> None:
        """Ask the run to stop at the next boundary; a second request aborts at once."""
        name = signal.Signals(signum).name
        if self.requested:
            raise Aborted(name, 128 + signum)
        self.signal, self.exit_code, self.requested_at = name, 128 + signum, time.monotonic()
        # One line, as soon as the signal arrives: a supervisor's SIGKILL may follow before the run ends.
        log.warning("Stopping (%s) within seconds; everything finished so far is saved. "
                    "Send it again to abort at once.", name)
        if self._leaving is not None:
            raise Abandoned(self._leaving)

    @contextlib.contextmanager
    def abandonable(self, what: str) -> Iterator[None]:
        """A wait that a stop leaves at once, raising Abandoned (from the signal handler: only around a call whose
        interruption leaves nothing of ours half-done, such as simple-salesforce polling a Bulk API job, which
        sleeps 5 s and more between polls and which Salesforce may take minutes to finish)."""
        if self.requested:
            raise Abandoned(what)
        self._leaving = what
        try:
            yield
        finally:
            self._leaving = None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Stop]:
    """A `Stop` that SIGINT and SIGTERM request while the block runs. Python lets only the main thread install
    signal handlers: elsewhere (a library caller's worker thread) the signals keep their usual effect."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.request(signum)

    previous: dict[int, Any] = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            # None: the handler was not set from Python; the default is the closest thing to restore.
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
