"""`stripe-sf state migrate`: the SQLite state into an empty PostgreSQL store, verified."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stripe_sf_sync.config import masked_url, state_url_problem, url_without_password
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.service.runtime import Environment, Runtime
from stripe_sf_sync.state import StateStore, open_state


def run_state_migrate(config_path: Path | None, environment: Environment, to_url: str) -> dict[str, Any]:
    """`stripe-sf state migrate --to URL`: the SQLite state into an empty PostgreSQL store, verified table by
    table (rows and a checksum); the file is left as it was."""
    runtime = Runtime(config_path, environment)
    problem = state_url_problem(to_url)
    if problem:
        raise ConfigError([f"--to {problem}"], source="invocation")
    path = runtime.loaded.state_path
    with StateStore.open(path, create=False) as source, open_state(path, to_url) as target:
        from stripe_sf_sync.state.postgres import (  # psycopg is installed: open_state imported it
            PgStateStore,
            migrate_from,
        )

        assert isinstance(target, PgStateStore)  # a postgresql:// URL (state_url_problem above): open_state's store
        copied = migrate_from(source, target)
    return {"from": str(path), "to": masked_url(to_url), "state_url": url_without_password(to_url),
            "tables": {table: {"rows": rows, "checksum": digest} for table, (rows, digest) in copied.items()}}
