"""The run lock on PostgreSQL: a lease row, renewed by a heartbeat, plus a session advisory lock on a direct
connection.

The lease is a row in `run_lock` (holder's host, pid and run token, and an expiry on the server's clock), taken
in one conditional INSERT ... ON CONFLICT DO UPDATE and renewed by a heartbeat thread on its own connection, as
Oban's `oban_peers` and golang-migrate's table lock do: it holds through a transaction-mode pooler (PgBouncer,
Supavisor, Neon's `-pooler`), where a session advisory lock leaks with one server connection or is granted twice
(advisory locks are re-entrant per session; api-facts.md "PostgreSQL behind connection poolers",
pgbouncer.org/features.html). The store (state/postgres.py) takes, fences and releases it.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg

from stripe_sf_sync.errors import ConfigError

CONNECT_TIMEOUT_S = 10
_LOCK_NAMESPACE = "stripe-sf run lock"
LEASE_ENV = "STRIPE_SF_LOCK_LEASE_S"
DEFAULT_LEASE_S = 60.0  # how long a vanished holder behind a pooler keeps the lock; renewed every quarter of it
# Is the run lock's advisory lock held by any session (read from pg_locks, never taken)?
ADVISORY_HELD = """EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
    AND classid = %(high)s AND objid = %(low)s
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"""
# Take the lease in one statement (its own transaction): a row held by another run is taken over only when its
# lease expired and no session holds the advisory lock (an older stripe-sf, or a direct holder whose
# connection lingers), or, by a run that holds the advisory lock itself, when the holder held it too (that
# holder's session is gone: the server freed its lock). A WHERE that fails leaves rowcount 0.
TAKE = """INSERT INTO run_lock AS l (lock_key, host, pid, acquired_at, run_token, expires_at, direct)
VALUES (%(key)s, %(host)s, %(pid)s, %(now)s, %(token)s, clock_timestamp() + make_interval(secs => %(lease)s),
        %(direct)s)
ON CONFLICT (lock_key) DO UPDATE SET host = excluded.host, pid = excluded.pid, acquired_at = excluded.acquired_at,
    run_token = excluded.run_token, expires_at = excluded.expires_at, direct = excluded.direct
WHERE (excluded.direct AND l.direct)
   OR ((l.expires_at IS NULL OR l.expires_at < clock_timestamp())
       AND (excluded.direct OR NOT """ + ADVISORY_HELD + "))"
RENEW = ("UPDATE run_lock SET expires_at = clock_timestamp() + make_interval(secs => %(lease)s) "
         "WHERE lock_key = %(key)s AND run_token = %(token)s")
HELD = ("SELECT " + ADVISORY_HELD + " OR EXISTS (SELECT 1 FROM run_lock WHERE "  # noqa: S608 (constants)
        "lock_key = %(key)s AND NOT direct AND expires_at > clock_timestamp())")


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


def advisory_ids(key: int) -> dict[str, int]:
    """The advisory lock's 64-bit key as pg_locks shows it: classid (high 32 bits), objid (low 32 bits)."""
    return {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF}


class Heartbeat:
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
        """Renew from now on, in a thread of its own."""
        self._thread.start()

    def stop(self) -> None:
        """Renew no more (the lock is released, or the store closed)."""
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
                    conn = conn or heartbeat_connect(self._url, every)
                    if conn.execute(RENEW, self._params).rowcount != 1:
                        self._on_lost("another run took it over")
                        return
                    self.renewed(sent)
                    self._error, pause = "", every
                except psycopg.Error as exc:
                    self._error = first_line(exc)
                    if conn is not None:
                        conn.close()
                    conn = None
                    pause = min(every, 1.0)  # retry soon: the lease runs out
        finally:
            if conn is not None:
                conn.close()


def heartbeat_connect(url: str, every: float) -> psycopg.Connection[Any]:
    """The heartbeat's connection: a renewal that gets no answer fails within about `every` seconds (TCP
    keepalives and tcp_user_timeout, libpq's client-side settings, which a pooler does not see)."""
    wait = max(2, math.ceil(every))
    # tcp_user_timeout: libpq 12 or newer (psycopg[binary] bundles a newer one); an older one refuses it
    unacked: dict[str, Any] = {"tcp_user_timeout": wait * 1000} if psycopg.pq.version() >= 120000 else {}
    return psycopg.connect(url, autocommit=True, connect_timeout=wait, prepare_threshold=None,
                           application_name="stripe-sf", keepalives=1, keepalives_idle=wait,
                           keepalives_interval=1, keepalives_count=3, **unacked)


def first_line(exc: BaseException) -> str:
    """An error's first line, for messages (psycopg's errors carry the server's detail on later lines)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

def lock_key(scope: str) -> int:
    """The advisory lock's 64-bit key: the first 8 bytes of sha256(namespace + scope), signed as PostgreSQL's
    bigint. Scope: the database and schema, the store that the run writes (the Stripe account is known only
    once the run has started)."""
    digest = hashlib.sha256(f"{_LOCK_NAMESPACE}:{scope}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)

