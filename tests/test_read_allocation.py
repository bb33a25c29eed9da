"""Stripe's read allocation (docs.stripe.com/rate-limits, "Read allocation"; api-facts.md §3): reads are
allocated per account over 30 days, and polling counts. Each run's Stripe requests are kept per day in state;
`status` and the metrics file report the last 30 days."""

from __future__ import annotations

import json
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.reads import READS_KEY, monthly_reads, reads_last_30_days, record_reads

from .conftest import since

DAY = 86400


class Meta(dict):
    def get_meta(self, key: str) -> str | None:
        return self.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self[key] = value


def test_reads_are_kept_per_day_and_summed_over_thirty_days():
    state, now = Meta(), 1_796_601_600.0  # a midnight UTC
    record_reads(state, 5, now - 31 * DAY)  # out of the window by the time of the last run
    record_reads(state, 7, now - 29 * DAY)
    record_reads(state, 2, now - 1)
    record_reads(state, 3, now + 10)
    record_reads(state, 0, now)
    assert reads_last_30_days(state, now + 10) == 12
    # The tally keeps only the window: it never grows with the history.
    assert sorted(json.loads(state[READS_KEY])) == ["2026-11-08", "2026-12-06", "2026-12-07"]
    assert reads_last_30_days(state, now + 2 * DAY) == 5  # the day 29 days back has left the window


def test_what_a_cron_schedule_costs():
    # A quiet run reads one page of events: */5 is 288 runs a day, */1 1,440 (the fact sheet's figures).
    assert monthly_reads(24 * 60 / 5) == 8_640
    assert monthly_reads(24 * 60) == 43_200


def samples(path: Path) -> dict[str, float]:
    # Every series carries the command and the account (issue 26); the others are labelled further (outcome, api).
    return {s.name: s.value for fam in text_string_to_metric_families(path.read_text()) for s in fam.samples
            if set(s.labels) <= {"command", "account"}}


def test_status_and_the_metrics_file_report_the_stripe_reads_of_the_last_thirty_days(runner, config, cli_env, sc,
                                                                                      tmp_path):
    prom = tmp_path / "stripe_sf.prom"
    calls = []
    for args in (["--since", since(sc)], []):
        result = runner.invoke(app, ["sync", "--config", str(config), "--json", "--metrics-file", str(prom), *args],
                               env=cli_env)
        assert result.exit_code in (ExitCode.OK, ExitCode.DEAD_LETTERS), result.output
        calls.append(json.loads(result.stdout)["stripe_calls"])
    assert calls[1] >= 1  # a quiet run still reads once
    report = json.loads(runner.invoke(app, ["status", "--config", str(config), "--json"], env=cli_env).stdout)
    assert report["stripe_reads_30d"] == sum(calls)
    assert samples(prom)["stripe_sf_stripe_reads_30d"] == sum(calls)
    text = runner.invoke(app, ["status", "--config", str(config)], env=cli_env).stdout
    assert f"Stripe reads in the last 30 days: {sum(calls):,}" in text
    assert abs(time.time() - report["last_run"]["finished_at"]) < 120
