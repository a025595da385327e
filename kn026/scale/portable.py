"""Portable screening SQL: one criteria file -> the histogram query for six SQL engines.

The screening reduces patients to a histogram of ``(fail mask, unknown mask)`` pairs
with counts, and histograms add. So the query can run where the data lives (Spark /
Databricks, a cloud warehouse, a hospital's own database) and only the histogram
travels. This module emits that query for Spark SQL, PostgreSQL, BigQuery, Snowflake,
Trino and DuckDB from the same criteria file and scenario::

    SELECT f0, ..., u0, ..., COUNT(*) AS n
    FROM (SELECT <fail word 0> AS f0, ..., <unknown word 0> AS u0, ...
          FROM (SELECT (<predicate of leaf 0>) AS p0, ... FROM cohort) AS v) AS m
    GROUP BY f0, ..., u0, ...

Each predicate is the engine's own (``kn026.core.engine.compile_rule``: parameters bound as
exact literals, record-based NULLs read as "none on record", computed comparison
sides rounded to 9 decimals), made portable on the sqlglot tree, then written in the
target dialect. Bit ``j`` of both masks is leaf ``j`` of the stage in protocol order,
exactly as in :class:`kn026.core.engine.Engine`. Every engine has signed 64-bit BIGINT, so a
mask is written as words of 63 bits (:data:`WORD_BITS`), never negative: column ``f<k>``
(``u<k>``) holds leaves ``63k .. 63k + 62`` as a sum of ``CASE`` terms, bit ``j - 63k``
for leaf ``j``. There is no ceiling on the number of leaves; KN026-001 needs one word,
``f0`` / ``u0``, and 64 analyst criteria beside it two. This is the result format of
version 2 (``f, u, n`` was version 1, one word, at most 63 leaves); see
``docs/beyond-one-machine.md``.

Semantic traps handled (all checked by tests/test_portable.py):

* ``/``: DuckDB, Spark and BigQuery divide in floating point, PostgreSQL and Trino
  divide integers as integers, Spark and Snowflake divide decimal literals in
  DECIMAL (``1.0 / 3`` is ``0.333333`` there, which changes QTcF). Both operands are
  cast to DOUBLE and the divisor wrapped in ``NULLIF(d, 0)``, so every engine divides
  in binary floating point and a zero divisor gives NULL (unknown) instead of an
  error (PostgreSQL, Snowflake, Spark in ANSI mode) or infinity (DuckDB, Trino).
* ``GREATEST`` / ``LEAST``: DuckDB, Spark and PostgreSQL skip NULL arguments,
  BigQuery, Snowflake and Trino return NULL when any argument is NULL. Every
  argument that can be NULL becomes ``COALESCE(arg, other args...)``, which gives
  the skip-NULL answer under both rules (the washout's ``LEAST(max, 5 * NULL)`` is
  ``max``, as in the engine, even when a scenario sets the minimum above the maximum).
* ``ROUND(x)``: half away from zero in DuckDB, Spark, BigQuery, Snowflake and Trino;
  PostgreSQL rounds double precision half to even, so there it is written
  ``SIGN(y) * FLOOR(ABS(y) + 0.49999999999999994)`` with ``y = CAST(x AS DOUBLE)``
  (exact for every double, unlike ``+ 0.5``). PostgreSQL also needs ``ROUND(x, d)``,
  ``LOG(b, x)`` and NaN/infinity instead of errors for ``LN``, ``SQRT``, ``POWER``,
  ``EXP`` (:mod:`kn026.scale.pgsql`, checked on a real server). Spark's ROUND is right but slow on
  DOUBLE (a BigDecimal per call) and its FLOOR overflows BIGINT, so Spark gets
  ``SIGN(y) * (z - z % 1)`` with ``z = ABS(y) + 0.49999999999999994``.
* ``POWER``, ``IN`` lists, ``COALESCE``, ``CASE`` and boolean columns are standard in
  all six; sqlglot writes the dialect's spelling (``POW``/``^`` never appear).
* Mask bits are ``CAST(2^j AS BIGINT)`` literals, so no engine sums them as 32-bit
  integers.
* Identifiers: dictionary columns are quoted (``"age_years"``, ```age_years```) except
  for Snowflake, where a quoted lower-case name would not match a column created
  unquoted (stored as ``AGE_YEARS``).

The table must follow the data dictionary (numbers numeric, flags BOOLEAN, categories
in the dictionary's lower snake case): the query does not normalise spellings the way
``kn026.ingest.cohort.load_cohort`` does. Columns the table lacks are passed as ``present``
(default: every dictionary column); rules needing an absent column are left out (n/a)
and absent optional columns (ULNs, overrides) read as NULL, as in the engine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import sqlglot
from sqlglot import exp

from kn026.base import masks as mw
from kn026.base import schema
from kn026.core.criteria import CriteriaError, Protocol, Rule, format_number, parse_predicate
from kn026.core.engine import compile_rule, missing_columns
from kn026.core.funnel import Histogram
from kn026.core.scenario import Scenario
from kn026.scale import pgsql

DIALECTS = ("spark", "postgres", "bigquery", "snowflake", "trino", "duckdb")
WORD_BITS = 63  # leaves per mask word in the emitted SQL: a signed BIGINT that is never negative
ROWS_VERSION = 2  # the query's result columns: [site_id,] f0.., u0.., n (version 1: f, u, n)
NO_SITE = "(no site)"  # site_id NULL, as in kn026.core.engine.Engine
ALL_COLUMNS = frozenset(c.name for c in schema.COLUMNS)


# --------------------------------------------------------------------------- predicates


def _is_literal(node: exp.Expression) -> bool:
    """A non-NULL constant (number or string, possibly negated)."""
    if isinstance(node, exp.Paren):
        return _is_literal(node.this)
    if isinstance(node, exp.Neg):
        return _is_literal(node.this)
    return isinstance(node, exp.Literal)


def _nonzero_number(node: exp.Expression) -> bool:
    while isinstance(node, (exp.Paren, exp.Neg)):
        node = node.this
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return Decimal(node.this) != 0
        except ArithmeticError:
            return False
    return False


def _as_double(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Cast) and node.to.is_type(exp.DataType.Type.DOUBLE):
        return node
    return exp.cast(node, exp.DataType.build("DOUBLE"))


def _portable_node(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Div):
        den = _as_double(node.expression)
        if not _nonzero_number(node.expression):
            den = exp.Nullif(this=den, expression=exp.Literal.number(0))
        return exp.Div(this=_as_double(node.this), expression=den)
    if isinstance(node, (exp.Greatest, exp.Least)):
        args = [node.this, *node.expressions]
        if len(args) > 1 and not all(_is_literal(a) for a in args):
            safe = []
            for i, arg in enumerate(args):
                if _is_literal(arg):
                    safe.append(arg)
                else:
                    others = [a.copy() for j, a in enumerate(args) if j != i]
                    safe.append(exp.Coalesce(this=arg, expressions=others))
            return type(node)(this=safe[0], expressions=safe[1:])
        return type(node)(this=args[0], expressions=args[1:])
    return node


def make_portable(tree: exp.Expression) -> exp.Expression:
    """Rewrite a DuckDB predicate tree so every target dialect gives DuckDB's answer.

    Division in DOUBLE with a NULL-safe divisor; GREATEST / LEAST with NULL-safe
    arguments (see the module docstring).
    """
    return _post_order(tree, _portable_node)


def _post_order(tree: exp.Expression, fun: Callable[[exp.Expression], exp.Expression]) -> exp.Expression:
    """Apply `fun` to every node of a copy of `tree`, children before parents.

    (sqlglot's ``transform`` does not descend into a replaced node, and a division
    inside a division must be rewritten too.)
    """
    root = tree.copy()
    for node in reversed(list(root.walk(bfs=False))):
        new = fun(node)
        if new is not node:
            if node is root:
                root = new
            else:
                node.replace(new)
    return root


def _round_half_away_mod(node: exp.Expression) -> exp.Expression:
    """ROUND(x) for Spark without its slow BigDecimal path and without BIGINT overflow.

    Spark rounds a DOUBLE through ``java.math.BigDecimal`` (about 10x slower than the
    arithmetic around it) and its ``FLOOR`` returns BIGINT, which raises on overflow
    in ANSI mode. ``z - z % 1`` is an exact floor for ``z >= 0`` in doubles.
    """
    if isinstance(node, exp.Round) and node.args.get("decimals") is None:
        y = _as_double(node.this)
        z = exp.Paren(this=exp.Add(this=exp.Abs(this=y.copy()),
                                   expression=exp.cast(exp.Literal.number("0.49999999999999994"), "DOUBLE")))
        floor = exp.Sub(this=z, expression=exp.Mod(this=z.copy(), expression=exp.cast(
            exp.Literal.number(1), "DOUBLE")))
        return exp.Paren(this=exp.Mul(this=exp.Sign(this=y.copy()), expression=exp.Paren(this=floor)))
    return node


_DIALECT_FIXES: dict[str, Callable[[exp.Expression], exp.Expression]] = {
    "postgres": pgsql.rewrite,  # ROUND, ROUND(x, d), logarithms, domain errors: see kn026.scale.pgsql
    "spark": _round_half_away_mod,
}


def to_dialect(tree: exp.Expression, dialect: str, pretty: bool = False) -> str:
    """SQL text of a portable tree in `dialect` (one of :data:`DIALECTS`)."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; choose one of {', '.join(DIALECTS)}")
    fix = _DIALECT_FIXES.get(dialect)
    tree = _post_order(tree, fix) if fix is not None else tree.copy()
    # The arguments are NULL-safe already (make_portable): write the plain function.
    # sqlglot writes GREATEST_IGNORE_NULLS for Snowflake and a NULL-propagating CASE for
    # DuckDB depending on this flag; the native DuckDB function is what the engine runs.
    for node in tree.find_all(exp.Greatest, exp.Least):
        node.set("ignore_nulls", True if dialect == "duckdb" else None)
    if dialect == "snowflake":
        # Snowflake stores unquoted names in upper case and matches quoted names exactly:
        # "age_years" would miss the usual AGE_YEARS column, unquoted age_years finds it.
        for col in tree.find_all(exp.Column):
            if isinstance(col.this, exp.Identifier) and col.name in ALL_COLUMNS:
                col.this.set("quoted", False)
    return tree.sql(dialect=dialect, pretty=pretty)


# --------------------------------------------------------------------------- the query


def stage_rules(protocol: Protocol, stage: int) -> tuple[Rule, ...]:
    """The stage's leaves in bit order (protocol order), as in the engine."""
    if stage not in protocol.stages:
        raise ValueError(f"stage {stage} is not a stage of {protocol.name}; "
                         f"choose one of {sorted(protocol.stages)}")
    return tuple(r for r in protocol.rules if stage in r.stages)


def word_count(leaves: int) -> int:
    """Mask words (columns f0.., u0..) of the emitted query for `leaves` leaves (at least one)."""
    return max(1, -(-int(leaves) // WORD_BITS))


def mask_columns(words: int) -> list[str]:
    """The query's mask columns: ``f0 .. f{words-1}, u0 .. u{words-1}``."""
    return [f"f{k}" for k in range(words)] + [f"u{k}" for k in range(words)]


def rule_values(rule: Rule, overrides: dict | None) -> dict[str, Decimal]:
    """The rule's parameter values: defaults, then the scenario's checked overrides."""
    vals = rule.defaults()
    for name, value in ((overrides or {}).get(rule.id) or {}).items():
        if name not in rule.params:
            raise CriteriaError(f"{rule.id} has no parameter {name!r}; "
                                f"its parameters: {', '.join(rule.params) or 'none'}")
        vals[name] = rule.params[name].check(value, rule.id)
    return vals


def _present(present: Iterable[str] | None) -> frozenset[str]:
    if present is None:
        return ALL_COLUMNS
    names = frozenset(str(c).strip().lower() for c in present if str(c).strip())
    unknown = sorted(names - ALL_COLUMNS)
    if unknown:
        raise ValueError(f"not dictionary column(s): {', '.join(unknown)}; see cohort-dictionary.md")
    return names


@dataclass(frozen=True)
class Screening:
    """The compiled screening of one protocol stage and scenario for one table layout.

    ``leaves`` are the stage's rule IDs in bit order; ``predicates`` the portable
    predicate trees of the assessable ones; ``not_assessable`` maps a rule ID to its
    missing columns.
    """

    protocol: Protocol
    stage: int
    scenario: Scenario
    present: frozenset[str]
    leaves: tuple[str, ...]
    predicates: dict[str, exp.Expression]
    not_assessable: dict[str, list[str]] = field(default_factory=dict)

    @property
    def bit(self) -> dict[str, int]:
        return {rid: j for j, rid in enumerate(self.leaves)}

    @property
    def words(self) -> int:
        """Mask words of the query (columns f0.., u0..)."""
        return word_count(len(self.leaves))

    def tree(self, table: str | exp.Expression = "cohort", by_site: bool = False,
             dialect: str = "duckdb", inline: bool = False) -> exp.Select:
        """The histogram query as a sqlglot tree (DuckDB semantics, portable constructs).

        By default each predicate is computed once, as column ``p<j>`` of an inner
        SELECT, and the masks are summed from those columns. ``inline=True`` writes the
        predicates into the mask sums (each twice, for fail and unknown), relying on the
        engine's common-subexpression elimination.
        """
        if by_site and "site_id" not in self.present:
            raise ValueError("--by-site needs the site_id column, which is not among the present columns")
        src = table if isinstance(table, exp.Expression) else exp.to_table(table, dialect=dialect)
        site = exp.alias_(exp.Coalesce(this=exp.cast(exp.column("site_id", quoted=True), "VARCHAR"),
                                       expressions=[exp.Literal.string(NO_SITE)]), "site_id")

        def mask(term, ref, word: int) -> exp.Expression:
            total: exp.Expression | None = None
            for rid in self.predicates:
                j = self.bit[rid]
                if j // WORD_BITS != word:
                    continue
                value = 1 << (j - WORD_BITS * word)
                case = (exp.Case()
                        .when(term(ref(rid, j)), exp.cast(exp.Literal.number(value), "BIGINT"))
                        .else_(exp.cast(exp.Literal.number(0), "BIGINT")))
                total = case if total is None else exp.Add(this=total, expression=case)
            return total if total is not None else exp.cast(exp.Literal.number(0), "BIGINT")

        if inline:
            def ref(rid, j):
                return exp.Paren(this=self.predicates[rid].copy())
            source = src
        else:
            def ref(rid, j):
                return exp.column(f"p{j}")
            inner = [exp.alias_(p.copy(), f"p{self.bit[rid]}") for rid, p in self.predicates.items()]
            if by_site:
                inner.insert(0, site)
            if not inner:  # nothing assessable: one constant column keeps the SELECT valid
                inner = [exp.alias_(exp.Literal.number(0), "p_none")]
            source = exp.select(*inner).from_(src).subquery("v")

        words = range(self.words)
        masks = ([exp.alias_(mask(lambda c: exp.Not(this=c), ref, k), f"f{k}") for k in words]
                 + [exp.alias_(mask(lambda c: exp.Is(this=c, expression=exp.Null()), ref, k), f"u{k}")
                    for k in words])
        keys = mask_columns(self.words)
        if by_site:
            masks.insert(0, site.copy() if inline else exp.column("site_id"))
            keys.insert(0, "site_id")
        middle = exp.select(*masks).from_(source)
        outer = exp.select(*keys, exp.alias_(exp.Count(this=exp.Star()), "n")).from_(middle.subquery("m"))
        return outer.group_by(*keys)

    def sql(self, dialect: str = "duckdb", table: str = "cohort", by_site: bool = False,
            pretty: bool = False, inline: bool = False) -> str:
        """The histogram query in `dialect`: rows ``[site_id,] f0.., u0.., n``."""
        return to_dialect(self.tree(table, by_site, dialect, inline), dialect, pretty)

    def header(self, dialect: str) -> str:
        """SQL comment lines naming the protocol, scenario, fingerprint and bit order."""
        lines = [f"-- {self.protocol.name} stage {self.stage}, scenario {self.scenario.name!r}, "
                 f"dialect {dialect}",
                 f"-- criteria fingerprint {criteria_fingerprint(self.protocol, self.stage, self.scenario)}",
                 f"-- result rows (version {ROWS_VERSION}): {', '.join(mask_columns(self.words))}, n = patients;",
                 f"-- f<k> / u<k> = fail / unknown mask word k (signed BIGINT): bit j - {WORD_BITS}k "
                 f"of word k = leaf j:"]
        for j, rid in enumerate(self.leaves):
            na = self.not_assessable.get(rid)
            word, bit = divmod(j, WORD_BITS)
            lines.append(f"--   leaf {j:2d} = f{word}/u{word} bit {bit:2d} {rid}"
                         + (f"  (n/a: missing {', '.join(na)})" if na else ""))
        return "\n".join(lines)


def analyst_rules(scenario: Scenario | None) -> frozenset[str]:
    """IDs of the scenario's analyst-written rules (custom criteria and rewritten rules)."""
    scenario = scenario or Scenario()
    return frozenset({c.id for c in scenario.custom} | set(scenario.replace))


def scenario_protocol(protocol: Protocol, scenario: Scenario | None,
                      present: Iterable[str] | None = None) -> Protocol:
    """The protocol with the scenario's custom criteria and rewritten rules, validated by
    :mod:`kn026.rules.rulecheck` against the `present` columns (as :func:`kn026.core.analysis.engine_for`
    does for the DuckDB engine). Pass the protocol as loaded: extending twice is refused.
    """
    scenario = scenario or Scenario()
    if not scenario.custom and not scenario.replace:
        return protocol
    from kn026.core import custom

    extended, _ = custom.extend(protocol, CohortInfo(_present(present)), list(scenario.custom),
                                scenario.replace)
    return extended


def screening(protocol: Protocol, stage: int, scenario: Scenario | None = None,
              present: Iterable[str] | None = None, untrusted: Iterable[str] = ()) -> Screening:
    """Compile the stage's rules (scenario overrides, custom criteria and rewritten rules
    applied) into portable predicates. Analyst-written rules get their arithmetic in
    DOUBLE, as in the engine (``compile_rule(untrusted=True)``)."""
    scenario = scenario or Scenario()
    present_set = _present(present)
    protocol = scenario_protocol(protocol, scenario, present_set)
    untrusted = analyst_rules(scenario) | frozenset(untrusted)
    rules = stage_rules(protocol, stage)
    for rid in scenario.overrides:
        protocol.rule(rid)  # unknown IDs are errors, as in the engine
    predicates: dict[str, exp.Expression] = {}
    na: dict[str, list[str]] = {}
    for rule in rules:
        missing = missing_columns(rule, stage, present_set)
        if missing:
            na[rule.id] = missing
            continue
        sql = compile_rule(rule, stage, rule_values(rule, scenario.overrides), present_set, protocol,
                           untrusted=rule.id in untrusted)
        predicates[rule.id] = make_portable(sqlglot.parse_one(sql, read="duckdb"))
    return Screening(protocol, stage, scenario, present_set, tuple(r.id for r in rules), predicates, na)


def screening_sql(protocol: Protocol, stage: int, dialect: str = "duckdb", scenario: Scenario | None = None,
                  table: str = "cohort", by_site: bool = False, present: Iterable[str] | None = None,
                  pretty: bool = False) -> str:
    """The histogram query for `dialect` (see :class:`Screening`)."""
    return screening(protocol, stage, scenario, present).sql(dialect, table, by_site, pretty)


# --------------------------------------------------------------------------- results


def histogram_from_words(fail: list, unknown: list, count, site=None) -> Histogram:
    """A Histogram from the query's mask words (lists of integer arrays, 63 bits each) and
    counts; ``site``: site names (None for NULL), sorted into codes as in the engine."""
    fail = mw.repack(fail, WORD_BITS)
    unknown = mw.repack(unknown, WORD_BITS)
    count = np.asarray(count, dtype=np.int64)
    if site is None:
        return Histogram(fail, unknown, count)
    names = np.array([NO_SITE if s is None else str(s) for s in site], dtype=object)
    codes, uniques = pd.factorize(names, sort=True)
    return Histogram(fail, unknown, count, codes.astype(np.int32), tuple(str(u) for u in uniques))


def histogram_from_rows(rows: Iterable[Iterable], by_site: bool = False) -> Histogram:
    """A Histogram from query rows ``(f0, .., fW-1, u0, .., uW-1, n)`` or, with ``by_site``,
    ``(site_id, f0, .., n)``: any number W of 63-bit words (:data:`WORD_BITS`)."""
    rows = [tuple(r) for r in rows]
    off = 1 if by_site else 0
    widths = {len(r) for r in rows}
    if len(widths) > 1 or any((w - off - 1) % 2 or w - off - 1 < 2 for w in widths):
        raise ValueError(f"expected rows of {'site_id, ' if by_site else ''}f0.., u0.., n (as many f as u "
                         f"words), got rows of {sorted(widths)} values")
    words = (widths.pop() - off - 1) // 2 if rows else 1
    cols = [np.array([int(r[off + i]) for r in rows], dtype=object) for i in range(2 * words + 1)]
    if any(v < 0 or v >> WORD_BITS for c in cols[:-1] for v in c):
        raise ValueError(f"mask words must be whole numbers in 0 .. 2**{WORD_BITS} - 1 (the query's f, u columns)")
    ints = [c.astype(np.int64) if len(c) else np.zeros(0, np.int64) for c in cols]
    return histogram_from_words(ints[:words], ints[words:2 * words], ints[-1],
                                [r[0] for r in rows] if by_site else None)


def histogram_from_arrow(table, by_site: bool = False) -> Histogram:
    """A Histogram from an Arrow table with columns ``[site_id,] f0.., u0.., n``."""
    names = set(table.column_names)
    words = 0
    while f"f{words}" in names and f"u{words}" in names:
        words += 1
    if not words or "n" not in names:
        raise ValueError(f"expected columns f0.., u0.., n (query result version {ROWS_VERSION}), got "
                         f"{', '.join(table.column_names)}")

    def column(name):
        return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.int64)

    return histogram_from_words([column(f"f{k}") for k in range(words)], [column(f"u{k}") for k in range(words)],
                                column("n"), table.column("site_id").to_pylist() if by_site else None)


# --------------------------------------------------------------------------- fingerprints


def _digest(doc) -> str:
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _normal_sql(sql: str, where: str) -> str:
    return parse_predicate(sql, where).sql(dialect="duckdb")


def effective_overrides(protocol: Protocol, scenario: Scenario | None, stage: int | None = None) -> dict:
    """Scenario overrides that change a value (exact text), for rules of `stage` (or all)."""
    out: dict[str, dict[str, str]] = {}
    for rid, values in sorted((scenario or Scenario()).overrides.items()):
        rule = protocol.rule(rid)
        if stage is not None and stage not in rule.stages:
            continue
        changed = {p: format_number(rule.params[p].check(v, rid)) for p, v in sorted(values.items())
                   if rule.params[p].check(v, rid) != rule.params[p].default} if values else {}
        if changed:
            out[rid] = changed
    return out


def criteria_fingerprint(protocol: Protocol, stage: int, scenario: Scenario | None = None) -> str:
    """Hash of the stage's rule IDs, normalised SQL and parameter values after overrides.

    Derived values' SQL is included (they are part of the rules' meaning). Two
    histograms add up only when this fingerprint is the same.
    """
    scenario = scenario or Scenario()
    rules = stage_rules(protocol, stage)
    doc = {
        "protocol": protocol.name,
        "stage": stage,
        "derived": {name: _normal_sql(d.sql, name) for name, d in sorted(protocol.derived.items())},
        "rules": [[r.id, _normal_sql(r.sql[stage], r.id),
                   {p: format_number(v) for p, v in sorted(rule_values(r, scenario.overrides).items())}]
                  for r in rules],
    }
    return _digest(doc)


def scenario_fingerprint(protocol: Protocol, scenario: Scenario | None = None) -> str:
    """Hash of what a scenario changes: overrides that differ from defaults, disabled IDs and
    analyst-written rules. The funnel order is left out: it changes how a funnel is read, not
    which patients pass, so sites that sorted their funnels differently can still be merged."""
    scenario = scenario or Scenario()
    doc = {"overrides": effective_overrides(protocol, scenario), "disabled": sorted(scenario.disabled)}
    if scenario.custom or scenario.replace:  # keys only when used: older fingerprints stay valid
        doc["custom"] = [c.to_doc() for c in scenario.custom]
        doc["replace"] = {rid: _normal_sql(sql, rid) for rid, sql in sorted(scenario.replace.items())}
    return _digest(doc)


# --------------------------------------------------------------------------- engine look-alike


@dataclass
class CohortInfo:
    """What :mod:`kn026.core.analysis` reads of a cohort: its present columns (and size when known)."""

    present: frozenset[str]
    n: int | None = None
    table: str = "cohort"
    source: str = ""
    extra: tuple[str, ...] = ()  # non-dictionary columns: the portable query reads none


class QueryEngine:
    """An :class:`kn026.core.engine.Engine` look-alike whose histograms come from a SQL runner.

    ``run(sql, by_site)`` executes the emitted query (in ``dialect``) wherever the data
    is and returns a :class:`Histogram`. The attributes :mod:`kn026.core.analysis` uses
    (``protocol``, ``stage``, ``rules``, ``bit``, ``not_assessable``, ``cohort.present``,
    ``histogram(overrides, by_site)``) behave as the engine's, so ``analysis.run``,
    ``analysis.by_site`` and ``analysis.compare`` work unchanged. Per-patient views
    (screening log) need the DuckDB engine.
    """

    def __init__(self, protocol: Protocol, stage: int, present: Iterable[str] | None,
                 run: Callable[[str, bool], Histogram], dialect: str = "duckdb",
                 table: str = "cohort", source: str = "", untrusted: Iterable[str] = (),
                 rules_key: str | None = None):
        self.protocol, self.stage, self.dialect, self.table = protocol, stage, dialect, table
        self.untrusted = frozenset(untrusted)  # analyst-written rules (see kn026.core.custom)
        self.rules_key = rules_key  # the analyst rules this engine adds (kn026.core.analysis.rules_key)
        self.rules = stage_rules(protocol, stage)
        self.bit = {r.id: j for j, r in enumerate(self.rules)}
        self.cohort = CohortInfo(_present(present), None, table, source)
        self.not_assessable = {r.id: m for r in self.rules
                               if (m := missing_columns(r, stage, self.cohort.present))}
        self._run = run
        self._cache: dict = {}

    def with_protocol(self, protocol: Protocol, changed=(), untrusted=(), rules_key=None) -> QueryEngine:
        """The same data screened with another protocol (a scenario's custom criteria and
        rewritten rules, see :func:`kn026.core.analysis.engine_for`); `changed` is unused here:
        the emitted query evaluates every rule anew."""
        other = QueryEngine(protocol, self.stage, self.cohort.present, self._run, self.dialect,
                            self.table, self.cohort.source, untrusted, rules_key)
        other.cohort.n = self.cohort.n
        return other

    def _scenario(self, overrides: dict | None) -> Scenario:
        checked = {}
        for rid, values in (overrides or {}).items():
            if not values:
                continue
            rule = self.protocol.rule(rid)
            vals = rule_values(rule, {rid: values})
            if vals != rule.defaults():
                checked[rid] = vals
        return Scenario("overrides", overrides=checked)

    def sql(self, overrides: dict | None = None, by_site: bool = False) -> str:
        scen = self._scenario(overrides)
        return screening(self.protocol, self.stage, scen, self.cohort.present, self.untrusted).sql(
            self.dialect, self.table, by_site)

    def histogram(self, overrides: dict | None = None, by_site: bool = False) -> Histogram:
        scen = self._scenario(overrides)
        by_site = by_site and "site_id" in self.cohort.present
        key = (json.dumps(effective_overrides(self.protocol, scen), sort_keys=True), by_site)
        if key not in self._cache:
            sql = screening(self.protocol, self.stage, scen, self.cohort.present, self.untrusted).sql(
                self.dialect, self.table, by_site)
            hist = self._run(sql, by_site)
            if self.cohort.n is None and not scen.overrides:
                self.cohort.n = hist.total
            self._cache[key] = hist
        return self._cache[key]


def duckdb_engine(path: str | Path, protocol: Protocol, stage: int, con=None,
                  present: Iterable[str] | None = None) -> QueryEngine:
    """A :class:`QueryEngine` running the emitted DuckDB SQL straight on a Parquet file.

    No loading or validation: the file must already follow the dictionary (as
    ``python -m kn026 synth`` writes it). Used to check the portable query against
    the engine and as the DuckDB side of the Spark benchmark.
    """
    import duckdb

    con = con or duckdb.connect(":memory:")
    path = str(path)
    lit = "'" + path.replace("'", "''") + "'"
    con.execute(f"CREATE OR REPLACE VIEW cohort AS SELECT * FROM read_parquet({lit})")
    if present is None:
        cols = {r[0].lower() for r in con.execute("DESCRIBE cohort").fetchall()}
        present = cols & ALL_COLUMNS

    def run(sql: str, by_site: bool) -> Histogram:
        return histogram_from_arrow(con.cursor().sql(sql).to_arrow_table(), by_site)

    return QueryEngine(protocol, stage, present, run, "duckdb", "cohort", path)
