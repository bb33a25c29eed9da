"""What `serve` listens on and the bounds it keeps: the options, their defaults, and the secrets it
reads from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from stripe_sf_sync.config import DEFAULT_KEY_ENV
from stripe_sf_sync.errors import ConfigError

TOLERANCE_S = 300  # the SDK's default: a delivery signed longer ago is refused as a replay (api-facts.md §4)
MAX_BODY_BYTES = 1024 * 1024  # Stripe's event payloads are far smaller; anything larger is not one
DRAIN_LIMIT_BATCHES = 4  # a drain reads at most this many batches, so a stop waits for little
RETRY_S = 1.0  # the run lock held (a cron `sync`), or nothing pending: look again after this
BACKOFF_MAX_S = 60.0  # a failing drain (Salesforce down) waits longer each time, up to this
BATCH_WINDOW_S = 0.5  # a delivery waits this long for others to share its drain (receipt-to-write p95 < 2 s)
MAX_CONNECTIONS = 100  # open connections at most; beyond them uvicorn answers 503 (Stripe retries)
HEADER_TIMEOUT_S = 10.0  # a new connection's request line and headers must arrive within this
BODY_TIMEOUT_S = 10.0  # and its body within this once the headers are in
KEEP_ALIVE_S = 5  # an idle kept-alive connection is closed after this (uvicorn's default)
PARALLEL_RUNS = 4  # pipelines' drains or syncs at once (issue 26): as `sync --all`'s default --parallel
HOUSEKEEPING_S = 60.0  # the inbox and the runs table are pruned at most this often
KEEP_SERVE_RUNS = 1000  # inbox drains kept in the runs table (`status` shows the newest)
LOG_PER_MINUTE = 20  # refused, ignored or broken deliveries logged one by one each minute; the rest counted
MAX_DEPTH = 64  # JSON nesting a delivery may have; Stripe's events nest about ten levels
MAX_CREATED = 253402300799  # 9999-12-31T23:59:59Z: a `created` beyond any timestamp is not one (and overflows)

SIGNING_HINT = ("Export STRIPE_WEBHOOK_SECRET with the endpoint's signing secret (whsec_…, shown on the "
               "endpoint's page in the Dashboard); during a rotation give both, comma-separated.")


@dataclass(frozen=True)
class ServeOptions:
    """Where to listen and how often the safety-net sync runs (0: never)."""

    host: str = "127.0.0.1"
    port: int = 8080
    path: str = "/stripe/webhook"
    sync_every_s: float = 300.0
    max_body: int = MAX_BODY_BYTES
    tolerance_s: int = TOLERANCE_S
    batch_window_s: float = BATCH_WINDOW_S
    max_connections: int = MAX_CONNECTIONS
    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S


def webhook_secrets(env: Mapping[str, str]) -> list[str]:
    """STRIPE_WEBHOOK_SECRET: one or more signing secrets, comma-separated (several while rotating)."""
    secrets = [s.strip() for s in env.get("STRIPE_WEBHOOK_SECRET", "").split(",") if s.strip()]
    if not secrets:
        raise ConfigError(["STRIPE_WEBHOOK_SECRET is not set"], source="environment", hint=SIGNING_HINT)
    return secrets


def key_livemode(env: Mapping[str, str], key_env: str = DEFAULT_KEY_ENV) -> bool:
    """Whether the key in `key_env` (STRIPE_API_KEY) is a live key: a live event must not be applied with a test
    key, nor the reverse."""
    return env.get(key_env, "").startswith(("sk_live_", "rk_live_"))
