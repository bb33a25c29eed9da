"""A connection failure names its cause and its host, at both edges, and ends within the configured timeout
(issue 20 §3): a server that accepts the connection and never answers, a refused port, a host that does not
resolve (`.invalid` never does: RFC 2606), and a plain-HTTP server on an https:// address. Loopback only."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from stripe_sf_sync.config import salesforce_secrets
from stripe_sf_sync.errors import FatalSyncError
from stripe_sf_sync.salesforce.gateway import SalesforceGateway, connect
from stripe_sf_sync.stripe.source import StripeSource, build_client

VERSION = "2026-10-28.endive"
TIMEOUT = 1.5


@pytest.fixture
def silent() -> Iterator[int]:
    """A port that accepts connections and never answers (nor closes them)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(srv.accept()[0])
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()
    for c in held:
        c.close()


@pytest.fixture
def refused() -> int:
    """A port nothing listens on (bound once, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def plain_http() -> Iterator[int]:
    """A plain-HTTP server: an https:// client's TLS handshake fails against it."""
    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


def stripe_call(base: str, timeout: float = TIMEOUT) -> tuple[FatalSyncError, float]:
    client, http = build_client("sk_test_unreachable", api_base=base, api_version=VERSION, timeout=timeout)
    source = StripeSource(client, http, api_version=VERSION)
    started = time.monotonic()
    with pytest.raises(FatalSyncError) as caught:
        source.newest_event()
    return caught.value, time.monotonic() - started


def salesforce_call(url: str, timeout: float = TIMEOUT) -> tuple[FatalSyncError, float]:
    secrets = salesforce_secrets({"SF_INSTANCE_URL": url, "SF_ACCESS_TOKEN": "00Dunreachable!AQtoken"})
    gw = SalesforceGateway(connect(secrets, api_version="62.0"), timeout=timeout)
    started = time.monotonic()
    with pytest.raises(FatalSyncError) as caught:
        gw.query("SELECT Id FROM Account LIMIT 1")
    return caught.value, time.monotonic() - started


@pytest.mark.parametrize("edge", ["stripe", "salesforce"])
def test_a_server_that_never_answers_fails_within_the_timeout(edge, silent):
    # Before: every attempt waited the whole timeout (6 x 30 s plus waits for Stripe: 3 min 11 s).
    call = stripe_call if edge == "stripe" else salesforce_call
    scheme = "http" if edge == "stripe" else "https"
    err, took = call(f"{scheme}://127.0.0.1:{silent}")
    assert TIMEOUT * 0.8 <= took < TIMEOUT + 1.0  # attempts share the time (deadline.py)
    assert err.code in ("TIMEOUT", "CONNECT_TIMEOUT")
    assert f"127.0.0.1:{silent}" in err.message and f"within {TIMEOUT:g} s" in err.message
    assert f"{edge}.timeout_seconds" in err.hint and "Nothing was lost" in err.hint


@pytest.mark.parametrize("edge", ["stripe", "salesforce"])
def test_a_refused_port_is_named_as_refused(edge, refused):
    call = stripe_call if edge == "stripe" else salesforce_call
    err, took = call(f"https://127.0.0.1:{refused}")
    assert took < TIMEOUT + 1.0  # retried within the request's time, then given up
    assert err.code == "CONNECTION_REFUSED"
    assert f"127.0.0.1:{refused} refused the connection" in err.message
    assert ("STRIPE_API_BASE" if edge == "stripe" else "SF_INSTANCE_URL") in err.hint


@pytest.mark.parametrize("edge", ["stripe", "salesforce"])
def test_a_plain_http_server_on_an_https_address_is_a_tls_failure_tried_once(edge, plain_http):
    call = stripe_call if edge == "stripe" else salesforce_call
    err, took = call(f"https://127.0.0.1:{plain_http}")
    assert took < 1.0  # a handshake that failed does not clear by itself: no retry
    assert err.code == "TLS_HANDSHAKE" and "gave up after 1 attempt " in err.message
    assert f"the TLS handshake with 127.0.0.1:{plain_http} failed" in err.message
    assert "HTTPS on that port" in err.hint


DNS_PROBE = """
import json, sys
from tests.test_connection_failures import salesforce_call, stripe_call
out = {}
for edge, call in (("stripe", stripe_call), ("salesforce", salesforce_call)):
    err, took = call("https://stripe-sf-test.invalid")
    out[edge] = {"code": err.code, "message": err.message, "hint": err.hint, "took": took}
print(json.dumps(out))
"""


def test_a_host_that_does_not_resolve_is_named_as_a_dns_failure():
    """`.invalid` never resolves. The lookup runs in a child process with a short resolver timeout, killed
    if it hangs, so that a machine without a reachable DNS server cannot stall the suite."""
    env = {**os.environ, "RES_OPTIONS": "timeout:1 attempts:1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", DNS_PROBE], capture_output=True, text=True, timeout=60, env=env,
                          cwd=root, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    for edge, got in json.loads(done.stdout.splitlines()[-1]).items():
        assert got["code"] == "DNS_FAILURE", edge
        assert "cannot resolve stripe-sf-test.invalid:443 (DNS lookup failed)" in got["message"]
        assert "DNS resolver" in got["hint"]
        assert got["took"] < TIMEOUT + 1.0


def test_a_login_without_its_own_timeout_still_ends_within_the_timeout(silent):
    """simple-salesforce's logins post to the token endpoint without a timeout (its login.py); the session
    stripe-sf gives it adds salesforce.timeout_seconds to any request that has none."""
    import requests

    secrets = salesforce_secrets({"SF_INSTANCE_URL": f"https://127.0.0.1:{silent}", "SF_ACCESS_TOKEN": "00Dx!AQtoken"})
    sf = connect(secrets, api_version="62.0", timeout=TIMEOUT)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        sf.session.post(f"https://127.0.0.1:{silent}/services/oauth2/token", data={"grant_type": "x"})
    assert time.monotonic() - started < TIMEOUT + 1.0
