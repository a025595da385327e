"""The screening engine: compile rules to SQL and reduce patients to a mask histogram.

One pass over the cohort evaluates every rule in SQL three-valued logic (TRUE pass,
FALSE fail, NULL unknown) and packs the results into two 64-bit masks per patient
(bit j = rule j fails / is unknown), kept in table `_masks`. A histogram of distinct
(fail, unknown[, site]) masks with counts feeds every funnel computation, so
reordering or toggling criteria never touches patient rows. A changed threshold
re-evaluates only its own rule against the stored masks.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import sqlglot
from sqlglot import exp

from kn026 import schema
from kn026.cohort import Cohort, q
from kn026.criteria import Protocol, Rule, format_number, parse_predicate
from kn026.funnel import Histogram

EXACT_DECIMALS = 9  # both sides of a computed comparison are rounded to this many decimals
_ARITH = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Pow, exp.Mod)
_COMPARE = (exp.GT, exp.GTE, exp.LT, exp.LTE, exp.EQ, exp.NEQ)
MASKS = "_masks"


@dataclass(frozen=True)
class Verdict:
    """Verdict codes of one rule for one patient."""

    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"
    NA = "n/a"


def _literal(value: Decimal) -> exp.Expression:
    text = format_number(value)
    node = exp.Literal.number(text.lstrip("-"))
    return exp.Neg(this=node) if text.startswith("-") else node


def _exact(tree: exp.Expression) -> exp.Expression:
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
        if isinstance(node, _COMPARE):
            for side in ("this", "expression"):
                if node.args[side].find(*_ARITH):
                    scaled = exp.Mul(this=exp.Paren(this=node.args[side].copy()), expression=scale.copy())
                    node.set(side, exp.Div(this=exp.Round(this=scaled), expression=scale.copy()))
        return node

    return tree.transform(visit, copy=True)


def compile_rule(rule: Rule, stage: int, values: dict[str, Decimal], present: frozenset[str],
                 protocol: Protocol) -> str:
    """The rule's predicate as DuckDB SQL with parameters bound as exact literals.

    Derived values are expanded, record-based columns read NULL as "none on record",
    and absent optional columns (ULNs, overrides) read as NULL.
    """
    tree = parse_predicate(rule.sql[stage], rule.id)
    derived = {name: parse_predicate(d.sql, name) for name, d in protocol.derived.items()}

    def expand(node):
        if isinstance(node, exp.Column) and node.name in derived:
            return exp.Paren(this=derived[node.name].copy())
        return node

    tree = _exact(tree.transform(expand, copy=False))

    def bind(node):
        if isinstance(node, exp.Placeholder):
            return _literal(values[node.name])
        if isinstance(node, exp.Column):
            col = schema.BY_NAME[node.name]
            if node.name not in present:
                return exp.cast(exp.Null(), col.sql_type)
            ref = exp.column(node.name, quoted=True)
            if col.record_based:
                return exp.Coalesce(this=ref, expressions=[exp.Literal.number(int(col.record_none))])
            return ref
        return node

    tree = tree.transform(bind, copy=False)
    return tree.sql(dialect="duckdb")


def missing_columns(rule: Rule, stage: int, present: frozenset[str]) -> list[str]:
    """Required columns of `rule` absent from the cohort (non-empty: the rule is n/a)."""
    return sorted(c for c in rule.columns[stage]
                  if c not in present and not schema.BY_NAME[c].optional)


class Engine:
    """Screening of one cohort for one protocol stage; caches histograms per scenario."""

    def __init__(self, cohort: Cohort, protocol: Protocol, stage: int):
        if stage not in protocol.stages:
            raise ValueError(f"stage {stage} is not a stage of {protocol.name}; "
                             f"choose one of {sorted(protocol.stages)}")
        self.cohort, self.protocol, self.stage = cohort, protocol, stage
        self.con = cohort.con
        self.rules: tuple[Rule, ...] = tuple(r for r in protocol.rules if stage in r.stages)
        self.bit = {r.id: j for j, r in enumerate(self.rules)}
        self.not_assessable = {r.id: m for r in self.rules
                               if (m := missing_columns(r, stage, cohort.present))}
        self._masks = f"{MASKS}_{cohort.table}_{stage}"
        self._cache: OrderedDict = OrderedDict()
        self._evaluated = False

    # -- SQL -------------------------------------------------------------------
    def rule_sql(self, rule_id: str, values: dict | None = None) -> str:
        rule = self.protocol.rule(rule_id)
        vals = {**rule.defaults(), **(values or {})}
        return compile_rule(rule, self.stage, vals, self.cohort.present, self.protocol)

    def _bits_sql(self, rule_ids, overrides: dict) -> tuple[str, str]:
        """SQL for the fail and unknown mask contributions of `rule_ids`."""
        fails, unknowns = [], []
        for rid in rule_ids:
            if rid in self.not_assessable:
                continue
            bit = 1 << self.bit[rid]
            pred = self.rule_sql(rid, overrides.get(rid))
            fails.append(f"CASE WHEN NOT ({pred}) THEN {bit}::UBIGINT ELSE 0::UBIGINT END")
            unknowns.append(f"CASE WHEN ({pred}) IS NULL THEN {bit}::UBIGINT ELSE 0::UBIGINT END")
        return (" | ".join(fails) or "0::UBIGINT"), (" | ".join(unknowns) or "0::UBIGINT")

    @property
    def na_mask(self) -> int:
        return sum(1 << self.bit[rid] for rid in self.not_assessable)

    # -- evaluation --------------------------------------------------------------
    def evaluate(self) -> None:
        """One pass: every rule's verdict packed into per-patient masks (protocol defaults)."""
        fail, unk = self._bits_sql([r.id for r in self.rules], {})
        self.con.execute(f"CREATE OR REPLACE TABLE {q(self._masks)} AS "
                         f"SELECT {fail} AS f, {unk} AS u FROM {q(self.cohort.table)}")
        self._evaluated = True
        self._cache.clear()

    def histogram(self, overrides: dict | None = None, by_site: bool = False) -> Histogram:
        """Histogram of (fail, unknown[, site]) masks for the protocol or a scenario.

        `overrides` maps rule ID -> {param: value}; only those rules are re-evaluated,
        against the stored masks, so a threshold change costs one rule, not all.
        """
        overrides = {rid: self._check(rid, v) for rid, v in (overrides or {}).items() if v}
        overrides = {rid: v for rid, v in overrides.items()
                     if v != self.protocol.rule(rid).defaults()}
        key = (tuple(sorted((rid, tuple(sorted(v.items()))) for rid, v in overrides.items())), by_site)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if not self._evaluated:
            self.evaluate()
        by_site = by_site and "site_id" in self.cohort.present
        site = ", c.site_id AS s" if by_site else ""
        if overrides:
            keep = ~sum(1 << self.bit[rid] for rid in overrides) & (2**64 - 1)
            fail, unk = self._bits_sql(overrides, overrides)
            sql = (f"SELECT (m.f & {keep}::UBIGINT) | ({fail}) AS f, (m.u & {keep}::UBIGINT) | ({unk}) AS u"
                   f"{site}, count(*) AS n FROM {q(self.cohort.table)} c POSITIONAL JOIN {q(self._masks)} m "
                   f"GROUP BY ALL")
        elif by_site:
            sql = (f"SELECT m.f AS f, m.u AS u{site}, count(*) AS n FROM {q(self.cohort.table)} c "
                   f"POSITIONAL JOIN {q(self._masks)} m GROUP BY ALL")
        else:
            sql = f"SELECT f, u, count(*) AS n FROM {q(self._masks)} GROUP BY ALL"
        cols = self.con.execute(sql).fetchnumpy()
        hist = _to_histogram(cols, by_site)
        self._cache[key] = hist
        while len(self._cache) > 32:
            self._cache.popitem(last=False)
        return hist

    def masks_sql(self, overrides: dict | None = None) -> str:
        """SELECT of every cohort column plus the patient's fail / unknown masks `_f`, `_u`."""
        if not self._evaluated:
            self.evaluate()
        overrides = {rid: self._check(rid, v) for rid, v in (overrides or {}).items() if v}
        fail, unk = "m.f", "m.u"
        if overrides:
            keep = ~sum(1 << self.bit[rid] for rid in overrides) & (2**64 - 1)
            fsql, usql = self._bits_sql(overrides, overrides)
            fail, unk = f"(m.f & {keep}::UBIGINT) | ({fsql})", f"(m.u & {keep}::UBIGINT) | ({usql})"
        return (f"SELECT c.*, {fail} AS _f, {unk} AS _u FROM {q(self.cohort.table)} c "
                f"POSITIONAL JOIN {q(self._masks)} m")

    def _check(self, rule_id: str, values: dict) -> dict[str, Decimal]:
        rule = self.protocol.rule(rule_id)
        out = {}
        for name, value in values.items():
            if name not in rule.params:
                raise ValueError(f"{rule_id} has no parameter {name!r}; "
                                 f"its parameters: {', '.join(rule.params) or 'none'}")
            out[name] = rule.params[name].check(value, rule_id)
        return {**rule.defaults(), **out}

    # -- per-patient verdicts -------------------------------------------------------
    def verdicts_sql(self, overrides: dict | None = None, where: str = "") -> str:
        """SELECT of patient_id and one pass/fail/unknown/n/a column per rule."""
        overrides = {rid: self._check(rid, v) for rid, v in (overrides or {}).items()}
        cols = []
        for r in self.rules:
            if r.id in self.not_assessable:
                cols.append(f"'n/a' AS {q(r.id)}")
                continue
            pred = self.rule_sql(r.id, overrides.get(r.id))
            cols.append(f"CASE WHEN ({pred}) THEN 'pass' WHEN NOT ({pred}) THEN 'fail' "
                        f"ELSE 'unknown' END AS {q(r.id)}")
        return f"SELECT patient_id, {', '.join(cols)} FROM {q(self.cohort.table)} {where}"


def _to_histogram(cols: dict, by_site: bool) -> Histogram:
    fail = np.asarray(cols["f"], dtype=np.uint64)
    unknown = np.asarray(cols["u"], dtype=np.uint64)
    count = np.asarray(cols["n"], dtype=np.int64)
    if not by_site:
        return Histogram(fail, unknown, count)
    raw = cols["s"]
    labels = np.array(["(no site)" if (s is None or s is np.ma.masked) else str(s) for s in
                       (raw.tolist() if hasattr(raw, "tolist") else raw)], dtype=object)
    sites, codes = np.unique(labels, return_inverse=True)
    return Histogram(fail, unknown, count, codes.astype(np.int32), tuple(sites.tolist()))


def sql_of(tree: exp.Expression) -> str:
    """Render a sqlglot tree as DuckDB SQL (used by tests and the CLI)."""
    return tree.sql(dialect="duckdb")


__all__ = ["Engine", "Verdict", "compile_rule", "missing_columns", "sqlglot"]
