"""`stripe-sf sync --all`: every pipeline of the config (issue 26), at most N at once, in one process.

Each pipeline runs the same recorded sync as `sync --account ACCT` (its own state rows, lock, Stripe key and
pacing), on a thread of its own: a sync waits on Stripe and Salesforce, and Stripe's rate limits are per account,
so pipelines side by side take about as long as the slowest. One signal handler stops them all at their next
boundary. A pipeline's failure (a refused key, its lock held, its dead letters) is its own: the others go on, and
the command exits with the worst code, naming each pipeline's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stripe_sf_sync.config import require_org_values
from stripe_sf_sync.errors import ExitCode, StripeSfError
from stripe_sf_sync.metrics import RunFigures, write_metrics
from stripe_sf_sync.pipeline import RunSummary
from stripe_sf_sync.pipeline.stop import Stop, stop_on_signals
from stripe_sf_sync.pipelines import Pipeline, pipelines
from stripe_sf_sync.service.recorded import recorded_run
from stripe_sf_sync.service.runtime import (
    Environment,
    Runtime,
    check_run_metrics,
    check_secrets,
    clients,
    exit_code_for,
    parse_since,
)
from stripe_sf_sync.service.sync import apply_sync

log = logging.getLogger("stripe_sf_sync")

# Which exit code `sync --all` reports when pipelines differ, worst first: a signal (the whole command was
# stopped), a bug, then the failures an operator must act on, the dead letters, and success last.
_WORST_FIRST = (ExitCode.TERMINATED, ExitCode.INTERRUPTED, ExitCode.FAILURE, ExitCode.IDENTITY, ExitCode.STATE,
                ExitCode.CURSOR_EXPIRED, ExitCode.UNAVAILABLE, ExitCode.CONFIG, ExitCode.LOCKED,
                ExitCode.DEAD_LETTERS, ExitCode.OK)


@dataclass
class PipelineRun:
    """How one pipeline's sync ended: its summary (None when it failed before its run began), exit code and,
    for a failure, the error's message and what to do."""

    pipeline: Pipeline
    exit_code: int
    summary: RunSummary | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form `sync --all --json` prints, one per pipeline."""
        return {"account": self.pipeline.name, "exit_code": self.exit_code, "error": self.error,
                "summary": self.summary.as_dict() if self.summary is not None else None}


def worst_exit_code(codes: list[int]) -> int:
    """The exit code of several pipelines' runs: the worst of theirs (an unknown code ranks as a failure)."""
    if not codes:
        return int(ExitCode.OK)
    rank = {int(code): i for i, code in enumerate(_WORST_FIRST)}
    return min(codes, key=lambda code: rank.get(code, rank[int(ExitCode.FAILURE)]))


def run_sync_all(config_path: Path | None, environment: Environment, *, parallel: int, dry_run: bool,
                 max_events: int | None, since: str | None = None, metrics_file: Path | None = None,
                 on_done: Callable[[PipelineRun], None] | None = None) -> list[PipelineRun]:
    """Every pipeline's sync, at most `parallel` at once, in the config's order; `on_done` is called as each
    ends. `since` starts the pipelines that have no cursor yet (the others continue from theirs). Every
    pipeline's secrets are checked before any network call. `metrics_file` gets every pipeline's figures, each
    labelled with its account, once all have ended."""
    runtime = Runtime(config_path, environment)
    require_org_values(runtime.loaded.settings, str(runtime.loaded.path))
    since_ts = parse_since(since) if since else None
    check_run_metrics(metrics_file, dry_run=dry_run)
    figures: list[RunFigures] = []
    every = [runtime.for_pipeline(p) for p in pipelines(runtime.loaded.settings)]
    check_secrets(every)
    with stop_on_signals() as stop, ThreadPoolExecutor(max_workers=max(1, parallel),
                                                       thread_name_prefix="stripe-sf-pipeline") as pool:
        futures = [pool.submit(_one, rt, stop, dry_run=dry_run, max_events=max_events, since=since_ts,
                               figures=figures, on_done=on_done)
                   for rt in every]
        runs = [f.result() for f in futures]
    if metrics_file is not None:
        _write_all_metrics(metrics_file, runs, figures, runtime.environment.clock())
    return runs


def _write_all_metrics(path: Path, runs: list[PipelineRun], figures: list[RunFigures], now: float) -> None:
    """Every pipeline's figures in one file; a pipeline that failed before its run began has its exit code there
    too, so that an alert on `stripe_sf_last_run_exit_code` sees it."""
    recorded = {f.account for f in figures}
    missing = [RunFigures("sync", r.exit_code, now, {}, None, None, None, None, account=r.pipeline.name)
               for r in runs if r.pipeline.name not in recorded]
    try:
        write_metrics(path, sorted(figures + missing, key=lambda f: f.account))
    except OSError as exc:
        log.error("Could not write the metrics file %s: %s. Check its directory's space and permissions; the "
                  "next run writes it again.", path, exc.strerror or exc)


def _one(runtime: Runtime, stop: Stop, *, dry_run: bool, max_events: int | None, since: int | None,
         figures: list[RunFigures], on_done: Callable[[PipelineRun], None] | None) -> PipelineRun:
    """One pipeline's recorded sync, as `sync --account` runs it; its error is its result, not the command's."""
    pipeline = runtime.pipeline
    if stop.requested:  # a pipeline that had not started when the signal came does not start
        result = PipelineRun(pipeline, int(stop.exit_code or ExitCode.INTERRUPTED), error="not started: stopped")
    else:
        result = _run(runtime, pipeline, stop, dry_run=dry_run, max_events=max_events, since=since,
                      figures=figures)
    if on_done is not None:
        on_done(result)
    return result


def _run(runtime: Runtime, pipeline: Pipeline, stop: Stop, *, dry_run: bool, max_events: int | None,
         since: int | None, figures: list[RunFigures]) -> PipelineRun:
    summary = RunSummary("sync", dry_run=dry_run)
    try:
        source, sf_factory = clients(runtime)
        # list.append is atomic: the pipelines' threads add their figures to one list
        with recorded_run(runtime, summary, source, sf_factory, stop=stop,
                          figures=None if dry_run else figures) as run:
            first = since if run.state.cursor() is None else None  # --since starts only a new pipeline
            apply_sync(run, runtime, since=first, max_events=max_events, stop=stop)
    except StripeSfError as exc:
        log.error("%s: %s", pipeline.name, exc)
        return PipelineRun(pipeline, int(exc.exit_code), summary, str(exc))
    except Exception as exc:  # a bug in one pipeline must not take the others down with it
        log.exception("%s: internal error", pipeline.name)
        return PipelineRun(pipeline, int(ExitCode.FAILURE), None,
                           f"{type(exc).__name__}: {exc}. This is a bug in stripe-sf; rerun this account with "
                           f"`stripe-sf sync --account {pipeline.name} --debug` and report the output.")
    return PipelineRun(pipeline, int(exit_code_for(summary)), summary)
