"""SQLite state: the cursor, the event ledger, object versions, dead letters and run history.

One transaction per batch records every event's outcome and advances the cursor, so the cursor never
passes an event whose outcome is not stored. WAL mode lets `status` read while a `sync` writes.
The PostgreSQL store (state_pg.py) runs these same statements through a small dialect layer; `open_state`
chooses between the two by the configured URL.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from stripe_sf_sync.errors import LockHeldError, NoStateError, StateError, missing_extra
from stripe_sf_sync.model import CachedCustomer

INBOX_PRUNE_LIMIT = 1000  # applied inbox entries dropped per prune, at most
SCHEMA_VERSION = 3  # 2: the customers table; 3: the webhook inbox
_BACKFILL_ID = re.compile(r"evt_bf\d+_(.+)")  # backfill.synthetic_event's id: the run's time, the object id
LEDGER_RETENTION_S = 40 * 86400  # longer than Stripe's 30-day event retention: re-reads stay deduplicated

P = ParamSpec("P")
R = TypeVar("R")

OutcomeKind = Literal["applied", "stale", "ignored", "dead_letter"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY, event_type TEXT NOT NULL, object_id TEXT, created INTEGER NOT NULL,
    outcome TEXT NOT NULL, detail TEXT, run_id INTEGER, recorded_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_recorded ON events(recorded_at);
CREATE TABLE IF NOT EXISTS object_versions (
    object_id TEXT PRIMARY KEY, created INTEGER NOT NULL, event_id TEXT);
CREATE TABLE IF NOT EXISTS dead_letters (
    event_id TEXT PRIMARY KEY, event_type TEXT NOT NULL, created INTEGER NOT NULL, payload TEXT NOT NULL,
    reason TEXT NOT NULL, error_code TEXT NOT NULL, attempts INTEGER NOT NULL,
    first_failed_at INTEGER NOT NULL, last_failed_at INTEGER NOT NULL, status TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS dead_letters_status ON dead_letters(status);
CREATE TABLE IF NOT EXISTS customers (
    customer_id TEXT PRIMARY KEY, metadata TEXT NOT NULL, name TEXT, deleted INTEGER NOT NULL,
    version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (
    event_id TEXT PRIMARY KEY, created INTEGER NOT NULL, received_at REAL NOT NULL, payload TEXT NOT NULL,
    status TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS inbox_pending ON inbox(status, created, received_at);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT, command TEXT NOT NULL, started_at INTEGER NOT NULL,
    finished_at INTEGER, exit_code INTEGER, summary TEXT);
"""


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


def _mapped_errors(method: Callable[Concatenate[StateStore, P], R]) -> Callable[Concatenate[StateStore, P], R]:
    """The database's errors leave the store as a StateError naming it: callers need not know which it is."""
    @functools.wraps(method)
    def wrapper(self: StateStore, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._guard(functools.partial(method, self, *args, **kwargs))
    return wrapper


class StateStore:
    """The SQLite state file. Open it with `StateStore.open(path)` (or `open_state`, which also knows PostgreSQL)."""

    backend = "sqlite"
    _BEGIN = "BEGIN IMMEDIATE"  # SQLite: take the write lock at the start, not at the first write

    def __init__(self, conn: Any, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock_fd: int | None = None

    @property
    def location(self) -> str:
        """Where the state is, as shown to people (the file; for PostgreSQL the URL, password masked)."""
        return str(self.path)

    def _guard(self, call: Callable[[], R]) -> R:
        """Run one store operation; SQLite's errors become a StateError naming the file."""
        try:
            return call()
        except sqlite3.DatabaseError as exc:
            raise state_error(exc, self.path) from exc

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> StateStore:
        """Open (and create with mode 0600) the state file; check its schema version."""
        path = Path(path)
        if not path.exists():
            if not create:
                raise NoStateError(f"No state file at {path}.",
                                 hint="Run `stripe-sf sync --since DATE` first, or check --config.")
            _create(path)
        else:
            _check_writable(path)
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 5000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise StateError(
                    f"The state file {path} has schema version {version}, newer than this stripe-sf "
                    f"understands ({SCHEMA_VERSION}).",
                    hint="Upgrade stripe-sf (pip install -U stripe-sf-sync) rather than downgrading.")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(_SCHEMA)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            if _is_access_error(exc):
                raise _not_writable(path, path.parent, str(exc)) from None
            raise _unusable(path, exc) from None
        for suffix in ("-wal", "-shm"):
            side = Path(f"{path}{suffix}")
            if side.exists():
                with contextlib.suppress(OSError):
                    os.chmod(side, 0o600)
        return cls(conn, path)

    @classmethod
    def open_read_only(cls, path: Path) -> StateStore:
        """Open the state file to read (`status`), without the write access a run needs (an operator's account,
        a read-only mount). SQLite reads a WAL database read-only when its -wal and -shm files exist or can be
        created (sqlite.org/wal.html, "Read-Only Databases"). Without them and without a writable directory,
        no writer has the file open (the last connection to close removes them), so the file alone holds
        every commit: it is read as immutable. With a -wal that cannot be read, the error says what is needed."""
        path = Path(path)
        if not path.exists():
            raise NoStateError(f"No state file at {path}.",
                               hint="Run `stripe-sf sync --since DATE` first, or check --config.")
        if not os.access(path, os.R_OK):
            raise StateError(f"Cannot read the state file {path}: permission denied.", hint=_READABLE_HINT)
        uri = path.resolve().as_uri()
        try:
            return cls._read_only(f"{uri}?mode=ro", path)
        except sqlite3.DatabaseError as exc:
            if not _is_access_error(exc):
                raise _unusable(path, exc) from None  # corrupt, or locked by another program
            if Path(f"{path}-wal").exists():
                raise StateError(f"Cannot read the state file {path}: {exc}.", hint=_READABLE_HINT) from None
        try:
            return cls._read_only(f"{uri}?mode=ro&immutable=1", path)
        except sqlite3.DatabaseError as exc:
            raise state_error(exc, path) from None

    @classmethod
    def _read_only(cls, uri: str, path: Path) -> StateStore:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 5000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # reads the file: fails here if it must
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"The state file {path} has schema version {version}, newer than this stripe-sf "
                    f"understands ({SCHEMA_VERSION}).",
                    hint="Upgrade stripe-sf (pip install -U stripe-sf-sync) rather than downgrading.")
            conn.execute("SELECT COUNT(*) FROM runs").fetchone()  # an older file's missing table fails later
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        """Release the lock and close the database."""
        self.release_lock()
        self._conn.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the run lock: a flock is released by the kernel when the process dies ---------------
    def acquire_lock(self) -> None:
        """Take the exclusive run lock or raise LockHeldError at once."""
        lock_path = Path(f"{self.path}.lock")
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            raise _not_writable(lock_path, lock_path.parent, exc.strerror or str(exc)) from None
        try:
            _flock_briefly_retried(fd)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockHeldError(
                f"Another stripe-sf run (pid {holder}) is using {self.path}.",
                hint="This run exits so cron runs never overlap; the next scheduled run continues.") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def lock_held(self) -> bool:
        """Whether a run (in any process) holds the run lock now. Probed with a shared lock held for an
        instant and never created: a run that died (SIGKILL, power loss) released its lock with its process."""
        if self._lock_fd is not None:
            return True
        try:
            fd = os.open(Path(f"{self.path}.lock"), os.O_RDONLY)
        except FileNotFoundError:
            return False
        except PermissionError:  # an operator's account reading status: say what it needs, never guess
            raise StateError(f"Cannot read the run lock {self.path}.lock: permission denied.",
                             hint=_READABLE_HINT) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def release_lock(self) -> None:
        """Drop the run lock if held."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    # --- meta -----------------------------------------------------------------------------
    @_mapped_errors
    def get_meta(self, key: str) -> str | None:
        """A stored setting, or None."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @_mapped_errors
    def set_meta(self, key: str, value: str) -> None:
        """Store a setting (its own transaction)."""
        self._conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    @_mapped_errors
    def delete_meta(self, key: str) -> None:
        """Forget a setting."""
        self._conn.execute("DELETE FROM meta WHERE key = ?", (key,))

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
        rows = self._rows_in("SELECT customer_id, metadata, name, deleted, version FROM customers", "customer_id",
                             customer_ids)
        return {row[0]: CachedCustomer(row[0], json.loads(row[1]), row[2], bool(row[3]), row[4]) for row in rows}

    @_mapped_errors
    def remember_customers(self, customers: Iterable[CachedCustomer]) -> None:
        """Keep customers' details; an older version never replaces a newer one."""
        rows = [(c.customer_id, json.dumps(dict(c.metadata), sort_keys=True), c.name, int(c.deleted), c.version)
                for c in customers]
        if not rows:
            return
        with self._tx():
            self._conn.executemany(
                "INSERT INTO customers(customer_id, metadata, name, deleted, version) VALUES (?,?,?,?,?) "
                "ON CONFLICT(customer_id) DO UPDATE SET metadata = excluded.metadata, name = excluded.name, "
                "deleted = excluded.deleted, version = excluded.version "
                "WHERE excluded.version >= customers.version", rows)

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
                "recorded_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(event_id) DO UPDATE SET "
                "outcome = excluded.outcome, detail = excluded.detail, run_id = excluded.run_id, "
                "recorded_at = excluded.recorded_at",
                [(o.event_id, o.event_type, o.object_id, o.created, o.kind, o.reason, run_id, now) for o in outcomes])
            self._fold_backfill_letters([o for o in outcomes if o.kind == "dead_letter"])
            self._conn.executemany(
                "INSERT INTO dead_letters(event_id, event_type, created, payload, reason, error_code, "
                "attempts, first_failed_at, last_failed_at, status) VALUES (?,?,?,?,?,?,1,?,?,'open') "
                "ON CONFLICT(event_id) DO UPDATE SET reason = excluded.reason, "
                "error_code = excluded.error_code, attempts = dead_letters.attempts + 1, "
                "last_failed_at = excluded.last_failed_at, status = 'open', payload = excluded.payload",
                [(o.event_id, o.event_type, o.created, o.payload or "{}", o.reason or "unknown", o.code or "UNKNOWN",
                  now, now) for o in outcomes if o.kind == "dead_letter"])
            if retried:
                self._conn.executemany("UPDATE dead_letters SET status = 'resolved', last_failed_at = ? "
                                       "WHERE event_id = ?",
                                       [(now, o.event_id) for o in outcomes if o.kind != "dead_letter"])
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
                "SELECT event_id, attempts, first_failed_at FROM dead_letters WHERE error_code = ? "
                "AND substr(event_id, 1, 6) = 'evt_bf' AND substr(event_id, length(event_id) - CAST(? AS "
                "INTEGER) + 1) = ? ORDER BY event_id = ? DESC, status = 'open' DESC, last_failed_at DESC",
                (o.code or "UNKNOWN", len(suffix), suffix, o.event_id)).fetchall()
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
            "INSERT INTO inbox(event_id, created, received_at, payload, status) VALUES (?,?,?,?,'pending') "
            "ON CONFLICT(event_id) DO NOTHING", (event_id, created, received_at, payload))
        return cur.rowcount > 0

    @_mapped_errors
    def inbox_pending(self, limit: int) -> list[InboxEntry]:
        """Pending inbox entries, oldest event first."""
        rows = self._conn.execute("SELECT event_id, created, received_at, payload FROM inbox WHERE status = "
                                  "'pending' ORDER BY created, received_at, event_id LIMIT ?", (limit,))
        return [InboxEntry(r[0], r[1], r[2], r[3]) for r in rows]

    @_mapped_errors
    def inbox_depth(self) -> int:
        """Inbox entries not applied yet."""
        return int(self._conn.execute("SELECT COUNT(*) FROM inbox WHERE status = 'pending'").fetchone()[0])

    @_mapped_errors
    def prune_inbox(self, now: int | None = None, *, limit: int = INBOX_PRUNE_LIMIT) -> int:
        """Drop at most `limit` applied inbox entries past the ledger's retention (their outcome is in the
        ledger until then). Bounded: the `created` range is read through the inbox's index, so a prune does
        not scan every applied row under the write lock (issue 20 §4); `serve` calls it again later."""
        cutoff = (now or int(time.time())) - LEDGER_RETENTION_S
        with self._tx():
            cur = self._conn.execute(
                "DELETE FROM inbox WHERE event_id IN (SELECT event_id FROM inbox WHERE status = 'done' "
                "AND created < ? AND received_at < ? LIMIT ?)", (cutoff, cutoff, limit))
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
        sql = "SELECT * FROM dead_letters WHERE status = ? ORDER BY created, event_id"
        params: list[Any] = [status]
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        return [DeadLetter(**dict(r)) for r in self._conn.execute(sql, params)]

    @_mapped_errors
    def dead_letter(self, event_id: str) -> DeadLetter | None:
        """One dead letter by event id."""
        row = self._conn.execute("SELECT * FROM dead_letters WHERE event_id = ?", (event_id,)).fetchone()
        return DeadLetter(**dict(row)) if row else None

    @_mapped_errors
    def drop_dead_letter(self, event_id: str) -> bool:
        """Mark a dead letter dropped (kept for audit, no longer retried or counted)."""
        with self._tx():
            cur = self._conn.execute("UPDATE dead_letters SET status = 'dropped' WHERE event_id = ? "
                                     "AND status = 'open'", (event_id,))
        return cur.rowcount > 0

    @_mapped_errors
    def dead_letter_count(self) -> int:
        """Open dead letters."""
        return int(self._conn.execute("SELECT COUNT(*) FROM dead_letters WHERE status = 'open'").fetchone()[0])

    # --- runs -----------------------------------------------------------------------------
    @_mapped_errors
    def start_run(self, command: str) -> int:
        """Record the start of a run."""
        row = self._conn.execute("INSERT INTO runs(command, started_at) VALUES (?, ?) RETURNING run_id",
                                 (command, int(time.time()))).fetchone()
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
        with self._tx():
            cur = self._conn.execute(
                "DELETE FROM runs WHERE command = ? AND run_id < (SELECT run_id FROM runs WHERE command = ? "
                "ORDER BY run_id DESC LIMIT 1 OFFSET ?) AND run_id <> COALESCE((SELECT MAX(run_id) FROM runs "
                "WHERE command = ? AND exit_code IN (0, 3)), -1)", (command, command, keep - 1, command))
        return cur.rowcount

    @_mapped_errors
    def discard_run(self, run_id: int) -> None:
        """Forget a run that never started its work (a mistake in the command line): it is not a failure."""
        self._conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    @_mapped_errors
    def last_success(self, command: str) -> int | None:
        """When the newest run of `command` that did its work (exit 0, or 3: some dead letters) ended."""
        row = self._conn.execute("SELECT MAX(finished_at) FROM runs WHERE command = ? AND exit_code IN (0, 3)",
                                 (command,)).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    @_mapped_errors
    def recent_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        """The latest runs, newest first."""
        rows = self._conn.execute("SELECT * FROM runs ORDER BY run_id DESC LIMIT ?", (limit,)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["summary"] = json.loads(d["summary"]) if d.get("summary") else None
            out.append(d)
        return out

    @_mapped_errors
    def last_run_of(self, command: str) -> dict[str, Any] | None:
        """The newest finished run of `command` (its summary decoded), or None."""
        row = self._conn.execute("SELECT * FROM runs WHERE command = ? AND exit_code IS NOT NULL "
                                 "ORDER BY run_id DESC LIMIT 1", (command,)).fetchone()
        if row is None:
            return None
        d = dict(row)
        d["summary"] = json.loads(d["summary"]) if d.get("summary") else None
        return d

    @_mapped_errors
    def integrity_check(self) -> str:
        """SQLite's own integrity check ('ok' when healthy)."""
        return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self._conn.execute(self._BEGIN)
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        self._conn.execute("COMMIT")

    def _rollback(self) -> None:
        self._conn.execute("ROLLBACK")


_WRITABLE_HINT = ("stripe-sf needs to create and write files in that directory: the state file, its -wal and -shm "
                  "files (SQLite's write-ahead log) and the .lock file. Run stripe-sf as the user that owns it, make "
                  "it writable for that user (`chown`/`chmod u+rwx`), or set sync.state_path in the config to a "
                  "writable place.")


def _create(path: Path) -> None:
    """Create the state file, and its directory when missing, with mode 0600; a directory that cannot be
    made or written is a StateError naming it."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StateError(f"The state directory {directory} is not a directory.",
                         hint="Set sync.state_path in the config to a file in a writable directory.") from None
    except OSError as exc:
        raise StateError(f"Cannot create the state directory {directory}: {exc.strerror or exc}.",
                         hint=("Create it and make it writable for the user that runs stripe-sf (`mkdir -p "
                               f"{directory}`, then `chown`), or set sync.state_path in the config to a "
                               "writable place.")) from None
    _check_writable(path)
    try:
        # Created 0600 before SQLite touches it: it holds customer payloads in dead letters.
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    except OSError as exc:
        raise _not_writable(path, directory, exc.strerror or str(exc)) from None
    os.close(fd)


def _check_writable(path: Path) -> None:
    """The state file (when it exists) and its directory must be writable: SQLite creates its -wal and -shm
    files next to the file, and the run lock is a file there too. access(2) also reports a read-only file
    system (EROFS), even to root."""
    directory = path.parent
    if not os.access(directory, os.W_OK | os.X_OK):
        raise _not_writable(path, directory, "the directory is read-only")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise _not_writable(path, directory, "the file is not readable and writable")


_READABLE_HINT = ("`stripe-sf status` needs read access to the state file, its .lock file (to tell a running run "
                  "from one that died), and while a run has it open, its -wal and -shm files (or write access to "
                  "their directory, where SQLite creates them). Give this account read access to them (a group "
                  "with `chmod g+r`), or run status as the account that runs sync.")


def _unusable(path: Path, exc: sqlite3.DatabaseError) -> StateError:
    return StateError(f"The state file {path} cannot be used: {exc}.",
                      hint="If another program holds it, wait and retry; if it is corrupt, move it aside and "
                           "restart with `stripe-sf sync --since DATE` (re-applying is idempotent).")


def _not_writable(path: Path, directory: Path, why: str) -> StateError:
    return StateError(f"Cannot write the state file {path}: {why} (directory {directory}).", hint=_WRITABLE_HINT)


def _is_access_error(exc: sqlite3.DatabaseError) -> bool:
    """SQLite's words for a file or directory it may not write (SQLITE_READONLY, SQLITE_CANTOPEN)."""
    text = str(exc).lower()
    return "readonly" in text or "read-only" in text or "unable to open" in text


def state_error(exc: sqlite3.DatabaseError, path: Path) -> StateError:
    """A clear StateError for SQLite's own errors once the file is open (corrupt pages, a lock held
    by another program), naming the file and what to do."""
    text = str(exc)
    if _is_access_error(exc):
        return _not_writable(path, path.parent, text)
    if "locked" in text or "busy" in text:
        return StateError(f"The state file {path} is locked by another program ({text}).",
                          hint="Close whatever has it open (an sqlite3 shell, a backup job), then run again.")
    return StateError(f"The state file {path} cannot be read: {text}.",
                      hint="Move it aside and restart with `stripe-sf sync --since DATE` (re-applying is "
                           "idempotent), or restore it from a backup.")


def _flock_briefly_retried(fd: int, attempts: int = 5, pause_s: float = 0.02) -> None:
    """The exclusive lock, or BlockingIOError. A few short retries: `lock_held` (status) holds a shared lock
    for an instant, and a run starting in that instant must not be turned away as if another run held it."""
    for attempt in range(attempts):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == attempts - 1:
                raise
            time.sleep(pause_s)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def open_state(path: Path, url: str | None = None, *, create: bool = True, read_only: bool = False) -> StateStore:
    """The state store: PostgreSQL when a URL is configured (STRIPE_SF_STATE_URL or state.url), else the SQLite
    file at `path` (`read_only`: for commands that only read, which then need no write access to it). psycopg
    is imported only here, on that path: the core install does not need it."""
    if url:
        with missing_extra("A postgresql:// state URL (STRIPE_SF_STATE_URL or state.url)", "postgres",
                           "run the command again"):
            from stripe_sf_sync.state.postgres import PgStateStore
        return PgStateStore.connect(url, create=create)
    return StateStore.open_read_only(path) if read_only else StateStore.open(path, create=create)
