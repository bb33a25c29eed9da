"""A heartbeat for runs off a terminal: a log line at least every `sync.heartbeat_seconds` (30 by default) that
says the run is alive and where it is, so that a cron log or a supervisor shows a long step (a chunk of
thousands of invoices, a Bulk API job) as progress rather than as a hang. On a terminal the live progress
display does that job instead."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from stripe_sf_sync.health import iso, span
from stripe_sf_sync.logs import fields

log = logging.getLogger("stripe_sf_sync")

DEFAULT_HEARTBEAT_S = 30


@dataclass
class Activity:
    """Where a run is: told by the run loop and the batch step, read by the heartbeat's thread (plain
    attribute writes: a line may mix two moments, never tear a value)."""

    step: str = "starting"
    committed: int = 0  # events (backfill: objects) whose outcome is committed
    newest_created: int | None = None  # the newest committed event's `created` (sync: how current it is)

    def note(self, step: str) -> None:
        """What the run is doing now."""
        self.step = step

    def committed_to(self, committed: int, last_event: tuple[str, int] | None) -> None:
        """A batch is committed: the run's count so far, and (sync) the cursor's new event."""
        self.committed = committed
        if last_event is not None:
            self.newest_created = last_event[1]
        self.step = "reading the next batch from Stripe"

    def describe(self) -> str:
        """The run's position for people: what is committed, and what it is doing now."""
        word = "event" if self.committed == 1 else "events"
        newest = f", the newest from {iso(self.newest_created)}" if self.newest_created else ""
        return f"{self.committed:,} {word} committed{newest}; now {self.step}"


@contextlib.contextmanager
def heartbeat(command: str, activity: Activity, interval: float) -> Iterator[None]:
    """Log "still running" with `activity` every `interval` seconds while the block runs."""
    done = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not done.wait(interval):
            elapsed = time.monotonic() - started
            log.info("%s still running after %s: %s", command, span(elapsed), activity.describe(),
                     extra=fields(kind="heartbeat", command=command, elapsed_s=round(elapsed, 1),
                                  committed=activity.committed, step=activity.step))

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(1.0)
