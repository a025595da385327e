"""PostgreSQL spelling of the portable screening predicates: DuckDB's answers, not errors.

:mod:`kn026.scale.portable` makes a predicate portable (floating division with a NULL-safe
divisor, NULL-safe GREATEST/LEAST); this module rewrites what PostgreSQL still does
differently from DuckDB 2.0, found by running the emitted SQL on a real server
(tests/scale/test_postgres.py compares every rewrite with DuckDB value by value):

* ``ROUND(x)`` on a double rounds half to even in PostgreSQL; DuckDB rounds half away
  from zero: written ``SIGN(y) * FLOOR(ABS(y) + 0.49999999999999994)`` (exact for every
  double, unlike ``+ 0.5``).
* ``ROUND(x, d)``: PostgreSQL has no ``round(double precision, integer)``, and
  sqlglot's ``ROUND(CAST(x AS DECIMAL), d)`` rounds the double's 15-digit decimal
  text. DuckDB rounds the double's exact binary value, half away from zero: 7.05 is
  7.04999999999999982... and ``ROUND(7.05, 1)`` is 7.0, while 0.125 is exact and
  gives 0.13. The rewrite computes ``p = x * 10^d`` and, when ``p`` lands exactly on
  a half, the sign of the product's rounding error (Dekker's exact product, plain
  double arithmetic) decides the side. Exact while ``|x| * 10^d < 2^52`` and
  ``|d| <= 22``; beyond, ``x`` is returned (its last digit is coarser than ``10^-d``).
  A constant made only of literals and ``+ - *`` is a DECIMAL in DuckDB and keeps
  PostgreSQL's NUMERIC rounding, which is the same.
* Logarithms: ``LOG2(x)`` and ``LOG10(x)`` arrive as ``LOG(2, x)`` / ``LOG(10, x)``,
  which PostgreSQL has for NUMERIC only; DuckDB computes ``LOG(b, x)`` as
  ``log10(x) / log10(b)`` in doubles, and so does the rewrite.
* Domain and range: where DuckDB returns NaN or an infinity, PostgreSQL raises an
  error and the whole query stops. ``LN``/``LOG`` give -Infinity at 0 and NaN below,
  ``SQRT`` NaN below 0, ``POWER`` the C library's answer for a zero or negative base,
  ``EXP`` +Infinity or 0 beyond the double range. Both engines order NaN above every
  number (and NaN = NaN), so comparisons then agree.

Not covered (PostgreSQL stops with "value out of range" where DuckDB gives an
infinity or 0): ``+ - * /`` and ``POWER`` results beyond about 1e308 or below 5e-324.
Dictionary values never come near; such a rule fails loudly, never answers wrongly.

An argument used several times by a rewrite is repeated inline when small; a larger
one is computed once in a one-row subquery (``(SELECT ... FROM (SELECT arg AS kn_y
OFFSET 0) AS kn_arg)``; OFFSET 0 keeps PostgreSQL's planner from flattening it back),
so nested functions cannot make the SQL or the plan grow exponentially.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from functools import cache

import sqlglot
from sqlglot import exp

DOUBLE = "DOUBLE PRECISION"
BELOW_HALF = f"CAST(0.49999999999999994 AS {DOUBLE})"  # the largest double below 0.5
SPLIT = 134217729.0  # 2**27 + 1: Veltkamp's split of a double into two 26-bit halves
# An argument is repeated inline while its size (nodes) x uses stays within this budget;
# beyond, a one-row subquery computes it once: correct at any depth but slow in
# PostgreSQL (a subplan per row, about 25 us), so the budget lets every protocol rule
# (QTcF's rounded POWER is the largest) stay inline.
INLINE_BUDGET = 1000

# Templates in PostgreSQL; kn_y, kn_a, kn_b, kn_lx, kn_lb stand for the arguments.
_ROUND = f"(SIGN(kn_y) * FLOOR(ABS(kn_y) + {BELOW_HALF}))"
# ROUND(y, d) for d >= 0, m = 10^d = mh + ml: p = y * m; on an exact half of p the sign of
# the error of p (Dekker: ((yh*mh - p) + yh*ml + yl*mh) + yl*ml) chooses the side.
_ROUND_UP = """CASE WHEN ABS({p}) < 0.25 THEN CAST(0 AS {D})
  WHEN ABS({p}) < 4503599627370496 THEN SIGN({p}) * (CASE
    WHEN ABS({p}) - FLOOR(ABS({p})) = 0.5 THEN FLOOR(ABS({p})) + CASE
      WHEN SIGN({p}) * ((({yh} * kn_mh - {p}) + {yh} * kn_ml + (kn_y - {yh}) * kn_mh) + (kn_y - {yh}) * kn_ml) < 0
      THEN 0 ELSE 1 END
    ELSE FLOOR(ABS({p}) + {H}) END) / kn_m
  ELSE kn_y END"""
# ROUND(y, -k), m = 10^k: q = y / m; on an exact half of q the sign of the residual
# y - q*m (exact: (y - ph) - pl with q*m = ph + pl by Dekker) chooses the side.
_ROUND_DOWN = """CASE WHEN ABS({q}) < 0.25 THEN CAST(0 AS {D})
  WHEN ABS({q}) < 4503599627370496 THEN SIGN({q}) * (CASE
    WHEN ABS({q}) - FLOOR(ABS({q})) = 0.5 THEN FLOOR(ABS({q})) + CASE
      WHEN SIGN({q}) * ((kn_y - {ph}) - ((({qh} * kn_mh - {ph}) + {qh} * kn_ml + ({q} - {qh}) * kn_mh)
                                         + ({q} - {qh}) * kn_ml)) < 0
      THEN 0 ELSE 1 END
    ELSE FLOOR(ABS({q}) + {H}) END) * kn_m
  ELSE kn_y END"""
_LN = "CASE WHEN kn_y > 0 THEN {f}(kn_y) WHEN kn_y = 0 THEN CAST('-Infinity' AS {D}) " \
      "WHEN kn_y < 0 THEN CAST('NaN' AS {D}) END"
_LOG_BASE = "CASE WHEN kn_lb = 0 THEN kn_lx * CAST('Infinity' AS {D}) ELSE kn_lx / kn_lb END"
_SQRT = "CASE WHEN kn_y < 0 THEN CAST('NaN' AS {D}) ELSE SQRT(kn_y) END"
_POWER = """CASE WHEN kn_a = 0 AND kn_b < 0 THEN CASE
      WHEN CAST(kn_a AS TEXT) = '-0' AND kn_b = FLOOR(kn_b)
      THEN CASE WHEN kn_b / 2 <> FLOOR(kn_b / 2) THEN CAST('-Infinity' AS {D}) ELSE CAST('Infinity' AS {D}) END
      ELSE CAST('Infinity' AS {D}) END
  WHEN kn_a = CAST('-Infinity' AS {D}) AND kn_b <> FLOOR(kn_b)
  THEN CASE WHEN kn_b > 0 THEN CAST('Infinity' AS {D}) ELSE CAST(0 AS {D}) END
  WHEN kn_a < 0 AND kn_b <> FLOOR(kn_b) THEN CAST('NaN' AS {D})
  ELSE POWER(kn_a, kn_b) END"""
# exp(y) overflows for every double above 709.782712893384 and is 0 below
# -745.1332191019411; NaN is above every number in PostgreSQL, hence `<= Infinity`.
_EXP = """CASE WHEN kn_y > 709.782712893384 AND kn_y <= CAST('Infinity' AS {D}) THEN CAST('Infinity' AS {D})
  WHEN kn_y < -745.1332191019411 THEN CAST(0 AS {D}) ELSE EXP(kn_y) END"""


@cache
def _template(text: str) -> exp.Expression:
    return sqlglot.parse_one(text, read="postgres")


def _fill(text: str, args: dict[str, exp.Expression]) -> exp.Expression:
    """The template with each placeholder column replaced by a copy of its argument."""
    def put(node):
        if isinstance(node, exp.Column) and not node.table and node.name in args:
            return args[node.name].copy()
        return node

    return _template(text).copy().transform(put, copy=False)


def _apply(text: str, **args: exp.Expression) -> exp.Expression:
    """Fill a template; arguments too big to repeat are computed once in a one-row subquery."""
    tree = _template(text)
    uses = {name: sum(1 for c in tree.find_all(exp.Column) if not c.table and c.name == name) for name in args}
    big = {name: arg for name, arg in args.items()
           if sum(1 for _ in arg.walk()) * max(uses[name], 1) > INLINE_BUDGET}
    if not big:
        return _fill(text, args)
    refs = {name: exp.column(name, table="kn_arg") if name in big else arg for name, arg in args.items()}
    one_row = exp.select(*(exp.alias_(arg, name) for name, arg in big.items())).offset(0).subquery("kn_arg")
    return exp.Subquery(this=exp.select(_fill(text, refs)).from_(one_row))


def _double(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Cast) and node.to.is_type(exp.DataType.Type.DOUBLE):
        return node
    return exp.cast(node, exp.DataType.build("DOUBLE"))


def _constant(value: float) -> exp.Expression:
    return exp.cast(exp.Literal.number(repr(value)), "DOUBLE")


def _int_literal(node: exp.Expression) -> int | None:
    sign = 1
    while isinstance(node, (exp.Paren, exp.Neg)):
        sign = -sign if isinstance(node, exp.Neg) else sign
        node = node.this
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            value = Decimal(node.this)
        except InvalidOperation:
            return None
        if value == value.to_integral_value():
            return sign * int(value)
    return None


def _decimal_constant(node: exp.Expression) -> bool:
    """Literals joined by + - * only: DuckDB computes these in DECIMAL, not DOUBLE."""
    return all(isinstance(n, (exp.Literal, exp.Paren, exp.Neg, exp.Add, exp.Sub, exp.Mul)) for n in node.walk())


def round_half_away(y: exp.Expression) -> exp.Expression:
    """DuckDB's ROUND(y) of a double: half away from zero, exact for every double."""
    return _apply(_ROUND, kn_y=_double(y))


def _round(node: exp.Round) -> exp.Expression:
    digits = node.args.get("decimals")
    if digits is None:
        return round_half_away(node.this)
    d = _int_literal(digits)
    if d is None or _decimal_constant(node.this):
        return node  # NUMERIC rounding, as DuckDB's DECIMAL (or PostgreSQL's own error)
    m = 10.0 ** abs(d)
    high = SPLIT * m - (SPLIT * m - m)
    fmt = {"D": DOUBLE, "H": BELOW_HALF}
    if d >= 0:
        text = _ROUND_UP.format(p="(kn_y * kn_m)", yh="(134217729 * kn_y - (134217729 * kn_y - kn_y))", **fmt)
    else:
        q = "(kn_y / kn_m)"
        text = _ROUND_DOWN.format(q=q, ph=f"({q} * kn_m)", qh=f"(134217729 * {q} - (134217729 * {q} - {q}))",
                                  **fmt)
    return exp.Paren(this=_apply(text, kn_y=_double(node.this), kn_m=_constant(m), kn_mh=_constant(high),
                                 kn_ml=_constant(m - high)))


def _log10(y: exp.Expression) -> exp.Expression:
    return _apply(_LN.format(f="LOG", D=DOUBLE), kn_y=_double(y))


def _ln(node: exp.Ln) -> exp.Expression:
    return _apply(_LN.format(f="LN", D=DOUBLE), kn_y=_double(node.this))


def _log(node: exp.Log) -> exp.Expression:
    if node.args.get("expression") is None:  # LOG(y) is log10 in DuckDB and PostgreSQL
        return _log10(node.this)
    return exp.Paren(this=_apply(_LOG_BASE.format(D=DOUBLE), kn_lx=_log10(node.expression),
                                 kn_lb=_log10(node.this)))


def _sqrt(node: exp.Sqrt) -> exp.Expression:
    return _apply(_SQRT.format(D=DOUBLE), kn_y=_double(node.this))


def _pow(node: exp.Pow) -> exp.Expression:
    return _apply(_POWER.format(D=DOUBLE), kn_a=_double(node.this), kn_b=_double(node.expression))


def _exp(node: exp.Exp) -> exp.Expression:
    return _apply(_EXP.format(D=DOUBLE), kn_y=_double(node.this))


_REWRITES: dict[type, Callable[..., exp.Expression]] = {
    exp.Round: _round, exp.Ln: _ln, exp.Log: _log, exp.Sqrt: _sqrt, exp.Pow: _pow, exp.Exp: _exp}


def rewrite(node: exp.Expression) -> exp.Expression:
    """One node of a portable predicate in PostgreSQL's terms (children already rewritten)."""
    fun = _REWRITES.get(type(node))
    return fun(node) if fun is not None else node
