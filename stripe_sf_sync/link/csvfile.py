"""The proposals file of `stripe-sf link`: written for a person to review and edit, read back by `--apply`.

Columns: customer_id, email, name, account_id, account_name, evidence, confidence, note. A customer with no
proposal has an empty account_id; a person may fill it in, change it or clear it. Reading back uses only
customer_id and account_id, checks every row, and reports every malformed row with its line number at once.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from stripe_sf_sync.link.evidence import Proposal
from stripe_sf_sync.salesforce_ids import checked_id

COLUMNS = ("customer_id", "email", "name", "account_id", "account_name", "evidence", "confidence", "note")
REQUIRED = ("customer_id", "account_id")
_CUSTOMER_ID = re.compile(r"^cus_[A-Za-z0-9]+$")
# A cell a spreadsheet would run as a formula (OWASP, "CSV Injection"): shown with a leading quote instead.
# Only display columns are guarded; the two columns read back are checked for shape instead.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class LinkFileError(ValueError):
    """A proposals file that cannot be applied: every problem, each with its line."""

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(f"{path}: {len(problems)} problem{'s' if len(problems) != 1 else ''}:\n  "
                         + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Link:
    """One reviewed link: this customer belongs to this Account (18-character Id)."""

    customer_id: str
    account_id: str
    line: int


def _shown(value: str | None) -> str:
    text = value or ""
    return "'" + text if text.startswith(_FORMULA_START) else text


def write_proposals(out: TextIO, proposals: Iterable[Proposal], *, header: bool = True) -> None:
    """Write the proposals as CSV rows, after the header row unless `header` is False (a later batch)."""
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    for p in proposals:
        note = p.detail if p.status == "matched" else f"{p.status}: {p.detail}"
        writer.writerow([p.customer.id, _shown(p.customer.email), _shown(p.customer.name), p.account_id or "",
                         _shown(p.account_name), p.evidence or "", p.confidence, _shown(note)])


def read_links(path: Path) -> list[Link]:
    """The links of a reviewed file (rows with an account_id); raises LinkFileError naming every bad row."""
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet may save a BOM
        return parse_links(f, str(path))


def parse_links(source: TextIO, name: str = "the file") -> list[Link]:
    """`read_links` over an open text stream."""
    reader = csv.reader(source)
    header = next(reader, None)
    if header is None:
        raise LinkFileError(name, ["line 1: the file is empty (expected a header row)"])
    columns = [h.strip().casefold() for h in header]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise LinkFileError(name, [f"line 1: no {', '.join(missing)} column in the header"])
    at = {c: columns.index(c) for c in REQUIRED}
    links: list[Link] = []
    problems: list[str] = []
    customers: dict[str, int] = {}
    accounts: dict[str, tuple[str, int]] = {}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        cells = {c: (row[i].strip() if i < len(row) else "") for c, i in at.items()}
        customer, raw_account = cells["customer_id"], cells["account_id"]
        if not _CUSTOMER_ID.match(customer):
            problems.append(f"line {line}: customer_id {customer!r} is not a Stripe customer id (cus_...)")
            continue
        if customer in customers:
            problems.append(f"line {line}: customer {customer} is already on line {customers[customer]}")
            continue
        customers[customer] = line
        if not raw_account:
            continue  # no proposal, or a person cleared it: nothing to link
        account = checked_id(raw_account, "Account")
        if account is None:
            problems.append(f"line {line}: account_id {raw_account!r} is not a Salesforce Account Id "
                            "(15 or 18 characters, starting 001)")
            continue
        if account in accounts:
            other, other_line = accounts[account]
            problems.append(f"line {line}: Account {account} is also given to {other} on line {other_line} "
                            "(an Account holds one customer id)")
            continue
        accounts[account] = (customer, line)
        links.append(Link(customer, account, line))
    if problems:
        raise LinkFileError(name, problems)
    return links
