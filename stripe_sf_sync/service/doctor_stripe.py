"""`doctor`'s checks of one pipeline (issue 26): its Stripe key (from the pipeline's variable), its mode, the API
version, the currencies of its recent events, its cursor's age, and the account its key reaches against the one
stripe.accounts names and the one its state is bound to. The Salesforce checks run once (service/doctor.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe

from stripe_sf_sync.config import LoadedConfig
from stripe_sf_sync.errors import ConfigError, ExitCode, FatalSyncError, IdentityError, StripeRefusedError
from stripe_sf_sync.identity import ACCOUNT_HINT, SalesforceIdentity, StripeIdentity, account_problem
from stripe_sf_sync.pipelines import Pipeline
from stripe_sf_sync.records import OrgFacts
from stripe_sf_sync.service.doctor_checks import Check, PipelineState, sentence
from stripe_sf_sync.service.identity import current_stripe, identity_findings
from stripe_sf_sync.stripe.source import RETENTION_S

# A warning when the cursor has less than this left before Stripe stops listing the events after it.
CURSOR_MARGIN_S = 7 * 86400


@dataclass
class PipelineChecks:
    """The Stripe and identity checks of one pipeline, given what the Salesforce checks learnt of the org."""

    loaded: LoadedConfig
    env: Mapping[str, str]
    pipeline: Pipeline
    state: PipelineState
    clock: Callable[[], float]
    org_currencies: OrgFacts | None = None
    reached_org: SalesforceIdentity | None = None

    def run(self, stripe_source: Callable[[], Any], *, named: bool) -> list[Check]:
        """The key, API version, currencies and cursor, then the org, account and mode against the pipeline's
        binding; each check names the pipeline's account when the config lists accounts (`named`)."""
        reached: list[StripeIdentity | None] = [None]
        refused: list[Check] = []
        checks = self.stripe_checks(stripe_source, reached, refused)
        found = identity_findings(self.state.binding, self.reached_org, reached[0],
                                  allowed=self.loaded.settings.salesforce.allow_mode_mismatch)
        identity = [Check(a, n, s, m, f, None, c) for a, n, s, m, f, c in found]
        wrong = account_problem(self.pipeline.account, self.pipeline.key_env, self.pipeline.connected,
                                reached[0]) if reached[0] is not None else None
        if wrong:  # the key reaches another account than stripe.accounts names: that, not the binding, is wrong
            refused.append(Check("stripe", "account", "error", wrong, sentence(ACCOUNT_HINT), self.pipeline.key_env,
                                 int(ExitCode.IDENTITY)))
        if refused:
            identity = [c for c in identity if c.name != "account"]
            identity[1:1] = refused  # after the org's line, where the account's would be
        every = [*checks, *identity]
        return [dataclasses.replace(c, account=self.pipeline.name) for c in every] if named else every

    def stripe_checks(self, stripe_source: Callable[[], Any], reached: list[StripeIdentity | None],
                      refused: list[Check]) -> list[Check]:
        """The key (and its mode), the API version, and the cursor's age against the 30-day retention; the
        account the key reaches goes in `reached`, a connected account Stripe refuses in `refused`."""
        key_env = self.pipeline.key_env
        cursor = self.cursor_checks()
        try:
            source = stripe_source()
        except ConfigError as exc:
            return [Check("stripe", "key", "error", "; ".join(exc.problems), sentence(exc.hint), key_env,
                          int(ExitCode.CONFIG)), *cursor]
        key = str(self.env.get(key_env, "")).strip()
        kind = "restricted" if key.startswith("rk_") else "secret"
        mode = "live" if "_live_" in key[:8] else "test"
        version = self.loaded.settings.stripe.api_version
        try:
            source.newest_event()
        except (stripe.InvalidRequestError, StripeRefusedError) as exc:  # the edge raises the latter (a 400)
            said = exc.stripe_message if isinstance(exc, StripeRefusedError) else str(exc.user_message or exc)
            message = said[:300]
            if "version" in message.lower():
                return [Check("stripe", "API version", "error", f"Stripe refused stripe.api_version {version!r}: "
                              f"{message}", "set stripe.api_version to a version Stripe lists, e.g. the default "
                              "of sync.yaml.example", "stripe.api_version", int(ExitCode.CONFIG)), *cursor]
            return [Check("stripe", "key", "error", f"Stripe refused to list events: {message}",
                          f"check {key_env} and STRIPE_API_BASE", key_env, int(ExitCode.UNAVAILABLE)), *cursor]
        except FatalSyncError as exc:
            return [Check("stripe", "key", "error", exc.message, sentence(exc.hint), key_env,
                          int(exc.exit_code)), *cursor]
        checks = [Check("stripe", "key", "ok", f"the {kind} key lists events ({mode} mode)")]
        try:
            reached[0] = current_stripe(self.state.binding, source, key, self.pipeline)
        except IdentityError as exc:  # a connected account the platform's key may not reach
            refused.append(Check("stripe", "account", "error", exc.message, sentence(exc.hint),
                                 self.pipeline.account, int(ExitCode.IDENTITY)))
        answered = source.last_headers.get("stripe-version")
        if answered and answered != version:
            checks.append(Check("stripe", "API version", "warning", f"stripe-sf asked for {version} and Stripe "
                                f"answered in {answered}", "check stripe.api_version", "stripe.api_version"))
        else:
            checks.append(Check("stripe", "API version", "ok", f"{version} (stripe.api_version), accepted by Stripe"))
        return checks + self.currency_checks(source) + cursor

    def currency_checks(self, source: Any) -> list[Check]:
        """Whether the newest events (one page) are in currencies the org holds: an org without multiple
        currencies reads every amount in its own (salesforce.currency_mismatch decides what a run does)."""
        org = self.org_currencies
        if org is None or (org.currencies is None and org.currency is None):
            return []  # Salesforce was not reached, or did not say
        try:
            seen = source.recent_currencies()
        except FatalSyncError:
            return []  # the key check above has said what is wrong with Stripe
        foreign = {code: n for code, n in sorted(seen.items()) if org.holds(code) is False}
        held = (f"active currencies {', '.join(sorted(org.currencies))}" if org.currencies is not None
                else f"a single currency, {org.currency}")
        if not foreign:
            shown = ", ".join(sorted(seen)) or "none yet"
            return [Check("stripe", "currencies", "ok", f"recent Stripe activity is in {shown}; the org has {held}")]
        what = ", ".join(f"{code} ({_count(n, 'event')})" for code, n in foreign.items())
        codes = ", ".join(foreign)
        if org.currencies is not None:
            return [Check("stripe", "currencies", "warning", f"recent Stripe activity is in {what}, which the org "
                          f"does not hold (it has {held}): those events wait as CURRENCY_NOT_ACTIVE",
                          f"activate {codes} in Setup > Company Information > Currencies", codes)]
        mismatch = self.loaded.settings.salesforce.currency_mismatch
        effect = ("their amounts are written as they are, and read as " + str(org.currency)
                  if mismatch == "write_as_is" else "those events wait as CURRENCY_MISMATCH")
        return [Check("stripe", "currencies", "warning", f"recent Stripe activity is in {what}, which the org does "
                      f"not use (it has {held}): {effect}", "turn on multiple currencies in Setup > Company "
                      f"Information and activate {codes}, or set salesforce.currency_mismatch "
                      "(README: 'Currencies')", "salesforce.currency_mismatch")]

    def cursor_checks(self) -> list[Check]:
        """The cursor's age against Stripe's 30 days of events."""
        if self.state.cursor is None:
            return [Check("stripe", "cursor", "ok", "none yet: the first `stripe-sf sync --since DATE` (a DATE within "
                          "the last 30 days) or a `stripe-sf backfill` sets it")]
        event_id, created = self.state.cursor
        age = self.clock() - created
        day = datetime.fromtimestamp(created, tz=UTC).date().isoformat()
        text = f"{event_id} from {day}, {_age(age)} old (Stripe lists events for 30 days)"
        if age > RETENTION_S:
            return [Check("stripe", "cursor", "error", f"{text}: the events after it can no longer be listed",
                          f"run `stripe-sf {self._flag()}backfill --since {day}`, then `stripe-sf {self._flag()}sync`",
                          event_id, int(ExitCode.CURSOR_EXPIRED))]
        if age > RETENTION_S - CURSOR_MARGIN_S:
            return [Check("stripe", "cursor", "warning", f"{text}: it passes the retention in "
                          f"{_age(RETENTION_S - age)}", f"run `stripe-sf {self._flag()}sync` (cron) before then",
                          event_id)]
        return [Check("stripe", "cursor", "ok", text)]

    def _flag(self) -> str:
        """`--account ACCT ` in a command doctor suggests, for a pipeline the config names."""
        return f"--account {self.pipeline.name} " if self.loaded.settings.stripe.accounts else ""


def _age(seconds: float) -> str:
    if seconds < 2 * 3600:
        return f"{max(seconds, 0) / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _count(n: int, word: str) -> str:
    """`1 event`, `2 events`."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"
