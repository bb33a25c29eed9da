"""`reconcile --fix`'s source: the Stripe objects behind the fixable findings, as synthetic events
(synthetic.py), through the same batch step as every other way in. Their commit is the outcomes alone."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from stripe_sf_sync import model
from stripe_sf_sync.pipeline.batch import BatchResult
from stripe_sf_sync.pipeline.batches import Batch, NoRunState, OutcomesCommit
from stripe_sf_sync.pipeline.events import HeldEvent
from stripe_sf_sync.reconcile import KINDS, Finding, Spill
from stripe_sf_sync.sources.synthetic import synthetic_event


class FixObjects(NoRunState):
    """`reconcile --fix`: the Stripe objects behind the fixable findings, as backfill's synthetic events,
    through the same batch step (same rules, resolution, idempotency and dead letters).

    The order guard skips an event older than the newest applied to its object, whatever Salesforce holds
    now. Each event carries the time the object was read, raised to that newest version when it is later
    (Stripe's clock ahead of this machine's): the state read is the current one, newer than every event
    applied before this run (it holds the lock), so the repair is not taken for a stale event. Its id is
    new to this run, so the ledger does not take it for an event already done either. A subscription that
    does not decide its customer's status is marked so, as backfill does, and leaves the Account alone."""

    interrupted = False
    objects: dict[str, dict[str, Any]] = {}  # noqa: RUF012 - never written

    def __init__(self, spill: Spill, findings: Sequence[Finding], versions: Callable[[Iterable[str]], dict[str, int]],
                 *, tag: str, read_at: int, api_version: str, batch_size: int) -> None:
        self._spill = spill
        self._versions = versions
        self._ids = sorted({f.stripe_id for f in findings if KINDS[f.kind].fixable and f.stripe_id})
        self._tag, self._read_at, self._version, self._size = tag, read_at, api_version, batch_size
        self.repaired: dict[str, int] = {"events": 0, "applied": 0, "dead_lettered": 0}

    def _events(self) -> Iterator[dict[str, Any]]:
        for start in range(0, len(self._ids), 500):
            chunk = self._ids[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            sql = f"""SELECT 'subscriptions' AS kind, s.id, s.payload,
                        s.id = (SELECT d.id FROM subs d WHERE d.customer = s.customer
                                ORDER BY d.running DESC, d.created DESC, d.seq LIMIT 1) AS decides
                      FROM subs s WHERE s.id IN ({marks})
                      UNION ALL SELECT 'payment_intents', p.id, p.payload, 1 FROM pis p
                      WHERE p.id IN ({marks}) AND p.payload IS NOT NULL ORDER BY 2"""  # noqa: S608
            applied = self._versions(chunk)
            for row in self._spill.rows(sql, [*chunk, *chunk]):
                read_at = max(self._read_at, applied.get(row["id"], 0))
                event = synthetic_event(row["kind"], json.loads(row["payload"]), tag=self._tag, read_at=read_at,
                                        api_version=self._version)
                if not row["decides"]:
                    event[model.BACKFILL_STATUS_MARK] = False
                yield event

    def batches(self) -> Iterator[Batch]:
        """The events, in batches the size sync uses."""
        held: list[HeldEvent] = []
        for event in self._events():
            held.append(HeldEvent.of(event))
            if len(held) >= self._size:
                yield Batch(held, OutcomesCommit())
                held = []
        if held:
            yield Batch(held, OutcomesCommit())

    def applied(self, batch: Batch, result: BatchResult) -> None:
        """Count what the repair did."""
        self.repaired["events"] += result.events_read
        self.repaired["applied"] += result.count("applied")
        self.repaired["dead_lettered"] += result.count("dead_letter")

