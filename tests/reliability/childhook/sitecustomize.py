"""Test-only hooks for the `stripe-sf` subprocesses of the reliability suite (never shipped).

This directory is put on PYTHONPATH of the child process only, so Python imports this module at start-up.
It changes nothing unless one of these variables is set:

- STRIPE_SF_TEST_KILL: where the child SIGKILLs itself, deterministically:
    ``write:N``           after the Nth sObject Collections call returned (Salesforce applied it; not committed)
    ``commit:N:before``   on entry to the Nth state commit
    ``commit:N:mid``      inside the Nth commit's transaction, after its first statement
    ``commit:N:after``    just after the Nth commit returned
    ``deadletter:N``      inside a commit, right after the Nth dead-letter row was written
  ``pause:commit:N`` instead touches STRIPE_SF_TEST_PAUSE_FILE inside the Nth commit's open
  transaction and sleeps (the test kills the process).
- STRIPE_SF_TEST_COUNTS: a file to receive {"commits", "writes", "deadletters"} as JSON at exit.
- STRIPE_SF_TEST_SF_ROUTE: an https base address; requests to ``https://*.salesforce.com`` (the OAuth
  token endpoint of client-credentials logins) are sent there instead.
"""

from __future__ import annotations

import os

_KILL = os.environ.get("STRIPE_SF_TEST_KILL", "")
_COUNTS = os.environ.get("STRIPE_SF_TEST_COUNTS", "")
_ROUTE = os.environ.get("STRIPE_SF_TEST_SF_ROUTE", "")


def _die() -> None:
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def _install_route(base: str) -> None:
    from urllib.parse import urlsplit, urlunsplit

    import requests
    from requests.adapters import HTTPAdapter

    target = urlsplit(base)

    class Route(HTTPAdapter):
        def send(self, request, **kwargs):  # type: ignore[no-untyped-def]
            parts = urlsplit(request.url)
            if parts.hostname and parts.hostname.endswith(".salesforce.com"):
                request.url = urlunsplit((target.scheme, target.netloc, parts.path, parts.query, ""))
            return super().send(request, **kwargs)

    original = requests.Session.__init__

    def init(self, *a, **kw):  # type: ignore[no-untyped-def]
        original(self, *a, **kw)
        self.mount("https://", Route())

    requests.Session.__init__ = init  # type: ignore[method-assign]


def _install_kill(spec: str, counts_path: str) -> None:
    import atexit
    import json
    import time

    from stripe_sf_sync import state
    from stripe_sf_sync.salesforce import gateway as salesforce_sink

    counts = {"commits": 0, "writes": 0, "deadletters": 0}
    parts = spec.split(":") if spec else []
    pause = bool(parts) and parts[0] == "pause"
    if pause:
        parts = parts[1:]
    kind = parts[0] if parts else ""
    nth = int(parts[1]) if len(parts) > 1 else 0
    stage = parts[2] if len(parts) > 2 else "mid"

    if counts_path:
        def dump() -> None:
            with open(counts_path, "w") as fh:
                json.dump(counts, fh)
        atexit.register(dump)

    def stop_here() -> None:
        if pause:
            with open(os.environ["STRIPE_SF_TEST_PAUSE_FILE"], "w") as fh:
                fh.write(str(os.getpid()))
            time.sleep(600)
        _die()

    real_write = salesforce_sink.SalesforceGateway.write_chunk

    def write_chunk(self, *a, **kw):  # type: ignore[no-untyped-def]
        out = real_write(self, *a, **kw)
        counts["writes"] += 1
        if kind == "write" and counts["writes"] == nth:
            stop_here()
        return out

    salesforce_sink.SalesforceGateway.write_chunk = write_chunk  # type: ignore[method-assign]

    class Conn:
        def __init__(self, conn, commit_no: int) -> None:  # type: ignore[no-untyped-def]
            self._c = conn
            self._n = commit_no
            self._statements = 0

        def execute(self, sql, *a):  # type: ignore[no-untyped-def]
            cur = self._c.execute(sql, *a)
            self._written(sql)
            return cur

        def executemany(self, sql, rows):  # type: ignore[no-untyped-def]
            def each():  # type: ignore[no-untyped-def]
                for row in rows:
                    yield row
                    self._written(sql)  # the store asked for the next row: this one is written (or queued)
            return self._c.executemany(sql, each())

        def _written(self, sql):  # type: ignore[no-untyped-def]
            self._statements += 1
            if sql.startswith("INSERT INTO dead_letters"):
                counts["deadletters"] += 1
                if kind == "deadletter" and counts["deadletters"] == nth:
                    stop_here()
            if kind == "commit" and stage == "mid" and self._n == nth and self._statements == 2:
                stop_here()  # BEGIN and one row are in the open transaction

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(self._c, name)

    real_commit = state.StateStore.commit_batch

    def commit_batch(self, *a, **kw):  # type: ignore[no-untyped-def]
        counts["commits"] += 1
        n = counts["commits"]
        if kind == "commit" and stage == "before" and n == nth:
            stop_here()
        conn = self._conn
        self._conn = Conn(conn, n)
        try:
            real_commit(self, *a, **kw)
        finally:
            self._conn = conn
        if kind == "commit" and stage == "after" and n == nth:
            stop_here()

    state.StateStore.commit_batch = commit_batch  # type: ignore[method-assign]


if _ROUTE:
    _install_route(_ROUTE)
if _KILL or _COUNTS:
    _install_kill(_KILL, _COUNTS)
