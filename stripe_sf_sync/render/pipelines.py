"""What `sync --all` prints: a line (or JSON object) per pipeline, with its exit code, and the worst."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from stripe_sf_sync.render.console import for_people, print_json, say, stdout
from stripe_sf_sync.render.tables import Column, print_records
from stripe_sf_sync.words import counted

if TYPE_CHECKING:
    from stripe_sf_sync.service.sync_all import PipelineRun


def print_pipeline_runs(runs: list[PipelineRun], exit_code: int, *, as_json: bool) -> None:
    """Each pipeline's outcome; its failures as warnings (on stderr, so that --quiet and a JSON log keep them)."""
    if as_json:
        print_json({"exit_code": exit_code, "accounts": [r.as_dict() for r in runs]})
    elif for_people():
        columns = [Column("account", is_id=True), Column("exit"), Column("read"), Column("applied"),
                   Column("dead-lettered"), Column("written"), Column("calls (Stripe/SF)")]
        rows = [[r.pipeline.name, str(r.exit_code)] + (
            [str(s.events_read), str(s.applied), str(s.dead_lettered), str(s.records_written),
             f"{s.stripe_calls}/{s.salesforce_calls}"] if (s := r.summary) is not None else ["-"] * 5)
            for r in runs]
        print_records(stdout(), f"{counted(len(runs), 'account')}, exit {exit_code}", columns, rows)
    for r in runs:
        if r.error:
            say(logging.WARNING, f"{r.pipeline.name}: exit {r.exit_code}: {r.error}", kind="pipeline_failed",
                account=r.pipeline.name, exit_code=r.exit_code)
        elif r.summary is not None and r.summary.dead_lettered and not r.summary.dry_run:
            say(logging.WARNING, f"{r.pipeline.name}: {counted(r.summary.dead_lettered, 'event was', 'events were')}"
                                 f" dead-lettered: see `stripe-sf dlq list --account {r.pipeline.name}`.",
                kind="dead_letters", account=r.pipeline.name, dead_lettered=r.summary.dead_lettered)
