"""`stripe-sf demo` and `stripe-sf sandbox`: the stand-ins of Stripe and Salesforce, a distribution of their
own (stripe-sf-sandbox), imported only here; without it, a usage error that says how to install it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from stripe_sf_sync.config import writable_file_problem
from stripe_sf_sync.errors import ConfigError, StripeSfError, missing_sandbox

if TYPE_CHECKING:
    from rich.console import Console


def _sandbox_needed(command: str) -> contextlib.AbstractContextManager[None]:
    return missing_sandbox(f"`stripe-sf {command}`", f"run `stripe-sf {command}` again")


def run_demo(console: Console) -> int:
    """The real pipeline against local stand-ins, printed on `console`; its exit code."""
    with _sandbox_needed("demo"):
        from stripe_sf_sandbox.demo import run_demo as demo
    return int(demo(console))


def start_sandbox(env_file: Path, *, empty_org: bool = False, strict_org: bool = False) -> int:
    """The stand-ins in the background, their export lines in `env_file` once they answer; their pid.
    `empty_org`: an org without stripe-sf's custom fields, for `stripe-sf setup` to create; `strict_org`: one
    with a validation rule and a required field, for rehearsing salesforce.mapping."""
    with _sandbox_needed("sandbox"):
        from stripe_sf_sandbox import rehearsal
    problem = writable_file_problem(env_file, "--env-file", "sandbox.env")
    if problem:
        raise ConfigError([problem], source="invocation")
    try:
        return int(rehearsal.start_detached(env_file, empty_org=empty_org, strict_org=strict_org))
    except RuntimeError as exc:
        raise StripeSfError(f"The sandbox did not start: {exc}", hint="Run `stripe-sf sandbox` in the "
                            "foreground to see why.") from None


def serve_sandbox(say: Callable[[str], None], *, env_file: Path | None, empty_org: bool = False,
                  strict_org: bool = False) -> int:
    """The stand-ins in this process until Ctrl-C or SIGTERM (their export lines through `say`, and in
    `env_file` when given); the exit code."""
    with _sandbox_needed("sandbox"):
        from stripe_sf_sandbox import rehearsal
    return int(rehearsal.serve(say, env_file=env_file, empty_org=empty_org, strict_org=strict_org))
