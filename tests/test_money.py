from decimal import Decimal

import pytest

from stripe_sf_sync import money
from stripe_sf_sync.money import PriceLine


@pytest.mark.parametrize(("amount", "currency", "expected"), [
    (99900, "usd", Decimal("999.00")),
    (14900, "USD", Decimal("149.00")),
    (5000, "jpy", Decimal("5000")),
    (1500, "kwd", Decimal("1.500")),
    (1, "eur", Decimal("0.01")),
    (10**15, "usd", Decimal("10000000000000.00")),
    (123456, "isk", Decimal("1234.56")),  # special case, still two decimals in the API
])
def test_to_major_uses_currency_exponent(amount, currency, expected):
    result = money.to_major(amount, currency)
    assert result == expected
    assert str(result) == str(expected)  # exact digits, not just equal value
    assert isinstance(result, Decimal)


@pytest.mark.parametrize("bad", [1.5, True, "abc", float("nan")])
def test_to_major_refuses_floats_and_garbage(bad):
    with pytest.raises(ValueError):
        money.to_major(bad, "usd")


@pytest.mark.parametrize("code", ["us", "usdd", "", "u$d", "ÜSD", None])
def test_unknown_currency_codes_are_rejected(code):
    with pytest.raises(ValueError):
        money.exponent(code)


def test_format_amount_keeps_precision():
    assert money.format_amount(Decimal("149"), "usd") == "149.00 USD"
    assert money.format_amount(Decimal("5000"), "jpy") == "5000 JPY"
    assert money.format_amount(Decimal("1.5"), "bhd") == "1.500 BHD"


def line(unit, interval="month", count=1, qty=1, currency="usd", usage="licensed"):
    return PriceLine(None if unit is None else Decimal(unit), currency, interval, count, qty, usage)


def test_mrr_normalises_interval_count_and_quantity():
    assert money.monthly_recurring([line(99900)]) == Decimal("999.00")
    assert money.monthly_recurring([line(120000, "year")]) == Decimal("100.00")
    assert money.monthly_recurring([line(30000, "month", count=3)]) == Decimal("100.00")
    assert money.monthly_recurring([line(1000, "month", qty=5)]) == Decimal("50.00")
    assert money.monthly_recurring([line(1200, "week")]) == Decimal("52.00")
    # summed across items
    assert money.monthly_recurring([line(99900), line(120000, "year", qty=2)]) == Decimal("1199.00")


def test_mrr_zero_decimal_currency():
    assert money.monthly_recurring([line(60000, "year", currency="jpy")]) == Decimal("5000")


def test_mrr_skips_metered_and_refuses_tiered():
    assert money.monthly_recurring([line(1000), line(5, usage="metered")]) == Decimal("10.00")
    assert money.monthly_recurring([line(1000), line(None)]) is None


def test_fractional_unit_amount_decimal_is_exact():
    assert money.monthly_recurring([line("0.5", qty=1000)]) == Decimal("5.00")


def test_period_total_and_arr():
    assert money.period_total([line(99900), line(1000, qty=3)]) == Decimal("1029.00")
    assert money.annual_recurring([line(99900)]) == Decimal("11988.00")
    # a yearly plan: MRR rounds to cents, ARR stays the yearly price
    assert money.monthly_recurring([line(250000, "year", qty=4)]) == Decimal("833.33")
    assert money.annual_recurring([line(250000, "year", qty=4)]) == Decimal("10000.00")


def test_lines_in_several_currencies_are_refused_not_summed():
    # A EUR subscription's items still show their USD-default Price (`currency_options`): summing them
    # with EUR lines would give a number in no currency at all.
    mixed = [line(9000, currency="eur"), line(10000, currency="usd")]
    for total in (money.period_total, money.monthly_recurring, money.annual_recurring):
        with pytest.raises(ValueError, match="several currencies"):
            total(mixed)
    assert money.period_total([line(9000, currency="eur"), line(1000, qty=2, currency="EUR")]) == Decimal("110.00")
