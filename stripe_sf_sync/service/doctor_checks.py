"""`doctor`'s report: a line per check (ok, warning or error, each problem with its fix and the exit code a run
would meet), and what doctor read of one pipeline's state."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.identity import Binding

Status = Literal["ok", "warning", "error"]
Area = Literal["salesforce", "stripe", "local"]
AREAS: tuple[Area, ...] = ("salesforce", "stripe", "local")


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    area: Area
    name: str  # what was checked: "login", "Account.Subscription_Status__c", "won stage"
    status: Status
    message: str
    fix: str = ""
    subject: str | None = None  # the field, picklist, stage, record type or file at fault
    exit_code: int = int(ExitCode.OK)  # what an error makes doctor exit with (the code a run would meet)
    account: str | None = None  # the pipeline checked, in a config that lists its accounts (stripe.accounts)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form; `account` only when there is one (a config without accounts prints as before)."""
        return {k: v for k, v in asdict(self).items() if k != "account" or v is not None}


@dataclass
class DoctorReport:
    """Every check, in the order printed."""

    checks: list[Check] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many checks ended ok, with a warning, with an error."""
        return {s: sum(1 for c in self.checks if c.status == s) for s in ("ok", "warning", "error")}

    @property
    def exit_code(self) -> int:
        """0 without errors (warnings alone included); else the code of the first error listed."""
        return next((c.exit_code for c in self.checks if c.status == "error"), int(ExitCode.OK))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"healthy": self.exit_code == ExitCode.OK, "exit_code": self.exit_code, "counts": self.counts(),
                "checks": [c.as_dict() for c in self.checks]}


@dataclass(frozen=True)
class PipelineState:
    """What doctor read of one pipeline's state: the org and account it is bound to, its cursor (or backfill's
    hand-off), its open dead letters (None: no state to read them from) and whether a run holds its lock."""

    binding: Binding = field(default_factory=Binding)
    cursor: tuple[str, int] | None = None
    dead_letters: int | None = None
    running: bool = False


def sentence(hint: str) -> str:
    """A hint as a fix: without its final full stop (the line adds one)."""
    hint = hint.strip()
    return hint[:1].lower() + hint[1:].rstrip(".") if hint else ""
