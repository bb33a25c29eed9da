"""`sync --all` (issue 26): every pipeline, at most N at once, each failure its own, the worst exit code."""

from __future__ import annotations

import json

import pytest

from stripe_sf_sync import service
from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode

from .conftest import since

CONFIG_ACCOUNTS = "  accounts: []\n"


def with_accounts(config, *accounts: str) -> None:
    """Name `accounts` under stripe.accounts in the config at `config` (each line `{id: ..., ...}`)."""
    text = config.read_text()
    listed = "".join(f"    - {a}\n" for a in accounts)
    assert CONFIG_ACCOUNTS in text
    config.write_text(text.replace(CONFIG_ACCOUNTS, "  accounts:\n" + listed, 1))


@pytest.mark.parametrize(("codes", "worst"), [
    ([], 0), ([0, 0], 0), ([0, 3], 3), ([3, 5], 5), ([5, 10], 10), ([4, 2], 2), ([3, 143, 1], 143),
    ([0, 42], 42),
])
def test_the_worst_exit_code_wins(codes, worst):
    assert service.worst_exit_code(codes) == worst


def test_sync_all_on_a_single_pipeline_config_runs_it(runner, config, cli_env, sc):
    env = cli_env
    result = runner.invoke(app, ["sync", "--all", "--since", since(sc), "--json", "--config", str(config)], env=env)
    assert result.exit_code == ExitCode.DEAD_LETTERS, result.output  # the scenario has one unmatched customer
    doc = json.loads(result.stdout)
    (run,) = doc["accounts"]
    assert doc["exit_code"] == 3 and run["account"] == "default" and run["summary"]["applied"] > 0
    again = runner.invoke(app, ["sync", "--all", "--since", since(sc), "--json", "--config", str(config)], env=env)
    assert json.loads(again.stdout)["accounts"][0]["summary"]["applied"] == 0  # --since: only a new pipeline starts


def test_every_missing_key_is_named_before_any_call(runner, config, cli_env, stripe_sb):
    with_accounts(config, "{id: acct_1Brand}", "{id: acct_1Europe, api_key_env: STRIPE_API_KEY_EU}",
                  "{id: acct_1Asia, api_key_env: STRIPE_API_KEY_ASIA}")
    env = cli_env
    before = stripe_sb.request_count if hasattr(stripe_sb, "request_count") else None
    result = runner.invoke(app, ["sync", "--all", "--config", str(config)], env=env)
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert "STRIPE_API_KEY_EU is not set" in result.output and "STRIPE_API_KEY_ASIA is not set" in result.output
    if before is not None:
        assert stripe_sb.request_count == before


def test_all_refuses_what_only_one_account_can_take(runner, config, cli_env, tmp_path):
    env = cli_env
    for extra in (["--account", "acct_1X"], ["--rewind"]):
        result = runner.invoke(app, ["sync", "--all", *extra, "--config", str(config)], env=env)
        assert result.exit_code == ExitCode.CONFIG and "--all cannot be combined with" in result.output, extra


def test_a_command_on_a_config_with_several_accounts_asks_which(runner, config, cli_env, stripe_sb):
    with_accounts(config, "{id: acct_1Brand}", "{id: acct_1Europe, api_key_env: STRIPE_API_KEY_EU}")
    result = runner.invoke(app, ["sync", "--config", str(config)], env=cli_env)
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert "choose one" in result.output and "--account" in result.output
    unknown = runner.invoke(app, ["sync", "--account", "acct_1Nope", "--config", str(config)],
                            env=cli_env)
    assert unknown.exit_code == ExitCode.CONFIG and "acct_1Nope is not in stripe.accounts" in unknown.output


def test_metrics_carry_the_account_and_a_pipeline_turned_away_is_in_them(runner, config, cli_env, sc, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from stripe_sf_sync.state import StateStore

    prom = tmp_path / "all.prom"
    args = ["sync", "--all", "--since", since(sc), "--metrics-file", str(prom), "--config", str(config)]
    assert runner.invoke(app, args, env=cli_env).exit_code == ExitCode.DEAD_LETTERS

    def exit_codes() -> dict[tuple[str, str], float]:
        return {(s.labels["account"], s.labels["command"]): s.value
                for f in text_string_to_metric_families(prom.read_text()) for s in f.samples
                if s.name == "stripe_sf_last_run_exit_code"}

    assert exit_codes() == {("default", "sync"): 3}
    holder = StateStore.open(config.parent / "stripe-sf-state.sqlite")
    holder.acquire_lock()  # another run of the pipeline
    try:
        result = runner.invoke(app, args, env=cli_env)
    finally:
        holder.close()
    assert result.exit_code == ExitCode.LOCKED, result.output
    assert exit_codes() == {("default", "sync"): 4}  # an alert on the exit code sees the pipeline turned away
