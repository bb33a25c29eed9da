"""A throwaway PostgreSQL server on loopback for the tests (initdb and pg_ctl in a temporary directory, as
pytest-postgresql does): one server per test session, a fresh database per test.

initdb and postgres refuse to run as root: as root, both run as the `postgres` system user (runuser), in a
directory chowned to it. Without the binaries the PostgreSQL tests are skipped, unless CI=1 or
STRIPE_SF_REQUIRE_POSTGRES=1 is set: then they fail, so that CI cannot pass without PostgreSQL."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_names = itertools.count(1)


def bindir() -> Path | None:
    """Where initdb and pg_ctl are: `pg_config --bindir`, PATH, or Debian's /usr/lib/postgresql/*/bin."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip():
            candidates.append(Path(done.stdout.strip()))
    if shutil.which("initdb"):
        candidates.append(Path(os.path.realpath(shutil.which("initdb") or "")).parent)
    candidates.extend(Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
    for c in candidates:
        if (c / "initdb").exists() and (c / "pg_ctl").exists():
            return c
    return None


def required() -> bool:
    return os.environ.get("CI") == "1" or os.environ.get("STRIPE_SF_REQUIRE_POSTGRES") == "1"


def unavailable(reason: str) -> None:
    """Skip the PostgreSQL tests here; fail them in CI."""
    if required():
        pytest.fail(f"PostgreSQL is required (CI / STRIPE_SF_REQUIRE_POSTGRES=1): {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason} (install the postgresql package, or psycopg[binary])")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running server: its port, data directory and admin URL."""

    bindir: Path
    root: Path
    port: int
    fsync: bool = False  # tests: off (fast); the benchmark turns it on

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str, user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self) -> str:
        name = f"t{os.getpid()}_{next(_names)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE template0")
        return name

    def wait_idle(self, name: str) -> None:
        """Until no stripe-sf session is left on database `name` (a killed run's is ending)."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            wait_gone(conn, database=name)

    def drop_database(self, name: str) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), *args])

    def start(self) -> None:
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200" + ("" if self.fsync else " -F")
        done = self.ctl("-w", "-t", "60", "-l", str(self.root / "log"), "-o", opts, "start")
        if done.returncode != 0:
            log = (self.root / "log").read_text(errors="replace") if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stderr} {log[-2000:]}")

    def stop(self) -> None:
        self.ctl("-w", "-m", "fast", "stop")


def wait_gone(conn: Any, pid: int | None = None, database: str | None = None, timeout_s: float = 15) -> None:
    """Wait until a server process (`pid`), or every stripe-sf session on `database`, has ended: a client killed
    or a backend terminated leaves the server a moment of work before its advisory locks are free."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid is not None:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        else:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = "
                               "'stripe-sf'", (database,)).fetchone()
        if row[0] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server still has the session(s) of {pid or database} after {timeout_s} s")


def _as_postgres(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL binary; as the postgres system user when we are root (they refuse root)."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)


def start_server(*, fsync: bool = False) -> Server:
    """initdb (trust auth for loopback: tests only), then start on a free loopback port."""
    bins = bindir()
    if bins is None:
        unavailable("no initdb/pg_ctl found (pg_config --bindir, PATH, /usr/lib/postgresql/*/bin)")
        raise AssertionError("unreachable")
    root = Path(tempfile.mkdtemp(prefix="stripe-sf-pg-"))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    done = _as_postgres([str(bins / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust",
                         "-E", "UTF8", "--no-sync", "--locale=C"])
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr[-2000:]}")
    server = Server(bins, root, _free_port(), fsync)
    server.start()
    return server


def remove(server: Server) -> None:
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)
