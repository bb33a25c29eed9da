"""Secret hygiene: every command, at --debug, with failures forced, in token and client-credentials modes:
no secret in stdout, stderr, the state database (and its -wal file), dead letters, or cassettes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from stripe_sf_sync import service
from tests import cassette_tools
from tests.cassette_tools import CASSETTES, scrub_text

from .test_faults import RouteToSandbox
from .world import ROOT, STATE_NAME, build_world, discover, stripe_sf, write_config

NOW = int(time.time())
STRIPE_KEY = "sk_test_RELIABILITYstripeSECRETkey0000000001"
FAKE = {  # recognisable values for every secret variable, set even when the chosen mode does not use them
    "SF_PASSWORD": "PASSWORDreliabilitySECRET0001",
    "SF_SECURITY_TOKEN": "SECTOKENreliabilitySECRET0001",
    "SF_USERNAME": "integration@stripe-sf.sandbox",
}
CONSUMER_KEY = "CONSUMERKEYreliabilitySECRET0001"
CONSUMER_SECRET = "CONSUMERSECRETreliabilitySECRET0001"


def _tokens(org) -> set[str]:
    return set(getattr(org, "_tokens", set()))


def _assert_clean(secrets: set[str], *texts: str | bytes) -> None:
    for secret in secrets:
        assert len(secret) >= 12
        for text in texts:
            blob = text.encode() if isinstance(text, str) else text
            assert secret.encode() not in blob, f"secret {secret[:10]}… leaked"


def test_no_command_leaks_a_secret_at_debug_with_failures_forced(tmp_path):
    with build_world(NOW, extra=2) as world:
        cfg = write_config(tmp_path)
        env = world.cli_env(STRIPE_API_KEY=STRIPE_KEY, **FAKE)
        secrets = {STRIPE_KEY, world.sf.access_token, *FAKE.values()} - {FAKE["SF_USERNAME"]}
        outputs: list[str] = []

        def run(*args: str, expect: tuple[int, ...] = (0, 3), extra_env: dict | None = None) -> str:
            done = stripe_sf([*args, "--config", str(cfg), "--debug"] if args[0] != "demo" else [*args, "--debug"],
                             {**env, **(extra_env or {})})
            outputs.extend([done.stdout, done.stderr])
            assert done.returncode in expect, (args, done.returncode, done.stderr[-2000:])
            return done.stdout

        run("discover-config", "--write")
        # Failures: a Stripe 500, a Salesforce 503, a row lock that never clears (a dead letter with its error).
        world.stripe.faults.fail_matching("GET", r"^/v1/customers/", 500, None, times=1)
        world.sf.faults.fail_matching("PATCH", r"composite/sobjects", 503,
                                      [{"message": "busy", "errorCode": "SERVER_UNAVAILABLE"}], times=1)
        world.sf.faults.lock_rows("Account", world.sc.accounts["acme"], times=1000)
        run("sync", "--dry-run", "--since", world.since)
        # Pause a real sync inside its third state commit to read the -wal file while it exists.
        pause = tmp_path / "paused"
        proc = subprocess.Popen([sys.executable, "-m", "stripe_sf_sync", "sync", "--config", str(cfg), "--since",
                                 world.since, "--debug"], env={**env, "STRIPE_SF_TEST_KILL": "pause:commit:3",
                                                                "STRIPE_SF_TEST_PAUSE_FILE": str(pause)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        deadline = time.monotonic() + 60
        while not pause.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert pause.exists()
        wal = Path(f"{tmp_path / STATE_NAME}-wal")
        assert wal.exists()
        _assert_clean(secrets, wal.read_bytes(), (tmp_path / STATE_NAME).read_bytes())
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        outputs.extend([out, err])
        run("sync")
        dead = json.loads(run("dlq", "list", "--json"))
        assert any(d["error_code"] == "UNABLE_TO_LOCK_ROW" for d in dead)
        run("dlq", "retry", "--all", expect=(3,))
        run("dlq", "drop", dead[0]["event_id"])
        run("status")
        run("status", "--json")
        # Fatal failures at --debug print a traceback: it must not carry a secret either.
        world.org.expire_sessions()
        world.stripe.faults.fail_matching("GET", r"^/v1/events", 500, None, times=20)
        run("sync", "--since", world.since, "--rewind", expect=(5,))  # a cursor exists: --since needs --rewind
        world.stripe.faults.clear()
        run("sync", expect=(0, 5))
        # A Stripe key Stripe refuses (the error echoes a masked key).
        refused = "sk_live_RELIABILITYrefusedSECRET000000001"
        run("sync", expect=(5,), extra_env={"STRIPE_API_KEY": refused})
        secrets.add(refused)
        run("demo", expect=(0,))
        db = (tmp_path / STATE_NAME).read_bytes()
        wal_now = wal.read_bytes() if wal.exists() else b""
        assert any("Traceback" in o for o in outputs)  # --debug did print tracebacks
        _assert_clean(secrets, db, wal_now, *outputs)
        _assert_clean(secrets, *[p.read_bytes() for p in tmp_path.iterdir() if p.is_file()])


def test_client_credentials_secrets_and_renewed_tokens_never_leak(tmp_path):
    with build_world(NOW, extra=2) as world:
        world.org.oauth_clients[CONSUMER_KEY] = CONSUMER_SECRET
        cfg = discover(write_config(tmp_path), world)
        env = world.cli_env(STRIPE_API_KEY=STRIPE_KEY, SF_INSTANCE_URL="", SF_ACCESS_TOKEN="",
                            SF_CONSUMER_KEY=CONSUMER_KEY, SF_CONSUMER_SECRET=CONSUMER_SECRET, SF_DOMAIN="acme.my",
                            STRIPE_SF_TEST_SF_ROUTE=world.sf.instance_url)
        start = len(world.sf.requests_log)
        world.sf.faults.on_request = lambda n, m, p: world.org.expire_sessions() if n == start + 15 else None
        done = stripe_sf(["sync", "--config", str(cfg), "--since", world.since, "--debug"], env)
        assert done.returncode in (0, 3), done.stderr[-2000:]
        logins = [p for _, p in world.sf.requests_log[start:] if p.endswith("/oauth2/token")]
        assert len(logins) >= 2  # logged in, then renewed the expired session
        world.sf.faults.on_request = None
        world.org.expire_sessions()
        failed = stripe_sf(["sync", "--config", str(cfg), "--debug"],
                           {**env, "SF_CONSUMER_SECRET": CONSUMER_SECRET + "x"})
        secrets = {STRIPE_KEY, CONSUMER_SECRET, CONSUMER_KEY, *_tokens(world.org)}
        _assert_clean(secrets, done.stdout, done.stderr, failed.stdout, failed.stderr,
                      (tmp_path / STATE_NAME).read_bytes())


def test_recorded_cassettes_are_scrubbed(tmp_path):
    """Record a client-credentials login and a sync's Salesforce and Stripe traffic with the project's recorder
    (into tmp_path): the cassette holds no key, secret or token."""
    with build_world(NOW, extra=1) as world:
        world.org.oauth_clients[CONSUMER_KEY] = CONSUMER_SECRET
        cfg = discover(write_config(tmp_path / "cfg"), world)

        def session() -> requests.Session:
            s = world.sf.session()
            s.mount("https://", RouteToSandbox(world.sf.instance_url))
            return s

        environment = service.Environment(env={"STRIPE_API_KEY": STRIPE_KEY, "STRIPE_API_BASE": world.stripe.base_url,
                                               "SF_CONSUMER_KEY": CONSUMER_KEY, "SF_CONSUMER_SECRET": CONSUMER_SECRET,
                                               "SF_DOMAIN": "acme.my"},
                                          session_factory=session, sleep=lambda s: None)
        vcr = cassette_tools.recorder("all")
        vcr.cassette_library_dir = str(tmp_path)
        with vcr.use_cassette("secrets.yaml"):
            service.run_sync(cfg, environment, since=world.since, dry_run=False, max_events=None)
        text = (tmp_path / "secrets.yaml").read_text()
        assert "oauth2/token" in text and "composite/sobjects" in text and "/v1/events" in text
        _assert_clean({STRIPE_KEY, CONSUMER_SECRET, *_tokens(world.org)}, text)
        assert not re.search(r"(?i)authorization", text)


def test_committed_cassettes_hold_no_secret():
    files = [p for p in CASSETTES.iterdir() if p.is_file()]
    assert files
    for path in files:
        text = path.read_text(errors="replace")
        assert not re.search(r"\b(?:sk|rk)_(?:test|live)_(?!REDACTED)[A-Za-z0-9_]{6,}", text), path
        assert not re.search(r"00D[A-Za-z0-9]{12,15}![A-Za-z0-9._-]{20,}", text), path  # a Salesforce session id
        assert not re.search(r"(?i)bearer\s+[A-Za-z0-9!._-]{12,}", text), path
        for key in ("access_token", "client_secret", "password", "refresh_token"):
            for m in re.finditer(rf'"?{key}"?\s*[:=]\s*"?([^"&,\s}}]+)', text):
                assert m.group(1) == "REDACTED", (path, key)


@pytest.mark.parametrize(("raw", "secret"), [
    ("grant_type=client_credentials&client_id=abc&client_secret=S3cr3tValue1", "S3cr3tValue1"),
    ('{"access_token": "00Dxx0000001gPL!AQ4AQFakeToken.abc", "instance_url": "https://x"}',
     "00Dxx0000001gPL!AQ4AQFakeToken.abc"),
    ("grant_type=password&username=u%40x.com&password=hunter2hunter2", "hunter2hunter2"),
    ('{"password": "pa55word!", "x": 1}', "pa55word!"),
    ("Bearer sk_test_51HabcdefghijklmnopQRSTUV and rk_live_51Habcdefghijkl", "sk_test_51HabcdefghijklmnopQRSTUV"),
    ("rk_live_51Habcdefghijkl in a message", "rk_live_51Habcdefghijkl"),
    ('{"refresh_token": "5Aep861abc", "signature": "c2lnbmF0dXJl"}', "5Aep861abc"),
])
def test_scrub_text_removes_tokens_secrets_passwords_and_stripe_keys(raw, secret):
    assert secret not in scrub_text(raw)


def test_recorder_drops_the_authorization_header():
    assert "authorization" in cassette_tools.SCRUB_HEADERS

    class Req:
        def __init__(self) -> None:
            self.headers = {"Authorization": "Bearer 00Dxx!AQsecret", "Accept": "application/json"}
            self.body = b"client_secret=abc123456789"

    scrubbed = cassette_tools._scrub_request(Req())
    assert "Authorization" not in scrubbed.headers and b"abc123456789" not in scrubbed.body
    response = {"headers": {"Set-Cookie": ["sid=00Dxx!AQsecret"]}, "body": {"string": b'{"access_token": "tok12345"}'}}
    cleaned = cassette_tools._scrub_response(response)
    assert "Set-Cookie" not in cleaned["headers"] and b"tok12345" not in cleaned["body"]["string"]
