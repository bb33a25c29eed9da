"""Events as a batch holds them, and the outcomes of events that cannot be applied."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from stripe_sf_sync import model
from stripe_sf_sync.state.records import Outcome

log = logging.getLogger("stripe_sf_sync")
# What the json module's `default=str` did, kept: keys that are not strings become strings, and dates and
# dataclasses go through `default` rather than orjson's own encodings.
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _typed(event: Mapping[str, Any], key: str, kind: type) -> Any:
    value = event.get(key)
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class HeldEvent:
    """An event held as compact JSON, parsed on arrival, while its batch fills and is applied.

    Decoded, an event costs about four times its JSON in memory, and a batch holds thousands; decoding
    is also the slowest step of a run, so it is parsed once, on arrival, and decoded again only where
    its payload is needed later (a dead letter keeps `text`; a failed invoice's hydration reads it).
    `id`, `created` and `type` are None when the event lacks them or has the wrong type.
    """

    id: str | None
    created: int | None
    type: str | None
    text: str
    parsed: Any  # model.parse_event's result, or the exception it raised

    @classmethod
    def of(cls, event: Mapping[str, Any]) -> HeldEvent:
        """Hold `event`."""
        try:
            parsed: Any = model.parse_event(event)
        except Exception as exc:  # raised again where the batch parses it, to be dead-lettered there
            parsed = exc
        return cls(_typed(event, "id", str), _typed(event, "created", int), _typed(event, "type", str),
                   _compact(event), parsed)

    def parse(self) -> model.Change | model.CustomerChange | model.Unsupported:
        """model.parse_event's result for this event (raising what it raised)."""
        if isinstance(self.parsed, Exception):
            raise self.parsed
        return self.parsed

    def load(self) -> dict[str, Any]:
        """The event, decoded."""
        try:
            event = orjson.loads(self.text)
        except orjson.JSONDecodeError:  # what only the json module writes and reads (NaN)
            event = json.loads(self.text)
        return event if isinstance(event, dict) else {}

    def data_object(self) -> dict[str, Any]:
        """The event's `data.object`, decoded ({} when it has none)."""
        data = self.load().get("data")
        obj = data.get("object") if isinstance(data, Mapping) else None
        return dict(obj) if isinstance(obj, Mapping) else {}


def _compact(event: Mapping[str, Any]) -> str:
    """`event` as compact JSON (a dead letter's payload): by orjson, about ten times faster than the json
    module on the per-event path (issue 14), or by the json module for what orjson refuses (an integer past
    64 bits). Either is read back by `HeldEvent.load` and by `json.loads`."""
    try:
        return orjson.dumps(event, default=str, option=_ORJSON_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(event, default=str, separators=(",", ":"))


def outcome_id(held: HeldEvent) -> str:
    """The id an event's outcome is recorded under: its own, or (without one) a digest of its payload."""
    return held.id or "malformed_" + hashlib.sha256(held.text.encode()).hexdigest()[:24]


def dead_letter(held: HeldEvent, reason: str, code: str, object_id: str | None = None) -> Outcome:
    """The outcome of an event that cannot be applied: kept with its payload, to be retried."""
    event_id = outcome_id(held)
    return Outcome(event_id, held.type or "unknown", held.created or 0, "dead_letter", object_id=object_id,
                   reason=reason[:1000], code=code, payload=held.text)


def unexpected(held: HeldEvent, exc: Exception) -> Outcome:
    """A bug met while applying one event: dead-lettered, so that it never stops every later run."""
    log.error("unexpected %s on event %s: dead-lettered so the run goes on", type(exc).__name__, held.id,
              exc_info=log.isEnabledFor(logging.DEBUG))
    return dead_letter(held, f"{type(exc).__name__} while applying the rules: this is a stripe-sf bug; report it "
                             "with `stripe-sf dlq list --json` output", "UNEXPECTED")
