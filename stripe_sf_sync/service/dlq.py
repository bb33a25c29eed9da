"""`stripe-sf dlq list`, `retry` and `drop`: the dead letters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stripe_sf_sync.config import require_org_values
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.pipeline import RunSummary
from stripe_sf_sync.pipeline.stop import stop_on_signals
from stripe_sf_sync.pipelines import chosen
from stripe_sf_sync.service.recorded import recorded_run
from stripe_sf_sync.service.runtime import Environment, Runtime, clients
from stripe_sf_sync.sources import DeadLetters
from stripe_sf_sync.state import DeadLetter, StateStore


def run_dlq_retry(config_path: Path | None, environment: Environment, *, event_ids: list[str],
                  retry_all: bool) -> RunSummary:
    """`stripe-sf dlq retry`: the chosen dead letters through the same pipeline."""
    runtime = Runtime(config_path, environment)
    require_org_values(runtime.loaded.settings, str(runtime.loaded.path))
    source, sf_factory = clients(runtime)
    summary = RunSummary("dlq retry")
    with stop_on_signals() as stop, recorded_run(runtime, summary, source, sf_factory, create=False,
                                                 stop=stop, beat=True) as run:
        letters = _chosen_dead_letters(run.state, event_ids, retry_all)
        run.apply(DeadLetters([_letter_event(dl) for dl in letters],
                              batch_size=runtime.loaded.settings.sync.batch_size))
    return summary


def _chosen_dead_letters(state: StateStore, event_ids: list[str], retry_all: bool) -> list[DeadLetter]:
    if retry_all:
        return state.dead_letters()
    letters = []
    for eid in event_ids:
        dl = state.dead_letter(eid)
        if dl is None or dl.status != "open":
            raise ConfigError([f"{eid} is not an open dead letter"], source="invocation",
                              hint="`stripe-sf dlq list` shows the open ones.")
        letters.append(dl)
    return letters


def _letter_event(dl: DeadLetter) -> dict[str, Any]:
    """The event a dead letter keeps (an unreadable payload is sent as a bare event, to fail again)."""
    try:
        event = json.loads(dl.payload)
    except json.JSONDecodeError:
        event = None
    return event if isinstance(event, dict) else {"id": dl.event_id, "type": dl.event_type, "created": dl.created}


def dlq_list(config_path: Path | None, environment: Environment) -> list[dict[str, Any]]:
    """Open dead letters, oldest first (payload excluded: it may hold customer data). A config that lists
    several accounts gets every account's (each row names its `account`), or --account's."""
    runtime = Runtime(config_path, environment)
    named = bool(runtime.loaded.settings.stripe.accounts)
    rows: list[dict[str, Any]] = []
    for pipeline in chosen(runtime.loaded.settings, environment.account):
        with runtime.for_pipeline(pipeline).open_state(create=False, read_only=True) as state:  # lists only
            rows.extend({**({"account": pipeline.name} if named else {}), "event_id": d.event_id,
                         "event_type": d.event_type, "created": d.created,
                         "reason": _with_account(d.reason, pipeline.name) if named else d.reason,
                         "error_code": d.error_code, "attempts": d.attempts, "last_failed_at": d.last_failed_at}
                        for d in state.dead_letters())
    return rows


def _with_account(reason: str, account: str) -> str:
    """A reason's suggested command (`stripe-sf dlq retry --all`) with `--account` (a global option, before the
    command's name): without it, the command is a usage error on a config with several accounts."""
    return reason.replace("`stripe-sf ", f"`stripe-sf --account {account} ")


def dlq_drop(config_path: Path | None, environment: Environment, event_id: str) -> None:
    """Stop retrying one dead letter (kept in state for audit)."""
    runtime = Runtime(config_path, environment)
    with runtime.open_state(create=False) as state:
        if not state.drop_dead_letter(event_id):
            raise ConfigError([f"{event_id} is not an open dead letter"], source="invocation",
                              hint="`stripe-sf dlq list` shows the open ones.")
