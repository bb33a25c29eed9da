"""Intents become record writes: CurrencyIsoCode in multi-currency orgs."""

from decimal import Decimal

import pytest

from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.resolve import AccountRow, Lookups, Materializer, OpportunityRow, WriteSettings
from stripe_sf_sync.rules import AccountRef, AccountStatusIntent, OpportunityIntent

ACCOUNT = "001Hs00000CmAbcIAE"
OPP = "006Hs00000BkXyzIAF"


def lookups(*, existing_opportunity: bool = False) -> Lookups:
    found = Lookups()
    found.add_account(AccountRow(ACCOUNT, "Euro GmbH", None, None, None, "cus_Euro"))
    if existing_opportunity:
        found.opps_by_subscription["sub_Euro"] = OpportunityRow(OPP, ACCOUNT, "sub_Euro", None, "cus_Euro", False, "")
    return found


def won(currency: str | None, event_id: str = "evt_1") -> OpportunityIntent:
    return OpportunityIntent(event_id, "subscription", "sub_Euro", None, False, AccountRef("cus_Euro", None),
                             {"StageName": "Won", "CloseDate": "2026-01-05", "Amount": Decimal("180.00")},
                             "Euro GmbH - Subscription sub_Euro", may_create=True, currency=currency)


def settings(currencies: frozenset[str] | None) -> WriteSettings:
    return WriteSettings(FieldNames(), None, True, currencies=currencies)


def test_single_currency_org_writes_no_currency_iso_code():
    mat = Materializer(lookups(), settings(None))
    assert mat.add_event("evt_1", [won("eur")]) is None
    [op] = mat.result()
    assert "CurrencyIsoCode" not in op.fields and op.fields["Amount"] == Decimal("180.00")


@pytest.mark.parametrize("existing", [False, True])
def test_multi_currency_org_names_the_currency_on_creates_updates_and_coalesced_writes(existing):
    mat = Materializer(lookups(existing_opportunity=existing), settings(frozenset({"USD", "EUR"})))
    assert mat.add_event("evt_1", [won("eur")]) is None
    assert mat.add_event("evt_2", [won("eur", "evt_2")]) is None  # same record later in the batch
    [op] = mat.result()
    assert op.kind == ("update" if existing else "upsert")
    assert op.fields["CurrencyIsoCode"] == "EUR" and op.events == ["evt_1", "evt_2"]


def test_currency_the_org_lacks_dead_letters_the_whole_event_before_any_write():
    mat = Materializer(lookups(), settings(frozenset({"USD", "GBP"})))
    status = AccountStatusIntent("evt_1", AccountRef("cus_Euro", None), "sub_Euro", "active", None,
                                 log_transition=False, activity_date="2026-01-05")
    err = mat.add_event("evt_1", [status, won("eur")])
    assert err is not None and err.code == "CURRENCY_NOT_ACTIVE"
    assert "EUR" in err.reason and "GBP, USD" in err.reason
    assert "Setup > Company Information > Currencies" in err.reason and "stripe-sf dlq retry --all" in err.reason
    assert mat.result() == []
