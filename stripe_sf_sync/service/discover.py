"""`stripe-sf discover-config`: the org's won stage and record types, and (with --write) the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stripe_sf_sync.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_SF_API_VERSION,
    LoadedConfig,
    load_config,
    salesforce_secrets,
    writable_file_problem,
)
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.salesforce.gateway import SalesforceGateway, connect
from stripe_sf_sync.salesforce.org import ORG_CACHE_KEY
from stripe_sf_sync.service.runtime import Environment, Runtime, existing_state


def _check_config_writable(path: Path) -> None:
    """`discover-config --write` replaces the config through a temporary file next to it: checked before
    logging in, so that a wrong --config fails at once, not after the org was read."""
    problem = writable_file_problem(path, "--config", "sync.yaml")
    if problem:
        raise ConfigError([problem], source="config",
                          hint="Create the directory (or make it writable), or pass --config with another path.")


def run_discover(config_path: Path | None, environment: Environment, *, write: bool, example: str) -> Any:
    """`stripe-sf discover-config`: query the org; with write, store the values in sync.yaml."""
    from stripe_sf_sync.discover import discover, write_discovery

    path = config_path or DEFAULT_CONFIG_PATH
    loaded: LoadedConfig | None = None
    if path.exists():
        loaded = load_config(path)
    elif not write:
        raise ConfigError([f"{path} does not exist"], source="config",
                          hint="Pass --write to create it from sync.yaml.example with the org's values.")
    if write:
        _check_config_writable(path)
    secrets = salesforce_secrets(environment.env)
    version = loaded.settings.salesforce.api_version if loaded else DEFAULT_SF_API_VERSION
    sf = connect(secrets, api_version=version, session=environment.session_factory(),
                 timeout=loaded.settings.salesforce.timeout_seconds if loaded else 60.0)
    gw = SalesforceGateway(sf, sleep=environment.sleep)
    found = discover(gw, preferred=loaded.settings.salesforce.opportunity_record_type if loaded else None)
    if write:
        write_discovery(path, found, example)
        # The org may have changed: make the next sync describe it again.
        with existing_state(Runtime(path, environment)) as state:
            if state is not None:
                state.delete_meta(ORG_CACHE_KEY)
    return found
