"""Errors that say what is wrong, through the CLI: a state directory that cannot be written, an untrusted TLS
certificate at either edge, discover-config --write with a bad --config, and a dry run's dead letters."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from stripe_sf_sandbox import scenario
from stripe_sf_sandbox.demo import sandbox_environment
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync import service
from stripe_sf_sync.cli import app
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.salesforce.retry import Verdict, failure_of
from stripe_sf_sync.state import StateStore

from .conftest import EXAMPLE, since, write_config

# Secrets that pass validation; nothing is contacted before the state store is opened.
OFFLINE = {"STRIPE_API_KEY": "sk_test_x1234567", "SF_INSTANCE_URL": "https://127.0.0.1:9", "SF_ACCESS_TOKEN": "t"}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def cli_env(stripe_sb: StripeSandbox, sf_sb, *, ca_bundle: str | None) -> dict[str, str | None]:
    """Token mode against the stand-ins; `ca_bundle` None leaves only the default CAs (the stand-ins' are not
    among them)."""
    return {"STRIPE_API_KEY": stripe_sb.api_key, "STRIPE_API_BASE": stripe_sb.base_url,
            "SF_INSTANCE_URL": sf_sb.instance_url, "SF_ACCESS_TOKEN": sf_sb.access_token,
            "REQUESTS_CA_BUNDLE": ca_bundle, "CURL_CA_BUNDLE": None}


def yesterday() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make `directory` read-only for this process: by its mode for a normal user; root ignores modes, so as root
    a read-only bind mount of it (a read-only file system, which stops root too)."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(directory), str(directory)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only directory as root here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        for _ in range(3):  # a file still open there keeps the mount busy until it is collected
            if subprocess.run(["umount", str(directory)], capture_output=True, check=False).returncode == 0:
                break
            gc.collect()
            time.sleep(0.2)
        else:
            subprocess.run(["umount", "--lazy", str(directory)], check=True)


def state_config(tmp_path: Path, state: Path) -> Path:
    return write_config(tmp_path / "sync.yaml", **{"won_stage: null": "won_stage: Won",
                                                   "state_path: null": f"state_path: {state}"})


# --- the state directory ---------------------------------------------------------------------------------------

def test_a_state_directory_that_cannot_be_created_is_named_with_the_state_exit_code(runner, tmp_path):
    parent = tmp_path / "srv"
    parent.mkdir()
    cfg = state_config(tmp_path, parent / "stripe-sf" / "state.sqlite")
    with read_only(parent):
        result = runner.invoke(app, ["sync", "--config", str(cfg), "--since", yesterday()], env=OFFLINE)
    assert result.exit_code == ExitCode.STATE, result.output
    assert f"Cannot create the state directory {parent / 'stripe-sf'}" in result.output
    assert "sync.state_path" in result.output and "mkdir -p" in result.output
    assert "bug" not in result.output and "Traceback" not in result.output


def test_a_fresh_state_file_in_a_read_only_directory_names_it_and_what_is_needed(runner, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    cfg = state_config(tmp_path, data / "state.sqlite")
    with read_only(data):
        result = runner.invoke(app, ["sync", "--config", str(cfg), "--since", yesterday()], env=OFFLINE)
    assert result.exit_code == ExitCode.STATE, result.output
    assert f"Cannot write the state file {data / 'state.sqlite'}" in result.output
    assert f"directory {data}" in result.output and "-wal and -shm" in result.output
    assert "bug" not in result.output and "Traceback" not in result.output


def test_an_existing_state_file_in_a_read_only_directory_is_not_called_corrupt(runner, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    state = data / "state.sqlite"
    StateStore.open(state).close()
    cfg = state_config(tmp_path, state)
    with read_only(data):
        synced = runner.invoke(app, ["sync", "--config", str(cfg)], env=OFFLINE)
        status = runner.invoke(app, ["status", "--config", str(cfg)])
    assert synced.exit_code == ExitCode.STATE, synced.output
    assert f"Cannot write the state file {state}" in synced.output and "writable" in synced.output
    assert "move it aside" not in synced.output and "corrupt" not in synced.output
    assert "Traceback" not in synced.output
    assert status.exit_code == ExitCode.OK and "Never run" in status.stdout, status.output  # it only reads


def test_status_reads_a_state_file_in_a_read_only_directory(runner, config, stripe_sb, sf_sb, sc):
    """Issue 20 §5: status needed write access to the state directory (SQLite's -wal and -shm files), so an
    operator's read-only account (here a read-only mount, which stops root too) could not read it."""
    env = cli_env(stripe_sb, sf_sb, ca_bundle=sf_sb.ca_path)
    runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc)], env=env)
    before = json.loads(runner.invoke(app, ["status", "--config", str(config), "--json"]).stdout)
    state = config.parent / "stripe-sf-state.sqlite"
    StateStore.open(state).close()  # the last writer to close checkpoints and removes the -wal and -shm files
    assert not Path(f"{state}-wal").exists()  # no run has it open: the file alone holds every commit
    with read_only(config.parent):
        quiet = runner.invoke(app, ["status", "--config", str(config), "--json"])
        text = runner.invoke(app, ["status", "--config", str(config)])
    assert quiet.exit_code == ExitCode.OK, quiet.output
    after = json.loads(quiet.stdout)
    for key in ("cursor", "dead_letters", "last_run", "never_run"):
        assert _timeless(after[key]) == _timeless(before[key]), key
    assert text.exit_code == ExitCode.OK and "Open dead letters: 1" in text.stdout, text.output


def _timeless(value: object) -> object:
    """Drop the ages: they are counted from now, and the two reads may fall either side of a second."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if not k.endswith("age_s")}
    return value


def test_status_in_a_read_only_directory_sees_what_an_open_run_committed_to_the_wal(runner, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    state = data / "state.sqlite"
    cfg = state_config(tmp_path, state)
    StateStore.open(state).close()
    writer = StateStore.open(state)  # a run with the file open: its commits sit in the -wal until a checkpoint
    try:
        writer.start_run("sync")
        assert Path(f"{state}-wal").exists() and Path(f"{state}-shm").exists()
        with read_only(data):
            result = runner.invoke(app, ["status", "--config", str(cfg), "--json"])
    finally:
        writer.close()
    assert result.exit_code == ExitCode.OK, result.output
    report = json.loads(result.stdout)
    assert [r["command"] for r in report["runs"]] == ["sync"] and report["never_run"] is False


# --- TLS certificates ------------------------------------------------------------------------------------------

def test_an_untrusted_salesforce_certificate_stops_at_once_and_names_requests_ca_bundle(runner, config, stripe_sb,
                                                                                       sf_sb, sc):
    started, discovered = time.monotonic(), len(sf_sb.requests_log)
    result = runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc)],
                           env=cli_env(stripe_sb, sf_sb, ca_bundle=None))
    assert result.exit_code == ExitCode.UNAVAILABLE, result.output
    assert "Cannot verify Salesforce's TLS certificate" in result.output
    assert "REQUESTS_CA_BUNDLE" in result.output
    assert "retrying" not in result.stderr  # a certificate does not become trusted by waiting
    assert len(sf_sb.requests_log) == discovered  # no request got through the handshake
    assert time.monotonic() - started < 5


def test_a_certificate_failure_is_classified_fatal_and_a_dropped_connection_is_retried(sf_sb):
    from stripe_sf_sync.errors import certificate_problem

    with pytest.raises(requests.exceptions.SSLError) as untrusted:
        requests.get(sf_sb.instance_url, timeout=5)
    failure = failure_of(untrusted.value)
    assert failure is not None and failure.verdict is Verdict.FATAL and failure.tls
    assert "REQUESTS_CA_BUNDLE" in str(failure.error("describing Opportunity"))
    dropped = requests.exceptions.SSLError("EOF occurred in violation of protocol")
    assert certificate_problem(dropped) is None
    assert failure_of(dropped).verdict is Verdict.RETRY


@pytest.fixture
def tls_stripe() -> Iterator[StripeSandbox]:
    with StripeSandbox(tls=True) as sb:
        yield sb


@pytest.fixture
def tls_world(tmp_path, tls_stripe, sf_sb, org) -> tuple[Path, scenario.Scenario]:
    sc = scenario.load(tls_stripe, org, now=int(time.time()))
    cfg = write_config(tmp_path / "sync.yaml")
    service.run_discover(cfg, sandbox_environment(tls_stripe, sf_sb), write=True, example=EXAMPLE)
    return cfg, sc


def test_an_untrusted_stripe_certificate_stops_at_once_and_names_requests_ca_bundle(runner, tls_world, tls_stripe,
                                                                                   sf_sb):
    cfg, sc = tls_world
    result = runner.invoke(app, ["sync", "--config", str(cfg), "--since", since(sc)],
                           env=cli_env(tls_stripe, sf_sb, ca_bundle=sf_sb.ca_path))
    assert result.exit_code == ExitCode.UNAVAILABLE, result.output
    assert "Cannot verify Stripe's TLS certificate while listing events" in result.output
    assert "REQUESTS_CA_BUNDLE" in result.output and "after retries" not in result.output
    assert "retrying" not in result.stderr
    assert tls_stripe.request_count == 0


def test_requests_ca_bundle_is_trusted_at_both_edges(runner, tmp_path, tls_world, tls_stripe, sf_sb):
    """Behind a TLS-inspecting proxy one bundle holds its CA: the Stripe SDK must use it too, not only its own."""
    cfg, sc = tls_world
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(Path(tls_stripe.ca_path).read_text() + Path(sf_sb.ca_path).read_text())
    result = runner.invoke(app, ["sync", "--config", str(cfg), "--since", since(sc), "--json"],
                           env=cli_env(tls_stripe, sf_sb, ca_bundle=str(bundle)))
    assert result.exit_code == ExitCode.DEAD_LETTERS, result.output
    assert json.loads(result.stdout)["events_read"] == len(sc.events)


# --- discover-config --write --------------------------------------------------------------------------------------

def test_discover_config_write_into_a_missing_directory_is_a_usage_error_before_logging_in(runner, tmp_path,
                                                                                          stripe_sb, sf_sb):
    cfg = tmp_path / "no-such-dir" / "sync.yaml"
    result = runner.invoke(app, ["discover-config", "--config", str(cfg), "--write"],
                           env=cli_env(stripe_sb, sf_sb, ca_bundle=sf_sb.ca_path))
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert f"the directory {tmp_path / 'no-such-dir'} does not exist" in result.output
    assert "bug" not in result.output and "Traceback" not in result.output
    assert sf_sb.requests_log == []
    assert not cfg.parent.exists()


# --- a dry run ------------------------------------------------------------------------------------------------------

def test_a_dry_run_says_would_dead_letter_and_exits_0(runner, config, stripe_sb, sf_sb, sc):
    env = cli_env(stripe_sb, sf_sb, ca_bundle=sf_sb.ca_path)
    dead = len(sc.unmatched_events)
    result = runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc), "--dry-run"], env=env)
    assert result.exit_code == ExitCode.OK, result.output
    assert f"would dead-letter {dead}" in result.stdout
    assert "dead-lettered" not in result.output  # neither the summary, the advice, nor the log lines
    assert f"would dead-letter {sc.unmatched_events[0]}" in result.stderr
    as_json = runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc), "--dry-run", "--json"],
                            env=env)
    assert as_json.exit_code == ExitCode.OK and json.loads(as_json.stdout)["dead_lettered"] == dead
    # and nothing was recorded: the real run dead-letters them
    real = runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc)], env=env)
    assert real.exit_code == ExitCode.DEAD_LETTERS and f"{dead} dead-lettered" in real.stdout


def test_a_dry_run_with_a_wrong_config_still_exits_2(runner, tmp_path):
    cfg = write_config(tmp_path / "sync.yaml")  # no won stage
    result = runner.invoke(app, ["sync", "--config", str(cfg), "--dry-run"], env=OFFLINE)
    assert result.exit_code == ExitCode.CONFIG and "discover-config --write" in result.output


# --- a request Stripe refuses ----------------------------------------------------------------------------------

def test_a_list_call_stripe_refuses_names_the_request_stripe_s_message_and_request_id(runner, config, stripe_sb,
                                                                                      sf_sb):
    """Issue 20 §5: a 400 from a Stripe list call surfaced as an internal error (exit 1, "a bug")."""
    # Stripe's error shape for a refused parameter (Stripe API reference: Errors): type, message, param.
    stripe_sb.faults.fail_matching("GET", r"^/v1/subscriptions", 400, body={"error": {
        "type": "invalid_request_error", "code": "parameter_unknown", "param": "status",
        "message": "Received unknown parameter: status"}}, times=10)
    env = cli_env(stripe_sb, sf_sb, ca_bundle=sf_sb.ca_path)
    result = runner.invoke(app, ["backfill", "--config", str(config), "--since", "2020-01-01",
                                 "--objects", "subscriptions"], env=env)
    assert result.exit_code == ExitCode.CONFIG, result.output
    text = " ".join(result.stderr.split())
    assert "Stripe refused GET /v1/subscriptions while listing subscriptions: Received unknown parameter: " \
           "status (HTTP 400 parameter_unknown, parameter status, request req_" in text, text
    assert "stripe.api_version" in text and "bug" not in text and "Traceback" not in result.output


def test_status_as_another_account_that_may_only_read(tmp_path):
    """Issue 20 §5: an operator's account, which may read the state but write nothing next to it, runs status.
    As root (where modes do not bite) it runs as `nobody`; the state and its directory belong to this user."""
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot run status as another account")
        as_other = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    else:
        as_other = []  # this user, and the modes below bite
    data = Path(tempfile.mkdtemp(prefix="stripe-sf-ro-", dir="/tmp"))  # reachable by `nobody`
    try:
        state = data / "stripe-sf-state.sqlite"
        with StateStore.open(state) as st:
            st.finish_run(st.start_run("sync"), 0, {"events_read": 7, "applied": 7, "dead_lettered": 0})
            st.acquire_lock()
        cfg = state_config(data, state)
        data.chmod(0o755 if as_other else 0o555)  # not writable by the account that runs status

        def status() -> subprocess.CompletedProcess[str]:
            return subprocess.run([*as_other, sys.executable, "-m", "stripe_sf_sync", "status", "--config", str(cfg)],
                                  capture_output=True, text=True, timeout=60, cwd="/")

        state.chmod(0o600 if as_other else 0o000)
        refused = status()
        assert refused.returncode == ExitCode.STATE, refused
        assert f"Cannot read the state file {state}: permission denied" in refused.stderr
        assert "read access" in refused.stderr and "Traceback" not in refused.stderr
        state.chmod(0o644)
        Path(f"{state}.lock").chmod(0o644)
        read = status()
        assert read.returncode == ExitCode.OK, read
        assert "Last run: sync #1" in read.stdout and "7 read, 7 applied" in read.stdout
        assert sorted(p.name for p in data.iterdir()) == ["stripe-sf-state.sqlite", "stripe-sf-state.sqlite.lock",
                                                          "sync.yaml"]  # status wrote nothing
    finally:
        data.chmod(0o755)
        shutil.rmtree(data)
