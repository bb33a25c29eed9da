"""sync.yaml and the environment -> validated settings. Every problem is listed at once."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from stripe_sf_sync.defaults import DEFAULT_CONFIG_PATH
from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.fields import FieldNames
from stripe_sf_sync.mapping import FieldMapping
from stripe_sf_sync.salesforce_ids import is_salesforce_id

DEFAULT_STRIPE_API_VERSION = "2026-10-28.endive"
DEFAULT_SF_API_VERSION = "62.0"
STATE_FILE_NAME = "stripe-sf-state.sqlite"
DEFAULT_KEY_ENV = "STRIPE_API_KEY"
# Stripe's event list is eventually consistent: reports say events turn up seconds, at most about a minute,
# late (Stripe's docs do not say; integrators report it, e.g. singer-io/tap-stripe). An hour is ample, keeps
# each run's re-read small, and stays far inside the event ledger's retention (state.LEDGER_RETENTION_S,
# 40 days), which the re-read relies on to drop what is done.
MAX_LOOKBACK_S = 3600


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AccountSettings(_Strict):
    """One Stripe account of `stripe.accounts`: a pipeline of its own (pipelines.py). Its key is read from the
    variable `api_key_env` names; a connected account (`connected: true`) is read with that key (the platform's)
    and the Stripe-Account header (Stripe API reference, "Connected accounts": "Making API calls for connected
    accounts")."""

    id: str = Field(pattern=r"^acct_[A-Za-z0-9]{1,64}$")
    api_key_env: str = Field(DEFAULT_KEY_ENV, pattern=r"^[A-Z][A-Z0-9_]{0,63}$")
    connected: bool = False


class StripeSettings(_Strict):
    """Stripe-side settings (the key itself comes from STRIPE_API_KEY)."""

    # Several Stripe accounts into one org, a pipeline each (pipelines.py); empty: one pipeline, STRIPE_API_KEY's.
    accounts: list[AccountSettings] = Field(default_factory=list, max_length=1000)

    api_version: str = Field(DEFAULT_STRIPE_API_VERSION, pattern=r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")
    # None: from the key's mode (stripe_source.default_requests_per_second); set, it overrides that. Above 100
    # only for an account whose limits Stripe raised (docs.stripe.com/rate-limits: contact Stripe to raise them).
    requests_per_second: float | None = Field(None, gt=0, le=1000)
    # Each named API operation's own pace (Stripe's default endpoint limit is 25/s). None: 80% of 25 (20/s).
    endpoint_requests_per_second: float | None = Field(None, gt=0, le=1000)
    timeout_seconds: float = Field(30.0, gt=0, le=600)
    dashboard_url: str = Field("https://dashboard.stripe.com", pattern=r"^https://")
    # Each sync re-reads the events created this long before its cursor, for those listed late.
    lookback_seconds: int = Field(300, ge=0, le=MAX_LOOKBACK_S)

    @field_validator("accounts")
    @classmethod
    def _accounts_once(cls, value: list[AccountSettings]) -> list[AccountSettings]:
        seen = [a.id for a in value]
        twice = sorted({i for i in seen if seen.count(i) > 1})
        if twice:
            raise ValueError(f"each account is listed once; listed twice: {', '.join(twice)}")
        return value


class SalesforceSettings(_Strict):
    """Salesforce-side settings; won_stage and record_types are filled by discover-config."""

    api_version: str = Field(DEFAULT_SF_API_VERSION, pattern=r"^\d{2,3}\.0$")
    won_stage: str | None = Field(None, min_length=1, max_length=255)
    # Optional: the stage a fully refunded one-time payment's Opportunity moves to; unset, it keeps its stage.
    refunded_stage: str | None = Field(None, min_length=1, max_length=255)
    record_types: dict[str, str] = Field(default_factory=dict)
    opportunity_record_type: str | None = None
    fields: FieldNames = Field(default_factory=FieldNames)
    api_budget: float = Field(0.8, gt=0, le=1)
    write_concurrency: int = Field(3, ge=1, le=10)
    timeout_seconds: float = Field(60.0, gt=0, le=600)
    # An amount in a currency a single-currency org does not hold (the org would read EUR 90 as USD 90):
    # dead_letter it as CURRENCY_MISMATCH, or write_as_is (the org then reads the number in its own currency).
    currency_mismatch: Literal["dead_letter", "write_as_is"] = "dead_letter"
    # A live-mode Stripe key writing into a sandbox org, or a test-mode key into production, is refused unless
    # this is true (identity.py).
    allow_mode_mismatch: bool = False

    # Which fields are written, from what, and who owns each (docs/mapping.md); empty: the default mapping.
    mapping: FieldMapping = Field(default_factory=FieldMapping)

    @model_validator(mode="after")
    def _mapping_fits_fields(self) -> SalesforceSettings:
        problems = self.mapping.problems(self.fields)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("record_types")
    @classmethod
    def _record_type_ids(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name, rid in value.items() if not is_salesforce_id(rid, "012")]
        if bad:
            raise ValueError(f"not RecordType Ids (012...): {', '.join(sorted(bad))}")
        return value


class SyncSettings(_Strict):
    """How the pipeline batches and where it keeps state."""

    state_path: str | None = None
    batch_size: int = Field(10_000, ge=1, le=10_000)
    coalesce: bool = True
    log_format: Literal["auto", "plain", "json"] = "auto"
    heartbeat_seconds: float = Field(30, gt=0, le=3600)  # off a terminal: a "still running" line this often


STATE_URL_ENV = "STRIPE_SF_STATE_URL"
_STATE_URL_SCHEMES = ("postgresql://", "postgres://")


def state_url_problem(url: str) -> str | None:
    """Why `url` cannot name a PostgreSQL state store, or None (the URL is not repeated: it may hold a password)."""
    if not url.startswith(_STATE_URL_SCHEMES):
        return "must be a postgresql:// (or postgres://) URL, like postgresql://stripe_sf@db.internal:5432/stripe_sf"
    try:
        urlsplit(url).port  # noqa: B018  (a bad port raises)
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    return None


class StateSettings(_Strict):
    """Where shared state lives: a PostgreSQL URL (STRIPE_SF_STATE_URL overrides it); unset: the SQLite file."""

    url: str | None = Field(None, min_length=1)

    @field_validator("url")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        problem = state_url_problem(value) if value else None
        if problem:
            raise ValueError(problem)
        return value


class BackfillSettings(_Strict):
    """When backfill switches to Bulk API 2.0, how many time slices it lists at once, and how it reports progress."""

    bulk_threshold: int = Field(2000, ge=1)
    bulk_chunk: int = Field(5000, ge=1, le=150_000)
    bulk_poll_seconds: float = Field(5.0, ge=0, le=300)
    log_every_pages: int = Field(50, ge=1)
    parallel_slices: int = Field(4, ge=1, le=16)


class IdentitySettings(_Strict):
    """`identity:` what the sync may create for a customer with no Account (docs/link.md, "Optional creation").
    Off by default: a customer with no Account is dead-lettered NO_ACCOUNT, for `stripe-sf link`."""

    create_accounts: bool = False  # create the missing Account, linked by the customer-id field
    create_contacts: bool = False  # and a Contact from the customer's email and name on it
    # The created Accounts' owner: a User Id (005...); None: the integration user owns them.
    default_owner_id: str | None = Field(None, pattern=r"^005[A-Za-z0-9]{12}([A-Za-z0-9]{3})?$")

    @model_validator(mode="after")
    def _contacts_need_accounts(self) -> IdentitySettings:
        if self.create_contacts and not self.create_accounts:
            raise ValueError("identity.create_contacts creates a Contact on the Account it creates: set "
                             "identity.create_accounts: true too, or create_contacts: false")
        return self


class Settings(_Strict):
    """The whole of sync.yaml."""

    stripe: StripeSettings = Field(default_factory=StripeSettings)
    salesforce: SalesforceSettings = Field(default_factory=SalesforceSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    backfill: BackfillSettings = Field(default_factory=BackfillSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)

    def record_type_name(self) -> str | None:
        """The record type new Opportunities get: the configured one, else the "New Business" rule; None for
        the org default."""
        return self.salesforce.opportunity_record_type or new_business_record_type(self.salesforce.record_types)

    def record_type_id(self) -> str | None:
        """The RecordTypeId new Opportunities get, or None for the org default."""
        name = self.record_type_name()
        return self.salesforce.record_types.get(name) if name else None


def new_business_record_type(names: Iterable[str]) -> str | None:
    """The record type new Opportunities get unless one is configured: the first named like "New Business"
    (any case, `_` for a space), in the order given. discover-config proposes it too."""
    return next((name for name in names if name.lower().replace("_", " ") == "new business"), None)


@dataclass(frozen=True)
class LoadedConfig:
    """Validated settings plus where they came from."""

    settings: Settings
    path: Path

    @property
    def state_path(self) -> Path:
        """SQLite state file: configured, or next to the config file."""
        configured = self.settings.sync.state_path
        if configured:
            p = Path(configured).expanduser()
            return p if p.is_absolute() else (self.path.parent / p)
        return self.path.parent / STATE_FILE_NAME


def state_url(settings: Settings, env: Mapping[str, str]) -> str | None:
    """The PostgreSQL state URL: STRIPE_SF_STATE_URL (12-factor), else state.url; None means the SQLite file."""
    value = env.get(STATE_URL_ENV, "").strip()
    if not value:
        return settings.state.url
    problem = state_url_problem(value)
    if problem:
        raise ConfigError([f"{STATE_URL_ENV} {problem}"], source="environment",
                          hint=f"Fix {STATE_URL_ENV}, or unset it to use the SQLite file next to sync.yaml.")
    return value


def masked_url(url: str) -> str:
    """`url` safe to print or log: a password in it is replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def url_without_password(url: str) -> str:
    """`url` with any password left out: what to set, the password going apart (PGPASSWORD or ~/.pgpass)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{user}{host}", parts.path, parts.query, parts.fragment))


def example_config() -> str:
    """The sync.yaml.example shipped in the package: every key, documented, with its default."""
    return resources.files("stripe_sf_sync").joinpath("sync.yaml.example").read_text(encoding="utf-8")


_START_AGAIN = ("Move the file aside and run `stripe-sf discover-config --write` to start again from the packaged "
                "sync.yaml.example")


def _key_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_settings(data: Any, *, source: str = "sync.yaml") -> Settings:
    """Validate a parsed YAML document; raise ConfigError naming every bad key."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([f"the top level must be a mapping, got {type(data).__name__}"], source=source,
                          hint=f"{_START_AGAIN}.")
    try:
        settings = Settings.model_validate(dict(data))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{_key_path(err['loc'])}: {msg}")
        raise ConfigError(problems, source=source,
                          hint="Fix these keys; the packaged sync.yaml.example documents each one.") from None
    chosen = settings.salesforce.opportunity_record_type
    if chosen and chosen not in settings.salesforce.record_types:
        raise ConfigError(
            [f"salesforce.opportunity_record_type: {chosen!r} is not one of salesforce.record_types"],
            source=source, hint="Run `stripe-sf discover-config --write` to list the org's record types.")
    return settings


def load_yaml(text: str) -> Any:
    """Parse YAML into plain mappings, lists and scalars; tags that build objects are refused (ruamel.yaml's
    safe loader; its pure-Python one, so errors and limits are the same on every install)."""
    return YAML(typ="safe", pure=True).load(text)


def _yaml_problem(exc: YAMLError, text: str) -> str:
    """Where and what: ' at line 3, column 5: found duplicate key ...'."""
    if isinstance(exc, MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f" at line {mark.line + 1}, column {mark.column + 1}" + (f": {exc.problem}" if exc.problem else "")
    if isinstance(exc, ReaderError):  # a character YAML does not allow (control characters)
        pos = exc.position
        line, column = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f" at line {line}, column {column}: character #x{code:04x} is not allowed ({exc.reason})"
    return ""


def load_config(path: Path | None = None) -> LoadedConfig:
    """Read and validate sync.yaml."""
    path = path or DEFAULT_CONFIG_PATH
    source = str(path)
    if not path.exists():
        raise ConfigError([f"{path} does not exist"], source="config",
                          hint="Run `stripe-sf discover-config --write` to create it from the packaged "
                               "sync.yaml.example with the org's values, or pass --config PATH.")
    text = ""
    try:
        text = path.read_text(encoding="utf-8")
        data = load_yaml(text)
    except YAMLError as exc:
        raise ConfigError([f"not valid YAML{_yaml_problem(exc, text)}"], source=source,
                          hint=f"Check indentation and quoting, or {_START_AGAIN.lower()}.") from None
    except UnicodeDecodeError:
        raise ConfigError(["not valid YAML: the file is not UTF-8 text"], source=source,
                          hint=f"Save it as UTF-8, or {_START_AGAIN.lower()}.") from None
    except RecursionError:
        raise ConfigError(["nested too deeply to be a stripe-sf config"], source=source,
                          hint=f"{_START_AGAIN}.") from None
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"], source="config") from None
    return LoadedConfig(parse_settings(data, source=source), path)


def require_org_values(settings: Settings, source: str) -> None:
    """Sync needs the org's won stage; say how to get it."""
    problems = []
    if not settings.salesforce.won_stage:
        problems.append("salesforce.won_stage is not set")
    if problems:
        raise ConfigError(problems, source=source,
                          hint="Run `stripe-sf discover-config --write` once to read it from the org.")


# --- secrets: only ever from the environment -------------------------------------------------

SfMode = Literal["token", "client_credentials", "jwt", "password"]


@dataclass(frozen=True)
class StripeSecrets:
    """STRIPE_API_KEY and the optional base address override."""

    api_key: str
    api_base: str | None

    def __repr__(self) -> str:  # never print the key
        return f"StripeSecrets(api_key='***', api_base={self.api_base!r})"


@dataclass(frozen=True)
class SalesforceSecrets:
    """One of the four Salesforce auth modes, read from SF_* variables."""

    mode: SfMode
    values: Mapping[str, str]
    domain: str

    def __repr__(self) -> str:  # never print secrets
        return f"SalesforceSecrets(mode={self.mode!r}, domain={self.domain!r})"


_SF_MODES: list[tuple[SfMode, tuple[str, ...]]] = [
    ("token", ("SF_INSTANCE_URL", "SF_ACCESS_TOKEN")),
    ("client_credentials", ("SF_CONSUMER_KEY", "SF_CONSUMER_SECRET", "SF_DOMAIN")),
    ("jwt", ("SF_USERNAME", "SF_CONSUMER_KEY", "SF_PRIVATE_KEY_FILE")),
    ("password", ("SF_USERNAME", "SF_PASSWORD", "SF_SECURITY_TOKEN")),
]


def stripe_secrets(env: Mapping[str, str] | None = None, key_env: str = DEFAULT_KEY_ENV) -> StripeSecrets:
    """Read the Stripe key from `key_env` (a pipeline's `api_key_env`); raise ConfigError if it is missing or
    malformed."""
    env = os.environ if env is None else env
    key = env.get(key_env, "").strip()
    problems = []
    if not key:
        problems.append(f"{key_env} is not set")
    elif not re.match(r"^(sk|rk)_(test|live)_[A-Za-z0-9_]+$", key):
        problems.append(f"{key_env} does not look like a Stripe secret or restricted key (sk_… or rk_…)")
    base = env.get("STRIPE_API_BASE") or None
    if base and not re.match(r"^https?://[^\s/]+", base):
        problems.append("STRIPE_API_BASE must be an http(s) URL")
    if problems:
        raise ConfigError(problems, source="environment",
                          hint="Export a key from the Stripe Dashboard (Developers > API keys); "
                               "a restricted key with read access to events, customers, subscriptions, "
                               "invoices and payments is enough.")
    return StripeSecrets(key, base)


def salesforce_secrets(env: Mapping[str, str] | None = None) -> SalesforceSecrets:
    """Pick the first complete Salesforce auth mode; name what is missing if none is."""
    env = os.environ if env is None else env
    domain = env.get("SF_DOMAIN", "").strip() or "login"
    for mode, keys in _SF_MODES:
        if all(env.get(k, "").strip() for k in keys):
            values = {k: env[k].strip() for k in keys}
            if mode == "password" and env.get("SF_CONSUMER_KEY"):
                values["SF_CONSUMER_KEY"] = env["SF_CONSUMER_KEY"].strip()
            problems = []
            if mode == "token" and not values["SF_INSTANCE_URL"].startswith("https://"):
                problems.append("SF_INSTANCE_URL must start with https://")
            if mode == "client_credentials" and domain in ("login", "test"):
                problems.append("SF_DOMAIN must be your My Domain (e.g. acme.my) for client credentials, "
                                "not 'login' or 'test'")
            if mode == "jwt" and not Path(values["SF_PRIVATE_KEY_FILE"]).is_file():
                problems.append("SF_PRIVATE_KEY_FILE does not name a readable file")
            if problems:
                raise ConfigError(problems, source="environment")
            return SalesforceSecrets(mode, values, domain)
    partial = []
    for mode, keys in _SF_MODES:
        present = [k for k in keys if env.get(k, "").strip()]
        if present:
            missing = [k for k in keys if k not in present]
            partial.append(f"{mode} mode is missing {', '.join(missing)}")
    problems = partial or ["no Salesforce credentials are set"]
    raise ConfigError(
        problems, source="environment",
        hint="Set one of: SF_INSTANCE_URL + SF_ACCESS_TOKEN; SF_CONSUMER_KEY + SF_CONSUMER_SECRET + SF_DOMAIN "
             "(client credentials); SF_USERNAME + SF_CONSUMER_KEY + SF_PRIVATE_KEY_FILE (JWT); "
             "SF_USERNAME + SF_PASSWORD + SF_SECURITY_TOKEN (legacy).")


def writable_file_problem(path: Path, option: str, example: str) -> str | None:
    """Why `path` (given as `option`) cannot be written through a temporary file next to it, or None:
    checked before any network call, so that a wrong path fails at once."""
    directory = path.parent
    if path.is_dir():
        return f"{option} {path} is a directory; name a file in it, like {path / example}"
    if not directory.is_dir():
        return f"{option} {path}: the directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{option} {path}: the directory {directory} is not writable"
    return None

