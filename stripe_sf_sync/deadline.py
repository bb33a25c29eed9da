"""The time one request may take, its retries and their waits included (`stripe.timeout_seconds`,
`salesforce.timeout_seconds`), shared out among its attempts.

Each attempt gets half of what is left, so a stall (one request that never gets its answer) is tried again
within the time, and a server that accepts connections and never answers fails when the time is up, not after
every attempt has waited the whole timeout (6 x 30 s plus waits was 3 min 11 s). A retry's wait is at most a
quarter of what is left, and no attempt starts with less than FLOOR_S left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tenacity import RetryCallState

FLOOR_S = 0.05  # no attempt starts with less time than this left


@dataclass
class Deadline:
    """`total` seconds from `started` (time.monotonic)."""

    total: float
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        """Seconds left."""
        return self.total - (time.monotonic() - self.started)

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.started

    def attempt_timeout(self) -> float:
        """The next attempt's timeout: half of what is left (all of it when that is little)."""
        left = self.left()
        return max(FLOOR_S, left / 2 if left > 4 * FLOOR_S else left)

    def stop(self, max_attempts: int) -> Callable[[RetryCallState], bool]:
        """A tenacity stop: the attempts are spent, or too little time is left for another."""
        return lambda state: state.attempt_number >= max_attempts or self.left() - _upcoming(state) < FLOOR_S

    def wait(self, base: Callable[[RetryCallState], float]) -> Callable[[RetryCallState], float]:
        """A tenacity wait: `base`, at most a quarter of what is left."""
        return lambda state: max(0.0, min(base(state), self.left() / 4))


def _upcoming(state: RetryCallState) -> float:
    return float(getattr(state, "upcoming_sleep", 0.0) or 0.0)
