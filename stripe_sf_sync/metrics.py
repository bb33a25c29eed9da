"""A run's figures in Prometheus text format, for node_exporter's textfile collector (`--metrics-file`).

prometheus-client writes the format and the file: `write_to_textfile` writes a temporary file next to the
target and renames it over the target, so the collector never reads half a file.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    open_dead_letters: int | None  # None: the run failed before it opened its state
    cursor_created: int | None  # the cursor event's time
    cursor_current_at: int | None  # the newer of that and the start of the last sync that read to the end
    last_success_at: int | None  # the newest run of this command that exited 0 or 3
    stripe_reads_30d: int | None = None  # Stripe reads recorded in the last 30 days (reads.py)
    backfill_unfinished: bool | None = None  # the last backfill stopped before its end (None: no backfill yet)
    account: str = "default"  # the pipeline (pipelines.py): its Stripe account id, or `default`


def check_metrics_path(path: Path) -> None:
    """Before any network call: the file can be written where it is asked for. A usage error otherwise."""
    problem = writable_file_problem(path, "--metrics-file", "stripe_sf.prom")
    if problem:
        raise ConfigError([problem], source="invocation",
                          hint="Point it into node_exporter's --collector.textfile.directory, writable by the user "
                               "that runs stripe-sf (the file is replaced by a rename, so the directory must be "
                               "writable).")


def write_metrics(path: Path, figures: RunFigures | Sequence[RunFigures]) -> None:
    """Write the runs' figures to `path`, atomically (a temporary file in the same directory, renamed): one run,
    or one per pipeline (`sync --all`), each series labelled with its `account`."""
    registry = CollectorRegistry()
    gauges: dict[str, Gauge] = {}

    def gauge(f: RunFigures, name: str, doc: str, value: float | None, **labels: str) -> None:
        if value is None:
            return
        if name not in gauges:
            gauges[name] = Gauge(f"{PREFIX}_{name}", doc, ["command", "account", *labels], registry=registry)
        gauges[name].labels(command=f.command, account=f.account, **labels).set(value)

    for f in [figures] if isinstance(figures, RunFigures) else figures:
        _run_gauges(f, gauge)
    write_to_textfile(str(path), registry)


def _run_gauges(f: RunFigures, gauge: Any) -> None:
    """One run's series."""
    s = f.summary
    gauge(f, "last_run_timestamp_seconds", "When the last run ended (Unix time).", f.finished_at)
    gauge(f, "last_run_exit_code", "The last run's exit code (0 ok, 3 dead letters; docs/exit-codes.md).",
          f.exit_code)
    gauge(f, "last_run_duration_seconds", "How long the last run took.", s.get("duration_s"))
    gauge(f, "last_run_events_read", "Events (or backfilled objects) the last run read.", s.get("events_read"))
    for key, outcome in OUTCOMES.items():
        gauge(f, "last_run_events", "Events of the last run, by outcome.", s.get(key) or 0, outcome=outcome)
    gauge(f, "last_run_records_written", "Salesforce records the last run wrote.", s.get("records_written"))
    for api, key in (("stripe", "stripe_calls"), ("salesforce", "salesforce_calls")):
        gauge(f, "last_run_api_calls", "HTTP requests the last run made, by API.", s.get(key) or 0, api=api)
    gauge(f, "last_run_stripe_rate_limited", "Stripe's 429 answers in the last run (each halved the pacing).",
          s.get("stripe_rate_limited") or 0)
    gauge(f, "last_run_stopped_early", "1 when the last run stopped at the Salesforce API budget.",
          1 if s.get("stopped_early") else 0)
    gauge(f, "last_run_interrupted", "1 when a signal (SIGINT, SIGTERM) stopped the last run before the end of "
          "its work; what it finished is committed, and the next run continues.", 1 if s.get("stopped_by") else 0)
    gauge(f, "backfill_unfinished", "1 while the last backfill stopped before its end (continue it with --resume), "
          "0 once it finished.", None if f.backfill_unfinished is None else int(f.backfill_unfinished))
    gauge(f, "last_success_timestamp_seconds", "When the newest run of this command that did its work (exit 0 or "
          "3) ended.", f.last_success_at)
    gauge(f, "salesforce_api_used", "The org's daily API requests used, as last seen.", s.get("salesforce_api_used"))
    gauge(f, "salesforce_api_max", "The org's daily API request allowance.", s.get("salesforce_api_max"))
    gauge(f, "dead_letters_open", "Open dead letters in the state file.", f.open_dead_letters)
    gauge(f, "cursor_timestamp_seconds", "When the cursor's event was created at Stripe.", f.cursor_created)
    gauge(f, "cursor_current_timestamp_seconds", "Events created before this time are applied: the newer of the "
          "cursor's event and the start of the last sync that read Stripe's event list to its end (a run stopped "
          "before the end, by a signal or the API budget, does not count).", f.cursor_current_at)
    gauge(f, "stripe_reads_30d", "Stripe read requests stripe-sf made in the last 30 days (Stripe allocates reads "
          "per 30 days).", f.stripe_reads_30d)
