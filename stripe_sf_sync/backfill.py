"""backfill: bring Salesforce to Stripe's current truth from the list endpoints, beyond the 30-day
event window, then hand over to `sync` without a gap.

Each listed object becomes a synthetic event (marked with `model.BACKFILL_MARK`) that goes through
the same rules, resolver, sink and state as sync. The object's version is the moment it was read,
so older events never overwrite it (the order guard).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from stripe_sf_sync import model
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.pipeline import HANDOFF_SINCE_KEY, SYNC_FLOOR_KEY, Pipeline, RunSummary
from stripe_sf_sync.state import Cursor

log = logging.getLogger("stripe_sf_sync")

OBJECT_TYPES = ("subscriptions", "payment_intents", "invoices")
CHECKPOINT_KEY = "backfill_checkpoint"
# Statuses of a subscription that is still running: it decides the Account's status over ended ones.
_LIVE = frozenset({"active", "trialing", "past_due", "unpaid", "paused", "incomplete"})
_EVENT_TYPE = {"subscriptions": "customer.subscription.created",
               "payment_intents": "payment_intent.succeeded",
               "invoices": "invoice.payment_failed"}


@dataclass
class TypeProgress:
    """Counters for one object type, for the progress display and the summary."""

    read: int = 0
    written: int = 0
    dead_lettered: int = 0
    bulk: bool = False
    done: bool = False


@dataclass
class BackfillSummary(RunSummary):
    """RunSummary plus per-type counts."""

    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    interrupted: bool = False


def relevant(kind: str, obj: dict[str, Any]) -> bool:
    """Keep what the rules apply to: succeeded one-time-payment candidates, unpaid invoices with a
    failed attempt, and every subscription (status=all)."""
    if kind == "payment_intents":
        return obj.get("status") == "succeeded"
    if kind == "invoices":
        return bool(obj.get("attempted")) and (obj.get("attempt_count") or 0) > 0 and obj.get("status") == "open"
    return True


# The fields the rules read (model.py), per object: a full Stripe object with its expanded customer is
# several kilobytes, and a chunk of thousands of them would dominate memory.
_KEEP = {
    "subscriptions": ("id", "object", "customer", "status", "currency", "cancel_at_period_end", "current_period_end",
                      "metadata", "cancellation_details", "start_date", "created", "livemode"),
    "payment_intents": ("id", "object", "customer", "amount_received", "currency", "metadata", "invoice",
                        "description", "status", "created", "livemode"),
    "invoices": ("id", "object", "customer", "amount_due", "currency", "attempt_count", "attempted",
                 "next_payment_attempt", "hosted_invoice_url", "parent", "subscription", "subscription_details",
                 "payment_intent", "charge", "metadata", "status", "created", "livemode"),
}
_KEEP_PRICE = ("id", "currency", "unit_amount", "unit_amount_decimal", "amount", "interval", "interval_count",
               "usage_type", "recurring")


def slim(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The object reduced to what the rules read."""
    out = {k: obj[k] for k in _KEEP[kind] if k in obj}
    cust = out.get("customer")
    if isinstance(cust, dict):
        out["customer"] = {k: cust[k] for k in ("id", "object", "name", "metadata") if k in cust}
    items = (obj.get("items") or {}).get("data") if kind == "subscriptions" else None
    if isinstance(items, list):
        slim_items = []
        for item in items:
            if not isinstance(item, dict):
                slim_items.append(item)
                continue
            new = {k: item[k] for k in ("id", "quantity", "current_period_end") if k in item}
            for key in ("price", "plan"):
                if isinstance(item.get(key), dict):
                    new[key] = {k: item[key][k] for k in _KEEP_PRICE if k in item[key]}
            slim_items.append(new)
        out["items"] = {"object": "list", "data": slim_items}
    return out


def synthetic_event(kind: str, obj: dict[str, Any], *, tag: str, read_at: int, api_version: str) -> dict[str, Any]:
    """A change from an object's current state, in the shape of the event the rules expect."""
    return {"id": f"evt_bf{tag}_{obj.get('id')}", "object": "event", "type": _EVENT_TYPE[kind],
            "created": read_at, "api_version": api_version, "livemode": bool(obj.get("livemode")),
            "data": {"object": slim(kind, obj)}, model.BACKFILL_MARK: True}


def _describe(key: dict[str, Any]) -> str:
    def day(ts: int | None) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(ts)) if ts else "now"
    return f"--since {day(key['since'])} --until {day(key['until'])} --objects {','.join(key['objects'])}"


class StopFlag:
    """Ctrl-C during a backfill stops at the next page boundary; a second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.stop = False
        self._previous: Any = None

    def __enter__(self) -> StopFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (tests): no signal handling
            self._previous = None
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True
        log.warning("Stopping after the current page; Ctrl-C again to abort now.")

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class BackfillPlan:
    """What to backfill."""

    since: int
    until: int | None
    objects: tuple[str, ...]
    resume: bool
    bulk_threshold: int = 2000
    bulk_chunk: int = 5_000


class Backfill:
    """Drives one backfill: hand-off, then each object type page by page."""

    def __init__(self, pipeline: Pipeline, plan: BackfillPlan, *, clock: Callable[[], float] = time.time,
                 progress: Callable[[str, TypeProgress], None] | None = None, stop: StopFlag | None = None,
                 log_every_pages: int = 50) -> None:
        self.p = pipeline
        self.plan = plan
        self.clock = clock
        self.progress = progress
        self.stop = stop or StopFlag()
        self.log_every = log_every_pages
        self.counts: dict[str, TypeProgress] = {k: TypeProgress() for k in plan.objects}
        # customer -> (live?, created) of the subscription whose status this run wrote to the Account
        self._status_owner: dict[str, tuple[int, int]] = {}

    def _decides_status(self, sub: dict[str, Any]) -> bool:
        """Of a customer's subscriptions, a running one decides the Account status over an ended one,
        and the newest over older ones (lists come newest first)."""
        cust = sub.get("customer")
        cust_id = cust.get("id") if isinstance(cust, dict) else cust
        if not isinstance(cust_id, str):
            return True
        rank = (1 if sub.get("status") in _LIVE else 0, int(sub.get("created") or 0))
        best = self._status_owner.get(cust_id)
        if best is None or rank[0] > best[0]:
            self._status_owner[cust_id] = rank
            return True
        return False

    def _checkpoint(self) -> dict[str, Any] | None:
        raw = self.p.state.get_meta(CHECKPOINT_KEY)
        return json.loads(raw) if raw else None

    def run(self, summary: BackfillSummary) -> None:
        """Hand off, then backfill each object type; resumable at every committed page."""
        state = self.p.state
        key = {"since": self.plan.since, "until": self.plan.until, "objects": list(self.plan.objects)}
        checkpoint = self._checkpoint()
        if self.plan.resume:
            if checkpoint is None or checkpoint.get("finished"):
                raise ConfigError(["there is no interrupted backfill to resume"], source="invocation",
                                  hint="Start one with `stripe-sf backfill --since DATE`.")
            if checkpoint["key"] != key:
                raise ConfigError([f"the interrupted backfill was for {_describe(checkpoint['key'])}, "
                                   f"not {_describe(key)}"],
                                  source="invocation",
                                  hint="Resume with the same --since, --until and --objects, or start over "
                                       "without --resume.")
        else:
            checkpoint = {"key": key, "tag": str(int(self.clock())), "read_at": int(self.clock()), "types": {}}
            self._handoff()
            if not self.p.dry_run:
                state.set_meta(CHECKPOINT_KEY, json.dumps(checkpoint))
        tag, read_at = checkpoint["tag"], int(checkpoint["read_at"])
        for kind in self.plan.objects:
            done = checkpoint["types"].get(kind, {})
            if done.get("finished"):
                self.counts[kind].done = True
                continue
            self._backfill_type(kind, tag, read_at, checkpoint, summary)
            if self.stop.stop:
                summary.interrupted = True
                break
        else:
            checkpoint["finished"] = True
            if not self.p.dry_run:
                state.set_meta(CHECKPOINT_KEY, json.dumps(checkpoint))
        summary.objects = {k: vars(v) for k, v in self.counts.items()}

    def _handoff(self) -> None:
        """Record the newest event as the sync cursor (unless a newer one is stored), before listing,
        so that sync later continues with no gap.

        Sync's history then starts after that event's second: its lookback re-read (pipeline._lookback)
        must not apply the events the backfill's lists already cover. An event of that same second listed
        late is the one thing this gives up, rather than re-applying the second's other events."""
        newest = self.p.source.newest_event()
        if self.p.dry_run:
            return
        current = self.p.state.cursor()
        if newest is not None:
            if current is None or newest[1] > current.created:
                self.p.state.set_cursor(Cursor(*newest), meta={SYNC_FLOOR_KEY: str(newest[1] + 1)})
        elif current is None:
            self.p.state.set_meta(HANDOFF_SINCE_KEY, str(int(self.clock())))

    def _objects(self, kind: str, after: str | None) -> Iterator[tuple[list[dict[str, Any]], str]]:
        """(relevant objects of a page, the page's last id) for every page."""
        for page in self.p.source.list_pages(kind, since=self.plan.since, until=self.plan.until,
                                             starting_after=after):
            yield [o for o in page if relevant(kind, o)], page[-1]["id"]

    def _backfill_type(self, kind: str, tag: str, read_at: int, checkpoint: dict[str, Any],
                       summary: BackfillSummary) -> None:
        counts = self.counts[kind]
        after = checkpoint["types"].get(kind, {}).get("last_id")
        version = self.p.settings.stripe.api_version
        buffer: list[dict[str, Any]] = []
        last_id: str | None = after
        pages = 0
        bulk = False

        def flush(final: bool) -> None:
            nonlocal buffer
            if not buffer and not final:
                return
            checkpoint["types"][kind] = {"last_id": last_id, "finished": final and not self.stop.stop}
            before_dead = summary.dead_lettered
            before_written = summary.applied
            meta = None if self.p.dry_run else {CHECKPOINT_KEY: json.dumps(checkpoint)}
            size = self.plan.bulk_chunk if bulk else self.p.settings.sync.batch_size
            for i in range(0, max(len(buffer), 1), size):
                part = buffer[i:i + size]
                last_part = i + size >= len(buffer)
                if not self.p.apply(part, summary, bulk=bulk, commit_meta=meta if last_part else None):
                    self.stop.stop = True  # the API budget is spent: stop here, resumable
                    break
            counts.dead_lettered += summary.dead_lettered - before_dead
            counts.written += summary.applied - before_written
            buffer = []

        for objects, page_last in self._objects(kind, after):
            pages += 1
            counts.read += len(objects)
            for o in objects:
                event = synthetic_event(kind, o, tag=tag, read_at=read_at, api_version=version)
                if kind == "subscriptions" and not self._decides_status(o):
                    event[model.BACKFILL_STATUS_MARK] = False
                buffer.append(event)
            last_id = page_last
            if not bulk and counts.read >= self.plan.bulk_threshold:
                bulk = counts.bulk = True  # above the threshold Salesforce does the heavy lifting
            if bulk and len(buffer) >= self.plan.bulk_chunk:
                flush(final=False)
            if self.progress:
                self.progress(kind, counts)
            elif pages % self.log_every == 0:
                log.info("backfill %s: %d read, %d written, %d dead-lettered", kind, counts.read, counts.written,
                         counts.dead_lettered)
            if self.stop.stop:
                break
        flush(final=True)
        counts.done = not self.stop.stop
        if self.progress:
            self.progress(kind, counts)
