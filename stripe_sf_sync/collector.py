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
