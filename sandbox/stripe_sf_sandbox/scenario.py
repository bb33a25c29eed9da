"""A small scenario that exercises every mapping rule, shared by `stripe-sf demo` and the tests.

The org is deliberately awkward, as real ones are: the won stage's label is renamed to "Won" while
its API name stays "Closed Won", new Opportunities need a record type, and Accounts have a CSM field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stripe_sf_sandbox.salesforce_server import SalesforceOrg, ValidationRule
from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox

DAY = 86400
WON_STAGE = "Closed Won"  # the API name StageName takes
WON_STAGE_LABEL = "Won"  # renamed by an admin: what people see (Object Reference: OpportunityStage)


@dataclass
class Scenario:
    """Ids the tests assert on."""

    start: int  # a --since that covers every event
    accounts: dict[str, str] = field(default_factory=dict)  # label -> Account Id
    customers: dict[str, str] = field(default_factory=dict)  # label -> cus_
    subscriptions: dict[str, str] = field(default_factory=dict)  # label -> sub_
    payments: dict[str, str] = field(default_factory=dict)  # label -> pi_
    opportunities: dict[str, str] = field(default_factory=dict)  # label -> pre-existing Opportunity Id
    events: list[str] = field(default_factory=list)
    unmatched_events: list[str] = field(default_factory=list)  # events that must dead-letter


# The scenario bills in USD and JPY (and the benchmarks in EUR too): an org without multiple currencies would
# read those amounts as its own currency, so stripe-sf dead-letters them (CURRENCY_MISMATCH).
ORG_CURRENCIES = ("USD", "EUR", "JPY")


# What `stripe-sf sandbox --strict-org` adds, to rehearse salesforce.mapping (docs/mapping.md): a validation rule
# that refuses a new Opportunity without a Type (ISNEW() && ISBLANK(Type)), and a required custom field.
STRICT_RULES = (ValidationRule("Type_Required_On_Create", "Opportunity", "Type",
                               "Choose the Opportunity's Type (New Business, Existing Business)."),)
STRICT_REQUIRED = ("Opportunity.Region__c",)


def awkward_org(*, stripe_sf_fields: bool = True, strict: bool = False) -> SalesforceOrg:
    """A multi-currency org (USD corporate, EUR, JPY) with a renamed won stage label, required record types and
    a CSM field. `stripe_sf_fields=False`: without stripe-sf's custom fields, for `stripe-sf setup` to create.
    `strict`: with STRICT_RULES and STRICT_REQUIRED, which today's Opportunity does not satisfy."""
    return SalesforceOrg(won_stage=WON_STAGE, won_stage_label=WON_STAGE_LABEL, require_record_type=True,
                         csm_field="CSM__c", currencies=ORG_CURRENCIES, stripe_sf_fields=stripe_sf_fields,
                         validation_rules=STRICT_RULES if strict else (),
                         required_fields=STRICT_REQUIRED if strict else ())


def load(stripe: StripeSandbox, org: SalesforceOrg, *, now: int, seed: int = 7) -> Scenario:
    """Seed both stand-ins: Accounts in Salesforce, customers and a week of events in Stripe."""
    f = StripeFactory(stripe, seed=seed)
    t = now - 6 * DAY
    sc = Scenario(start=t - DAY)
    owner = org.user_id("Ava Owner")
    keyed = "Stripe_Customer_ID__c" in org.schema["Account"]  # not in an empty org (`sandbox --empty-org`)
    csm = org.user_id("Cara CSM")

    def account(label: str, name: str, customer: str | None, **extra: str) -> str:
        rec = {"Name": name, "OwnerId": owner, **extra}
        if customer:
            rec["Stripe_Customer_ID__c"] = customer
        sc.accounts[label] = org.insert("Account", rec)
        return sc.accounts[label]

    def customer_with_account(label: str, name: str, **extra: str) -> str:
        """A customer and its Account, matched by the Account's Stripe_Customer_ID__c; in an org without that
        field (before `stripe-sf setup`), by the customer's metadata naming the Account instead."""
        if keyed:
            cus = customer(label, name)
            account(label, name, cus, **extra)
            return cus
        return customer(label, name, salesforce_account_id=account(label, name, None, **extra))

    def customer(label: str, name: str, **metadata: str) -> str:
        cus = f.customer(name, f"billing@{label}.example", metadata=metadata or None, created=t - 30 * DAY)
        sc.customers[label] = cus["id"]
        return str(cus["id"])

    def emit(ev: dict) -> dict:
        sc.events.append(ev["id"])
        return ev

    # Acme: matched by Stripe_Customer_ID__c; monthly plan; no Opportunity yet -> created by upsert.
    acme = customer_with_account("acme", "Acme Corp")
    pro = f.price(99900, "usd", "month", product_name="Pro")
    sub = f.subscription(acme, [(pro, 1)], status="active", created=t)
    sc.subscriptions["acme"] = sub["id"]
    emit(f.subscription_created(sub, t))

    # Globex: Account and Opportunity named in metadata; trial converts to active.
    globex_acct = account("globex", "Globex", None)
    # A rep's Opportunity satisfies the strict org's rules (awkward_org's `strict`).
    strict = {"Type": "New Business", "Region__c": "EMEA"} if org.validation_rules else {}
    opp = org.insert("Opportunity", {"Name": "Globex - Platform deal", "AccountId": globex_acct,
                                     "StageName": "Negotiation", "CloseDate": "2026-12-31",
                                     "RecordTypeId": org.record_type_id("New_Business"), **strict})
    sc.opportunities["globex"] = opp
    globex = customer("globex", "Globex", salesforce_account_id=globex_acct)
    team = f.price(250000, "usd", "year", product_name="Team")
    sub = f.subscription(globex, [(team, 4)], status="trialing", created=t + 3600,
                         metadata={"salesforce_opportunity_id": opp})
    sc.subscriptions["globex"] = sub["id"]
    emit(f.subscription_created(sub, t + 3600))
    emit(f.subscription_updated(sub["id"], {"status": "active"}, t + 2 * DAY))

    # Initech: has a CSM; plan change, payment failure, past_due, scheduled cancel, then cancelled.
    initech = customer_with_account("initech", "Initech", CSM__c=csm)
    basic = f.price(4900, "usd", "month", product_name="Basic")
    seats = f.price(1500, "usd", "month", product_name="Seat")
    sub = f.subscription(initech, [(basic, 1), (seats, 5)], status="active", created=t + 7200)
    sc.subscriptions["initech"] = sub["id"]
    emit(f.subscription_created(sub, t + 7200))
    emit(f.subscription_updated(sub["id"], {"items": [(basic, 1), (seats, 8)]}, t + DAY))
    inv = f.invoice(sub["id"], initech, 4900 + 8 * 1500, "usd", created=t + 3 * DAY)
    emit(f.invoice_payment_failed(inv["id"], t + 3 * DAY, decline_code="insufficient_funds"))
    emit(f.subscription_updated(sub["id"], {"status": "past_due"}, t + 3 * DAY + 60))
    emit(f.subscription_updated(sub["id"], {"cancel_at_period_end": True}, t + 4 * DAY))
    emit(f.subscription_deleted(sub["id"], t + 5 * DAY))

    # Umbrella: a one-time payment in a zero-decimal currency.
    umbrella = customer_with_account("umbrella", "Umbrella KK")
    pi = f.payment_intent(umbrella, 500000, "jpy", status="requires_payment_method", created=t + 4 * DAY)
    sc.payments["umbrella"] = pi["id"]
    emit(f.payment_succeeded(pi["id"], t + 4 * DAY + 30))

    # Hooli: no Salesforce Account at all -> the event is dead-lettered, with its reason.
    hooli = customer("hooli", "Hooli")
    sub = f.subscription(hooli, [(pro, 2)], status="active", created=t + 5 * DAY)
    sc.subscriptions["hooli"] = sub["id"]
    sc.unmatched_events.append(emit(f.subscription_created(sub, t + 5 * DAY))["id"])
    return sc
