"""`stripe-sf state migrate --to URL`: a real state file (from a sync against the stand-ins) into an empty
PostgreSQL store, verified; the file untouched; a following sync continues from the migrated cursor."""

from __future__ import annotations

import hashlib
import json
import time

from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sync import service
from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.model import CachedCustomer

from .conftest import since
from .state_backends import STATE_NAME, Backend


def _sync(config, env, url=None, since=None):
    if url:
        env.env = {**env.env, "STRIPE_SF_STATE_URL": url}
    return service.run_sync(config, env, since=since, dry_run=False, max_events=None)


def test_migrate_copies_a_real_state_and_the_next_sync_continues_from_its_cursor(
        runner, config, env, sc, stripe_sb, org, pg_url, cli_env):
    first = _sync(config, env, since=since(sc))
    assert first.applied > 0
    sqlite = Backend("sqlite", config.parent / STATE_NAME)
    with sqlite.open() as st:  # the customers' emails (state version 4) travel too
        st.remember_customers([CachedCustomer("cus_mig", {}, "Mig", False, 1, "mig@example.com")])
    before = hashlib.sha256(sqlite.path.read_bytes()).hexdigest()
    old = sqlite.rows()
    old_ledger = dict((r[0], (r[1], r[2])) for r in sqlite.execute("SELECT event_id, run_id, recorded_at FROM "
                                                                       "events"))

    done = runner.invoke(app, ["state", "migrate", "--to", pg_url.replace("postgres@", "postgres:pw@"),
                               "--config", str(config), "--json"], env=cli_env)
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["to"].startswith("postgresql://postgres:***@") and "pw" not in done.output.replace("pwd", "")
    assert report["tables"]["events"]["rows"] == len(old["events"]) > 0
    assert report["tables"]["runs"]["rows"] == 1 and report["tables"]["meta"]["rows"] >= 2
    assert hashlib.sha256(sqlite.path.read_bytes()).hexdigest() == before  # the file is left untouched
    assert report["state_url"] == pg_url and "pw" not in report["state_url"]

    pg = Backend("postgresql", sqlite.path, pg_url)
    assert pg.rows() == old  # ledger, dead letters, cursor
    assert pg.execute("SELECT email FROM customers WHERE customer_id = 'cus_mig'") == [("mig@example.com",)]

    f = StripeFactory(stripe_sb, seed=31337)
    for i in range(3):
        cus = f.customer(f"After {i}", f"after{i}@example.com")
        org.insert("Account", {"Name": f"After {i}", "Stripe_Customer_ID__c": cus["id"]})
        f.subscription_created(f.subscription(cus["id"], [(f.price(100), 1)]), int(time.time()) - 30 + i)
    second = _sync(config, env, pg_url)  # no --since: the migrated cursor is where it starts
    assert second.applied == 3 and second.dead_lettered == 0
    ledger = dict((r[0], (r[1], r[2])) for r in pg.execute("SELECT event_id, run_id, recorded_at FROM events"))
    assert {k: ledger[k] for k in old_ledger} == old_ledger  # no migrated event was applied again
    assert [r[0] for r in pg.execute("SELECT run_id FROM runs ORDER BY run_id")] == [1, 2]  # ids continue
    assert hashlib.sha256(sqlite.path.read_bytes()).hexdigest() == before  # and the file is not used

    shown = {**cli_env, "STRIPE_SF_STATE_URL": pg_url.replace("postgres@", "postgres:pw@")}
    status = runner.invoke(app, ["status", "--config", str(config)], env=shown)
    assert status.exit_code == 0, status.output
    assert "State: postgresql, postgresql://postgres:***@127.0.0.1" in status.output and ":pw@" not in status.output
    doctor = runner.invoke(app, ["doctor", "--config", str(config)], env=shown)
    assert "PostgreSQL at postgresql://postgres:***@127.0.0.1" in doctor.output and ":pw@" not in doctor.output


def test_migrate_refuses_a_store_that_is_not_empty(runner, config, env, sc, pg_url, cli_env):
    _sync(config, env, since=since(sc))
    args = ["state", "migrate", "--to", pg_url, "--config", str(config)]
    assert runner.invoke(app, args, env=cli_env).exit_code == 0
    again = runner.invoke(app, args, env=cli_env)
    assert again.exit_code == ExitCode.STATE
    assert "is not empty" in again.output and "new database" in again.output


def test_migrate_needs_a_postgresql_url_and_an_existing_file(runner, config, cli_env, pg_url):
    bad = runner.invoke(app, ["state", "migrate", "--to", "sqlite:///x", "--config", str(config)], env=cli_env)
    assert bad.exit_code == ExitCode.CONFIG and "postgresql://" in bad.output
    missing = runner.invoke(app, ["state", "migrate", "--to", pg_url, "--config", str(config)], env=cli_env)
    assert missing.exit_code == ExitCode.STATE and "No state file" in missing.output


def test_the_next_step_shows_the_url_to_set_and_the_password_apart(runner, config, env, sc, pg_url, cli_env):
    """Issue 20 §5: the hint showed `STRIPE_SF_STATE_URL=postgresql://postgres:***@...`, which cannot be set."""
    _sync(config, env, since=since(sc))
    done = runner.invoke(app, ["state", "migrate", "--to", pg_url.replace("postgres@", "postgres:pw@"),
                               "--config", str(config)], env=cli_env)
    assert done.exit_code == 0, done.output
    next_step = done.stdout[done.stdout.index("Next"):]
    assert f"export STRIPE_SF_STATE_URL={pg_url}" in next_step and "export PGPASSWORD=" in next_step, next_step
    assert "***" not in next_step and ":pw@" not in done.output
