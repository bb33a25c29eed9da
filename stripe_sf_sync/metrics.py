"""A run's figures in Prometheus text format, for node_exporter's textfile collector (`--metrics-file`).

prometheus-client writes the format and the file: `write_to_textfile` writes a temporary file next to the
target and renames it over the target, so the collector never reads half a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from stripe_sf_sync.config import writable_file_problem
from stripe_sf_sync.errors import ConfigError

PREFIX = "stripe_sf"
# The summary's outcome counters, by the `outcome` label they get.
OUTCOMES = {"applied": "applied", "skipped_stale": "stale", "skipped_duplicate": "already_done",
            "ignored": "ignored", "dead_lettered": "dead_lettered"}


@dataclass(frozen=True)
class RunFigures:
    """What the metrics file says about one run and the state it left."""

    command: str
    exit_code: int
    finished_at: float
    summary: dict[str, Any]  # RunSummary.as_dict()
    open_dead_letters: int
    cursor_created: int | None  # the cursor event's time
    cursor_current_at: int | None  # the newer of that and the start of the last sync that read to the end
    last_success_at: int | None  # the newest run of this command that exited 0 or 3
    stripe_reads_30d: int | None = None  # Stripe reads recorded in the last 30 days (reads.py)
    backfill_unfinished: bool | None = None  # the last backfill stopped before its end (None: no backfill yet)


def check_metrics_path(path: Path) -> None:
    """Before any network call: the file can be written where it is asked for. A usage error otherwise."""
    problem = writable_file_problem(path, "--metrics-file", "stripe_sf.prom")
    if problem:
        raise ConfigError([problem], source="invocation",
                          hint="Point it into node_exporter's --collector.textfile.directory, writable by the user "
                               "that runs stripe-sf (the file is replaced by a rename, so the directory must be "
                               "writable).")


def write_metrics(path: Path, figures: RunFigures) -> None:
    """Write the run's figures to `path`, atomically (a temporary file in the same directory, renamed)."""
    registry = CollectorRegistry()
    command = figures.command
    s = figures.summary

    def gauge(name: str, doc: str, value: float | None, **labels: str) -> None:
        if value is not None:
            Gauge(f"{PREFIX}_{name}", doc, ["command", *labels], registry=registry).labels(
                command=command, **labels).set(value)

    gauge("last_run_timestamp_seconds", "When the last run ended (Unix time).", figures.finished_at)
    gauge("last_run_exit_code", "The last run's exit code (0 ok, 3 dead letters; docs/exit-codes.md).",
          figures.exit_code)
    gauge("last_run_duration_seconds", "How long the last run took.", s.get("duration_s"))
    gauge("last_run_events_read", "Events (or backfilled objects) the last run read.", s.get("events_read"))
    events = Gauge(f"{PREFIX}_last_run_events", "Events of the last run, by outcome.", ["command", "outcome"],
                   registry=registry)
    for key, outcome in OUTCOMES.items():
        events.labels(command=command, outcome=outcome).set(s.get(key) or 0)
    gauge("last_run_records_written", "Salesforce records the last run wrote.", s.get("records_written"))
    calls = Gauge(f"{PREFIX}_last_run_api_calls", "HTTP requests the last run made, by API.", ["command", "api"],
                  registry=registry)
    calls.labels(command=command, api="stripe").set(s.get("stripe_calls") or 0)
    calls.labels(command=command, api="salesforce").set(s.get("salesforce_calls") or 0)
    gauge("last_run_stripe_rate_limited", "Stripe's 429 answers in the last run (each halved the pacing).",
          s.get("stripe_rate_limited") or 0)
    gauge("last_run_stopped_early", "1 when the last run stopped at the Salesforce API budget.",
          1 if s.get("stopped_early") else 0)
    gauge("last_run_interrupted", "1 when a signal (SIGINT, SIGTERM) stopped the last run before the end of its "
          "work; what it finished is committed, and the next run continues.", 1 if s.get("stopped_by") else 0)
    gauge("backfill_unfinished", "1 while the last backfill stopped before its end (continue it with --resume), "
          "0 once it finished.", None if figures.backfill_unfinished is None else int(figures.backfill_unfinished))
    gauge("last_success_timestamp_seconds", "When the newest run of this command that did its work (exit 0 or 3) "
          "ended.", figures.last_success_at)
    gauge("salesforce_api_used", "The org's daily API requests used, as last seen.", s.get("salesforce_api_used"))
    gauge("salesforce_api_max", "The org's daily API request allowance.", s.get("salesforce_api_max"))
    gauge("dead_letters_open", "Open dead letters in the state file.", figures.open_dead_letters)
    gauge("cursor_timestamp_seconds", "When the cursor's event was created at Stripe.", figures.cursor_created)
    gauge("cursor_current_timestamp_seconds", "Events created before this time are applied: the newer of the "
          "cursor's event and the start of the last sync that read Stripe's event list to its end (a run stopped "
          "before the end, by a signal or the API budget, does not count).",
          figures.cursor_current_at)
    if figures.stripe_reads_30d is not None:
        Gauge(f"{PREFIX}_stripe_reads_30d", "Stripe read requests stripe-sf made in the last 30 days (Stripe "
              "allocates reads per 30 days).", registry=registry).set(figures.stripe_reads_30d)
    write_to_textfile(str(path), registry)
