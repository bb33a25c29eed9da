"""The dry run's writer: a RecordWriter (pipeline/ports.py) that records each planned write and sends nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stripe_sf_sync.records import SfOp, WriteResult, describe_op


class PlanRecorder:
    """The dry run's writer: records each write it is given and sends nothing."""

    sends = False

    def __init__(self) -> None:
        self.planned: list[dict[str, Any]] = []

    def write(self, ops: Sequence[SfOp]) -> list[WriteResult]:
        """Record the plan; every write 'succeeds', so the plan goes on as if it had been sent."""
        self.planned.extend(describe_op(op) for op in ops)
        return [WriteResult(True) for _ in ops]
