"""What every parsed event shares: its EventMeta, the errors a payload raises, and Unsupported (no parser)."""

from __future__ import annotations

from dataclasses import dataclass, field

from stripe_sf_sync.errors import SkippableError

SUBSCRIPTION_STATUSES = frozenset(
    {"active", "trialing", "past_due", "canceled", "unpaid", "incomplete", "incomplete_expired", "paused"}
)


class MalformedEvent(SkippableError):
    """The payload lacks or mistypes a field a rule needs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, code="MALFORMED_EVENT")


class NoCurrencyOption(MalformedEvent):
    """A subscription is billed in a currency its Price names no amount for: its value is unknown."""

    def __init__(self, reason: str) -> None:
        SkippableError.__init__(self, reason, code="NO_CURRENCY_OPTION")


@dataclass(frozen=True)
class EventMeta:
    """What every change carries about its event."""

    event_id: str
    event_type: str
    created: int
    livemode: bool
    api_version: str | None
    backfill: bool = False  # a synthetic change made by `backfill` from an object's current state
    object_created: int | None = None  # the object's own creation time (backfill's CloseDate)
    write_status: bool = True  # backfill: False when another subscription of the customer decides the status


@dataclass
class Unsupported:
    """An event type no rule handles (counted, not dead-lettered)."""

    meta: EventMeta
    reason: str = field(default="event type has no rule")
