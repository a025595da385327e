"""Validate analyst-written rule expressions before they reach DuckDB.

An analyst may write or rewrite a rule in the app as one SQL boolean expression over
the cohort's columns and named parameters (``:name``). The app runs on shared
servers with patient data in memory, so the text is treated as hostile: it is parsed
with sqlglot (DuckDB dialect) and only a small allow-listed grammar is accepted
(see ``docs/security.md`` and ``GRAMMAR_HELP``). Nothing the analyst typed is ever
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
- ``harden(tree)`` -> the DOUBLE promotion alone, for callers that bind parameters
  themselves.

Decisions (documented in docs/security.md): casts are rejected; comments are
rejected (never silently stripped); ``a / b`` is rewritten to ``a / NULLIF(b, 0)``
so a zero divisor makes the rule *unknown* for that patient instead of infinite.
"""

from __future__ import annotations

import datetime as _dt
import difflib
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

NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\S")
_NUMBER = re.compile(r"^(?P<int>\d*)(\.(?P<frac>\d*))?([eE](?P<exp>[+-]?\d{1,3}))?$")
# Plain literals with more digits become DECIMAL(38, s) in DuckDB, and comparing such a
# type with a large INTEGER/BIGINT value fails at run time ("Could not cast value to
# DECIMAL(38,37)"); 18 digits always fit beside any BIGINT.
MAX_DIGITS = 18
MAX_ROUND_DIGITS = 30
MAX_PARAM_ABS = Decimal("1e15")
EXACT_DECIMALS = 9  # computed comparison sides are rounded to this many decimals by `bind`

# Functions an analyst may call, as written (lower case). Each maps to a pure scalar
# DuckDB function; nothing here reads files, settings, the environment or the catalog.
ALLOWED_FUNCTIONS: tuple[str, ...] = (
    "abs", "ceil", "ceiling", "coalesce", "exp", "floor", "greatest", "ifnull", "least",
    "length", "ln", "log", "log10", "log2", "lower", "ltrim", "nullif", "pow", "power",
    "round", "rtrim", "sign", "sqrt", "trim", "upper",
)

GRAMMAR_HELP = (
    "A rule is one condition over the cohort's columns, e.g. "
    "age_years >= :min_age AND ecog IN (0, 1). Allowed: column names, numbers, "
    "'single-quoted text', TRUE/FALSE/NULL, :parameters, = <> != < <= > >=, AND OR NOT, "
    "+ - * /, parentheses, CASE WHEN ... THEN ... ELSE ... END, IS [NOT] NULL, "
    "[NOT] IN (list of values), [NOT] BETWEEN ... AND ..., and the functions "
    + ", ".join(ALLOWED_FUNCTIONS) + "."
)

# Value families used for type checking (only when column kinds are given).
NUM, TEXT, BOOL, DATE, NULL, ANY, STR = "number", "text", "true/false", "date", "null", "any", "str"
_DESCRIBE_FAMILY = {NUM: "a number", TEXT: "text", BOOL: "a true/false value", DATE: "a date",
                    NULL: "NULL", ANY: "a value", STR: "text"}
_KIND_FAMILY = {
    "number": NUM, "integer": NUM, "double": NUM, "float": NUM, "real": NUM, "decimal": NUM,
    "bigint": NUM, "int": NUM, "smallint": NUM, "tinyint": NUM, "hugeint": NUM, "numeric": NUM,
    "flag": BOOL, "boolean": BOOL, "bool": BOOL,
    "text": TEXT, "category": TEXT, "id": TEXT, "varchar": TEXT, "string": TEXT,
    "date": DATE,
}

_COMPARE = (exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE)
_ARITH = (exp.Add, exp.Sub, exp.Mul, exp.Div)
_NUMERIC_1 = {exp.Abs: "abs", exp.Ln: "ln", exp.Sqrt: "sqrt", exp.Floor: "floor",
              exp.Ceil: "ceil", exp.Sign: "sign", exp.Exp: "exp"}
_TEXT_1 = {exp.Lower: "lower", exp.Upper: "upper"}
_STATEMENT_WORDS = frozenset("""
    ALTER ANALYZE ATTACH BEGIN CALL CHECKPOINT COMMENT COMMIT COPY CREATE DEALLOCATE DELETE
    DESCRIBE DETACH DROP EXECUTE EXPLAIN EXPORT FORCE FROM GRANT IMPORT INSERT INSTALL LOAD
    MERGE PIVOT PRAGMA PREPARE RESET REVOKE ROLLBACK SELECT SET SHOW SUMMARIZE TRUNCATE
    UNPIVOT UPDATE USE VACUUM VALUES WITH""".split())
_STRING_TOKENS = frozenset(getattr(TokenType, n) for n in (
    "STRING", "RAW_STRING", "NATIONAL_STRING", "BYTE_STRING", "HEREDOC_STRING", "HEX_STRING",
    "BIT_STRING", "UNICODE_STRING") if hasattr(TokenType, n))


class RuleError(ValueError):
    """A rule expression that is not accepted; `message` names the offending token.

    `position` is the 0-based character offset in the analyst's text (None when the
    problem is the whole expression), `token` the offending text.
    """

    def __init__(self, message: str, position: int | None = None, token: str | None = None):
        super().__init__(message)
        self.message = message
        self.position = position
        self.token = token


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
    tree = _round_computed(harden(checked.tree))

    def put(node):
        if isinstance(node, exp.Placeholder):
            return number_literal(exact[node.name])
        return node

    tree = tree.transform(put, copy=False)
    sql = _render(tree)
    _duckdb_verify(sql, checked.columns, frozenset(), casts=True)
    return sql


def harden(tree: exp.Expression) -> exp.Expression:
    """A copy of `tree` whose arithmetic runs in DOUBLE.

    DuckDB raises on INTEGER/BIGINT/DECIMAL overflow (``days * 24`` with a large record
    value, or many-digit decimal literals) but DOUBLE arithmetic never raises (it gives
    inf or NaN). Every operand of + - * / and unary minus that is not itself arithmetic
    is wrapped in ``CAST(... AS DOUBLE)``. Exactness at limits is unaffected for the
    engine, which rounds computed comparison sides to 9 decimals.
    """
    tree = tree.copy()

    def operator(node) -> bool:  # arithmetic, but not a negative literal such as -1
        return isinstance(node, _ARITH) or (isinstance(node, exp.Neg) and not (
            type(node.this) is exp.Literal and not node.this.is_string))

    skip = {id(n) for r in tree.find_all(exp.Round) if r.args.get("decimals") is not None
            for n in r.args["decimals"].walk()}  # round's digits stay INTEGER
    nodes = [n for n in tree.walk() if operator(n) and id(n) not in skip]
    for node in nodes:
        for key in ("this", "expression"):
            child = node.args.get(key)
            if child is None:
                continue
            inner = child
            while isinstance(inner, exp.Paren):
                inner = inner.this
            if operator(inner):
                continue
            if isinstance(inner, exp.Cast) and inner.to.is_type(exp.DataType.Type.DOUBLE):
                continue
            node.set(key, exp.Cast(this=child, to=exp.DataType.build("DOUBLE")))
    return tree


def _round_computed(tree: exp.Expression) -> exp.Expression:
    """Round arithmetic comparison sides to EXACT_DECIMALS, as the engine does.

    DOUBLE arithmetic gets ties wrong (1.5 * 1.2 is 1.7999999999999998); rounding the
    computed side to 9 decimals gives the double nearest the exact decimal result, so
    a value exactly at a limit meets it (cohort dictionary, section 2).
    """
    scale = f"1e{EXACT_DECIMALS}"
    for node in [n for n in tree.walk() if isinstance(n, _COMPARE)]:
        for key in ("this", "expression"):
            side = node.args[key]
            inner = side
            while isinstance(inner, exp.Paren):
                inner = inner.this
            if isinstance(inner, (*_ARITH, exp.Neg)):
                scaled = exp.Mul(this=exp.Paren(this=side.copy()), expression=exp.Literal.number(scale))
                node.set(key, exp.Div(this=exp.Round(this=scaled), expression=exp.Literal.number(scale)))
    return tree


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
    if _digits(format(dec.normalize(), "f").lstrip("-")) > MAX_DIGITS:
        raise RuleError(f"parameter :{name} = {value!r} has more than {MAX_DIGITS} digits", token=name)
    return dec


def _digits(text: str) -> int:
    """Significant digits of a plain number's text (-1 when it is not a plain number)."""
    m = _NUMBER.match(text)
    if not m or not (m.group("int") or m.group("frac")):
        return -1
    return len(m.group("int").lstrip("0")) + len(m.group("frac") or "")


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
    from kn026 import schema

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
            fam = _KIND_FAMILY.get(str(kind).strip().lower().split("(")[0])
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
        raise RuleError(f"the rule could not be read: {plain_parse_error(str(err).splitlines()[0][:120])}") from None


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
        raise RuleError(f"the rule could not be read: {plain_parse_error(str(err).splitlines()[0])}") from None
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise RuleError("a rule is a single expression; found several statements")
    tree = trees[0]
    _check_size(tree, max_depth, max_nodes)
    checker = _Checker(text, tokens, kinds, declared)
    family = checker.check(tree)
    if family not in (BOOL, ANY):
        what = "always NULL (unknown)" if family == NULL else _DESCRIBE_FAMILY[family]
        raise RuleError(
            f"the rule must be a condition (true/false), such as age_years >= 18; "
            f"{_snippet(tree)} is {what}", position=checker.position(tree))
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
                f"invisible or control character U+{ord(ch):04X} ({_char_name(ch)}) at position {i} "
                "is not allowed; retype the rule", position=i, token=ch)


def _char_name(ch: str) -> str:
    return unicodedata.name(ch, "unnamed character")


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
        f"character {ch!r} (U+{ord(ch):04X} {_char_name(ch)}) at position {pos} is not allowed "
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
    return RuleError(f"the rule does not parse{near}: {plain_parse_error(desc, token)}", position=pos, token=token)


_MISSING = re.compile(r"Required keyword: '(\w+)' missing for <class '[\w.]*?(\w+)'>")


def plain_parse_error(desc: str, token: str | None = None) -> str:
    """The parser's complaint in the analyst's words, without sqlglot's class names.

    sqlglot says "Required keyword: 'expression' missing for <class '...LTE'>"; the analyst
    needs "'<=' needs a value on both sides".
    """
    what = repr(token) if token else "the operator"
    m = _MISSING.search(desc)
    if m:
        part, node = m.groups()
        if node == "Between":
            return "BETWEEN needs both limits: value BETWEEN low AND high"
        if node in ("Not", "Neg", "Paren"):
            return f"{what} needs a condition or value after it"
        if part in ("expression", "this"):
            return f"{what} needs a value or condition on both sides"
        return f"something is missing after {what}; complete the condition"
    if desc.startswith("Expecting )"):
        return "a parenthesis is left open; close it with )"
    if desc.startswith("Expecting ("):
        return "a function name must be followed by ( and its arguments"
    if "<class" in desc or "sqlglot" in desc:  # any other internal wording
        return "check the operators and parentheses around it"
    return desc


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


def _snippet(node: exp.Expression, limit: int = 60) -> str:
    try:
        text = node.sql(dialect="duckdb", comments=False)
    except Exception:  # noqa: BLE001 - a description only
        text = node.key
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Checker:
    """Walks a parsed tree, allowing only the rule grammar; infers value families."""

    def __init__(self, text: str, tokens, kinds: dict[str, str], declared: frozenset[str]):
        self.text, self.tokens, self.kinds, self.declared = text, tokens, kinds, declared
        self.columns: set[str] = set()
        self.params: set[str] = set()

    # -- positions ----------------------------------------------------------------
    def position(self, node: exp.Expression) -> int | None:
        """Best-effort start of `node` in the analyst's text (meta, keyword, or first child)."""
        if node.meta and "start" in node.meta:
            return node.meta["start"]
        if isinstance(node, exp.Placeholder):
            for tok, nxt in zip(self.tokens, self.tokens[1:], strict=False):
                if tok.text in (":", "$") and nxt.text == str(node.this):
                    return tok.start
            marks = [t.start for t in self.tokens if t.token_type == TokenType.PLACEHOLDER]
            return marks[0] if marks else None
        alias = node.args.get("alias") if isinstance(node, exp.Alias) else None
        if alias is not None and alias.meta and "start" in alias.meta:
            return alias.meta["start"]
        starts = [n.meta["start"] for n in node.walk() if n.meta and "start" in n.meta]
        low = min(starts) if starts else None
        for word in _PREFIX_WORDS.get(type(node), ()):  # keyword before the first child
            hits = [t.start for t in self.tokens if t.text.upper() == word
                    and (low is None or t.start <= low)]
            if hits:
                return max(hits)
        for word in _INFIX_WORDS.get(type(node), ()):  # keyword after the first child
            hits = [t.start for t in self.tokens if t.text.upper() == word
                    and (low is None or t.start >= low)]
            if hits:
                return min(hits)
        return low

    def error(self, node: exp.Expression, message: str, token: str | None = None) -> RuleError:
        pos = self.position(node)
        where = f" (position {pos})" if pos is not None else ""
        return RuleError(message.replace("{where}", where), position=pos, token=token)

    # -- arguments ------------------------------------------------------------------
    def only(self, node: exp.Expression, keys=("this",), flags=(), scalars=()) -> None:
        """Reject any argument of `node` but the expressions `keys`, booleans `flags` and
        plain-text `scalars`."""
        for key, value in node.args.items():
            if value is None or value is False or (isinstance(value, list) and not value):
                continue
            if key in flags and isinstance(value, bool):
                continue
            if key in scalars and isinstance(value, (str, bool)):
                continue
            if key in keys:
                items = value if isinstance(value, list) else [value]
                if all(isinstance(v, exp.Expression) for v in items):
                    continue
            raise self.error(node, f"{_snippet(node)}: this form of {self.function_name(node)} is "
                                   f"not allowed ({key}){{where}}")

    def function_name(self, node: exp.Expression) -> str:
        if isinstance(node, exp.Anonymous):
            return str(node.name)
        meta = node.meta or {}
        if "start" in meta and "end" in meta:
            return self.text[meta["start"]:meta["end"] + 1]
        return node.sql_name().lower() if isinstance(node, exp.Func) else node.key

    def check_function_name(self, node: exp.Expression) -> None:
        """Function-call syntax must use a listed name (operators such as ^ are fine)."""
        meta = node.meta or {}
        if "start" not in meta:
            return
        name = self.function_name(node)
        if name.lower() not in ALLOWED_FUNCTIONS:
            raise self.reject_function(node, name)

    def reject_function(self, node, name: str) -> RuleError:
        return self.error(node, f"{name} is not an allowed function{{where}}. Allowed: "
                                f"{', '.join(ALLOWED_FUNCTIONS)}", token=name)

    # -- families -------------------------------------------------------------------
    def unify(self, node: exp.Expression, items: list[tuple[exp.Expression, str]], what: str) -> str:
        concrete = {f for _, f in items if f not in (NULL, ANY, STR)}
        strings = [n for n, f in items if f == STR]
        if len(concrete) > 1:
            a, b = sorted(concrete)[:2]
            raise self.error(node, f"{_snippet(node)}: cannot {what} {_DESCRIBE_FAMILY[a]} with "
                                   f"{_DESCRIBE_FAMILY[b]}{{where}}")
        fam = next(iter(concrete), None)
        if strings and fam == DATE:
            for lit in strings:
                _iso_date(self, lit)
        elif strings and fam not in (None, TEXT):
            raise self.error(strings[0], f"{_snippet(node)}: cannot {what} {_DESCRIBE_FAMILY[fam]} "
                                         f"with text {_snippet(strings[0])}{{where}}")
        if fam:
            return fam
        if any(f == ANY for _, f in items):
            return ANY
        return TEXT if strings else NULL

    def expect(self, node: exp.Expression, families: tuple[str, ...], role: str) -> str:
        fam = self.check(node)
        if fam not in families and fam not in (NULL, ANY):
            raise self.error(node, f"{_snippet(node)} is {_DESCRIBE_FAMILY[fam]}, but {role}{{where}}")
        return fam

    def condition(self, node):
        return self.expect(node, (BOOL,), "a condition (true/false) is needed here")

    def number(self, node):
        return self.expect(node, (NUM,), "a number is needed here")

    def string(self, node):
        return self.expect(node, (TEXT, STR), "text is needed here")

    # -- the grammar ------------------------------------------------------------------
    def check(self, node: exp.Expression) -> str:  # noqa: C901 - one branch per node type
        t = type(node)
        if t is exp.Paren:
            self.only(node)
            return self.check(node.this)
        if t is exp.Column:
            return self.column(node)
        if t is exp.Literal:
            return self.literal(node)
        if t is exp.Boolean:
            self.only(node, (), scalars=("this",))
            return BOOL
        if t is exp.Null:
            self.only(node, ())
            return NULL
        if t is exp.Placeholder:
            return self.placeholder(node)
        if t in _COMPARE:
            self.only(node, ("this", "expression"))
            for side in (node.this, node.expression):
                if isinstance(side, (*_COMPARE, exp.Between, exp.In, exp.Is)):
                    raise self.error(node, f"{_snippet(node)}: chained comparisons are not supported"
                                           "{where}; combine comparisons with AND, or add parentheses")
            self.unify(node, [(n, self.check(n)) for n in (node.this, node.expression)], "compare")
            return BOOL
        if t in (exp.And, exp.Or):
            self.only(node, ("this", "expression"))
            self.condition(node.this)
            self.condition(node.expression)
            return BOOL
        if t is exp.Not:
            self.only(node)
            self.condition(node.this)
            return BOOL
        if t in _ARITH:
            self.only(node, ("this", "expression"))
            self.number(node.this)
            self.number(node.expression)
            return NUM
        if t is exp.Neg:
            self.only(node)
            self.number(node.this)
            return NUM
        if t is exp.Case:
            return self.case(node)
        if t is exp.Is:
            self.only(node, ("this", "expression"))
            if type(node.expression) is not exp.Null:
                raise self.error(node, f"{_snippet(node)}: IS is only allowed as IS NULL or IS NOT NULL"
                                       "{where}")
            self.check(node.this)
            return BOOL
        if t is exp.In:
            return self.in_list(node)
        if t is exp.Between:
            self.only(node, ("this", "low", "high"))
            self.unify(node, [(n, self.check(n)) for n in (node.this, node.args["low"],
                                                             node.args["high"])], "compare")
            return BOOL
        if t in (exp.Coalesce, exp.Least, exp.Greatest):
            self.check_function_name(node)
            self.only(node, ("this", "expressions"), flags=("ignore_nulls", "is_nvl", "is_null"))
            args = [node.this, *node.expressions]
            return self.unify(node, [(n, self.check(n)) for n in args], "mix")
        if t is exp.Nullif:
            self.check_function_name(node)
            self.only(node, ("this", "expression"))
            return self.unify(node, [(n, self.check(n)) for n in (node.this, node.expression)], "compare")
        if t in _NUMERIC_1:
            self.check_function_name(node)
            self.only(node)
            self.number(node.this)
            return NUM
        if t in (exp.Log, exp.Pow):
            self.check_function_name(node)
            self.only(node, ("this", "expression"))
            self.number(node.this)
            if node.expression is not None:
                self.number(node.expression)
            return NUM
        if t is exp.Round:
            return self.round(node)
        if t in _TEXT_1:
            self.check_function_name(node)
            self.only(node)
            self.string(node.this)
            return TEXT
        if t is exp.Trim:
            return self.trim(node)
        if t is exp.Length:
            self.check_function_name(node)
            self.only(node)
            self.string(node.this)
            return NUM
        raise self.reject(node)

    def column(self, node: exp.Column) -> str:
        ident = node.this
        parts = [node.args.get(k) for k in ("catalog", "db", "table")]
        if any(parts) or not isinstance(ident, exp.Identifier):
            raise self.error(node, f"{_snippet(node)}: qualified names (table.column) and "
                                   "struct fields are not allowed; write just the column name{where}",
                             token=_snippet(node))
        self.only(node, ("this",))
        self.only(ident, (), flags=("quoted",), scalars=("this",))
        name = ident.this
        if not isinstance(name, str) or not NAME.match(name):
            for ch in str(name):
                if not ch.isascii():
                    pos = self.position(node)
                    raise RuleError(
                        f"{name!r}: character {ch!r} (U+{ord(ch):04X} {_char_name(ch)}) is not "
                        f"allowed in a name (position {pos}); names must be plain ASCII",
                        position=pos, token=str(name))
            hint = self.suggest(str(name).lower()) if str(name).lower() != name else ""
            raise self.error(node, f"{name!r} is not a valid column name{{where}}: names are lower "
                                   f"case letters, digits and _{hint}", token=str(name))
        if name not in self.kinds:
            raise self.error(node, f"{name} is not a column of this cohort{{where}}"
                                   f"{self.suggest(name)}", token=name)
        self.columns.add(name)
        return self.kinds[name]

    def suggest(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self.kinds), n=3, cutoff=0.75)
        if name in self.kinds:
            close = [name]
        return f"; did you mean {' or '.join(close)}?" if close else ""

    def literal(self, node: exp.Literal) -> str:
        self.only(node, (), flags=("is_string",), scalars=("this",))
        if node.is_string:
            if not isinstance(node.this, str):
                raise self.reject(node)
            return STR
        text = str(node.this)
        digits = _digits(text)
        if digits < 0:
            raise self.error(node, f"{text!r} is not a plain decimal number{{where}}", token=text)
        if digits > MAX_DIGITS:
            raise self.error(node, f"{text} has more than {MAX_DIGITS} digits{{where}}; round it, or "
                                   "write it with an exponent such as 1.5e-30", token=text)
        return NUM

    def placeholder(self, node: exp.Placeholder) -> str:
        self.only(node, (), scalars=("this",))
        name = node.this
        if not isinstance(name, str) or not NAME.match(name):
            raise self.error(node, "positional parameters (?, $1) are not allowed; use a named "
                                   "parameter such as :min_age{where}", token=str(name or "?"))
        if name not in self.declared:
            known = ", ".join(f":{p}" for p in sorted(self.declared)) or "none"
            raise self.error(node, f":{name} is not a declared parameter{{where}}; declared: {known}",
                             token=name)
        self.params.add(name)
        return NUM

    def case(self, node: exp.Case) -> str:
        self.only(node, ("this", "ifs", "default"))
        results = []
        base = node.args.get("this")
        base_fam = self.check(base) if base is not None else None
        for branch in node.args.get("ifs") or []:
            if type(branch) is not exp.If:
                raise self.reject(branch)
            self.only(branch, ("this", "true"))
            if base is not None:
                self.unify(branch, [(base, base_fam), (branch.this, self.check(branch.this))], "compare")
            else:
                self.condition(branch.this)
            results.append((branch.args["true"], self.check(branch.args["true"])))
        if node.args.get("default") is not None:
            results.append((node.args["default"], self.check(node.args["default"])))
        return self.unify(node, results, "mix")

    def in_list(self, node: exp.In) -> str:
        for key in ("query", "unnest", "field"):
            value = node.args.get(key)
            if isinstance(value, (exp.Subquery, exp.Select, exp.Query)):
                raise self.reject(value)
            if value is not None:
                raise self.error(node, f"{_snippet(node)}: IN takes a list of values in parentheses, "
                                       "not a table, list or subquery{where}")
        self.only(node, ("this", "expressions"))
        if not node.expressions:
            raise self.error(node, f"{_snippet(node)}: IN needs a list of values{{where}}")
        items = [(node.this, self.check(node.this))]
        for item in node.expressions:
            inner = item.this if type(item) is exp.Neg else item
            if type(inner) not in (exp.Literal, exp.Boolean, exp.Null, exp.Placeholder) or (
                    type(item) is exp.Neg and not (type(inner) is exp.Literal and not inner.is_string)):
                raise self.error(item, f"IN takes a list of literal values, not {_snippet(item)}"
                                       "{where}")
            items.append((item, self.check(item)))
        self.unify(node, items, "compare")
        return BOOL

    def round(self, node: exp.Round) -> str:
        self.check_function_name(node)
        self.only(node, ("this", "decimals"))
        self.number(node.this)
        digits = node.args.get("decimals")
        if digits is not None:
            inner = digits.this if type(digits) is exp.Neg else digits
            ok = type(inner) is exp.Literal and not inner.is_string and str(inner.this).isdigit()
            if not ok or int(inner.this) > MAX_ROUND_DIGITS:
                raise self.error(digits, f"round's second argument must be a whole number of "
                                         f"decimals between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}"
                                         "{where}")
        return NUM

    def trim(self, node: exp.Trim) -> str:
        self.check_function_name(node)
        if node.args.get("position") not in (None, "LEADING", "TRAILING", "BOTH"):
            raise self.reject(node)
        self.only(node, ("this", "expression"), scalars=("position",))
        self.string(node.this)
        chars = node.args.get("expression")
        if chars is not None and not (type(chars) is exp.Literal and chars.is_string):
            raise self.error(chars, "trim's characters must be a 'quoted text'{where}")
        return TEXT

    def reject(self, node: exp.Expression) -> RuleError:
        for types, message in _REJECTIONS:
            if isinstance(node, types):
                if "{name}" in message:
                    name = self.function_name(node)
                    return self.error(node, message.replace("{name}", name), token=name)
                return self.error(node, message, token=_snippet(node, 30))
        if isinstance(node, exp.Func):
            return self.reject_function(node, self.function_name(node))
        return self.error(node, f"{_snippet(node)} ({node.key}) is not allowed in a rule{{where}}",
                          token=_snippet(node, 30))


def _iso_date(checker: _Checker, lit: exp.Expression) -> None:
    value = str(lit.this)
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(value)
        _dt.date.fromisoformat(value)
    except ValueError:
        raise checker.error(lit, f"{_snippet(lit)} is not a date; write dates as 'YYYY-MM-DD'{{where}}",
                            token=value) from None


def _classes(*names: str) -> tuple[type, ...]:
    return tuple(getattr(exp, n) for n in names if hasattr(exp, n))


_PREFIX_WORDS = {exp.Cast: ("CAST",), exp.TryCast: ("TRY_CAST",), exp.Exists: ("EXISTS",),
                 exp.Select: ("SELECT",), exp.Subquery: ("(",), exp.Not: ("NOT",), exp.Case: ("CASE",),
                 exp.Paren: ("(",), exp.Interval: ("INTERVAL",), exp.PositionalColumn: ("#",)}
_INFIX_WORDS = {exp.Cast: ("::",), exp.Is: ("IS",), exp.In: ("IN",), exp.Between: ("BETWEEN",),
                exp.Window: ("OVER",), exp.Star: ("*",), exp.Alias: ("AS",)}

_REJECTIONS: list[tuple[tuple[type, ...], str]] = [
    (_classes("Subquery", "Select", "Union", "Except", "Intersect", "Query", "Values"),
     "subqueries (SELECT ...) are not allowed{where}: a rule is one expression over the cohort's columns"),
    (_classes("Exists"), "EXISTS is not allowed{where}: a rule cannot look at other rows or tables"),
    (_classes("Cast", "TryCast"),
     "casts (CAST(...) or ::TYPE) are not allowed{where}: columns already have their dictionary types"),
    (_classes("Star", "Columns", "PositionalColumn"), "*, COLUMNS(...) and positional columns (#1) are not allowed{where}"),
    (_classes("Window"), "window functions (... OVER ...) are not allowed{where}"),
    (_classes("AggFunc"),
     "{name} is an aggregate function{where}; a rule is evaluated for one patient at a time"),
    (_classes("Lambda"), "lambda functions (x -> ...) are not allowed{where}"),
    (_classes("Dot", "Bracket", "Struct", "Array", "Tuple", "JSONExtract", "PropertyEQ", "Kwarg"),
     "struct, list, map and JSON values are not allowed{where}"),
    (_classes("RawString"), "dollar-quoted strings ($$...$$) are not allowed{where}; use 'single quotes'"),
    (_classes("ByteString", "National", "HexString", "BitString", "UnicodeString"),
     "only plain 'single-quoted' text is allowed{where} (no E'', N'', X'' or U&'' strings)"),
    (_classes("Alias"),
     "unexpected name after an expression{where}; did you forget an operator such as AND?"),
    (_classes("Like", "ILike", "Glob", "RegexpLike", "SimilarTo", "RegexpILike"),
     "pattern matching (LIKE, GLOB, ~, regular expressions) is not allowed{where}; use = or IN"),
    (_classes("DPipe", "Concat"), "text concatenation is not allowed{where}"),
    (_classes("Table"), "table references are not allowed{where}"),
    (_classes("Interval"), "intervals are not allowed{where}; compare numbers of days"),
    (_classes("Collate"), "COLLATE is not allowed{where}"),
    (_classes("If"), "if(...) is not allowed{where}; use CASE WHEN ... THEN ... ELSE ... END"),
    (_classes("Any", "All"), "ANY/ALL are not allowed{where}; use IN (list of values)"),
]


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
