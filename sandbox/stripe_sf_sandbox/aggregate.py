"""The one aggregate query shape the stand-in answers: values held by several records.

    SELECT Field, COUNT(Id) [alias] FROM Obj [WHERE ...] GROUP BY Field [HAVING COUNT(Id) > n]

(SOQL and SOSL Reference, "GROUP BY" and "HAVING"). Each row is an AggregateResult holding the field and the
count, under its alias or `expr0` when it has none. Text is grouped without regard to case, as Salesforce compares
text. Anything else with GROUP BY is refused as a query the stand-in does not support, rather than answered
wrongly. The rows are read through the ordinary query path, so field checks and field-level security apply.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .soql import SoqlError

if TYPE_CHECKING:
    from .salesforce_server import SalesforceOrg

_SHAPE = re.compile(
    r"^\s*SELECT\s+(?P<field>\w+)\s*,\s*COUNT\(\s*Id\s*\)\s*(?P<alias>\w+)?\s+FROM\s+(?P<obj>\w+)"
    r"(?P<where>\s+WHERE\s+.+?)?\s+GROUP\s+BY\s+(?P<group>\w+)"
    r"(?:\s+HAVING\s+COUNT\(\s*Id\s*\)\s*(?P<op>>=|<=|!=|=|>|<)\s*(?P<n>\d+))?\s*$",
    re.IGNORECASE | re.DOTALL)
_OPS: dict[str, Callable[[int, int], bool]] = {">": operator.gt, ">=": operator.ge, "<": operator.lt,
                                               "<=": operator.le, "=": operator.eq, "!=": operator.ne}


def is_grouped(text: str) -> bool:
    """Whether the query has a GROUP BY clause (outside string literals, roughly: enough for the stand-in)."""
    return re.search(r"\bGROUP\s+BY\b", re.sub(r"'(?:\\.|[^'\\])*'", "''", text), re.IGNORECASE) is not None


def run_grouped(org: SalesforceOrg, text: str, *, version: str) -> dict[str, Any]:
    """The AggregateResult page of a supported GROUP BY query."""
    m = _SHAPE.match(text)
    if m is None or m["field"].lower() != m["group"].lower():
        raise SoqlError("MALFORMED_QUERY", "The stand-in answers GROUP BY only as SELECT Field, COUNT(Id) [alias] "
                                           "FROM Obj [WHERE ...] GROUP BY Field [HAVING COUNT(Id) > n]")
    inner = f"SELECT {m['field']} FROM {m['obj']}{m['where'] or ''}"  # noqa: S608 - the query's own parts
    rows = org.run_query(inner, version=version, batch_size=10**9)["records"]
    name = next((k for k in (rows[0] if rows else {}) if k.lower() == m["field"].lower()), m["field"])
    groups: dict[Any, list[Any]] = {}
    for row in rows:
        value = row.get(name)
        groups.setdefault(value.casefold() if isinstance(value, str) else value, []).append(value)
    test = _OPS[m["op"]] if m["op"] else None
    alias = m["alias"] or "expr0"
    records = [{"attributes": {"type": "AggregateResult"}, name: values[0], alias: len(values)}
               for values in groups.values() if test is None or test(len(values), int(m["n"]))]
    return {"totalSize": len(records), "done": True, "records": records}
