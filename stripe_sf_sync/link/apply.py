"""`stripe-sf link --apply`: write the reviewed links.

1. Check every link against the org in batched SOQL: the Account exists (a merged-away one names its
   survivor through `MasterRecordId`, read with `queryAll`), holds no other customer's id, and the customer's
   id is on no other Account. A refusal names the Account and the customer in the way.
2. Write `Stripe_Customer_ID__c` on the Accounts through the Collections writer: 200 Accounts a call.
3. With `to_stripe`, write `salesforce_account_id` into each customer's metadata through the Stripe SDK
   (`POST /v1/customers/{id}`). A restricted key needs the Customers resource at Write
   (`rak_customer_write`); Stripe refuses it otherwise with a 403, and the Stripe writes stop there.
4. Count the open `NO_ACCOUNT` dead letters of the linked customers (read-only), and the command that
   retries them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import stripe

from stripe_sf_sync.link.csvfile import Link
from stripe_sf_sync.link.read import METADATA_KEY, Queries, field_name, in_statements
from stripe_sf_sync.records import SfOp, WriteResult
from stripe_sf_sync.salesforce_ids import to_18
from stripe_sf_sync.state.records import DeadLetter

STRIPE_PERMISSION = "Customers: Write (rak_customer_write)"
RETRY_COMMAND = "stripe-sf dlq retry --all"
NO_ACCOUNT = "NO_ACCOUNT"
RATE_LIMIT_TRIES = 4


class AccountWriter(Protocol):
    """A RecordWriter (stripe_sf_sync.salesforce.writers.CollectionsWriter)."""

    def write(self, ops: Sequence[SfOp]) -> list[WriteResult]:
        """One result per op, in order."""


class DeadLetterReads(Protocol):
    """The one state read `link` makes."""

    def dead_letters(self, *, status: str = "open", limit: int | None = None) -> list[DeadLetter]:
        """Dead letters with this status."""


@dataclass(frozen=True)
class Refusal:
    """A link not written, and why."""

    customer_id: str
    account_id: str
    line: int
    reason: str


@dataclass
class ApplyOutcome:
    """What `--apply` did."""

    linked: list[Link] = field(default_factory=list)
    already: list[Link] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    stripe_written: int = 0
    stripe_refused: list[Refusal] = field(default_factory=list)
    stripe_stopped: str | None = None
    waiting_letters: int = 0


def check_links(links: Sequence[Link], gw: Queries, customer_field: str) -> tuple[list[Link], list[Link],
                                                                                   list[Refusal]]:
    """(to write, already linked so, refused), from three batched reads of the org."""
    customer_field = field_name(customer_field)
    accounts = sorted({link.account_id for link in links})
    # The field name is checked above; values are escaped by format_soql inside in_statements.
    by_id = in_statements(f"SELECT Id, Name, {customer_field} FROM Account", "Id", accounts)  # noqa: S608
    holders = in_statements(f"SELECT Id, {customer_field} FROM Account", customer_field,  # noqa: S608
                            [link.customer_id for link in links])
    merged = [s + " AND IsDeleted = true" for s in in_statements("SELECT Id, MasterRecordId FROM Account", "Id",
                                                                 accounts)]
    statements = [*by_id, *holders, *merged]
    results = gw.query_many(statements, archived=range(len(by_id) + len(holders), len(statements)))
    rows = [r for rs in results[:len(by_id)] for r in rs]
    live = {to_18(str(r["Id"])): r for r in rows}
    holder_of = {str(r[customer_field]): to_18(str(r["Id"]))
                 for rs in results[len(by_id):len(by_id) + len(holders)] for r in rs}
    survivor = {to_18(str(r["Id"])): r.get("MasterRecordId") for rs in results[len(by_id) + len(holders):] for r in rs}
    write: list[Link] = []
    already: list[Link] = []
    refused: list[Refusal] = []
    for link in links:
        reason = _refusal(link, live.get(link.account_id), holder_of.get(link.customer_id),
                          survivor.get(link.account_id), customer_field)
        if reason == "":
            already.append(link)
        elif reason:
            refused.append(Refusal(link.customer_id, link.account_id, link.line, reason))
        else:
            write.append(link)
    return write, already, refused


def _refusal(link: Link, account: dict[str, Any] | None, holder: str | None, survivor: str | None,
             customer_field: str) -> str | None:
    """Why a link is refused; "" when it already holds; None when it can be written."""
    if account is None:
        if survivor:
            return f"Account {link.account_id} was merged into {to_18(survivor)}: put that Id in the file"
        return f"Account {link.account_id} does not exist (or the integration user cannot see it)"
    current = account.get(customer_field)
    if current == link.customer_id:
        return ""
    if current:
        return f"Account {link.account_id} ({account.get('Name')}) is already linked to {current}"
    if holder and holder != link.account_id:
        return f"{link.customer_id} is already linked to Account {holder}"
    return None


def write_salesforce(links: Sequence[Link], writer: AccountWriter, customer_field: str) -> tuple[list[Link],
                                                                                                   list[Refusal]]:
    """Write the customer ids on the Accounts (the writer sends 200 a call); (written, refused)."""
    ops = [SfOp("update", "Account", link.account_id, {customer_field: link.customer_id}, label=link.customer_id)
           for link in links]
    written: list[Link] = []
    refused: list[Refusal] = []
    for link, result in zip(links, writer.write(ops), strict=True):
        if result.success:
            written.append(link)
        else:
            refused.append(Refusal(link.customer_id, link.account_id, link.line,
                                   f"Salesforce refused it: {result.code} {result.message or ''}".strip()))
    return written, refused


class Pace(Protocol):
    """A pace for Stripe writes (stripe_sf_sync.stripe.source.Pacer: Stripe limits each endpoint, such as
    `POST /v1/customers/{id}`, to 25 requests a second by default; docs.stripe.com/rate-limits)."""

    def wait(self) -> None:
        """Sleep until one more request fits."""

    def throttled(self, reason: str = "rate") -> None:
        """Stripe answered 429: slow down."""

    def succeeded(self) -> None:
        """A request went through."""


class _Unpaced:
    def wait(self) -> None:
        return None

    def throttled(self, reason: str = "rate") -> None:
        return None

    def succeeded(self) -> None:
        return None


def write_stripe(links: Sequence[Link], client: Any, outcome: ApplyOutcome, *, pace: Pace | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
    """Write `salesforce_account_id` into each customer's metadata (`client`: a stripe.StripeClient), one
    `POST /v1/customers/{id}` each (Stripe has no batch update), at `pace`. A 429 slows the pace and is tried
    again (RATE_LIMIT_TRIES in all); a key refused (401/403) stops the Stripe writes: every later one would be
    refused the same way."""
    pace = pace or _Unpaced()
    for link in links:
        for attempt in range(1, RATE_LIMIT_TRIES + 1):
            pace.wait()
            try:
                client.v1.customers.update(link.customer_id, {"metadata": {METADATA_KEY: link.account_id}})
            except stripe.RateLimitError as exc:
                pace.throttled()
                if attempt < RATE_LIMIT_TRIES:
                    sleep(min(8.0, 0.5 * 2 ** attempt))
                    continue
                outcome.stripe_refused.append(Refusal(link.customer_id, link.account_id, link.line,
                                                      f"Stripe kept rate-limiting it ({_request(exc)}HTTP 429)"))
            except (stripe.PermissionError, stripe.AuthenticationError) as exc:
                outcome.stripe_stopped = (f"Stripe refused the customer write ({_request(exc)}HTTP "
                                          f"{exc.http_status}): the key needs {STRIPE_PERMISSION}. The Salesforce "
                                          "links are written; run it again with such a key to write the metadata.")
                return
            except stripe.StripeError as exc:
                outcome.stripe_refused.append(Refusal(link.customer_id, link.account_id, link.line,
                                                      f"Stripe refused it ({_request(exc)}{exc.user_message or exc})"))
            else:
                pace.succeeded()
                outcome.stripe_written += 1
            break


def _request(exc: stripe.StripeError) -> str:
    return f"{exc.request_id}: " if exc.request_id else ""


def customer_of(letter: DeadLetter) -> str | None:
    """The customer a dead letter's event is about: the object itself, or the object's `customer`."""
    try:
        obj = (json.loads(letter.payload).get("data") or {}).get("object") or {}
    except (ValueError, AttributeError):
        return None
    if obj.get("object") == "customer":
        return str(obj.get("id")) if obj.get("id") else None
    customer = obj.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return customer if isinstance(customer, str) else None


def waiting_letters(state: DeadLetterReads, customers: Collection[str]) -> int:
    """Open NO_ACCOUNT dead letters of these customers."""
    wanted = set(customers)
    return sum(1 for letter in state.dead_letters(status="open")
               if letter.error_code == NO_ACCOUNT and customer_of(letter) in wanted)


def apply_links(links: Sequence[Link], *, gw: Queries, writer: AccountWriter, customer_field: str,
                stripe_client: Any = None, stripe_pace: Pace | None = None,
                state: DeadLetterReads | None = None) -> ApplyOutcome:
    """Check, write to Salesforce, optionally to Stripe, and count the dead letters now retryable."""
    outcome = ApplyOutcome()
    to_write, outcome.already, outcome.refused = check_links(links, gw, customer_field)
    if to_write:
        outcome.linked, failed = write_salesforce(to_write, writer, customer_field)
        outcome.refused.extend(failed)
    if stripe_client is not None:
        write_stripe([*outcome.linked, *outcome.already], stripe_client, outcome, pace=stripe_pace)
    if state is not None:
        outcome.waiting_letters = waiting_letters(state, {link.customer_id for link in (*outcome.linked,
                                                                                        *outcome.already)})
    return outcome
