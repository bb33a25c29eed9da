"""The plain data the state keeps and hands out: the cursor, an event's outcome, inbox entries, dead letters.

No behaviour and no database here: the pipeline imports these types without importing a store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OutcomeKind = Literal["applied", "stale", "ignored", "dead_letter"]


@dataclass(frozen=True)
class Cursor:
    """The newest event whose outcome is durable."""

    event_id: str
    created: int


@dataclass(frozen=True)
class Outcome:
    """What happened to one event, as committed with its batch."""

    event_id: str
    event_type: str
    created: int
    kind: OutcomeKind
    object_id: str | None = None
    reason: str | None = None
    code: str | None = None
    payload: str | None = None  # JSON of the raw event, kept for dead letters only


@dataclass(frozen=True)
class InboxEntry:
    """A verified webhook event waiting in the inbox (or applied: status 'done')."""

    event_id: str
    created: int
    received_at: float
    payload: str


@dataclass(frozen=True)
class DeadLetter:
    """An event that could not be applied, with everything needed to retry it."""

    event_id: str
    event_type: str
    created: int
    payload: str
    reason: str
    error_code: str
    attempts: int
    first_failed_at: int
    last_failed_at: int
    status: str
