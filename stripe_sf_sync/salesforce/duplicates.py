"""What a save refused by the org's duplicate rules says (DUPLICATES_DETECTED): the rule and the records it
matched, from the error's DuplicateResult (Object Reference: DuplicateError, DuplicateResult, MatchResult,
MatchRecord). stripe-sf never asks to bypass a rule: the refusal is a dead letter naming the candidates, for a
person to link the customer to one of them (`stripe-sf link`) or to change the rule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DUPLICATES_DETECTED = "DUPLICATES_DETECTED"
MAX_NAMED = 5  # candidates named in a message; the rest counted


def candidates(error: Mapping[str, Any]) -> list[str]:
    """The Ids of the records the duplicate rule matched, in Salesforce's order."""
    result = error.get("duplicateResult")
    if not isinstance(result, Mapping):
        return []
    out: list[str] = []
    for match in result.get("matchResults") or []:
        for found in (match.get("matchRecords") or []) if isinstance(match, Mapping) else []:
            record = found.get("record") if isinstance(found, Mapping) else None
            if isinstance(record, Mapping) and isinstance(record.get("Id"), str) and record["Id"] not in out:
                out.append(record["Id"])
    return out


def duplicate_message(error: Mapping[str, Any]) -> str:
    """The error's message, with the rule and the candidates it names (for the dead letter)."""
    message = str(error.get("message", ""))[:300]
    ids = candidates(error)
    result = error.get("duplicateResult")
    rule = result.get("duplicateRule") if isinstance(result, Mapping) else None
    if not ids:
        return message
    shown = ", ".join(ids[:MAX_NAMED]) + (f" and {len(ids) - MAX_NAMED} more" if len(ids) > MAX_NAMED else "")
    return (f"{message} (duplicate rule {rule or 'of the org'} matched {shown}: link the customer to one of them "
            "with `stripe-sf link`, then `stripe-sf dlq retry --all`)")
