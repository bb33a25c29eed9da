"""The state store's typed interface, by role: what the pipeline, the commands and a dry run rely on.

Both stores (`StateStore` over SQLite or PostgreSQL) satisfy `Store`; a dry run's state (`DryRunState`)
satisfies `RunState`: it reads the real store and makes no write. The pipeline's own narrow protocols
(pipeline/, salesforce/, stripe/) are each a part of `RunState`. mypy checks the implementations against these
(store.py and dry_run.py end with the checks); tests/test_state_contract.py runs one behaviour suite on each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from stripe_sf_sync.model import CachedCustomer
from stripe_sf_sync.state.records import Cursor, DeadLetter, InboxEntry, Outcome


class StateReads(Protocol):
    """What a command reads from state. Every one reads only: a dry run's state passes them to the store."""

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql'."""

    @property
    def location(self) -> str:
        """Where the state is, as shown to people (the file, or the URL with its password masked)."""

    def lock_held(self) -> bool:
        """Whether a run (in any process) holds the run lock now; probed, never taken."""

    def get_meta(self, key: str) -> str | None:
        """A stored setting, or None."""

    def cursor(self) -> Cursor | None:
        """The stored cursor, if any."""

    def outcomes_for(self, event_ids: Sequence[str]) -> dict[str, str]:
        """Durable outcomes of these events (those not yet seen are absent)."""

    def versions_for(self, object_ids: Iterable[str]) -> dict[str, int]:
        """Newest applied event time per Stripe object (the order guard)."""

    def version_events_for(self, object_ids: Iterable[str]) -> dict[str, tuple[int, str | None]]:
        """(newest applied time, what applied it) per object."""

    def customers_for(self, customer_ids: Iterable[str]) -> dict[str, CachedCustomer]:
        """What state knows of these customers."""

    def inbox_pending(self, limit: int) -> list[InboxEntry]:
        """Pending inbox entries, oldest event first."""

    def inbox_depth(self) -> int:
        """Inbox entries not applied yet."""

    def dead_letters(self, *, status: str = "open", limit: int | None = None) -> list[DeadLetter]:
        """Dead letters with this status, oldest event first."""

    def dead_letter(self, event_id: str) -> DeadLetter | None:
        """One dead letter by event id."""

    def dead_letter_count(self) -> int:
        """Open dead letters."""

    def last_success(self, command: str) -> int | None:
        """When the newest run of `command` that did its work (exit 0 or 3) ended."""

    def recent_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        """The latest runs, newest first."""

    def last_run_of(self, command: str) -> dict[str, Any] | None:
        """The newest finished run of `command` (its summary decoded), or None."""

    def integrity_check(self) -> str:
        """The database's own check ('ok' when healthy)."""


class RunWrites(Protocol):
    """The writes a run makes through its state. A dry run's state makes each a no-op."""

    def set_meta(self, key: str, value: str) -> None:
        """Store a setting (its own transaction)."""

    def delete_meta(self, key: str) -> None:
        """Forget a setting."""

    def set_cursor(self, cursor: Cursor, *, meta: dict[str, str] | None = None) -> None:
        """Move the cursor forward outside a batch (backfill hand-off), with `meta` in the same transaction."""

    def remember_customers(self, customers: Iterable[CachedCustomer]) -> None:
        """Keep customers' details; an older version never replaces a newer one."""

    def commit_batch(self, outcomes: Sequence[Outcome], *, cursor: Cursor | None,
                     versions: dict[str, tuple[int, str]], run_id: int | None,
                     retried: bool = False, meta: dict[str, str] | None = None,
                     inbox_done: Sequence[str] = ()) -> None:
        """Outcomes, object versions, the cursor, `meta` and inbox entries done, in one transaction."""

    def prune_ledger(self, now: int | None = None) -> int:
        """Drop ledger rows older than Stripe could ever list again; how many."""

    def start_run(self, command: str) -> int:
        """Record the start of a run; its id."""

    def finish_run(self, run_id: int, exit_code: int, summary: dict[str, Any]) -> None:
        """Record how a run ended."""

    def discard_run(self, run_id: int) -> None:
        """Forget a run that never started its work."""


class RunState(StateReads, RunWrites, Protocol):
    """What a run is given: the store itself, or a dry run's state (reads through, writes nothing)."""


class LockAndUpkeep(Protocol):
    """The store's own operations, never made through a dry run's state: the run lock (taken on the store
    before a dry run wraps it), closing, and the writes of commands that have no dry run (`serve`'s inbox and
    its pruning, `dlq drop`). A store acts on one pipeline: its rows, meta keys and run lock."""

    @property
    def pipeline(self) -> str:
        """The pipeline this store acts on (pipelines.py; `default` for a config without stripe.accounts)."""

    def pipelines(self) -> list[str]:
        """The pipelines with any state in this database, `default` first."""

    def for_pipeline(self, pipeline: str) -> Store:
        """A store of another pipeline over this one's connection (reports in one thread, never concurrent runs)."""

    def adopt(self, source: str, target: str) -> int:
        """Move pipeline `source`'s state to `target`, which has none; the rows and keys moved."""

    def acquire_lock(self) -> None:
        """Take this pipeline's exclusive run lock or raise LockHeldError at once."""

    def release_lock(self) -> None:
        """Drop this pipeline's run lock if held."""

    def close(self) -> None:
        """Release the lock and close the database."""

    def inbox_add(self, event_id: str, created: int, payload: str, received_at: float) -> bool:
        """Keep a verified webhook event, once per id; False when it was already there."""

    def prune_inbox(self, now: int | None = None, *, limit: int = ...) -> int:
        """Drop applied inbox entries past the ledger's retention; how many."""

    def drop_dead_letter(self, event_id: str) -> bool:
        """Mark an open dead letter dropped; False when there was none."""

    def prune_runs(self, command: str, keep: int) -> int:
        """Keep the newest `keep` runs of `command` (and its newest that did its work); how many went."""


class Store(RunState, LockAndUpkeep, Protocol):
    """A state store, SQLite or PostgreSQL: every operation."""
