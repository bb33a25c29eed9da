"""Salesforce record Ids: key prefixes, the 15->18 checksum suffix, validation and generation.

Real orgs hand out 18-char Ids whose last three characters encode the case of the first 15, and
they accept either form on input. Tests that compare Ids therefore must normalise, and code that
builds Ids by hand must get the suffix right; this module lets the sandbox enforce both.
"""

from __future__ import annotations

import itertools
import re
import threading

KEY_PREFIXES: dict[str, str] = {
    "Account": "001",
    "Contact": "003",
    "User": "005",
    "Opportunity": "006",
    "RecordType": "012",
    "Task": "00T",
    "OpportunityStage": "01J",
    "Organization": "00D",
    "AsyncApexJob": "707",
    "BulkIngestJob": "750",
    "QueryLocator": "01g",
}

_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID_RE = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")

# The "Master" record type exists in every org with this fixed Id.
MASTER_RECORD_TYPE_ID = "012000000000000AAA"


def checksum_suffix(id15: str) -> str:
    """Return the 3-char suffix Salesforce appends to a 15-char Id.

    Each 5-char chunk becomes a 5-bit number (bit i set when char i is an upper-case letter),
    which indexes into A-Z0-5.
    """
    if len(id15) != 15:
        raise ValueError(f"expected 15 characters, got {len(id15)}")
    out = []
    for chunk_start in range(0, 15, 5):
        bits = 0
        for i, ch in enumerate(id15[chunk_start : chunk_start + 5]):
            if "A" <= ch <= "Z":
                bits |= 1 << i
        out.append(_SUFFIX_ALPHABET[bits])
    return "".join(out)


def is_valid_id(value: object) -> bool:
    """True for a well-formed 15-char Id, or an 18-char Id whose suffix matches its first 15."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        return False
    if len(value) == 18:
        # Real orgs compare the suffix case-insensitively (the suffix is what restores case).
        return value[15:].upper() == checksum_suffix(value[:15])
    return True


def to18(value: str) -> str:
    """Canonical 18-char form; raises ValueError for a malformed Id."""
    if not is_valid_id(value):
        raise ValueError(f"malformed id {value}")
    return value[:15] + checksum_suffix(value[:15])


def normalize_id(value: object) -> str | None:
    """18-char form of a well-formed Id, else None."""
    if isinstance(value, str) and is_valid_id(value):
        return value[:15] + checksum_suffix(value[:15])
    return None


def key_prefix(value: str) -> str:
    """The first three characters, which identify the sObject type."""
    return value[:3]


def _base62(n: int, width: int) -> str:
    digits = []
    while n:
        n, rem = divmod(n, 62)
        digits.append(_BASE62[rem])
    return "".join(reversed(digits)).rjust(width, "0")


class IdFactory:
    """Generates unique, real-looking 18-char Ids (prefix + pod + base62 counter + checksum)."""

    def __init__(self, pod: str = "8d", start: int = 62**5 * 11 + 12345) -> None:
        # Starting well above zero gives mixed-case bodies, so the checksum suffix is not always AAA
        # and code that truncates or lower-cases Ids gets caught.
        self._pod = pod
        self._counter = itertools.count(start)
        self._lock = threading.Lock()

    def new(self, prefix: str) -> str:
        """A fresh Id for the given 3-char key prefix."""
        if len(prefix) != 3:
            raise ValueError(f"key prefix must be 3 characters: {prefix!r}")
        with self._lock:
            n = next(self._counter)
        body = prefix + self._pod + _base62(n, 10)
        return body + checksum_suffix(body)


def custom_key_prefix(index: int) -> str:
    """Key prefix for sObjects the tests add to the schema (a00, a01, ...)."""
    return "a" + _base62(index, 2)
