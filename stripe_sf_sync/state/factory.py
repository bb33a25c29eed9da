"""Which state store a command gets: PostgreSQL when a URL is configured, else the SQLite file."""

from __future__ import annotations

from pathlib import Path

from stripe_sf_sync.errors import missing_extra
from stripe_sf_sync.state.store import StateStore


def open_state(path: Path, url: str | None = None, *, create: bool = True, read_only: bool = False) -> StateStore:
    """The state store: PostgreSQL when a URL is configured (STRIPE_SF_STATE_URL or state.url), else the SQLite
    file at `path` (`read_only`: for commands that only read, which then need no write access to it). psycopg
    is imported only here, on that path: the core install does not need it."""
    if url:
        with missing_extra("A postgresql:// state URL (STRIPE_SF_STATE_URL or state.url)", "postgres",
                           "run the command again"):
            from stripe_sf_sync.state.postgres import connect
        return connect(url, create=create)
    return StateStore.open_read_only(path) if read_only else StateStore.open(path, create=create)
