"""`stripe-sf serve`: a verified Stripe webhook receiver, a faster trigger for the same pipeline.

The receiver verifies each delivery's `Stripe-Signature` against the raw body (api-facts.md §4), keeps the
event in its pipeline's inbox in the state (deduplicated by id) and only then answers 200: the platform's own
events in the served account's, a connected account's (`account` set) in that account's pipeline's when
stripe.accounts names it (routing.py). A worker thread per pipeline drains its inbox through the batch step
(`InboxEvents`, committed with its entries marked done), under the same run lock as `sync`, and every
`--sync-every` runs the cursor sync as the safety net for missed deliveries. The ledger makes the two ways in
apply each event once.

Authentic events it cannot use (an account it does not serve, a thin event, the other mode's) are acknowledged
and counted, not applied: Stripe retries any non-2xx for three days. Refusals are logged, rate limited. What a
client can hold is bounded: connections, the time to send headers and body, the body's size (issue 20 §4).

Starlette and uvicorn are the optional [server] extra: this package is imported only by `stripe-sf serve`
(service/webhooks.py).
"""

from stripe_sf_sync.serve.app import build_app, prepare, run_serve, server
from stripe_sf_sync.serve.deliveries import Inbox, Metrics, PipelineMetrics, ThrottledLog, unusable
from stripe_sf_sync.serve.options import (
    BATCH_WINDOW_S,
    LOG_PER_MINUTE,
    MAX_BODY_BYTES,
    MAX_CONNECTIONS,
    TOLERANCE_S,
    ServeOptions,
    key_livemode,
    webhook_secrets,
)
from stripe_sf_sync.serve.routing import Served, served
from stripe_sf_sync.serve.signature import verify
from stripe_sf_sync.serve.worker import SharedGateway, Worker

__all__ = [
    "BATCH_WINDOW_S", "LOG_PER_MINUTE", "MAX_BODY_BYTES", "MAX_CONNECTIONS", "TOLERANCE_S", "Inbox", "Metrics",
    "PipelineMetrics", "ServeOptions", "Served", "SharedGateway", "ThrottledLog", "Worker", "build_app", "key_livemode",
    "prepare", "run_serve", "served", "server", "unusable", "verify", "webhook_secrets",
]
