"""What a reconcile found: the kinds of finding, the findings, the report and its CSV."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Kind:
    """A kind of finding: whether it is a mismatch (exit 9) and whether `--fix` repairs it."""

    mismatch: bool
    fixable: bool
    means: str


KINDS: dict[str, Kind] = {
    "missing_opportunity": Kind(True, True, "live subscription with no won Opportunity"),
    "value_mismatch": Kind(True, True, "won Opportunity whose Amount, MRR or ARR differs from Stripe"),
    "status_mismatch": Kind(True, True, "Account status differs from its customer's deciding subscription"),
    "missing_payment_opportunity": Kind(True, True, "succeeded one-time payment with no won Opportunity"),
    "unknown_stripe_id": Kind(True, False, "Salesforce record naming a Stripe id Stripe does not know"),
    "account_mrr_mismatch": Kind(True, False, "Account MRR field differs from its customer's MRR in Stripe"),
    "salesforce_owned": Kind(False, False, "a field the mapping gives Salesforce (write: once, if_empty, never) "
                             "differs from Stripe (information, never repaired)"),
    "won_but_canceled": Kind(False, False, "won Opportunity whose subscription is canceled (information)"),
    "unverifiable": Kind(False, False, "Stripe object the rules cannot compute (information)"),
}


@dataclass(frozen=True)
class Finding:
    """One disagreement (or information), the Stripe and Salesforce values side by side."""

    kind: str
    stripe_id: str | None
    salesforce_id: str | None
    currency: str | None
    values: tuple[tuple[str, str | None, str | None], ...]  # (field, Stripe's value, Salesforce's value)
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"kind": self.kind, "mismatch": KINDS[self.kind].mismatch, "fixable": KINDS[self.kind].fixable,
                "stripe_id": self.stripe_id, "salesforce_id": self.salesforce_id, "currency": self.currency,
                "values": [{"field": f, "stripe": s, "salesforce": v} for f, s, v in self.values],
                "detail": self.detail}


@dataclass
class Report:
    """What a reconcile found: findings, objects checked and matched, MRR per currency."""

    findings: list[Finding] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    matched: int = 0
    totals: dict[str, dict[str, str]] = field(default_factory=dict)
    # Won Opportunities with an MRR whose subscription Stripe's lists did not show: not in `totals` (no currency
    # and nothing in Stripe to compare them with), counted here so that the report says so.
    totals_left_out: int = 0
    skipped_checks: list[str] = field(default_factory=list)
    fix: dict[str, Any] | None = None

    def counts(self) -> dict[str, int]:
        """Findings per kind (every kind, zeros included: a stable schema)."""
        out = dict.fromkeys(KINDS, 0)
        for f in self.findings:
            out[f.kind] += 1
        return out

    @property
    def mismatches(self) -> int:
        """Findings that are drift (information excluded)."""
        return sum(1 for f in self.findings if KINDS[f.kind].mismatch)

    def summary(self) -> dict[str, Any]:
        """Counts and totals: what the runs table keeps (details excluded: they hold customer data)."""
        return {"checked": self.checked, "matched": self.matched, "mismatches": self.mismatches,
                "counts": self.counts(), "totals": self.totals,
                "totals_left_out": self.totals_left_out, "skipped_checks": self.skipped_checks,
                "fix": self.fix}

    def as_dict(self) -> dict[str, Any]:
        """The `--json` document."""
        kinds = {name: {"mismatch": k.mismatch, "fixable": k.fixable, "means": k.means} for name, k in KINDS.items()}
        return {**self.summary(), "kinds": kinds, "details": [f.as_dict() for f in self.findings]}


CSV_COLUMNS = ("kind", "mismatch", "fixable", "stripe_id", "salesforce_id", "currency", "field", "stripe_value",
               "salesforce_value", "detail")


def write_csv(path: Path, report: Report) -> None:
    """One row per finding and field, the Stripe and Salesforce values side by side (a finding with no
    values, an unknown id, is one row). Written through a temporary file next to `path`, then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(CSV_COLUMNS)
        for f in report.findings:
            k = KINDS[f.kind]
            head = (f.kind, str(k.mismatch).lower(), str(k.fixable).lower(), f.stripe_id or "", f.salesforce_id or "",
                    (f.currency or "").upper())
            for name, stripe, salesforce in f.values or (("", None, None),):
                out.writerow((*head, name, stripe or "", salesforce or "", f.detail))
    os.replace(tmp, path)
