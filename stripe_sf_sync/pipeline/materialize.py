"""Materializing, pure: a batch's rule intents, with what its lookups found, become coalesced record writes.

Resolution order for an Opportunity: checked metadata Id -> SOQL by Stripe ids -> upsert-create by external id
-> dead letter (integration guide, "Common Pitfalls"). A Task is created once: the batch's Task keys that
already exist were looked up with the other lookups (salesforce/lookups.py), and only the missing Tasks are
created; a Task that exists is never written again. The planned writes (`SfOp`) go to a `RecordWriter`
(ports.py), which answers one `WriteResult` per write.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.mapping import FieldMapping, WriteContext, default_fields, owned_fields
from stripe_sf_sync.records import AccountRow, Lookups, OpportunityRow, SfOp
from stripe_sf_sync.rules import (
    AccountFieldsIntent,
    AccountRef,
    AccountStatusIntent,
    Intent,
    OpportunityIntent,
    TaskIntent,
    transition_task,
)

log = logging.getLogger("stripe_sf_sync")


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
    mapping: FieldMapping = field(default_factory=FieldMapping)  # salesforce.mapping: what is written, who owns it
    stripe_account: str | None = None  # the pipeline's Stripe account id (RuleContext.stripe_account)

    def account_tag(self) -> dict[str, str]:
        """The Stripe account field and its value every Opportunity and Task write carries, when both are known."""
        if self.names.stripe_account is None or self.stripe_account is None:
            return {}
        return {self.names.stripe_account: self.stripe_account}


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
        self._won: set[str] = set()  # Opportunities an earlier event of this batch won
        self._winning: list[str] = []  # this event's, kept only if the event materialises

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
        conflict = self.found.merge_conflicts.get(ref.account_id or "") or self.found.merge_conflicts.get(
            ref.customer_id or "")
        if conflict:  # a link to a merged-away Account whose survivor belongs to another customer
            raise Unresolvable("MERGED_ACCOUNT_CONFLICT", conflict)
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
        if isinstance(it, AccountFieldsIntent):
            return self._account_field_ops(it)
        account = self._account(it.account)
        if isinstance(it, AccountStatusIntent):
            return self._account_ops(it, account)
        assert isinstance(it, TaskIntent)
        return self._task_ops(it, account)

    def _owned(self, sobject: str, computed: dict[str, Any], ctx: WriteContext, source: Mapping[str, Any],
               currency: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        """The fields of `computed` (and the mapping's) this write sends, by who owns each (mapping.py)."""
        roles = default_fields(sobject, self.settings.names)
        sources = {role: computed[name] for name, role in roles.items() if role and name in computed}
        if currency:
            sources["currency"] = currency.upper()
        sources.update(source)
        return owned_fields(sobject, computed, self.settings.mapping, ctx, sources=sources)

    def _opportunity_ops(self, it: OpportunityIntent) -> list[SfOp]:
        names = self.settings.names
        currency = self._currency_field(it)
        pending = self._pending.get((it.key_kind, it.key))
        if pending is not None:
            # Created by an earlier event of this batch, and so won: a later event writes what it would write to
            # that Opportunity in a later batch (its `once` fields stay as created), so batching never matters.
            ctx = WriteContext(False, current={}, forced=it.forced)
            fields, why = self._owned("Opportunity", {**it.fields, **currency}, ctx, it.source, it.currency)
            fields.pop(pending.ext_field or "", None)
            fields.update(self.settings.account_tag())
            return [SfOp(pending.kind, "Opportunity", pending.key, fields, pending.ext_field, label=pending.label,
                         why=why)]
        opp = self._opportunity(it)
        if opp is not None:
            # The win: this intent wins it and Salesforce still has it open (a replay, a backfill or a repair of a
            # won Opportunity is not a win: its `once` fields stay as a rep left them).
            # An earlier event of this batch that won it counts as Salesforce having it closed.
            winning = it.wins and not opp.is_closed and opp.id not in self._won
            if winning:
                self._winning.append(opp.id)
            ctx = WriteContext(False, winning=winning, current=opp.values, forced=it.forced)
            fields, why = self._owned("Opportunity", {**it.fields, **currency}, ctx, it.source, it.currency)
            if not fields:
                return []
            # Tagged on its next write: a record written before the field existed (lookups match it) gets it now.
            fields.update(self.settings.account_tag())
            return [SfOp("update", "Opportunity", opp.id, fields, label=f"Opportunity {opp.id} ({it.key})", why=why)]
        if not it.may_create:
            # A value update of a subscription no Opportunity tracks (it predates the first sync, or its
            # Opportunity was deleted): nothing to update, and no reason to hold back its status and Tasks.
            self._unmatched.append((it.event_id, it.key))
            return []
        account = self._account(it.account)
        ext = names.subscription_id if it.key_kind == "subscription" else names.payment_intent_id
        computed: dict[str, Any] = {"Name": (f"{account.name} - " + it.name_hint.split(" - ", 1)[-1])[:120]
                                    if account.name else it.name_hint[:120], "AccountId": account.id}
        if self.settings.record_type_id:
            computed["RecordTypeId"] = self.settings.record_type_id
        if account.owner_id:
            computed["OwnerId"] = account.owner_id
        computed.update(it.create_only)
        computed.update(it.fields)
        computed.update(currency)
        fields, why = self._owned("Opportunity", computed, WriteContext(True, forced=it.forced), it.source,
                                  it.currency)
        fields.pop(ext, None)  # the external id travels as the upsert key, not in the body
        # An upsert by the Stripe id cannot land on another account's Opportunity: Stripe's object ids are unique
        # across accounts, so no other account's record holds this key (no check needed).
        fields.update(self.settings.account_tag())
        return [SfOp("upsert", "Opportunity", it.key, fields, ext, label=f"Opportunity {ext}={it.key} (create)",
                     why=why)]

    def _account_ops(self, it: AccountStatusIntent, account: AccountRow) -> list[SfOp]:
        names = self.settings.names
        computed: dict[str, Any] = {names.subscription_status: it.status, **it.fields}
        # Unless another Account holds the customer (a merge's survivor found by the id its loser held is linked).
        if (it.account.customer_id and not account.customer_id
                and self.found.accounts_by_customer.get(it.account.customer_id, account) is account):
            computed[names.customer_id] = it.account.customer_id  # link it for later lookups
        fields, why = self._owned("Account", computed, WriteContext(False, current=account.values), it.source)
        ops: list[SfOp] = []
        # The Account already says so (as read this batch, or as an earlier event of it wrote): no write.
        # Compared with what Salesforce holds, so a hand-edited status is still put right.
        unchanged = self._status.get(account.id, account.status) == it.status
        if any(k != names.subscription_status or not unchanged for k in fields):
            ops.append(SfOp("update", "Account", account.id, fields, label=f"Account {account.id} ({account.name})",
                            why=why))
        old = it.previous_status
        if it.previous_from_account:
            old = self._status.get(account.id, account.status) or "unknown"
        if it.log_transition and old is not None and old != it.status:
            ops.extend(self._ops_for(transition_task(it, old)))
        return ops

    def _account_field_ops(self, it: AccountFieldsIntent) -> list[SfOp]:
        """A mark on the Account, when the customer has one (a customer with none has nothing to mark)."""
        try:
            account = self._account(it.account)
        except Unresolvable:
            return []
        return [SfOp("update", "Account", account.id, dict(it.fields), label=f"Account {account.id} ({account.name})")]

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
            return self._task_create(it, fields)
        if any(k in self.found.task_keys for k in it.keys):
            return []  # created by an earlier run (under this key or an earlier version's): what a person did stands
        fields[names.task_event_id] = it.key
        return self._task_create(it, fields)

    def _task_create(self, it: TaskIntent, computed: dict[str, Any]) -> list[SfOp]:
        """A Task is created once and never written again: the mapping adds fields or leaves some out."""
        fields, why = self._owned("Task", computed, WriteContext(True), it.source)
        fields.update(self.settings.account_tag())
        return [SfOp("create", "Task", it.key, fields, label=f"Task {it.key}", why=why)]

    def add_event(self, event_id: str, intents: Sequence[Intent]) -> Unresolvable | None:
        """Materialise one event's intents; all of them or none (then it is dead-lettered)."""
        self._unmatched, self._winning = [], []
        try:
            produced: list[SfOp] = []
            for it in intents:
                produced.extend(self._ops_for(it))
        except Unresolvable as exc:
            return exc
        self.no_opportunity.update(self._unmatched)
        self._won.update(self._winning)
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
        # A field an earlier event writes stays explained by it when a later one leaves it alone.
        existing.why.update({k: v for k, v in op.why.items() if k in op.fields or k not in existing.fields})
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
