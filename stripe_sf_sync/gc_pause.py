"""The cyclic garbage collector, paused while a batch is read and while it is applied (issue 14).

Reading a batch builds hundreds of thousands of objects that all stay alive until the batch is applied
(decoded pages, held events, parsed changes), and applying it builds as many more (plans, lookups, writes);
none forms a reference cycle: reference counting frees them. The collector still ran every 700
allocations, and each of its full passes walked everything the batch held: profiled at zero latency, a
third of the sync's CPU. Paused, it catches up once the batch is committed, on what is left then. It is
process-wide: another thread's cycles wait as long, at most one batch (peak RSS did not change).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _Pauses:
    """The blocks that hold the collector paused, counted across threads: a page may be decoded on another
    thread (stripe_source.py, `CountingRequestsClient`) while a batch is applied, and the first block to end
    must not resume the collector under another thread's block. Process-wide, as the collector is."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held = 0
        self.resume = False  # whether the collector ran when the first block paused it


_PAUSES = _Pauses()


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside the block; once no block on any thread holds it, the collector is as it was
    before the first (nesting, and blocks overlapping on several threads, are safe)."""
    with _PAUSES.lock:
        if _PAUSES.held == 0:
            _PAUSES.resume = gc.isenabled()
            gc.disable()
        _PAUSES.held += 1
    try:
        yield
    finally:
        with _PAUSES.lock:
            _PAUSES.held -= 1
            if _PAUSES.held == 0 and _PAUSES.resume:
                gc.enable()
