"""`stripe-sf serve`: the options checked, then the webhook receiver (stripe_sf_sync.serve, the optional
[server] extra, imported only here) run until SIGTERM."""

from __future__ import annotations

from pathlib import Path

from stripe_sf_sync.errors import ConfigError, missing_extra
from stripe_sf_sync.health import parse_duration
from stripe_sf_sync.service.runtime import Environment


def serve_webhooks(config_path: Path | None, environment: Environment, *, host: str, port: int, path: str,
                   sync_every: str, batch_window: float, max_connections: int) -> int:
    """Receive verified Stripe webhooks on `host:port` at `path` and apply them; the exit code when it stops.
    A missing [server] extra is a usage error that says how to install it."""
    with missing_extra("`stripe-sf serve`", "server", "run `stripe-sf serve` again"):
        from stripe_sf_sync import serve as serving
    if not path.startswith("/"):
        raise ConfigError([f"--path {path!r} must start with /"], source="invocation")
    options = serving.ServeOptions(host=host, port=port, path=path,
                                   sync_every_s=parse_duration(sync_every, "--sync-every"),
                                   batch_window_s=batch_window, max_connections=max_connections)
    return serving.run_serve(config_path, environment, options)
