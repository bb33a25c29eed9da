"""A strict parser and evaluator for the SOQL subset the sandbox serves.

Supported: ``SELECT f1, Rel.f2 | COUNT() FROM Obj [WHERE ...] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...]
[LIMIT n] [OFFSET n]``. Conditions: ``= != <> < <= > >= LIKE IN NOT IN`` and ``NOT``, combined with
AND/OR and parentheses. Like a real org, mixing AND and OR at one level without parentheses is a
syntax error, string literals must use SOQL escapes, and keywords are case-insensitive.

The module knows nothing about schemas: the server binds field names and supplies values.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from . import sfids


class SoqlError(Exception):
    """A query rejected the way a real org rejects it (maps to a 400 response)."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code
        self.message = message


# ----------------------------------------------------------------------------------------------
# Tokens

_KEYWORDS = {
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "ORDER", "BY", "ASC", "DESC",
    "NULLS", "FIRST", "LAST", "LIMIT", "OFFSET", "TRUE", "FALSE", "NULL", "GROUP", "HAVING", "WITH",
    "INCLUDES", "EXCLUDES",
}  # fmt: skip

_ESCAPES = {"'": "'", "\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
# \% and \_ are legal everywhere but only mean "literal wildcard" inside LIKE.
_LIKE_ESCAPES = {"%", "_"}

_DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}(?![\dT])")
_NUMBER_RE = re.compile(r"[+-]?\d+(?:\.\d+)?(?![\w.])")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_OPS = ("!=", "<>", "<=", ">=", "=", "<", ">")


@dataclass(frozen=True)
class Token:
    """One lexical token; ``pos`` is the 0-based offset used for real-looking error carets."""

    kind: str  # ident, string, number, date, datetime, op, punct, eof
    text: str
    pos: int
    value: Any = None
    like_regex: str | None = None  # for strings: the LIKE pattern, honouring \% and \_


def _error_at(query: str, pos: int, code: str, detail: str) -> SoqlError:
    # Real orgs echo the query, draw a caret and report row/column; keep that shape so log
    # output and error matching in callers look like production.
    line_start = query.rfind("\n", 0, pos) + 1
    row = query.count("\n", 0, pos) + 1
    col = pos - line_start + 1
    line_end = query.find("\n", pos)
    line = query[line_start : line_end if line_end != -1 else len(query)]
    return SoqlError(code, f"\n{line}\n{' ' * (col - 1)}^\nERROR at Row:{row}:Column:{col}\n{detail}")


def tokenize(query: str) -> list[Token]:
    """Split a query into tokens; raises MALFORMED_QUERY for illegal characters or strings."""
    tokens: list[Token] = []
    i, n = 0, len(query)
    while i < n:
        ch = query[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "'":
            start = i
            i += 1
            chars: list[str] = []
            like: list[str] = []
            while True:
                if i >= n:
                    raise _error_at(
                        query,
                        start,
                        "MALFORMED_QUERY",
                        f"line 1:{n} mismatched character '<EOF>' expecting '''",
                    )
                c = query[i]
                if c == "\\":
                    if i + 1 >= n:
                        raise _error_at(query, i, "MALFORMED_QUERY", "Invalid string literal: unterminated")
                    esc = query[i + 1]
                    if esc in _ESCAPES:
                        chars.append(_ESCAPES[esc])
                        like.append(re.escape(_ESCAPES[esc]))
                    elif esc in _LIKE_ESCAPES:
                        chars.append(esc)
                        like.append(re.escape(esc))
                    else:
                        raise _error_at(
                            query,
                            i,
                            "MALFORMED_QUERY",
                            f"Invalid string literal '{query[start : i + 2]}'. "
                            "Illegal character sequence '\\" + esc + "' in string literal.",
                        )
                    i += 2
                    continue
                if c == "'":
                    i += 1
                    break
                chars.append(c)
                like.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
                i += 1
            tokens.append(Token("string", query[start:i], start, "".join(chars), "".join(like)))
            continue
        m = _DATETIME_RE.match(query, i)
        if m:
            tokens.append(Token("datetime", m.group(0), i, normalize_datetime(m.group(0))))
            i = m.end()
            continue
        m = _DATE_RE.match(query, i)
        if m:
            try:
                date.fromisoformat(m.group(0))
            except ValueError:
                raise _error_at(query, i, "MALFORMED_QUERY", f"invalid date: {m.group(0)}") from None
            tokens.append(Token("date", m.group(0), i, m.group(0)))
            i = m.end()
            continue
        m = _NUMBER_RE.match(query, i)
        if m and (ch.isdigit() or (ch in "+-" and (not tokens or tokens[-1].kind in ("op", "punct")))):
            tokens.append(Token("number", m.group(0), i, Decimal(m.group(0))))
            i = m.end()
            continue
        m = _IDENT_RE.match(query, i)
        if m:
            tokens.append(Token("ident", m.group(0), i))
            i = m.end()
            continue
        op = next((o for o in _OPS if query.startswith(o, i)), None)
        if op:
            tokens.append(Token("op", op, i))
            i += len(op)
            continue
        if ch in "(),":
            tokens.append(Token("punct", ch, i))
            i += 1
            continue
        raise _error_at(query, i, "MALFORMED_QUERY", f"unexpected token: '{ch}'")
    tokens.append(Token("eof", "", n))
    return tokens


# ----------------------------------------------------------------------------------------------
# AST


@dataclass(frozen=True)
class Literal:
    """A value in a condition."""

    kind: str  # string, number, boolean, null, date, datetime
    value: Any
    text: str
    pos: int
    like_regex: str | None = None


@dataclass
class Comparison:
    """``field op value`` or ``field [NOT] IN (values)``."""

    field: str
    pos: int
    op: str  # = != < <= > >= LIKE IN NOT IN
    values: list[Literal]
    # Literals converted for one field type, computed once per query rather than once per row.
    _converted: dict[str, tuple[list[Any], frozenset[Any]]] = dataclasses.field(  # mypy: `field` is the attribute above
        default_factory=dict, repr=False, compare=False
    )

    def converted(self, ftype: str) -> tuple[list[Any], frozenset[Any]]:
        """Comparable forms of the literals (list and set) for a field of ``ftype``."""
        if ftype not in self._converted:
            lits = [_comparable(ftype, lit.value) for lit in self.values]
            self._converted[ftype] = (lits, frozenset(lits))
        return self._converted[ftype]


@dataclass
class Logical:
    """AND/OR over two or more items."""

    op: str
    items: list[Node]


@dataclass
class Negation:
    """``NOT cond``."""

    item: Node


Node = Comparison | Logical | Negation


@dataclass
class OrderItem:
    """One ORDER BY key."""

    field: str
    pos: int
    descending: bool = False
    nulls_last: bool | None = None  # None = Salesforce default (nulls first ASC, last DESC)


@dataclass
class Query:
    """A parsed SELECT statement."""

    text: str
    fields: list[tuple[str, int]]
    count: bool
    sobject: str
    sobject_pos: int
    where: Node | None = None
    order_by: list[OrderItem] = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None

    def where_fields(self) -> list[tuple[str, int]]:
        """All field references in the WHERE clause, with positions."""
        out: list[tuple[str, int]] = []

        def walk(node: Node) -> None:
            if isinstance(node, Comparison):
                out.append((node.field, node.pos))
            elif isinstance(node, Logical):
                for item in node.items:
                    walk(item)
            else:
                walk(node.item)

        if self.where is not None:
            walk(self.where)
        return out

    def error_at(self, pos: int, code: str, detail: str) -> SoqlError:
        """Build an error pointing at ``pos`` in this query."""
        return _error_at(self.text, pos, code, detail)


# ----------------------------------------------------------------------------------------------
# Parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def _unexpected(self, tok: Token | None = None) -> SoqlError:
        tok = tok or self.tok
        if tok.kind == "eof":
            return _error_at(self.text, tok.pos, "MALFORMED_QUERY", "unexpected token: <EOF>")
        return _error_at(self.text, tok.pos, "MALFORMED_QUERY", f"unexpected token: '{tok.text}'")

    def _is_kw(self, *words: str) -> bool:
        return self.tok.kind == "ident" and self.tok.text.upper() in words

    def _expect_kw(self, word: str) -> Token:
        if not self._is_kw(word):
            raise self._unexpected()
        tok = self.tok
        self.i += 1
        return tok

    def _expect_punct(self, ch: str) -> None:
        if not (self.tok.kind == "punct" and self.tok.text == ch):
            raise self._unexpected()
        self.i += 1

    def _field_name(self) -> Token:
        tok = self.tok
        if tok.kind != "ident" or tok.text.upper() in _KEYWORDS:
            raise self._unexpected()
        self.i += 1
        return tok

    def _int(self) -> int:
        tok = self.tok
        if tok.kind != "number" or not re.fullmatch(r"\d+", tok.text):
            raise self._unexpected()
        self.i += 1
        return int(tok.text)

    def parse(self) -> Query:
        self._expect_kw("SELECT")
        fields: list[tuple[str, int]] = []
        count = False
        if self._is_kw("COUNT") and self.tokens[self.i + 1].text == "(":
            self.i += 2
            self._expect_punct(")")
            count = True
        else:
            while True:
                tok = self._field_name()
                if any(f.lower() == tok.text.lower() for f, _ in fields):
                    raise _error_at(
                        self.text, tok.pos, "MALFORMED_QUERY", f"duplicate field selected: {tok.text}"
                    )
                fields.append((tok.text, tok.pos))
                if self.tok.kind == "punct" and self.tok.text == ",":
                    self.i += 1
                    continue
                break
        if not self._is_kw("FROM"):
            if count and self.tok.kind == "punct" and self.tok.text == ",":
                raise _error_at(
                    self.text,
                    self.tok.pos,
                    "MALFORMED_QUERY",
                    "COUNT() must be the only element in the SELECT list.",
                )
            raise self._unexpected()
        self.i += 1
        obj = self._field_name()
        if "." in obj.text:
            raise self._unexpected(obj)
        query = Query(self.text, fields, count, obj.text, obj.pos)
        if self._is_kw("WHERE"):
            self.i += 1
            query.where = self._expr()
        if self._is_kw("ORDER"):
            self.i += 1
            self._expect_kw("BY")
            while True:
                tok = self._field_name()
                item = OrderItem(tok.text, tok.pos)
                if self._is_kw("ASC", "DESC"):
                    item.descending = self.tok.text.upper() == "DESC"
                    self.i += 1
                if self._is_kw("NULLS"):
                    self.i += 1
                    if not self._is_kw("FIRST", "LAST"):
                        raise self._unexpected()
                    item.nulls_last = self.tok.text.upper() == "LAST"
                    self.i += 1
                query.order_by.append(item)
                if self.tok.kind == "punct" and self.tok.text == ",":
                    self.i += 1
                    continue
                break
        if self._is_kw("LIMIT"):
            self.i += 1
            query.limit = self._int()
        if self._is_kw("OFFSET"):
            self.i += 1
            query.offset = self._int()
            if query.offset > 2000:
                raise _error_at(
                    self.text,
                    self.tokens[self.i - 1].pos,
                    "NUMBER_OUTSIDE_VALID_RANGE",
                    f"Maximum SOQL offset allowed is 2000: {query.offset}",
                )
        if self.tok.kind != "eof":
            raise self._unexpected()
        return query

    def _expr(self) -> Node:
        items = [self._term()]
        op: str | None = None
        while self._is_kw("AND", "OR"):
            this = self.tok.text.upper()
            if op is not None and this != op:
                # SOQL refuses to guess precedence between AND and OR.
                raise self._unexpected()
            op = this
            self.i += 1
            items.append(self._term())
        return items[0] if op is None else Logical(op, items)

    def _term(self) -> Node:
        if self._is_kw("NOT"):
            self.i += 1
            return Negation(self._term())
        if self.tok.kind == "punct" and self.tok.text == "(":
            self.i += 1
            node = self._expr()
            self._expect_punct(")")
            return node
        return self._condition()

    def _literal(self) -> Literal:
        tok = self.tok
        self.i += 1
        if tok.kind == "string":
            return Literal("string", tok.value, tok.text, tok.pos, tok.like_regex)
        if tok.kind == "number":
            return Literal("number", tok.value, tok.text, tok.pos)
        if tok.kind in ("date", "datetime"):
            return Literal(tok.kind, tok.value, tok.text, tok.pos)
        if tok.kind == "ident" and tok.text.upper() in ("TRUE", "FALSE"):
            return Literal("boolean", tok.text.upper() == "TRUE", tok.text, tok.pos)
        if tok.kind == "ident" and tok.text.upper() == "NULL":
            return Literal("null", None, tok.text, tok.pos)
        raise self._unexpected(tok)

    def _condition(self) -> Node:
        ftok = self._field_name()
        if self.tok.kind == "op":
            op = "!=" if self.tok.text == "<>" else self.tok.text
            self.i += 1
            return Comparison(ftok.text, ftok.pos, op, [self._literal()])
        negate = False
        if self._is_kw("NOT"):
            negate = True
            self.i += 1
            if not self._is_kw("IN"):
                raise self._unexpected()
        if self._is_kw("IN"):
            self.i += 1
            self._expect_punct("(")
            values = [self._literal()]
            while self.tok.kind == "punct" and self.tok.text == ",":
                self.i += 1
                values.append(self._literal())
            self._expect_punct(")")
            return Comparison(ftok.text, ftok.pos, "NOT IN" if negate else "IN", values)
        if self._is_kw("LIKE"):
            self.i += 1
            lit = self._literal()
            if lit.kind != "string":
                raise self._unexpected(self.tokens[self.i - 1])
            return Comparison(ftok.text, ftok.pos, "LIKE", [lit])
        raise self._unexpected()


def parse(query: str) -> Query:
    """Parse a query or raise SoqlError(MALFORMED_QUERY)."""
    if not query or not query.strip():
        raise SoqlError("MALFORMED_QUERY", "SOQL statements cannot be empty or null")
    return _Parser(query).parse()


# ----------------------------------------------------------------------------------------------
# Values and evaluation

_STRING_TYPES = {"string", "textarea", "picklist", "email", "phone", "url"}
_ID_TYPES = {"id", "reference"}
# Text types whose `=` and `IN` compare casefolded values (`_comparable`): a caseless index answers them.
INDEXABLE_TYPES = frozenset(_STRING_TYPES)
_NUMBER_TYPES = {"currency", "double", "percent", "int"}


def normalize_datetime(text: str) -> str:
    """Canonical Salesforce datetime string (UTC, milliseconds, +0000)."""
    raw = text.strip()
    if raw.endswith("Z"):
        raw = raw[:-1] + "+00:00"
    m = re.fullmatch(r"(.*[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?)([+-])(\d{2}):?(\d{2})", raw)
    if m:
        raw = f"{m.group(1)}{m.group(2)}{m.group(3)}:{m.group(4)}"
    dt = datetime.fromisoformat(raw)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}+0000"


def check_filter(query: Query, node: Comparison, ftype: str, long_text: bool) -> None:
    """Reject literal/field type mismatches the way a real org does (400 before running)."""
    name = node.field
    if long_text:
        raise query.error_at(node.pos, "INVALID_FIELD", f"field '{name}' can not be filtered in a query call")
    for lit in node.values:
        if lit.kind == "null":
            if node.op not in ("=", "!=", "IN", "NOT IN"):
                raise query.error_at(
                    lit.pos,
                    "INVALID_QUERY_FILTER_OPERATOR",
                    f"invalid operator on null value for field '{name}'",
                )
            continue
        if ftype in _ID_TYPES:
            if lit.kind != "string":
                raise query.error_at(
                    lit.pos,
                    "INVALID_QUERY_FILTER_OPERATOR",
                    f"value of filter criterion for field '{name}' must be of type id "
                    "and should be enclosed in quotes",
                )
            if lit.value != "" and not sfids.is_valid_id(lit.value):
                raise query.error_at(
                    lit.pos, "INVALID_QUERY_FILTER_OPERATOR", f"invalid ID field: {lit.value}"
                )
        elif ftype in _STRING_TYPES:
            if lit.kind != "string":
                raise query.error_at(
                    lit.pos,
                    "INVALID_QUERY_FILTER_OPERATOR",
                    f"value of filter criterion for field '{name}' must be of type string "
                    "and should be enclosed in quotes",
                )
        elif ftype == "boolean":
            if lit.kind != "boolean" or node.op not in ("=", "!=", "IN", "NOT IN"):
                raise query.error_at(
                    lit.pos,
                    "INVALID_QUERY_FILTER_OPERATOR",
                    f"value of filter criterion for field '{name}' must be of type boolean "
                    "and should not be enclosed in quotes",
                )
        elif ftype in _NUMBER_TYPES:
            if lit.kind != "number":
                raise query.error_at(
                    lit.pos,
                    "INVALID_QUERY_FILTER_OPERATOR",
                    f"value of filter criterion for field '{name}' must be of type double "
                    "and should not be enclosed in quotes",
                )
        elif ftype in ("date", "datetime"):
            if lit.kind != ftype and not (ftype == "datetime" and lit.kind == "date"):
                raise query.error_at(
                    lit.pos,
                    "INVALID_QUERY_FILTER_OPERATOR",
                    f"value of filter criterion for field '{name}' must be of type {ftype} "
                    "and should not be enclosed in quotes",
                )
    if node.op == "LIKE" and ftype not in _STRING_TYPES:
        raise query.error_at(
            node.pos, "INVALID_FIELD", f"invalid operator on field '{name}'; LIKE works only on string fields"
        )


def _comparable(ftype: str, value: Any) -> Any:
    """Map a stored value or literal to something that compares like Salesforce does."""
    if value is None:
        return None
    if ftype in _ID_TYPES:
        if value == "":
            return None
        # 15- and 18-char forms of one Id are the same record.
        return sfids.normalize_id(value) or value
    if ftype in _STRING_TYPES:
        # Empty string is null in Salesforce, and text comparisons are case-insensitive.
        return None if value == "" else str(value).casefold()
    if ftype in _NUMBER_TYPES:
        try:
            return Decimal(str(value))
        except InvalidOperation:
            return None
    if ftype == "datetime":
        return normalize_datetime(value) if "T" in str(value) else normalize_datetime(f"{value}T00:00:00Z")
    return value


def evaluate(node: Node, lookup: Callable[[str], tuple[str, Any]]) -> bool:
    """Does a record satisfy ``node``? ``lookup(field_text)`` returns (field type, value)."""
    if isinstance(node, Logical):
        results = (evaluate(item, lookup) for item in node.items)
        return all(results) if node.op == "AND" else any(results)
    if isinstance(node, Negation):
        return not evaluate(node.item, lookup)
    ftype, raw = lookup(node.field)
    value = _comparable(ftype, raw)
    lits, lit_set = node.converted(ftype)
    op = node.op
    if op == "=":
        return value == lits[0]
    if op == "!=":
        # Unlike SQL, SOQL's != matches rows where the field is null.
        return value != lits[0]
    if op == "IN":
        return value in lit_set
    if op == "NOT IN":
        return value not in lit_set
    if op == "LIKE":
        if value is None:
            return False
        pattern = node.values[0].like_regex or ""
        return re.fullmatch(pattern, str(raw), re.IGNORECASE | re.DOTALL) is not None
    if value is None or lits[0] is None:
        return False
    try:
        if op == "<":
            return bool(value < lits[0])
        if op == "<=":
            return bool(value <= lits[0])
        if op == ">":
            return bool(value > lits[0])
        if op == ">=":
            return bool(value >= lits[0])
    except TypeError:
        return False
    raise SoqlError("MALFORMED_QUERY", f"unsupported operator {op}")


def sort_records(
    rows: list[Any],
    order_by: Sequence[OrderItem],
    lookup: Callable[[Any, str], tuple[str, Any]],
) -> list[Any]:
    """Stable multi-key sort with Salesforce's null ordering defaults."""
    out = list(rows)
    for item in reversed(order_by):
        nulls_last = item.nulls_last if item.nulls_last is not None else item.descending

        def key(row: Any, item: OrderItem = item) -> Any:
            ftype, raw = lookup(row, item.field)
            return _comparable(ftype, raw)

        present = [r for r in out if key(r) is not None]
        missing = [r for r in out if key(r) is None]
        present.sort(key=key, reverse=item.descending)
        out = present + missing if nulls_last else missing + present
    return out
