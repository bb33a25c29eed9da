"""Accounts merged away (issue 25). When two Accounts are merged, Salesforce deletes the loser and sets its
`MasterRecordId` to the survivor; only `queryAll` still returns it (SOAP API Developer Guide, merge(): "the
losing records are deleted", their MasterRecordId names the master record; REST API, QueryAll: "including
records that have been deleted because of a merge"). A link to a loser (a metadata Id, or the customer id the
loser held) is followed to the survivor: when the batch's lookups find no Account for some intents, one
queryAll round asks for merged-away Accounts among their Ids and customer ids, each with its survivor's row (a
parent relationship). A batch that finds every Account makes no call more.

The survivor keeps its own customer id: a survivor linked to another customer is a conflict, dead-lettered
naming both (pipeline/materialize.py reads `Lookups.merge_conflicts`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from simple_salesforce import format_soql

from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.logs import fields
from stripe_sf_sync.records import AccountRow, Lookups
from stripe_sf_sync.rules import Intent
from stripe_sf_sync.salesforce_ids import to_18

log = logging.getLogger("stripe_sf_sync")

IN_CHUNK = 200
MAX_HOPS = 3  # a survivor merged in turn is followed again, this many times at most
Query = Callable[[Sequence[str]], list[list[dict[str, Any]]]]


def merged_statements(account_ids: Iterable[str], customer_ids: Iterable[str], names: FieldNames) -> list[str]:
    """queryAll statements: the merged-away Accounts among these Ids and customer ids, each with its survivor
    (`MasterRecord`, a parent relationship: the survivor's row comes in the same statement)."""
    own = ["Id", "Name", "OwnerId", names.subscription_status, names.customer_id]
    if names.account_csm:
        own.append(names.account_csm)
    select = ", ".join(["Id", "MasterRecordId", names.customer_id, "MasterRecord.IsDeleted",
                        *(f"MasterRecord.{f}" for f in dict.fromkeys(own))])
    base = f"SELECT {select} FROM Account WHERE IsDeleted = true AND MasterRecordId != null"  # noqa: S608
    out: list[str] = []
    for where, values in (("Id", account_ids), (names.customer_id, customer_ids)):
        uniq = sorted({v for v in values if v})
        # The field names come from validated config; the values are escaped by format_soql.
        out += [format_soql(f"{base} AND {where} IN {{values}}", values=uniq[i:i + IN_CHUNK])
                for i in range(0, len(uniq), IN_CHUNK)]
    return out


def unresolved(intents: Iterable[Intent], found: Lookups) -> tuple[set[str], set[str]]:
    """The Account Ids and customer ids of the intents whose Account the lookups did not find (as
    pipeline/materialize.py resolves it: the named Opportunity's Account, the Id, then the customer id)."""
    ids: set[str] = set()
    customers: set[str] = set()
    for it in intents:
        ref = it.account
        if (found.account_of_opportunity(ref.opportunity_id) is not None or ref.account_id in found.accounts_by_id
                or ref.customer_id in found.accounts_by_customer):
            continue
        ids.update([ref.account_id] if ref.account_id else [])
        customers.update([ref.customer_id] if ref.customer_id else [])
    return ids, customers


def follow_merges(found: Lookups, account_ids: Collection[str], customer_ids: Collection[str], names: FieldNames,
                  query_all: Query, to_row: Callable[[dict[str, Any]], AccountRow], *,
                  read: list[dict[str, Any]] | None = None) -> None:
    """For the Account Ids and customer ids the batch's lookups did not find, look for merged-away Accounts (one
    queryAll round, five statements to a Composite call), and index each one's survivor under the loser's Id and
    the customer id the loser held, unless the survivor holds another customer's id (then
    `found.merge_conflicts` says so). A survivor merged in turn is followed (MAX_HOPS). `read`: the merged-away
    Accounts the lookups already read with their other statements (for more Ids than these: filtered here)."""
    losers: dict[str, tuple[str, str | None]] = {}
    ids, customers = set(account_ids), set(customer_ids)
    for hop in range(MAX_HOPS):
        if hop == 0 and read is not None:
            rows = [r for r in read if to_18(str(r["Id"])) in ids or r.get(names.customer_id) in customers]
        elif statements := merged_statements(ids, customers, names):
            rows = [r for rs in query_all(statements) for r in rs]
        else:
            break
        for r in rows:
            survivor = r.get("MasterRecord") if isinstance(r.get("MasterRecord"), dict) else None
            losers[to_18(str(r["Id"]))] = (to_18(str(r["MasterRecordId"])), r.get(names.customer_id))
            if survivor and not survivor.get("IsDeleted"):
                found.add_account(to_row(survivor))
        ids = {s for s, _ in losers.values() if s not in found.accounts_by_id} - losers.keys()
        customers = set()
    for loser, (survivor_id, customer) in losers.items():
        _index(found, loser, _final(survivor_id, losers, found), customer, names)


def _index(found: Lookups, loser: str, survivor: AccountRow | None, customer: str | None,
           names: FieldNames) -> None:
    if survivor is None:
        return  # not visible to the integration user: the link stays unresolved (NO_ACCOUNT)
    if customer and survivor.customer_id and survivor.customer_id != customer:
        found.merge_conflicts[loser] = found.merge_conflicts[customer] = (
            f"Account {loser}, linked to {customer}, was merged into {survivor.id} ({survivor.name}), which is "
            f"linked to {survivor.customer_id}: the survivor keeps its own {names.customer_id}. Link {customer} "
            f"to its Account ({names.customer_id} there, or metadata.salesforce_account_id on the customer), "
            "then run `stripe-sf dlq retry --all`")
        return
    found.accounts_by_id.setdefault(loser, survivor)
    found.merged_into[loser] = survivor.id
    if customer:
        found.accounts_by_customer.setdefault(customer, survivor)
    log.info("Account %s was merged into %s (%s): writing there", loser, survivor.id, survivor.name,
             extra=fields(kind="merged_account", account_id=loser, survivor_id=survivor.id))


def _final(survivor_id: str, losers: dict[str, tuple[str, str | None]], found: Lookups) -> AccountRow | None:
    """The live end of a chain of merges."""
    for _ in range(MAX_HOPS + 1):
        if survivor_id not in losers:
            return found.accounts_by_id.get(survivor_id)
        survivor_id = losers[survivor_id][0]
    return None



def merge_advice(by_obj: Mapping[str, Mapping[str, Any]], names: FieldNames) -> str | None:
    """doctor: what a Unique customer-id field on Account means for merges, and what to do. A Unique field blocks
    a merge of two linked Accounts that keeps the merged-away one's value (the deleted loser still holds it:
    DUPLICATE_VALUE). Said on doctor's line, not as a warning: the field should be Unique (doctor warns when it
    is not), so a warning here would be on every well set-up org."""
    name = names.customer_id
    described = (by_obj.get("Account") or {}).get(name.lower())
    if not described or not described.get("unique"):
        return None
    return (f"Account.{name} is Unique, so Salesforce refuses to merge two linked Accounts keeping the merged-away "
            f"one's value (DUPLICATE_VALUE): before such a merge, clear {name} on the Account whose customer does "
            "not belong to the survivor; stripe-sf follows a merged-away Account to its survivor (docs/link.md)")
