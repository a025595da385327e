"""SQL passes over parsed predicates, shared by the engine and the rule checker.

Limits are exact (cohort dictionary, section 2): a computed comparison side such as
`1.5 * inr_uln` is rounded to EXACT_DECIMALS before it is compared, so ties at a limit
agree with decimal arithmetic. Untrusted arithmetic is promoted to DOUBLE, which never
raises on overflow.
"""

from __future__ import annotations

import functools
import re

import sqlglot
from sqlglot import exp

EXACT_DECIMALS = 9  # both sides of a computed comparison are rounded to this many decimals
COMPARE = (exp.GT, exp.GTE, exp.LT, exp.LTE, exp.EQ, exp.NEQ)
ARITH = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Pow, exp.Mod)  # any of these makes a side "computed"
PROMOTED = (exp.Add, exp.Sub, exp.Mul, exp.Div)  # operators an analyst may write; operands go to DOUBLE
_NOT_PREDICATE = (exp.Query, exp.Table, exp.DDL, exp.DML, exp.Command, exp.Set, exp.Pragma)


def exact(tree: exp.Expression) -> exp.Expression:
    """Round computed sides of comparisons (x * ULN) so ties at limits are exact.

    A recorded value is already the double nearest its decimal text; a product such
    as 1.5 * 1.2 is not (1.7999999999999998). Rounding the computed side to
    EXACT_DECIMALS gives the double nearest the exact decimal result, so the
    comparison agrees with decimal arithmetic. Derived values are rounded the same
    way, so a clearance of exactly 30 (age 68, 30 kg, creatinine 88.4) is not
    29.999999999999996. `round(x * 1e9) / 1e9` is used because DuckDB's
    two-argument ROUND costs 2.5x more per row.
    """
    scale = exp.Literal.number(f"1e{EXACT_DECIMALS}")

    def visit(node):
        if isinstance(node, COMPARE):
            for side in ("this", "expression"):
                if node.args[side].find(*ARITH):
                    scaled = exp.Mul(this=exp.Paren(this=node.args[side].copy()), expression=scale.copy())
                    node.set(side, exp.Div(this=exp.Round(this=scaled), expression=scale.copy()))
        return node

    return tree.transform(visit, copy=True)


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
        return isinstance(node, PROMOTED) or (isinstance(node, exp.Neg) and not (
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


def round_computed(tree: exp.Expression) -> exp.Expression:
    """Round arithmetic comparison sides to EXACT_DECIMALS, as the engine does.

    DOUBLE arithmetic gets ties wrong (1.5 * 1.2 is 1.7999999999999998); rounding the
    computed side to 9 decimals gives the double nearest the exact decimal result, so
    a value exactly at a limit meets it (cohort dictionary, section 2).
    """
    scale = f"1e{EXACT_DECIMALS}"
    for node in [n for n in tree.walk() if isinstance(n, COMPARE)]:
        for key in ("this", "expression"):
            side = node.args[key]
            inner = side
            while isinstance(inner, exp.Paren):
                inner = inner.this
            if isinstance(inner, (*PROMOTED, exp.Neg)):
                scaled = exp.Mul(this=exp.Paren(this=side.copy()), expression=exp.Literal.number(scale))
                node.set(key, exp.Div(this=exp.Round(this=scaled), expression=exp.Literal.number(scale)))
    return tree


def parse_predicate(sql: str, where: str, error: type[Exception] = ValueError) -> exp.Expression:
    """Parse one boolean SQL expression (DuckDB dialect) or raise `error` naming the rule (`where`).

    Returns a fresh tree the caller may change: parses are memoised per process
    (`_parsed`) and copied, which costs a seventh of parsing again; a protocol's rules
    and derived values are parsed many times (loading, every engine, every check).
    """
    try:
        tree = _parsed(sql)
    except sqlglot.errors.SqlglotError as err:  # ParseError, and TokenError (unclosed quote)
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines()[0] if str(err) else type(err).__name__
        at = re.search(r"Line (\d+), Col: (\d+)", first)
        at = f" (line {at[1]}, column {at[2]})" if at else ""
        raise error(f"{where}: the SQL does not parse{at}: {plain_parse_error(first)}") from None
    if tree is None:
        raise error(f"{where}: the SQL is empty")
    if isinstance(tree, exp.Block):
        raise error(f"{where}: the SQL holds several statements; write one expression")
    if tree.find(*_NOT_PREDICATE):
        raise error(f"{where}: the SQL must be one expression over cohort columns, "
                            "without queries, tables or statements")
    return tree.copy()


@functools.lru_cache(maxsize=2048)
def _parsed(sql: str) -> exp.Expression | None:
    """sqlglot's tree of `sql` (never handed out: `parse_predicate` copies it); errors are not cached."""
    return sqlglot.parse_one(sql, read="duckdb")


def names_in(tree: exp.Expression) -> tuple[set[str], set[str]]:
    """The column names and the :parameter names a predicate mentions."""
    cols = {c.name for c in tree.find_all(exp.Column)}
    params = {p.name for p in tree.find_all(exp.Placeholder)}
    return cols, params


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
