"""Pipelines: one Stripe account into the one Salesforce org of a config (issue 26).

A config without `stripe.accounts` is one pipeline, `default`, read with STRIPE_API_KEY: every state written
before pipelines existed is that pipeline's. A config with `stripe.accounts` has a pipeline per account, named
by its id; each has its own cursor, ledger, dead letters, checkpoints, runs and run lock in the one state store.
`--account ACCT` (or STRIPE_SF_ACCOUNT) picks one for a command.
"""

from __future__ import annotations

from dataclasses import dataclass

from stripe_sf_sync.config import DEFAULT_KEY_ENV, Settings
from stripe_sf_sync.errors import ConfigError

DEFAULT_PIPELINE = "default"  # the pipeline of a config without stripe.accounts, and of state from before them


@dataclass(frozen=True)
class Pipeline:
    """One Stripe account into the org: its name in the state, the account (None: the key's own, not named in
    the config), where its key is read from, and whether it is a connected account read with the platform's key
    and the Stripe-Account header."""

    name: str
    account: str | None = None
    key_env: str = DEFAULT_KEY_ENV
    connected: bool = False

    @property
    def stripe_account_header(self) -> str | None:
        """The Stripe-Account header every request of this pipeline sends (a connected account), or None."""
        return self.account if self.connected else None

    @property
    def label(self) -> str:
        """How logs, metrics and reports name it: the account id, or `default`."""
        return self.name


def pipelines(settings: Settings) -> list[Pipeline]:
    """Every pipeline of the config, in its order."""
    if not settings.stripe.accounts:
        return [Pipeline(DEFAULT_PIPELINE)]
    return [Pipeline(a.id, a.id, a.api_key_env, a.connected) for a in settings.stripe.accounts]


def legacy_heir(settings: Settings) -> Pipeline | None:
    """The pipeline that takes over a state written as the single `default` pipeline once the config names its
    accounts: the first account read with STRIPE_API_KEY as its own (the key the single pipeline used); None
    when there is none, or when the config names no accounts (the state is `default`'s already)."""
    return next((p for p in pipelines(settings)
                 if p.name != DEFAULT_PIPELINE and p.key_env == DEFAULT_KEY_ENV and not p.connected), None)


def select(settings: Settings, account: str | None) -> Pipeline:
    """The pipeline `--account` names; with no --account, the only one. A ConfigError says what to choose."""
    every = pipelines(settings)
    names = ", ".join(p.name for p in every)
    if account is None or account == "":
        if len(every) == 1:
            return every[0]
        raise ConfigError([f"this config has {len(every)} Stripe accounts ({names}); choose one"],
                          source="invocation",
                          hint="Add --account ACCT (or set STRIPE_SF_ACCOUNT); `sync --all` runs every one.")
    for p in every:
        if account in (p.name, p.account):
            return p
    if not settings.stripe.accounts:
        raise ConfigError([f"--account {account}: this config names no accounts (stripe.accounts); it has one "
                           "pipeline, read with STRIPE_API_KEY"], source="invocation",
                          hint="Drop --account, or list the accounts under stripe.accounts (docs/accounts.md).")
    raise ConfigError([f"--account {account} is not in stripe.accounts ({names})"], source="invocation",
                      hint="Use one of the listed ids, or add the account to stripe.accounts.")


def chosen(settings: Settings, account: str | None) -> list[Pipeline]:
    """The pipelines a reporting command (status, doctor, dlq list) covers: the one --account names, else all."""
    return [select(settings, account)] if account else pipelines(settings)
