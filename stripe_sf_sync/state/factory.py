"""Which state store a command gets: PostgreSQL when a URL is configured, else the SQLite file."""

from __future__ import annotations

from pathlib import Path

from stripe_sf_sync.errors import missing_extra
from stripe_sf_sync.state.store import DEFAULT_PIPELINE, StateStore


def open_state(path: Path, url: str | None = None, *, pipeline: str = DEFAULT_PIPELINE, create: bool = True,
               read_only: bool = False) -> StateStore:
    """The state store of `pipeline`: PostgreSQL when a URL is configured (STRIPE_SF_STATE_URL or state.url),
    else the SQLite file at `path` (`read_only`: for commands that only read, which then need no write access
    to it). psycopg is imported only here, on that path: the core install does not need it."""
    if url:
        with missing_extra("A postgresql:// state URL (STRIPE_SF_STATE_URL or state.url)", "postgres",
                           "run the command again"):
            from stripe_sf_sync.state.postgres import connect
        return connect(url, create=create, pipeline=pipeline)
    if read_only:
        return StateStore.open_read_only(path, pipeline=pipeline)
    return StateStore.open(path, create=create, pipeline=pipeline)
