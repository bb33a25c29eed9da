"""Which pipelines a state holds, and adoption: one pipeline's state moved to another name (issue 26).

A state written before pipelines existed is the `default` pipeline's. When the config later names its accounts,
the account read with the same key takes it over (pipelines.legacy_heir; service/runtime.py adopts it), so its
sync continues from the same cursor, with the same ledger, dead letters and runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from stripe_sf_sync.errors import StateError
from stripe_sf_sync.pipelines import DEFAULT_PIPELINE
from stripe_sf_sync.state.schema import PG_VERSION_KEY, VERSION_KEY

_PIPELINE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")  # a Stripe account id, or `default`: safe in a file name
_GLOBAL_KEYS = (VERSION_KEY, PG_VERSION_KEY)
PIPELINE_TABLES = ("events", "dead_letters", "inbox", "runs")  # the tables with a pipeline column
_CURSOR_KEY = "cursor_event_id"


def checked_name(pipeline: str) -> str:
    """A pipeline's name, fit for a lock file's name and a meta key's prefix; else a StateError."""
    if not _PIPELINE_NAME.fullmatch(pipeline):
        raise StateError(f"{pipeline!r} cannot name a pipeline in the state.",
                         hint="Name accounts by their Stripe id (acct_...) in stripe.accounts.")
    return pipeline


def meta_key(pipeline: str, key: str) -> str:
    """How a pipeline's meta key is stored: the default pipeline's (and the schema's versions) bare, as before
    pipelines existed (an older stripe-sf still reads its own); another's under `<pipeline>/`."""
    return key if pipeline == DEFAULT_PIPELINE or key in _GLOBAL_KEYS else f"{pipeline}/{key}"


def pipelines_of(conn: Any) -> list[str]:
    """The pipelines with any state (a cursor, ledger rows, a run, a dead letter, inbox entries), `default`
    first, then by name."""
    union = " UNION ".join(f"SELECT DISTINCT pipeline FROM {t}" for t in PIPELINE_TABLES)  # noqa: S608 (constants)
    names = {row[0] for row in conn.execute(union)}
    for (key,) in conn.execute("SELECT key FROM meta WHERE key = ? OR key LIKE ?",
                                      (_CURSOR_KEY, f"%/{_CURSOR_KEY}")):
        names.add(key.rpartition("/")[0] or DEFAULT_PIPELINE)
    return sorted(names, key=lambda name: (name != DEFAULT_PIPELINE, name))


def _own_keys(keys: list[str], pipeline: str) -> list[str]:
    """The meta keys (as stored) of `pipeline`: the default's are the bare ones, the schema's versions aside."""
    if pipeline == DEFAULT_PIPELINE:
        return [k for k in keys if "/" not in k and k not in _GLOBAL_KEYS]
    return [k for k in keys if k.startswith(f"{pipeline}/")]


def adopt(conn: Any, transaction: Callable[[], AbstractContextManager[None]], source: str, target: str) -> int:
    """Move every row and meta key of pipeline `source` to `target`, in one transaction, when `target` has no
    state (else a StateError). The caller holds `source`'s run lock. Returns the rows and keys moved (0: the
    source had nothing)."""
    if checked_name(source) == checked_name(target):
        return 0
    with transaction():
        held = pipelines_of(conn)
        if target in held:
            raise StateError(f"Cannot move the state of pipeline {source} to {target}: {target} has state already.",
                             hint=f"Keep one of the two: `stripe-sf --account {target} status` shows what {target} "
                                  "holds; move it aside (a new state file or database) if it is the one to drop.")
        if source not in held:
            return 0
        moved = 0
        for table in PIPELINE_TABLES:
            moved += conn.execute(f"UPDATE {table} SET pipeline = ? WHERE pipeline = ?",  # noqa: S608
                                         (target, source)).rowcount
        keys = [row[0] for row in conn.execute("SELECT key FROM meta")]
        for key in _own_keys(keys, source):
            bare = key if source == DEFAULT_PIPELINE else key.split("/", 1)[1]
            conn.execute("DELETE FROM meta WHERE key = ?", (meta_key(target, bare),))
            conn.execute("UPDATE meta SET key = ? WHERE key = ?", (meta_key(target, bare), key))
            moved += 1
    return moved
