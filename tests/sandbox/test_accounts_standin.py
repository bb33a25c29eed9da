"""Several Stripe accounts behind the sandbox's one base URL (issue 26), through the official SDK over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import stripe

from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sandbox.stripe_server import StripeSandbox

T0 = 1_790_000_000


@pytest.fixture
def platform() -> Iterator[StripeSandbox]:
    with StripeSandbox(now=lambda: T0 + 3600) as sb:
        yield sb


def _customer(account: StripeSandbox, name: str) -> tuple[str, str]:
    """A customer created in `account` with its event: (customer id, event id)."""
    f = StripeFactory(account, seed=1)  # the same seed in every account: ids must differ all the same
    cus = f.customer(name, f"{name.lower()}@example.com", created=T0)
    event = f.emit("customer.created", cus, T0)
    return cus["id"], event["id"]


def test_each_account_lists_only_its_own_events_and_objects(platform: StripeSandbox) -> None:
    europe = platform.add_account()
    connected = platform.add_account(connected=True)
    own = {sb.account_id: _customer(sb, name) for sb, name in
           ((platform, "Platform"), (europe, "Europe"), (connected, "Connected"))}
    assert len({cus for cus, _ in own.values()}) == 3  # its own ids, though the factories share a seed
    assert europe.api_key != platform.api_key and connected.api_key == platform.api_key
    for sb in (platform, europe, connected):
        client = sb.client()
        assert [e.id for e in client.v1.events.list()] == [own[sb.account_id][1]]
        assert [c.id for c in client.v1.customers.list()] == [own[sb.account_id][0]]
        assert client.v1.accounts.retrieve_current().id == sb.account_id
    # The platform's key with the header reaches the connected account, and nothing else.
    via_header = stripe.StripeClient(platform.api_key, base_addresses={"api": platform.base_url},
                                     stripe_account=connected.account_id, max_network_retries=0)
    assert [e.id for e in via_header.v1.events.list()] == [own[connected.account_id][1]]
    with pytest.raises(stripe.InvalidRequestError):  # the platform's customer is not the connected account's
        via_header.v1.customers.retrieve(own[platform.account_id][0])


def test_connected_events_carry_the_account_and_the_platforms_do_not(platform: StripeSandbox) -> None:
    connected = platform.add_account(connected=True)
    _customer(platform, "Platform")
    _customer(connected, "Connected")
    assert "account" not in platform.client().v1.events.list().data[0]
    event = connected.client().v1.events.list().data[0]
    assert event["account"] == connected.account_id
    assert connected.events[0]["account"] == connected.account_id  # what a webhook delivers carries it too


def test_the_header_is_refused_for_an_account_not_connected_to_the_key(platform: StripeSandbox) -> None:
    europe = platform.add_account()
    theirs = europe.add_account(connected=True)  # connected to Europe, not to the platform
    for foreign in (europe.account_id, theirs.account_id, "acct_1DoesNotExist"):
        client = stripe.StripeClient(platform.api_key, base_addresses={"api": platform.base_url},
                                     stripe_account=foreign, max_network_retries=0)
        with pytest.raises(stripe.PermissionError) as err:
            client.v1.accounts.retrieve_current()
        assert err.value.http_status == 403 and (err.value.json_body or {})["error"]["code"] == "account_invalid"
        assert f"does not have access to account '{foreign}' (or that account does not exist)" in str(err.value)
    # Europe's key reaches its own connected account.
    assert theirs.client().v1.accounts.retrieve_current().id == theirs.account_id


def test_an_unknown_key_is_refused(platform: StripeSandbox) -> None:
    platform.strict_keys = True  # as it is once accounts are added
    client = stripe.StripeClient("sk_test_" + "x" * 24, base_addresses={"api": platform.base_url},
                                 max_network_retries=0)
    with pytest.raises(stripe.AuthenticationError, match="Invalid API Key provided"):
        client.v1.customers.list()
    platform.strict_keys = None
    platform.add_account()
    with pytest.raises(stripe.AuthenticationError, match="Invalid API Key provided"):
        client.v1.customers.list()


def test_each_account_has_its_own_rate_limit() -> None:
    with StripeSandbox(rate_limit_per_s=0.001) as platform:  # one request, then 429s: no refill in the test
        connected, europe = platform.add_account(connected=True), platform.add_account()
        clients = [sb.client(max_network_retries=0) for sb in (platform, connected, europe)]
        for client in clients:
            client.v1.customers.list()  # each account's first request passes: its own bucket
        for client in clients:
            with pytest.raises(stripe.RateLimitError):
                client.v1.customers.list()
