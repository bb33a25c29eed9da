"""The reads of `stripe-sf link`: Stripe customers with no link, a batch at a time, and their candidates in the
org, in batched SOQL through the gateway (never one query per customer).

A customer is linked when its metadata names an Account (`salesforce_account_id`, a valid Account Id) or an
Account holds its id in the customer-id field (`Stripe_Customer_ID__c`). For each batch of the rest, one
round of statements (five to a Composite call, which Salesforce bills as one API call):

- Accounts holding these customer ids (to leave the linked out);
- Contacts whose Email is in the batch's emails, with their Account's Name, Website and customer id;
- Accounts whose Website is one of the batch's company domains, as people type it (`website_variants`:
  with or without scheme, `www.` and trailing slash; evidence.py then compares the host);
- Accounts whose Name is in the batch's names.

Values are escaped by simple_salesforce.format_soql; a statement holds at most 200 values and
`MAX_STATEMENT_CHARS` characters, far under SOQL's 100,000 (Salesforce App Limits Cheatsheet, "SOQL and SOSL
Limits": 100,000 characters a statement, 4,000 a string) and under the REST GET URL's length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from simple_salesforce import format_soql

from stripe_sf_sync.link.evidence import (
    AccountCandidate,
    Candidates,
    ContactCandidate,
    Customer,
    email_domain,
    is_free_mail,
)
from stripe_sf_sync.salesforce_ids import checked_id

IN_CHUNK = 200
MAX_STATEMENT_CHARS = 6000  # a GET query URL-encodes to about twice this
CUSTOMER_BATCH = 1000  # customers per round of Salesforce statements
STRIPE_PAGE = 100  # the most a Stripe list page holds
METADATA_KEY = "salesforce_account_id"
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class Queries(Protocol):
    """What `link` asks of the Salesforce gateway (stripe_sf_sync.salesforce.gateway.SalesforceGateway)."""

    def query_many(self, soqls: Sequence[str], *, archived: Sequence[int] = ()) -> list[list[dict[str, Any]]]:
        """Several SOQL statements, five to a Composite call."""


@dataclass
class ReadCounts:
    """How many customers the read saw, and why some were left out."""

    customers: int = 0
    linked_in_metadata: int = 0
    linked_in_salesforce: int = 0
    no_email_or_name: int = 0
    stripe_pages: int = 0

    @property
    def unlinked(self) -> int:
        """Customers with no link (proposals are made for these)."""
        return self.customers - self.linked_in_metadata - self.linked_in_salesforce


@dataclass
class Batch:
    """A batch of unlinked customers and the org's candidates for them."""

    customers: list[Customer]
    candidates: Candidates = field(default_factory=Candidates)


def client_pages(client: Any) -> Iterator[list[dict[str, Any]]]:
    """Pages of every live customer, 100 a page, through a plain `stripe.StripeClient` (a deleted customer is
    never listed: Stripe API reference, "List all customers"). The CLI passes StripeSource.customer_pages
    instead, paced and retried like every other Stripe read."""
    page = client.v1.customers.list({"limit": STRIPE_PAGE})
    while True:
        yield [c.to_dict() for c in page.data]
        if not page.has_more or not page.data:
            return
        page = client.v1.customers.list({"limit": STRIPE_PAGE, "starting_after": page.data[-1].id})


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """`items` in lists of `size` (the last may be shorter)."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def in_statements(head: str, column: str, values: Iterable[str]) -> list[str]:
    """`{head} WHERE {column} IN (...)` statements, each within IN_CHUNK values and MAX_STATEMENT_CHARS."""
    literals = [format_soql("{}", v) for v in sorted({v for v in values if v})]
    return _joined(f"{head} WHERE {column} IN (", ", ", ")", literals)


def website_variants(domains: Iterable[str]) -> list[str]:
    """The ways people type a company's web address in Website, for an exact `IN`: with or without a scheme,
    `www.` and a trailing slash (12 a domain). SOQL has no "host of" function, and `LIKE '%acme.com%'` scans
    every Account once per domain; a Website with a path (`acme.com/en`) is not found this way."""
    out: list[str] = []
    for domain in sorted(set(domains)):
        for scheme in ("", "http://", "https://"):
            for host in (domain, f"www.{domain}"):
                out += [f"{scheme}{host}", f"{scheme}{host}/"]
    return out


def _joined(start: str, sep: str, end: str, parts: list[str]) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    size = len(start) + len(end)
    for part in parts:
        if current and (len(current) == IN_CHUNK or size + len(sep) + len(part) > MAX_STATEMENT_CHARS):
            out.append(start + sep.join(current) + end)
            current, size = [], len(start) + len(end)
        current.append(part)
        size += len(part) + len(sep)
    if current:
        out.append(start + sep.join(current) + end)
    return out


def _customers(pages: Iterable[list[dict[str, Any]]], counts: ReadCounts) -> Iterator[dict[str, Any]]:
    for page in pages:
        counts.stripe_pages += 1
        yield from page


def unlinked_batches(pages: Iterable[list[dict[str, Any]]], gw: Queries, *, customer_field: str, counts: ReadCounts,
                     batch_size: int = CUSTOMER_BATCH) -> Iterator[Batch]:
    """The unlinked customers of `pages` (pages of Stripe customers as dicts) a batch at a time, with their
    candidates; `counts` is filled in as it goes."""
    for raw in chunks(_customers(pages, counts), batch_size):
        counts.customers += len(raw)
        pending: list[Customer] = []
        for c in raw:
            if checked_id((c.get("metadata") or {}).get(METADATA_KEY), "Account"):
                counts.linked_in_metadata += 1
            else:
                pending.append(Customer(c["id"], c.get("email") or None, c.get("name") or None))
        if pending:
            batch = _candidates_for(pending, gw, customer_field, counts)
            if batch.customers:
                yield batch


def field_name(name: str) -> str:
    """`name` if it is a plain API name (config validates it so too): it goes into SOQL unquoted."""
    if not _API_NAME.match(name):
        raise ValueError(f"not a Salesforce field name: {name!r}")
    return name


def _candidates_for(customers: list[Customer], gw: Queries, customer_field: str, counts: ReadCounts) -> Batch:
    """Two rounds: which customers Accounts already hold, and Contacts by email; then, for the customers no
    Contact names (the strongest evidence decides: evidence.py), Accounts by website and by name."""
    customer_field = field_name(customer_field)
    # The field name is checked above; values are escaped by format_soql inside in_statements.
    linked = in_statements(f"SELECT Id, {customer_field} FROM Account", customer_field,  # noqa: S608
                           [c.id for c in customers])
    contact_cols = f"Id, Email, AccountId, Account.Name, Account.Website, Account.{customer_field}"
    contacts = in_statements(f"SELECT {contact_cols} FROM Contact", "Email",  # noqa: S608
                             [c.email for c in customers if c.email])
    results = gw.query_many([*linked, *contacts])
    taken = {str(r.get(customer_field)) for rows in results[:len(linked)] for r in rows}
    unlinked = [c for c in customers if c.id not in taken]
    counts.linked_in_salesforce += len(customers) - len(unlinked)
    counts.no_email_or_name += sum(1 for c in unlinked if not c.email and not c.name)
    found = Candidates()
    for row in (r for rows in results[len(linked):] for r in rows):
        account = row.get("Account") or {}
        if row.get("AccountId"):
            found.add_account(AccountCandidate(row["AccountId"], account.get("Name"), account.get("Website"),
                                               account.get(customer_field)))
            found.add_contact(ContactCandidate(row["Id"], row.get("Email") or "", row["AccountId"]))
    rest = [c for c in unlinked if not (c.email and found.contacts_by_email.get(c.email.casefold()))]
    for row in _accounts_by_website_or_name(rest, gw, customer_field):
        found.add_account(AccountCandidate(row["Id"], row.get("Name"), row.get("Website"), row.get(customer_field)))
    return Batch(unlinked, found)


def _accounts_by_website_or_name(customers: list[Customer], gw: Queries, customer_field: str) -> list[dict[str, Any]]:
    account_cols = f"Id, Name, Website, {customer_field}"
    domains = [d for d in (email_domain(c.email) for c in customers) if d and not is_free_mail(d)]
    names = [n for c in customers if c.name for n in {c.name, " ".join(c.name.split())}]
    statements = (in_statements(f"SELECT {account_cols} FROM Account", "Website",  # noqa: S608
                                website_variants(domains))
                  + in_statements(f"SELECT {account_cols} FROM Account", "Name", names))  # noqa: S608
    return [r for rows in gw.query_many(statements) for r in rows] if statements else []
