"""`stripe-sf sandbox`: both stand-ins as local servers, seeded with the demo data, so that every command can
be rehearsed offline against them (README: "Rehearse offline")."""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

from stripe_sf_sync.sandbox import scenario
from stripe_sf_sync.sandbox.salesforce_server import SalesforceSandbox
from stripe_sf_sync.sandbox.stripe_server import StripeSandbox
from stripe_sf_sync.words import counted


@dataclass
class Rehearsal:
    """The two running stand-ins and the demo data they hold."""

    stripe: StripeSandbox
    sf: SalesforceSandbox
    scenario: scenario.Scenario

    def exports(self) -> dict[str, str]:
        """The variables that point stripe-sf at the stand-ins (the access-token mode; the CA bundle that
        the Salesforce stand-in's generated certificate is trusted by)."""
        return {"STRIPE_API_KEY": self.stripe.api_key, "STRIPE_API_BASE": self.stripe.base_url,
                "SF_INSTANCE_URL": self.sf.instance_url, "SF_ACCESS_TOKEN": self.sf.access_token,
                "REQUESTS_CA_BUNDLE": self.sf.ca_path}

    @property
    def since(self) -> str:
        """A first `sync --since` that covers every demo event."""
        return time.strftime("%Y-%m-%d", time.gmtime(self.scenario.start))

    def lines(self) -> list[str]:
        """What `stripe-sf sandbox` prints: comments and `export` lines, so its output can be sourced."""
        exports = [f"export {name}={shlex.quote(value)}" for name, value in self.exports().items()]
        return [
            f"# stripe-sf sandbox: Stripe at {self.stripe.base_url}, Salesforce at {self.sf.instance_url}, "
            f"seeded with the demo data ({counted(len(self.scenario.events), 'event')} since {self.since}).",
            "# In another shell, run these export lines (or: stripe-sf sandbox > sandbox.env & then . ./sandbox.env):",
            *exports,
            f"# Then, in an empty folder: stripe-sf discover-config --write; stripe-sf doctor; "
            f"stripe-sf sync --since {self.since}",
            "# Serving until Ctrl-C.",
        ]


@contextlib.contextmanager
def rehearsal(*, now: int | None = None) -> Iterator[Rehearsal]:
    """Both stand-ins on 127.0.0.1, seeded with the demo scenario; stopped (CA file removed) on exit."""
    with StripeSandbox() as stripe, SalesforceSandbox(scenario.awkward_org()) as sf:
        sc = scenario.load(stripe, sf.org, now=now if now is not None else int(time.time()))
        yield Rehearsal(stripe, sf, sc)


def serve(echo: Callable[[str], None], *, stop: threading.Event | None = None) -> int:
    """Start the stand-ins, print the export lines, and serve until Ctrl-C, SIGTERM or `stop`; 0 when stopped.

    Once the stand-ins serve, SIGINT and SIGTERM only set `stop`, so that a signal arriving at any moment,
    even while the lines are printed, ends the loop and the stand-ins stop cleanly (their CA file removed).
    A SIGINT the shell ignores (a background job) stays ignored."""
    stop = stop or threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    with rehearsal() as r:
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    previous[signum] = signal.signal(signum, on_signal)
        try:
            for line in r.lines():
                echo(line)
            while not stop.wait(0.2):  # a short wait: the handlers run between waits
                pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    return 0
