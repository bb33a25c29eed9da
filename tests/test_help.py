"""Every command, found by walking the CLI itself (not a hand list): `--help` with an example, and a row
in docs/commands.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from stripe_sf_sync.cli import app

ROOT = Path(__file__).resolve().parent.parent


def _leaves(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    # Typer may vendor click, so a group is told by its sub-commands, not by its class.
    found: list[tuple[str, ...]] = []
    for name, command in sorted(group.commands.items()):
        if command.hidden:
            continue
        path = (*prefix, name)
        found.extend(_leaves(command, path) if getattr(command, "commands", None) else [path])
    return found


COMMANDS = _leaves(typer.main.get_command(app))


def test_the_walk_finds_the_commands_a_hand_list_missed() -> None:
    assert {("backfill",), ("serve",), ("state", "migrate"), ("reconcile",)} <= set(COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(cmd: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_is_documented(cmd: tuple[str, ...]) -> None:
    assert f"`stripe-sf {' '.join(cmd)}" in (ROOT / "docs" / "commands.md").read_text()


def _options(cmd: tuple[str, ...]) -> set[str]:
    command: Any = typer.main.get_command(app)
    for name in cmd:
        command = command.commands[name]
    return {opt for param in command.params for opt in param.opts}


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_takes_the_global_options(cmd: tuple[str, ...]) -> None:
    """One declaration (cli.GlobalOptions), on every command: --log-format, -v and -q everywhere, and --config
    wherever a config is read (all but demo and sandbox)."""
    options = _options(cmd)
    assert {"--log-format", "--debug", "--verbose", "-v", "--quiet", "-q"} <= options
    assert ({"--config", "-c"} <= options) == (cmd not in {("demo",), ("sandbox",)})
