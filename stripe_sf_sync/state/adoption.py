"""Which pipelines a state holds, and adoption: one pipeline's state moved to another name (issue 26).

A state written before pipelines existed is the `default` pipeline's. When the config later names its accounts,
the account read with the same key takes it over (pipelines.legacy_heir; service/runtime.py adopts it), so its
sync continues from the same cursor, with the same ledger, dead letters and runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stripe_sf_sync.errors import StateError
from stripe_sf_sync.state.schema import PG_VERSION_KEY, VERSION_KEY

if TYPE_CHECKING:
    from stripe_sf_sync.state.store import StateStore

PIPELINE_TABLES = ("events", "dead_letters", "inbox", "runs")  # the tables with a pipeline column
_CURSOR_KEY = "cursor_event_id"


def pipelines_of(store: StateStore) -> list[str]:
    """The pipelines with any state (a cursor, ledger rows, a run, a dead letter, inbox entries), `default`
    first, then by name."""
    union = " UNION ".join(f"SELECT DISTINCT pipeline FROM {t}" for t in PIPELINE_TABLES)  # noqa: S608 (constants)
    names = {row[0] for row in store._conn.execute(union)}
    for (key,) in store._conn.execute("SELECT key FROM meta WHERE key = ? OR key LIKE ?",
                                      (_CURSOR_KEY, f"%/{_CURSOR_KEY}")):
        names.add(key.rpartition("/")[0] or "default")
    return sorted(names, key=lambda name: (name != "default", name))


def _own_keys(keys: list[str], pipeline: str) -> list[str]:
    """The meta keys (as stored) of `pipeline`: the default's are the bare ones, the schema's versions aside."""
    if pipeline == "default":
        return [k for k in keys if "/" not in k and k not in (VERSION_KEY, PG_VERSION_KEY)]
    return [k for k in keys if k.startswith(f"{pipeline}/")]


def adopt(store: StateStore, source: str, target: str) -> int:
    """Move every row and meta key of pipeline `source` to `target`, in one transaction, when `target` has no
    state (else a StateError). The caller holds `source`'s run lock. Returns the rows and keys moved (0: the
    source had nothing)."""
    from stripe_sf_sync.state.store import meta_key

    if source == target:
        return 0
    store.for_pipeline(target)  # the name is checked
    with store._tx():
        held = pipelines_of(store)
        if target in held:
            raise StateError(f"Cannot move the state of pipeline {source} to {target}: {target} has state already.",
                             hint=f"Keep one of the two: `stripe-sf --account {target} status` shows what {target} "
                                  "holds; move it aside (a new state file or database) if it is the one to drop.")
        if source not in held:
            return 0
        moved = 0
        for table in PIPELINE_TABLES:
            moved += store._conn.execute(f"UPDATE {table} SET pipeline = ? WHERE pipeline = ?",  # noqa: S608
                                         (target, source)).rowcount
        keys = [row[0] for row in store._conn.execute("SELECT key FROM meta")]
        for key in _own_keys(keys, source):
            bare = key if source == "default" else key.split("/", 1)[1]
            store._conn.execute("DELETE FROM meta WHERE key = ?", (meta_key(target, bare),))
            store._conn.execute("UPDATE meta SET key = ? WHERE key = ?", (meta_key(target, bare), key))
            moved += 1
    return moved
