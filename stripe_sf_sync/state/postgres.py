"""The PostgreSQL dialect of the state store, on a shared server (more than one host, no volume).

`connect(url)` gives the one `StateStore`, running its statements over a `PgDatabase`: a psycopg connection
behind `_PgConnection` (`?` placeholders become `%s`; rows answer by index and by name). What differs from
SQLite is here: opening (the schema of state/schema.py in PostgreSQL's types, versioned as in SQLite), the run
lock (state/postgres_lock.py) and a connection lost mid-run: reconnected once and the same operation retried (a
batch's transaction rolled back with the connection, and re-applying a batch is idempotent); lost again, the
run stops with the unavailable exit code.

Every write transaction checks the run lock's lease just before its COMMIT, so a run that lost it commits
nothing more. On a direct connection (no pooler between us and the server, `_is_direct`) the run also holds the
session advisory lock: the server frees it with a crashed holder's connection, and the next run takes over at
once rather than after the lease. Nothing relies on session state across transactions behind a pooler: no SET,
no advisory lock, no prepared statements.

psycopg is imported here only (and by the lock), so the core install does not need the [postgres] extra.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import psycopg

from stripe_sf_sync.config import masked_url
from stripe_sf_sync.errors import LockHeldError, NoStateError, StateError, StateUnavailableError
from stripe_sf_sync.state.migrate import migrate_from
from stripe_sf_sync.state.postgres_lock import (
    CONNECT_TIMEOUT_S,
    DEFAULT_LEASE_S,
    HELD,
    LEASE_ENV,
    RENEW,
    TAKE,
    Heartbeat,
    advisory_ids,
    first_line,
    lease_seconds,
    lock_key,
)
from stripe_sf_sync.state.schema import (
    PG_SCHEMA_VERSION,
    PG_VERSION_KEY,
    SCHEMA_VERSION,
    TABLES,
    VERSION_KEY,
    pg_schema,
)
from stripe_sf_sync.state.store import StateStore

# Re-exported for the modules that import them from here (`state migrate`, the tests).
__all__ = ["DEFAULT_LEASE_S", "LEASE_ENV", "PgDatabase", "PgStateStore", "connect", "lease_seconds", "lock_key",
           "migrate_from"]

log = logging.getLogger("stripe_sf_sync")
R = TypeVar("R")

PREPARE_THRESHOLD = 5  # psycopg's default: prepare a statement from its 5th execution (direct connections only)
RELOCK_TRIES, RELOCK_PAUSE_S = 25, 0.2  # after a reconnect: up to 5 s for the server to end the old session
_SCHEMA_LOCK_KEY = 0x5354_5346_5343_4845  # "STSFSCHE": serialises two first runs creating the schema
# The store on PostgreSQL is the one StateStore over a PgDatabase (composition, not a subclass); this name
# stays for the modules that import it.
PgStateStore = StateStore


def connect(url: str, *, create: bool = True, pipeline: str = "default") -> StateStore:
    """The state store of `pipeline` on PostgreSQL: connect, and create or migrate the schema; a newer schema
    is refused (the state exit code)."""
    return StateStore(PgDatabase.connect(url, create=create), pipeline=pipeline)


class _Row(tuple):
    """A row that answers by index (row[0]) and by name (row["event_id"], dict(row)), as sqlite3.Row does."""

    _names: tuple[str, ...] = ()

    def keys(self) -> tuple[str, ...]:
        return self._names

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], _Row]:
    names = tuple(c.name for c in cursor.description or ())

    def make(values: Sequence[Any]) -> _Row:
        row = _Row(values)
        row._names = names
        return row
    return make


class _PgConnection:
    """The part of sqlite3.Connection the store uses, over a psycopg connection in autocommit mode (so that
    reads never hold a transaction open; `PgDatabase.transaction` issues BEGIN/COMMIT itself)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> psycopg.Cursor[Any]:
        if isinstance(params, Mapping):  # named %(name)s placeholders, as psycopg takes them
            return self.raw.execute(sql, params)
        # Our statements hold no literal `?` or `%`: the placeholders translate one for one.
        return self.raw.execute(sql.replace("?", "%s"), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cur = self.raw.cursor()
        if rows := list(rows):  # psycopg sends them in one pipeline: one round trip, not one per row
            cur.executemany(sql.replace("?", "%s"), rows)
        return cur

    def close(self) -> None:
        self.raw.close()


def _connect(url: str, location: str) -> psycopg.Connection[Any]:
    """A connection in autocommit mode; the password comes from the URL or PGPASSWORD (libpq reads it)."""
    try:
        return _raw_connect(url)
    except psycopg.Error as exc:
        raise StateUnavailableError(
            f"Cannot connect to the state database {location}: {first_line(exc)}.",
            hint="Check that the server is up and reachable, the user, the database name and PGPASSWORD (or "
                 "the URL's password); then run again. Nothing was written.") from None


def _raw_connect(url: str, timeout_s: int = CONNECT_TIMEOUT_S) -> psycopg.Connection[Any]:
    # prepare_threshold=None: no server-side prepared statements, which a transaction-mode pooler cannot
    # follow from one server connection to the next (psycopg.org/psycopg3/docs/advanced/prepare.html); a
    # direct connection turns them back on (`_session`).
    return psycopg.connect(url, autocommit=True, connect_timeout=timeout_s, prepare_threshold=None,
                           application_name="stripe-sf", row_factory=_row_factory)


def _session(raw: psycopg.Connection[Any]) -> None:
    """What a direct connection may rely on, and a transaction-mode pooler could not follow. Server-side
    prepared statements (psycopg's default threshold): a batch's executemany of 10,000 rows takes about half
    the time with them (benchmarks/state_bench.py). TCP keepalives (a SET behind a pooler would change
    whichever server connection ran it): the server notices a holder that vanished (power loss) within about
    two minutes, and frees its advisory lock."""
    raw.prepare_threshold = PREPARE_THRESHOLD
    raw.execute("SET tcp_keepalives_idle = 60; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 6")


def _is_direct(raw: psycopg.Connection[Any]) -> bool:
    """Whether this connection reaches the server itself, with no pooler or proxy in between: the server's
    own address and port (as it sees them) are the ones we connected to. A pooler (PgBouncer on 6432,
    Supavisor on 6543, a `-pooler` host) or a proxy answers from another address or port: then the run lock
    is the lease alone. A proxy taken for a pooler only makes a crashed holder's lock wait for its lease."""
    row = raw.execute("SELECT host(inet_server_addr()), current_setting('port'), "
                      "current_setting('unix_socket_directories')").fetchone()
    server_addr, port, socket_dirs = row  # type: ignore[misc]
    if int(port) != raw.info.port:
        return False
    if server_addr is None:  # a Unix socket: the server listens in the directory we connected to
        return raw.info.host in {d.strip() for d in str(socket_dirs).split(",")}
    try:
        return ipaddress.ip_address(raw.info.hostaddr) == ipaddress.ip_address(server_addr)
    except (ValueError, psycopg.NotSupportedError):
        return False


def _unavailable(location: str, exc: BaseException) -> StateUnavailableError:
    return StateUnavailableError(
        f"Lost the connection to the state database {location} again after reconnecting once: {first_line(exc)}.",
        hint="Nothing of the batch at hand was committed; the next run repeats it (re-applying is idempotent). "
             "Check the server and the network, then run again.")


class PgDatabase:
    """The state database on PostgreSQL, as the store core uses it: statements run on `conn`; transactions
    (fenced by the run lock's lease), the run lock, errors and the one reconnect here."""

    backend = "postgresql"
    _BEGIN = "BEGIN"

    def __init__(self, conn: _PgConnection, url: str, scope: str, *, direct: bool = False) -> None:
        self.conn: Any = conn  # a _PgConnection (tests wrap it to count or cut statements)
        self.url = url
        self._scope = scope  # the database and schema: the default pipeline's lock key, as before pipelines
        self._lock_key = self.key_for("default")  # the lock held, or last asked for
        self._lock_pipeline = "default"
        self._direct = direct  # no pooler in between: the run also holds the session advisory lock
        self._lease_s = lease_seconds()
        self._locked = False
        self._token: str | None = None  # this run's lease, while held
        self._heartbeat: Heartbeat | None = None
        self._lost: str | None = None  # why the heartbeat lost the lease
        self._lost_reported = False
        self._depth = 0
        self._mutex = threading.RLock()  # `serve` shares one store between threads

    @property
    def location(self) -> str:
        """The URL, its password masked."""
        return masked_url(self.url)

    @classmethod
    def connect(cls, url: str, *, create: bool = True) -> PgDatabase:
        """Connect, and create or migrate the schema; a newer schema is refused (the state exit code)."""
        location = masked_url(url)
        lease_seconds()  # a wrong STRIPE_SF_LOCK_LEASE_S is a config error before anything else
        raw = _connect(url, location)
        try:
            direct = _is_direct(raw)
            if direct:
                _session(raw)
            _prepare_schema(raw, location, create=create)
            db, schema = raw.execute("SELECT current_database(), current_schema()").fetchone() or ("", "")
        except BaseException:
            raw.close()
            raise
        return cls(_PgConnection(raw), url, f"{db}/{schema}", direct=direct)

    def key_for(self, pipeline: str) -> int:
        """A pipeline's lock key: the default pipeline keeps the key of the store (an older stripe-sf takes
        it, so it still excludes a newer one); another pipeline's is derived from its name too."""
        return lock_key(self._scope if pipeline == "default" else f"{self._scope}#pipeline:{pipeline}")

    def close(self) -> None:
        """Release the run lock and close the connection."""
        self.release_lock(self._lock_pipeline)
        self.conn.close()

    # --- errors: one reconnect for a lost connection ----------------------------------------
    def guard(self, call: Callable[[], R]) -> R:
        """One store operation. Nested operations (commit_batch reads the cursor) run inside the outer one,
        whose retry covers them all."""
        with self._mutex:
            if self._depth:
                return call()
            self._check_lease(writing=False)
            self._depth += 1
            try:
                return self._retried_once(call)
            finally:
                self._depth -= 1

    def _retried_once(self, call: Callable[[], R]) -> R:
        try:
            return call()
        except psycopg.Error as exc:
            if not self.conn.raw.broken:
                raise self._error(exc) from exc
            log.warning("Lost the connection to the state database %s (%s): reconnecting once and repeating "
                        "the operation.", self.location, first_line(exc))
        self._reconnect()
        try:
            return call()
        except psycopg.Error as exc:
            if self.conn.raw.broken:
                raise _unavailable(self.location, exc) from exc
            raise self._error(exc) from exc

    def _reconnect(self) -> None:
        """A new connection. The lease outlives it (the heartbeat has its own); on a direct connection the
        advisory lock went with the old one, so it is taken again. The server frees it once the old session
        has ended, which may take it a moment: a few tries, then LockHeldError (another run took it)."""
        self.conn.close()
        raw = _connect(self.url, self.location)
        self.conn = _PgConnection(raw)
        if self._direct:
            _session(raw)
        if not (self._locked and self._direct):
            return
        for _ in range(RELOCK_TRIES):
            if self._try_advisory():
                return
            time.sleep(RELOCK_PAUSE_S)
        self._lose("another run took it over while the connection was lost")
        self._check_lease(writing=True)

    def _error(self, exc: psycopg.Error) -> StateError:
        return StateError(f"The state database {self.location} refused an operation: {first_line(exc)}.",
                          hint="Check the database user's rights on the stripe-sf tables and the server's log; "
                               "then run again (re-applying a batch is idempotent).")

    def _rollback(self) -> None:
        if not self.conn.raw.broken:  # a lost connection rolled the transaction back with it
            self.conn.execute("ROLLBACK")

    # --- the run lock: a lease row, plus a session advisory lock on a direct connection ------------
    def acquire_lock(self, pipeline: str) -> None:
        """Take the run lock or raise LockHeldError at once, naming the holder's host and pid: the lease row
        (every connection), taken in one statement, and on a direct connection the session advisory lock
        first (freed by the server with a crashed holder's connection: the next run need not wait for the
        lease to expire). Then the heartbeat renews the lease until `release_lock`. One connection holds one
        pipeline's lock at a time (each run opens its own store)."""
        if self._locked and pipeline != self._lock_pipeline:
            raise StateError(f"This store holds the run lock of pipeline {self._lock_pipeline} already.",
                             hint="Open a store per pipeline to run several at once.")
        self._lock_key, self._lock_pipeline = self.key_for(pipeline), pipeline
        self._lost, self._lost_reported = None, False
        token = uuid.uuid4().hex
        if self._direct and not self._try_advisory():
            raise self._held_error()
        try:
            taken = self.guard(lambda: self.conn.execute(TAKE, self._take_params(token)).rowcount == 1)
        except BaseException:
            self._unlock_advisory()
            raise
        if not taken:
            self._unlock_advisory()
            raise self._held_error()
        self._token, self._locked = token, True
        self._heartbeat = Heartbeat(self.url, self._lock_key, token, self._lease_s, self._lose)
        self._heartbeat.start()

    def _take_params(self, token: str) -> dict[str, Any]:
        return {"key": self._lock_key, "host": socket.gethostname(), "pid": os.getpid(), "now": int(time.time()),
                "token": token, "lease": self._lease_s, "direct": self._direct, **advisory_ids(self._lock_key)}

    def _try_advisory(self) -> bool:
        return bool(self.guard(lambda: self.conn.execute("SELECT pg_try_advisory_lock(?)", (self._lock_key,))
                                .fetchone()[0]))

    def _unlock_advisory(self) -> None:
        if self._direct:
            # A connection that died took the lock with it: nothing left to release.
            with contextlib.suppress(psycopg.OperationalError):
                self.conn.execute("SELECT pg_advisory_unlock(?)", (self._lock_key,))

    def _lose(self, why: str) -> None:
        """The heartbeat lost the lease: the run's next store operation stops it (`_check_lease`)."""
        log.error("The run lock of %s is lost: %s. This run stops before its next write.", self.location, why)
        self._lost = why

    def _check_lease(self, *, writing: bool) -> None:
        """Stop a run that lost its lease: its next operation raises once (the run ends with the lock code and
        records its end); every later write transaction raises again."""
        if self._lost is None and self._heartbeat is not None and (why := self._heartbeat.overdue()):
            self._lose(why)
        if self._lost is None or not (writing or not self._lost_reported):
            return
        self._lost_reported = True
        raise LockHeldError(
            f"This run lost the run lock of {self.location}: {self._lost}. It stopped before writing more.",
            hint="Another run may hold the lock now (`stripe-sf status` names it); the next scheduled run continues "
                 f"from the last committed batch. A run loses the lock when it cannot renew its {self._lease_s:g} s "
                 "lease (the database or the pooler unreachable, the host frozen): check them if this repeats.")

    def _fence(self) -> float | None:
        """Inside each write transaction, just before COMMIT: the lease is still ours (and renewed), or the
        transaction rolls back. A run that lost the lock commits nothing more, whatever its heartbeat saw."""
        if self._token is None:
            return None
        sent = time.monotonic()
        renewed = self.conn.execute(RENEW, {"key": self._lock_key, "token": self._token, "lease": self._lease_s})
        if renewed.rowcount != 1:
            self._lose("another run took it over")
            self._check_lease(writing=True)
        return sent

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction. While the run holds the lock, it commits only if the lease is still its own
        (`_fence`): a run that lost the lock commits nothing more."""
        self._check_lease(writing=True)
        self.conn.execute(self._BEGIN)
        try:
            yield
            sent = self._fence()
        except BaseException:
            self._rollback()
            raise
        self.conn.execute("COMMIT")
        if sent is not None and self._heartbeat is not None:
            self._heartbeat.renewed(sent)  # committed: the lease runs from the renewal on

    def _held_error(self) -> LockHeldError:
        row = self.guard(lambda: self.conn.execute(
            "SELECT host, pid, acquired_at, direct, GREATEST(0, EXTRACT(EPOCH FROM expires_at - clock_timestamp()))"
            " FROM run_lock WHERE lock_key = ?", (self._lock_key,)).fetchone())
        who = (f"host {row[0]}, pid {row[1]}, since "
               f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(row[2]))}") if row else "host unknown"
        if row and not row[3] and row[4] is not None:
            frees = (f"If that run has stopped (a crash, a vanished host), its lease expires within "
                     f"{math.ceil(float(row[4]))} s and the next run takes over.")
        else:
            frees = ("A holder that crashed frees the lock with its connection (the server notices a vanished host "
                     "within about two minutes).")
        of = "" if self._lock_pipeline == "default" else f"pipeline {self._lock_pipeline} in "
        return LockHeldError(
            f"Another stripe-sf run ({who}) holds the run lock of {of}{self.location}.",
            hint=f"This run exits so that runs never overlap, on any host; the next scheduled run continues. {frees}")

    def lock_held(self, pipeline: str) -> bool:
        """Whether any run holds the pipeline's run lock now, read and never taken (a reader must not turn a
        starting run away): a session holds the advisory lock, or a lease taken without it has not expired."""
        if self._locked and pipeline == self._lock_pipeline:
            return True
        key = self.key_for(pipeline)
        row = self.guard(lambda: self.conn.execute(HELD, {"key": key, **advisory_ids(key)}).fetchone())
        return bool(row[0])

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def release_lock(self, pipeline: str) -> None:
        """Stop renewing, end the lease and drop the advisory lock, if held for `pipeline` (a lost connection
        dropped the advisory lock already; a lease that cannot be ended expires)."""
        if pipeline != self._lock_pipeline:
            return
        self._stop_heartbeat()
        if self._locked:
            self._locked, token, self._token = False, self._token, None
            with contextlib.suppress(psycopg.Error):
                self.conn.execute("UPDATE run_lock SET expires_at = '-infinity' WHERE lock_key = ? AND "
                                   "run_token = ?", (self._lock_key, token))
            self._unlock_advisory()

    def integrity_check(self) -> str:
        """Every table answers ('ok'); PostgreSQL checks its pages itself."""
        for table in TABLES:
            # ignored below: mypy cannot infer a lambda with a default argument (python/mypy#15459)
            self.guard(lambda t=table: self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone())  # type: ignore[misc]  # noqa: S608
        return "ok"



def _stored_version(raw: psycopg.Connection[Any]) -> int | None:
    """SQLite's schema version as stored here (None: no tables), lowered below the current one when the
    PostgreSQL-only part is older, so that it is brought up to date too."""
    if raw.execute("SELECT to_regclass('meta')").fetchone()[0] is None:  # type: ignore[index]
        return None
    rows = dict(raw.execute("SELECT key, value FROM meta WHERE key IN (%s, %s)",
                            (VERSION_KEY, PG_VERSION_KEY)).fetchall())
    version = int(rows.get(VERSION_KEY, 0))
    if version == SCHEMA_VERSION and int(rows.get(PG_VERSION_KEY, 0)) < PG_SCHEMA_VERSION:
        return version - 1
    return version


def _prepare_schema(raw: psycopg.Connection[Any], location: str, *, create: bool) -> None:
    """Create or migrate the tables in one transaction, serialised by a transaction advisory lock (two first
    runs at once); refuse a newer schema; with `create` off, a database without the tables is NoStateError."""
    try:
        version = _stored_version(raw)
        if version is None and not create:
            raise NoStateError(f"No stripe-sf state in {location}.",
                               hint="Run `stripe-sf sync --since DATE` first (or `stripe-sf state migrate --to "
                                    "URL` to move a SQLite state there).")
        if version is not None and version > SCHEMA_VERSION:
            raise StateError(
                f"The state database {location} has schema version {version}, newer than this stripe-sf "
                f"understands ({SCHEMA_VERSION}).",
                hint="Upgrade stripe-sf (pip install -U stripe-sf-sync) rather than downgrading.")
        if version == SCHEMA_VERSION:
            return
        with raw.transaction():
            raw.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
            for statement in pg_schema():
                raw.execute(statement)
            for key, value in ((VERSION_KEY, SCHEMA_VERSION), (PG_VERSION_KEY, PG_SCHEMA_VERSION)):
                raw.execute("INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT(key) DO UPDATE SET value = "
                            "excluded.value", (key, str(value)))
    except psycopg.Error as exc:
        raise StateError(f"The state database {location} cannot be used: {first_line(exc)}.",
                         hint="The database user needs to create tables in it the first time (CREATE on its "
                              "schema); check its rights, then run again.") from None

