"""A run's identity check, before its first write: the Stripe account and mode, and the Salesforce org, when the run
first connects to Salesforce, each against what the state recorded (identity.py's rules). The first run records
them; a dry run's state records nothing, and refuses all the same. `recorded_run` is its one caller in a run;
`state rebind`, `doctor` and `status` read the same binding."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from stripe_sf_sync.config import LoadedConfig
from stripe_sf_sync.errors import ConfigError, ExitCode, IdentityError
from stripe_sf_sync.identity import (
    ACCOUNT_HINT,
    CONNECTED_HINT,
    IDENTITY_KEY,
    MODE_HINT,
    REBIND_HINT,
    Binding,
    SalesforceIdentity,
    StripeIdentity,
    account_problem,
    key_fingerprint,
    key_is_live,
    loads,
    mode_problem,
    salesforce_problem,
    stripe_problem,
)
from stripe_sf_sync.pipelines import Pipeline
from stripe_sf_sync.salesforce.gateway import SalesforceGateway
from stripe_sf_sync.salesforce.org import ORG_CACHE_KEY, ORG_IDENTITY_SOQL, OrgCheck, org_identity
from stripe_sf_sync.service.runtime import Environment, Runtime, clients
from stripe_sf_sync.stripe.objects import AccountUnreachable
from stripe_sf_sync.stripe.source import StripeSource

log = logging.getLogger("stripe_sf_sync")


def recorded_binding(state: Any) -> Binding:
    """What the state is bound to (an empty binding before the first run)."""
    return loads(state.get_meta(IDENTITY_KEY))


def current_stripe(recorded: Binding, source: StripeSource, api_key: str,
                   pipeline: Pipeline | None = None) -> StripeIdentity | None:
    """The Stripe account and mode of `api_key` (with a connected pipeline's Stripe-Account header): the account is
    read (GET /v1/account, one call) only for a key the state has not seen; None for a key whose prefix names no
    mode. An IdentityError when Stripe refuses the header (the account is not connected to the key's platform)."""
    live = key_is_live(api_key)
    if live is None:
        return None
    header = pipeline.stripe_account_header if pipeline is not None else None
    fingerprint = key_fingerprint(api_key, header)
    seen = recorded.stripe
    try:
        account = seen.account if seen is not None and seen.key == fingerprint else source.own_account()
    except AccountUnreachable as exc:
        key_env = pipeline.key_env if pipeline is not None else "STRIPE_API_KEY"
        raise IdentityError(f"{header} is not a connected account of the platform whose key is in {key_env}, or "
                            f"does not exist: Stripe refused the Stripe-Account header ({exc}). Nothing was read "
                            "or written.", hint=CONNECTED_HINT) from None
    if account is None:
        log.warning("STRIPE_API_KEY may not read its own account (GET /v1/account): the Stripe account this state "
                    "belongs to is not checked, only its mode. Give the restricted key read access to Account.")
    return StripeIdentity(account, live, fingerprint)


class IdentityGuard:
    """Stops a run that would cross orgs, accounts or modes, and records the identities the first time."""

    def __init__(self, state: Any, loaded: LoadedConfig, source: StripeSource, api_key: str,
                 pipeline: Pipeline | None = None) -> None:
        self._state = state
        self._pipeline = pipeline
        self._allowed = loaded.settings.salesforce.allow_mode_mismatch
        self._source = source
        self._api_key = api_key
        self.binding = recorded_binding(state)
        self.stripe: StripeIdentity | None = None

    def check_stripe(self) -> None:
        """Raise IdentityError for another Stripe account or mode; record a first one."""
        self.stripe = current_stripe(self.binding, self._source, self._api_key, self._pipeline)
        if self.stripe is None:
            return
        p = self._pipeline
        wrong = account_problem(p.account, p.key_env, p.connected, self.stripe) if p is not None else None
        if wrong:
            raise IdentityError(f"{wrong}. Nothing was read or written.", hint=ACCOUNT_HINT)
        problem = stripe_problem(self.binding.stripe, self.stripe)
        if problem:
            raise IdentityError(f"{problem}. Nothing was written.", hint=REBIND_HINT)
        if self.binding.stripe != self.stripe:
            self._record(self.binding.with_stripe(self.stripe))

    def check_new_key(self) -> None:
        """A key the state has not seen, for a state bound to an account, is checked before anything is read:
        the cursor names an event of that account, and read on another account it means nothing (an empty
        list would report the backlog as current). The same key costs nothing here. A pipeline that names its
        account (stripe.accounts) is checked before its first read too, so that it never reads another account."""
        seen = self.binding.stripe
        header = self._pipeline.stripe_account_header if self._pipeline is not None else None
        named = self._pipeline is not None and self._pipeline.account is not None
        if named or (seen is not None and seen.key != key_fingerprint(self._api_key, header)):
            self.check_stripe()

    def connect(self, factory: Callable[[], SalesforceGateway], org: OrgCheck) -> Callable[[], SalesforceGateway]:
        """`factory`, whose gateway is checked to reach the state's org (in the mode the key allows) before it is
        handed to the run."""
        def make() -> SalesforceGateway:
            self.check_stripe()
            gw = factory()
            current = gw.org_seen or org.identity(gw)
            if current is not None:
                self.check_salesforce(current)
                gw.org_seen = current
            return gw
        return make

    def check_salesforce(self, current: SalesforceIdentity) -> None:
        """Raise IdentityError for another org, or a mode the config does not allow; record a first org."""
        problem = salesforce_problem(self.binding.salesforce, current)
        if problem:
            raise IdentityError(f"{problem}. Nothing was written.", hint=REBIND_HINT)
        if self.stripe is not None:
            crossing = mode_problem(self.stripe, current, allowed=self._allowed)
            if crossing:
                raise IdentityError(f"{crossing}. Nothing was written.", hint=MODE_HINT)
        if self.binding.salesforce != current:
            self._record(self.binding.with_salesforce(current))

    def _record(self, binding: Binding) -> None:
        self.binding = binding
        self._state.set_meta(IDENTITY_KEY, binding.dumps())


# A doctor line: area, name, status, message, fix, exit code.
Finding = tuple[Literal["salesforce", "stripe"], str, Literal["ok", "warning", "error"], str, str, int]


def identity_findings(recorded: Binding, sf: SalesforceIdentity | None, stripe: StripeIdentity | None, *,
                      allowed: bool) -> list[Finding]:
    """`doctor`'s lines: the org and the account the credentials reach, against the state's, and their modes."""
    out: list[Finding] = []
    sides: list[tuple[Literal["salesforce", "stripe"], str, Any, Any, str | None]] = [
        ("salesforce", "org", sf, recorded.salesforce, salesforce_problem(recorded.salesforce, sf) if sf else None),
        ("stripe", "account", stripe, recorded.stripe, stripe_problem(recorded.stripe, stripe) if stripe else None)]
    for area, name, current, seen, problem in sides:
        if current is None:
            continue
        if problem:
            out.append((area, name, "error", str(problem), _sentence(REBIND_HINT), int(ExitCode.IDENTITY)))
        else:
            whose = "as the state records" if seen is not None else "not recorded yet: the next run records it"
            out.append((area, name, "ok", f"{current}, {whose}", "", int(ExitCode.OK)))
    if sf is not None and stripe is not None:
        crossing = mode_problem(stripe, sf, allowed=False)
        if crossing and not allowed:
            out.append(("stripe", "mode", "error", crossing, _sentence(MODE_HINT), int(ExitCode.IDENTITY)))
        elif crossing:
            out.append(("stripe", "mode", "warning", f"{crossing.split(':')[0]}, as salesforce.allow_mode_mismatch "
                        "allows", "set it to false once the rehearsal is over", int(ExitCode.OK)))
    return out


def _sentence(hint: str) -> str:
    return hint[:1].lower() + hint[1:].rstrip(".")


def run_state_rebind(config_path: Path | None, environment: Environment, *, yes: bool) -> dict[str, Any]:
    """`stripe-sf state rebind`: the org and account the state is bound to, and those the credentials reach now
    (one Organization query, and GET /v1/account for a key the state has not seen); with `yes`, the state is
    bound to the latter (under the run lock). Without `yes`, a binding that would change is refused (exit 2) so
    that no script rebinds without a person saying so."""
    runtime = Runtime(config_path, environment)
    source, sf_factory = clients(runtime)
    with runtime.open_state(create=False) as state:
        state.acquire_lock()
        recorded = recorded_binding(state)
        stripe_now = current_stripe(Binding(), source, runtime.stripe_key(), runtime.pipeline)
        current = Binding(org_identity({"records": sf_factory().query(ORG_IDENTITY_SOQL)}), stripe_now)
        changed = current != recorded
        result = {"recorded": recorded.as_dict(), "current": current.as_dict(), "changed": changed,
                  "rebound": bool(changed and yes)}
        if not changed or not yes:
            if changed:
                raise ConfigError(["the state would be bound to " + _named(current) + " instead of "
                                   + _named(recorded)], source="invocation",
                                  hint="Run `stripe-sf state rebind --yes` to record them, once you are sure "
                                       "these credentials are the ones this state's runs should use.")
            return result
        state.set_meta(IDENTITY_KEY, current.dumps())
        state.delete_meta(ORG_CACHE_KEY)  # the old org's describe: read the new org's on the next run
    return result


def _named(binding: Binding) -> str:
    return " and ".join(str(side) for side in (binding.salesforce, binding.stripe) if side is not None) or "nothing"
