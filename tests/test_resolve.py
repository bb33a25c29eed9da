"""Intents become record writes: CurrencyIsoCode in multi-currency orgs."""

from decimal import Decimal

import pytest

from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.pipeline.materialize import Materializer, WriteSettings
from stripe_sf_sync.records import AccountRow, LookupRequest, Lookups, OpportunityRow
from stripe_sf_sync.rules import AccountRef, AccountStatusIntent, OpportunityIntent, TaskIntent
from stripe_sf_sync.salesforce.lookups import AccountCache, find, lookup_request

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


# --- the lookup request and the RecordLookup port -------------------------------------------------------

class FakeLookup:
    """A RecordLookup in memory: answers from its rows and records what it was asked."""

    def __init__(self, *accounts: AccountRow) -> None:
        self.accounts = accounts
        self.requests: list[LookupRequest] = []

    def lookup(self, request: LookupRequest, names: FieldNames) -> Lookups:
        self.requests.append(request)
        found = Lookups()
        for row in self.accounts:
            if row.id in request.account_ids or row.customer_id in request.customer_ids:
                found.add_account(row)
        return found


def task(event_id: str, ref: AccountRef, who_id: str | None = None) -> TaskIntent:
    return TaskIntent(event_id, "payment_failed", ref, "owner", "Payment failed", "", "High", "Open", "2026-01-05",
                      who_id=who_id)


def test_the_lookup_request_names_every_id_the_intents_need_and_task_keys_only_in_keyed_orgs():
    intents = [won("eur"), task("evt_2", AccountRef(None, ACCOUNT), who_id="003Hs00000AbCdEIAZ")]
    plain = lookup_request(intents, AccountCache(), task_keyed=False)
    assert plain == LookupRequest(account_ids=frozenset({ACCOUNT}), customer_ids=frozenset({"cus_Euro"}),
                                  subscription_ids=frozenset({"sub_Euro"}),
                                  contact_ids=frozenset({"003Hs00000AbCdEIAZ"}))
    keyed = lookup_request(intents, AccountCache(), task_keyed=True)
    assert keyed.task_keys == frozenset({intents[1].key})


def test_find_reads_through_the_port_then_reuses_the_accounts_it_read():
    row = AccountRow(ACCOUNT, "Euro GmbH", None, None, "active", "cus_Euro")
    port, cache = FakeLookup(row), AccountCache()
    first = find(port, FieldNames(), [won("eur")], cache, task_keyed=False)
    assert first.accounts_by_customer["cus_Euro"] is row and cache.by_customer["cus_Euro"] is row
    again = find(port, FieldNames(), [won("eur"), task("evt_2", AccountRef(None, ACCOUNT))], cache, task_keyed=False)
    # The second batch asks for no Account: both the customer and the Id are in the run's cache.
    assert port.requests[1].customer_ids == frozenset() and port.requests[1].account_ids == frozenset()
    assert again.accounts_by_id == {ACCOUNT: row} and again.accounts_by_customer == {"cus_Euro": row}


def test_find_asks_again_for_customers_without_an_account():
    port, cache = FakeLookup(), AccountCache()
    find(port, FieldNames(), [won("eur")], cache, task_keyed=False)
    find(port, FieldNames(), [won("eur")], cache, task_keyed=False)
    assert [r.customer_ids for r in port.requests] == [frozenset({"cus_Euro"})] * 2


def test_the_run_keeps_a_bounded_number_of_accounts_and_reads_a_forgotten_one_again():
    rows = [AccountRow(f"001Hs00000AbCd{i}IAZ", f"A{i}", None, None, "active", f"cus_{i}") for i in range(3)]
    cache = AccountCache(limit=2)
    for row in rows:
        cache.add(row)
    # The oldest is forgotten (a backfill reads each of 100,000 Accounts once: memory stays flat).
    assert list(cache.by_id) == [rows[1].id, rows[2].id] and set(cache.by_customer) == {"cus_1", "cus_2"}
    request = lookup_request([task("evt_1", AccountRef("cus_0", None)), task("evt_2", AccountRef("cus_2", None))],
                             cache, task_keyed=False)
    assert request.customer_ids == frozenset({"cus_0"})
