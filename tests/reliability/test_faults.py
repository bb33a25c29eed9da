"""Fault injection in the stand-ins. Every case ends in the same final state as a clean run: Stripe 429s
(with and without `Stripe-Should-Retry`) and 500s, Salesforce 503s, `UNABLE_TO_LOCK_ROW` on some records of
a collection, expired sessions (renewed in client-credentials mode, a clear fatal exit with an access
token), `REQUEST_LIMIT_EXCEEDED` (fatal, with its code), and responses slower than the client timeout."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from requests.adapters import HTTPAdapter

from stripe_sf_sync import service
from stripe_sf_sync.errors import ExitCode, FatalSyncError

from .world import (
    STATE_NAME,
    World,
    assert_converged,
    build_world,
    discover,
    expected_of,
    stripe_sf,
    sync,
    write_config,
)

NOW = int(time.time())
EXTRA = 6
RATE_LIMIT = {"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests"}}
SERVER_ERROR = {"error": {"type": "api_error", "message": "Something went wrong on Stripe's end."}}
SF_503 = [{"message": "Server unavailable", "errorCode": "SERVER_UNAVAILABLE"}]
LIMIT = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]


@pytest.fixture(scope="module")
def clean() -> dict:
    """The final state of a run without faults."""
    with build_world(NOW, extra=EXTRA) as world, tempfile.TemporaryDirectory() as tmp:
        cfg = discover(write_config(Path(tmp)), world)
        summary = sync(cfg, world.env(), since=world.since)
        assert summary.dead_lettered >= 3 and summary.applied > 20
        return expected_of(world, Path(tmp) / STATE_NAME)


@pytest.fixture
def world() -> Iterator[World]:
    with build_world(NOW, extra=EXTRA) as w:
        yield w


def config_for(world: World, tmp_path: Path, extra: str = "") -> Path:
    return discover(write_config(tmp_path, extra=extra), world)


def finish(world: World, cfg: Path, clean: dict, environment: service.Environment | None = None) -> None:
    """Run again (from the cursor, or from the start if nothing was committed) and compare with the clean run."""
    state = cfg.parent / STATE_NAME
    from .world import state_rows
    since = None if state.exists() and state_rows(state)["cursor"] else world.since
    sync(cfg, environment or world.env(), since=since)
    assert_converged(world, state, clean)


# --- Stripe ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("should_retry", ["true", "false", None])
def test_stripe_429_is_backed_off_with_or_without_should_retry(world, tmp_path, clean, should_retry):
    headers = {"Stripe-Should-Retry": should_retry} if should_retry else {}
    f = world.stripe.faults
    f.fail_matching("GET", r"^/v1/events", 429, RATE_LIMIT, headers=headers, times=2)
    f.fail_matching("GET", r"^/v1/customers/", 429, RATE_LIMIT, headers=headers, times=3)
    f.fail_matching("GET", r"^/v1/invoice_payments", 429, RATE_LIMIT, headers=headers, times=2)
    cfg = config_for(world, tmp_path)
    before = world.stripe.request_count
    summary = sync(cfg, world.env(), since=world.since)
    assert summary.stripe_calls == world.stripe.request_count - before  # retries are counted
    assert_converged(world, cfg.parent / STATE_NAME, clean)


def test_stripe_500s_are_retried(world, tmp_path, clean):
    world.stripe.faults.fail_matching("GET", r"^/v1/events", 500, SERVER_ERROR, times=2)
    world.stripe.faults.fail_matching("GET", r"^/v1/invoices/", 500, SERVER_ERROR, times=1)
    cfg = config_for(world, tmp_path)
    sync(cfg, world.env(), since=world.since)
    assert_converged(world, cfg.parent / STATE_NAME, clean)


def test_stripe_down_is_fatal_and_a_rerun_converges(world, tmp_path, clean):
    cfg = config_for(world, tmp_path)
    world.stripe.faults.fail_matching("GET", r"^/v1/customers/", 500, SERVER_ERROR, times=50)
    with pytest.raises(FatalSyncError) as info:
        sync(cfg, world.env(), since=world.since)
    assert info.value.exit_code == ExitCode.UNAVAILABLE and "Nothing was lost" in str(info.value)
    world.stripe.faults.clear()
    finish(world, cfg, clean)


def test_stripe_slower_than_the_timeout_is_retried(world, tmp_path, clean):
    cfg = config_for(world, tmp_path, extra="")
    cfg.write_text(cfg.read_text().replace("timeout_seconds: 30", "timeout_seconds: 0.5"))
    world.stripe.faults.hang_request(world.stripe.request_count + 2, 2.0)
    sync(cfg, world.env(), since=world.since)
    assert_converged(world, cfg.parent / STATE_NAME, clean)


# --- Salesforce ---------------------------------------------------------------------------------------

def test_salesforce_503s_are_retried(world, tmp_path, clean):
    f = world.sf.faults
    f.fail_matching("PATCH", r"composite/sobjects", 503, SF_503, times=3)
    f.fail_matching("GET", r"/query", 503, SF_503, times=2)
    cfg = config_for(world, tmp_path)
    sync(cfg, world.env(), since=world.since)
    assert_converged(world, cfg.parent / STATE_NAME, clean)


def test_salesforce_down_is_fatal_and_a_rerun_converges(world, tmp_path, clean):
    cfg = config_for(world, tmp_path)
    sync(cfg, world.env(), since=world.since)  # warm: nothing left; use a fresh state for the real test
    for p in tmp_path.glob(STATE_NAME + "*"):
        p.unlink()
    world.org.api_used = 0
    world.sf.faults.fail_matching("PATCH", r"composite/sobjects", 503, SF_503, times=1000)
    with pytest.raises(FatalSyncError) as info:
        sync(cfg, world.env(), since=world.since)
    assert info.value.code == "SERVER_UNAVAILABLE" and info.value.exit_code == ExitCode.UNAVAILABLE
    world.sf.faults.clear()
    finish(world, cfg, clean)


def test_row_locks_on_some_records_of_a_collection_are_retried(world, tmp_path, clean):
    sc = world.sc
    f = world.sf.faults
    f.lock_rows("Account", sc.accounts["acme"], times=2)
    f.lock_rows("Account", sc.accounts["initech"], times=3)
    f.lock_rows("Opportunity", sc.subscriptions["acme"], times=1)  # an upsert, locked by its external id
    cfg = config_for(world, tmp_path)
    summary = sync(cfg, world.env(), since=world.since)
    assert summary.dead_lettered == len(clean["dead"])
    assert_converged(world, cfg.parent / STATE_NAME, clean)


def test_a_row_lock_that_never_clears_dead_letters_with_its_code_then_retry_converges(world, tmp_path, clean):
    acme = world.sc.accounts["acme"]
    world.sf.faults.lock_rows("Account", acme, times=1000)
    cfg = config_for(world, tmp_path)
    sync(cfg, world.env(), since=world.since)
    from stripe_sf_sync.state import StateStore
    with StateStore.open(cfg.parent / STATE_NAME) as st:
        locked = [d for d in st.dead_letters() if d.error_code == "UNABLE_TO_LOCK_ROW"]
    assert [d.event_id for d in locked] == [world.sc.events[0]] and locked[0].attempts == 1
    world.sf.faults.clear()
    summary = service.run_dlq_retry(cfg, world.env(), event_ids=[locked[0].event_id], retry_all=False)
    assert summary.applied == 1
    expected = dict(clean)
    from .world import snapshot
    assert snapshot(world.org) == expected["snapshot"]
    with StateStore.open(cfg.parent / STATE_NAME) as st:
        assert {d.event_id for d in st.dead_letters()} == set(clean["dead"])
        assert st.dead_letter(locked[0].event_id).status == "resolved"


def test_request_limit_exceeded_is_fatal_with_its_code_and_a_rerun_converges(world, tmp_path, clean):
    cfg = config_for(world, tmp_path)
    first_query = len(world.sf.requests_log)
    # Let a few batches commit, then the daily allowance runs out.
    world.sf.faults.on_request = lambda n, m, p: (
        world.sf.faults.fail_matching("*", r".", 403, LIMIT, times=1000) if n == first_query + 20 else None)
    with pytest.raises(FatalSyncError) as info:
        sync(cfg, world.env(), since=world.since)
    assert info.value.code == "REQUEST_LIMIT_EXCEEDED" and info.value.exit_code == ExitCode.UNAVAILABLE
    assert "daily API allowance" in str(info.value)
    from .world import state_rows
    assert state_rows(cfg.parent / STATE_NAME)["cursor"] is not None  # some batches were committed
    world.sf.faults.clear()
    finish(world, cfg, clean)


def test_request_limit_exceeded_through_the_cli_exits_unavailable(world, tmp_path):
    cfg = config_for(world, tmp_path)
    world.sf.faults.fail_matching("*", r"composite/sobjects", 403, LIMIT, times=1000)
    done = stripe_sf(["sync", "--config", str(cfg), "--since", world.since], world.cli_env())
    assert done.returncode == ExitCode.UNAVAILABLE
    assert "REQUEST_LIMIT_EXCEEDED" in done.stderr and "Traceback" not in done.stderr


def test_an_org_already_over_the_api_budget_gets_no_write_and_a_rerun_converges(world, tmp_path, clean):
    """The budget holds from the first write: the first batch's lookups tell the usage, and nothing is sent."""
    cfg = config_for(world, tmp_path)
    world.org.api_used = 85_000  # of 100,000; salesforce.api_budget is 0.8
    world.org.reset_key_counters()
    done = stripe_sf(["sync", "--config", str(cfg), "--since", world.since], world.cli_env())
    assert done.returncode == ExitCode.UNAVAILABLE, done.stderr
    assert "Stopped early: Salesforce API usage reached" in done.stderr and "budget of 80%" in done.stderr
    assert world.org.written_keys == {}  # not one record written
    from .world import state_rows
    rows = state_rows(cfg.parent / STATE_NAME)
    assert rows["events"] == {} and rows["cursor"] is None  # nothing of the batch committed
    world.org.api_used = 0  # the rolling 24 hours moved on
    done = stripe_sf(["sync", "--config", str(cfg), "--since", world.since], world.cli_env())
    assert done.returncode == ExitCode.DEAD_LETTERS, done.stderr
    assert_converged(world, cfg.parent / STATE_NAME, clean)


def test_bulk_jobs_respect_the_api_budget_from_the_first_write(tmp_path):
    """A backfill through Bulk API 2.0 started over the budget starts no job; `--resume` later writes it all."""
    with build_world(NOW, extra=EXTRA) as world:
        cfg = config_for(world, tmp_path, extra="")
        cfg.write_text(cfg.read_text().replace("bulk_threshold: 2000", "bulk_threshold: 1")
                       .replace("bulk_poll_seconds: 5", "bulk_poll_seconds: 0"))
        world.org.api_used = 90_000
        args = ["backfill", "--config", str(cfg), "--since", world.since, "--objects", "subscriptions"]
        done = stripe_sf(args, world.cli_env())
        assert done.returncode == ExitCode.UNAVAILABLE, done.stderr
        assert "Stopped early: Salesforce API usage reached" in done.stderr and "--resume" in done.stderr
        assert not any("jobs/ingest" in path for _, path in world.sf.requests_log)
        assert world.org.written_keys == {}
        world.org.api_used = 0
        done = stripe_sf([*args, "--resume"], world.cli_env())
        assert done.returncode in (ExitCode.OK, ExitCode.DEAD_LETTERS), done.stderr
        assert any("jobs/ingest" in path for _, path in world.sf.requests_log)
        live = {s["customer"] for s in world.stripe.objects_of("subscription") if s["status"] == "active"}
        matched = {a["Stripe_Customer_ID__c"] for a in world.org.records("Account")}
        opportunities = {o["Stripe_Customer_ID__c"] for o in world.org.records("Opportunity")}
        assert live & matched <= opportunities


def test_salesforce_slower_than_the_timeout_is_retried(world, tmp_path, clean):
    cfg = config_for(world, tmp_path)
    cfg.write_text(cfg.read_text().replace("timeout_seconds: 60", "timeout_seconds: 0.5"))
    start = len(world.sf.requests_log)
    world.sf.faults.on_request = None
    # Hang a lookup (a read) and a later one: the client gives up after 0.5 s and asks again.
    world.sf.faults.hang_request(start + 6, 2.0)
    world.sf.faults.hang_request(start + 30, 2.0)
    sync(cfg, world.env(), since=world.since)
    assert_converged(world, cfg.parent / STATE_NAME, clean)


def test_expired_access_token_is_a_clear_fatal_exit(world, tmp_path, clean):
    cfg = config_for(world, tmp_path)
    start = len(world.sf.requests_log)
    # Expire it once the first batches are committed, at a lookup (the test below covers a write).
    world.sf.faults.on_request = lambda n, m, p: (
        world.org.expire_sessions() if n > start + 12 and "composite/sobjects" not in p else None)
    done = stripe_sf(["sync", "--config", str(cfg), "--since", world.since], world.cli_env())
    assert done.returncode == ExitCode.UNAVAILABLE, done.stderr
    assert "INVALID_SESSION_ID" in done.stderr and "client credentials" in done.stderr
    assert "Traceback" not in done.stderr
    world.sf.faults.on_request = None
    world.sf.access_token = world.org.new_access_token()  # the operator exports a fresh token
    finish(world, cfg, clean)


class RouteToSandbox(HTTPAdapter):
    """simple-salesforce posts client-credentials logins to https://{SF_DOMAIN}.salesforce.com: send them
    to the stand-in instead (a transport adapter, no DNS or network)."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.target = urlsplit(base)

    def send(self, request, **kwargs):  # type: ignore[no-untyped-def, override]
        parts = urlsplit(request.url)
        if parts.hostname and parts.hostname.endswith(".salesforce.com"):
            request.url = urlunsplit((self.target.scheme, self.target.netloc, parts.path, parts.query, ""))
        return super().send(request, **kwargs)


def client_credentials_env(world: World) -> service.Environment:
    world.org.oauth_clients["reliability-key"] = "reliability-secret"

    def session() -> requests.Session:
        s = world.sf.session()
        s.mount("https://", RouteToSandbox(world.sf.instance_url))
        return s

    env = {"STRIPE_API_KEY": world.stripe.api_key, "STRIPE_API_BASE": world.stripe.base_url,
           "SF_CONSUMER_KEY": "reliability-key", "SF_CONSUMER_SECRET": "reliability-secret",
           "SF_DOMAIN": "acme.my"}
    return service.Environment(env=env, session_factory=session, sleep=lambda s: None)


def test_expired_session_is_renewed_in_client_credentials_mode(world, tmp_path, clean):
    cfg = config_for(world, tmp_path)
    environment = client_credentials_env(world)
    start = len(world.sf.requests_log)
    expired_at = {start + 12, start + 40}  # once during a lookup, once later
    world.sf.faults.on_request = lambda n, m, p: world.org.expire_sessions() if n in expired_at else None
    sync(cfg, environment, since=world.since)
    logins = [p for _, p in world.sf.requests_log[start:] if p.endswith("/oauth2/token")]
    assert len(logins) >= 2
    assert_converged(world, cfg.parent / STATE_NAME, clean)


def test_expired_session_during_a_write_is_renewed_in_client_credentials_mode(world, tmp_path, clean):
    cfg = config_for(world, tmp_path)
    environment = client_credentials_env(world)
    writes = [0]

    def hook(n: int, method: str, path: str) -> None:
        if "composite/sobjects" in path:
            writes[0] += 1
            if writes[0] in (3, 9):
                world.org.expire_sessions()  # the write itself is answered 401 INVALID_SESSION_ID

    world.sf.faults.on_request = hook
    sync(cfg, environment, since=world.since)
    assert_converged(world, cfg.parent / STATE_NAME, clean)


def _task_create(method: str, path: str) -> bool:
    return method == "POST" and path.rstrip("/").endswith("/composite/sobjects")


def test_a_run_stopped_between_the_account_write_and_the_task_write_loses_no_task(tmp_path):
    """Initech's customer.subscription.deleted is the last event that writes Tasks. Stop the run (a fatal
    REQUEST_LIMIT_EXCEEDED) exactly at that batch's Task write, after its Account write; then run again."""
    with build_world(NOW, extra=0) as ref_world, tempfile.TemporaryDirectory() as ref_tmp:
        ref_cfg = discover(write_config(Path(ref_tmp), batch_size=1), ref_world)
        start = len(ref_world.sf.requests_log)
        sync(ref_cfg, ref_world.env(), since=ref_world.since)
        # Tasks are the only records stripe-sf creates (sObject Collections create: POST composite/sobjects).
        task_writes = sum(1 for m, p in ref_world.sf.requests_log[start:] if _task_create(m, p))
        clean = expected_of(ref_world, Path(ref_tmp) / STATE_NAME)
    with build_world(NOW, extra=0) as world:
        cfg = discover(write_config(tmp_path, batch_size=1), world)
        seen = [0]

        def hook(n: int, method: str, path: str) -> None:
            if _task_create(method, path):
                seen[0] += 1
                if seen[0] == task_writes:
                    world.sf.faults.fail_request(n, 403, LIMIT)

        world.sf.faults.on_request = hook
        with pytest.raises(FatalSyncError):
            sync(cfg, world.env(), since=world.since)
        world.sf.faults.on_request = None
        finish(world, cfg, clean)
