"""One batch step, many sources: sources yield batches with a commit policy, the batch step applies them
through ports, and the run commits each result and sums them into the run's summary.

  batch.py    apply_batch(events, ports, settings) -> BatchResult: parse → guard → hydrate → plan → resolve → write
  cursor.py   where a sync starts (--since | stored cursor | backfill's hand-off), the lookback, the cursor's advance
  sources.py  SyncEvents, DeadLetters, InboxEvents (backfill.py: BackfillObjects) -> batches, each with its CommitPolicy
  run.py      for batch in source: apply, commit by policy, add to the RunSummary
  ports.py    the protocols the batch step talks to (the real ones in salesforce/ and state/)
"""

from stripe_sf_sync.pipeline.batch import BatchResult, BatchSettings, apply_batch
from stripe_sf_sync.pipeline.cursor import HANDOFF_SINCE_KEY, SYNC_FLOOR_KEY
from stripe_sf_sync.pipeline.run import RunSummary, run_batches
from stripe_sf_sync.pipeline.sources import Batch, CommitPolicy, DeadLetters, InboxEvents, Source, SyncEvents

__all__ = ["HANDOFF_SINCE_KEY", "SYNC_FLOOR_KEY", "Batch", "BatchResult", "BatchSettings", "CommitPolicy",
           "DeadLetters", "InboxEvents", "RunSummary", "Source", "SyncEvents", "apply_batch", "run_batches"]
