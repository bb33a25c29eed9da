"""Which Salesforce org and Stripe account a state belongs to, and the rules that stop a run from crossing them:
pure (no I/O). The state records both on its first run; every later run that writes compares them first
(service/identity.py), and so never writes one org's or account's data into another, nor live data into a sandbox
or test data into production unless the config allows it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

IDENTITY_KEY = "identity"  # the state's meta key: the recorded identities, as JSON
REBIND_HINT = ("If this is intended (a new org, a new Stripe account), rebind the state: `stripe-sf state rebind` "
               "shows both, `stripe-sf state rebind --yes` records the current ones (docs/configure.md, "
               "\"Which org and account\").")
ACCOUNT_HINT = ("Put the key of that account in the variable (api_key_env), or correct its id under stripe.accounts "
                "(GET /v1/account, or the Dashboard's Settings › Account details, shows a key's account).")
CONNECTED_HINT = ("Check the id under stripe.accounts against the platform's Dashboard (Connected accounts); an "
                  "account of its own, not connected, needs `connected: false` and its key in api_key_env.")
MODE_HINT = ("Point the config at the matching org or key; to write across modes on purpose (a rehearsal), set "
             "salesforce.allow_mode_mismatch: true.")


@dataclass(frozen=True)
class SalesforceIdentity:
    """The org: its Id (Organization.Id, 18 characters) and whether it is a sandbox (Organization.IsSandbox)."""

    org_id: str
    is_sandbox: bool

    def __str__(self) -> str:
        return f"Salesforce org {self.org_id} ({'sandbox' if self.is_sandbox else 'production'})"


@dataclass(frozen=True)
class StripeIdentity:
    """The Stripe account (None when the key may not read it), the key's mode, and a fingerprint of the key (a
    hash, never the key): the same key is the same account, so the account is read again only for a new key."""

    account: str | None
    live: bool
    key: str = ""

    def __str__(self) -> str:
        return f"Stripe account {self.account or '(unknown)'} ({'live' if self.live else 'test'} mode)"


@dataclass(frozen=True)
class Binding:
    """The identities a state is bound to; None until a run has met that side."""

    salesforce: SalesforceIdentity | None = None
    stripe: StripeIdentity | None = None

    def with_salesforce(self, sf: SalesforceIdentity) -> Binding:
        return replace(self, salesforce=sf)

    def with_stripe(self, st: StripeIdentity) -> Binding:
        return replace(self, stripe=st)

    def as_dict(self) -> dict[str, Any]:
        """For the state and for `--json`: None for a side not met yet."""
        return {"salesforce": asdict(self.salesforce) if self.salesforce else None,
                "stripe": {k: v for k, v in asdict(self.stripe).items() if k != "key"} if self.stripe else None}

    def dumps(self) -> str:
        return json.dumps({"salesforce": asdict(self.salesforce) if self.salesforce else None,
                           "stripe": asdict(self.stripe) if self.stripe else None}, sort_keys=True)


def loads(raw: str | None) -> Binding:
    """The recorded binding (an empty one for a state that has none, or one written by a newer version)."""
    try:
        data = json.loads(raw) if raw else {}
        sf, st = data.get("salesforce"), data.get("stripe")
        return Binding(SalesforceIdentity(str(sf["org_id"]), bool(sf["is_sandbox"])) if sf else None,
                       StripeIdentity(st.get("account"), bool(st["live"]), str(st.get("key") or "")) if st else None)
    except (ValueError, KeyError, TypeError, AttributeError):
        return Binding()


def key_is_live(api_key: str) -> bool | None:
    """The mode a Stripe key belongs to, from its prefix (Stripe docs, "API keys": sk_live_/rk_live_ are live,
    sk_test_/rk_test_ test); None for a key of neither shape."""
    if api_key.startswith(("sk_live_", "rk_live_")):
        return True
    if api_key.startswith(("sk_test_", "rk_test_")):
        return False
    return None


def key_fingerprint(api_key: str, stripe_account: str | None = None) -> str:
    """A short hash of the key, kept in the state instead of the key; with a connected account's Stripe-Account
    header, of both (the platform's key reaches another account with it)."""
    seed = api_key if not stripe_account else f"{api_key}|{stripe_account}"
    return hashlib.sha256(seed.encode()).hexdigest()[:16]


def same_org(a: str, b: str) -> bool:
    """Whether two org Ids name one org (15 or 18 characters, as Salesforce gives either)."""
    return a[:15] == b[:15]


def salesforce_problem(recorded: SalesforceIdentity | None, current: SalesforceIdentity) -> str | None:
    """Why writing into `current` would cross orgs, or None."""
    if recorded is None or same_org(recorded.org_id, current.org_id):
        return None
    return (f"This state belongs to {recorded}, but the credentials reach {current}: a sandbox refreshed from "
            "production, or a state file copied from another installation, would write one org's history into "
            "another")


def stripe_problem(recorded: StripeIdentity | None, current: StripeIdentity) -> str | None:
    """Why reading `current` would cross Stripe accounts or modes, or None."""
    if recorded is None:
        return None
    if recorded.live != current.live:
        return f"This state belongs to {recorded}, but STRIPE_API_KEY is a {_mode(current.live)}-mode key"
    if recorded.account and current.account and recorded.account != current.account:
        return f"This state belongs to {recorded}, but STRIPE_API_KEY belongs to {current}"
    return None


def account_problem(named: str | None, key_env: str, connected: bool, current: StripeIdentity) -> str | None:
    """Why the key of a pipeline (and its Stripe-Account header) reaching `current` is not the account the config
    names for it (`named`), or None (no account named, or one the key may not read)."""
    if named is None or current.account is None or current.account == named:
        return None
    if connected:
        return f"{key_env} with Stripe-Account: {named} reaches {current.account}, not {named}"
    return f"{key_env} belongs to {current.account}, not {named} as stripe.accounts says"


def mode_problem(stripe: StripeIdentity, salesforce: SalesforceIdentity, *, allowed: bool) -> str | None:
    """A live key writing into a sandbox org, or a test key into production: refused unless `allowed`."""
    if allowed or stripe.live != salesforce.is_sandbox:
        return None
    return (f"A {_mode(stripe.live)}-mode Stripe key would write into {salesforce}: "
            + ("live customers' data into a sandbox" if stripe.live else "test data into production"))


def _mode(live: bool) -> str:
    return "live" if live else "test"
