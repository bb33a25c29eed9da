"""`stripe-sf state migrate`: a SQLite state into an empty PostgreSQL store, every table copied and verified."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from stripe_sf_sync.errors import StateError
from stripe_sf_sync.state.schema import PG_VERSION_KEY, TABLES, VERSION_KEY
from stripe_sf_sync.state.store import StateStore
from stripe_sf_sync.words import counted


def _digest(rows: Iterable[Sequence[Any]]) -> tuple[int, str]:
    """Row count and an order-free checksum (the sum of each row's sha256): the two databases sort text
    differently, and a large ledger need not be sorted to be compared."""
    count, total = 0, 0
    for row in rows:
        count += 1
        total += int.from_bytes(hashlib.sha256(json.dumps(list(row)).encode()).digest(), "big")
    return count, f"{total % (1 << 256):064x}"


def _select(table: str) -> str:
    where = f" WHERE key NOT IN ('{VERSION_KEY}', '{PG_VERSION_KEY}')" if table == "meta" else ""
    return f"SELECT * FROM {table}{where}"  # noqa: S608  (table names are this module's constants)


def migrate_from(source: StateStore, target: StateStore) -> dict[str, tuple[int, str]]:
    """`stripe-sf state migrate`: the run locks of every pipeline of `source` and `target`'s held (no run
    writes either store meanwhile), `target` checked empty, then every table (every pipeline's rows and meta
    keys) copied and verified in one transaction. `source` is only read."""
    source.acquire_lock()
    for pipeline in set(source.pipelines()) - {source.pipeline}:
        source.for_pipeline(pipeline).acquire_lock()  # SQLite: a lock file each, all held by the one store
    target.acquire_lock()
    target._guard(lambda: check_empty(target))
    return source._guard(lambda: target._guard(lambda: copy_tables(source, target)))


def check_empty(store: StateStore) -> None:
    """Refuse to migrate into a store that holds any state (a run, or another migration, wrote there)."""
    used = [t for t in TABLES if store._conn.execute(f"SELECT EXISTS ({_select(t)})").fetchone()[0]]
    if used:
        raise StateError(f"The PostgreSQL store {store.location} is not empty (rows in {', '.join(used)}).",
                         hint="`state migrate` copies into an empty store only, so that nothing is overwritten: "
                              "point --to at a new database (CREATE DATABASE ...), or drop its stripe-sf tables.")


def copy_tables(source: StateStore, target: StateStore) -> dict[str, tuple[int, str]]:
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
