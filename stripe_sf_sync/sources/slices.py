"""Backfill's parallel listing: one object type's `created` range cut into time slices, as Airbyte's Stripe
source slices its streams, each slice listed newest first on its own thread with created[gte]/created[lt],
by a bounded number of workers.

Workers only read from Stripe (through `StripeSource`, whose pacing they share) and put pages into a bounded
queue; the one consumer, on the run's thread, builds the batches, writes to Salesforce and commits. A slice's
progress is its last page's id: `--resume` continues every slice from its own.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from stripe_sf_sync.pipeline.stop import Stop
from stripe_sf_sync.stripe.source import StripeSource

log = logging.getLogger("stripe_sf_sync")

# Slices per worker: slices of equal time hold unequal numbers of objects (an account grows), so a worker that
# finishes a sparse slice takes the next one instead of idling while another lists a dense one.
SLICES_PER_WORKER = 4
# Pages waiting for the consumer: at least this many per worker, and up to a chunk's worth (`ahead`), so that
# the next chunk is listed while the consumer writes one; never more than MAX_PAGES_AHEAD, so that memory does
# not grow with the history or the chunk size (a page is 100 slimmed objects, about 150 KB).
PAGES_PER_WORKER = 2
MAX_PAGES_AHEAD = 50
_POLL_S = 0.2  # how often a blocked worker or the consumer looks at the stop flag
_JOIN_S = 60.0  # an in-flight request ends within its timeout; a worker still alive after this is reported


def plan_slices(since: int, until: int | None, now: int, count: int) -> list[dict[str, Any]]:
    """`count` slices of equal time over [since, until or now), newest first. Without `until`, the newest is
    open-ended, so an object created while the backfill runs is listed too, as a single listing would."""
    end = until if until is not None else max(now, since + 1)
    count = max(1, min(count, end - since))
    bounds = [since + (end - since) * i // count for i in range(count + 1)]
    slices = [{"gte": bounds[i], "lt": bounds[i + 1], "last_id": None, "finished": False} for i in range(count)]
    slices[-1]["lt"] = until
    return slices[::-1]


@dataclass
class Page:
    """A page of one slice (`last_id` its oldest id), or the slice's end (`last_id` None, no objects)."""

    slice: int
    objects: list[Any]  # what `keep` made of the page's objects
    last_id: str | None
    listed: int = 0  # objects on the page before the relevance filter


class _Failed:
    """A worker's error, raised again on the consumer's thread."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()  # a worker has no slice left


class SliceListing:
    """The open slices of one object type, listed by up to `workers` threads into a bounded queue.

    Use it as a context manager: leaving it (the end, a stop, an error) stops the workers and joins them, so
    that none outlives the run. `keep` turns a raw page into what the consumer needs (backfill: the relevant
    objects, slimmed, and their events as a batch holds them): done on the worker, so that the queue holds
    small pages and that work overlaps with the consumer's waits on Salesforce. `ahead`: pages the workers may read
    ahead of the consumer (a chunk's worth, see MAX_PAGES_AHEAD).
    """

    def __init__(self, source: StripeSource, kind: str, slices: list[dict[str, Any]], *, workers: int,
                 keep: Callable[[list[dict[str, Any]]], list[Any]], ahead: int = 0) -> None:
        self._source = source
        self._kind = kind
        self._slices = [dict(s) for s in slices]  # the workers' copy: the consumer's changes as it commits
        self._keep = keep
        self._todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        open_ = [i for i, s in enumerate(slices) if not s.get("finished")]
        for i in open_:
            self._todo.put(i)
        count = max(1, min(workers, len(open_)))
        self._out: queue.Queue[Any] = queue.Queue(maxsize=max(PAGES_PER_WORKER * count, min(ahead, MAX_PAGES_AHEAD)))
        self._cancel = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"backfill-{kind}-{n}", daemon=True)
                         for n in range(count)] if open_ else []

    def __enter__(self) -> SliceListing:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pages(self, stop: Stop) -> Iterator[Page]:
        """Pages as the workers read them (each slice's in its order) until every slice ends, or a stop is
        asked for; a worker's error is raised here."""
        running = len(self._threads)
        while running and not stop.requested:
            try:
                item = self._out.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _DONE:
                running -= 1
            elif isinstance(item, _Failed):
                raise item.exc
            else:
                yield item

    def close(self) -> None:
        """Stop the workers at their next page and wait for them (a request in flight ends within its timeout)."""
        self._cancel.set()
        deadline = time.monotonic() + _JOIN_S
        while time.monotonic() < deadline and any(t.is_alive() for t in self._threads):
            self._drain()  # a worker blocked on a full queue sees the flag once there is room
            for t in self._threads:
                t.join(_POLL_S)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("backfill: %s still waiting for Stripe after the stop; it ends with its request",
                        ", ".join(alive))

    def _drain(self) -> None:
        try:
            while True:
                self._out.get_nowait()
        except queue.Empty:
            return

    def _work(self) -> None:
        """Take slices until none is left; list each from its last id. Every exit tells the consumer."""
        try:
            while not self._cancel.is_set():
                try:
                    index = self._todo.get_nowait()
                except queue.Empty:
                    break
                if not self._list(index):
                    break
        except BaseException as exc:  # raised again on the consumer's thread: the run decides
            self._put(_Failed(exc))
        finally:
            self._source.end_thread()
            self._put(_DONE)

    def _list(self, index: int) -> bool:
        """One slice's pages, then its end; False once cancelled."""
        s = self._slices[index]
        for raw in self._source.list_pages(self._kind, since=s["gte"], until=s["lt"], starting_after=s["last_id"]):
            if not self._put(Page(index, self._keep(raw), raw[-1]["id"], len(raw))) or self._cancel.is_set():
                return False
        return self._put(Page(index, [], None))

    def _put(self, item: Any) -> bool:
        """Queue `item`, waiting for room; False (not queued) once cancelled, except the last word (_DONE)."""
        while True:
            try:
                self._out.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                if self._cancel.is_set():
                    return False
