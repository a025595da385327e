"""Validate analyst-written rule expressions before they reach DuckDB.

An analyst may write or rewrite a rule in the app as one SQL boolean expression over
the cohort's columns and named parameters (``:name``). The app runs on shared
servers with patient data in memory, so the text is treated as hostile: it is parsed
with sqlglot (DuckDB dialect) and only a small allow-listed grammar is accepted
(see ``docs/security.md`` and ``kn026.rules.grammar``). Nothing the analyst typed is ever
passed through: the SQL that runs is re-rendered from the validated tree, and is
then parsed a second time by DuckDB's own parser (``json_serialize_sql``, parse
only, never executed) and checked against the same allow-list, so a disagreement
between the two parsers fails closed.

Entry points:

- ``check_expression(text, columns, params)`` -> ``CheckedRule`` or ``RuleError``.
  ``columns`` is a set of names (untyped) or a mapping name -> kind (``schema``
  kinds such as ``"number"``, ``"flag"``, ``"category"``, or DuckDB type names); with
  kinds, type mismatches such as ``sex > 5`` are rejected before they can fail at
  run time.
- ``bind(checked, values)`` -> executable SQL with the parameters replaced by exact
  decimal literals, arithmetic promoted to DOUBLE (no integer overflow errors) and
  arithmetic comparison sides rounded to 9 decimals (limits stay exact).
- ``sqlpass.harden(tree)`` (kn026.base) -> the DOUBLE promotion alone, for callers that bind parameters
  themselves.

Decisions (documented in docs/security.md): casts are rejected; comments are
rejected (never silently stripped); ``a / b`` is rewritten to ``a / NULLIF(b, 0)``
so a zero divisor makes the rule *unknown* for that patient instead of infinite.
"""

from __future__ import annotations

import json
import re
import threading
import unicodedata
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.errors import ErrorLevel, ParseError, SqlglotError, TokenError
from sqlglot.tokens import TokenType

from kn026.base import sqlpass
from kn026.rules.grammar import (
    ANY,
    BOOL,
    DESCRIBE_FAMILY,
    KIND_FAMILY,
    MAX_DIGITS,
    NAME,
    NULL,
    Checker,
    RuleError,
    char_name,
    count_digits,
    snippet,
)

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\S")
# Plain literals with more digits become DECIMAL(38, s) in DuckDB, and comparing such a
# type with a large INTEGER/BIGINT value fails at run time ("Could not cast value to
# DECIMAL(38,37)"); 18 digits always fit beside any BIGINT.
MAX_PARAM_ABS = Decimal("1e15")

_STATEMENT_WORDS = frozenset("""
    ALTER ANALYZE ATTACH BEGIN CALL CHECKPOINT COMMENT COMMIT COPY CREATE DEALLOCATE DELETE
    DESCRIBE DETACH DROP EXECUTE EXPLAIN EXPORT FORCE FROM GRANT IMPORT INSERT INSTALL LOAD
    MERGE PIVOT PRAGMA PREPARE RESET REVOKE ROLLBACK SELECT SET SHOW SUMMARIZE TRUNCATE
    UNPIVOT UPDATE USE VACUUM VALUES WITH""".split())
_STRING_TOKENS = frozenset(getattr(TokenType, n) for n in (
    "STRING", "RAW_STRING", "NATIONAL_STRING", "BYTE_STRING", "HEREDOC_STRING", "HEX_STRING",
    "BIT_STRING", "UNICODE_STRING") if hasattr(TokenType, n))


@dataclass(frozen=True, eq=False)
class CheckedRule:
    """A validated rule: SQL re-rendered from the checked tree, and what it uses.

    `sql` is DuckDB SQL with parameters kept as named placeholders (``$name``, DuckDB's
    named-parameter syntax; sqlglot reads it back as a placeholder) and divisions made
    NULL-safe. Re-checking `sql` gives the same `sql`. `tree` is the sqlglot tree of
    `sql`; copy it before transforming.
    """

    sql: str
    columns: frozenset[str]
    params: frozenset[str]
    tree: exp.Expression
    text: str = ""


# -- public API -------------------------------------------------------------------

# Parsing is recursive (about 25 Python frames per nesting level). Running every check
# in a pool thread gives each check the same, fresh stack budget whatever the caller's
# depth (Streamlit, pytest), so the same text is accepted or rejected everywhere.
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kn026-rulecheck")


def check_expression(text: str, columns: Iterable[str] | Mapping[str, str],
                     params: Mapping[str, object] | Iterable[str], *, max_length: int = 2000,
                     max_depth: int = 40, max_nodes: int = 400) -> CheckedRule:
    """Validate one analyst-written rule; return it re-rendered or raise RuleError.

    `columns`: the names the rule may use (a set), or a mapping name -> kind to also
    type-check. `params`: declared parameter names, or a mapping name -> default value
    (the values are checked to be finite numbers).
    """
    kinds = _column_families(columns)
    declared = _declared_params(params)
    return _POOL.submit(_check, text, kinds, declared, max_length, max_depth, max_nodes).result()


def bind(checked: CheckedRule, values: Mapping[str, object]) -> str:
    """Executable DuckDB SQL: parameters replaced by exact numeric literals.

    Every parameter the rule uses needs a value; values must be finite numbers
    (int, float via its shortest repr, Decimal), |value| < 1e15, at most 18 digits.
    Arithmetic is promoted to DOUBLE (see `harden`) and a comparison side that is
    arithmetic is rounded to 9 decimals, so limits stay exact. Columns are referenced
    as they are (the engine substitutes record-based defaults itself). The result is
    checked again by DuckDB's parser.
    """
    missing = sorted(checked.params - set(values))
    if missing:
        raise RuleError("no value for parameter(s) " + ", ".join(f":{m}" for m in missing))
    exact = {name: param_value(name, values[name]) for name in checked.params}
    tree = sqlpass.round_computed(sqlpass.harden(checked.tree))

    def put(node):
        if isinstance(node, exp.Placeholder):
            return number_literal(exact[node.name])
        return node

    tree = tree.transform(put, copy=False)
    sql = _render(tree)
    _duckdb_verify(sql, checked.columns, frozenset(), casts=True)
    return sql


def param_value(name: str, value) -> Decimal:
    """A parameter value as an exact Decimal; RuleError unless a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise RuleError(f"parameter :{name} must be a number, not {value!r}", token=name)
    try:
        dec = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, ValueError):
        raise RuleError(f"parameter :{name} must be a number, not {value!r}", token=name) from None
    if not dec.is_finite():
        raise RuleError(f"parameter :{name} must be a finite number, not {value!r}", token=name)
    if abs(dec) >= MAX_PARAM_ABS:
        raise RuleError(f"parameter :{name} = {value!r} is out of range (|value| < 1e15)", token=name)
    if count_digits(format(dec.normalize(), "f").lstrip("-")) > MAX_DIGITS:
        raise RuleError(f"parameter :{name} = {value!r} has more than {MAX_DIGITS} digits", token=name)
    return dec


def number_literal(value: Decimal) -> exp.Expression:
    """The shortest exact SQL literal of `value` (negative values in parentheses)."""
    text = format(value.normalize(), "f")
    if text.startswith("-"):
        text = text[1:]
        if text.strip("0.") == "":
            return exp.Literal.number("0")
        return exp.Paren(this=exp.Neg(this=exp.Literal.number(text)))
    return exp.Literal.number(text)


def dictionary_kinds(names: Iterable[str] | None = None, numbers: Iterable[str] = ()) -> dict[str, str]:
    """Column kinds from the data dictionary (`schema`), for typed checking.

    `names` restricts to those columns (e.g. the cohort's present columns); `numbers`
    adds numeric names such as derived values (crcl_if_female, qtcf, washout_days).
    """
    from kn026.base import schema

    wanted = None if names is None else set(names)
    kinds = {c.name: c.kind for c in schema.COLUMNS if wanted is None or c.name in wanted}
    kinds.update({n: "number" for n in numbers})
    return kinds


def point_at(text: str, position: int | None, token: str | None = None, width: int = 76) -> str:
    """The line of `text` holding `position`, and a line of carets under the offending token.

    For showing a RuleError in a monospace box, so the analyst sees *where* the rule
    went wrong, not only a position number. Invisible, control and combining
    characters are drawn as U+FFFD (they are what a look-alike attack hides), wide
    characters count two columns, and a long line is cut to a window around the
    position, so the carets stay under the token. Empty when there is no position.
    """
    if position is None or text is None:
        return ""
    text = str(text)
    position = min(max(int(position), 0), len(text))
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    line = text[start:len(text) if end < 0 else end].rstrip("\r")
    col = min(position - start, len(line))
    if token and text[position:position + len(token)].lower() == token.lower():
        span = len(token)  # the token as typed (the checker may report it re-rendered: COUNT for count)
    else:  # no usable token: the word (or the one character) at the position
        word = _WORD.match(text, position)
        span = len(word.group(0)) if word else 1
    span = max(1, min(span, len(line) - col)) if col < len(line) else 1
    cells = [_cell(ch) for ch in line]
    offset = sum(w for _, w in cells[:col])
    under = sum(w for _, w in cells[col:col + span]) or 1
    shown = "".join(c for c, _ in cells)
    total = sum(w for _, w in cells)
    if total > width:  # a window around the token (character cuts: wide characters are rare here)
        lo = max(0, min(offset - width // 3, total - width))
        shown = ("…" if lo else "") + shown[lo:lo + width] + ("…" if lo + width < total else "")
        offset = offset - lo + (1 if lo else 0)
        under = min(under, width)
    prefix = ""
    if "\n" in text:
        prefix = f"line {text.count(chr(10), 0, start) + 1} | "
    return f"{prefix}{shown}\n{' ' * (len(prefix) + offset)}{'^' * under}"


def _cell(ch: str) -> tuple[str, int]:
    """How one character is drawn in a caret display, and its width in columns."""
    cat = unicodedata.category(ch)
    if ch == "\t":
        return " ", 1
    if cat[0] == "C" or cat in ("Mn", "Me", "Zl", "Zp") or (cat == "Zs" and ch != " "):
        return "\ufffd", 1
    return ch, 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


# -- the check ------------------------------------------------------------------------

def _column_families(columns) -> dict[str, str]:
    if isinstance(columns, str):
        raise TypeError("columns must be a set of names or a mapping name -> kind, not a string")
    out = {}
    if isinstance(columns, Mapping):
        for name, kind in columns.items():
            fam = KIND_FAMILY.get(str(kind).strip().lower().split("(")[0])
            if fam is None:
                raise ValueError(f"column {name!r}: unknown kind {kind!r}")
            out[str(name)] = fam
    else:
        out = {str(name): ANY for name in columns}
    bad = [n for n in out if not NAME.match(n)]
    if bad:
        raise ValueError(f"column names must match {NAME.pattern}: {bad[:5]}")
    return out


def _declared_params(params) -> frozenset[str]:
    if isinstance(params, str):
        raise TypeError("params must be a set of names or a mapping name -> value, not a string")
    if isinstance(params, Mapping):
        for name, value in params.items():
            param_value(str(name), value)
    names = frozenset(str(p) for p in params)
    bad = [n for n in names if not NAME.match(n)]
    if bad:
        raise ValueError(f"parameter names must match {NAME.pattern}: {sorted(bad)[:5]}")
    return names


def _check(text, kinds, declared, max_length, max_depth, max_nodes) -> CheckedRule:
    try:
        return _check_inner(text, kinds, declared, max_length, max_depth, max_nodes)
    except RecursionError:
        raise RuleError("the rule is nested too deeply; simplify it (fewer nested "
                        "parentheses or function calls)") from None
    except SqlglotError as err:  # fail closed on anything sqlglot cannot handle
        raise RuleError(f"the rule could not be read: {str(err).splitlines()[0][:120]}") from None


def _check_inner(text, kinds, declared, max_length, max_depth, max_nodes) -> CheckedRule:
    if not isinstance(text, str):
        raise RuleError(f"a rule must be text, not {type(text).__name__}")
    if len(text) > max_length:
        raise RuleError(f"the rule is {len(text):,} characters long; the limit is {max_length:,}",
                        position=max_length)
    if not text.strip():
        raise RuleError("the rule is empty; write a condition such as age_years >= 18")
    _check_characters(text)
    marker = _comment_marker(text)
    if marker is not None:
        pos, mark = marker
        raise RuleError(f"comments ({mark}) are not allowed in a rule (position {pos}); remove them",
                        position=pos, token=mark)
    tokens = _tokenize(text)
    _check_tokens(text, tokens, max_depth)
    try:
        trees = sqlglot.parse(text, read="duckdb", error_level=ErrorLevel.IMMEDIATE)
    except ParseError as err:
        raise _parse_error(text, tokens, err) from None
    except SqlglotError as err:
        raise RuleError(f"the rule could not be read: {str(err).splitlines()[0]}") from None
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise RuleError("a rule is a single expression; found several statements")
    tree = trees[0]
    _check_size(tree, max_depth, max_nodes)
    checker = Checker(text, tokens, kinds, declared)
    family = checker.check(tree)
    if family not in (BOOL, ANY):
        what = "always NULL (unknown)" if family == NULL else DESCRIBE_FAMILY[family]
        raise RuleError(
            f"the rule must be a condition (true/false), such as age_years >= 18; "
            f"{snippet(tree)} is {what}", position=checker.position(tree))
    tree = _null_safe_division(tree)
    sql = _render(tree)
    _duckdb_verify(sql, frozenset(checker.columns), frozenset(checker.params), casts=False)
    final = sqlglot.parse_one(sql, read="duckdb")
    return CheckedRule(sql=sql, columns=frozenset(checker.columns),
                       params=frozenset(checker.params), tree=final, text=text)


def _check_characters(text: str) -> None:
    for i, ch in enumerate(text):
        if ch in "\t\n\r":
            continue
        cat = unicodedata.category(ch)
        if cat[0] == "C" or cat in ("Zl", "Zp"):
            raise RuleError(
                f"invisible or control character U+{ord(ch):04X} ({char_name(ch)}) at position {i} "
                "is not allowed; retype the rule", position=i, token=ch)


def _tokenize(text: str):
    try:
        return DuckDB().tokenize(text)
    except TokenError as err:
        pos = _open_quote(text)
        if pos is not None:
            raise RuleError(f"a quote ' is left open (position {pos}); close the text with '",
                            position=pos, token="'") from None
        raise RuleError(f"the rule could not be read ({str(err).splitlines()[0][:80]})") from None


def _check_tokens(text: str, tokens, max_depth: int) -> None:
    """Comments, statements, stray characters and nesting, checked on the token stream."""
    first = tokens[0] if tokens else None
    if first is not None and first.token_type not in _STRING_TOKENS \
            and first.token_type != TokenType.IDENTIFIER and first.text.upper() in _STATEMENT_WORDS:
        word = first.text.upper()
        raise RuleError(f"{word} is a statement, not an expression (position {first.start}); "
                        "a rule is one condition such as age_years >= 18",
                        position=first.start, token=first.text)
    if any(t.comments for t in tokens):
        raise RuleError("comments (-- or /* */) are not allowed in a rule; remove them")
    covered = 0
    depth = 0
    for tok in tokens:
        gap = text[covered:tok.start]
        for j, ch in enumerate(gap):
            if not (ch.isascii() and ch.isspace()):
                _bad_char(ch, covered + j)
        covered = tok.end + 1
        if tok.token_type == TokenType.SEMICOLON:
            raise RuleError(f"';' at position {tok.start}: a rule is one expression, "
                            "not several statements", position=tok.start, token=";")
        if tok.token_type not in _STRING_TOKENS:
            for j, ch in enumerate(text[tok.start:tok.end + 1]):
                if not ch.isascii():
                    _bad_char(ch, tok.start + j)
            if tok.token_type == TokenType.UNKNOWN or tok.text == "`":
                raise RuleError(f"unexpected character {tok.text!r} at position {tok.start}",
                                position=tok.start, token=tok.text)
        if tok.token_type in (TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE):
            depth += 1
            if depth > max_depth:
                raise RuleError(f"the rule is nested too deeply (more than {max_depth} levels of "
                                f"parentheses at position {tok.start})", position=tok.start)
        elif tok.token_type in (TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE):
            depth -= 1
    for j, ch in enumerate(text[covered:]):
        if not (ch.isascii() and ch.isspace()):
            _bad_char(ch, covered + j)


def _bad_char(ch: str, pos: int):
    if ch.isascii():
        raise RuleError(f"unexpected character {ch!r} at position {pos}", position=pos, token=ch)
    raise RuleError(
        f"character {ch!r} (U+{ord(ch):04X} {char_name(ch)}) at position {pos} is not allowed "
        "outside 'quoted text': names must be plain ASCII (a look-alike letter?)",
        position=pos, token=ch)


def _scan_outside_strings(text: str):
    """Yield (position, char) of every character outside single-quoted strings."""
    in_string = False
    i = 0
    while i < len(text):
        ch = text[i]
        if in_string:
            if ch == "'":
                if text[i + 1:i + 2] == "'":
                    i += 2
                    continue
                in_string = False
            i += 1
            continue
        if ch == "'":
            in_string = True
        else:
            yield i, ch
        i += 1


def _open_quote(text: str) -> int | None:
    """Position of a single-quoted string that is never closed, if any."""
    start = None
    i = 0
    while i < len(text):
        if text[i] == "'":
            if start is None:
                start = i
            elif text[i + 1:i + 2] == "'":
                i += 1
            else:
                start = None
        i += 1
    return start


def _comment_marker(text: str) -> tuple[int, str] | None:
    for i, _ch in _scan_outside_strings(text):
        pair = text[i:i + 2]
        if pair in ("--", "/*", "*/"):
            return i, pair
    return None


def _parse_error(text: str, tokens, err: ParseError) -> RuleError:
    info = err.errors[0] if err.errors else {}
    line, col = info.get("line"), info.get("col")
    pos = None
    if line and col:
        starts = [0] + [m.end() for m in re.finditer("\n", text)]
        pos = min(len(text), starts[min(line, len(starts)) - 1] + col - 1)
        for tok in tokens:  # point at the start of the token the parser stopped at
            if tok.start <= pos <= tok.end:
                pos = tok.start
                break
    desc = str(info.get("description") or str(err).splitlines()[0])
    token = None
    if pos is not None and pos < len(text):
        token = next((t.text for t in tokens if t.start == pos), text[pos])
        near = f" near {token!r} (position {pos})"
    else:
        near = " at the end of the rule" if pos is not None else ""
    return RuleError(f"the rule does not parse{near}: {desc}", position=pos, token=token)


def _check_size(tree: exp.Expression, max_depth: int, max_nodes: int) -> None:
    count = 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > max_nodes:
            raise RuleError(f"the rule is too large (more than {max_nodes} parts); split it into "
                            "several rules")
        if depth > max_depth:
            raise RuleError(f"the rule is nested too deeply or chains too many operators (more "
                            f"than {max_depth} levels); split it into several rules")
        stack.extend((child, depth + 1) for child in node.iter_expressions())


def _null_safe_division(tree: exp.Expression) -> exp.Expression:
    """`a / b` -> `a / NULLIF(b, 0)`: a zero divisor gives NULL (unknown), not inf."""

    def safe(divisor: exp.Expression) -> bool:
        inner = divisor
        while isinstance(inner, exp.Paren):
            inner = inner.this
        if type(inner) is exp.Literal and not inner.is_string:
            return Decimal(str(inner.this)) != 0
        return (type(inner) is exp.Nullif and type(inner.expression) is exp.Literal
                and not inner.expression.is_string and Decimal(str(inner.expression.this)) == 0)

    def visit(node):
        if type(node) is exp.Div and not safe(node.expression):
            node.set("expression", exp.Nullif(this=node.expression, expression=exp.Literal.number(0)))
        return node

    return tree.transform(visit, copy=True)


def _render(tree: exp.Expression) -> str:
    sql = tree.sql(dialect="duckdb", comments=False)
    for pos, ch in _scan_outside_strings(sql):
        if ch == ";" or sql[pos:pos + 2] in ("--", "/*", "*/"):
            raise RuleError(f"internal check failed: the re-rendered rule contains {sql[pos:pos + 2]!r}")
    return sql


# -- second opinion: DuckDB's own parser --------------------------------------------------

_DUCK_LOCK = threading.Lock()
_DUCK: list[duckdb.DuckDBPyConnection] = []
_DUCK_FUNCTIONS = frozenset({
    "+", "-", "*", "/", "abs", "ceil", "ceiling", "exp", "floor", "greatest", "least", "length",
    "ln", "log", "log10", "log2", "lower", "ltrim", "nullif", "pow", "power", "round", "rtrim",
    "sign", "sqrt", "trim", "upper",
})
_DUCK_CLASSES = {
    "CONJUNCTION": {"CONJUNCTION_AND", "CONJUNCTION_OR"},
    "COMPARISON": {"COMPARE_EQUAL", "COMPARE_NOTEQUAL", "COMPARE_LESSTHAN", "COMPARE_GREATERTHAN",
                   "COMPARE_LESSTHANOREQUALTO", "COMPARE_GREATERTHANOREQUALTO"},
    "OPERATOR": {"OPERATOR_NOT", "OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL", "COMPARE_IN",
                 "COMPARE_NOT_IN", "OPERATOR_COALESCE"},
    "BETWEEN": {"COMPARE_BETWEEN"},
    "CASE": {"CASE_EXPR"},
    "CONSTANT": {"VALUE_CONSTANT"},
    "COLUMN_REF": {"COLUMN_REF"},
    "PARAMETER": {"VALUE_PARAMETER"},
    "FUNCTION": {"FUNCTION"},
}


def _duck() -> duckdb.DuckDBPyConnection:
    if not _DUCK:
        con = duckdb.connect(":memory:")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        _DUCK.append(con)
    return _DUCK[0]


def _duckdb_verify(sql: str, columns: frozenset[str], params: frozenset[str], casts: bool) -> None:
    """Parse `SELECT (sql)` with DuckDB (parse only) and walk its tree against the allow-list."""
    with _DUCK_LOCK:
        try:
            raw = _duck().execute("SELECT json_serialize_sql(?)", ["SELECT (" + sql + ")"]).fetchall()[0][0]
        except duckdb.Error as err:  # fail closed
            raise RuleError(f"internal check failed: DuckDB could not parse the rule ({err})") from None
    doc = json.loads(raw)

    def fail(why: str):
        raise RuleError(f"internal check failed: DuckDB reads the rule differently ({why}); "
                        "please simplify the rule")

    if doc.get("error"):
        fail(str(doc.get("error_message", "parse error"))[:120])
    statements = doc.get("statements") or []
    if len(statements) != 1:
        fail("several statements")
    node = statements[0].get("node") or {}
    if node.get("type") != "SELECT_NODE" or len(node.get("select_list") or []) != 1:
        fail("not a single expression")
    if (node.get("from_table") or {}).get("type") != "EMPTY":
        fail("a table reference")
    for key in ("where_clause", "having", "qualify", "sample"):
        if node.get(key) is not None:
            fail(key)
    if node.get("modifiers") or node.get("group_expressions") or (node.get("cte_map") or {}).get("map"):
        fail("query modifiers")

    stack = [node["select_list"][0]]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        cls = item.get("class")
        if cls is not None:
            kind = item.get("type")
            if cls == "CAST" and casts:
                target = (item.get("type_expr") or {})
                if item.get("try_cast") or target.get("type_name", "").upper() != "DOUBLE" \
                        or target.get("children"):
                    fail("a cast")
                stack.append(item.get("child"))
                continue
            if kind not in _DUCK_CLASSES.get(cls, ()):
                fail(f"{cls} {kind}")
            if item.get("alias"):
                fail("an alias")
            if cls == "COLUMN_REF":
                names = item.get("column_names") or []
                if len(names) != 1 or names[0] not in columns:
                    fail(f"column {'.'.join(names)}")
            elif cls == "PARAMETER":
                if item.get("identifier") not in params:
                    fail(f"parameter {item.get('identifier')}")
            elif cls == "FUNCTION":
                name = str(item.get("function_name", "")).lower()
                if name not in _DUCK_FUNCTIONS or item.get("schema") or item.get("catalog") \
                        or item.get("distinct") or item.get("filter") is not None \
                        or item.get("export_state") \
                        or (item.get("order_bys") or {}).get("orders"):
                    fail(f"function {name}")
                if any(arg.get("name") for arg in item.get("arguments") or []):
                    fail("a named argument")
        stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
