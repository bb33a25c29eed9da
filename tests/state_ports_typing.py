"""Type checks, run by mypy in tests/test_state_contract.py (not by pytest): the state's interface satisfies
every narrow protocol its consumers declare. The stores satisfy `Store` and the dry run `RunState` (checked in
the package: state/store.py, state/dry_run.py), so each of them can be given where these are asked for."""

from __future__ import annotations

from stripe_sf_sync.pipeline.ports import Ledger
from stripe_sf_sync.pipeline.run import CommitStore
from stripe_sf_sync.reads import MetaState
from stripe_sf_sync.salesforce.org import MetaStore
from stripe_sf_sync.sources.inbox import InboxStore
from stripe_sf_sync.sources.sync_events import CursorState, HandOffState, SyncState
from stripe_sf_sync.state import RunState, StateStore, Store
from stripe_sf_sync.state.dry_run import DryRunState
from stripe_sf_sync.stripe.hydrator import CustomerStore


def run_state_is_each_consumers_state(state: RunState) -> None:
    ledger: Ledger = state
    cursor: CursorState = state
    hand_off: HandOffState = state
    commits: CommitStore = state
    inbox: InboxStore = state
    meta: MetaStore = state
    reads: MetaState = state
    customers: CustomerStore = state
    sync: SyncState = state
    del ledger, cursor, hand_off, commits, inbox, meta, reads, customers, sync


def the_stores_and_the_dry_run_are_run_states(store: StateStore) -> None:
    full: Store = store
    real: RunState = store
    dry: RunState = DryRunState(store)
    del full, real, dry
