"""The streams output goes to: results on stdout, notices, errors and progress on stderr (a JSON log line
when the log is JSON, so that every line there is a JSON object)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import typer

from stripe_sf_sync.logs import active_settings, fields

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger("stripe_sf_sync")


def stdout() -> Console:
    """Results, for people (soft-wrapped: a long line stays one line in a pipe)."""
    from rich.console import Console  # here: TAB completion starts without rich

    return Console(file=sys.stdout, soft_wrap=True)


def stderr() -> Console:
    """Notices, errors and progress."""
    from rich.console import Console

    return Console(file=sys.stderr, soft_wrap=True)


def terminal_console() -> Console:
    """The demo's console: the terminal's width (COLUMNS; 80 in a pipe), so that its tables fit or become
    blocks."""
    from rich.console import Console

    return Console(file=sys.stdout)


def echo(text: str) -> None:
    """One line on stdout, as it is."""
    typer.echo(text)


def print_json(doc: Any, *, indent: int | None = 2) -> None:
    """`--json`: the result as one JSON document on stdout (dates and paths as text)."""
    typer.echo(json.dumps(doc, indent=indent, default=str))


def for_people() -> bool:
    """Whether a summary for people goes on stdout: not with --quiet, nor with a JSON log (there the summary
    is a log line, and stdout carries only what --json asks for)."""
    settings = active_settings()
    return not (settings.quiet or settings.json)


def quiet() -> bool:
    """-q: warnings and errors only."""
    return active_settings().quiet


def error(label: str, text: str, exc: BaseException, debug: bool, **extra: Any) -> None:
    """An error on stderr: a paragraph for people, or one JSON line when the log is JSON. Tracebacks (only with
    --debug) never include local variables: they may hold secrets."""
    if active_settings().json:
        log.error("%s", text if label == "error" else f"{label}: {text}", exc_info=exc if debug else None,
                  extra=fields(kind="error", **extra))
        return
    if debug:
        traceback.print_exc(file=sys.stderr)
    # Escaped: messages quote brackets (`expand[]`, `.[sandbox]`) that rich would take for markup.
    from rich.markup import escape

    stderr().print(f"[bold red]{label}:[/] {escape(text)}", highlight=False, markup=True)


def say(level: int, text: str, **extra: Any) -> None:
    """A notice on stderr (a warning or an error): a log line when the log is JSON, so that every line there is
    a JSON object; printed as it is otherwise."""
    if active_settings().json:
        log.log(level, "%s", text, extra=fields(**extra))
    else:
        stderr().print(text, highlight=False)


def usage_error(text: str) -> None:
    """A refused invocation, before logging is set up: one line on stderr."""
    stderr().print(text, highlight=False)


@contextlib.contextmanager
def terminal_progress(as_json: bool) -> Iterator[Callable[[str, str], None] | None]:
    """A live display on stderr when it is a terminal (never with --json, never in cron): `update(name,
    stats)` sets the line of `name`. None otherwise."""
    err = stderr()
    if as_json or not err.is_terminal or active_settings().json or active_settings().quiet:
        yield None
        return
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                  console=err, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def update(name: str, stats: str) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=None, stats="")
            bar.update(tasks[name], stats=stats)

        yield update
