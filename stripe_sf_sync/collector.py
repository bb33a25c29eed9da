"""The cyclic garbage collector, paused while a batch's objects are built (issue 14).

Reading a batch builds hundreds of thousands of objects that all stay alive until the batch is applied
(decoded pages, held events, parsed changes), and none forms a reference cycle: reference counting frees
them. The collector still ran every 700 allocations, and each of its full passes walked everything the
batch held; profiled, that was a third of a zero-latency run's CPU. Paused, it catches up once when
resumed. Process-wide, like the collector: another thread's cycles wait as long, at most a batch.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside the block; the collector is as it was after it (nesting is safe)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
