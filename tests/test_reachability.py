"""A quiet account still proves, once a day, that Salesforce can be reached (issue 20 §3): a sync with nothing to
write makes one light call when no run reached Salesforce in the last 24 hours, so a revoked token or a broken CA
bundle fails a run, and `status --check`, before the next event arrives."""

from __future__ import annotations

import json
import time

from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.service import SALESFORCE_CONTACT_EVERY_S, SALESFORCE_CONTACT_KEY
from stripe_sf_sync.state import StateStore

YESTERDAY = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))


def sync(runner, config, cli_env, *args: str):
    result = runner.invoke(app, ["sync", "--config", str(config), "--json", *args], env=cli_env)
    return result, (json.loads(result.stdout) if result.exit_code in (0, 3) else None)


def age_contact(config, seconds: float) -> None:
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        st.set_meta(SALESFORCE_CONTACT_KEY, str(int(time.time() - seconds)))


def test_a_quiet_sync_reaches_salesforce_once_a_day_and_no_more(runner, config, cli_env, sf_sb):
    first, summary = sync(runner, config, cli_env, "--since", YESTERDAY)
    assert first.exit_code == ExitCode.OK, first.output
    assert summary["events_read"] == 0 and summary["salesforce_calls"] == 1  # the one light call
    # The org's identity, read when the run connects (a first run describes the org with it), proves contact.
    assert sf_sb.requests_log[-1][1].endswith("/composite")
    again, summary = sync(runner, config, cli_env)
    assert again.exit_code == ExitCode.OK and summary["salesforce_calls"] == 0  # reached within the day
    age_contact(config, SALESFORCE_CONTACT_EVERY_S + 60)
    later, summary = sync(runner, config, cli_env)
    assert later.exit_code == ExitCode.OK and summary["salesforce_calls"] == 1
    report = json.loads(runner.invoke(app, ["status", "--config", str(config), "--json"], env=cli_env).stdout)
    assert report["salesforce_contact_iso"].startswith(time.strftime("%Y-%m-%d", time.gmtime()))


def test_a_revoked_token_turns_status_check_red_without_a_new_event(runner, config, cli_env, org):
    first, _ = sync(runner, config, cli_env, "--since", YESTERDAY)
    assert first.exit_code == ExitCode.OK, first.output
    org.expire_sessions()  # the token is revoked; no event comes
    age_contact(config, SALESFORCE_CONTACT_EVERY_S + 60)
    quiet, _ = sync(runner, config, cli_env)
    assert quiet.exit_code == ExitCode.UNAVAILABLE, quiet.output
    assert "INVALID_SESSION_ID" in quiet.output
    check = runner.invoke(app, ["status", "--config", str(config), "--check"], env=cli_env)
    assert check.exit_code == ExitCode.UNHEALTHY
    assert "failed with exit code 5" in check.stdout
