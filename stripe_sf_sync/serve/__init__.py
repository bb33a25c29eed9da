"""`stripe-sf serve`: a verified Stripe webhook receiver, a faster trigger for the same pipeline.

The receiver verifies each delivery's `Stripe-Signature` against the raw body (api-facts.md §4), keeps the
event in the state's inbox (deduplicated by id) and only then answers 200. One worker thread drains the
inbox through the batch step (`InboxEvents`, committed with its entries marked done), under the same run
lock as `sync`, and every `--sync-every` runs the cursor sync as the safety net for missed deliveries. The
ledger makes the two ways in apply each event once.

Authentic events it cannot use (a connected account's, a thin event, the other mode's) are acknowledged and
counted, not applied: Stripe retries any non-2xx for three days. Refusals are logged, rate limited. What a
client can hold is bounded: connections, the time to send headers and body, the body's size (issue 20 §4).

Starlette and uvicorn are the optional [server] extra: this package is imported only by `stripe-sf serve`
(service/webhooks.py).
"""

from stripe_sf_sync.serve.app import build_app, prepare, run_serve, server
from stripe_sf_sync.serve.deliveries import Inbox, Metrics, ThrottledLog, unusable
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
from stripe_sf_sync.serve.signature import verify
from stripe_sf_sync.serve.worker import SharedGateway, Worker

__all__ = [
    "BATCH_WINDOW_S", "LOG_PER_MINUTE", "MAX_BODY_BYTES", "MAX_CONNECTIONS", "TOLERANCE_S", "Inbox", "Metrics",
    "ServeOptions", "SharedGateway", "ThrottledLog", "Worker", "build_app", "key_livemode", "prepare", "run_serve",
    "server", "unusable", "verify", "webhook_secrets",
]
