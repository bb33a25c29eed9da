"""Event reads: the events after a cursor (oldest first), the lookback's pages behind it, the cursor's age,
and the few one-page questions (the newest event, recent currencies), all through the client's pager."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import stripe

from stripe_sf_sync.errors import CursorExpiredError
from stripe_sf_sync.model import EVENT_TYPES
from stripe_sf_sync.stripe.client import PAGE_LIMIT, PacedClient, fatal

# Stripe lists events of the last 30 days only, and `types[]` takes at most 20 names
# (Stripe API reference: List all events).
RETENTION_S = 30 * 86400
TYPES_PER_REQUEST = 20


def _unknown_cursor(exc: stripe.InvalidRequestError, cursor_id: str) -> Exception:
    """What a 400/404 while listing events after `cursor_id` means."""
    if getattr(exc, "code", None) == "resource_missing":
        return CursorExpiredError(
            f"Stripe no longer knows the saved cursor event {cursor_id}: it is past the 30-day event retention "
            "or from another account.",
            hint="Run `stripe-sf backfill --since DATE` (the date of your last good sync), then `stripe-sf sync`.")
    return fatal(exc, "listing events")


class EventReads:
    """Reads Stripe's event list through `client`; `clock` (time.time) dates the cursor's age."""

    def __init__(self, client: PacedClient, *, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._clock = clock

    def check_cursor_age(self, cursor_created: int) -> None:
        """Refuse a cursor whose event Stripe no longer lists."""
        if cursor_created < self._clock() - RETENTION_S:
            since = time.strftime("%Y-%m-%d", time.gmtime(cursor_created))
            raise CursorExpiredError(
                f"The saved cursor is from {since}, past Stripe's 30-day event retention, so events after "
                "it can no longer be listed.",
                hint=f"Run `stripe-sf backfill --since {since}` to rebuild from Stripe's lists, then "
                     "`stripe-sf sync`.")

    def events_after(self, cursor_id: str, types: Sequence[str] = EVENT_TYPES,
                     page_limit: int = PAGE_LIMIT) -> Iterator[dict[str, Any]]:
        """Every event newer than `cursor_id`, oldest first, one page at a time (each page reversed)."""
        chunks = [list(types[i:i + TYPES_PER_REQUEST]) for i in range(0, len(types), TYPES_PER_REQUEST)]
        if len(chunks) > 1:
            # Separate listings cannot share one cursor position safely; only 8 types are used today.
            raise ValueError("more than 20 event types need a merged listing")
        params: dict[str, Any] = {"limit": page_limit, "types": chunks[0]}
        for data in self._client.walk("events", "/v1/events", params, start=cursor_id, newer=True,
                               invalid=lambda exc: _unknown_cursor(exc, cursor_id)):
            yield from reversed(data)

    def event_pages(self, since: int, until: int | None = None,
                    types: Sequence[str] = EVENT_TYPES) -> Iterator[list[dict[str, Any]]]:
        """Pages of the events created in [since, until] (no upper bound without `until`), newest first,
        walking `starting_after`: the lookback re-read behind the cursor (Stripe lists events
        eventually consistently, so a late one can appear behind a cursor already past it)."""
        created: dict[str, int] = {"gte": since}
        if until is not None:
            created["lte"] = until
        params: dict[str, Any] = {"limit": PAGE_LIMIT, "types": list(types), "created": created}
        yield from self._client.walk("events", "/v1/events", params,
                              invalid=lambda exc: fatal(exc, "re-reading recent events"))

    def oldest_event_since(self, since: int, types: Sequence[str] = EVENT_TYPES) -> tuple[str, int] | None:
        """A cursor just before `since`: the newest event created before it, if Stripe still has one.

        Returns None when no such event exists; then `first_event_since` walks from the start.
        """
        params = {"limit": 1, "types": list(types), "created": {"lt": since}}
        data = self._client.first_page("events", "/v1/events", params)
        return (data[0]["id"], int(data[0]["created"])) if data else None

    def first_event_since(self, since: int, types: Sequence[str] = EVENT_TYPES) -> dict[str, Any] | None:
        """The oldest event created at or after `since` (walks newest-first pages keeping one event)."""
        oldest: dict[str, Any] | None = None
        params: dict[str, Any] = {"limit": PAGE_LIMIT, "types": list(types), "created": {"gte": since}}
        for data in self._client.walk("events", "/v1/events", params):
            oldest = data[-1]
        return oldest

    def newest_event(self, types: Sequence[str] = EVENT_TYPES) -> tuple[str, int] | None:
        """The newest event of these types (backfill's hand-off point for sync)."""
        data = self._client.first_page("events", "/v1/events", {"limit": 1, "types": list(types)})
        return (data[0]["id"], int(data[0]["created"])) if data else None

    def recent_currencies(self, types: Sequence[str] = EVENT_TYPES) -> dict[str, int]:
        """How many of the newest PAGE_LIMIT events (one request) are in each currency (upper-case ISO code),
        read from `data.object.currency` (subscriptions, invoices and PaymentIntents all carry one)."""
        counts: dict[str, int] = {}
        for event in self._client.first_page("events", "/v1/events", {"limit": PAGE_LIMIT, "types": list(types)}):
            obj = (event.get("data") or {}).get("object") or {}
            code = obj.get("currency") if isinstance(obj, dict) else None
            if isinstance(code, str) and code:
                counts[code.upper()] = counts.get(code.upper(), 0) + 1
        return counts
