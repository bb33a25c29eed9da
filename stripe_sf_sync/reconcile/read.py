"""reconcile's reading edge: Stripe's list endpoints (as backfill reads them) and Salesforce's SOQL pages,
a page at a time into the spill (spill.Spill).

What Salesforce should hold comes from the pipeline itself: each listed object becomes backfill's synthetic
event and goes through the batch step's planning (pipeline/plan.py's `plan_events`: parse → guard → hydrate →
plan, with the batch step's hydrator: an invoice's payment, a Price's amount in the billed currency), so
reconcile can never disagree with sync.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from stripe_sf_sync import mrr, rules
from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.pipeline.events import HeldEvent, dead_letter, outcome_id
from stripe_sf_sync.pipeline.plan import plan_events
from stripe_sf_sync.pipeline.stop import Aborted, Stop
from stripe_sf_sync.reconcile.spill import Spill, sf_decimal, text
from stripe_sf_sync.rules.status import status_rank
from stripe_sf_sync.salesforce.gateway import SalesforceGateway
from stripe_sf_sync.salesforce.lookups import account_filter
from stripe_sf_sync.salesforce_ids import to_18
from stripe_sf_sync.sources.synthetic import relevant, slim, synthetic_event
from stripe_sf_sync.state import Outcome
from stripe_sf_sync.stripe.hydrator import StripeHydrator
from stripe_sf_sync.stripe.source import StripeSource

Computed = tuple[rules.Plan | None, str | None]  # (the rules' plan, or why the object cannot be planned)
# Customers that Accounts name and no listed object showed: read one by one up to this many, else listed.
LOOKUP_AT_MOST = 100
# A customer id typed into Salesforce reaches a URL path only with a customer id's shape (design.md invariant 5).
_CUSTOMER_ID = re.compile(r"cus_[A-Za-z0-9]{1,250}")


def check_stop(stop: Stop | None) -> None:
    """Stop reading at a page boundary when a signal asked for it (pipeline/stop.py): reading writes nothing and
    a partial comparison would report drift that is not there, so the run ends with the signal's exit code."""
    if stop is not None and stop.requested:
        raise Aborted(str(stop.signal), int(stop.exit_code or 130))


class StripeReader:
    """Lists Stripe's objects and spills each with what the rules say Salesforce should hold."""

    def __init__(self, source: StripeSource, hydrator: StripeHydrator, ctx: rules.RuleContext, *, tag: str,
                 read_at: int, since: int, stop: Stop | None = None) -> None:
        self._source = source
        self._stop = stop
        self._hydrator = hydrator
        self._ctx = ctx
        self._tag = tag
        self._read_at = read_at
        self.since = since

    def _plans(self, kind: str, objects: Sequence[dict[str, Any]]) -> list[Computed]:
        """The rules' plan for each object (in order), made by the batch step's planning of its backfill event:
        with no history (every event new, none stale), and without the Account's MRR (compare.py sums it from
        the listed subscriptions: no read per customer). No plan for an object the rules ignore."""
        held = [HeldEvent.of(synthetic_event(kind, o, tag=self._tag, read_at=self._read_at,
                                             api_version=self._source.api_version)) for o in objects]
        with self._hydrator.without_account_mrr():
            planning = plan_events(held, _NoHistory(), self._hydrator, self._ctx, on_error=_unverifiable, quiet=True)
        plans = {outcome_id(h): plan for h, _, plan in planning.planned}
        problems = {o.event_id: o.reason for o in planning.result.outcomes if o.kind == "dead_letter"}
        return [(plans.get(outcome_id(h)), problems.get(outcome_id(h))) for h in held]

    def subscriptions(self, spill: Spill, names: FieldNames) -> None:
        """Every subscription (status=all), with the won Opportunity's values the rules give it."""
        for page in self._source.list_pages("subscriptions", since=self.since, until=None):
            rows = []
            for obj, (plan, problem) in zip(page, self._plans("subscriptions", page), strict=True):
                spill.seq += 1
                opp = _opportunity_fields(plan)
                cust = obj.get("customer")
                _known_customer(spill, cust)
                rank = status_rank(obj)  # a subscription without a customer decides no Account
                running, created = rank[1:] if rank else (0, 0)
                rows.append((obj["id"], spill.seq, cust.get("id") if isinstance(cust, dict) else cust,
                             str(obj.get("status")), obj.get("currency"), text(opp.get("Amount")),
                             text(opp.get(names.mrr)), text(opp.get(names.arr)), int(bool(opp)),
                             running, problem, json.dumps(slim("subscriptions", obj), separators=(",", ":")),
                             int(mrr.counted_by_stripe(obj)), created))
            spill.put("subs", rows)
            check_stop(self._stop)

    def payment_intents(self, spill: Spill) -> None:
        """Every PaymentIntent (for ids Stripe knows); a succeeded one with its one-time payment's values."""
        for page in self._source.list_pages("payment_intents", since=self.since, until=None):
            kept = [o for o in page if relevant("payment_intents", o)]
            planned = dict(zip((o["id"] for o in kept), self._plans("payment_intents", kept), strict=True))
            rows = []
            for obj in page:
                plan, problem = planned.get(obj["id"], (None, None))
                opp = _opportunity_fields(plan)
                cust = obj.get("customer")
                _known_customer(spill, cust)
                rows.append((obj["id"], cust.get("id") if isinstance(cust, dict) else cust, obj.get("currency"),
                             text(opp.get("Amount")), int(bool(opp)), problem,
                             json.dumps(slim("payment_intents", obj), separators=(",", ":"))
                             if obj["id"] in planned else None))
            spill.put("pis", rows)
            check_stop(self._stop)

    def account_customers(self, spill: Spill) -> None:
        """Whether Stripe knows the customers that Accounts name and no listed object showed (expanded, not
        deleted): each read on its own while they are few (a deleted or unknown one reads as missing), else
        the whole customer list, a hundred a call."""
        sql = ("SELECT DISTINCT a.customer FROM accounts a WHERE NOT EXISTS "
               "(SELECT 1 FROM customers c WHERE c.id = a.customer) LIMIT ?")
        unseen = [row[0] for row in spill.rows(sql, (LOOKUP_AT_MOST + 1,))]
        if len(unseen) > LOOKUP_AT_MOST:
            self.customers(spill)
            return
        for customer_id in unseen:
            if _CUSTOMER_ID.fullmatch(customer_id) and self._source.customer(customer_id) is not None:
                spill.put("customers", [(customer_id,)])
            check_stop(self._stop)

    def customers(self, spill: Spill) -> None:
        """Every customer id Stripe lists (deleted customers are not listed), through the one pager."""
        for page in self._source.customer_pages(created={"gte": self.since}):
            spill.put("customers", [(o["id"],) for o in page])
            check_stop(self._stop)


class _NoHistory:
    """The ledger reconcile plans with: it knows no event and no object's version, so every synthetic event is
    planned from its object's current state, whatever sync applied before (reconcile writes nothing)."""

    def outcomes_for(self, event_ids: Sequence[str]) -> dict[str, str]:
        """No event is recorded."""
        return {}

    def versions_for(self, object_ids: Iterable[str]) -> dict[str, int]:
        """No object has a version: no event is stale."""
        return {}


def _unverifiable(held: HeldEvent, exc: Exception) -> Outcome:
    """The rules refuse, with a ValueError, what they cannot compute (items priced in several currencies, an
    unknown interval): sync dead-letters such an event, and reconcile reports its object as unverifiable, with
    the reason. Anything else is a bug: it stops the reconcile rather than report drift that is not there."""
    if isinstance(exc, ValueError):
        return dead_letter(held, str(exc), "UNVERIFIABLE")
    raise exc


def _known_customer(spill: Spill, customer: Any) -> None:
    """A customer a listed object showed expanded, unless it is deleted (then it is a stub: {id, deleted})."""
    if isinstance(customer, dict) and isinstance(customer.get("id"), str) and customer.get("deleted") is not True:
        spill.put("customers", [(customer["id"],)])


def _opportunity_fields(plan: rules.Plan | None) -> dict[str, Any]:
    """The fields of the plan's won Opportunity ({} when the rules want none)."""
    for intent in plan.intents if plan else ():
        if isinstance(intent, rules.OpportunityIntent):
            return dict(intent.fields)
    return {}


def soql_pages(gw: SalesforceGateway, soql: str) -> Iterator[list[dict[str, Any]]]:
    """The records of a SOQL query, a page (up to 2,000 records) at a time, through the gateway's one pager:
    each page retried on its own by the gateway's policy instead of the whole query."""
    return gw.pages(soql, what="a reconcile query")


def read_salesforce(spill: Spill, gw: SalesforceGateway, names: FieldNames, *, multi_currency: bool,
                    accounts: bool, stop: Stop | None = None, stripe_account: str | None = None) -> None:
    """The Opportunities that carry a Stripe subscription or PaymentIntent id (with `stripe_account` and
    names.stripe_account: none tagged with another Stripe account, issue 26), and the Accounts that carry a
    Stripe customer id (never filtered by account: one Account may hold customers of several). A multi-currency
    org says each Opportunity's currency (CurrencyIsoCode); a single-currency org has no such field, and asking
    for it fails (api-facts.md §12)."""
    currency = ", CurrencyIsoCode" if multi_currency else ""
    # Field names come from validated config (an identifier pattern), never from Stripe; the account is escaped.
    soql = (f"SELECT Id, StageName, IsWon, Amount, {names.mrr}, {names.arr}, {names.subscription_id}, "  # noqa: S608
            f"{names.payment_intent_id}{currency} FROM Opportunity "
            f"WHERE ({names.subscription_id} != null OR {names.payment_intent_id} != null)"
            f"{account_filter(names, stripe_account)}")
    for records in soql_pages(gw, soql):
        spill.put("opps", [(to_18(r["Id"]), r.get("StageName"), int(bool(r.get("IsWon"))),
                            text(sf_decimal(r.get("Amount"))), text(sf_decimal(r.get(names.mrr))),
                            text(sf_decimal(r.get(names.arr))), r.get(names.subscription_id) or None,
                            r.get(names.payment_intent_id) or None, r.get("CurrencyIsoCode")) for r in records])
        check_stop(stop)
    if not accounts:
        return
    account_mrr = f", {names.account_mrr}" if names.account_mrr else ""
    soql = (f"SELECT Id, Name, {names.subscription_status}, {names.customer_id}{account_mrr} FROM Account "  # noqa: S608
            f"WHERE {names.customer_id} != null")
    for records in soql_pages(gw, soql):
        spill.put("accounts", [(to_18(r["Id"]), r.get("Name"), r.get(names.subscription_status),
                                r.get(names.customer_id),
                                text(sf_decimal(r.get(names.account_mrr))) if names.account_mrr else None)
                               for r in records])
        check_stop(stop)
    _read_merged_accounts(spill, gw, names, stop)


def _read_merged_accounts(spill: Spill, gw: SalesforceGateway, names: FieldNames, stop: Stop | None) -> None:
    """A customer whose Account was merged into one holding no customer id: the survivor is its Account now,
    as sync finds it (salesforce/merges.py). Merged-away Accounts only answer queryAll."""
    mrr = f", MasterRecord.{names.account_mrr}" if names.account_mrr else ""
    # Field names come from validated config (an identifier pattern), never from Stripe.
    soql = (f"SELECT {names.customer_id}, MasterRecord.Id, MasterRecord.Name, "  # noqa: S608
            f"MasterRecord.{names.subscription_status}, MasterRecord.{names.customer_id}, MasterRecord.IsDeleted"
            f"{mrr} FROM Account WHERE IsDeleted = true AND MasterRecordId != null AND {names.customer_id} != null")
    for records in gw.pages(soql, include_archived=True, what="a reconcile query"):
        survivors = [(r[names.customer_id], m) for r in records if isinstance(m := r.get("MasterRecord"), dict)
                     and not m.get("IsDeleted") and not m.get(names.customer_id)]
        spill.put("accounts", [(to_18(m["Id"]), m.get("Name"), m.get(names.subscription_status), customer,
                                text(sf_decimal(m.get(names.account_mrr))) if names.account_mrr else None)
                               for customer, m in survivors])
        check_stop(stop)
