"""What every rule uses: the event's date, checked Salesforce Ids from metadata, Dashboard links."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

from stripe_sf_sync.model import (
    InvoiceFailureChange,
    PaymentChange,
    SubscriptionChange,
)
from stripe_sf_sync.rules.intents import (
    AccountRef,
    Plan,
    RuleContext,
)
from stripe_sf_sync.salesforce_ids import checked_id


def event_date(ts: int) -> date:
    """The UTC date of a Unix timestamp."""
    return datetime.fromtimestamp(ts, tz=UTC).date()


def next_business_day(day: date) -> date:
    """The next Monday-to-Friday after `day` (public holidays are not known here)."""
    nxt = day + timedelta(days=1)
    while nxt.weekday() >= 5:
        nxt += timedelta(days=1)
    return nxt


def _metadata_ids(own: Mapping[str, str], customer: Mapping[str, str] | None) -> tuple[str | None, str | None]:
    """Checked Opportunity and Account Ids from metadata: the object's own first, then its customer's.

    A malformed or wrong-prefix value is treated as absent, so it never reaches SOQL or a URL.
    """
    opp = checked_id(own.get("salesforce_opportunity_id"), "Opportunity")
    acct = checked_id(own.get("salesforce_account_id"), "Account")
    if customer:
        opp = opp or checked_id(customer.get("salesforce_opportunity_id"), "Opportunity")
        acct = acct or checked_id(customer.get("salesforce_account_id"), "Account")
    return opp, acct


def _account_ref(change: SubscriptionChange | PaymentChange | InvoiceFailureChange, acct_id: str | None) -> AccountRef:
    """The change's AccountRef: its Account Id from metadata, else the Account of the Opportunity its own
    metadata names (resolve looks that up with the Opportunity), else its customer's Account."""
    own_acct = checked_id(change.metadata.get("salesforce_account_id"), "Account")
    own_opp = None if own_acct else checked_id(change.metadata.get("salesforce_opportunity_id"), "Opportunity")
    return AccountRef(change.customer_id, acct_id, own_opp)


def _contact_id(own: Mapping[str, str], customer: Mapping[str, str] | None, plan: Plan) -> str | None:
    """The Task's WhoId: `metadata.salesforce_contact_id` (the integration guide's convention), on the object
    first, then on its customer. A value that is not a Contact Id leaves WhoId empty with a warning: the
    Task still matters more than the link."""
    for where, meta in (("the object", own), ("its customer", customer or {})):
        raw = meta.get("salesforce_contact_id")
        if not raw:
            continue
        who = checked_id(raw, "Contact")
        if who:
            return who
        plan.warnings.append(f"metadata.salesforce_contact_id {str(raw)[:40]!r} on {where} is not a Contact Id "
                             "(003…): its Tasks are created without WhoId")
    return None


def _dashboard(ctx: RuleContext, livemode: bool, kind: str, obj_id: str) -> str:
    mode = "" if livemode else "test/"
    return f"{ctx.dashboard_url.rstrip('/')}/{mode}{kind}/{obj_id}"


def _instant(ts: int | None, day: str) -> str:
    """A Unix time as an ISO UTC instant (`2026-12-07T05:05:19Z`), or the day when there is none."""
    if ts is None:
        return day
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
