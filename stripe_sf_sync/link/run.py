"""The entry points of `stripe-sf link`, for a thin CLI: propose (read, match, write the CSV) and apply.

Each returns a result with `lines()` (80 columns, for people) and `as_dict()` (for `--json`). Clients are
injected: a `stripe.StripeClient`, the Salesforce gateway and writer, the state (read-only).
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from stripe_sf_sync.link.apply import (
    RETRY_COMMAND,
    AccountWriter,
    ApplyOutcome,
    DeadLetterReads,
    Pace,
    apply_links,
)
from stripe_sf_sync.link.csvfile import read_links, write_proposals
from stripe_sf_sync.link.evidence import propose_all
from stripe_sf_sync.link.read import CUSTOMER_BATCH, Queries, ReadCounts, unlinked_batches

WIDTH = 80


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False) or [""]


def _n(value: int, word: str) -> str:
    return f"{value:,} {word}{'' if value == 1 else 's'}"


@dataclass
class ProposeResult:
    """What `link` found: counts by outcome, where the proposals went, and the calls it made."""

    read: ReadCounts
    outcomes: Counter[str] = field(default_factory=Counter)
    csv_path: str | None = None
    salesforce_calls: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data."""
        return {"customers": self.read.customers, "linked_in_metadata": self.read.linked_in_metadata,
                "linked_in_salesforce": self.read.linked_in_salesforce, "unlinked": self.read.unlinked,
                "no_email_or_name": self.read.no_email_or_name,
                **{k: self.outcomes.get(k, 0) for k in ("matched", "ambiguous", "taken", "none")},
                "csv": self.csv_path, "salesforce_calls": self.salesforce_calls,
                "stripe_calls": self.read.stripe_pages}

    def lines(self) -> list[str]:
        """The summary for people, at most 80 columns a line."""
        r, o = self.read, self.outcomes
        out = _wrap(f"Customers: {r.customers:,} read, {r.linked_in_metadata:,} linked in Stripe metadata, "
                    f"{r.linked_in_salesforce:,} linked in Salesforce, {r.unlinked:,} unlinked.")
        out += _wrap(f"Unlinked: {o['matched']:,} matched, {o['ambiguous']:,} ambiguous, {o['taken']:,} on an "
                     f"Account linked to another customer, {o['none']:,} with no match.")
        if self.csv_path:
            out += _wrap(f"Proposals: {self.csv_path}. Review it (clear or fill in account_id), then run "
                         f"`stripe-sf link --apply {self.csv_path}`.")
        out += [f"Calls: {_n(self.read.stripe_pages, 'Stripe page')}, {_n(self.salesforce_calls, 'Salesforce call')}."]
        return out


@dataclass
class ApplyResult:
    """What `link --apply` did, for people and for `--json`."""

    outcome: ApplyOutcome
    to_stripe: bool = False
    salesforce_calls: int = 0

    @property
    def retry_command(self) -> str | None:
        """The command that retries the dead letters these links unblock, if any wait."""
        return RETRY_COMMAND if self.outcome.waiting_letters else None

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data."""
        o = self.outcome
        return {"linked": len(o.linked), "already_linked": len(o.already),
                "refused": [{"line": r.line, "customer_id": r.customer_id, "account_id": r.account_id,
                             "reason": r.reason} for r in o.refused],
                "stripe_metadata_written": o.stripe_written if self.to_stripe else None,
                "stripe_refused": [{"line": r.line, "customer_id": r.customer_id, "reason": r.reason}
                                   for r in o.stripe_refused],
                "stripe_stopped": o.stripe_stopped, "dead_letters_waiting": o.waiting_letters,
                "retry_command": self.retry_command, "salesforce_calls": self.salesforce_calls}

    def lines(self) -> list[str]:
        """The result for people, at most 80 columns a line."""
        o = self.outcome
        out = _wrap(f"Linked {_n(len(o.linked), 'Account')} ({len(o.already):,} already linked so); "
                    f"{len(o.refused):,} refused.")
        for r in o.refused:
            out += _wrap(f"  line {r.line}: {r.reason}")
        if self.to_stripe:
            out += _wrap(f"Stripe: salesforce_account_id written on {_n(o.stripe_written, 'customer')}.")
            for r in o.stripe_refused:
                out += _wrap(f"  line {r.line}: {r.reason}")
            if o.stripe_stopped:
                out += _wrap(o.stripe_stopped)
        if o.waiting_letters:
            out += _wrap(f"{_n(o.waiting_letters, 'dead letter')} waited for these Accounts: run "
                         f"`{RETRY_COMMAND}`.")
        out += [f"Salesforce: {_n(self.salesforce_calls, 'API call')}."]
        return out

    @property
    def ok(self) -> bool:
        """Nothing refused and no Stripe write stopped."""
        return not (self.outcome.refused or self.outcome.stripe_refused or self.outcome.stripe_stopped)


def _calls(gw: Any) -> int:
    usage = getattr(gw, "usage", None)
    return int(getattr(usage, "calls", 0))


def run_link(*, customer_pages: Iterable[list[dict[str, Any]]], gw: Queries, customer_field: str,
             out: TextIO | None = None, csv_path: str | None = None, batch_size: int = CUSTOMER_BATCH) -> ProposeResult:
    """Propose a match for every unlinked customer of `customer_pages` (StripeSource.customer_pages, or
    read.client_pages over a StripeClient); write the proposals to `out` as CSV (if given)."""
    before = _calls(gw)
    result = ProposeResult(ReadCounts(), csv_path=csv_path if out is not None else None)
    batches = unlinked_batches(customer_pages, gw, customer_field=customer_field, counts=result.read,
                               batch_size=batch_size)
    first = True
    for batch in batches:
        proposals = propose_all(batch.customers, batch.candidates)
        result.outcomes.update(p.status for p in proposals)
        if out is not None:
            write_proposals(out, proposals, header=first)
            first = False
    if out is not None and first:
        write_proposals(out, [], header=True)
    result.salesforce_calls = _calls(gw) - before
    return result


def run_link_apply(path: Path, *, gw: Queries, writer: AccountWriter, customer_field: str,
                   stripe_client: Any = None, stripe_pace: Pace | None = None,
                   state: DeadLetterReads | None = None) -> ApplyResult:
    """Apply a reviewed proposals file (raises csvfile.LinkFileError naming every malformed row first).
    `stripe_client` (with `stripe_pace`, e.g. a stripe.source.Pacer) also writes the Stripe metadata."""
    links = read_links(path)
    before = _calls(gw)
    outcome = apply_links(links, gw=gw, writer=writer, customer_field=customer_field,
                          stripe_client=stripe_client, stripe_pace=stripe_pace, state=state)
    return ApplyResult(outcome, to_stripe=stripe_client is not None, salesforce_calls=_calls(gw) - before)
