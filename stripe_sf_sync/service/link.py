"""`stripe-sf link`: propose Accounts for the unlinked Stripe customers (a CSV to review), and apply the
reviewed file (docs/link.md). The work is stripe_sf_sync.link's; this builds its clients from the config and
the environment, and turns a bad file into a configuration error."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from stripe_sf_sync.errors import ConfigError, ExitCode
from stripe_sf_sync.link import ApplyResult, ProposeResult, run_link, run_link_apply
from stripe_sf_sync.link.csvfile import LinkFileError, read_links
from stripe_sf_sync.salesforce.writers import CollectionsWriter
from stripe_sf_sync.service.runtime import Environment, Runtime, clients
from stripe_sf_sync.stripe.source import Pacer, build_client, default_requests_per_second

# `--to-stripe` writes customers; the sync's own key (STRIPE_API_KEY) can stay read-only.
WRITE_KEY_VARIABLE = "STRIPE_WRITE_API_KEY"
# Stripe limits each endpoint, POST /v1/customers/{id} included, to 25 requests a second by default
# (docs.stripe.com/rate-limits, "Rate limiters").
CUSTOMER_WRITES_PER_SECOND = 25.0
_KEY = re.compile(r"^(sk|rk)_(test|live)_[A-Za-z0-9_]+$")


def run_link_propose(config_path: Path | None, environment: Environment, *, csv_path: Path | None) -> ProposeResult:
    """`stripe-sf link [--csv FILE]`: read every customer, match the unlinked ones; write nothing but the file."""
    runtime = Runtime(config_path, environment)
    if csv_path is not None and not csv_path.parent.is_dir():
        raise ConfigError([f"--csv {csv_path}: the directory {csv_path.parent} does not exist"],
                          source="invocation", hint="Create it, or name a file in an existing directory.")
    source, sf_factory = clients(runtime)
    field = runtime.loaded.settings.salesforce.fields.customer_id
    now = int(environment.clock())
    pages = source.customer_pages(created={"lte": now})
    if csv_path is None:
        return run_link(customer_pages=pages, gw=sf_factory(), customer_field=field)
    with _replaced_on_success(csv_path) as out:
        return run_link(customer_pages=pages, gw=sf_factory(), customer_field=field, out=out,
                        csv_path=str(csv_path))


@contextlib.contextmanager
def _replaced_on_success(path: Path) -> Iterator[TextIO]:
    """A temporary file beside `path`, renamed onto it once complete: an interrupted run leaves the reviewed
    file of an earlier run as it was."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as out:
            yield out
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def run_link_apply_file(config_path: Path | None, environment: Environment, *, path: Path,
                        to_stripe: bool) -> ApplyResult:
    """`stripe-sf link --apply FILE [--to-stripe]`: the file checked whole first, then the links written."""
    runtime = Runtime(config_path, environment)
    _check_file(path)
    stripe_client, pace = _stripe_writes(runtime) if to_stripe else (None, None)
    _, sf_factory = clients(runtime)
    gw = sf_factory()
    settings = runtime.loaded.settings
    state = runtime.open_state(create=False, read_only=True) if runtime.state_exists() else None
    with state if state is not None else contextlib.nullcontext():
        return run_link_apply(path, gw=gw, writer=CollectionsWriter(gw, sleep=environment.sleep),
                              customer_field=settings.salesforce.fields.customer_id, stripe_client=stripe_client,
                              stripe_pace=pace, state=state)


def _check_file(path: Path) -> None:
    """Every malformed row, before any call (a ConfigError: exit 2)."""
    try:
        read_links(path)
    except LinkFileError as exc:
        raise ConfigError(exc.problems, source=f"links file {path}",
                          hint="Fix those rows (or clear their account_id) and run it again; nothing was "
                               "written.") from None
    except OSError as exc:
        raise ConfigError([f"{path} cannot be read: {exc.strerror or exc}"], source="invocation",
                          hint="Name the file `stripe-sf link --csv FILE` wrote.") from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path} is not UTF-8 text"], source="invocation",
                          hint="Save it from the spreadsheet as CSV UTF-8.") from None


def _stripe_writes(runtime: Runtime) -> tuple[object, Pacer]:
    """A Stripe client from STRIPE_WRITE_API_KEY (checked before any network call), and its pace: the
    endpoint's limit, or less in test mode."""
    env = runtime.environment.env
    key = env.get(WRITE_KEY_VARIABLE, "").strip()
    problem = (f"{WRITE_KEY_VARIABLE} is not set" if not key else
               f"{WRITE_KEY_VARIABLE} does not look like a Stripe secret or restricted key (sk_… or rk_…)"
               if not _KEY.match(key) else None)
    if problem:
        raise ConfigError([problem], source="environment",
                          hint="--to-stripe writes customers' metadata: export a restricted key with Customers: "
                               "Write (rak_customer_write), or a secret key, as " + WRITE_KEY_VARIABLE
                               + " (docs/environment.md). STRIPE_API_KEY stays the sync's read-only key.")
    s = runtime.loaded.settings.stripe
    ca_bundle = env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE") or None
    client, _ = build_client(key, api_base=env.get("STRIPE_API_BASE") or None, api_version=s.api_version,
                             timeout=s.timeout_seconds, ca_bundle=ca_bundle)
    per_second = min(CUSTOMER_WRITES_PER_SECOND, default_requests_per_second(key))
    return client, Pacer(per_second, sleep=runtime.environment.sleep)


def link_exit_code(result: ProposeResult | ApplyResult) -> ExitCode:
    """0, or 3 when `--apply` finished with links refused or the Stripe writes stopped (each one is named),
    as a run that finished with some events dead-lettered does (docs/exit-codes.md)."""
    return ExitCode.DEAD_LETTERS if isinstance(result, ApplyResult) and not result.ok else ExitCode.OK
