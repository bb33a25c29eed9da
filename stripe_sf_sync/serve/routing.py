"""Which pipelines one `serve` serves, and which of them a delivered event belongs to (issue 26).

Stripe sends a platform's own events to its *account* endpoints and every connected account's events to its
*Connect* endpoints, each such event with a top-level `account`; each endpoint signs with a secret of its own
(docs.stripe.com/connect/webhooks; api/webhook_endpoints: `connect=true`, `secret`). So one `serve` is one
platform: the account whose key it runs with (`home`, the events without `account`) and the connected accounts
read with that same key (each event routed by its `account`). Both endpoints may point at the same URL, their
secrets given together in STRIPE_WEBHOOK_SECRET. A separate account has endpoints and secrets of its own: it
gets a `serve --account ACCT` of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stripe_sf_sync.config import Settings
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.pipelines import Pipeline, pipelines, select

UNCONFIGURED = "unconfigured account"  # the ignored counter's reason: an account stripe.accounts does not name
CONNECTED = "connected account"  # the same, on a config without stripe.accounts (as before pipelines)


@dataclass(frozen=True)
class Served:
    """The pipelines one `serve` drains: `home` (the endpoint's own account; None when the config lists only
    connected accounts) and the connected accounts read with its key. `named`: the config lists its accounts."""

    home: Pipeline | None
    connected: tuple[Pipeline, ...] = ()
    named: bool = False

    @property
    def pipelines(self) -> list[Pipeline]:
        """Every served pipeline, the home one first."""
        return ([self.home] if self.home is not None else []) + list(self.connected)

    @property
    def key_env(self) -> str:
        """The variable of the key every served pipeline is read with (its mode is the events' mode)."""
        return self.pipelines[0].key_env

    def route(self, event: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """The pipeline an authentic event goes to, or why it is acknowledged and not applied (and the account
        it came from, for the log line): (name, None) or (None, reason)."""
        account = event.get("account")
        if not account:
            if self.home is None:
                return None, UNCONFIGURED  # the platform's own events: it is not in stripe.accounts
            return self.home.name, None
        if not self.named:
            return None, CONNECTED  # a config without accounts syncs the key's own account only
        for p in self.pipelines:
            if p.account == account:
                return p.name, None
        return None, UNCONFIGURED


def served(settings: Settings, account: str | None) -> Served:
    """The pipelines `serve` (with `--account`, or None) drains; a ConfigError says what to run instead when the
    config lists several accounts of their own (each has endpoints of its own, signed with their own secrets)."""
    every = pipelines(settings)
    if not settings.stripe.accounts:
        return Served(select(settings, account))  # --account: refused as every command refuses it here
    if account:
        home: Pipeline | None = select(settings, account)
        if home is not None and home.connected:
            platforms = ", ".join(p.name for p in every if not p.connected and p.key_env == home.key_env)
            raise ConfigError([f"--account {account} is a connected account: its events arrive on its "
                               "platform's Connect endpoint, which the platform's `serve` receives"],
                              source="invocation",
                              hint=(f"Run `stripe-sf serve --account {platforms}`: it serves the platform's "
                                    "connected accounts too." if platforms else
                                    "Run `stripe-sf serve` without --account: it serves every connected account "
                                    "read with the same key."))
    else:
        home = _only_own_account(every)
    key_env = home.key_env if home is not None else _connected_key(every)
    connected = tuple(p for p in every if p.connected and p.key_env == key_env and p is not home)
    return Served(home, connected, named=True)


def _only_own_account(every: list[Pipeline]) -> Pipeline | None:
    """The config's one account read as its own, None when it lists only connected ones; several: a usage error."""
    own = [p for p in every if not p.connected]
    if len(own) > 1:
        names = ", ".join(p.name for p in own)
        raise ConfigError([f"this config has {len(own)} Stripe accounts of their own ({names}); each has its own "
                           "webhook endpoints, signed with their own secrets"], source="invocation",
                          hint="Run one `stripe-sf serve --account ACCT` per account (its own --port or host, and "
                               "its endpoints' STRIPE_WEBHOOK_SECRET); each also serves its connected accounts.")
    return own[0] if own else None


def _connected_key(every: list[Pipeline]) -> str:
    """The one key variable of a config that lists only connected accounts (one platform's)."""
    keys = sorted({p.key_env for p in every})
    if len(keys) > 1:
        raise ConfigError([f"the connected accounts in stripe.accounts are read with {len(keys)} keys "
                           f"({', '.join(keys)}): they belong to several platforms"], source="invocation",
                          hint="List each platform with its connected accounts (connected: false for the "
                               "platform), and run one `stripe-sf serve --account PLATFORM` each.")
    return keys[0]
