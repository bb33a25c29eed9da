"""Resolution, pure: Stripe ids -> the lookups a batch needs, then intents -> coalesced record writes.

A batch's lookups are asked for at once (a `LookupRequest`, read by a `RecordLookup` port: the
Salesforce edge runs them as SOQL). Resolution order for an Opportunity: checked metadata Id -> SOQL
by Stripe ids -> upsert-create by external id -> dead letter (integration guide, "Common Pitfalls"). A
Task is created once: the batch's Task keys that already exist are looked up with the other lookups,
and only the missing Tasks are created; a Task that exists is never written again. The planned writes
(`SfOp`) go to a `RecordWriter` port, which answers one `WriteResult` per write.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.rules import (
    AccountRef,
    AccountStatusIntent,
    Intent,
    OpportunityIntent,
    TaskIntent,
    transition_task,
)

log = logging.getLogger("stripe_sf_sync")

WriteKind = Literal["update", "upsert", "create"]


@dataclass
class SfOp:
    """One planned record write, possibly coalescing several events' changes to the same record."""

    kind: WriteKind
    sobject: str
    key: str  # the record Id (update), external id value (upsert) or a unique label (create)
    fields: dict[str, Any]
    ext_field: str | None = None
    events: list[str] = field(default_factory=list)  # contributing event ids, in event order
    label: str = ""

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """Writes with the same identity touch the same record and are merged."""
        return (self.kind, self.sobject, self.ext_field or "", self.key)


@dataclass(frozen=True)
class WriteResult:
    """A per-record outcome from Salesforce."""

    success: bool
    record_id: str | None = None
    code: str | None = None
    message: str | None = None
    created: bool | None = None


@dataclass
class AccountRow:
    """The Account fields the rules need."""

    id: str
    name: str
    owner_id: str | None
    csm_id: str | None
    status: str | None
    customer_id: str | None


@dataclass
class OpportunityRow:
    """The Opportunity fields resolution needs."""

    id: str
    account_id: str | None
    subscription_id: str | None
    payment_intent_id: str | None
    customer_id: str | None
    is_closed: bool
    created: str


@dataclass
class Lookups:
    """Everything one batch's lookups found."""

    accounts_by_id: dict[str, AccountRow] = field(default_factory=dict)
    accounts_by_customer: dict[str, AccountRow] = field(default_factory=dict)
    opps_by_id: dict[str, OpportunityRow] = field(default_factory=dict)
    opps_by_subscription: dict[str, OpportunityRow] = field(default_factory=dict)
    opps_by_payment: dict[str, OpportunityRow] = field(default_factory=dict)
    opps_by_customer: dict[str, list[OpportunityRow]] = field(default_factory=dict)
    contacts: set[str] = field(default_factory=set)  # Contact Ids from metadata that exist
    task_keys: set[str] = field(default_factory=set)  # Task keys (Stripe_Event_ID__c) that already exist

    def add_account(self, row: AccountRow) -> None:
        """Index an Account by its Id and, when it has one, its Stripe customer id."""
        _index(self.accounts_by_id, self.accounts_by_customer, row)

    def account_of_opportunity(self, opportunity_id: str | None) -> AccountRow | None:
        """The Account of an Opportunity found by Id, when it has one that was read with it."""
        opp = self.opps_by_id.get(opportunity_id) if opportunity_id else None
        return self.accounts_by_id.get(opp.account_id) if opp is not None and opp.account_id else None

    def add_opportunity(self, row: OpportunityRow) -> None:
        """Index an Opportunity by its Id and Stripe ids; a customer lists each Opportunity once."""
        first = row.id not in self.opps_by_id
        self.opps_by_id[row.id] = row
        if row.subscription_id:
            self.opps_by_subscription[row.subscription_id] = row
        if row.payment_intent_id:
            self.opps_by_payment[row.payment_intent_id] = row
        if row.customer_id and first:
            self.opps_by_customer.setdefault(row.customer_id, []).append(row)


def _index(by_id: dict[str, AccountRow], by_customer: dict[str, AccountRow], row: AccountRow) -> None:
    by_id[row.id] = row
    if row.customer_id:
        by_customer[row.customer_id] = row


@dataclass(frozen=True)
class LookupRequest:
    """What one batch must read from Salesforce (Accounts already in the run's AccountCache left out)."""

    account_ids: frozenset[str] = frozenset()
    customer_ids: frozenset[str] = frozenset()  # Accounts by their Stripe customer id
    opportunity_ids: frozenset[str] = frozenset()
    subscription_ids: frozenset[str] = frozenset()
    payment_intent_ids: frozenset[str] = frozenset()
    opportunity_customer_ids: frozenset[str] = frozenset()  # a customer's Opportunities, for matching
    contact_ids: frozenset[str] = frozenset()
    task_keys: frozenset[str] = frozenset()  # Task keys that may exist (only when the org has the key field)


class RecordLookup(Protocol):
    """Reads what a LookupRequest asks for (the Salesforce edge: SalesforceGateway)."""

    def lookup(self, request: LookupRequest, names: FieldNames) -> Lookups:
        """Everything found for `request`, indexed."""
        ...


class RecordWriter(Protocol):
    """Applies planned writes (the Salesforce edge: CollectionsWriter, BulkWriter)."""

    def write(self, ops: Sequence[SfOp]) -> list[WriteResult]:
        """One result per op, in the ops' order."""
        ...


# Accounts a run keeps (about 0.5 KB each): a sync's customers fit (8,544 Accounts in the 100,000-event
# benchmark), and a backfill, which reads each Account once, does not keep 100,000 of them (memory stays flat
# with the history's size).
MAX_CACHED_ACCOUNTS = 10_000


class AccountCache:
    """Accounts read earlier in this run, so a long run's later batches need not look them up again.

    Safe because stripe-sf never creates Accounts and updates only their status (and the customer-id
    link), which it records here as it writes them. A run is minutes long; each run starts empty, so a
    change made by hand in Salesforce is seen by the next run at the latest. Customers without an Account
    are not remembered: each batch looks for them again.
    """

    def __init__(self, limit: int = MAX_CACHED_ACCOUNTS) -> None:
        self.by_id: dict[str, AccountRow] = {}
        self.by_customer: dict[str, AccountRow] = {}
        self._limit = limit

    def add(self, row: AccountRow) -> None:
        """Remember a row read from Salesforce; past `limit` rows, the oldest is forgotten (read again if needed)."""
        if row.id not in self.by_id and len(self.by_id) >= self._limit:
            oldest = self.by_id.pop(next(iter(self.by_id)))
            if oldest.customer_id and self.by_customer.get(oldest.customer_id) is oldest:
                del self.by_customer[oldest.customer_id]
        _index(self.by_id, self.by_customer, row)

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
                   legacy_events: Collection[str] | None = None) -> LookupRequest:
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
        if acct.opportunity_id:  # its Account comes with it (salesforce_sink.lookup_statements)
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
        task_keys=frozenset(task_keys_of(intents, legacy_events) if task_keyed else ()))


def find(port: RecordLookup, names: FieldNames, intents: Sequence[Intent], accounts: AccountCache, *,
         task_keyed: bool, legacy_events: Collection[str] | None = None) -> Lookups:
    """The batch's lookups: what `accounts` holds already, and what `port` reads (which `accounts` then
    remembers for the run's later batches). `legacy_events`: see `task_keys_of`."""
    read = port.lookup(lookup_request(intents, accounts, task_keyed=task_keyed, legacy_events=legacy_events), names)
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


@dataclass(frozen=True)
class WriteSettings:
    """Org facts that shape the writes."""

    names: FieldNames
    record_type_id: str | None
    task_keyed: bool  # the org has the Task key field: Tasks are looked up by it and created once
    coalesce: bool = True
    # A multi-currency org's active currencies (upper-case ISO codes); None in a single-currency org.
    currencies: frozenset[str] | None = None
    # A single-currency org's currency (Organization.DefaultCurrencyIsoCode), None when not known; and whether
    # an amount in another currency is written as it is (salesforce.currency_mismatch: write_as_is).
    org_currency: str | None = None
    write_as_is: bool = False


class Unresolvable(Exception):
    """The intent cannot be turned into a write: the event goes to the dead-letter queue."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Materialized:
    """A batch's coalesced writes, and the events that could not be resolved."""

    ops: list[SfOp] = field(default_factory=list)
    failures: dict[str, Unresolvable] = field(default_factory=dict)


class Materializer:
    """Turns intents into record writes, in event order, tracking in-batch state."""

    def __init__(self, lookups: Lookups, settings: WriteSettings) -> None:
        self.found = lookups
        self.settings = settings
        self._ops: dict[tuple[str, str, str, str], SfOp] = {}
        self._order: list[SfOp] = []
        self._claimed: set[str] = set()  # customer Opportunities already claimed by a subscription
        self._pending: dict[tuple[str, str], SfOp] = {}  # Opportunities this batch creates
        self._status: dict[str, str | None] = {}  # Account status as of the events seen so far
        self._serial = 0
        # event id -> subscription: value updates (a plan change) that found no Opportunity to update. Not a
        # dead letter: the rest of the event applies, and `stripe-sf reconcile` lists the subscription.
        self.no_opportunity: dict[str, str] = {}
        self._unmatched: list[tuple[str, str]] = []  # this event's, kept only if the event materialises

    def _account(self, ref: AccountRef) -> AccountRow:
        # Set only when the object's own metadata names no Account: its named Opportunity's Account comes
        # before any customer metadata (AccountRef).
        by_opportunity = self.found.account_of_opportunity(ref.opportunity_id)
        if by_opportunity is not None:
            return by_opportunity
        if ref.account_id and ref.account_id in self.found.accounts_by_id:
            return self.found.accounts_by_id[ref.account_id]
        if ref.customer_id and ref.customer_id in self.found.accounts_by_customer:
            return self.found.accounts_by_customer[ref.customer_id]
        who = ref.customer_id or "this payment"
        raise Unresolvable(
            "NO_ACCOUNT",
            f"No Salesforce Account for {who}: set metadata.salesforce_account_id on the Stripe customer, "
            f"or {self.settings.names.customer_id} on the Account, then run `stripe-sf dlq retry --all`")

    def _opportunity(self, it: OpportunityIntent) -> OpportunityRow | None:
        if it.opportunity_id and it.opportunity_id in self.found.opps_by_id:
            return self.found.opps_by_id[it.opportunity_id]  # metadata Id that exists (a missing one falls through)
        table = self.found.opps_by_subscription if it.key_kind == "subscription" else self.found.opps_by_payment
        if it.key in table:
            return table[it.key]
        if it.match_by_customer and it.account.customer_id:
            # An open Opportunity of this customer not yet tied to a subscription or payment.
            candidates = [o for o in self.found.opps_by_customer.get(it.account.customer_id, [])
                          if not o.is_closed and not o.subscription_id and not o.payment_intent_id
                          and o.id not in self._claimed]
            if candidates:
                best = max(candidates, key=lambda o: o.created)
                self._claimed.add(best.id)
                best.subscription_id = it.key
                self.found.opps_by_subscription[it.key] = best
                return best
        return None

    def _currency_field(self, it: OpportunityIntent) -> dict[str, str]:
        """CurrencyIsoCode for a multi-currency org, where an amount without it is read in the running user's
        currency (Salesforce Help, "Multiple Currencies"). A currency the org has not activated is refused
        before any write."""
        if it.currency is None:
            return {}
        if self.settings.currencies is None:
            self._check_single_currency(it)
            return {}  # a single-currency org has no such field: sending it fails with INVALID_FIELD
        code = it.currency.upper()
        if code not in self.settings.currencies:
            raise Unresolvable(
                "CURRENCY_NOT_ACTIVE",
                f"{it.key} is in {code}, which is not an active currency of this Salesforce org (active: "
                f"{', '.join(sorted(self.settings.currencies))}), so its amounts cannot be written: activate {code} "
                "in Setup > Company Information > Currencies, then run `stripe-sf dlq retry --all`")
        return {"CurrencyIsoCode": code}

    def _check_single_currency(self, it: OpportunityIntent) -> None:
        """A single-currency org reads every amount in its one currency (Salesforce Help, "Multiple
        Currencies": without it, amounts carry no currency of their own), so EUR 90 would read as USD 90."""
        code, org = (it.currency or "").upper(), self.settings.org_currency
        if org is None or code == org or self.settings.write_as_is:
            return
        raise Unresolvable(
            "CURRENCY_MISMATCH",
            f"{it.key} is in {code}, but this Salesforce org has a single currency, {org}: its amounts would be "
            f"read as {org}. Turn on multiple currencies and activate {code} (Setup > Company Information), or set "
            "salesforce.currency_mismatch: write_as_is to write the amounts as they are; then run "
            "`stripe-sf dlq retry --all`")

    def _ops_for(self, it: Intent) -> list[SfOp]:
        if isinstance(it, OpportunityIntent):
            return self._opportunity_ops(it)
        account = self._account(it.account)
        if isinstance(it, AccountStatusIntent):
            return self._account_ops(it, account)
        assert isinstance(it, TaskIntent)
        return self._task_ops(it, account)

    def _opportunity_ops(self, it: OpportunityIntent) -> list[SfOp]:
        names = self.settings.names
        currency = self._currency_field(it)
        pending = self._pending.get((it.key_kind, it.key))
        if pending is not None:
            return [SfOp(pending.kind, "Opportunity", pending.key, {**it.fields, **currency}, pending.ext_field,
                         label=pending.label)]
        opp = self._opportunity(it)
        if opp is not None:
            return [SfOp("update", "Opportunity", opp.id, {**it.fields, **currency},
                         label=f"Opportunity {opp.id} ({it.key})")]
        if not it.may_create:
            # A value update of a subscription no Opportunity tracks (it predates the first sync, or its
            # Opportunity was deleted): nothing to update, and no reason to hold back its status and Tasks.
            self._unmatched.append((it.event_id, it.key))
            return []
        account = self._account(it.account)
        ext = names.subscription_id if it.key_kind == "subscription" else names.payment_intent_id
        fields: dict[str, Any] = {"Name": (f"{account.name} - " + it.name_hint.split(" - ", 1)[-1])[:120]
                                  if account.name else it.name_hint[:120], "AccountId": account.id}
        if self.settings.record_type_id:
            fields["RecordTypeId"] = self.settings.record_type_id
        if account.owner_id:
            fields["OwnerId"] = account.owner_id
        fields.update(it.create_only)
        fields.update(it.fields)
        fields.update(currency)
        fields.pop(ext, None)  # the external id travels as the upsert key, not in the body
        return [SfOp("upsert", "Opportunity", it.key, fields, ext, label=f"Opportunity {ext}={it.key} (create)")]

    def _account_ops(self, it: AccountStatusIntent, account: AccountRow) -> list[SfOp]:
        names = self.settings.names
        fields: dict[str, Any] = {names.subscription_status: it.status, **it.fields}
        if (it.account.customer_id and not account.customer_id
                and it.account.customer_id not in self.found.accounts_by_customer):
            fields[names.customer_id] = it.account.customer_id  # link it for later lookups
        ops: list[SfOp] = []
        # The Account already says so (as read this batch, or as an earlier event of it wrote): no write.
        # Compared with what Salesforce holds, so a hand-edited status is still put right.
        if it.fields or len(fields) > 1 or self._status.get(account.id, account.status) != it.status:
            ops.append(SfOp("update", "Account", account.id, fields, label=f"Account {account.id} ({account.name})"))
        old = it.previous_status
        if it.previous_from_account:
            old = self._status.get(account.id, account.status) or "unknown"
        if it.log_transition and old is not None and old != it.status:
            ops.extend(self._ops_for(transition_task(it, old)))
        return ops

    def _task_ops(self, it: TaskIntent, account: AccountRow) -> list[SfOp]:
        names = self.settings.names
        owner = account.owner_id
        if it.assign_to == "csm_or_owner" and account.csm_id:
            owner = account.csm_id
        fields: dict[str, Any] = {"Subject": it.subject[:255], "Description": it.description,
                                  "Priority": it.priority, "Status": it.status, "ActivityDate": it.activity_date,
                                  "WhatId": account.id}
        if owner:
            fields["OwnerId"] = owner
        if it.who_id in self.found.contacts:
            fields["WhoId"] = it.who_id
        elif it.who_id:
            # A Contact that does not exist (deleted, another org) would fail the whole Task: leave WhoId
            # empty and say so; the Task itself still matters.
            log.warning("Contact %s (metadata.salesforce_contact_id) does not exist in Salesforce: Task %s is "
                        "created without WhoId", it.who_id, it.key)
        if not self.settings.task_keyed:  # nothing to look a Task up by: created, as check_org warned
            return [SfOp("create", "Task", it.key, fields, label=f"Task {it.key}")]
        if any(k in self.found.task_keys for k in it.keys):
            return []  # created by an earlier run (under this key or an earlier version's): what a person did stands
        fields[names.task_event_id] = it.key
        return [SfOp("create", "Task", it.key, fields, label=f"Task {it.key}")]

    def add_event(self, event_id: str, intents: Sequence[Intent]) -> Unresolvable | None:
        """Materialise one event's intents; all of them or none (then it is dead-lettered)."""
        self._unmatched = []
        try:
            produced: list[SfOp] = []
            for it in intents:
                produced.extend(self._ops_for(it))
        except Unresolvable as exc:
            return exc
        self.no_opportunity.update(self._unmatched)
        for it in intents:  # only now is the in-batch state of this event real
            if isinstance(it, AccountStatusIntent):
                acct = self._account(it.account)
                self._status[acct.id] = it.status
            elif isinstance(it, OpportunityIntent) and (it.key_kind, it.key) not in self._pending:
                for op in produced:
                    if op.sobject == "Opportunity" and op.kind == "upsert" and op.key == it.key:
                        self._pending[(it.key_kind, it.key)] = op
        for op in produced:
            op.events.append(event_id)
            self._merge(op)
        return None

    def _merge(self, op: SfOp) -> None:
        ident = op.identity
        # A keyed Task is one record however many intents ask for it: never two creates of one key.
        if not self.settings.coalesce and not (op.sobject == "Task" and self.settings.task_keyed):
            self._serial += 1
            ident = (*ident[:3], f"{ident[3]}#{self._serial}")
        existing = self._ops.get(ident)
        if existing is None:
            self._ops[ident] = op
            self._order.append(op)
            return
        # Writes to one record are coalesced in event order: later values win.
        existing.fields.update(op.fields)
        for ev in op.events:
            if ev not in existing.events:
                existing.events.append(ev)

    def result(self) -> list[SfOp]:
        """The coalesced writes: Opportunities, then Tasks, then Accounts.

        Tasks go before the Account status they describe: a status-transition Task reads the old
        status from the Account, so if a run stops between the two writes, the rerun still sees the old
        status and finds the same Task (by its key). The other order would lose that Task.
        """
        rank = {"Opportunity": 0, "Task": 1, "Account": 2}
        return sorted(self._order, key=lambda o: rank.get(o.sobject, 3))
