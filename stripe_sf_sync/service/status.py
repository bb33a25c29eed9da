"""`stripe-sf status`: the cursor and its age, the last runs, dead letters, usage and the health verdict."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stripe_sf_sync.config import masked_url
from stripe_sf_sync.health import Thresholds, assess, iso, last_run, parse_duration, run_view
from stripe_sf_sync.identity import IDENTITY_KEY, loads
from stripe_sf_sync.pipelines import pipelines
from stripe_sf_sync.reads import reads_last_30_days
from stripe_sf_sync.service.runtime import (
    BACKFILL_CHECKPOINT_KEY,
    SALESFORCE_CONTACT_KEY,
    Environment,
    Runtime,
    existing_state,
)
from stripe_sf_sync.sources import READ_THROUGH_KEY


def _backfill_status(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Where the last backfill got to."""
    return {"finished": bool(checkpoint.get("finished")), "since": checkpoint["key"]["since"],
            "until": checkpoint["key"]["until"], "objects": checkpoint["key"]["objects"],
            "types": checkpoint.get("types", {})}


def status_report(config_path: Path | None, environment: Environment, *,
                  max_cursor_age: str = "15m", max_dead_letters: int | None = None) -> dict[str, Any]:
    """Cursor and its age, the last run's end, exit code and counts, open dead letters, last API usage, and the
    health verdict (see health.py). Nothing run yet is a report too ("never run"). Reads only (WAL: never blocks
    sync). A config with several accounts (pipelines.py) and no --account gets a report per account under
    `accounts`, and one verdict: unhealthy when any account is, each problem named by its account."""
    thresholds = Thresholds(parse_duration(max_cursor_age, "--max-cursor-age"), max_dead_letters)
    runtime = Runtime(config_path, environment)
    if environment.account or not runtime.loaded.settings.stripe.accounts:
        report = pipeline_report(runtime, thresholds)
        if runtime.loaded.settings.stripe.accounts:
            report["account"] = runtime.pipeline.name
        return report
    reports = []
    for pipeline in pipelines(runtime.loaded.settings):
        report = pipeline_report(runtime.for_pipeline(pipeline), thresholds)
        reports.append({"account": pipeline.name, **report})
    return {"state_path": reports[0]["state_path"], "state_backend": reports[0]["state_backend"],
            "accounts": reports, "health": combined_health(reports, thresholds)}


def combined_health(reports: list[dict[str, Any]], thresholds: Thresholds) -> dict[str, Any]:
    """One verdict over every account's: each problem and warning named by its account, with the commands in it
    given `--account` (a global option: it goes before the command's name)."""
    def named(account: str, lines: list[str]) -> list[str]:
        return [f"{account}: " + line.replace("`stripe-sf ", f"`stripe-sf --account {account} ") for line in lines]

    problems = [p for r in reports for p in named(r["account"], r["health"]["problems"])]
    warnings = [w for r in reports for w in named(r["account"], r["health"]["warnings"])]
    return {"healthy": not problems, "problems": problems, "warnings": warnings,
            "max_cursor_age_s": thresholds.max_cursor_age_s, "max_dead_letters": thresholds.max_dead_letters}


def pipeline_report(runtime: Runtime, thresholds: Thresholds) -> dict[str, Any]:
    """`status` of the runtime's pipeline."""
    environment = runtime.environment
    budget = runtime.loaded.settings.salesforce.api_budget
    now = environment.clock()
    report: dict[str, Any] = {"state_path": masked_url(runtime.state_url) if runtime.state_url else
                              str(runtime.loaded.state_path), "state_backend": "postgresql" if runtime.state_url
                              else "sqlite", "never_run": True, "cursor": None, "running": None, "last_run": None,
                              "dead_letters": 0, "api_usage": None, "backfill": None, "runs": [], "reconcile": None,
                              "identity": {"salesforce": None, "stripe": None}}
    with existing_state(runtime, read_only=True) as state:  # status needs no write access
        if state is not None:
            cursor = state.cursor()
            usage = state.get_meta("api_usage")
            backfill = state.get_meta(BACKFILL_CHECKPOINT_KEY)
            read_through = int(state.get_meta(READ_THROUGH_KEY) or 0)
            rows = state.recent_runs(5)
            held = bool(rows) and rows[0].get("finished_at") is None and state.lock_held()
            runs = [run_view(r, newest=i == 0, lock_held=held)
                    for i, r in enumerate(_with_run_states(rows, lock_held=held))]
            current = max(cursor.created, read_through) if cursor else None
            report.update({
                "never_run": not runs and cursor is None,
                "backfill": _backfill_status(json.loads(backfill)) if backfill else None,
                "cursor": {"event_id": cursor.event_id, "created": cursor.created,
                           "created_iso": datetime.fromtimestamp(cursor.created, tz=UTC).isoformat(),
                           "age_s": int(now - cursor.created), "current_at": current, "current_iso": iso(current),
                           "current_age_s": int(now - (current or cursor.created))} if cursor else None,
                "running": next(({"run_id": r["run_id"], "command": r["command"], "started_at": r["started_at"],
                                  "started_iso": r["started_iso"]} for r in runs if r["running"]), None),
                "last_run": last_run(runs),
                "dead_letters": state.dead_letter_count(),
                "api_usage": _usage(json.loads(usage), budget) if usage else None,
                "runs": runs,
                "reconcile": _reconcile_status(state.last_run_of("reconcile")),
                "stripe_reads_30d": reads_last_30_days(state, now),
                "salesforce_contact_iso": iso(int(contact)) if (contact := state.get_meta(SALESFORCE_CONTACT_KEY))
                else None,
                "identity": loads(state.get_meta(IDENTITY_KEY)).as_dict(),  # the org and account it is bound to
            })
    report["health"] = assess(report, thresholds)
    return report


def _reconcile_status(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """The last reconcile: when, its exit code, and its counts and MRR totals."""
    if row is None:
        return None
    found = (row.get("summary") or {}).get("reconcile") or {}
    keep = ("mismatches", "matched", "counts", "totals")
    return {"run_id": row["run_id"], "finished_at": row.get("finished_at"), "finished_iso": iso(row.get("finished_at")),
            "exit_code": row.get("exit_code"), **{k: found.get(k) for k in keep}}


def _usage(seen: dict[str, Any], budget: float) -> dict[str, Any]:
    """The org's daily API usage as last seen, with its share and the configured budget."""
    used, total = seen.get("used"), seen.get("max")
    fraction = used / total if isinstance(used, int) and isinstance(total, int) and total else None
    return {**seen, "fraction": fraction, "budget": budget}


def _with_run_states(runs: list[dict[str, Any]], *, lock_held: bool) -> list[dict[str, Any]]:
    """Each run (newest first) with its state: "finished" (its exit code is recorded), "running" (the newest
    run, while a process holds the lock), or "ended abnormally" (killed, or the machine stopped, before it
    could record an exit code: its process, and so its lock, is gone)."""
    for i, run in enumerate(runs):
        if run.get("exit_code") is not None:
            run["state"] = "finished"
        else:
            run["state"] = "running" if lock_held and i == 0 else "ended abnormally"
    return runs
