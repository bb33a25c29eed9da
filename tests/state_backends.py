"""The state tests' two backends: the SQLite file and a PostgreSQL database on the test server (no mocks).

`Backend.open()` opens the store as the commands do (state.open_state); `env()` is what points a `stripe-sf`
subprocess at it; `rows()` reads what a run left behind, for comparisons. `protocol_members` lists the
operations of the state's interface (state/interface.py), for the tests that classify them."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from stripe_sf_sync.state import StateStore, open_state

STATE_NAME = "stripe-sf-state.sqlite"


@dataclass
class Backend:
    """One state store: `url` None is the SQLite file at `path`."""

    name: str
    path: Path
    url: str | None = None

    def open(self, *, create: bool = True) -> StateStore:
        return open_state(self.path, self.url, create=create)

    def env(self) -> dict[str, str]:
        return {"STRIPE_SF_STATE_URL": self.url} if self.url else {}

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement on a connection of its own, committed."""
        if self.url is None:
            con = sqlite3.connect(self.path, isolation_level=None)
            try:
                return [tuple(r) for r in con.execute(sql, params)]
            finally:
                con.close()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
            return [tuple(r) for r in cur] if cur.description else []

    def set_schema_version(self, version: int) -> None:
        if self.url is None:
            self.execute(f"PRAGMA user_version = {version}")
        else:
            self.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))

    def rows(self) -> dict[str, Any]:
        """The ledger, dead letters, cursor and integrity (as tests/reliability/world.state_rows)."""
        if self.url is None:
            integrity = self.execute("PRAGMA integrity_check")[0][0]
        else:
            with self.open(create=False) as store:
                integrity = store.integrity_check()
        events = {r[0]: r[1] for r in self.execute("SELECT event_id, outcome FROM events")}
        dead = {r[0]: {"attempts": r[1], "status": r[2], "code": r[3], "reason": r[4], "payload": r[5]}
                for r in self.execute("SELECT event_id, attempts, status, error_code, reason, payload "
                                      "FROM dead_letters")}
        meta = dict(self.execute("SELECT key, value FROM meta"))
        return {"integrity": integrity, "events": events, "dead": dead, "cursor": meta.get("cursor_event_id")}


def protocol_members(protocol: type) -> set[str]:
    """The public operations a protocol declares, its protocol bases' included."""
    return {name for cls in protocol.__mro__ if cls is not Protocol and Protocol in cls.__mro__
            for name in vars(cls) if not name.startswith("_")}
