"""Shared fixtures: the two sandbox stand-ins, served on loopback, and a discovered config."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stripe_sf_sandbox import scenario
from stripe_sf_sandbox.demo import sandbox_environment
from stripe_sf_sandbox.salesforce_server import SalesforceOrg, SalesforceSandbox
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync import service
from stripe_sf_sync.config import example_config

EXAMPLE = example_config()


@pytest.fixture(autouse=True)
def _package_logger_propagates() -> Iterator[None]:
    """A command run in-process (CliRunner) sets the package logger up as the CLI does, not propagating; put it
    back after each test so that a later test's caplog sees its lines whatever ran before (under pytest 8,
    the lowest allowed, a later test's caplog missed them)."""
    yield
    package = logging.getLogger("stripe_sf_sync")
    package.propagate = True


@pytest.fixture
def stripe_sb() -> Iterator[StripeSandbox]:
    with StripeSandbox() as sb:
        yield sb


@pytest.fixture
def org() -> SalesforceOrg:
    return scenario.awkward_org()


@pytest.fixture
def sf_sb(org: SalesforceOrg) -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox(org) as sb:
        yield sb


@pytest.fixture
def env(stripe_sb: StripeSandbox, sf_sb: SalesforceSandbox) -> service.Environment:
    environment = sandbox_environment(stripe_sb, sf_sb)
    environment.sleep = lambda s: None  # backoff without waiting
    return environment


@pytest.fixture
def sc(stripe_sb: StripeSandbox, org: SalesforceOrg) -> scenario.Scenario:
    return scenario.load(stripe_sb, org, now=int(time.time()))


def write_config(path: Path, **overrides: str) -> Path:
    text = EXAMPLE.replace("account_csm: null", "account_csm: CSM__c")
    for old, new in overrides.items():
        assert old in text, f"sync.yaml.example no longer has {old!r}: the override would be silently lost"
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.fixture
def config(tmp_path: Path, env: service.Environment) -> Path:
    path = write_config(tmp_path / "sync.yaml")
    service.run_discover(path, env, write=True, example=EXAMPLE)
    return path


def since(sc: scenario.Scenario) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(sc.start))


def snapshot(org: SalesforceOrg) -> dict[str, Any]:
    """The org's business state, independent of generated Ids and timestamps."""
    names = {a["Id"]: a["Name"] for a in org.records("Account")}
    volatile = {"Id", "CreatedDate", "LastModifiedDate", "SystemModstamp", "IsDeleted", "AccountId", "WhatId"}

    def clean(rec: dict[str, Any]) -> tuple:
        d = {k: v for k, v in rec.items() if k not in volatile and k != "attributes"}
        d["_account"] = names.get(rec.get("AccountId") or rec.get("WhatId") or rec.get("Id"))
        return tuple(sorted((k, str(v)) for k, v in d.items()))

    return {obj: sorted(clean(r) for r in org.records(obj)) for obj in ("Opportunity", "Account", "Task")}


def crash_before_commit_then_rerun(monkeypatch: pytest.MonkeyPatch, crashed_run: Any, between: Any = None) -> Any:
    """Run `crashed_run` so that the process dies after Salesforce accepted the writes and before the state
    commit; call `between()` (a person at work in the org, or a check); then return what `crashed_run`
    returns on the rerun, with commits working again."""
    from stripe_sf_sync.state import StateStore

    real_commit = StateStore.commit_batch

    def crash(self: Any, *a: Any, **kw: Any) -> None:
        raise KeyboardInterrupt  # the process dies after Salesforce accepted the writes

    monkeypatch.setattr(StateStore, "commit_batch", crash)
    with pytest.raises(KeyboardInterrupt):
        crashed_run()
    if between is not None:
        between()
    monkeypatch.setattr(StateStore, "commit_batch", real_commit)
    return crashed_run()


@pytest.fixture
def runner() -> CliRunner:
    """Runs the CLI in-process."""
    return CliRunner()


@pytest.fixture
def cli_env(stripe_sb, sf_sb) -> dict[str, str]:
    """The environment that points the CLI at the two stand-ins."""
    return {"STRIPE_API_KEY": stripe_sb.api_key, "STRIPE_API_BASE": stripe_sb.base_url,
            "SF_INSTANCE_URL": sf_sb.instance_url, "SF_ACCESS_TOKEN": sf_sb.access_token,
            "REQUESTS_CA_BUNDLE": sf_sb.ca_path}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """One throwaway PostgreSQL server for the session (tests/pgserver.py); skipped (failed in CI) without it."""
    from . import pgserver

    try:
        import psycopg  # noqa: F401
    except ModuleNotFoundError:
        pgserver.unavailable("psycopg is not installed (pip install -e '.[test]')")
    server = pgserver.start_server()
    try:
        yield server
    finally:
        pgserver.remove(server)


@pytest.fixture
def pg_url(pg_server: Any) -> Iterator[str]:
    """A fresh, empty database on the session's server."""
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture(scope="session")
def pg_pooler(pg_server: Any) -> Iterator[Any]:
    """A PgBouncer in transaction mode in front of the session's server (tests/pgbouncer.py); skipped (failed
    in CI) without it."""
    from . import pgbouncer

    pooler = pgbouncer.start(pg_server)
    try:
        yield pooler
    finally:
        pgbouncer.stop(pooler)


@pytest.fixture
def pooled_url(pg_pooler: Any, pg_url: str) -> str:
    """The fresh database of `pg_url`, reached through the transaction-mode pooler."""
    return str(pg_pooler.url(pg_url.rsplit("/", 1)[1]))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Each state test runs on both backends: the SQLite file, and a fresh PostgreSQL database."""
    from .state_backends import STATE_NAME, Backend

    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return Backend(request.param, tmp_path / STATE_NAME, url)


@pytest.fixture
def stripe_accounts(stripe_sb: StripeSandbox) -> dict[str, StripeSandbox]:
    """The sandbox's accounts for multi-account tests (issue 26): `platform` (stripe_sb, STRIPE_API_KEY's own),
    `separate` (a key of its own: `.api_key`) and `connected` (the platform's key with `Stripe-Account`)."""
    return {"platform": stripe_sb, "separate": stripe_sb.add_account(),
            "connected": stripe_sb.add_account(connected=True)}
