"""backfill: bring Salesforce to Stripe's current truth from the list endpoints, beyond the 30-day
event window, then hand over to `sync` without a gap.

Each listed object becomes a synthetic event (synthetic.py) that goes through the same rules, resolver,
sink and state as sync. The object's version is the moment it was read, so older events never overwrite it
(the order guard). The run begins with the hand-off and a new checkpoint (or the one `--resume` continues);
each chunk's last batch commits the checkpoint; the run's end marks it finished.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from stripe_sf_sync import model
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.pipeline.batch import BatchResult
from stripe_sf_sync.pipeline.batches import Batch, CheckpointCommit
from stripe_sf_sync.pipeline.events import HeldEvent
from stripe_sf_sync.pipeline.stop import Stop
from stripe_sf_sync.rules.status import Rank, status_key, status_rank
from stripe_sf_sync.sources.slices import SLICES_PER_WORKER, Page, SliceListing, plan_slices
from stripe_sf_sync.sources.sync_events import hand_off
from stripe_sf_sync.sources.synthetic import relevant, slim, synthetic_event
from stripe_sf_sync.stripe.source import PAGE_LIMIT, StripeSource

log = logging.getLogger("stripe_sf_sync")

# A listed object: its subscription's rank (None for other objects), the event the batch holds (compact), and
# whether it decides its Account's status.
Listed = tuple[Rank | None, HeldEvent, bool]

OBJECT_TYPES = ("subscriptions", "payment_intents", "invoices")
CHECKPOINT_KEY = "backfill_checkpoint"


@dataclass
class TypeProgress:
    """Counters for one object type, for the progress display and the summary."""

    read: int = 0
    written: int = 0
    dead_lettered: int = 0
    bulk: bool = False
    done: bool = False


def _describe(key: dict[str, Any]) -> str:
    def day(ts: int | None) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(ts)) if ts else "now"
    return f"--since {day(key['since'])} --until {day(key['until'])} --objects {','.join(key['objects'])}"


@dataclass
class BackfillPlan:
    """What to backfill."""

    since: int
    until: int | None
    objects: tuple[str, ...]
    resume: bool
    bulk_threshold: int = 2000
    bulk_chunk: int = 5_000
    parallel_slices: int = 4  # slices listed at once (worker threads)


class BackfillObjects:
    """The backfill source: begins with the hand-off to sync, then lists each object type page by page and
    yields its objects' current state as synthetic events, in batches whose commit carries the checkpoint;
    ends by marking the checkpoint finished once every type was listed."""

    def __init__(self, source: StripeSource, state: Any, plan: BackfillPlan, *, batch_size: int,
                 clock: Callable[[], float] = time.time,
                 progress: Callable[[str, TypeProgress], None] | None = None, stop: Stop | None = None,
                 log_every_pages: int = 50, dry_run: bool = False) -> None:
        self._source = source
        self._state = state
        self.plan = plan
        self._batch_size = batch_size
        self.clock = clock
        self.progress = progress
        self.stop = stop or Stop()  # a signal (SIGINT, SIGTERM) stops the listing at the next page
        self.log_every = log_every_pages
        self.dry_run = dry_run  # its state keeps nothing: the status ranks stay in memory
        self.counts: dict[str, TypeProgress] = {k: TypeProgress() for k in plan.objects}
        self._finished = False
        self._kind = plan.objects[0] if plan.objects else ""  # the object type being listed
        # customer -> (live?, created) of the subscription whose status this run wrote to the Account
        self._status_owner: dict[str, tuple[int, int]] = {}
        self._listing: SliceListing | None = None  # the listing in progress, stopped by `close`
        self._checkpoint: dict[str, Any] = {}  # where the run is: set by `begin`, committed with the batches

    @property
    def interrupted(self) -> bool:
        """Stopped before the end (Ctrl-C, SIGTERM, or the API budget): `--resume` continues."""
        return not self._finished

    @property
    def objects(self) -> dict[str, dict[str, Any]]:
        """Counts per object type."""
        return {k: vars(v) for k, v in self.counts.items()}

    def _decides_status(self, rank: Rank | None) -> bool:
        """Whether this subscription decides its customer's Account status: it outranks (`status_rank`) every
        other one of the customer seen so far. Slices are listed in any order, so a later one can outrank an
        earlier one; its write then comes later too (batches apply in order), and the highest rank is the
        last write. Ranks committed in earlier chunks, or before a `--resume`, come from state (`_load_owners`)."""
        if rank is None:
            return True
        best = self._status_owner.get(rank[0])
        if best is None or rank[1:] > best:
            self._status_owner[rank[0]] = rank[1:]
            return True
        return False

    def _load_owners(self, ranks: list[Rank | None], read_at: int) -> None:
        """The ranks this backfill committed for these customers in earlier chunks, or before it was interrupted
        (kept with its batches as object versions, `status_key`, of version `read_at`: an older backfill's
        are not this one's)."""
        wanted = {r[0] for r in ranks if r is not None and r[0] not in self._status_owner}
        if not wanted:
            return
        for key, (version, detail) in self._state.version_events_for(status_key(c) for c in wanted).items():
            live, created, _event = (detail or "::").split(":", 2)
            if version == read_at and live.isdigit() and created.isdigit():
                self._status_owner[key.rsplit("#", 1)[0]] = (int(live), int(created))

    def _opened(self) -> dict[str, Any]:
        """The checkpoint to continue from (`--resume`), or a new one after the hand-off."""
        raw = self._state.get_meta(CHECKPOINT_KEY)
        checkpoint = json.loads(raw) if raw else None
        key = {"since": self.plan.since, "until": self.plan.until, "objects": list(self.plan.objects)}
        if not self.plan.resume:
            checkpoint = {"key": key, "tag": str(int(self.clock())), "read_at": int(self.clock()), "types": {}}
            self._handoff()
            self._state.set_meta(CHECKPOINT_KEY, json.dumps(checkpoint))
            return checkpoint
        if checkpoint is None or checkpoint.get("finished"):
            raise ConfigError(["there is no interrupted backfill to resume"], source="invocation",
                              hint="Start one with `stripe-sf backfill --since DATE`.")
        if checkpoint["key"] != key:
            raise ConfigError([f"the interrupted backfill was for {_describe(checkpoint['key'])}, "
                               f"not {_describe(key)}"], source="invocation",
                              hint="Resume with the same --since, --until and --objects, or start over "
                                   "without --resume.")
        return checkpoint

    def begin(self) -> None:
        """The checkpoint `--resume` continues from (refused when it does not match), or, for a new backfill,
        the hand-off to sync then a new checkpoint, before anything is listed."""
        self._checkpoint = self._opened()

    def batches(self) -> Iterator[Batch]:
        """Every object type; resumable at every committed batch."""
        checkpoint = self._checkpoint
        for kind in self.plan.objects:
            if checkpoint["types"].get(kind, {}).get("finished"):
                self.counts[kind].done = True
                continue
            self._kind = kind
            yield from self._batches_of(kind, checkpoint)
            if self.stop.requested:
                return
        self._finished = True

    def end(self, *, aborted: bool) -> None:
        """Once every object type was listed and committed, the checkpoint says the backfill is finished (and
        `--resume` has nothing left to continue)."""
        if self._finished:
            self._checkpoint["finished"] = True
            self._state.set_meta(CHECKPOINT_KEY, json.dumps(self._checkpoint))

    def close(self) -> None:
        """Stop and join the listing threads, however the run ended (its batches may not have been closed)."""
        if self._listing is not None:
            self._listing.close()

    def applied(self, batch: Batch, result: BatchResult) -> None:
        """Count what the batch wrote and dead-lettered, for its object type."""
        counts = self.counts[self._kind]
        counts.dead_lettered += result.count("dead_letter")
        counts.written += result.count("applied")

    def _handoff(self) -> None:
        """Hand over to sync before listing anything, so that sync later continues with no gap."""
        hand_off(self._state, self._source.newest_event(), now=int(self.clock()))

    def _slices(self, kind: str, checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
        """The kind's slices: as the checkpoint left them, or planned anew (from the checkpoint's read time, so
        a resume before the first commit plans the same ones). A checkpoint from before slices is one slice."""
        entry = checkpoint["types"].get(kind) or {}
        if "slices" in entry:
            return [dict(s) for s in entry["slices"]]
        if "last_id" in entry:
            return [{"gte": self.plan.since, "lt": self.plan.until, "last_id": entry["last_id"],
                     "finished": bool(entry.get("finished"))}]
        return plan_slices(self.plan.since, self.plan.until, int(checkpoint["read_at"]),
                           self.plan.parallel_slices * SLICES_PER_WORKER)

    def _batches_of(self, kind: str, checkpoint: dict[str, Any]) -> Iterator[Batch]:
        """One object type's synthetic events, its slices listed in parallel, a chunk at a time; the checkpoint
        (every slice's last page taken into the chunk) goes with each chunk's last batch."""
        counts = self.counts[kind]
        slices = self._slices(kind, checkpoint)
        buffer: list[Listed] = []
        # (events in the buffer, the slices as they stood) after each page taken: what a stop that cuts the
        # chunk short commits as its checkpoint (`_flush`)
        marks: list[tuple[int, list[dict[str, Any]]]] = [(0, _copied(slices))]
        pages = 0
        make = partial(_held, kind, tag=checkpoint["tag"], read_at=int(checkpoint["read_at"]),
                       api_version=self._source.api_version)
        with SliceListing(self._source, kind, slices, workers=self.plan.parallel_slices,
                          keep=lambda page: [make(o) for o in page if relevant(kind, o)],
                          ahead=-(-self.plan.bulk_chunk // PAGE_LIMIT)) as listing:
            self._listing = listing
            for page in listing.pages(self.stop):
                self._take(slices[page.slice], page)
                if page.last_id is None:
                    marks.append((len(buffer), _copied(slices)))
                    continue
                pages += 1
                counts.read += len(page.objects)
                buffer.extend(self._events(kind, page.objects, checkpoint))
                marks.append((len(buffer), _copied(slices)))
                if not counts.bulk and counts.read >= self.plan.bulk_threshold:
                    counts.bulk = True  # above the threshold Salesforce does the heavy lifting
                if counts.bulk and len(buffer) >= self.plan.bulk_chunk:
                    yield from self._flush(kind, buffer, slices, checkpoint, marks, final=False)
                    buffer = []
                    marks = [(0, _copied(slices))]
                    self._committed()
                self._report(kind, pages)
            yield from self._flush(kind, buffer, slices, checkpoint, marks, final=True)
        counts.done = not self.stop.requested
        if self.progress:
            self.progress(kind, counts)

    @staticmethod
    def _take(s: dict[str, Any], page: Page) -> None:
        """A slice's progress once the consumer holds its page: its last id, or its end."""
        if page.last_id is None:
            s["finished"] = True
        else:
            s["last_id"] = page.last_id

    def _events(self, kind: str, objects: list[Listed], checkpoint: dict[str, Any]) -> list[Listed]:
        """The page's events as the workers held them; a subscription that does not decide its customer's
        Account status (`_decides_status`, in listing order) is held again with the mark that says so."""
        if kind != "subscriptions":
            return objects
        read_at = int(checkpoint["read_at"])
        self._load_owners([rank for rank, _held, _decides in objects], read_at)
        out: list[Listed] = []
        for rank, held, _ in objects:
            if self._decides_status(rank):
                out.append((rank, held, True))
                continue
            event = json.loads(held.text)
            event[model.BACKFILL_STATUS_MARK] = False
            out.append((rank, HeldEvent.of(event), False))
        return out

    def _committed(self) -> None:
        """A chunk is committed, with the status ranks it decided: state answers for them from now on
        (`_load_owners`), so memory holds only the ranks of the chunk being read. A dry run commits nothing,
        so it keeps them all."""
        if not self.dry_run:
            self._status_owner.clear()

    def _flush(self, kind: str, buffer: list[Listed], slices: list[dict[str, Any]], checkpoint: dict[str, Any],
               marks: list[tuple[int, list[dict[str, Any]]]], *, final: bool) -> Iterator[Batch]:
        """The buffer as batches; the last carries the checkpoint, committed with its outcomes. Each batch
        carries the status ranks its subscriptions decide (`_owners`), committed with them. A stop that cuts a
        batch short commits the checkpoint of the last page wholly inside what it kept (`marks`): objects past
        it are listed again by `--resume`, and those already recorded are skipped by the ledger."""
        if not buffer and not final:
            return
        finished = final and not self.stop.requested
        checkpoint["types"][kind] = {"slices": slices, "finished": finished}
        bulk = self.counts[kind].bulk
        # A chunk is one batch: pages of slices end short, so a chunk passes bulk_chunk by up to a page, and a
        # stop between two batches of it would commit the first without the checkpoint.
        size = max(len(buffer), 1) if bulk else self._batch_size
        meta = {CHECKPOINT_KEY: json.dumps(checkpoint)}
        starts = range(0, max(len(buffer), 1), size)
        read_at = int(checkpoint["read_at"])
        for i in starts:
            last = i == starts[-1]
            listed = buffer[i:i + size]

            def partial(n: int, start: int = i, listed: list[Listed] = listed) -> CheckpointCommit:
                taken = [sl for end, sl in marks if end <= start + n][-1]
                cut = {**checkpoint, "types": {**checkpoint["types"], kind: {"slices": taken, "finished": False}}}
                return CheckpointCommit(meta={CHECKPOINT_KEY: json.dumps(cut)}, versions=_owners(listed[:n], read_at))
            yield Batch([held for _, held, _ in listed],
                        CheckpointCommit(meta=meta if last else None, versions=_owners(listed, read_at)),
                        bulk=bulk, partial=partial)

    def _report(self, kind: str, pages: int) -> None:
        counts = self.counts[kind]
        if self.progress:
            self.progress(kind, counts)
        elif pages % self.log_every == 0:
            log.info("backfill %s: %d read, %d written, %d dead-lettered", kind, counts.read, counts.written,
                     counts.dead_lettered)


def _held(kind: str, obj: dict[str, Any], *, tag: str, read_at: int, api_version: str) -> Listed:
    """A listed object as the batch will hold it: built on a listing thread, so that encoding and parsing
    overlap with the run's thread waiting on Salesforce. A subscription is held as deciding its Account's
    status until the run's thread says otherwise (`_events`)."""
    small = slim(kind, obj)
    event = synthetic_event(kind, small, tag=tag, read_at=read_at, api_version=api_version, slimmed=True)
    return (status_rank(small) if kind == "subscriptions" else None), HeldEvent.of(event), True


def _copied(slices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The slices' progress as it stands (their dicts change as later pages are taken)."""
    return [dict(s) for s in slices]


def _owners(listed: list[Listed], read_at: int) -> dict[str, tuple[int, str]] | None:
    """The status ranks the subscriptions of these events decide, as object versions of the backfill's read
    time: later chunks and `--resume` read them back, so an older subscription never takes the status from a
    newer one."""
    owners: dict[str, tuple[int, str]] = {}
    for rank, held, decides in listed:
        if rank is not None and decides:
            owners[status_key(rank[0])] = (read_at, f"{rank[1]}:{rank[2]}:{held.id}")
    return owners or None
