"""State per pipeline (issue 26): one store holds every pipeline's cursor, ledger, dead letters, inbox, runs,
meta and run lock, each seen only by its own pipeline; a version-4 state is the `default` pipeline's; adoption
moves one pipeline's state to another name; `state migrate` carries every pipeline. SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stripe_sf_sync.errors import LockHeldError, StateError
from stripe_sf_sync.state import SCHEMA_VERSION, Cursor, Outcome, StateStore, open_state

from .state_backends import STATE_NAME, Backend

T0 = 1_700_000_000
EU = "acct_1Europe"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return Backend(request.param, tmp_path / STATE_NAME, url)


def _open(backend: Backend, pipeline: str = "default") -> StateStore:
    return open_state(backend.path, backend.url, pipeline=pipeline)


@pytest.fixture
def two(backend: Backend) -> Iterator[tuple[StateStore, StateStore]]:
    with _open(backend) as default, _open(backend, EU) as eu:
        yield default, eu


def _dead(event_id: str, created: int) -> Outcome:
    return Outcome(event_id, "invoice.paid", created, "dead_letter", reason="no Account", code="NO_ACCOUNT",
                   payload=f'{{"id": "{event_id}"}}')


def _fill(store: StateStore, tag: str, created: int) -> None:
    """A cursor, a ledger row, a dead letter, an inbox entry, a run and a meta key, all named by `tag`."""
    run = store.start_run("sync")
    store.commit_batch([Outcome(f"evt_{tag}_ok", "invoice.paid", created, "applied"), _dead(f"evt_{tag}_bad",
                        created + 1)], cursor=Cursor(f"evt_{tag}_bad", created + 1), versions={}, run_id=run,
                       meta={"identity": tag})
    store.finish_run(run, 3, {"tag": tag})
    store.inbox_add(f"evt_{tag}_hook", created + 2, "{}", float(created))


def test_two_pipelines_see_only_their_own_state(two: tuple[StateStore, StateStore]) -> None:
    default, eu = two
    _fill(default, "d", T0)
    _fill(eu, "e", T0 + 100)
    for store, tag, created in ((default, "d", T0), (eu, "e", T0 + 100)):
        assert store.cursor() == Cursor(f"evt_{tag}_bad", created + 1)
        assert [d.event_id for d in store.dead_letters()] == [f"evt_{tag}_bad"] and store.dead_letter_count() == 1
        other = "e" if tag == "d" else "d"
        assert store.dead_letter(f"evt_{other}_bad") is None and not store.drop_dead_letter(f"evt_{other}_bad")
        assert [r["summary"] for r in store.recent_runs()] == [{"tag": tag}]
        assert store.last_run_of("sync")["summary"] == {"tag": tag}  # type: ignore[index]
        assert store.last_success("sync") is not None
        assert [e.event_id for e in store.inbox_pending(10)] == [f"evt_{tag}_hook"] and store.inbox_depth() == 1
        assert store.get_meta("identity") == tag
    # The ledger's dedupe by event id is shared: Stripe's ids are unique across accounts.
    assert set(eu.outcomes_for(["evt_d_ok", "evt_e_ok"])) == {"evt_d_ok", "evt_e_ok"}
    assert default.pipelines() == eu.pipelines() == ["default", EU]
    # The default pipeline's keys are stored bare (as before pipelines), another's under its name.
    assert default.for_pipeline(EU).get_meta("identity") == "e"
    keys = {k for k, in default._conn.execute("SELECT key FROM meta")}
    assert {"identity", "cursor_event_id", f"{EU}/identity", f"{EU}/cursor_event_id"} <= keys
    assert default.prune_runs("sync", keep=1) == 0 and len(eu.recent_runs()) == 1


def test_one_pipelines_lock_is_refused_while_anothers_is_taken(backend: Backend) -> None:
    with _open(backend, EU) as holder, _open(backend, EU) as second, _open(backend) as default:
        holder.acquire_lock()
        assert second.lock_held() and not default.lock_held()
        with pytest.raises(LockHeldError, match=EU):
            second.acquire_lock()
        default.acquire_lock()  # another pipeline runs at the same time
        assert default.lock_held() and holder.lock_held()
        default.release_lock()
        holder.release_lock()
        assert not second.lock_held()
        second.acquire_lock()
        second.release_lock()


def test_pipelines_run_at_once_in_threads_each_with_its_store(backend: Backend) -> None:
    errors: list[BaseException] = []
    started = threading.Barrier(3)

    def run(name: str, created: int) -> None:
        try:
            with _open(backend, name) as store:
                store.acquire_lock()
                started.wait(10)  # all three hold their lock at once
                for i in range(5):
                    store.commit_batch([Outcome(f"evt_{name}_{i}", "invoice.paid", created + i, "applied")],
                                       cursor=Cursor(f"evt_{name}_{i}", created + i), versions={}, run_id=None)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n, T0 + k * 100)) for k, n in
               enumerate(("default", EU, "acct_1Brand"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    with _open(backend, "acct_1Brand") as brand:
        assert brand.cursor() == Cursor("evt_acct_1Brand_4", T0 + 204)
        assert brand.pipelines() == ["default", "acct_1Brand", EU]


def test_adoption_moves_everything_and_refuses_a_target_with_state(backend: Backend) -> None:
    with _open(backend) as default:
        _fill(default, "d", T0)
        default.set_meta("org_describe", "{}")
        assert default.adopt("default", EU) > 0
        assert default.pipelines() == [EU] and default.cursor() is None and default.dead_letter_count() == 0
        eu = default.for_pipeline(EU)
        assert eu.cursor() == Cursor("evt_d_bad", T0 + 1) and eu.get_meta("org_describe") == "{}"
        assert eu.dead_letter_count() == 1 and eu.inbox_depth() == 1 and len(eu.recent_runs()) == 1
        assert default.get_meta("schema_version") in (None, str(SCHEMA_VERSION))  # the versions stay global
        _fill(default, "d2", T0 + 500)
        with pytest.raises(StateError, match="has state already"):
            default.adopt("default", EU)
        assert default.cursor() == Cursor("evt_d2_bad", T0 + 501) and eu.cursor() == Cursor("evt_d_bad", T0 + 1)
        assert default.adopt("acct_1None", "acct_1Other") == 0  # nothing to move


# The schema as version 4 wrote it (stripe_sf_sync/state/schema.py at efed973), to build an older file.
SCHEMA_V4 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (event_id TEXT PRIMARY KEY, event_type TEXT NOT NULL, object_id TEXT, created INTEGER NOT NULL,
    outcome TEXT NOT NULL, detail TEXT, run_id INTEGER, recorded_at INTEGER NOT NULL);
CREATE INDEX events_recorded ON events(recorded_at);
CREATE TABLE object_versions (object_id TEXT PRIMARY KEY, created INTEGER NOT NULL, event_id TEXT);
CREATE TABLE dead_letters (event_id TEXT PRIMARY KEY, event_type TEXT NOT NULL, created INTEGER NOT NULL,
    payload TEXT NOT NULL, reason TEXT NOT NULL, error_code TEXT NOT NULL, attempts INTEGER NOT NULL,
    first_failed_at INTEGER NOT NULL, last_failed_at INTEGER NOT NULL, status TEXT NOT NULL);
CREATE INDEX dead_letters_status ON dead_letters(status);
CREATE TABLE customers (customer_id TEXT PRIMARY KEY, metadata TEXT NOT NULL, name TEXT, deleted INTEGER NOT NULL,
    version INTEGER NOT NULL, email TEXT);
CREATE TABLE inbox (event_id TEXT PRIMARY KEY, created INTEGER NOT NULL, received_at REAL NOT NULL,
    payload TEXT NOT NULL, status TEXT NOT NULL);
CREATE INDEX inbox_pending ON inbox(status, created, received_at);
CREATE TABLE runs (run_id INTEGER PRIMARY KEY AUTOINCREMENT, command TEXT NOT NULL, started_at INTEGER NOT NULL,
    finished_at INTEGER, exit_code INTEGER, summary TEXT);
INSERT INTO meta VALUES ('cursor_event_id', 'evt_old'), ('cursor_created', '1700000000'), ('identity', 'x');
INSERT INTO events VALUES ('evt_old', 'invoice.paid', 'in_1', 1700000000, 'applied', NULL, 1, 1700000000);
INSERT INTO dead_letters VALUES ('evt_bad', 'invoice.paid', 1699999999, '{}', 'r', 'C', 1, 1, 1, 'open');
INSERT INTO inbox VALUES ('evt_hook', 1700000001, 1.0, '{}', 'pending');
INSERT INTO runs(command, started_at, finished_at, exit_code, summary) VALUES ('sync', 1, 2, 3, '{}');
PRAGMA user_version = 4;
"""


def test_a_version_4_file_opens_as_version_5_with_everything_under_default(tmp_path: Path) -> None:
    path = tmp_path / STATE_NAME
    con = sqlite3.connect(path)
    con.executescript(SCHEMA_V4)
    con.close()
    with StateStore.open(path) as st, st.for_pipeline(EU) as eu:
        assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        assert st.pipelines() == ["default"] and st.cursor() == Cursor("evt_old", T0) and st.get_meta("identity")
        assert st.dead_letter_count() == 1 and st.inbox_depth() == 1 and st.last_success("sync") == 2
        assert eu.cursor() is None and eu.dead_letter_count() == 0 and eu.recent_runs() == []
        indexes = {r[0] for r in st._conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"dead_letters_pipeline_status", "inbox_pipeline_pending", "runs_pipeline_command"} <= indexes
        assert not {"dead_letters_status", "inbox_pending"} & indexes


def test_the_sqlite_default_pipeline_keeps_the_lock_file_of_older_versions(tmp_path: Path) -> None:
    path = tmp_path / STATE_NAME
    with StateStore.open(path) as st, StateStore.open(path, pipeline=EU) as eu:
        st.acquire_lock()
        eu.acquire_lock()
        assert Path(f"{path}.lock").exists() and Path(f"{path}.{EU}.lock").exists()
    with pytest.raises(StateError, match="cannot name a pipeline"):
        StateStore.open(path, pipeline="../x")


def test_migrate_copies_every_pipeline(tmp_path: Path, pg_url: str) -> None:
    from stripe_sf_sync.state.postgres import migrate_from

    path = tmp_path / STATE_NAME
    with StateStore.open(path) as source:
        _fill(source, "d", T0)
        _fill(source.for_pipeline(EU), "e", T0 + 100)
    with StateStore.open(path, create=False) as source, open_state(path, pg_url) as target:
        copied = migrate_from(source, target)
        assert copied["runs"][0] == 2 and copied["dead_letters"][0] == 2
        assert target.pipelines() == ["default", EU]
        eu = target.for_pipeline(EU)
        assert eu.cursor() == Cursor("evt_e_bad", T0 + 101) and eu.get_meta("identity") == "e"
        assert [d.event_id for d in eu.dead_letters()] == ["evt_e_bad"]
        assert target.cursor() == Cursor("evt_d_bad", T0 + 1)


def test_a_config_that_gains_its_account_continues_from_the_same_cursor(runner, config, cli_env, stripe_sb,
                                                                         sc) -> None:
    from stripe_sf_sync.cli import app

    from .conftest import since

    first = runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc), "--max-events", "3"],
                          env=cli_env)
    assert first.exit_code == 0, first.output
    text = config.read_text()
    assert "  accounts: []\n" in text
    config.write_text(text.replace("  accounts: []\n", f"  accounts:\n    - id: {stripe_sb.account_id}\n", 1))
    state_path = next(config.parent.glob("*.sqlite"))
    with StateStore.open(state_path, create=False) as st:
        before = st.cursor()
    assert before is not None
    # No --since: only a stored cursor lets it continue; it is the default pipeline's, adopted by the account.
    second = runner.invoke(app, ["sync", "--config", str(config)], env=cli_env)
    assert second.exit_code in (0, 3), second.output  # 3: the scenario's customer without an Account
    assert second.output.count("is now pipeline") == 1
    with StateStore.open(state_path, create=False, pipeline=stripe_sb.account_id) as st:
        assert st.pipelines() == [stripe_sb.account_id]
        after = st.cursor()
        assert after is not None and after.created >= before.created and after != before
        assert len(st.recent_runs()) == 2 and st.for_pipeline("default").cursor() is None


def test_a_version_4_file_reads_as_the_default_pipeline_without_write_access(tmp_path: Path) -> None:
    path = tmp_path / STATE_NAME
    con = sqlite3.connect(path)
    con.executescript(SCHEMA_V4)
    con.close()
    path.chmod(0o444)  # `status` as an operator's account: the file is not upgraded, only read
    with StateStore.open_read_only(path) as st:
        assert st.pipelines() == ["default"] and st.cursor() == Cursor("evt_old", T0)
        assert st.dead_letter_count() == 1 and st.inbox_depth() == 1 and st.recent_runs()[0]["summary"] == {}
        assert st.for_pipeline(EU).dead_letter_count() == 0
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 4


def test_pipelines_opening_a_new_state_file_at_the_same_moment_all_open_it(tmp_path):
    """`sync --all` on a first run: every pipeline's thread opens the file the first of them creates. Switching a
    new file to WAL needs it to itself, and SQLite refuses that at once ("database is locked", no busy wait)
    while another connection is in it; each must wait its turn instead of failing."""
    for attempt in range(15):
        assert _open_at_once(tmp_path / f"new-{attempt}.sqlite", 4) == []


def _open_at_once(path, n: int) -> list[Exception]:
    """Open `path` from `n` threads released together, each for a pipeline of its own: the errors."""
    import threading

    from stripe_sf_sync.state import StateStore

    start, failures, stores = threading.Barrier(n), [], []

    def open_one(name: str) -> None:
        start.wait()
        try:
            stores.append(StateStore.open(path, pipeline=name))
        except Exception as exc:  # the failure under test
            failures.append(exc)

    threads = [threading.Thread(target=open_one, args=(f"acct_{i}",)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for store in stores:
        store.close()
    return failures
