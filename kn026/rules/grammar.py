"""The rule grammar: which SQL an analyst may write, as a table of node types, and the value families it infers.

`Checker.check` looks each parsed node's type up in `GRAMMAR` (node type -> method);
a type not in the table is rejected with the reason in `_REJECTIONS`. Type checking
works on value families (number, text, true/false, date), so `sex > 5` is refused
before it could fail at run time. Used by kn026.rules.rulecheck, which tokenises,
parses and re-renders the rule around this walk.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import re
import unicodedata

from sqlglot import exp
from sqlglot.tokens import TokenType

NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_NUMBER = re.compile(r"^(?P<int>\d*)(\.(?P<frac>\d*))?([eE](?P<exp>[+-]?\d{1,3}))?$")
MAX_DIGITS = 18
MAX_ROUND_DIGITS = 30

# Functions an analyst may call, as written (lower case). Each maps to a pure scalar
# DuckDB function; nothing here reads files, settings, the environment or the catalog.
ALLOWED_FUNCTIONS: tuple[str, ...] = (
    "abs", "ceil", "ceiling", "coalesce", "exp", "floor", "greatest", "ifnull", "least",
    "length", "ln", "log", "log10", "log2", "lower", "ltrim", "nullif", "pow", "power",
    "round", "rtrim", "sign", "sqrt", "trim", "upper",
)

# Value families used for type checking (only when column kinds are given).
NUM, TEXT, BOOL, DATE, NULL, ANY, STR = "number", "text", "true/false", "date", "null", "any", "str"
DESCRIBE_FAMILY = {NUM: "a number", TEXT: "text", BOOL: "a true/false value", DATE: "a date",
                    NULL: "NULL", ANY: "a value", STR: "text"}
KIND_FAMILY = {
    "number": NUM, "integer": NUM, "double": NUM, "float": NUM, "real": NUM, "decimal": NUM,
    "bigint": NUM, "int": NUM, "smallint": NUM, "tinyint": NUM, "hugeint": NUM, "numeric": NUM,
    "flag": BOOL, "boolean": BOOL, "bool": BOOL,
    "text": TEXT, "category": TEXT, "id": TEXT, "varchar": TEXT, "string": TEXT,
    "date": DATE,
}

COMPARE = (exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE)
ARITH = (exp.Add, exp.Sub, exp.Mul, exp.Div)
NUMERIC_1 = {exp.Abs: "abs", exp.Ln: "ln", exp.Sqrt: "sqrt", exp.Floor: "floor",
              exp.Ceil: "ceil", exp.Sign: "sign", exp.Exp: "exp"}
TEXT_1 = {exp.Lower: "lower", exp.Upper: "upper"}


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


def count_digits(text: str) -> int:
    """Significant digits of a plain number's text (-1 when it is not a plain number)."""
    m = _NUMBER.match(text)
    if not m or not (m.group("int") or m.group("frac")):
        return -1
    return len(m.group("int").lstrip("0")) + len(m.group("frac") or "")


def char_name(ch: str) -> str:
    return unicodedata.name(ch, "unnamed character")


def snippet(node: exp.Expression, limit: int = 60) -> str:
    try:
        text = node.sql(dialect="duckdb", comments=False)
    except Exception:  # noqa: BLE001 - a description only
        text = node.key
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Checker:
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
            raise self.error(node, f"{snippet(node)}: this form of {self.function_name(node)} is "
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
            raise self.error(node, f"{snippet(node)}: cannot {what} {DESCRIBE_FAMILY[a]} with "
                                   f"{DESCRIBE_FAMILY[b]}{{where}}")
        fam = next(iter(concrete), None)
        if strings and fam == DATE:
            for lit in strings:
                _iso_date(self, lit)
        elif strings and fam not in (None, TEXT):
            raise self.error(strings[0], f"{snippet(node)}: cannot {what} {DESCRIBE_FAMILY[fam]} "
                                         f"with text {snippet(strings[0])}{{where}}")
        if fam:
            return fam
        if any(f == ANY for _, f in items):
            return ANY
        return TEXT if strings else NULL

    def expect(self, node: exp.Expression, families: tuple[str, ...], role: str) -> str:
        fam = self.check(node)
        if fam not in families and fam not in (NULL, ANY):
            raise self.error(node, f"{snippet(node)} is {DESCRIBE_FAMILY[fam]}, but {role}{{where}}")
        return fam

    def condition(self, node):
        return self.expect(node, (BOOL,), "a condition (true/false) is needed here")

    def number(self, node):
        return self.expect(node, (NUM,), "a number is needed here")

    def string(self, node):
        return self.expect(node, (TEXT, STR), "text is needed here")

    # -- the grammar: one method per node type, looked up in GRAMMAR (below the class) ---------
    def check(self, node: exp.Expression) -> str:
        """The value family of `node`, or RuleError if the grammar does not allow it."""
        rule = GRAMMAR.get(type(node))
        if rule is None:
            raise self.reject(node)
        return rule(self, node)

    def paren(self, node):
        self.only(node)
        return self.check(node.this)

    def boolean(self, node):
        self.only(node, (), scalars=("this",))
        return BOOL

    def null(self, node):
        self.only(node, ())
        return NULL

    def comparison(self, node):
        self.only(node, ("this", "expression"))
        for side in (node.this, node.expression):
            if isinstance(side, (*COMPARE, exp.Between, exp.In, exp.Is)):
                raise self.error(node, f"{snippet(node)}: chained comparisons are not supported"
                                       "{where}; combine comparisons with AND, or add parentheses")
        self.unify(node, [(n, self.check(n)) for n in (node.this, node.expression)], "compare")
        return BOOL

    def logical(self, node):
        self.only(node, ("this", "expression"))
        self.condition(node.this)
        self.condition(node.expression)
        return BOOL

    def negation(self, node):
        self.only(node)
        self.condition(node.this)
        return BOOL

    def arithmetic(self, node):
        self.only(node, ("this", "expression"))
        self.number(node.this)
        self.number(node.expression)
        return NUM

    def minus(self, node):
        self.only(node)
        self.number(node.this)
        return NUM

    def is_null(self, node):
        self.only(node, ("this", "expression"))
        if type(node.expression) is not exp.Null:
            raise self.error(node, f"{snippet(node)}: IS is only allowed as IS NULL or IS NOT NULL"
                                   "{where}")
        self.check(node.this)
        return BOOL

    def between(self, node):
        self.only(node, ("this", "low", "high"))
        self.unify(node, [(n, self.check(n)) for n in (node.this, node.args["low"],
                                                         node.args["high"])], "compare")
        return BOOL

    def first_of(self, node):  # coalesce, least, greatest
        self.check_function_name(node)
        self.only(node, ("this", "expressions"), flags=("ignore_nulls", "is_nvl", "is_null"))
        args = [node.this, *node.expressions]
        return self.unify(node, [(n, self.check(n)) for n in args], "mix")

    def nullif(self, node):
        self.check_function_name(node)
        self.only(node, ("this", "expression"))
        return self.unify(node, [(n, self.check(n)) for n in (node.this, node.expression)], "compare")

    def numeric_function(self, node):  # abs, ln, sqrt, floor, ceil, sign, exp
        self.check_function_name(node)
        self.only(node)
        self.number(node.this)
        return NUM

    def log_or_power(self, node):
        self.check_function_name(node)
        self.only(node, ("this", "expression"))
        self.number(node.this)
        if node.expression is not None:
            self.number(node.expression)
        return NUM

    def text_function(self, node):  # lower, upper
        self.check_function_name(node)
        self.only(node)
        self.string(node.this)
        return TEXT

    def length(self, node):
        self.check_function_name(node)
        self.only(node)
        self.string(node.this)
        return NUM

    def column(self, node: exp.Column) -> str:
        ident = node.this
        parts = [node.args.get(k) for k in ("catalog", "db", "table")]
        if any(parts) or not isinstance(ident, exp.Identifier):
            raise self.error(node, f"{snippet(node)}: qualified names (table.column) and "
                                   "struct fields are not allowed; write just the column name{where}",
                             token=snippet(node))
        self.only(node, ("this",))
        self.only(ident, (), flags=("quoted",), scalars=("this",))
        name = ident.this
        if not isinstance(name, str) or not NAME.match(name):
            for ch in str(name):
                if not ch.isascii():
                    pos = self.position(node)
                    raise RuleError(
                        f"{name!r}: character {ch!r} (U+{ord(ch):04X} {char_name(ch)}) is not "
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
        n_digits = count_digits(text)
        if n_digits < 0:
            raise self.error(node, f"{text!r} is not a plain decimal number{{where}}", token=text)
        if n_digits > MAX_DIGITS:
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
                raise self.error(node, f"{snippet(node)}: IN takes a list of values in parentheses, "
                                       "not a table, list or subquery{where}")
        self.only(node, ("this", "expressions"))
        if not node.expressions:
            raise self.error(node, f"{snippet(node)}: IN needs a list of values{{where}}")
        items = [(node.this, self.check(node.this))]
        for item in node.expressions:
            inner = item.this if type(item) is exp.Neg else item
            if type(inner) not in (exp.Literal, exp.Boolean, exp.Null, exp.Placeholder) or (
                    type(item) is exp.Neg and not (type(inner) is exp.Literal and not inner.is_string)):
                raise self.error(item, f"IN takes a list of literal values, not {snippet(item)}"
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
                return self.error(node, message, token=snippet(node, 30))
        if isinstance(node, exp.Func):
            return self.reject_function(node, self.function_name(node))
        return self.error(node, f"{snippet(node)} ({node.key}) is not allowed in a rule{{where}}",
                          token=snippet(node, 30))


def _iso_date(checker: Checker, lit: exp.Expression) -> None:
    value = str(lit.this)
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(value)
        _dt.date.fromisoformat(value)
    except ValueError:
        raise checker.error(lit, f"{snippet(lit)} is not a date; write dates as 'YYYY-MM-DD'{{where}}",
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


# The grammar as data: node type -> the Checker method that allows it (anything else is rejected
# by Checker.reject with the reason from _REJECTIONS).
GRAMMAR = {
    exp.Paren: Checker.paren, exp.Column: Checker.column, exp.Literal: Checker.literal,
    exp.Boolean: Checker.boolean, exp.Null: Checker.null, exp.Placeholder: Checker.placeholder,
    **{t: Checker.comparison for t in COMPARE},
    exp.And: Checker.logical, exp.Or: Checker.logical, exp.Not: Checker.negation,
    **{t: Checker.arithmetic for t in ARITH}, exp.Neg: Checker.minus,
    exp.Case: Checker.case, exp.Is: Checker.is_null, exp.In: Checker.in_list, exp.Between: Checker.between,
    exp.Coalesce: Checker.first_of, exp.Least: Checker.first_of, exp.Greatest: Checker.first_of,
    exp.Nullif: Checker.nullif, **{t: Checker.numeric_function for t in NUMERIC_1},
    exp.Log: Checker.log_or_power, exp.Pow: Checker.log_or_power, exp.Round: Checker.round,
    **{t: Checker.text_function for t in TEXT_1}, exp.Trim: Checker.trim, exp.Length: Checker.length,
}
