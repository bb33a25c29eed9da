"""First runs and the cursor, through the CLI: a first `sync --since` that finds no events still records where
sync starts (so cron's plain `sync` works next), a `--since` in the future is a usage error, and `--since` while a
cursor exists needs `--rewind`, which re-reads from that date and applies only events with no recorded outcome."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.service import parse_since
from stripe_sf_sync.sources import HANDOFF_SINCE_KEY, SYNC_FLOOR_KEY
from stripe_sf_sync.state import StateStore

from .conftest import since, snapshot

DAY = 86400


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def cli(runner, config, stripe_sb, sf_sb):
    """`stripe-sf ARGS --config CONFIG` against the stand-ins."""
    env = {"STRIPE_API_KEY": stripe_sb.api_key, "STRIPE_API_BASE": stripe_sb.base_url,
           "SF_INSTANCE_URL": sf_sb.instance_url, "SF_ACCESS_TOKEN": sf_sb.access_token,
           "REQUESTS_CA_BUNDLE": sf_sb.ca_path}

    def run(*args: str):
        return runner.invoke(app, [*args, "--config", str(config)], env=env)
    return run


def iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def day(ts: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def meta(config, key: str) -> str | None:
    with StateStore.open(config.parent / "stripe-sf-state.sqlite", create=False) as st:
        return st.get_meta(key)


def test_a_first_since_that_finds_no_events_records_where_sync_starts(cli, config, sc, stripe_sb, org):
    start = int(time.time()) - 5  # after every scenario event (the newest is a day old)
    first = cli("sync", "--since", iso(start))
    assert first.exit_code == ExitCode.OK, first.output
    assert "0 events read" in first.output
    assert meta(config, HANDOFF_SINCE_KEY) == str(start) and meta(config, SYNC_FLOOR_KEY) == str(start)

    # What cron runs next works, instead of exit 2 on every run.
    quiet = cli("sync")
    assert quiet.exit_code == ExitCode.OK, quiet.output
    assert "0 events read" in quiet.output

    # An event after the starting point is applied by the next plain sync, which then has a cursor.
    event = StripeFactory(stripe_sb, seed=11).subscription_updated(sc.subscriptions["acme"], {"status": "past_due"},
                                                                   start + 2)
    applied = cli("sync", "--json")
    assert applied.exit_code == ExitCode.OK, applied.output
    summary = json.loads(applied.stdout)
    assert summary["events_read"] == 1 and summary["applied"] == 1 and summary["cursor"] == event["id"]
    acme = next(a for a in org.records("Account") if a["Id"] == sc.accounts["acme"])
    assert acme["Subscription_Status__c"] == "past_due"


def test_a_dry_run_first_since_that_finds_nothing_writes_nothing(cli, config, sc):
    dry = cli("sync", "--since", iso(int(time.time()) - 5), "--dry-run")
    assert dry.exit_code == ExitCode.OK, dry.output
    assert meta(config, HANDOFF_SINCE_KEY) is None and meta(config, SYNC_FLOOR_KEY) is None
    plain = cli("sync")
    assert plain.exit_code == ExitCode.CONFIG and "no saved cursor yet" in plain.output


def test_a_since_in_the_future_is_a_usage_error_that_says_so(cli, config, sc, stripe_sb):
    calls = stripe_sb.request_count
    tomorrow = day(int(time.time()) + DAY)
    result = cli("sync", "--since", tomorrow)
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert f"--since {tomorrow}T00:00:00Z is in the future" in result.output and "Traceback" not in result.output
    assert stripe_sb.request_count == calls  # refused before reading anything
    assert meta(config, SYNC_FLOOR_KEY) is None and meta(config, HANDOFF_SINCE_KEY) is None


def test_since_while_a_cursor_exists_needs_rewind_and_says_what_it_means(cli, config, sc, stripe_sb, org):
    assert cli("sync", "--since", since(sc)).exit_code == ExitCode.DEAD_LETTERS
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        cursor = st.cursor()
    calls, before = stripe_sb.request_count, snapshot(org)
    refused = cli("sync", "--since", since(sc))
    assert refused.exit_code == ExitCode.CONFIG, refused.output
    text = " ".join(refused.output.split())
    assert f"would rewind the saved cursor ({cursor.event_id}" in text and "add --rewind" in text
    assert "events whose outcome is already recorded are not applied again, only unrecorded ones" in text
    assert stripe_sb.request_count == calls and snapshot(org) == before
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        assert st.cursor() == cursor
        # A mistake in the command line is not a run that failed: the last run stays the real one, and a
        # monitoring check does not turn red for a typo at the terminal.
        assert [r["exit_code"] for r in st.recent_runs(5)] == [ExitCode.DEAD_LETTERS]
    assert json.loads(cli("status", "--json").stdout)["last_run"]["exit_code"] == ExitCode.DEAD_LETTERS


def test_rewind_applies_only_the_events_with_no_recorded_outcome(cli, config, sc, org):
    assert cli("sync", "--since", since(sc)).exit_code == ExitCode.DEAD_LETTERS
    before = snapshot(org)
    forgotten = sc.events[1:3]
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        cursor = st.cursor()
        st._conn.execute(f"DELETE FROM events WHERE event_id IN ({','.join('?' * len(forgotten))})", forgotten)
    result = cli("sync", "--since", since(sc), "--rewind", "--json")
    assert result.exit_code == ExitCode.OK, result.output
    summary = json.loads(result.stdout)
    assert summary["events_read"] == len(sc.events)
    assert summary["skipped_duplicate"] == len(sc.events) - len(forgotten)  # the ledger: not applied again
    assert summary["applied"] + summary["skipped_stale"] + summary["ignored"] == len(forgotten)
    assert snapshot(org) == before  # idempotent writes: nothing changes in Salesforce
    with StateStore.open(config.parent / "stripe-sf-state.sqlite") as st:
        assert st.cursor() == cursor and set(st.outcomes_for(forgotten)) == set(forgotten)


def test_rewind_lowers_the_lookback_floor_and_never_raises_it(cli, config, sc):
    assert cli("sync", "--since", since(sc)).exit_code == ExitCode.DEAD_LETTERS
    first = parse_since(since(sc))
    assert meta(config, SYNC_FLOOR_KEY) == str(first)
    later = day(first + DAY)
    assert cli("sync", "--since", later, "--rewind").exit_code == ExitCode.OK
    assert meta(config, SYNC_FLOOR_KEY) == str(first)  # not raised
    earlier = day(first - DAY)
    assert cli("sync", "--since", earlier, "--rewind").exit_code == ExitCode.OK
    assert meta(config, SYNC_FLOOR_KEY) == str(first - DAY)  # lowered


def test_rewind_is_refused_without_since_and_past_the_cursor(cli, config, sc, stripe_sb):
    no_since = cli("sync", "--rewind")
    assert no_since.exit_code == ExitCode.CONFIG and "--rewind needs --since" in no_since.output
    assert cli("sync", "--since", since(sc)).exit_code == ExitCode.DEAD_LETTERS
    calls = stripe_sb.request_count
    forward = cli("sync", "--since", iso(int(time.time()) - 60), "--rewind")
    assert forward.exit_code == ExitCode.CONFIG, forward.output
    text = " ".join(forward.output.split())
    assert "after the saved cursor" in text and "would skip the events in between" in text
    assert "Run `stripe-sf sync` without --since" in text
    assert stripe_sb.request_count == calls


def test_sync_help_says_what_rewind_means(runner):
    result = runner.invoke(app, ["sync", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())  # the options box wraps long help
    assert "--rewind" in text and "Events already recorded are not applied again, only unrecorded ones" in text
    assert "lookback floor moves back to the date, never forward" in text
    assert "SIGTERM" in text and "143" in text
