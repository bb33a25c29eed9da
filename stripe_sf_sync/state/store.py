"""The state store: the cursor, the event ledger, object versions, customers, the webhook inbox, dead letters
and run history. Every statement is here, once, for both databases.

One transaction per batch records every event's outcome and advances the cursor, so the cursor never passes
an event whose outcome is not stored. `StateStore` holds the statements and runs them over a `Database`, the
small dialect object of SQLite (state/sqlite.py, `StateStore.open`) or PostgreSQL (state/postgres.py): its
connection, transactions, run lock and errors. `open_state` (state/factory.py) chooses by the configured URL.

A store acts on one pipeline (pipelines.py): its cursor, ledger rows, dead letters, inbox, runs, meta keys and
run lock. The `default` pipeline's meta keys are stored bare, as before pipelines existed (an existing state
needs no rewrite); another pipeline's as `<pipeline>/<key>`. The schema's version keys are global.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar

from stripe_sf_sync.errors import StateError
from stripe_sf_sync.model import CachedCustomer
from stripe_sf_sync.state import adoption
from stripe_sf_sync.state.adoption import DEFAULT_PIPELINE, checked_name, meta_key
from stripe_sf_sync.state.records import Cursor, DeadLetter, InboxEntry, Outcome
from stripe_sf_sync.state.sqlite import SqliteDatabase

if TYPE_CHECKING:
    from stripe_sf_sync.state.interface import Store

INBOX_PRUNE_LIMIT = 1000  # applied inbox entries dropped per prune, at most
_BACKFILL_ID = re.compile(r"evt_bf\d+_(.+)")  # backfill.synthetic_event's id: the run's time, the object id
LEDGER_RETENTION_S = 40 * 86400  # longer than Stripe's 30-day event retention: re-reads stay deduplicated

P = ParamSpec("P")
R = TypeVar("R")


class Database(Protocol):
    """What the store needs of a database: a connection that runs its statements (`?` placeholders; rows that
    answer by index and by name), and the dialect's transactions, run lock and errors."""

    conn: Any

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql'."""

    @property
    def location(self) -> str:
        """Where the state is, as shown to people."""

    def guard(self, call: Callable[[], R]) -> R:
        """Run one store operation; the database's errors become a StateError naming it."""

    def transaction(self) -> AbstractContextManager[None]:
        """One write transaction: committed at the end, rolled back on any error."""

    def acquire_lock(self, pipeline: str) -> None:
        """Take the exclusive run lock of `pipeline` or raise LockHeldError at once."""

    def lock_held(self, pipeline: str) -> bool:
        """Whether any run holds the run lock of `pipeline` now (probed, never taken)."""

    def release_lock(self, pipeline: str) -> None:
        """Drop the run lock of `pipeline` if held."""

    def integrity_check(self) -> str:
        """The database's own check ('ok' when healthy)."""

    def close(self) -> None:
        """Release the lock and close the connection."""


def _mapped_errors(method: Callable[Concatenate[StateStore, P], R]) -> Callable[Concatenate[StateStore, P], R]:
    """The database's errors leave the store as a StateError naming it: callers need not know which it is."""
    @functools.wraps(method)
    def wrapper(self: StateStore, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._guard(functools.partial(method, self, *args, **kwargs))
    return wrapper


class StateStore:
    """The state store of one pipeline over one database. Open the SQLite file with `StateStore.open(path)`;
    `open_state` also knows PostgreSQL (`state.postgres.connect`)."""

    def __init__(self, db: Database, *, pipeline: str = DEFAULT_PIPELINE) -> None:
        self._db = db
        self._pipeline = checked_name(pipeline)

    @classmethod
    def open(cls, path: Path, *, create: bool = True, pipeline: str = DEFAULT_PIPELINE) -> StateStore:
        """The SQLite state file (created with mode 0600 unless `create` is off); its schema version checked."""
        return cls(SqliteDatabase.open(path, create=create), pipeline=pipeline)

    @classmethod
    def open_read_only(cls, path: Path, *, pipeline: str = DEFAULT_PIPELINE) -> StateStore:
        """The SQLite state file, to read (`status`), without the write access a run needs."""
        return cls(SqliteDatabase.open_read_only(path), pipeline=pipeline)

    @property
    def pipeline(self) -> str:
        """The pipeline this store acts on."""
        return self._pipeline

    def for_pipeline(self, pipeline: str) -> StateStore:
        """A store of another pipeline over this one's connection: for a report that reads every pipeline in
        one thread, never for runs at the same time (each opens its own store). Closing either closes both."""
        return StateStore(self._db, pipeline=pipeline)

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self._db.backend

    @property
    def location(self) -> str:
        """Where the state is, as shown to people (the file; for PostgreSQL the URL, password masked)."""
        return self._db.location

    @property
    def _conn(self) -> Any:
        """The database's connection: every statement of the store runs on it."""
        return self._db.conn

    @_conn.setter
    def _conn(self, conn: Any) -> None:  # tests wrap it to count or interrupt statements
        self._db.conn = conn

    def _guard(self, call: Callable[[], R]) -> R:
        return self._db.guard(call)

    def _tx(self) -> AbstractContextManager[None]:
        return self._db.transaction()

    def close(self) -> None:
        """Release the lock and close the database."""
        self._db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @_mapped_errors
    def pipelines(self) -> list[str]:
        """The pipelines with any state in this database (a cursor, ledger rows, a run, a dead letter, inbox
        entries), `default` first."""
        return adoption.pipelines_of(self._conn)

    @_mapped_errors
    def adopt(self, source: str, target: str) -> int:
        """Move pipeline `source`'s state (rows and meta) to `target` in one transaction, when `target` has none
        (else a StateError saying what to do); hold `source`'s run lock. Returns the rows and keys moved."""
        return adoption.adopt(self._conn, self._tx, source, target)

    # --- the run lock: the database's own (a flock; a lease row on PostgreSQL) ---------------
    def acquire_lock(self) -> None:
        """Take this pipeline's exclusive run lock or raise LockHeldError at once (another pipeline's runs go on)."""
        self._db.acquire_lock(self._pipeline)

    def lock_held(self) -> bool:
        """Whether a run (in any process) holds this pipeline's run lock now; probed, never taken."""
        return self._db.lock_held(self._pipeline)

    def release_lock(self) -> None:
        """Drop this pipeline's run lock if held."""
        self._db.release_lock(self._pipeline)

    def integrity_check(self) -> str:
        """The database's own integrity check ('ok' when healthy)."""
        return self._db.integrity_check()

    # --- meta: this pipeline's keys (the default's bare, another's `<pipeline>/<key>`) -------------
    def _key(self, key: str) -> str:
        return meta_key(self._pipeline, key)

    @_mapped_errors
    def get_meta(self, key: str) -> str | None:
        """A stored setting of this pipeline, or None."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (self._key(key),)).fetchone()
        return row[0] if row else None

    @_mapped_errors
    def set_meta(self, key: str, value: str) -> None:
        """Store a setting of this pipeline (its own transaction)."""
        self._conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (self._key(key), value))

    @_mapped_errors
    def delete_meta(self, key: str) -> None:
        """Forget a setting of this pipeline."""
        self._conn.execute("DELETE FROM meta WHERE key = ?", (self._key(key),))

    # --- cursor ---------------------------------------------------------------------------
    @_mapped_errors
    def cursor(self) -> Cursor | None:
        """The stored cursor, if any."""
        event_id = self.get_meta("cursor_event_id")
        created = self.get_meta("cursor_created")
        if event_id and created:
            return Cursor(event_id, int(created))
        return None

    @_mapped_errors
    def set_cursor(self, cursor: Cursor, *, meta: dict[str, str] | None = None) -> None:
        """Move the cursor forward outside a batch (backfill hand-off), with `meta` in the same transaction."""
        with self._tx():
            self._advance_cursor(cursor)
            for key, value in (meta or {}).items():
                self.set_meta(key, value)

    def _advance_cursor(self, cursor: Cursor) -> None:
        current = self.cursor()
        # State refuses to go backwards (meltano habit): an older cursor would replay events.
        if current is not None and cursor.created < current.created:
            raise StateError(f"Refusing to move the cursor back from {current.event_id} to {cursor.event_id}.")
        self.set_meta("cursor_event_id", cursor.event_id)
        self.set_meta("cursor_created", str(cursor.created))

    # --- ledger, versions -----------------------------------------------------------------
    def _rows_in(self, select: str, column: str, keys: Iterable[str]) -> Iterator[Any]:
        """`select` rows whose `column` is one of `keys`, 500 placeholders at a time (SQLite's limit)."""
        ids = list(dict.fromkeys(keys))
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            # `select` and `column` are this module's constants; the keys travel as parameters.
            yield from self._conn.execute(f"{select} WHERE {column} IN ({marks})", chunk)

    @_mapped_errors
    def outcomes_for(self, event_ids: Sequence[str]) -> dict[str, str]:
        """Durable outcomes of these events (those not yet seen are absent)."""
        return {row[0]: row[1] for row in self._rows_in("SELECT event_id, outcome FROM events", "event_id", event_ids)}

    @_mapped_errors
    def versions_for(self, object_ids: Iterable[str]) -> dict[str, int]:
        """Newest applied event time per Stripe object (the order guard)."""
        return {row[0]: row[1] for row in self._rows_in("SELECT object_id, created FROM object_versions",
                                                         "object_id", object_ids)}

    @_mapped_errors
    def version_events_for(self, object_ids: Iterable[str]) -> dict[str, tuple[int, str | None]]:
        """(newest applied time, what applied it) per object: `versions_for` with the event id column."""
        return {row[0]: (row[1], row[2]) for row in self._rows_in(
            "SELECT object_id, created, event_id FROM object_versions", "object_id", object_ids)}

    @_mapped_errors
    def customers_for(self, customer_ids: Iterable[str]) -> dict[str, CachedCustomer]:
        """What state knows of these customers (from customer.* events, backfill and earlier reads)."""
        rows = self._rows_in("SELECT customer_id, metadata, name, deleted, version, email FROM customers",
                             "customer_id", customer_ids)
        return {row[0]: CachedCustomer(row[0], json.loads(row[1]), row[2], bool(row[3]), row[4], row[5])
                for row in rows}

    @_mapped_errors
    def remember_customers(self, customers: Iterable[CachedCustomer]) -> None:
        """Keep customers' details; an older version never replaces a newer one, and nothing replaces a deletion
        but another (a deletion "cannot be undone": Stripe API reference, Delete a customer), which always does:
        a customer read before its customer.deleted event must not outlive it (issue 25)."""
        rows = [(c.customer_id, json.dumps(dict(c.metadata), sort_keys=True), c.name, int(c.deleted), c.version,
                 c.email) for c in customers]
        if not rows:
            return
        with self._tx():
            self._conn.executemany(
                "INSERT INTO customers(customer_id, metadata, name, deleted, version, email) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(customer_id) DO UPDATE SET metadata = excluded.metadata, name = excluded.name, "
                "deleted = excluded.deleted, version = excluded.version, "
                "email = COALESCE(excluded.email, customers.email) "
                "WHERE excluded.deleted = 1 OR (customers.deleted = 0 AND excluded.version >= customers.version)",
                rows)

    @_mapped_errors
    def commit_batch(self, outcomes: Sequence[Outcome], *, cursor: Cursor | None,
                     versions: dict[str, tuple[int, str]], run_id: int | None,
                     retried: bool = False, meta: dict[str, str] | None = None,
                     inbox_done: Sequence[str] = ()) -> None:
        """Record outcomes, object versions, the cursor and any checkpoint in one transaction; `inbox_done`
        marks webhook inbox entries done in that same transaction (a crash leaves them pending, and the
        ledger skips what was recorded when they are drained again)."""
        now = int(time.time())
        # executemany: one call per statement rather than per event (PostgreSQL pipelines the rows: one round
        # trip per event would make a 10,000-event commit take seconds; see benchmarks/README.md).
        with self._tx():
            self._conn.executemany(
                "INSERT INTO events(event_id, event_type, object_id, created, outcome, detail, run_id, "
                "recorded_at, pipeline) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(event_id) DO UPDATE SET "
                "outcome = excluded.outcome, detail = excluded.detail, run_id = excluded.run_id, "
                "recorded_at = excluded.recorded_at",
                [(o.event_id, o.event_type, o.object_id, o.created, o.kind, o.reason, run_id, now, self._pipeline)
                 for o in outcomes])
            self._fold_backfill_letters([o for o in outcomes if o.kind == "dead_letter"])
            self._conn.executemany(
                "INSERT INTO dead_letters(event_id, event_type, created, payload, reason, error_code, "
                "attempts, first_failed_at, last_failed_at, status, pipeline) VALUES (?,?,?,?,?,?,1,?,?,'open',?) "
                "ON CONFLICT(event_id) DO UPDATE SET reason = excluded.reason, "
                "error_code = excluded.error_code, attempts = dead_letters.attempts + 1, "
                "last_failed_at = excluded.last_failed_at, status = 'open', payload = excluded.payload",
                [(o.event_id, o.event_type, o.created, o.payload or "{}", o.reason or "unknown", o.code or "UNKNOWN",
                  now, now, self._pipeline) for o in outcomes if o.kind == "dead_letter"])
            if retried:
                self._conn.executemany("UPDATE dead_letters SET status = 'resolved', last_failed_at = ? "
                                       "WHERE event_id = ? AND pipeline = ?",
                                       [(now, o.event_id, self._pipeline) for o in outcomes
                                        if o.kind != "dead_letter"])
            self._conn.executemany(
                "INSERT INTO object_versions(object_id, created, event_id) VALUES (?,?,?) "
                "ON CONFLICT(object_id) DO UPDATE SET created = excluded.created, "
                "event_id = excluded.event_id WHERE excluded.created >= object_versions.created",
                [(object_id, created, event_id) for object_id, (created, event_id) in versions.items()])
            if cursor is not None:
                self._advance_cursor(cursor)
            for key, value in (meta or {}).items():
                self.set_meta(key, value)
            self._conn.executemany("UPDATE inbox SET status = 'done' WHERE event_id = ?",
                                   [(event_id,) for event_id in inbox_done])

    def _fold_backfill_letters(self, letters: Sequence[Outcome]) -> None:
        """A backfill's synthetic event id holds its run's time, so each rerun would add a second dead letter
        for an object that fails again. The object's letters for the same error code (one per earlier run,
        rows from before this rule included) become one, under the new id: the upsert that follows counts
        this run's attempt on it, and one dead letter stays per object and reason."""
        for o in letters:
            match = _BACKFILL_ID.fullmatch(o.event_id)
            if not match:
                continue
            suffix = "_" + match.group(1)
            rows = self._conn.execute(
                "SELECT event_id, attempts, first_failed_at FROM dead_letters WHERE pipeline = ? AND error_code = ? "
                "AND substr(event_id, 1, 6) = 'evt_bf' AND substr(event_id, length(event_id) - CAST(? AS "
                "INTEGER) + 1) = ? ORDER BY event_id = ? DESC, status = 'open' DESC, last_failed_at DESC",
                (self._pipeline, o.code or "UNKNOWN", len(suffix), suffix, o.event_id)).fetchall()
            rows = [r for r in rows if (m := _BACKFILL_ID.fullmatch(r[0])) and m.group(1) == match.group(1)]
            if not rows or [r[0] for r in rows] == [o.event_id]:
                continue
            self._conn.executemany("DELETE FROM dead_letters WHERE event_id = ?", [(r[0],) for r in rows[1:]])
            self._conn.execute("UPDATE dead_letters SET event_id = ?, attempts = ?, first_failed_at = ? "
                               "WHERE event_id = ?", (o.event_id, sum(r[1] for r in rows),
                                                      min(r[2] for r in rows), rows[0][0]))

    # --- the webhook inbox: written by `serve`'s receiver, drained by its worker ------------
    @_mapped_errors
    def inbox_add(self, event_id: str, created: int, payload: str, received_at: float) -> bool:
        """Keep a verified event, once per id (Stripe delivers at least once). Its own short transaction,
        which works while another process holds the run lock (WAL, busy timeout). False when the id was
        already there."""
        cur = self._conn.execute(
            "INSERT INTO inbox(event_id, created, received_at, payload, status, pipeline) "
            "VALUES (?,?,?,?,'pending',?) ON CONFLICT(event_id) DO NOTHING",
            (event_id, created, received_at, payload, self._pipeline))
        return cur.rowcount > 0

    @_mapped_errors
    def inbox_pending(self, limit: int) -> list[InboxEntry]:
        """Pending inbox entries, oldest event first."""
        rows = self._conn.execute("SELECT event_id, created, received_at, payload FROM inbox WHERE pipeline = ? "
                                  "AND status = 'pending' ORDER BY created, received_at, event_id LIMIT ?",
                                  (self._pipeline, limit))
        return [InboxEntry(r[0], r[1], r[2], r[3]) for r in rows]

    @_mapped_errors
    def inbox_depth(self) -> int:
        """Inbox entries not applied yet."""
        return int(self._conn.execute("SELECT COUNT(*) FROM inbox WHERE pipeline = ? AND status = 'pending'",
                                      (self._pipeline,)).fetchone()[0])

    @_mapped_errors
    def prune_inbox(self, now: int | None = None, *, limit: int = INBOX_PRUNE_LIMIT) -> int:
        """Drop at most `limit` applied inbox entries past the ledger's retention (their outcome is in the
        ledger until then). Bounded: the `created` range is read through the inbox's index, so a prune does
        not scan every applied row under the write lock (issue 20 §4); `serve` calls it again later."""
        cutoff = (now or int(time.time())) - LEDGER_RETENTION_S
        with self._tx():
            cur = self._conn.execute(
                "DELETE FROM inbox WHERE event_id IN (SELECT event_id FROM inbox WHERE pipeline = ? AND "
                "status = 'done' AND created < ? AND received_at < ? LIMIT ?)", (self._pipeline, cutoff, cutoff, limit))
        return cur.rowcount

    @_mapped_errors
    def prune_ledger(self, now: int | None = None) -> int:
        """Drop ledger rows older than Stripe could ever list again; dead letters are kept."""
        cutoff = (now or int(time.time())) - LEDGER_RETENTION_S
        with self._tx():
            cur = self._conn.execute("DELETE FROM events WHERE recorded_at < ? AND created < ?",
                                     (cutoff, cutoff))
        return cur.rowcount

    # --- dead letters ---------------------------------------------------------------------
    @_mapped_errors
    def dead_letters(self, *, status: str = "open", limit: int | None = None) -> list[DeadLetter]:
        """Dead letters with this status, oldest event first."""
        sql = "SELECT * FROM dead_letters WHERE pipeline = ? AND status = ? ORDER BY created, event_id"
        params: list[Any] = [self._pipeline, status]
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        return [_letter(r) for r in self._conn.execute(sql, params)]

    @_mapped_errors
    def dead_letter(self, event_id: str) -> DeadLetter | None:
        """One dead letter by event id."""
        row = self._conn.execute("SELECT * FROM dead_letters WHERE event_id = ? AND pipeline = ?",
                                 (event_id, self._pipeline)).fetchone()
        return _letter(row) if row else None

    @_mapped_errors
    def drop_dead_letter(self, event_id: str) -> bool:
        """Mark a dead letter dropped (kept for audit, no longer retried or counted)."""
        with self._tx():
            cur = self._conn.execute("UPDATE dead_letters SET status = 'dropped' WHERE event_id = ? "
                                     "AND pipeline = ? AND status = 'open'", (event_id, self._pipeline))
        return cur.rowcount > 0

    @_mapped_errors
    def dead_letter_count(self) -> int:
        """Open dead letters."""
        return int(self._conn.execute("SELECT COUNT(*) FROM dead_letters WHERE pipeline = ? AND status = 'open'",
                                      (self._pipeline,)).fetchone()[0])

    # --- runs -----------------------------------------------------------------------------
    @_mapped_errors
    def start_run(self, command: str) -> int:
        """Record the start of a run."""
        row = self._conn.execute("INSERT INTO runs(command, started_at, pipeline) VALUES (?, ?, ?) RETURNING run_id",
                                 (command, int(time.time()), self._pipeline)).fetchone()
        return int(row[0])

    @_mapped_errors
    def finish_run(self, run_id: int, exit_code: int, summary: dict[str, Any]) -> None:
        """Record how a run ended."""
        self._conn.execute("UPDATE runs SET finished_at = ?, exit_code = ?, summary = ? WHERE run_id = ?",
                           (int(time.time()), exit_code, json.dumps(summary, default=str), run_id))

    @_mapped_errors
    def prune_runs(self, command: str, keep: int) -> int:
        """Keep the newest `keep` runs of `command` (and its newest that did its work, for `status`); `serve`
        records a run per inbox drain, so its runs would otherwise grow without end."""
        p = self._pipeline
        with self._tx():
            cur = self._conn.execute(
                "DELETE FROM runs WHERE pipeline = ? AND command = ? AND run_id < (SELECT run_id FROM runs WHERE "
                "pipeline = ? AND command = ? ORDER BY run_id DESC LIMIT 1 OFFSET ?) AND run_id <> COALESCE(("
                "SELECT MAX(run_id) FROM runs WHERE pipeline = ? AND command = ? AND exit_code IN (0, 3)), -1)",
                (p, command, p, command, keep - 1, p, command))
        return cur.rowcount

    @_mapped_errors
    def discard_run(self, run_id: int) -> None:
        """Forget a run that never started its work (a mistake in the command line): it is not a failure."""
        self._conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    @_mapped_errors
    def last_success(self, command: str) -> int | None:
        """When the newest run of `command` that did its work (exit 0, or 3: some dead letters) ended."""
        row = self._conn.execute("SELECT MAX(finished_at) FROM runs WHERE pipeline = ? AND command = ? "
                                 "AND exit_code IN (0, 3)", (self._pipeline, command)).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    @_mapped_errors
    def recent_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        """The latest runs, newest first."""
        rows = self._conn.execute("SELECT * FROM runs WHERE pipeline = ? ORDER BY run_id DESC LIMIT ?",
                                  (self._pipeline, limit)).fetchall()
        return [_run(r) for r in rows]

    @_mapped_errors
    def last_run_of(self, command: str) -> dict[str, Any] | None:
        """The newest finished run of `command` (its summary decoded), or None."""
        row = self._conn.execute("SELECT * FROM runs WHERE pipeline = ? AND command = ? AND exit_code IS NOT NULL "
                                 "ORDER BY run_id DESC LIMIT 1", (self._pipeline, command)).fetchone()
        return _run(row) if row is not None else None


def _letter(row: Any) -> DeadLetter:
    """A dead letter from its row (the pipeline column is the store's own)."""
    d = dict(row)
    d.pop("pipeline", None)
    return DeadLetter(**d)


def _run(row: Any) -> dict[str, Any]:
    """A run from its row, its summary decoded (the pipeline column is the store's own)."""
    d = dict(row)
    d.pop("pipeline", None)
    d["summary"] = json.loads(d["summary"]) if d.get("summary") else None
    return d


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


if TYPE_CHECKING:
    def _is_a_store(store: StateStore) -> Store:
        """mypy checks here that the store has every operation of the interface, with its signature."""
        return store
