"""A throwaway PgBouncer in transaction mode in front of the test PostgreSQL server (tests/pgserver.py), as
Supavisor (port 6543) and Neon's `-pooler` endpoints run: each transaction on any server connection.

Debian's `pgbouncer` package (/usr/sbin/pgbouncer). PgBouncer refuses to run as root: as root, it runs as the
`postgres` system user, like the server. Without the binary the pooler tests are skipped, unless CI=1 or
STRIPE_SF_REQUIRE_POSTGRES=1 is set: then they fail, so that CI cannot pass without PgBouncer."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import pgserver


def binary() -> str | None:
    return shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
                                              if os.path.exists(p)), None)


def unavailable(reason: str) -> None:
    """Skip the pooler tests here; fail them in CI."""
    if pgserver.required():
        pytest.fail(f"PgBouncer is required (CI / STRIPE_SF_REQUIRE_POSTGRES=1): {reason}", pytrace=False)
    pytest.skip(f"PgBouncer tests skipped: {reason} (install the pgbouncer package)")


@dataclass
class Pooler:
    """A running PgBouncer: its port, and the directory holding its config, log and pid file."""

    root: Path
    port: int

    def url(self, database: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def pid(self) -> int:
        return int((self.root / "pgbouncer.pid").read_text().split()[0])

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""


_CONFIG = """\
[databases]
* = host=127.0.0.1 port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {root}/userlist.txt
pool_mode = transaction
; one server connection per database: every client's transactions share it, so that a session advisory
; lock taken through the pooler is seen by the next client on the same backend (re-entrant), as on a busy
; pooler that hands the same backend to two hosts
default_pool_size = {pool_size}
max_client_conn = 200
server_reset_query =
logfile = {root}/pgbouncer.log
pidfile = {root}/pgbouncer.pid
"""


def start(server: pgserver.Server, *, pool_size: int = 1) -> Pooler:
    """A PgBouncer in transaction mode on a free loopback port, `auth_type=trust` (tests only)."""
    exe = binary()
    if exe is None:
        unavailable("no pgbouncer binary (PATH, /usr/sbin/pgbouncer)")
        raise AssertionError("unreachable")
    root = Path(tempfile.mkdtemp(prefix="stripe-sf-pgbouncer-"))
    pooler = Pooler(root, pgserver._free_port())
    (root / "userlist.txt").write_text('"postgres" ""\n')
    ini = root / "pgbouncer.ini"
    ini.write_text(_CONFIG.format(server_port=server.port, port=pooler.port, root=root, pool_size=pool_size))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for path in (root, root / "userlist.txt", ini):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    cmd = [exe, "-d", str(ini)]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"pgbouncer failed to start: {done.stderr} {pooler.log()[-2000:]}")
    _wait_listening(pooler)
    return pooler


def _wait_listening(pooler: Pooler, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", pooler.port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer is not listening on {pooler.port}: {pooler.log()[-2000:]}")


def stop(pooler: Pooler) -> None:
    try:
        os.kill(pooler.pid(), signal.SIGTERM)  # an immediate shutdown
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            os.kill(pooler.pid(), 0)
            time.sleep(0.05)
        os.kill(pooler.pid(), signal.SIGKILL)
    except (OSError, ValueError):
        pass
    shutil.rmtree(pooler.root, ignore_errors=True)
