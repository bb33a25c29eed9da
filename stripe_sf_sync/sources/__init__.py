"""The ways in: each source begins and ends a run (its run-level state writes live there) and yields batches,
each with a commit from the closed set in `pipeline/batches.py`.

  sync_events.py   SyncEvents: late events, then after the cursor (CursorCommit); where a sync starts, the
                   lookback, backfill's hand-off; its end keeps a first --since, prunes the ledger, records
                   the read-through
  inbox.py         InboxEvents: verified webhook deliveries from the inbox (InboxCommit)
  dead_letters.py  DeadLetters: dead letters sent again (DeadLetterCommit)
  backfill.py      BackfillObjects: Stripe's lists as events (CheckpointCommit); begins with the hand-off and
                   the checkpoint, ends by marking it finished; slices.py lists a type's time slices in parallel
  repairs.py       FixObjects: the objects behind reconcile's fixable findings (OutcomesCommit)
  synthetic.py     the one place a listed Stripe object becomes an event (slim, relevant, synthetic_event)

Re-exported here: what the service and the server import. backfill.py and repairs.py are imported by their
path, when their command runs (start time).
"""

from stripe_sf_sync.sources.dead_letters import DeadLetters
from stripe_sf_sync.sources.inbox import InboxEvents
from stripe_sf_sync.sources.sync_events import HANDOFF_SINCE_KEY, READ_THROUGH_KEY, SYNC_FLOOR_KEY, SyncEvents

__all__ = ["HANDOFF_SINCE_KEY", "READ_THROUGH_KEY", "SYNC_FLOOR_KEY", "DeadLetters", "InboxEvents", "SyncEvents"]
