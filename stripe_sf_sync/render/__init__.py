"""Everything the CLI prints: tables and blocks that read at 80 columns and in a pipe, a run's summary, the
reports of `status`, `dlq list`, `reconcile`, `doctor` and the rest, notices and errors on stderr, and JSON.

The CLI parses, calls the service layer, and hands the result here. Nothing here imports rich (or the
service layer) until it prints: the CLI and TAB completion start without them.
"""

from stripe_sf_sync.render.console import (
    echo,
    error,
    for_people,
    print_json,
    say,
    stderr,
    stdout,
    terminal_console,
    terminal_progress,
    usage_error,
)
from stripe_sf_sync.render.pipelines import print_pipeline_runs
from stripe_sf_sync.render.reports import (
    doctor_line,
    print_dead_letters,
    print_discovered,
    print_doctor,
    print_dropped,
    print_migrated,
    print_rebind,
    print_sandbox_started,
    print_setup,
    print_status,
    utc_time,
)
from stripe_sf_sync.render.runs import (
    RECONCILE_SHOWN,
    backfill_progress,
    backfill_stopped,
    print_human_summary,
    print_reconcile,
    print_summary,
    reconcile_json,
    resume_command,
    sync_progress,
    totals_line,
)
from stripe_sf_sync.render.tables import Column, print_records

__all__ = [
    "RECONCILE_SHOWN", "Column", "backfill_progress", "backfill_stopped", "doctor_line", "echo", "error",
    "for_people", "print_dead_letters", "print_discovered", "print_doctor", "print_dropped",
    "print_human_summary", "print_json", "print_migrated", "print_pipeline_runs", "print_rebind", "print_reconcile",
    "print_records",
    "print_sandbox_started", "print_setup", "print_status", "print_summary", "reconcile_json", "resume_command",
    "say", "stderr", "stdout", "sync_progress", "terminal_console", "terminal_progress", "totals_line",
    "usage_error", "utc_time",
]
