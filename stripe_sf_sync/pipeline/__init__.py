"""One batch step, many sources: a source (stripe_sf_sync/sources/) yields batches, each with a commit of a
closed set of kinds; the batch step applies them through ports, and the run commits each result by its kind
and sums them into the run's summary.

  plan.py        plan_events(events, ledger, hydrator, rules) -> Planning: parse → guard → hydrate → plan (writes
                 nothing; reconcile calls it too)
  batch.py       apply_batch(events, ports, settings) -> BatchResult: plan_events, then resolve → write
  materialize.py intents + lookups -> coalesced record writes (pure)
  result.py      BatchResult: what a batch did (outcomes, versions, customers, the cut)
  batches.py     Batch, the commit kinds (CursorCommit, CheckpointCommit, InboxCommit, DeadLetterCommit,
                 OutcomesCommit), the Source protocol (begin, batches, applied, end), in_batches, next_cursor
  run.py         begin the source; for batch in source: apply, commit by kind, add to the RunSummary; end it
  ports.py       the protocols the batch step talks to (the real ones in salesforce/ and state/)
  events.py      HeldEvent: an event held compactly between read and commit; dead letters and outcomes of one
  stop.py        how a signal stops a run within seconds; heartbeat.py: the "still running" line
"""

from stripe_sf_sync.pipeline.batch import BatchResult, BatchSettings, apply_batch
from stripe_sf_sync.pipeline.batches import (
    Batch,
    CheckpointCommit,
    Commit,
    CursorCommit,
    DeadLetterCommit,
    InboxCommit,
    NoRunState,
    OutcomesCommit,
    Source,
)
from stripe_sf_sync.pipeline.run import RunSummary, run_batches

__all__ = ["Batch", "BatchResult", "BatchSettings", "CheckpointCommit", "Commit", "CursorCommit", "DeadLetterCommit",
           "InboxCommit", "NoRunState", "OutcomesCommit", "RunSummary", "Source", "apply_batch", "run_batches"]
