"""Both sides of a reconcile, spilled to a temporary SQLite database keyed by Stripe id and indexed, and the
exact text its numbers are kept as.

A subscription's row keeps its status rank (`running`, `created`: rules.status.status_rank), so the joins can
find the subscription that decides each customer's Account status (compare.DECIDING_ORDER).
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE subs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, customer TEXT, status TEXT NOT NULL,
    currency TEXT, amount TEXT, mrr TEXT, arr TEXT, won INTEGER NOT NULL, running INTEGER NOT NULL,
    problem TEXT, payload TEXT NOT NULL, counted INTEGER NOT NULL, created INTEGER NOT NULL);
CREATE INDEX subs_customer ON subs(customer, running DESC, created DESC, seq);
CREATE TABLE pis (id TEXT PRIMARY KEY, customer TEXT, currency TEXT, amount TEXT, won INTEGER NOT NULL,
    problem TEXT, payload TEXT);
CREATE TABLE customers (id TEXT PRIMARY KEY);
CREATE TABLE opps (id TEXT PRIMARY KEY, stage TEXT, won INTEGER NOT NULL, amount TEXT, mrr TEXT, arr TEXT,
    sub TEXT, pi TEXT, currency TEXT);
CREATE INDEX opps_sub ON opps(sub, won);
CREATE INDEX opps_pi ON opps(pi, won);
CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT, status TEXT, customer TEXT, mrr TEXT);
"""



class Spill:
    """Both sides of a reconcile in a temporary SQLite database, deleted on close."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="stripe-sf-reconcile-")
        self.db = sqlite3.connect(Path(self._dir.name) / "spill.sqlite")
        self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-16000;"
                              + _SCHEMA)
        self.seq = 0

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.db.close()
        self._dir.cleanup()

    def put(self, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows into `table`; a row read again (a retried page) replaces the first."""
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            self.db.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", rows)  # noqa: S608

    def rows(self, sql: str, params: Sequence[Any] = ()) -> Iterator[sqlite3.Row]:
        """The rows of a query, streamed."""
        cur = self.db.cursor()
        cur.row_factory = sqlite3.Row
        yield from cur.execute(sql, params)


def sf_decimal(value: Any) -> Decimal | None:
    """A number as Salesforce's JSON sent it, exact: a float goes through its shortest repr (what the JSON
    text said), never through binary arithmetic."""
    if value is None or isinstance(value, bool):
        return None
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))


def text(value: Decimal | None) -> str | None:
    """A Decimal as the exact text stored and printed."""
    return None if value is None else f"{value:f}"

