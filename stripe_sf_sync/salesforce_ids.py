"""Salesforce Id shape checks. No value from Stripe metadata reaches SOQL or a URL unchecked."""

from __future__ import annotations

import re

_ID = re.compile(r"^[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?$")
_SUFFIX_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"

KEY_PREFIX = {"Account": "001", "Contact": "003", "User": "005", "Opportunity": "006",
              "RecordType": "012", "Task": "00T"}


def _suffix(id15: str) -> str:
    """Salesforce's case-safe checksum: 3 chars that encode the case of each 5-char block."""
    out = []
    for block in range(3):
        bits = 0
        for i, ch in enumerate(id15[block * 5:block * 5 + 5]):
            if "A" <= ch <= "Z":
                bits |= 1 << i
        out.append(_SUFFIX_CHARS[bits])
    return "".join(out)


def to_18(value: str) -> str:
    """Return the 18-character form of a valid 15- or 18-character Id."""
    return value if len(value) == 18 else value + _suffix(value)


def is_salesforce_id(value: object, prefix: str | None = None) -> bool:
    """True for a well-formed 15/18-char Id with a correct checksum and, if given, key prefix."""
    if not isinstance(value, str) or not _ID.match(value):
        return False
    if len(value) == 18 and _suffix(value[:15]) != value[15:]:
        return False
    return prefix is None or value.startswith(prefix)


def checked_id(value: object, sobject: str) -> str | None:
    """The 18-char Id if `value` is a valid Id of `sobject`, else None."""
    prefix = KEY_PREFIX.get(sobject)
    if is_salesforce_id(value, prefix):
        return to_18(str(value))
    return None
