"""The state: the cursor, the event ledger, object versions, customers, the webhook inbox, dead letters and
run history, in a SQLite file or a PostgreSQL database.

- records.py: the plain data types (Cursor, Outcome, InboxEntry, DeadLetter).
- interface.py: the store's typed interface by role (StateReads, RunWrites, RunState, LockAndUpkeep, Store).
- schema.py: the schema and its version, once (PostgreSQL's derived from SQLite's).
- store.py: StateStore, every statement once, over a Database: sqlite.py's or postgres.py's (with
  postgres_lock.py, the run lock's lease). factory.py: `open_state`, which chooses (psycopg imported lazily).
- dry_run.py: the state a dry run sees; migrate.py: `state migrate`.

The names other modules import are re-exported here; the pipeline needs only records and interface.
"""

from stripe_sf_sync.state.factory import open_state
from stripe_sf_sync.state.interface import LockAndUpkeep, RunState, RunWrites, StateReads, Store
from stripe_sf_sync.state.records import Cursor, DeadLetter, InboxEntry, Outcome, OutcomeKind
from stripe_sf_sync.state.schema import SCHEMA_VERSION
from stripe_sf_sync.state.store import INBOX_PRUNE_LIMIT, LEDGER_RETENTION_S, StateStore

__all__ = ["INBOX_PRUNE_LIMIT", "LEDGER_RETENTION_S", "SCHEMA_VERSION", "Cursor", "DeadLetter", "InboxEntry",
           "LockAndUpkeep", "Outcome", "OutcomeKind", "RunState", "RunWrites", "StateReads", "StateStore", "Store",
           "open_state"]
