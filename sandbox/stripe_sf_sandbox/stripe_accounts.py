"""Several Stripe accounts behind one base URL, as api.stripe.com serves them (issue 26).

A request reaches the account of its key, or, with a `Stripe-Account: acct_…` header, a connected account of the
key's account (docs.stripe.com/connect/authentication). `StripeSandbox.add_account` makes the accounts; this module
decides which one a request reaches and answers `GET /v1/account`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stripe_sf_sandbox.stripe_server import StripeSandbox


def every_account(sandbox: StripeSandbox) -> Iterator[StripeSandbox]:
    """The sandbox whose server answers, then every account added to it."""
    root = sandbox._root
    yield root
    yield from root.accounts


def _masked(key: str) -> str:
    return key[:8] + "*" * max(0, len(key) - 12) + key[-4:]


def key_owner(sandbox: StripeSandbox, key: str) -> StripeSandbox:
    """The account whose key (secret or restricted) `key` is. An unknown key is a 401, as Stripe answers a key it
    never issued ("Invalid API Key provided", observed responses), when the sandbox is strict: `strict_keys`
    True, or None (the default) and accounts were added. A one-account sandbox takes any key of the right prefix
    as its own, for the tests that bring their own key."""
    from stripe_sf_sandbox.stripe_server import StripeApiError

    root = sandbox._root
    for account in every_account(sandbox):
        if not account.connected and (key == account.api_key or key in account.restricted_keys):
            return account
    if root.strict_keys or (root.strict_keys is None and root.accounts):
        raise StripeApiError(401, f"Invalid API Key provided: {_masked(key)}")
    return root


def resolve(sandbox: StripeSandbox, key: str, header: str | None) -> tuple[StripeSandbox, StripeSandbox]:
    """(the key's account, the account the request acts on): the key's own, or the connected account the
    Stripe-Account header names. A header naming an account that is not connected to the key's account is
    refused with Stripe's 403 (`account_invalid`: "The provided key '…' does not have access to account '…' (or
    that account does not exist). Application access may have been revoked.", as Stripe answers it and as
    stripe-php's own tests record it); the SDK raises it as stripe.PermissionError."""
    from stripe_sf_sandbox.stripe_server import StripeApiError

    owner = key_owner(sandbox, key)
    if header is None or header == "" or header == owner.account_id:
        return owner, owner
    for account in every_account(sandbox):
        if account.account_id == header and account.connected and account.platform is owner:
            return owner, account
    raise StripeApiError(403, f"The provided key '{_masked(key)}' does not have access to account '{header}' "
                              "(or that account does not exist). Application access may have been revoked.",
                         code="account_invalid")


def move_log_entry(root: StripeSandbox, target: StripeSandbox, entry: tuple[str, str, dict[str, Any]]) -> None:
    """Log a request in the account that answers it rather than in the sandbox that received it."""
    with root._lock:
        for i in range(len(root.requests_log) - 1, -1, -1):
            if root.requests_log[i] is entry:
                del root.requests_log[i]
                break
    with target._lock:
        target.request_count += 1
        target.requests_log.append(entry)


def account_object(owner: StripeSandbox, target: StripeSandbox, key: str) -> dict[str, Any]:
    """GET /v1/account: the account the request acts on (Stripe API reference, "Retrieve account": with no id,
    the account of the key, or the one the Stripe-Account header names), with the fields a reader of its identity
    needs. A restricted key without the Account read permission gets a 403 (`account_readable = False`)."""
    from stripe_sf_sandbox.stripe_server import StripeApiError

    if not owner.account_readable:
        raise StripeApiError(403, f"The provided key '{key[:8]}***' does not have the required "
                             f"permissions for this endpoint on account '{target.account_id}'.")
    return {"id": target.account_id, "object": "account", "type": "express" if target.connected else "standard",
            "country": "US", "default_currency": "usd", "charges_enabled": True, "details_submitted": True,
            "settings": {"dashboard": {"display_name": "Sandbox Account", "timezone": "Etc/UTC"}}}
