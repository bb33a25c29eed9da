"""Pipelines (issue 26): a config's Stripe accounts, and which one a command acts on."""

from __future__ import annotations

import pytest

from stripe_sf_sync.config import parse_settings
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.pipelines import DEFAULT_PIPELINE, Pipeline, legacy_heir, pipelines, select
from stripe_sf_sync.stripe.http import build_client

# Made-up keys, shaped as Stripe's are (the config and the log redaction check the shape): no real key.
FAKE_TEST_KEY = "sk_test_" + "made_up_for_tests"
FAKE_LIVE_KEY = "sk_live_" + "made_up_for_tests"
ACCOUNTS = {"stripe": {"accounts": [{"id": "acct_1Brand"}, {"id": "acct_1Europe", "api_key_env": "STRIPE_API_KEY_EU"},
                                    {"id": "acct_1Connected", "connected": True}]}}


def test_a_config_without_accounts_is_the_single_default_pipeline():
    settings = parse_settings({})
    assert pipelines(settings) == [Pipeline(DEFAULT_PIPELINE)]
    assert select(settings, None).key_env == "STRIPE_API_KEY" and legacy_heir(settings) is None
    with pytest.raises(ConfigError, match="names no accounts"):
        select(settings, "acct_1Other")


def test_each_account_is_a_pipeline_with_its_key_and_header():
    settings = parse_settings(ACCOUNTS)
    brand, europe, connected = pipelines(settings)
    assert (brand.name, brand.key_env, brand.stripe_account_header) == ("acct_1Brand", "STRIPE_API_KEY", None)
    assert europe.key_env == "STRIPE_API_KEY_EU" and europe.stripe_account_header is None
    assert connected.key_env == "STRIPE_API_KEY" and connected.stripe_account_header == "acct_1Connected"
    assert select(settings, "acct_1Europe") == europe
    assert legacy_heir(settings) == brand  # the single pipeline's state goes to STRIPE_API_KEY's own account


def test_several_accounts_need_a_choice_and_an_unknown_one_is_named():
    settings = parse_settings(ACCOUNTS)
    with pytest.raises(ConfigError) as no_choice:
        select(settings, None)
    assert "--account" in (no_choice.value.hint or "") and "acct_1Europe" in no_choice.value.problems[0]
    with pytest.raises(ConfigError, match=r"acct_1Nope is not in stripe\.accounts"):
        select(settings, "acct_1Nope")


@pytest.mark.parametrize(("accounts", "message"), [
    ([{"id": "acct_1A"}, {"id": "acct_1A"}], "listed twice: acct_1A"),
    ([{"id": "cus_1A"}], "stripe.accounts"),
    ([{"id": "acct_1A", "api_key_env": "lower"}], "api_key_env"),
    ([{"id": "acct_1A", "key": FAKE_TEST_KEY}], "key"),
])
def test_a_bad_accounts_list_is_refused(accounts, message):
    with pytest.raises(ConfigError) as refused:
        parse_settings({"stripe": {"accounts": accounts}})
    assert message in " ".join(refused.value.problems)


def test_a_connected_pipeline_sends_the_stripe_account_header():
    client, _ = build_client(FAKE_TEST_KEY, api_base=None, api_version="2026-10-28.endive", timeout=5,
                             stripe_account="acct_1Connected")
    requestor = client._requestor  # the SDK's: its options carry the header for every request
    assert requestor._options.stripe_account == "acct_1Connected"
    plain, _ = build_client(FAKE_TEST_KEY, api_base=None, api_version="2026-10-28.endive", timeout=5)
    assert plain._requestor._options.stripe_account is None


def test_every_accounts_key_is_redacted_from_logs_and_lines_name_the_account():
    import io
    import logging

    from stripe_sf_sync.logs import bind_run, setup_logging

    out = io.StringIO()
    setup_logging("plain", stream=out, env={"STRIPE_API_KEY_EU": FAKE_LIVE_KEY, "OTHER": "x"})
    bind_run(7, "acct_1Europe")
    logging.getLogger("stripe_sf_sync").warning(f"key {FAKE_LIVE_KEY} refused")
    line = out.getvalue()
    assert FAKE_LIVE_KEY not in line and "***" in line and "[acct_1Europe] key" in line
    setup_logging("json", stream=out)  # a new command binds no run
    logging.getLogger("stripe_sf_sync").warning("next")
    assert '"account"' not in out.getvalue().splitlines()[-1]
