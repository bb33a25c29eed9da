"""What `stripe-sf link` prints: its summary (80 columns, from the result's own `lines()`), or `--json`."""

from __future__ import annotations

from typing import Any

from stripe_sf_sync.render.console import echo, for_people, print_json


def print_link(result: Any, *, as_json: bool) -> None:
    """`link` and `link --apply`: a ProposeResult or an ApplyResult (stripe_sf_sync.link)."""
    if as_json:
        print_json(result.as_dict())
    elif for_people():
        for line in result.lines():
            echo(line)
