"""`stripe-sf sandbox`: both stand-ins as local servers, seeded with the demo data, so that every command can
be rehearsed offline against them (docs/rehearse.md)."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from stripe_sf_sandbox import scenario
from stripe_sf_sandbox.salesforce_server import SalesforceSandbox
from stripe_sf_sandbox.stripe_server import StripeSandbox
from stripe_sf_sync.words import counted


@dataclass
class Rehearsal:
    """The two running stand-ins and the demo data they hold."""

    stripe: StripeSandbox
    sf: SalesforceSandbox
    scenario: scenario.Scenario
    empty_org: bool = False  # without stripe-sf's custom fields: the rehearsal begins with `stripe-sf setup`

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
            "# In another shell, run these export lines (or start it with: stripe-sf sandbox --env-file "
            "sandbox.env, then . ./sandbox.env):",
            *exports,
            "# Then, in an empty folder: stripe-sf discover-config --write; "
            + ("stripe-sf setup --plan; stripe-sf setup --apply --assign integration@stripe-sf.sandbox; "
               if self.empty_org else "") + f"stripe-sf doctor; stripe-sf sync --since {self.since}",
            "# Serving until Ctrl-C.",
        ]


@contextlib.contextmanager
def rehearsal(*, now: int | None = None, empty_org: bool = False, strict_org: bool = False) -> Iterator[Rehearsal]:
    """Both stand-ins on 127.0.0.1, seeded with the demo scenario; stopped (CA file removed) on exit.
    `empty_org`: an org without stripe-sf's custom fields (its customers name their Accounts in metadata), for
    `stripe-sf setup` to create. `strict_org`: the org has a validation rule and a required field
    (scenario.awkward_org's `strict`)."""
    with StripeSandbox() as stripe, SalesforceSandbox(scenario.awkward_org(stripe_sf_fields=not empty_org,
                                                                          strict=strict_org)) as sf:
        sc = scenario.load(stripe, sf.org, now=now if now is not None else int(time.time()))
        yield Rehearsal(stripe, sf, sc, empty_org)


def serve(echo: Callable[[str], None], *, stop: threading.Event | None = None, env_file: Path | None = None,
          empty_org: bool = False, strict_org: bool = False) -> int:
    """Start the stand-ins, print the export lines, and serve until Ctrl-C, SIGTERM or `stop`; 0 when stopped.
    With `env_file`, the lines are also written there, all at once, when the stand-ins answer, and the file is
    removed when they stop (sourcing it then would point at nothing).

    Once the stand-ins serve, SIGINT and SIGTERM only set `stop`, so that a signal arriving at any moment,
    even while the lines are printed, ends the loop and the stand-ins stop cleanly (their CA file removed).
    A SIGINT the shell ignores (a background job) stays ignored."""
    stop = stop or threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    with rehearsal(empty_org=empty_org, strict_org=strict_org) as r:
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    previous[signum] = signal.signal(signum, on_signal)
        lines = [*r.lines(), f"# Stop it: kill {os.getpid()}"]
        try:
            for line in lines:
                echo(line)
            if env_file is not None:
                write_env_file(env_file, lines)
            while not stop.wait(0.2):  # a short wait: the handlers run between waits
                pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if env_file is not None:
                with contextlib.suppress(FileNotFoundError):
                    env_file.unlink()
    return 0


def write_env_file(path: Path, lines: list[str]) -> None:
    """`lines` into `path` at once: written beside it, then renamed, so a reader sees nothing or all of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def start_detached(env_file: Path, *, timeout_s: float = 60.0, empty_org: bool = False,
                   strict_org: bool = False) -> int:
    """Start `stripe-sf sandbox --env-file PATH --foreground` in a session of its own (a Ctrl-C in this shell
    does not reach it) and return its pid once it has written `env_file`, or raise RuntimeError with what it
    said. Readiness is the file naming the new process (`kill PID`), never a file a previous sandbox left."""
    env_file = env_file.resolve()
    with tempfile.TemporaryFile() as errors:
        args = ["sandbox", "--env-file", str(env_file), "--foreground", *(["--empty-org"] if empty_org else []),
                *(["--strict-org"] if strict_org else [])]
        proc = subprocess.Popen([sys.executable, "-m", "stripe_sf_sync", *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                errors.seek(0)
                raise RuntimeError(errors.read().decode(errors="replace").strip() or f"exit code {proc.returncode}")
            with contextlib.suppress(FileNotFoundError):
                if f"# Stop it: kill {proc.pid}\n" in env_file.read_text():
                    return proc.pid
            time.sleep(0.05)
        proc.terminate()
        raise RuntimeError(f"the stand-ins did not start within {timeout_s:.0f} s")
