"""Finding Salesforce records, through the gateway: a batch's intents -> one `LookupRequest` -> batched SOQL
(one `IN (...)` per kind and 200 values, five statements to a Composite call) -> `Lookups`.

`SalesforceRecords` is the batch step's RecordLookup (pipeline/ports.py): it keeps the run's `AccountCache`
and the org check's facts; `find` asks a `LookupReader` (`SoqlLookups` over the gateway, or a test's fake).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal, Protocol

from simple_salesforce import format_soql

from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.records import (
    AccountRow,
    FieldReads,
    LookupRequest,
    Lookups,
    OpportunityRow,
    OrgFacts,
    index_account,
)
from stripe_sf_sync.rules import AccountStatusIntent, Intent, OpportunityIntent, TaskIntent, transition_task
from stripe_sf_sync.salesforce.gateway import COMPOSITE_QUERIES, SalesforceAccess, SalesforceGateway
from stripe_sf_sync.salesforce.merges import follow_merges, merged_statements, unresolved
from stripe_sf_sync.salesforce.org import OrgCheck
from stripe_sf_sync.salesforce_ids import to_18

IN_CHUNK = 200  # values per IN (...): keeps the GET query URL well under Salesforce's limit


# --- SOQL statements and their rows ----------------------------------------------------------------

LookupKind = Literal["account", "opportunity", "contact", "task"]


def _selects(fields: str, sobject: str, where_field: str, values: Iterable[str], also: str = "") -> list[str]:
    """SELECT … WHERE field IN (…) statements, IN_CHUNK values each, literals escaped by
    simple_salesforce.format_soql (never pasted into the statement); `also`: a condition ANDed on, escaped."""
    uniq = sorted({v for v in values if v})
    # Field and object names come from validated config (an identifier pattern), never from Stripe.
    return [format_soql(f"SELECT {fields} FROM {sobject} WHERE {where_field} IN {{values}}",  # noqa: S608
                        values=uniq[i:i + IN_CHUNK]) + also for i in range(0, len(uniq), IN_CHUNK)]


def account_filter(names: FieldNames, stripe_account: str | None) -> str:
    """` AND (<field> = '<acct>' OR <field> = null)`: the condition that keeps another Stripe account's
    Opportunities and Tasks out of a lookup (issue 26), and still finds a record written before the field
    existed (it is tagged on its next write). Empty when the field or the account is not known. Accounts are
    never filtered: one Account may hold customers of several Stripe accounts (a company buying from two brands)."""
    if names.stripe_account is None or stripe_account is None:
        return ""
    field = names.stripe_account  # validated config (an identifier pattern); the value is escaped
    return str(format_soql(f" AND ({field} = {{}} OR {field} = null)", stripe_account))


def lookup_statements(request: LookupRequest, names: FieldNames) -> list[tuple[LookupKind, str]]:
    """The SOQL statements of a LookupRequest, in the order they are sent: Accounts, Opportunities,
    Contacts, Tasks."""
    a_fields = ["Id", "Name", "OwnerId", names.subscription_status, names.customer_id]
    if names.account_csm:
        a_fields.append(names.account_csm)
    a_fields.extend(request.reads.account)  # the mapping's `if_empty` fields: more columns, not more calls
    a_select = ", ".join(dict.fromkeys(a_fields))
    o_select = ", ".join(dict.fromkeys(["Id", "AccountId", "IsClosed", "CreatedDate", names.subscription_id,
                                        names.payment_intent_id, names.customer_id, *request.reads.opportunity]))
    accounts = (_selects(a_select, "Account", "Id", request.account_ids)
                + _selects(a_select, "Account", names.customer_id, request.customer_ids))
    # Opportunities named in metadata bring their Account (parent relationship fields, in the same
    # statement): an object naming only its Opportunity resolves its Account without its customer.
    by_id_select = ", ".join([o_select, *(f"Account.{f}" for f in dict.fromkeys(a_fields))])
    mine = account_filter(names, request.stripe_account)
    opportunities = (_selects(by_id_select, "Opportunity", "Id", request.opportunity_ids, mine)
                     + _selects(o_select, "Opportunity", names.subscription_id, request.subscription_ids, mine)
                     + _selects(o_select, "Opportunity", names.payment_intent_id, request.payment_intent_ids, mine)
                     + _selects(o_select, "Opportunity", names.customer_id, request.opportunity_customer_ids, mine))
    contacts = _selects("Id", "Contact", "Id", request.contact_ids)
    # Whether a Task exists is asked by SOQL, never by an upsert: an upsert re-sends every field and would
    # undo what a person did to the Task, and on a non-Unique External ID it needs "View All Data"; a plain
    # query works whatever the field is (REST API, "Insert or Update (Upsert) a Record Using an External ID").
    tasks = _selects(names.task_event_id, "Task", names.task_event_id, request.task_keys, mine)
    kinds: list[tuple[LookupKind, list[str]]] = [("account", accounts), ("opportunity", opportunities),
                                                  ("contact", contacts), ("task", tasks)]
    return [(kind, soql) for kind, statements in kinds for soql in statements]


def _values(r: Mapping[str, Any], wanted: Iterable[str]) -> dict[str, Any]:
    """The row's values of the fields the mapping reads (SOQL may answer in another case than asked)."""
    lowered = {k.lower(): v for k, v in r.items()}
    return {name: lowered.get(name.lower()) for name in wanted}


def _account_row(r: Mapping[str, Any], names: FieldNames, reads: FieldReads = FieldReads()) -> AccountRow:
    return AccountRow(to_18(r["Id"]), r.get("Name") or "", r.get("OwnerId"),
                      r.get(names.account_csm) if names.account_csm else None,
                      r.get(names.subscription_status), r.get(names.customer_id), _values(r, reads.account))


def lookups_of(results: Iterable[tuple[LookupKind, list[dict[str, Any]]]], names: FieldNames,
               reads: FieldReads = FieldReads()) -> Lookups:
    """Index the rows each statement returned."""
    found = Lookups()
    for kind, records in results:
        for r in records:
            if kind == "account":
                found.add_account(_account_row(r, names, reads))
            elif kind == "opportunity":
                if isinstance(r.get("Account"), Mapping) and r["Account"].get("Id"):
                    found.add_account(_account_row(r["Account"], names, reads))
                found.add_opportunity(OpportunityRow(
                    to_18(r["Id"]), r.get("AccountId"), r.get(names.subscription_id), r.get(names.payment_intent_id),
                    r.get(names.customer_id), bool(r.get("IsClosed")), str(r.get("CreatedDate") or ""),
                    _values(r, reads.opportunity)))
            elif kind == "contact":
                found.contacts.add(to_18(r["Id"]))
            elif r.get(names.task_event_id):
                found.task_keys.add(str(r[names.task_event_id]))
    return found


class LookupReader(Protocol):
    """Reads what a LookupRequest asks for (SoqlLookups; tests use in-memory fakes)."""

    def lookup(self, request: LookupRequest, names: FieldNames) -> Lookups:
        """Everything found for `request`, indexed."""
        ...


class SoqlLookups:
    """A LookupReader through the gateway."""

    def __init__(self, gw: SalesforceGateway) -> None:
        self.gw = gw

    def lookup(self, request: LookupRequest, names: FieldNames) -> Lookups:
        """What `request` asks for: one SOQL `IN (...)` per kind and 200 values, the statements of a batch
        together, five to a Composite call."""
        statements = lookup_statements(request, names)
        # Merged-away Accounts ride along when the last Composite call has room for them (salesforce/merges.py):
        # then a merge costs no call of its own.
        merged = merged_statements(request.account_ids, request.customer_ids, names)
        ride = merged if merged and len(merged) <= -len(statements) % COMPOSITE_QUERIES else []
        # Task keys through queryAll: a Task closed with a due date over a year ago is archived, and `query`
        # no longer returns it (SOAP API Developer Guide: Task, IsArchived; api-facts §12). Found, it is never
        # created again.
        results = self.gw.query_many([*(soql for _, soql in statements), *ride],
                                     archived={i for i, (kind, _) in enumerate(statements) if kind == "task"}
                                     | set(range(len(statements), len(statements) + len(ride))))
        found = lookups_of(zip((kind for kind, _ in statements), results[:len(statements)], strict=True), names,
                           request.reads)
        if ride:
            found.merged_rows = [r for rows in results[len(statements):] for r in rows]
        return found


# --- a batch's lookups: what to ask for, and the Accounts a run keeps ---------------------------------

# Accounts a run keeps (about 0.5 KB each): a sync's customers fit (8,544 Accounts in the 100,000-event
# benchmark), and a backfill, which reads each Account once, does not keep 100,000 of them (memory stays flat
# with the history's size).
MAX_CACHED_ACCOUNTS = 10_000


class AccountCache:
    """Accounts read earlier in this run, so a long run's later batches need not look them up again.

    Safe because stripe-sf updates only their status (and the customer-id link), which it records here as
    it writes them, and creates Accounts only for customers with none (identity.create_accounts), which are
    not remembered as missing. A run is minutes long; each run starts empty, so a
    change made by hand in Salesforce is seen by the next run at the latest. Customers without an Account
    are not remembered: each batch looks for them again.
    """

    def __init__(self, limit: int = MAX_CACHED_ACCOUNTS) -> None:
        self.by_id: dict[str, AccountRow] = {}
        self.by_customer: dict[str, AccountRow] = {}
        self._limit = limit

    def want(self, fields: Iterable[str]) -> None:
        """Forget the Accounts read without some of `fields` (one run reads one mapping: never, in practice)."""
        stale = [r.id for r in self.by_id.values() if any(f not in r.values for f in fields)]
        for account_id in stale:
            row = self.by_id.pop(account_id)
            if row.customer_id and self.by_customer.get(row.customer_id) is row:
                del self.by_customer[row.customer_id]

    def add(self, row: AccountRow) -> None:
        """Remember a row read from Salesforce; past `limit` rows, the oldest is forgotten (read again if needed)."""
        if row.id not in self.by_id and len(self.by_id) >= self._limit:
            oldest = self.by_id.pop(next(iter(self.by_id)))
            if oldest.customer_id and self.by_customer.get(oldest.customer_id) is oldest:
                del self.by_customer[oldest.customer_id]
        index_account(self.by_id, self.by_customer, row)

    def wrote(self, account_id: str, fields: Mapping[str, Any], names: FieldNames) -> None:
        """Record a successful Account update, so the next batch compares against what it now holds."""
        row = self.by_id.get(account_id)
        if row is None:
            return
        if names.subscription_status in fields:
            row.status = fields[names.subscription_status]
        if fields.get(names.customer_id):
            row.customer_id = fields[names.customer_id]
            self.by_customer[row.customer_id] = row
        row.values.update({k: v for k, v in fields.items() if k in row.values})


def task_keys_of(intents: Iterable[Intent], legacy_events: Collection[str] | None = None) -> set[str]:
    """The keys of every Task the intents may create: their Tasks, and the transition Task of a status change
    that names a different previous status or takes it from the Account (Materializer._account_ops decides).
    With each, the key an earlier version gave it, for the events in `legacy_events` (None: every event):
    only an event an earlier version may have seen can have such a Task."""
    keys: set[str] = set()
    for it in intents:
        task = it if isinstance(it, TaskIntent) else None
        if isinstance(it, AccountStatusIntent) and it.log_transition and (
                it.previous_from_account or it.previous_status not in (None, it.status)):
            task = transition_task(it, it.previous_status or "")  # its keys do not depend on the old status
        if task is not None:
            keys.update(task.keys if legacy_events is None or task.event_id in legacy_events else (task.key,))
    return keys


def lookup_request(intents: Sequence[Intent], accounts: AccountCache, *, task_keyed: bool,
                   legacy_events: Collection[str] | None = None, reads: FieldReads = FieldReads(),
                   stripe_account: str | None = None) -> LookupRequest:
    """What the intents need read: Accounts by Id and customer (those not in `accounts`), Opportunities by
    Id, subscription, payment and customer, Contacts, and (`task_keyed`: the org has the Task key field) the
    Task keys that may exist already."""
    acct_ids: set[str] = set()
    customers: set[str] = set()
    opp_ids: set[str] = set()
    subs: set[str] = set()
    payments: set[str] = set()
    opp_customers: set[str] = set()
    contacts: set[str] = set()
    for it in intents:
        acct = it.account
        if acct.account_id:
            acct_ids.add(acct.account_id)
        if acct.opportunity_id:  # its Account comes with it (lookup_statements)
            opp_ids.add(acct.opportunity_id)
        if acct.customer_id:
            customers.add(acct.customer_id)
        if isinstance(it, OpportunityIntent):
            if it.opportunity_id:
                opp_ids.add(it.opportunity_id)
            (subs if it.key_kind == "subscription" else payments).add(it.key)
            if it.match_by_customer and acct.customer_id:
                opp_customers.add(acct.customer_id)
        elif it.who_id:
            contacts.add(it.who_id)
    return LookupRequest(
        account_ids=frozenset(acct_ids - accounts.by_id.keys()),
        customer_ids=frozenset(customers - accounts.by_customer.keys()),
        opportunity_ids=frozenset(opp_ids), subscription_ids=frozenset(subs), payment_intent_ids=frozenset(payments),
        opportunity_customer_ids=frozenset(opp_customers), contact_ids=frozenset(contacts),
        task_keys=frozenset(task_keys_of(intents, legacy_events) if task_keyed else ()), reads=reads,
        stripe_account=stripe_account)


def find(port: LookupReader, names: FieldNames, intents: Sequence[Intent], accounts: AccountCache, *,
         task_keyed: bool, legacy_events: Collection[str] | None = None, reads: FieldReads = FieldReads(),
         stripe_account: str | None = None) -> Lookups:
    """The batch's lookups: what `accounts` holds already, and what `port` reads (which `accounts` then
    remembers for the run's later batches). `legacy_events`: see `task_keys_of`; `reads`: the fields whose
    values the mapping needs (an Account cached without them is read again)."""
    if reads.account:
        accounts.want(reads.account)
    read = port.lookup(lookup_request(intents, accounts, task_keyed=task_keyed, legacy_events=legacy_events,
                                      reads=reads, stripe_account=stripe_account), names)
    cached = Lookups()
    for row in [accounts.by_id.get(it.account.account_id or "") for it in intents] + [
            accounts.by_customer.get(it.account.customer_id or "") for it in intents]:
        if row is not None:
            cached.add_account(row)
    for row in read.accounts_by_id.values():
        accounts.add(row)
    # Rows just read win over cached ones (they are newer), as they would were they indexed after them.
    return replace(read, accounts_by_id={**cached.accounts_by_id, **read.accounts_by_id},
                   accounts_by_customer={**cached.accounts_by_customer, **read.accounts_by_customer})


class SalesforceRecords:
    """The batch step's RecordLookup (pipeline/ports.py): batched SOQL through the gateway, the org's facts,
    and the Accounts this run has read (stripe-sf never creates Accounts and records what it writes to them,
    so later batches of a run need not look them up again)."""

    def __init__(self, access: SalesforceAccess, org: OrgCheck) -> None:
        self._access = access
        self._org = org
        self._accounts = AccountCache()

    @property
    def described(self) -> bool:
        """Whether the org was described in this run."""
        return self._org.described

    def org_facts(self, *, refresh: bool = False) -> OrgFacts:
        """The org's facts (describe once a day)."""
        return self._org.facts(self._access.get(), refresh=refresh)

    def find(self, names: FieldNames, intents: Sequence[Intent], *, task_keyed: bool,
             legacy_events: Collection[str] | None = None, reads: FieldReads = FieldReads(),
             stripe_account: str | None = None) -> Lookups:
        """The records the intents name (`legacy_events`: task_keys_of; `reads`: the mapping's fields;
        `stripe_account`: no Opportunity or Task of another account)."""
        gw = self._access.get()
        found = find(SoqlLookups(gw), names, intents, self._accounts, task_keyed=task_keyed,
                     legacy_events=legacy_events, reads=reads, stripe_account=stripe_account)
        account_ids, customer_ids = unresolved(intents, found)
        if account_ids or customer_ids:  # merged away? (salesforce/merges.py)
            follow_merges(found, account_ids, customer_ids, names,
                          lambda soqls: gw.query_many(soqls, archived=range(len(soqls))),
                          lambda r: _account_row(r, names), read=found.merged_rows)
        return found

    def wrote_account(self, account_id: str, fields: dict[str, Any], names: FieldNames) -> None:
        """Remember a successful Account update."""
        self._accounts.wrote(account_id, fields, names)

