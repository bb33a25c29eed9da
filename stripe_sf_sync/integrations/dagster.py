"""Dagster definitions for stripe-sf (`pip install 'stripe-sf-sync[dagster]'`, docs/dagster.md).

One asset, `stripe_sf_sync`, partitioned by pipeline (pipelines.py: an account id each, or `default`): a
partition's materialization is `stripe-sf sync --account NAME`, its figures the metadata. Reconcile is the
asset's check, run for the partition of each run. A schedule asks for every partition on a cron expression.
A user's code location is one line: `defs = stripe_sf_sync.integrations.dagster.definitions("sync.yaml")`.

Secrets come from the environment, as for the CLI (docs/configure.md); Dagster's config holds the config path
(the `stripe_sf` resource) and each run's options.
"""

# No `from __future__ import annotations`: Dagster reads the asset's parameter types (config, resource) at
# definition time, and a string is not a type to it.
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from stripe_sf_sync import service
from stripe_sf_sync.config import load_config
from stripe_sf_sync.errors import ExitCode, StripeSfError
from stripe_sf_sync.pipeline import RunSummary
from stripe_sf_sync.pipelines import DEFAULT_PIPELINE, pipelines
from stripe_sf_sync.words import counted

ASSET = "stripe_sf_sync"
JOB = "stripe_sf_sync_job"
SCHEDULE = "stripe_sf_sync_schedule"
EVERY_5_MINUTES = "*/5 * * * *"
RECONCILE_OBJECTS = "subscriptions,payment_intents,accounts"
# A run with dead letters finished: it moved the cursor, and the dead letters wait in `dlq list` (exit 3).
SUCCEEDING = frozenset({ExitCode.OK, ExitCode.DEAD_LETTERS})


class StripeSf(dg.ConfigurableResource):
    """Where the config is: the same sync.yaml the CLI reads (relative paths in it are next to it)."""

    config_path: str

    def environment(self, pipeline: str) -> service.Environment:
        """The service's view of the outside for one pipeline: the process's variables, read now."""
        return service.Environment(account=pipeline)


class SyncConfig(dg.Config):
    """A materialization's options, as `sync`'s: where a first run starts, and a cap on events."""

    since: str | None = None  # DATE or DATETIME (UTC); needed on a pipeline's first run, as for the CLI
    max_events: int | None = None


class ReconcileConfig(dg.Config):
    """The check's options, as `reconcile`'s."""

    since: str | None = None
    objects: str = RECONCILE_OBJECTS


def partitions(config_path: str | Path) -> dg.StaticPartitionsDefinition:
    """A partition per pipeline of the config, in its order."""
    return dg.StaticPartitionsDefinition([p.name for p in pipelines(load_config(Path(config_path)).settings)])


def sync_metadata(summary: RunSummary) -> dict[str, Any]:
    """The run's figures as Dagster metadata."""
    return {"events_read": summary.events_read, "applied": summary.applied, "dead_letters": summary.dead_lettered,
            "skipped_stale": summary.skipped_stale, "ignored": summary.ignored,
            "records_written": summary.records_written, "stripe_calls": summary.stripe_calls,
            "salesforce_calls": summary.salesforce_calls, "cursor": summary.cursor or "",
            "duration_s": round(summary.duration_s, 3)}


def command(pipeline: str, what: str) -> str:
    """The CLI command that shows more, for one pipeline (a config without accounts needs no --account)."""
    return f"stripe-sf {what}" if pipeline == DEFAULT_PIPELINE else f"stripe-sf {what} --account {pipeline}"


def failure(message: str, code: ExitCode, pipeline: str, metadata: dict[str, Any] | None = None) -> dg.Failure:
    """What a failed run shows in Dagster: the error and what to do (the CLI's paragraph), and the exit code."""
    return dg.Failure(description=f"pipeline {pipeline}: {message}",
                      metadata={"exit_code": int(code), "exit": code.name, "pipeline": pipeline,
                                **(metadata or {})}, allow_retries=False)


def run_sync(stripe_sf: StripeSf, pipeline: str, config: SyncConfig) -> dg.MaterializeResult:
    """`sync` for one pipeline: exit 0 or 3 materializes (the dead letters counted); anything else is a Failure."""
    try:
        summary = service.run_sync(Path(stripe_sf.config_path), stripe_sf.environment(pipeline), since=config.since,
                                   dry_run=False, max_events=config.max_events)
    except StripeSfError as exc:
        raise failure(str(exc), exc.exit_code, pipeline) from None
    code = service.exit_code_for(summary)
    metadata = sync_metadata(summary)
    if code not in SUCCEEDING:
        what = summary.stopped_early or ("stopped by " + summary.stopped_by if summary.stopped_by else "interrupted")
        raise failure(f"the sync stopped before the end ({what}); the state is consistent and the next run "
                      "continues from the last committed batch (docs/exit-codes.md).", code, pipeline, metadata)
    description = (f"{counted(summary.dead_lettered, 'event')} dead-lettered: see `{command(pipeline, 'dlq list')}`"
                   if code == ExitCode.DEAD_LETTERS else None)
    return dg.MaterializeResult(metadata={**metadata, "exit_code": int(code), "note": description or "ok"})


def run_reconcile(stripe_sf: StripeSf, pipeline: str, config: ReconcileConfig) -> dg.AssetCheckResult:
    """`reconcile` for one pipeline: passes when Salesforce agrees with Stripe; drift fails the check (a warning:
    the data is as the sync left it); an error that kept it from comparing fails it as an error."""
    try:
        summary, _report = service.run_reconcile(Path(stripe_sf.config_path), stripe_sf.environment(pipeline),
                                                 since=config.since, objects=config.objects, fix=False,
                                                 dry_run=False)
    except StripeSfError as exc:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                   description=f"pipeline {pipeline}: {exc}",
                                   metadata={"exit_code": int(exc.exit_code), "pipeline": pipeline})
    figures = summary.reconcile or {}
    mismatches = int(figures.get("mismatches") or 0)
    return dg.AssetCheckResult(
        passed=mismatches == 0, severity=dg.AssetCheckSeverity.WARN,
        description=(f"{counted(mismatches, 'finding')} where Salesforce disagrees with Stripe: see "
                     f"`{command(pipeline, 'reconcile')}` (docs/reconcile.md)" if mismatches else "Salesforce agrees"),
        metadata={"pipeline": pipeline, "checked": sum((figures.get("checked") or {}).values()),
                  "matched": int(figures.get("matched") or 0), "mismatches": mismatches,
                  "checked_per_object": dg.MetadataValue.json(figures.get("checked") or {}),
                  "findings_per_kind": dg.MetadataValue.json(figures.get("counts") or {})})


def every_pipeline(results: Iterable[dg.AssetCheckResult]) -> dg.AssetCheckResult:
    """One result for a check run outside a partition: the worst of each pipeline's, each one's description."""
    done = list(results)
    failed = [r for r in done if not r.passed]
    error = any(r.severity == dg.AssetCheckSeverity.ERROR for r in failed)
    return dg.AssetCheckResult(
        passed=not failed, severity=dg.AssetCheckSeverity.ERROR if error else dg.AssetCheckSeverity.WARN,
        description="; ".join(r.description or "" for r in (failed or done)),
        metadata={"pipelines": len(done), "failed": len(failed),
                  "mismatches": sum(_mismatches(r) for r in done)})


def _mismatches(result: dg.AssetCheckResult) -> int:
    """A pipeline's drift count from its result's metadata (0 when reconcile could not compare)."""
    value = result.metadata.get("mismatches")
    figure = getattr(value, "value", value)  # a MetadataValue, or the plain int as given
    return figure if isinstance(figure, int) else 0


def build(partitions_def: dg.StaticPartitionsDefinition) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    """The asset and its reconcile check. The check is not partitioned itself (Dagster 1.13 has partitioned
    checks in preview only, "may have breaking changes in patch version releases"): in a run of one partition
    it reconciles that pipeline, and Dagster records it against that partition's materialization
    (dagster/_core/definitions/asset_checks/asset_check_result.py scopes the target to the step's partition);
    run on its own, it reconciles every pipeline, and fails if any drifted."""

    @dg.asset(name=ASSET, partitions_def=partitions_def, group_name="stripe_sf",
              description="Stripe into Salesforce, one partition per pipeline (a Stripe account): `stripe-sf sync`.")
    def stripe_sf_sync(context: dg.AssetExecutionContext, config: SyncConfig,
                       stripe_sf: StripeSf) -> dg.MaterializeResult:
        return run_sync(stripe_sf, context.partition_key, config)

    @dg.asset_check(asset=stripe_sf_sync, name="reconcile",
                    description="`stripe-sf reconcile`: Salesforce agrees with Stripe, object by object.")
    def reconcile(context: dg.AssetCheckExecutionContext, config: ReconcileConfig,
                  stripe_sf: StripeSf) -> dg.AssetCheckResult:
        if context.has_partition_key:
            return run_reconcile(stripe_sf, context.partition_key, config)
        return every_pipeline(run_reconcile(stripe_sf, key, config) for key in partitions_def.get_partition_keys())

    return stripe_sf_sync, reconcile


def schedule_for(job: Any, partitions_def: dg.StaticPartitionsDefinition,
                 cron_schedule: str, default_status: dg.DefaultScheduleStatus) -> dg.ScheduleDefinition:
    """A run per pipeline on each tick (each its own run: one pipeline's failure never stops another)."""

    @dg.schedule(name=SCHEDULE, job=job, cron_schedule=cron_schedule, default_status=default_status,
                 description="Every pipeline's sync, a run each.")
    def every_pipeline(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
        tick = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else "now"
        for key in partitions_def.get_partition_keys():
            yield dg.RunRequest(run_key=f"{key}:{tick}", partition_key=key)

    return every_pipeline


def definitions(config_path: str | Path, *, cron_schedule: str = EVERY_5_MINUTES,
                default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED) -> dg.Definitions:
    """Everything a code location needs: the asset, its check, a job of both and the schedule over every
    pipeline; the `stripe_sf` resource points at `config_path` (read now, for the pipelines' names)."""
    partitions_def = partitions(config_path)
    asset, check = build(partitions_def)
    # The selection brings the asset's check along: each partition's run syncs, then reconciles that pipeline.
    job = dg.define_asset_job(JOB, selection=dg.AssetSelection.assets(asset))
    return dg.Definitions(assets=[asset], asset_checks=[check], jobs=[job],
                          schedules=[schedule_for(job, partitions_def, cron_schedule, default_status)],
                          resources={"stripe_sf": StripeSf(config_path=str(config_path))})
