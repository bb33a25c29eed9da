"""PostgreSQL state: the SQLite store's statements, on a shared server (more than one host, no volume).

`PgStateStore` inherits every method of `StateStore` and runs the same SQL through `_PgConnection`, a small
dialect layer (`?` placeholders become `%s`; rows answer by index and by name). What differs is here:
opening (the schema, versioned as in SQLite), the run lock, and a connection lost mid-run: reconnected once
and the same operation retried (a batch's transaction rolled back with the connection, and re-applying a
batch is idempotent); lost again, the run stops with the unavailable exit code.

The run lock is a lease row in `run_lock` (holder's host, pid and run token, and an expiry on the server's
clock), taken in one conditional INSERT ... ON CONFLICT DO UPDATE and renewed by a heartbeat thread on its own
connection, as Oban's `oban_peers` and golang-migrate's table lock do: it holds through a transaction-mode
pooler (PgBouncer, Supavisor, Neon's `-pooler`), where a session advisory lock leaks with one server
connection or is granted twice (advisory locks are re-entrant per session; api-facts.md "PostgreSQL behind
connection poolers", pgbouncer.org/features.html). Every write transaction checks the lease just before its
COMMIT, so a run that lost it commits nothing more. On a direct connection (no pooler between us and the
server, `_is_direct`) the run also holds the session advisory lock, as before: the server frees it with a
crashed holder's connection, and the next run takes over at once rather than after the lease. Nothing relies
on session state across transactions behind a pooler: no SET, no advisory lock, no prepared statements.

psycopg is imported here only, so the core install does not need the [postgres] extra.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from stripe_sf_sync.config import masked_url
from stripe_sf_sync.errors import ConfigError, LockHeldError, NoStateError, StateError, StateUnavailableError
from stripe_sf_sync.state import _SCHEMA, SCHEMA_VERSION, StateStore
from stripe_sf_sync.words import counted

log = logging.getLogger("stripe_sf_sync")
R = TypeVar("R")

CONNECT_TIMEOUT_S = 10
PREPARE_THRESHOLD = 5  # psycopg's default: prepare a statement from its 5th execution (direct connections only)
RELOCK_TRIES, RELOCK_PAUSE_S = 25, 0.2  # after a reconnect: up to 5 s for the server to end the old session
_LOCK_NAMESPACE = "stripe-sf run lock"
_SCHEMA_LOCK_KEY = 0x5354_5346_5343_4845  # "STSFSCHE": serialises two first runs creating the schema
LEASE_ENV = "STRIPE_SF_LOCK_LEASE_S"
DEFAULT_LEASE_S = 60.0  # how long a vanished holder behind a pooler keeps the lock; renewed every quarter of it
# The run lock's lease: who holds it (so that a run turned away can name it), its run token, until when (the
# server's clock: hosts' clocks may differ), and whether the holder also holds the session advisory lock.
_PG_ONLY_SCHEMA = """
CREATE TABLE IF NOT EXISTS run_lock (
    lock_key BIGINT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, acquired_at BIGINT NOT NULL);
ALTER TABLE run_lock ADD COLUMN IF NOT EXISTS run_token TEXT;
ALTER TABLE run_lock ADD COLUMN IF NOT EXISTS expires_at TIMESTAMPTZ;
ALTER TABLE run_lock ADD COLUMN IF NOT EXISTS direct BOOLEAN NOT NULL DEFAULT TRUE;
"""
# The PostgreSQL-only part of the schema has its own version (a meta row), apart from SQLite's: 1, the lease.
PG_SCHEMA_VERSION = 1
_PG_VERSION_KEY = "pg_schema_version"
# Is the run lock's advisory lock held by any session (read from pg_locks, never taken)?
_ADVISORY_HELD = """EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
    AND classid = %(high)s AND objid = %(low)s
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"""
# Take the lease in one statement (its own transaction): a row held by another run is taken over only when its
# lease expired and no session holds the advisory lock (an older stripe-sf, or a direct holder whose
# connection lingers), or, by a run that holds the advisory lock itself, when the holder held it too (that
# holder's session is gone: the server freed its lock). A WHERE that fails leaves rowcount 0.
_TAKE = """INSERT INTO run_lock AS l (lock_key, host, pid, acquired_at, run_token, expires_at, direct)
VALUES (%(key)s, %(host)s, %(pid)s, %(now)s, %(token)s, clock_timestamp() + make_interval(secs => %(lease)s),
        %(direct)s)
ON CONFLICT (lock_key) DO UPDATE SET host = excluded.host, pid = excluded.pid, acquired_at = excluded.acquired_at,
    run_token = excluded.run_token, expires_at = excluded.expires_at, direct = excluded.direct
WHERE (excluded.direct AND l.direct)
   OR ((l.expires_at IS NULL OR l.expires_at < clock_timestamp())
       AND (excluded.direct OR NOT """ + _ADVISORY_HELD + "))"
_RENEW = ("UPDATE run_lock SET expires_at = clock_timestamp() + make_interval(secs => %(lease)s) "
          "WHERE lock_key = %(key)s AND run_token = %(token)s")
_HELD = ("SELECT " + _ADVISORY_HELD + " OR EXISTS (SELECT 1 FROM run_lock WHERE "  # noqa: S608 (constants)
         "lock_key = %(key)s AND NOT direct AND expires_at > clock_timestamp())")
# Tables `state migrate` copies, with their primary key.
TABLES = {"meta": "key", "events": "event_id", "object_versions": "object_id", "dead_letters": "event_id",
          "customers": "customer_id", "inbox": "event_id", "runs": "run_id"}
_VERSION_KEY = "schema_version"  # SQLite keeps it in PRAGMA user_version; here it is a meta row


def pg_schema() -> list[str]:
    """SQLite's schema in PostgreSQL's types (one source of truth), plus the lock holder's table."""
    text = (_SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
            .replace("INTEGER", "BIGINT").replace("REAL", "DOUBLE PRECISION")) + _PG_ONLY_SCHEMA
    return [stmt.strip() for stmt in text.split(";") if stmt.strip()]


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
    reads never hold a transaction open; `_tx` issues BEGIN/COMMIT itself)."""

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
            f"Cannot connect to the state database {location}: {_first_line(exc)}.",
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


def lease_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """The run lock's lease (STRIPE_SF_LOCK_LEASE_S, default 60 s): how long a holder that vanished behind a
    pooler keeps the lock. Its heartbeat renews it every quarter of that."""
    text = environ.get(LEASE_ENV, "").strip()
    if not text:
        return DEFAULT_LEASE_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 1 <= value <= 3600:
        raise ConfigError([f"{LEASE_ENV} must be a number of seconds from 1 to 3600, not {text!r}"],
                          source="environment", hint=f"Unset it for the default ({DEFAULT_LEASE_S:g} s), or set "
                                                     "e.g. 60.")
    return value


def _advisory_ids(key: int) -> dict[str, int]:
    """The advisory lock's 64-bit key as pg_locks shows it: classid (high 32 bits), objid (low 32 bits)."""
    return {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF}


class _Heartbeat:
    """Renews the lease every quarter of its length, on a connection of its own (the store's may be inside a
    batch's transaction, or in another thread's hands). Calls `on_lost` once and stops when another run took
    the lease over. `overdue()` tells the store when no renewal succeeded for 90% of the lease: the holder
    then stops before anyone else may take over, even while this thread hangs on an unresponsive network."""

    MARGIN = 0.9  # of the lease: a holder stops at 90% of it, before the server lets another run take over

    def __init__(self, url: str, key: int, token: str, lease_s: float, on_lost: Callable[[str], None]) -> None:
        self._url, self._lease_s, self._on_lost = url, lease_s, on_lost
        self._params = {"key": key, "token": token, "lease": lease_s}
        self._deadline = time.monotonic() + lease_s * self.MARGIN  # the lease was taken a moment ago
        self._error = ""
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stripe-sf lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not threading.current_thread():
            self._thread.join(CONNECT_TIMEOUT_S)

    def renewed(self, sent: float) -> None:
        """A renewal sent at `sent` (monotonic) succeeded: here, or in a batch's commit (`_fence`)."""
        self._deadline = max(self._deadline, sent + self._lease_s * self.MARGIN)

    def overdue(self) -> str | None:
        """Why the holder must stop, when no renewal succeeded in time; else None."""
        if time.monotonic() < self._deadline:
            return None
        return f"its lease could not be renewed for {self._lease_s:g} s" + (f" ({self._error})" if self._error
                                                                                else "")

    def _run(self) -> None:
        every = self._lease_s / 4
        conn: psycopg.Connection[Any] | None = None
        pause = every
        try:
            while not self._stopping.wait(pause):
                sent = time.monotonic()
                try:
                    conn = conn or _heartbeat_connect(self._url, every)
                    if conn.execute(_RENEW, self._params).rowcount != 1:
                        self._on_lost("another run took it over")
                        return
                    self.renewed(sent)
                    self._error, pause = "", every
                except psycopg.Error as exc:
                    self._error = _first_line(exc)
                    if conn is not None:
                        conn.close()
                    conn = None
                    pause = min(every, 1.0)  # retry soon: the lease runs out
        finally:
            if conn is not None:
                conn.close()


def _heartbeat_connect(url: str, every: float) -> psycopg.Connection[Any]:
    """The heartbeat's connection: a renewal that gets no answer fails within about `every` seconds (TCP
    keepalives and tcp_user_timeout, libpq's client-side settings, which a pooler does not see)."""
    wait = max(2, math.ceil(every))
    # tcp_user_timeout: libpq 12 or newer (psycopg[binary] bundles a newer one); an older one refuses it
    unacked: dict[str, Any] = {"tcp_user_timeout": wait * 1000} if psycopg.pq.version() >= 120000 else {}
    return psycopg.connect(url, autocommit=True, connect_timeout=wait, prepare_threshold=None,
                           application_name="stripe-sf", keepalives=1, keepalives_idle=wait,
                           keepalives_interval=1, keepalives_count=3, **unacked)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _unavailable(location: str, exc: BaseException) -> StateUnavailableError:
    return StateUnavailableError(
        f"Lost the connection to the state database {location} again after reconnecting once: {_first_line(exc)}.",
        hint="Nothing of the batch at hand was committed; the next run repeats it (re-applying is idempotent). "
             "Check the server and the network, then run again.")


class PgStateStore(StateStore):
    """The state on PostgreSQL. Open it with `PgStateStore.connect(url)` (or `state.open_state`)."""

    backend = "postgresql"
    _BEGIN = "BEGIN"

    def __init__(self, conn: _PgConnection, url: str, lock_key: int, *, direct: bool = False) -> None:
        super().__init__(conn, Path(os.devnull))
        self.url = url
        self._lock_key = lock_key
        self._direct = direct  # no pooler in between: the run also holds the session advisory lock
        self._lease_s = lease_seconds()
        self._locked = False
        self._token: str | None = None  # this run's lease, while held
        self._heartbeat: _Heartbeat | None = None
        self._lost: str | None = None  # why the heartbeat lost the lease
        self._lost_reported = False
        self._depth = 0
        self._mutex = threading.RLock()  # `serve` shares one store between threads

    @property
    def location(self) -> str:
        return masked_url(self.url)

    @classmethod
    def connect(cls, url: str, *, create: bool = True) -> PgStateStore:
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
        return cls(_PgConnection(raw), url, lock_key(f"{db}/{schema}"), direct=direct)

    def close(self) -> None:
        self.release_lock()
        self._conn.close()

    # --- errors: one reconnect for a lost connection ----------------------------------------
    def _guard(self, call: Callable[[], R]) -> R:
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
            if not self._conn.raw.broken:
                raise self._error(exc) from exc
            log.warning("Lost the connection to the state database %s (%s): reconnecting once and repeating "
                        "the operation.", self.location, _first_line(exc))
        self._reconnect()
        try:
            return call()
        except psycopg.Error as exc:
            if self._conn.raw.broken:
                raise _unavailable(self.location, exc) from exc
            raise self._error(exc) from exc

    def _reconnect(self) -> None:
        """A new connection. The lease outlives it (the heartbeat has its own); on a direct connection the
        advisory lock went with the old one, so it is taken again. The server frees it once the old session
        has ended, which may take it a moment: a few tries, then LockHeldError (another run took it)."""
        self._conn.close()
        raw = _connect(self.url, self.location)
        self._conn = _PgConnection(raw)
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
        return StateError(f"The state database {self.location} refused an operation: {_first_line(exc)}.",
                          hint="Check the database user's rights on the stripe-sf tables and the server's log; "
                               "then run again (re-applying a batch is idempotent).")

    def _rollback(self) -> None:
        if not self._conn.raw.broken:  # a lost connection rolled the transaction back with it
            self._conn.execute("ROLLBACK")

    # --- the run lock: a lease row, plus a session advisory lock on a direct connection ------------
    def acquire_lock(self) -> None:
        """Take the run lock or raise LockHeldError at once, naming the holder's host and pid: the lease row
        (every connection), taken in one statement, and on a direct connection the session advisory lock
        first (freed by the server with a crashed holder's connection: the next run need not wait for the
        lease to expire). Then the heartbeat renews the lease until `release_lock`."""
        self._lost, self._lost_reported = None, False
        token = uuid.uuid4().hex
        if self._direct and not self._try_advisory():
            raise self._held_error()
        try:
            taken = self._guard(lambda: self._conn.execute(_TAKE, self._take_params(token)).rowcount == 1)
        except BaseException:
            self._unlock_advisory()
            raise
        if not taken:
            self._unlock_advisory()
            raise self._held_error()
        self._token, self._locked = token, True
        self._heartbeat = _Heartbeat(self.url, self._lock_key, token, self._lease_s, self._lose)
        self._heartbeat.start()

    def _take_params(self, token: str) -> dict[str, Any]:
        return {"key": self._lock_key, "host": socket.gethostname(), "pid": os.getpid(), "now": int(time.time()),
                "token": token, "lease": self._lease_s, "direct": self._direct, **_advisory_ids(self._lock_key)}

    def _try_advisory(self) -> bool:
        return bool(self._guard(lambda: self._conn.execute("SELECT pg_try_advisory_lock(?)", (self._lock_key,))
                                .fetchone()[0]))

    def _unlock_advisory(self) -> None:
        if self._direct:
            # A connection that died took the lock with it: nothing left to release.
            with contextlib.suppress(psycopg.OperationalError):
                self._conn.execute("SELECT pg_advisory_unlock(?)", (self._lock_key,))

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
        renewed = self._conn.execute(_RENEW, {"key": self._lock_key, "token": self._token, "lease": self._lease_s})
        if renewed.rowcount != 1:
            self._lose("another run took it over")
            self._check_lease(writing=True)
        return sent

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self._check_lease(writing=True)
        self._conn.execute(self._BEGIN)
        try:
            yield
            sent = self._fence()
        except BaseException:
            self._rollback()
            raise
        self._conn.execute("COMMIT")
        if sent is not None and self._heartbeat is not None:
            self._heartbeat.renewed(sent)  # committed: the lease runs from the renewal on

    def _held_error(self) -> LockHeldError:
        row = self._guard(lambda: self._conn.execute(
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
        return LockHeldError(
            f"Another stripe-sf run ({who}) holds the run lock of {self.location}.",
            hint=f"This run exits so that runs never overlap, on any host; the next scheduled run continues. {frees}")

    def lock_held(self) -> bool:
        """Whether any run holds the run lock now, read and never taken (a reader must not turn a starting run
        away): a session holds the advisory lock, or a lease taken without it has not expired."""
        if self._locked:
            return True
        row = self._guard(lambda: self._conn.execute(_HELD, {"key": self._lock_key,
                                                             **_advisory_ids(self._lock_key)}).fetchone())
        return bool(row[0])

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def release_lock(self) -> None:
        """Stop renewing, end the lease and drop the advisory lock, if held (a lost connection dropped the
        advisory lock already; a lease that cannot be ended expires)."""
        self._stop_heartbeat()
        if self._locked:
            self._locked, token, self._token = False, self._token, None
            with contextlib.suppress(psycopg.Error):
                self._conn.execute("UPDATE run_lock SET expires_at = '-infinity' WHERE lock_key = ? AND "
                                   "run_token = ?", (self._lock_key, token))
            self._unlock_advisory()

    def integrity_check(self) -> str:
        """Every table answers ('ok'); PostgreSQL checks its pages itself."""
        for table in TABLES:
            # ignored below: mypy cannot infer a lambda with a default argument (python/mypy#15459)
            self._guard(lambda t=table: self._conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone())  # type: ignore[misc]  # noqa: S608
        return "ok"


def lock_key(scope: str) -> int:
    """The advisory lock's 64-bit key: the first 8 bytes of sha256(namespace + scope), signed as PostgreSQL's
    bigint. Scope: the database and schema, the store that the run writes (the Stripe account is known only
    once the run has started)."""
    digest = hashlib.sha256(f"{_LOCK_NAMESPACE}:{scope}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _stored_version(raw: psycopg.Connection[Any]) -> int | None:
    """SQLite's schema version as stored here (None: no tables), lowered below the current one when the
    PostgreSQL-only part is older, so that it is brought up to date too."""
    if raw.execute("SELECT to_regclass('meta')").fetchone()[0] is None:  # type: ignore[index]
        return None
    rows = dict(raw.execute("SELECT key, value FROM meta WHERE key IN (%s, %s)",
                            (_VERSION_KEY, _PG_VERSION_KEY)).fetchall())
    version = int(rows.get(_VERSION_KEY, 0))
    if version == SCHEMA_VERSION and int(rows.get(_PG_VERSION_KEY, 0)) < PG_SCHEMA_VERSION:
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
            for key, value in ((_VERSION_KEY, SCHEMA_VERSION), (_PG_VERSION_KEY, PG_SCHEMA_VERSION)):
                raw.execute("INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT(key) DO UPDATE SET value = "
                            "excluded.value", (key, str(value)))
    except psycopg.Error as exc:
        raise StateError(f"The state database {location} cannot be used: {_first_line(exc)}.",
                         hint="The database user needs to create tables in it the first time (CREATE on its "
                              "schema); check its rights, then run again.") from None


# --- `stripe-sf state migrate`: a SQLite state into an empty PostgreSQL store -------------------------

def _digest(rows: Iterable[Sequence[Any]]) -> tuple[int, str]:
    """Row count and an order-free checksum (the sum of each row's sha256): the two databases sort text
    differently, and a large ledger need not be sorted to be compared."""
    count, total = 0, 0
    for row in rows:
        count += 1
        total += int.from_bytes(hashlib.sha256(json.dumps(list(row)).encode()).digest(), "big")
    return count, f"{total % (1 << 256):064x}"


def _select(table: str) -> str:
    where = f" WHERE key NOT IN ('{_VERSION_KEY}', '{_PG_VERSION_KEY}')" if table == "meta" else ""
    return f"SELECT * FROM {table}{where}"  # noqa: S608  (table names are this module's constants)


def migrate_from(source: StateStore, target: PgStateStore) -> dict[str, tuple[int, str]]:
    """`stripe-sf state migrate`: both run locks held (no run writes either store meanwhile), `target` checked
    empty, then every table copied and verified in one transaction. `source` is only read."""
    source.acquire_lock()
    target.acquire_lock()
    target._guard(lambda: check_empty(target))
    return source._guard(lambda: target._guard(lambda: copy_tables(source, target)))


def check_empty(store: PgStateStore) -> None:
    """Refuse to migrate into a store that holds any state (a run, or another migration, wrote there)."""
    used = [t for t in TABLES if store._conn.execute(f"SELECT EXISTS ({_select(t)})").fetchone()[0]]
    if used:
        raise StateError(f"The PostgreSQL store {store.location} is not empty (rows in {', '.join(used)}).",
                         hint="`state migrate` copies into an empty store only, so that nothing is overwritten: "
                              "point --to at a new database (CREATE DATABASE ...), or drop its stripe-sf tables.")


def copy_tables(source: StateStore, target: PgStateStore) -> dict[str, tuple[int, str]]:
    """Copy every table of `source` into `target` in one transaction, then compare counts and checksums table
    by table (a difference rolls the copy back). Returns {table: (rows, checksum)}."""
    copied: dict[str, tuple[int, str]] = {}
    with target._tx():
        for table in TABLES:
            cur = source._conn.execute(_select(table))
            columns = [d[0] for d in cur.description]
            rows = [tuple(r) for r in cur]
            names = ",".join(columns)  # the columns of our own schema; the values travel as parameters
            if rows:
                marks = ",".join("?" * len(columns))
                target._conn.executemany(f"INSERT INTO {table}({names}) VALUES ({marks})", rows)  # noqa: S608
            copied[table] = _digest(rows)
            landed = _digest(target._conn.execute(f"SELECT {names} FROM ({_select(table)}) AS t"))  # noqa: S608
            if landed != copied[table]:
                raise StateError(f"The copy of {table} does not match: {counted(copied[table][0], 'row')} read, "
                                 f"{landed[0]} in PostgreSQL, or their checksums differ.",
                                 hint="Nothing was committed; run `stripe-sf state migrate` again, and report this "
                                      "if it repeats.")
        target._conn.execute("SELECT setval(pg_get_serial_sequence('runs', 'run_id'), "
                             "COALESCE(MAX(run_id), 0) + 1, false) FROM runs")
    return copied
