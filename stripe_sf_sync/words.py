"""Count words that agree with their numbers ("1 event", "2 events"), for every line people read."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and the noun in the number it takes: counted(1, "event") is "1 event", counted(0, "match",
    "matches") is "0 matches"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
