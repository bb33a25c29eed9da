"""`stripe-sf setup`: create (or plan, or write as a Salesforce DX project) the custom fields and the permission
set the config needs, through `setup.run_setup`."""

from __future__ import annotations

from pathlib import Path

from stripe_sf_sync.errors import ConfigError
from stripe_sf_sync.service.runtime import Environment, Runtime
from stripe_sf_sync.setup.run import SetupResult, run_setup

_USAGE = "Run `stripe-sf setup --plan` first, then `stripe-sf setup --apply --assign USERNAME` (docs/setup.md)."


def setup_problems(*, plan: bool, apply: bool, assign: str | None, sfdx_dir: Path | None) -> list[str]:
    """What is wrong with the options, before any network call: one of --plan, --apply, --sfdx (or --assign
    alone), and --assign only where something may be written."""
    chosen = [name for name, on in (("--plan", plan), ("--apply", apply), ("--sfdx", sfdx_dir is not None)) if on]
    if len(chosen) > 1:
        return [f"{' and '.join(chosen)} ask for different things; choose one"]
    if not chosen and assign is None:
        return ["say what to do: --plan, --apply [--assign USERNAME], --sfdx DIR, or --assign USERNAME"]
    if assign is not None and (plan or sfdx_dir is not None):
        return [f"--assign writes to the org, and {chosen[0]} writes nothing to it; run --assign on its own "
                "or with --apply"]
    if sfdx_dir is not None and sfdx_dir.exists() and not sfdx_dir.is_dir():
        return [f"--sfdx {sfdx_dir} is a file, not a directory"]
    return []


def run_setup_command(config_path: Path | None, environment: Environment, *, plan: bool = False,
                      apply: bool = False, assign: str | None = None, sfdx_dir: Path | None = None) -> SetupResult:
    """`stripe-sf setup`: compare the org with what the config needs; deploy it, assign the permission set, or
    write it as a Salesforce DX project, as asked. Deploying needs an admin (the error names the permission)."""
    problems = setup_problems(plan=plan, apply=apply, assign=assign, sfdx_dir=sfdx_dir)
    if problems:
        raise ConfigError(problems, source="invocation", hint=_USAGE)
    runtime = Runtime(config_path, environment)
    settings = runtime.loaded.settings.salesforce
    gw = runtime.salesforce_factory()()
    return run_setup(gw, settings.fields, api_version=settings.api_version, apply=apply, assign=assign,
                     sfdx_dir=sfdx_dir, creates_accounts=runtime.loaded.settings.identity.create_accounts)
