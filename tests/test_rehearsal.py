"""`stripe-sf sandbox`, as a real subprocess: the README's offline rehearsal, command by command."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from stripe_sf_sync.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]


class Served:
    """A running `stripe-sf sandbox` and what it printed."""

    def __init__(self, proc: subprocess.Popen[str], lines: list[str]) -> None:
        self.proc = proc
        self.lines = lines
        self.exports = dict(shlex.split(line[len("export "):])[0].split("=", 1)
                            for line in lines if line.startswith("export "))

    def env(self) -> dict[str, str]:
        """A clean environment for stripe-sf pointed at the stand-ins by the export lines alone."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SF_", "STRIPE_", "REQUESTS_CA_BUNDLE"))}
        return {**env, **self.exports}

    def run(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stripe_sf_sync", *args], env=self.env(), cwd=cwd,
                              capture_output=True, text=True, timeout=120)

    def stop(self, signum: int) -> tuple[int, str]:
        self.proc.send_signal(signum)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


def start_sandbox() -> Served:
    # Ctrl-C as on a terminal: a suite started in the background inherits an ignored SIGINT, which the
    # sandbox, like any background job, keeps ignoring.
    proc = subprocess.Popen([sys.executable, "-m", "stripe_sf_sync", "sandbox"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watchdog = threading.Timer(60, proc.kill)  # never hang the suite on a sandbox that does not start
    watchdog.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("# Serving until Ctrl-C"):
                break
    finally:
        watchdog.cancel()
    assert lines and lines[-1].startswith("# Serving"), (lines, proc.stderr.read() if proc.stderr else "")
    return Served(proc, lines)


@pytest.fixture
def served() -> Iterator[Served]:
    s = start_sandbox()
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.communicate(timeout=30)


def test_the_offline_rehearsal_runs_every_command_against_the_sandbox(served, tmp_path):
    assert set(served.exports) == {"STRIPE_API_KEY", "STRIPE_API_BASE", "SF_INSTANCE_URL", "SF_ACCESS_TOKEN",
                                   "REQUESTS_CA_BUNDLE"}
    ca = Path(served.exports["REQUESTS_CA_BUNDLE"])
    assert ca.is_file()
    since = re.search(r"stripe-sf sync --since (\d{4}-\d{2}-\d{2})", "\n".join(served.lines))
    assert since, served.lines

    done = served.run("discover-config", "--write", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "won_stage: Closed Won" in (tmp_path / "sync.yaml").read_text()
    done = served.run("doctor", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].endswith("0 errors.")
    done = served.run("sync", "--since", since.group(1), cwd=tmp_path)
    assert done.returncode == ExitCode.DEAD_LETTERS, done.stderr  # the demo's Hooli has no Account
    assert "11 events read, 10 applied" in done.stdout
    done = served.run("status", cwd=tmp_path)
    assert done.returncode == 0 and "Open dead letters: 1" in done.stdout

    # The README's fix: create the missing Account through the stand-in's REST API, then retry.
    [dead] = json.loads(served.run("dlq", "list", "--json", cwd=tmp_path).stdout)
    customer = re.search(r"cus_\w+", dead["reason"])
    assert dead["error_code"] == "NO_ACCOUNT" and customer
    exports = served.exports
    created = requests.post(f"{exports['SF_INSTANCE_URL']}/services/data/v62.0/sobjects/Account",
                            json={"Name": "Hooli", "Stripe_Customer_ID__c": customer.group(0)},
                            headers={"Authorization": f"Bearer {exports['SF_ACCESS_TOKEN']}"}, verify=str(ca),
                            timeout=30)
    assert created.status_code == 201 and created.json()["success"]
    done = served.run("dlq", "retry", "--all", cwd=tmp_path)
    assert done.returncode == 0 and "1 applied" in done.stdout, done.stderr
    done = served.run("backfill", "--since", since.group(1), cwd=tmp_path)
    assert done.returncode == 0 and "subscriptions: 4 read" in done.stdout, done.stderr
    done = served.run("sync", cwd=tmp_path)
    assert done.returncode == 0 and "0 events read" in done.stdout, done.stderr

    code, err = served.stop(signal.SIGTERM)
    assert code == 0 and "sandbox stopped" in err
    assert not ca.exists()  # the stand-in's generated CA is removed with it


def test_ctrl_c_stops_the_sandbox_cleanly(served):
    code, err = served.stop(signal.SIGINT)
    assert code == 0 and "sandbox stopped" in err and "Traceback" not in err


def test_the_sandbox_without_its_distribution_says_how_to_install_it():
    code = ("import sys; sys.modules['stripe_sf_sandbox'] = None; sys.argv = ['stripe-sf', 'sandbox']; "
            "from stripe_sf_sync.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == ExitCode.CONFIG, done.stderr
    assert "`stripe-sf sandbox` needs the stand-ins (the stripe-sf-sandbox distribution), and stripe_sf_sandbox " \
           "is not installed" in " ".join(done.stderr.split())
    assert "pip install -e ./sandbox" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("cmd", [["sandbox"], ["doctor"]])
def test_sandbox_and_doctor_have_help_with_an_example(cmd):
    from typer.testing import CliRunner

    from stripe_sf_sync.cli import app

    result = CliRunner().invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0 and "Example" in result.output


def test_env_file_returns_once_the_stand_ins_answer_and_is_removed_when_they_stop(tmp_path):
    """Issue 20 §5: `stripe-sf sandbox > sandbox.env & . ./sandbox.env` sourced an empty file. `--env-file`
    returns only once the file is whole and the stand-ins answer; a file a previous sandbox left is not
    taken for this one's."""
    env_file = tmp_path / "sandbox.env"
    env_file.write_text("export STRIPE_API_BASE=http://127.0.0.1:9\n# Stop it: kill 1\n")  # left by a kill -9
    started = subprocess.run([sys.executable, "-m", "stripe_sf_sync", "sandbox", "--env-file", "sandbox.env"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert started.returncode == 0, started.stderr
    pid = int(re.search(r"kill (\d+)", started.stdout).group(1))
    try:
        lines = env_file.read_text().splitlines()
        assert f"# Stop it: kill {pid}" in lines and ". ./sandbox.env" in started.stdout
        served = Served(None, lines)  # type: ignore[arg-type]
        assert served.exports["STRIPE_API_BASE"] != "http://127.0.0.1:9"
        # sourced by sh, the file points stripe-sf at stand-ins that already answer
        sourced = subprocess.run(["sh", "-c", ". ./sandbox.env && echo \"$STRIPE_API_BASE\""], cwd=tmp_path,
                                 capture_output=True, text=True, check=True)
        assert sourced.stdout.strip() == served.exports["STRIPE_API_BASE"]
        answer = requests.get(f"{served.exports['STRIPE_API_BASE']}/v1/customers", timeout=10,
                              auth=(served.exports["STRIPE_API_KEY"], ""))
        assert answer.status_code == 200 and answer.json()["data"]
    finally:
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not env_file.exists():
            break
        threading.Event().wait(0.1)
    assert not env_file.exists()  # sourcing it after the stand-ins stopped would point at nothing
