"""The Dagster integration (issue 26, docs/dagster.md): in-process, with Dagster's own test utilities, against
the sandbox stand-ins. The asset is partitioned by pipeline; reconcile is its check, per partition."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

dg = pytest.importorskip("dagster")

from stripe_sf_sync.errors import ExitCode  # noqa: E402
from stripe_sf_sync.integrations import dagster as stripe_sf_dagster  # noqa: E402
from tests.conftest import since, write_config  # noqa: E402

ACCOUNTS = "  accounts:\n    - id: acct_1Brand\n    - id: acct_1Europe\n      api_key_env: STRIPE_API_KEY_EU\n"


@pytest.fixture
def sandbox_vars(monkeypatch: pytest.MonkeyPatch, cli_env: dict[str, str]) -> dict[str, str]:
    """The process's variables point at the stand-ins: the integration reads secrets from the environment."""
    for key, value in cli_env.items():
        monkeypatch.setenv(key, value)
    return cli_env


def two_accounts(tmp_path: Path) -> Path:
    return write_config(tmp_path / "sync.yaml", **{"  accounts: []\n": ACCOUNTS})


def sync_config(first_since: str) -> dict:
    return {"ops": {stripe_sf_dagster.ASSET: {"config": {"since": first_since}}}}


def materialization(result, partition: str):
    [event] = [e for e in result.get_asset_materialization_events()
               if e.materialization.partition == partition]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_a_partition_materializes_with_the_runs_figures_and_reconcile_checks_it(config, sc, sandbox_vars):
    defs = stripe_sf_dagster.definitions(config)
    job = defs.resolve_job_def(stripe_sf_dagster.JOB)
    result = job.execute_in_process(partition_key="default", run_config=sync_config(since(sc)),
                                    instance=dg.DagsterInstance.ephemeral())
    assert result.success  # exit 3 (a dead letter) is a finished run
    figures = materialization(result, "default")
    assert figures["exit_code"] == ExitCode.DEAD_LETTERS and figures["dead_letters"] == 1
    assert figures["events_read"] == len(sc.events) and figures["applied"] > 0
    assert figures["cursor"] == sc.events[-1] and figures["stripe_calls"] > 0 and figures["salesforce_calls"] > 0
    assert "1 event dead-lettered" in figures["note"] and "dlq list" in figures["note"]

    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "reconcile"
    assert check.metadata["pipeline"].value == "default" and check.metadata["checked"].value > 0
    assert check.passed == (check.metadata["mismatches"].value == 0)


def test_materialize_runs_the_asset_and_its_check_for_a_partition(config, sc, sandbox_vars):
    asset, check = stripe_sf_dagster.build(stripe_sf_dagster.partitions(config))
    result = dg.materialize([asset, check], partition_key="default", run_config=sync_config(since(sc)),
                            resources={"stripe_sf": stripe_sf_dagster.StripeSf(config_path=str(config))})
    assert result.success and materialization(result, "default")["dead_letters"] == 1
    # The next run reads nothing new: exit 0.
    again = dg.materialize([asset], partition_key="default",
                           resources={"stripe_sf": stripe_sf_dagster.StripeSf(config_path=str(config))})
    figures = materialization(again, "default")
    assert figures["exit_code"] == ExitCode.OK and figures["events_read"] == 0 and figures["note"] == "ok"


def test_the_asset_runs_in_a_built_context(config, sc, sandbox_vars):
    asset, _check = stripe_sf_dagster.build(stripe_sf_dagster.partitions(config))
    context = dg.build_asset_context(partition_key="default")
    out = asset(context, config=stripe_sf_dagster.SyncConfig(since=since(sc)),
                stripe_sf=stripe_sf_dagster.StripeSf(config_path=str(config)))
    assert out.metadata["dead_letters"] == 1


def test_a_failing_run_fails_the_materialization_with_its_message(config, sandbox_vars, monkeypatch):
    monkeypatch.delenv("STRIPE_API_KEY")
    job = stripe_sf_dagster.definitions(config).resolve_job_def(stripe_sf_dagster.JOB)
    result = job.execute_in_process(partition_key="default", raise_on_error=False,
                                    instance=dg.DagsterInstance.ephemeral())
    assert not result.success
    [failed] = [e for e in result.all_events if e.is_step_failure]
    error = failed.step_failure_data.error
    assert "STRIPE_API_KEY" in error.message and "pipeline default" in error.message
    assert failed.step_failure_data.user_failure_data.metadata["exit_code"].value == ExitCode.CONFIG
    assert not result.get_asset_materialization_events()


def test_the_schedule_asks_for_every_pipeline_on_its_cron(tmp_path):
    cfg = two_accounts(tmp_path)
    defs = stripe_sf_dagster.definitions(cfg, cron_schedule="0 * * * *")
    schedule = defs.resolve_schedule_def(stripe_sf_dagster.SCHEDULE)
    assert schedule.cron_schedule == "0 * * * *"
    assert stripe_sf_dagster.definitions(cfg).resolve_schedule_def(stripe_sf_dagster.SCHEDULE).cron_schedule == \
        "*/5 * * * *"
    tick = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    with dg.build_schedule_context(scheduled_execution_time=tick, repository_def=defs.get_repository_def()) as context:
        requests = list(schedule.evaluate_tick(context).run_requests or [])
    assert [r.partition_key for r in requests] == ["acct_1Brand", "acct_1Europe"]
    assert len({r.run_key for r in requests}) == 2


def test_a_config_without_accounts_is_one_partition(tmp_path):
    cfg = write_config(tmp_path / "sync.yaml")
    assert stripe_sf_dagster.partitions(cfg).get_partition_keys() == ["default"]


def test_two_partitions_materialize_and_check(config, stripe_accounts, sandbox_vars, monkeypatch):
    import yaml

    from stripe_sf_sandbox.stripe_factory import StripeFactory

    brand, europe = stripe_accounts["platform"], stripe_accounts["separate"]
    t0 = int(datetime.now(UTC).timestamp()) - 86400
    last_event = {}
    for name, account in (("brand", brand), ("europe", europe)):
        f = StripeFactory(account, seed=3)
        last_event[account.account_id] = f.emit("customer.created",
                                                f.customer(name.title(), f"{name}@example.com", created=t0), t0)["id"]
    settings = yaml.safe_load(config.read_text())
    settings["stripe"]["accounts"] = [{"id": brand.account_id},
                                      {"id": europe.account_id, "api_key_env": "STRIPE_API_KEY_EU"}]
    config.write_text(yaml.safe_dump(settings))  # one state: a cursor, ledger and lock per pipeline in it

    defs = stripe_sf_dagster.definitions(config)
    job = defs.resolve_job_def(stripe_sf_dagster.JOB)
    assert job.partitions_def.get_partition_keys() == [brand.account_id, europe.account_id]
    instance = dg.DagsterInstance.ephemeral()
    first = datetime.fromtimestamp(t0 - 86400, UTC).strftime("%Y-%m-%d")
    # Europe's key missing: its partition fails with the message; nothing of it stops Brand's below.
    failed = job.execute_in_process(partition_key=europe.account_id, run_config=sync_config(first),
                                    instance=instance, raise_on_error=False)
    [failure] = [e for e in failed.all_events if e.is_step_failure]
    assert "STRIPE_API_KEY_EU is not set" in failure.step_failure_data.error.message
    monkeypatch.setenv("STRIPE_API_KEY_EU", europe.api_key)
    for account in (brand, europe):
        key = account.account_id
        result = job.execute_in_process(partition_key=key, run_config=sync_config(first), instance=instance)
        assert result.success
        figures = materialization(result, key)
        assert figures["exit_code"] in (ExitCode.OK, ExitCode.DEAD_LETTERS) and figures["events_read"] == 1
        assert figures["cursor"] == last_event[key]  # its own account's event, none of the other's
        [check] = result.get_asset_check_evaluations()
        assert check.metadata["pipeline"].value == key
    # Both partitions stand materialized in Dagster; a second run of each reads nothing new.
    assert instance.get_materialized_partitions(dg.AssetKey(stripe_sf_dagster.ASSET)) == set(last_event)
    for key in last_event:
        again = job.execute_in_process(partition_key=key, instance=instance)
        assert materialization(again, key)["events_read"] == 0


def test_the_check_run_on_its_own_reconciles_every_pipeline(config, sc, sandbox_vars):
    asset, check = stripe_sf_dagster.build(stripe_sf_dagster.partitions(config))
    resources = {"stripe_sf": stripe_sf_dagster.StripeSf(config_path=str(config))}
    assert dg.materialize([asset, check], partition_key="default", run_config=sync_config(since(sc)),
                          resources=resources).success
    result = dg.materialize([asset, check], selection=dg.AssetSelection.checks(check), resources=resources)
    assert not result.get_asset_materialization_events()  # the check alone: no sync
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.metadata["pipelines"].value == 1 and evaluation.partition is None


def test_the_one_line_code_location_of_the_docs_loads(tmp_path, monkeypatch):
    write_config(tmp_path / "sync.yaml")
    page = (Path(__file__).resolve().parent.parent / "docs" / "dagster.md").read_text()
    module = page.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'definitions("sync.yaml")' in module
    (tmp_path / "stripe_sf_defs.py").write_text(module)
    monkeypatch.chdir(tmp_path)  # a relative config path is read from the code location's working directory
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    defs = importlib.import_module("stripe_sf_defs").defs
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_assets_def(stripe_sf_dagster.ASSET).partitions_def.get_partition_keys() == ["default"]
