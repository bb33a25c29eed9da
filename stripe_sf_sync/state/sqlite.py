"""The SQLite dialect of the state store: the state file, its opening and permissions, its run lock (a flock)
and its errors. `StateStore.open(path)` runs the store's statements over a `SqliteDatabase`.

WAL mode lets `status` read while a `sync` writes. Nothing here knows the store's tables beyond the schema
(state/schema.py); the statements are the store's (state/store.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from stripe_sf_sync.errors import LockHeldError, NoStateError, StateError
from stripe_sf_sync.state.schema import ADDED_COLUMNS, SCHEMA_VERSION, index_statements, sqlite_statements

R = TypeVar("R")


class SqliteDatabase:
    """The state file's connection, as the store core uses it: statements run on `conn` (a sqlite3
    connection in autocommit mode, rows by index and by name); transactions, the run lock and errors here."""

    backend = "sqlite"
    _BEGIN = "BEGIN IMMEDIATE"  # SQLite: take the write lock at the start, not at the first write

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._lock_fds: dict[str, int] = {}  # pipeline -> its held lock file

    @property
    def location(self) -> str:
        """Where the state is, as shown to people: the file."""
        return str(self.path)

    def guard(self, call: Callable[[], R]) -> R:
        """Run one store operation; SQLite's errors become a StateError naming the file."""
        try:
            return call()
        except sqlite3.DatabaseError as exc:
            raise state_error(exc, self.path) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction: committed at the end, rolled back on any error."""
        self.conn.execute(self._BEGIN)
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def integrity_check(self) -> str:
        """SQLite's own integrity check ('ok' when healthy)."""
        return self.guard(lambda: str(self.conn.execute("PRAGMA integrity_check").fetchone()[0]))

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> SqliteDatabase:
        """Open (and create with mode 0600) the state file; check its schema version."""
        path = Path(path)
        if not path.exists():
            if not create:
                raise NoStateError(f"No state file at {path}.",
                                 hint="Run `stripe-sf sync --since DATE` first, or check --config.")
            _create(path)
        else:
            _check_writable(path)
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 5000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise StateError(
                    f"The state file {path} has schema version {version}, newer than this stripe-sf "
                    f"understands ({SCHEMA_VERSION}).",
                    hint="Upgrade stripe-sf (pip install -U stripe-sf-sync) rather than downgrading.")
            _write_ahead_log(conn)
            conn.execute("PRAGMA synchronous = FULL")
            if version < SCHEMA_VERSION:
                _upgrade(conn)
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            if _is_access_error(exc):
                raise _not_writable(path, path.parent, str(exc)) from None
            raise _unusable(path, exc) from None
        for suffix in ("-wal", "-shm"):
            side = Path(f"{path}{suffix}")
            if side.exists():
                with contextlib.suppress(OSError):
                    os.chmod(side, 0o600)
        return cls(conn, path)

    @classmethod
    def open_read_only(cls, path: Path) -> SqliteDatabase:
        """Open the state file to read (`status`), without the write access a run needs (an operator's account,
        a read-only mount). SQLite reads a WAL database read-only when its -wal and -shm files exist or can be
        created (sqlite.org/wal.html, "Read-Only Databases"). Without them and without a writable directory,
        no writer has the file open (the last connection to close removes them), so the file alone holds
        every commit: it is read as immutable. With a -wal that cannot be read, the error says what is needed."""
        path = Path(path)
        if not path.exists():
            raise NoStateError(f"No state file at {path}.",
                               hint="Run `stripe-sf sync --since DATE` first, or check --config.")
        if not os.access(path, os.R_OK):
            raise StateError(f"Cannot read the state file {path}: permission denied.", hint=_READABLE_HINT)
        uri = path.resolve().as_uri()
        try:
            return cls._read_only(f"{uri}?mode=ro", path)
        except sqlite3.DatabaseError as exc:
            if not _is_access_error(exc):
                raise _unusable(path, exc) from None  # corrupt, or locked by another program
            if Path(f"{path}-wal").exists():
                raise StateError(f"Cannot read the state file {path}: {exc}.", hint=_READABLE_HINT) from None
        try:
            return cls._read_only(f"{uri}?mode=ro&immutable=1", path)
        except sqlite3.DatabaseError as exc:
            raise state_error(exc, path) from None

    @classmethod
    def _read_only(cls, uri: str, path: Path) -> SqliteDatabase:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 5000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # reads the file: fails here if it must
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"The state file {path} has schema version {version}, newer than this stripe-sf "
                    f"understands ({SCHEMA_VERSION}).",
                    hint="Upgrade stripe-sf (pip install -U stripe-sf-sync) rather than downgrading.")
            conn.execute("SELECT COUNT(*) FROM runs").fetchone()  # an older file's missing table fails later
            if version < SCHEMA_VERSION:
                _older_columns_read_as_current(conn)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        """Release every lock held and close the database."""
        for pipeline in list(self._lock_fds):
            self.release_lock(pipeline)
        self.conn.close()

    def lock_path(self, pipeline: str) -> Path:
        """A pipeline's lock file: `<state file>.lock` for the default pipeline (the one an older stripe-sf
        takes, so it still excludes a newer one on the same file), `<state file>.<pipeline>.lock` for another."""
        return Path(f"{self.path}.lock" if pipeline == "default" else f"{self.path}.{pipeline}.lock")

    # --- the run lock: a flock is released by the kernel when the process dies ---------------
    def acquire_lock(self, pipeline: str) -> None:
        """Take the pipeline's exclusive run lock or raise LockHeldError at once."""
        lock_path = self.lock_path(pipeline)
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            raise _not_writable(lock_path, lock_path.parent, exc.strerror or str(exc)) from None
        try:
            _flock_briefly_retried(fd)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            of = "" if pipeline == "default" else f" for pipeline {pipeline}"
            raise LockHeldError(
                f"Another stripe-sf run (pid {holder}) is using {self.path}{of}.",
                hint="This run exits so cron runs never overlap; the next scheduled run continues.") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fds[pipeline] = fd

    def lock_held(self, pipeline: str) -> bool:
        """Whether a run (in any process) holds the run lock now. Probed with a shared lock held for an
        instant and never created: a run that died (SIGKILL, power loss) released its lock with its process."""
        if pipeline in self._lock_fds:
            return True
        lock_path = self.lock_path(pipeline)
        try:
            fd = os.open(lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except PermissionError:  # an operator's account reading status: say what it needs, never guess
            raise StateError(f"Cannot read the run lock {lock_path}: permission denied.",
                             hint=_READABLE_HINT) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def release_lock(self, pipeline: str) -> None:
        """Drop the pipeline's run lock if held."""
        fd = self._lock_fds.pop(pipeline, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


def _older_columns_read_as_current(conn: sqlite3.Connection) -> None:
    """An older file read without write access (`status` before the next run upgrades it): each table that
    lacks a column added since is read through a temporary view that adds it with its default (the temp schema
    is the connection's own, searched before the file's), so a version-4 file reads as the `default`
    pipeline's. Nothing is written to the file."""
    missing: dict[str, list[str]] = {}
    for table, column, kind in ADDED_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA main.table_info({table})")}
        if present and column not in present:
            default = kind.split("DEFAULT", 1)[1].strip() if "DEFAULT" in kind else "NULL"
            missing.setdefault(table, []).append(f"{default} AS {column}")
    for table, columns in missing.items():
        conn.execute(f"CREATE TEMP VIEW {table} AS SELECT *, {', '.join(columns)} FROM main.{table}")  # noqa: S608 (schema constants)


def _write_ahead_log(conn: sqlite3.Connection, *, wait_s: float = 5.0) -> None:
    """Put the file in WAL mode (kept in the file: once set, every later open finds it so). Switching needs the
    file to itself, and SQLite answers "database is locked" at once, without its busy handler, while another
    connection is in it: pipelines opening a new file at the same moment (`sync --all`) retry until one wins."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _upgrade(conn: sqlite3.Connection) -> None:
    """Create the tables, or bring an older file's to this version, in one transaction with the version bump:
    a crash leaves the old version whole, and two runs opening an old file at once upgrade it once (the
    version is read again under the write lock)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            for statement in sqlite_statements():
                conn.execute(statement)
            for table, column, kind in ADDED_COLUMNS:
                if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            for statement in index_statements():
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


_WRITABLE_HINT = ("stripe-sf needs to create and write files in that directory: the state file, its -wal and -shm "
                  "files (SQLite's write-ahead log) and the .lock file. Run stripe-sf as the user that owns it, make "
                  "it writable for that user (`chown`/`chmod u+rwx`), or set sync.state_path in the config to a "
                  "writable place.")


def _create(path: Path) -> None:
    """Create the state file, and its directory when missing, with mode 0600; a directory that cannot be
    made or written is a StateError naming it."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StateError(f"The state directory {directory} is not a directory.",
                         hint="Set sync.state_path in the config to a file in a writable directory.") from None
    except OSError as exc:
        raise StateError(f"Cannot create the state directory {directory}: {exc.strerror or exc}.",
                         hint=("Create it and make it writable for the user that runs stripe-sf (`mkdir -p "
                               f"{directory}`, then `chown`), or set sync.state_path in the config to a "
                               "writable place.")) from None
    _check_writable(path)
    try:
        # Created 0600 before SQLite touches it: it holds customer payloads in dead letters.
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another pipeline's run, started at the same moment, created it (`sync --all`)
    except OSError as exc:
        raise _not_writable(path, directory, exc.strerror or str(exc)) from None
    os.close(fd)


def _check_writable(path: Path) -> None:
    """The state file (when it exists) and its directory must be writable: SQLite creates its -wal and -shm
    files next to the file, and the run lock is a file there too. access(2) also reports a read-only file
    system (EROFS), even to root."""
    directory = path.parent
    if not os.access(directory, os.W_OK | os.X_OK):
        raise _not_writable(path, directory, "the directory is read-only")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise _not_writable(path, directory, "the file is not readable and writable")


_READABLE_HINT = ("`stripe-sf status` needs read access to the state file, its .lock file (to tell a running run "
                  "from one that died), and while a run has it open, its -wal and -shm files (or write access to "
                  "their directory, where SQLite creates them). Give this account read access to them (a group "
                  "with `chmod g+r`), or run status as the account that runs sync.")


def _unusable(path: Path, exc: sqlite3.DatabaseError) -> StateError:
    return StateError(f"The state file {path} cannot be used: {exc}.",
                      hint="If another program holds it, wait and retry; if it is corrupt, move it aside and "
                           "restart with `stripe-sf sync --since DATE` (re-applying is idempotent).")


def _not_writable(path: Path, directory: Path, why: str) -> StateError:
    return StateError(f"Cannot write the state file {path}: {why} (directory {directory}).", hint=_WRITABLE_HINT)


def _is_access_error(exc: sqlite3.DatabaseError) -> bool:
    """SQLite's words for a file or directory it may not write (SQLITE_READONLY, SQLITE_CANTOPEN)."""
    text = str(exc).lower()
    return "readonly" in text or "read-only" in text or "unable to open" in text


def state_error(exc: sqlite3.DatabaseError, path: Path) -> StateError:
    """A clear StateError for SQLite's own errors once the file is open (corrupt pages, a lock held
    by another program), naming the file and what to do."""
    text = str(exc)
    if _is_access_error(exc):
        return _not_writable(path, path.parent, text)
    if "locked" in text or "busy" in text:
        return StateError(f"The state file {path} is locked by another program ({text}).",
                          hint="Close whatever has it open (an sqlite3 shell, a backup job), then run again.")
    return StateError(f"The state file {path} cannot be read: {text}.",
                      hint="Move it aside and restart with `stripe-sf sync --since DATE` (re-applying is "
                           "idempotent), or restore it from a backup.")


def _flock_briefly_retried(fd: int, attempts: int = 5, pause_s: float = 0.02) -> None:
    """The exclusive lock, or BlockingIOError. A few short retries: `lock_held` (status) holds a shared lock
    for an instant, and a run starting in that instant must not be turned away as if another run held it."""
    for attempt in range(attempts):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == attempts - 1:
                raise
            time.sleep(pause_s)


