"""Stripe's read allocation: the Stripe reads stripe-sf made in the last 30 days.

Stripe allocates read requests per account over 30 days (500 per transaction, at least 10,000 a month), and
polling counts against it: a quiet `*/5` cron makes 8,640 reads a month, a `*/1` one 43,200
(docs.stripe.com/rate-limits, "Read allocation"; api-facts.md §3). stripe-sf only reads Stripe, so every
Stripe request of a run is a read. Each run adds its requests to the day's tally in state (one meta row of
day -> reads, the days before the window dropped), and `status` and the metrics file sum the window.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Protocol

READS_KEY = "stripe_reads_by_day"
WINDOW_DAYS = 30


class MetaState(Protocol):
    """The two state calls this needs."""

    def get_meta(self, key: str) -> str | None:
        """A stored value."""

    def set_meta(self, key: str, value: str) -> None:
        """Store a value."""


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).date().isoformat()


def _tally(state: MetaState) -> dict[str, int]:
    try:
        raw = json.loads(state.get_meta(READS_KEY) or "{}")
    except ValueError:
        return {}
    return {str(k): int(v) for k, v in raw.items() if isinstance(v, int)} if isinstance(raw, dict) else {}


def _window(tally: dict[str, int], now: float) -> dict[str, int]:
    """The days of the last WINDOW_DAYS (today included)."""
    first = (datetime.fromtimestamp(now, tz=UTC).date() - timedelta(days=WINDOW_DAYS - 1)).isoformat()
    return {day: n for day, n in tally.items() if day >= first}


def record_reads(state: MetaState, reads: int, now: float) -> None:
    """Add a run's Stripe requests to today's tally (the caller holds the run lock: no lost update)."""
    if reads <= 0:
        return
    tally = _window(_tally(state), now)
    today = _day(now)
    tally[today] = tally.get(today, 0) + reads
    state.set_meta(READS_KEY, json.dumps(dict(sorted(tally.items()))))


def reads_last_30_days(state: MetaState, now: float) -> int:
    """The Stripe reads recorded in the last 30 days."""
    return sum(_window(_tally(state), now).values())


def monthly_reads(runs_per_day: float, reads_per_run: float = 1.0) -> int:
    """What a schedule costs over 30 days: a quiet run reads once (its event page, lookback included)."""
    return round(runs_per_day * reads_per_run * WINDOW_DAYS)
