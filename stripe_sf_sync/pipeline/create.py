"""Optional creation (identity.create_accounts / create_contacts, docs/link.md): the Accounts a batch's
customers lack, and a Contact on each, written in a first round before the batch's other writes, so that the
Opportunities, Tasks and statuses that follow find the new Account by its Id as they find any other.

Off by default: a customer with no Account is then dead-lettered NO_ACCOUNT, as before. The round costs a
call for the batch's new Accounts (an upsert on the customer-id field, 200 a call: a run that stopped after it
finds them again) and one for their Contacts; a batch that creates nothing makes no call. A save refused by
the org's duplicate rules (DUPLICATES_DETECTED) is never forced: its customer's events are dead letters naming
the candidates (salesforce/duplicates.py puts them in the message).

Why a round of its own rather than the Opportunity naming its Account by the external id (`"Account":
{"Stripe_Customer_ID__c": ...}`, Apex Developer Guide, "Relating Records by Using an External ID"): an sObject
Collections upsert holds one sObject type (REST API, "Upsert Up to 200 Records", and "Insert or Update (Upsert) a
Record Using an External ID"), so the Accounts take a call of their own either way, and the batch's Tasks
(WhatId) and Account status updates need the new Account's Id, which the round's results give."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stripe_sf_sync.config import FieldNames, IdentitySettings
from stripe_sf_sync.pipeline.events import HeldEvent
from stripe_sf_sync.pipeline.plan import Planned
from stripe_sf_sync.pipeline.ports import Ports
from stripe_sf_sync.records import AccountRow, Lookups, SfOp
from stripe_sf_sync.rules import AccountFieldsIntent, AccountRef

log = logging.getLogger("stripe_sf_sync")

Failures = dict[str, tuple[str, str]]  # event id -> (code, reason)


@dataclass
class Newcomer:
    """A customer of the batch with no Account: what its Account and Contact are made from."""

    customer_id: str
    name: str | None
    email: str | None
    events: list[str] = field(default_factory=list)


def customer_email(held: HeldEvent, customer_id: str, ports: Ports) -> str | None:
    """The customer's email: from the customer the event carries expanded (backfill's lists), else as the
    hydrator knows it (the state's customer cache, the batch's reads; a customer kept before state version 4 is
    read once). The one place creation reads an email."""
    customer = held.data_object().get("customer")
    if isinstance(customer, Mapping) and isinstance(customer.get("email"), str):
        return str(customer["email"]) or None
    return ports.hydrator.customer_email(customer_id)


def account_name(newcomer: Newcomer) -> str | None:
    """The customer's name, else its email's domain; None when it has neither."""
    if newcomer.name and newcomer.name.strip():
        return newcomer.name.strip()[:255]
    domain = (newcomer.email or "").rpartition("@")[2].strip().lower()
    return domain[:255] or None


def contact_fields(newcomer: Newcomer, account_id: str, owner_id: str | None) -> dict[str, Any] | None:
    """A Contact from the customer's email and name (LastName is required: the name's last word, else the
    email's local part); None without an email."""
    if not newcomer.email:
        return None
    words = (newcomer.name or "").split()
    first, last = (" ".join(words[:-1]), words[-1]) if words else ("", newcomer.email.partition("@")[0])
    fields: dict[str, Any] = {"LastName": last[:80], "Email": newcomer.email, "AccountId": account_id}
    if first:
        fields["FirstName"] = first[:40]
    if owner_id:
        fields["OwnerId"] = owner_id
    return fields


def _unresolved(ref: AccountRef, found: Lookups) -> bool:
    """An Account reference that names only a customer, and whose customer no Account holds."""
    return bool(ref.customer_id and not ref.account_id and found.account_of_opportunity(ref.opportunity_id) is None
                and ref.customer_id not in found.accounts_by_customer and ref.customer_id not in found.merge_conflicts)


def newcomers(planned: Planned, found: Lookups, ports: Ports, *, contacts: bool) -> dict[str, Newcomer]:
    """The batch's customers that have no Account, with the events waiting for it. A deleted customer's mark
    (AccountFieldsIntent) never creates one. The email is looked for only when it is needed: for a Contact,
    or to name an Account whose customer has no name."""
    out: dict[str, Newcomer] = {}
    for held, change, plan in planned:
        for it in plan.intents:
            if isinstance(it, AccountFieldsIntent) or not _unresolved(it.account, found):
                continue
            cid = str(it.account.customer_id)
            if cid not in out:
                name = getattr(change, "customer_name", None)
                email = customer_email(held, cid, ports) if contacts or not name else None
                out[cid] = Newcomer(cid, name, email)
            if change.meta.event_id not in out[cid].events:
                out[cid].events.append(change.meta.event_id)
    return out


def create_missing(planned: Planned, found: Lookups, ports: Ports, identity: IdentitySettings,
                   names: FieldNames, stripe_account: str | None = None) -> tuple[Failures, int]:
    """Create the Accounts (and Contacts) the batch's customers lack, add them to `found`; the events whose
    creation failed, with why, and how many records were written. An Account created here carries
    `stripe_account` in names.stripe_account (the org check requires the field then: CREATED_ACCOUNT_FIELDS)."""
    if not identity.create_accounts:
        return {}, 0
    wanted = newcomers(planned, found, ports, contacts=identity.create_contacts)
    failures: Failures = {}
    ops: list[SfOp] = []
    for n in wanted.values():
        name = account_name(n)
        if name is None:
            continue  # nothing to name it by: NO_ACCOUNT, as without creation
        fields: dict[str, Any] = {"Name": name, **({"OwnerId": identity.default_owner_id}
                                                   if identity.default_owner_id else {})}
        if names.stripe_account and stripe_account:
            fields[names.stripe_account] = stripe_account
        ops.append(SfOp("upsert", "Account", n.customer_id, fields, names.customer_id, events=list(n.events),
                        label=f"Account {names.customer_id}={n.customer_id} (create)"))
    if not ops:
        return {}, 0
    contacts: list[SfOp] = []
    made = 0
    for op, res in zip(ops, ports.writer.write(ops), strict=True):
        n = wanted[op.key]
        if not res.success:
            for ev in n.events:
                failures[ev] = (res.code or "UNKNOWN", f"{op.label}: {res.code} {res.message or ''}".strip())
            continue
        made += 1
        account_id = res.record_id or f"(the new Account of {n.customer_id})"  # a dry run's writer has no Id
        found.add_account(AccountRow(account_id, op.fields["Name"], identity.default_owner_id, None, None,
                                     n.customer_id))
        log.info("%s Account %s (%s) for %s", "created" if ports.writer.sends else "would create", account_id,
                 op.fields["Name"], n.customer_id)
        contact = contact_fields(n, account_id, identity.default_owner_id) if identity.create_contacts else None
        if contact is not None:
            contacts.append(SfOp("create", "Contact", n.customer_id, contact, events=list(n.events),
                                 label=f"Contact {n.email} on Account {account_id} (created for {n.customer_id})"))
    refused = _create_contacts(contacts, ports)
    failures.update(refused)
    return failures, made + len(contacts) - len({op.key for op in contacts if op.events[0] in refused})


def _create_contacts(contacts: list[SfOp], ports: Ports) -> Failures:
    """Create the Contacts; a refused one dead-letters its customer's events (the Account stays: a retry finds
    it and applies them)."""
    failures: Failures = {}
    if not contacts:
        return failures
    for op, res in zip(contacts, ports.writer.write(contacts), strict=True):
        if res.success:
            continue
        for ev in op.events:
            failures[ev] = (res.code or "UNKNOWN",
                            f"{op.label}: {res.code} {res.message or ''} (the Account is created: "
                            "`stripe-sf dlq retry --all` applies the events without the Contact)".strip())
    return failures
