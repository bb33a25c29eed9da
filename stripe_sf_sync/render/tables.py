"""Tables people can read at 80 columns and in a pipe: an id is never cut, wrapped or folded, so `grep evt_…`
finds it whole.

On a terminal wide enough for every id column at full width, a Rich table (ids never wrapped, other columns
folded). Otherwise (narrow, or piped to a file, `less` or `grep`), one block of `key: value` lines per record,
each value on one line, a blank line between records. A value that is a mapping (a write's fields) gets one
indented `name: value` line per entry. A line break inside a value is shown as `\n`, so that one value is
always one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

MIN_FOLDED = 12  # the narrowest a folded (non-id) column may get before blocks read better

Value = str | Mapping[str, object]


@dataclass(frozen=True)
class Column:
    """A column: its heading, and whether it holds ids (never cut)."""

    name: str
    is_id: bool = False


def print_records(console: Console, title: str, columns: Sequence[Column], rows: Sequence[Sequence[Value]]) -> None:
    """Print `rows` under `title`, as a table when it fits a terminal, else as blocks."""
    flat = [[_one_line(_flat(value)) for value in row] for row in rows]
    if console.is_terminal and _fits(console.width, columns, flat):
        console.print(_table(title, columns, flat))
        return
    width = max(len(c.name) for c in columns) + 1

    def line(text: str) -> None:
        # soft_wrap: a long value stays on its line (the terminal may wrap it; a pipe never does).
        console.print(text.rstrip(), markup=False, highlight=False, emoji=False, soft_wrap=True)

    line(title)
    for row in rows:
        line("")
        for column, value in zip(columns, row, strict=True):
            if isinstance(value, Mapping):
                line(f"{column.name}:")
                for name, item in value.items():
                    line(f"  {name}: {_one_line(str(item))}")
            else:
                line(f"{column.name + ':':<{width}} {_one_line(value)}")


def _flat(value: Value) -> str:
    return ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, Mapping) else value


def _one_line(text: str) -> str:
    return text.replace("\r\n", "\\n").replace("\n", "\\n")


def _fits(width: int, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> bool:
    """Whether every id column at full width, and every other column at its narrowest (MIN_FOLDED, or its
    longest word: an id inside a reason is never folded either), fit in `width`."""
    needed = 1 + 3 * len(columns)  # borders and padding of a Rich table
    for i, column in enumerate(columns):
        longest = max([len(column.name), *(len(row[i]) for row in rows)])
        needed += longest if column.is_id else min(longest, max(MIN_FOLDED, _longest_word(rows, i)))
    return needed <= width


def _longest_word(rows: Sequence[Sequence[str]], i: int) -> int:
    """The longest run without a space in column `i`: where a folded column may not be narrower."""
    return max((len(word) for row in rows for word in row[i].split()), default=0)


def _table(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> Table:
    from rich.table import Table  # here: a command that prints no table starts without it
    from rich.text import Text

    table = Table(title=Text(title), title_justify="left")
    for i, column in enumerate(columns):
        if column.is_id:
            longest = max([len(column.name), *(len(row[i]) for row in rows)])
            table.add_column(column.name, no_wrap=True, min_width=longest)
        else:  # wrapped between words, never narrower than its longest word (`_fits` made room)
            table.add_column(column.name, overflow="fold", min_width=_longest_word(rows, i) or None)
    for row in rows:
        table.add_row(*(Text(value) for value in row))  # values are text, never markup
    return table
