"""Is the sync healthy? What `status` reports and `status --check` exits on, read from the state file alone.

Unhealthy (`status --check` exits 8, ExitCode.UNHEALTHY):
- nothing has run yet, or no sync has set a cursor;
- the cursor is older than `--max-cursor-age` (default 15 minutes). Its age counts from the newer of its
  event's time and the start of the last sync that read Stripe's event list to its end, so an account with
  no new events stays healthy while sync runs;
- the last run ended abnormally (killed before it recorded an exit code), or exited with a failure code
  (anything but 0, 3 for dead letters, and 130/143 for an interrupted run, which the next run continues);
- more open dead letters than `--max-dead-letters`, when given;
- a backfill stopped before its end (a signal, the API budget, an error) and not running now: the history it was
  bringing is not all in Salesforce until `backfill ... --resume` finishes it.
A sync stopped before the end of Stripe's event list (a signal, the API budget, --max-events) does not count as
having read it: the cursor's age is then its own event's, which is how far behind Salesforce is.
Open dead letters (without `--max-dead-letters`), an interrupted last run and API usage at or over the budget
are warnings: reported, not unhealthy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.words import counted

DEFAULT_MAX_CURSOR_AGE = "15m"
DONE_EXITS = (0, 3, 9)  # finished its work (3: some events dead-lettered; 9: reconcile found drift)
INTERRUPTED_EXITS = (130, 143)  # Ctrl-C, SIGTERM (128 + the signal): stopped at a boundary, the next run continues
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str, option: str) -> int:
    """`90s`, `15m`, `2h`, `1d` or plain seconds -> seconds; a usage error otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", value)
    if not m:
        raise ConfigError([f"{option} {value!r} is not a duration (like 90s, 15m, 2h or 1d)"], source="invocation")
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]


def iso(ts: float | None) -> str | None:
    """Unix time -> `2026-11-29T10:00:00Z`."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ts is not None else None


def span(seconds: float) -> str:
    """A duration for people: `45 s`, `12 min`, `3.5 h`, `2.0 d`."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


@dataclass(frozen=True)
class Thresholds:
    """What `status --check` holds the state to."""

    max_cursor_age_s: int
    max_dead_letters: int | None = None


def run_view(row: dict[str, Any], *, newest: bool, lock_held: bool) -> dict[str, Any]:
    """A runs-table row with how it ended: `running` (no exit code recorded, the newest run, and a process
    holds the lock) or `abnormal` (no exit code otherwise: killed before it could record one). A row that
    already says (`state`: "running" or "ended abnormally") is taken at its word."""
    unfinished = row.get("exit_code") is None
    running = row["state"] == "running" if "state" in row else unfinished and newest and lock_held
    abnormal = row["state"] == "ended abnormally" if "state" in row else unfinished and not running
    return {**row, "running": running, "abnormal": abnormal, "started_iso": iso(row.get("started_at")),
            "finished_iso": iso(row.get("finished_at"))}


def last_run(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest run that is not running now, with its counts."""
    for r in runs:
        if not r["running"]:
            s: dict[str, Any] = r.get("summary") or {}
            return {"run_id": r["run_id"], "command": r["command"], "started_at": r["started_at"],
                    "started_iso": r["started_iso"], "finished_at": r.get("finished_at"),
                    "finished_iso": r["finished_iso"], "exit_code": r.get("exit_code"), "abnormal": r["abnormal"],
                    **{k: s.get(k) for k in ("events_read", "applied", "dead_lettered", "records_written",
                                             "duration_s", "stopped_early")}}
    return None


def assess(report: dict[str, Any], thresholds: Thresholds) -> dict[str, Any]:
    """The health verdict on a status report: problems make it unhealthy, warnings do not."""
    problems: list[str] = []
    warnings: list[str] = []
    if report["never_run"]:
        problems.append(f"never run: no run is recorded in {report['state_path']}; start with "
                        "`stripe-sf sync --since DATE`")
    else:
        cursor = report["cursor"]
        if cursor is None:
            problems.append("no cursor: no sync has recorded where it is yet; run `stripe-sf sync --since DATE`")
        elif cursor["current_age_s"] > thresholds.max_cursor_age_s:
            problems.append(f"the cursor is {span(cursor['current_age_s'])} old (current as of "
                            f"{cursor['current_iso']}), more than {span(thresholds.max_cursor_age_s)}: sync is "
                            "not keeping up, or not running; see the last runs and the cron log")
        last = report["last_run"]
        if last is not None:
            name = f"{last['command']} #{last['run_id']}, started {last['started_iso']}"
            if last["abnormal"]:
                problems.append(f"the last run ({name}) ended abnormally: it was killed before it recorded an exit "
                                "code (SIGKILL, out of memory, power loss); the next run repeats its last batch")
            elif last["exit_code"] in INTERRUPTED_EXITS:
                warnings.append(f"the last run ({name}) was interrupted (exit {last['exit_code']}) before the end of "
                                "its work; the next run continues where it stopped")
            elif last["exit_code"] not in DONE_EXITS:
                problems.append(f"the last run ({name}) failed with exit code {last['exit_code']}: its log says "
                                "why; docs/exit-codes.md says what to do")
    problems.extend(_backfill_problem(report))
    dead = report["dead_letters"]
    if thresholds.max_dead_letters is not None and dead > thresholds.max_dead_letters:
        problems.append(f"{counted(dead, 'open dead letter')}, more than {thresholds.max_dead_letters}: "
                        "`stripe-sf dlq list`, fix the cause, then `stripe-sf dlq retry --all`")
    elif dead:
        warnings.append(f"{counted(dead, 'open dead letter')}: `stripe-sf dlq list`")
    usage = report["api_usage"]
    if usage and usage.get("fraction") is not None and usage["fraction"] >= usage["budget"]:
        warnings.append(f"Salesforce API usage {usage['used']}/{usage['max']} was at or over the budget "
                        f"({usage['budget']:.0%}) when last seen")
    return {"healthy": not problems, "problems": problems, "warnings": warnings,
            "max_cursor_age_s": thresholds.max_cursor_age_s, "max_dead_letters": thresholds.max_dead_letters}


def _backfill_problem(report: dict[str, Any]) -> list[str]:
    """A backfill that stopped before its end and is not running now: its history is incomplete in Salesforce."""
    bf = report.get("backfill")
    running = report.get("running")
    if not bf or bf["finished"] or (running and running["command"] == "backfill"):
        return []
    pending = [kind for kind in bf["objects"] if not (bf.get("types") or {}).get(kind, {}).get("finished")]
    since = (iso(bf["since"]) or "")[:10]
    until = f" --until {(iso(bf['until']) or '')[:10]}" if bf.get("until") else ""
    command = f"stripe-sf backfill --since {since}{until} --objects {','.join(bf['objects'])} --resume"
    return [f"the backfill since {since} stopped before its end: {', '.join(pending) or 'its objects'} not all in "
            f"Salesforce yet; continue it with `{command}` (and your --config)"]
