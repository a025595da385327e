"""The screening engine: compile rules to SQL and reduce patients to a mask histogram.

One pass over the cohort evaluates every rule in SQL three-valued logic (TRUE pass,
FALSE fail, NULL unknown); numpy packs the results into two 64-bit masks per patient
(bit j = rule j fails / is unknown) and a group index into the histogram. A histogram of distinct
(fail, unknown[, site]) masks with counts feeds every funnel computation, so
reordering or toggling criteria never touches patient rows. A changed threshold
re-evaluates only its own rule against the stored masks.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlglot
from sqlglot import exp

from kn026 import schema
from kn026.cohort import Cohort, cursor, q
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
                 protocol: Protocol, untrusted: bool = False) -> str:
    """The rule's predicate as DuckDB SQL with parameters bound as exact literals.

    Derived values are expanded; record-based columns read NULL as "none on record"
    unless the rule lists them in `null_is_unknown`; every absent column reads as NULL
    (unknown; an absent ULN then takes its default through the rule's COALESCE).
    Whether the rule is assessable at all is `missing_columns`' business. An
    `untrusted` rule (analyst-written, already allow-listed by kn026.rulecheck) also
    gets its arithmetic in DOUBLE so no value can make DuckDB raise an overflow.
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
            col = schema.BY_NAME.get(node.name)
            if col is None:  # an extra cohort column named by an analyst-written rule
                return exp.column(node.name, quoted=True)
            if node.name not in present:
                return exp.cast(exp.Null(), col.sql_type)
            ref = exp.column(node.name, quoted=True)
            if col.record_based and node.name not in rule.null_is_unknown:
                return exp.Coalesce(this=ref, expressions=[exp.Literal.number(int(col.record_none))])
            return ref
        return node

    tree = tree.transform(bind, copy=False)
    if untrusted:
        from kn026.rulecheck import harden

        tree = harden(tree)
    return tree.sql(dialect="duckdb")


def missing_columns(rule: Rule, stage: int, present: frozenset[str]) -> list[str]:
    """Why `rule` is not assessable on a cohort with columns `present` ([] when it is).

    A rule is assessable when one of its `requires` sets is fully present (dictionary
    section 1); otherwise the absent columns of every set are listed, so the message
    names what to bring. Decided from the columns alone, never from values.
    """
    sets = rule.requires.get(stage) or (rule.columns[stage],)
    if any(s <= present for s in sets):
        return []
    return sorted({c for s in sets for c in s if c not in present})


class Engine:
    """Screening of one cohort for one protocol stage; caches histograms per scenario."""

    def __init__(self, cohort: Cohort, protocol: Protocol, stage: int,
                 untrusted: frozenset[str] = frozenset()):
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
        self._masks_stored = False
        self._sites: tuple[np.ndarray, tuple[str, ...]] | None = None
        self.untrusted = frozenset(untrusted)  # analyst-written rules (see kn026.custom)
        self._always: frozenset[str] = frozenset()  # rules newer than the stored masks

    def with_protocol(self, protocol: Protocol, changed, untrusted=frozenset()) -> Engine:
        """An engine for `protocol` that reuses this engine's pass over the patients.

        `protocol` must keep this engine's rules in the same order (same bits) and may
        append rules; `changed` names the rules whose predicate differs (replaced or
        new). Those are re-evaluated on every histogram, like a threshold change.
        """
        other = Engine(self.cohort, protocol, self.stage, frozenset(untrusted))
        if [r.id for r in other.rules[:len(self.rules)]] != [r.id for r in self.rules]:
            raise ValueError("the extended protocol must keep the original rules in order")
        if not self._evaluated:
            self.evaluate()
        other._f, other._u, other._gid, other._base = self._f, self._u, self._gid, self._base
        other._evaluated, other._sites = True, self._sites
        other._always = frozenset(changed)
        return other

    # -- SQL -------------------------------------------------------------------
    def rule_sql(self, rule_id: str, values: dict | None = None) -> str:
        rule = self.protocol.rule(rule_id)
        vals = {**rule.defaults(), **(values or {})}
        return compile_rule(rule, self.stage, vals, self.cohort.present, self.protocol,
                            untrusted=rule_id in self.untrusted)

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
    def _arrow(self, rule_ids, overrides: dict):
        """One SQL pass evaluating only the predicates of `rule_ids` (assessable ones)."""
        ids = [rid for rid in rule_ids if rid not in self.not_assessable]
        if not ids:
            return ids, None
        cols = ", ".join(f"({self.rule_sql(rid, overrides.get(rid))}) AS {q(rid)}" for rid in ids)
        # a cursor of its own: another caller's unfinished result on `con` cannot block it
        cur = cursor(self.con)
        return ids, cur.sql(f"SELECT {cols} FROM {q(self.cohort.table)}").to_arrow_table()

    def _verdicts(self, rule_ids, overrides: dict) -> dict[str, np.ndarray]:
        """Per-patient verdict codes (0 pass, 1 fail, 2 unknown) of `rule_ids`."""
        ids, table = self._arrow(rule_ids, overrides)
        return {rid: _codes(table.column(rid)) for rid in ids}

    def evaluate(self) -> None:
        """One pass: every rule's verdict packed into per-patient masks (protocol defaults).

        DuckDB evaluates only the predicates; their Arrow bitmaps are combined bytewise
        (fail = NOT value AND valid, unknown = NOT valid) and spread into eight byte
        planes, which interleave into the 64-bit masks. Packing bits in SQL instead
        costs twice the predicates.
        """
        n = self.cohort.n
        fail_planes = np.zeros((8, n), np.uint8)
        unk_planes = np.zeros((8, n), np.uint8)
        ids, table = self._arrow([r.id for r in self.rules], {})
        for rid in ids:
            plane, shift = divmod(self.bit[rid], 8)
            fail01, unk01 = _bit_planes(table.column(rid))
            fail_planes[plane] |= fail01 << np.uint8(shift)
            if unk01 is not None:
                unk_planes[plane] |= unk01 << np.uint8(shift)
        del table
        self._f = np.ascontiguousarray(fail_planes.T).view("<u8").ravel()
        self._u = np.ascontiguousarray(unk_planes.T).view("<u8").ravel()
        self._gid, fail, unknown = _group(self._f, self._u)
        self._base = Histogram(fail, unknown, np.bincount(self._gid, minlength=len(fail)))
        self._evaluated = True
        self._masks_stored = False
        self._cache.clear()

    def _site_codes(self) -> tuple[np.ndarray, tuple[str, ...]]:
        if self._sites is None:
            raw = self.con.execute(f"SELECT COALESCE(CAST(site_id AS VARCHAR), '(no site)') AS s "
                                   f"FROM {q(self.cohort.table)}").fetchnumpy()["s"]
            codes, uniques = pd.factorize(np.asarray(raw, dtype=object), sort=True)
            self._sites = (codes.astype(np.int64), tuple(str(u) for u in uniques))
        return self._sites

    def histogram(self, overrides: dict | None = None, by_site: bool = False) -> Histogram:
        """Histogram of (fail, unknown[, site]) masks for the protocol or a scenario.

        `overrides` maps rule ID -> {param: value}. Only those rules are re-evaluated:
        each patient's group in the protocol histogram and the new verdict codes form
        a mixed-radix key, counted with one `bincount`, so a threshold change costs one
        rule and O(n) integer work, never a full re-evaluation.
        """
        overrides = {rid: self._check(rid, v) for rid, v in (overrides or {}).items() if v}
        overrides = {rid: v for rid, v in overrides.items()
                     if v != self.protocol.rule(rid).defaults() or rid in self._always}
        overrides.update({rid: self.protocol.rule(rid).defaults()
                          for rid in self._always if rid not in overrides})
        by_site = by_site and "site_id" in self.cohort.present
        key = (tuple(sorted((rid, tuple(sorted(v.items()))) for rid, v in overrides.items())), by_site)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if not self._evaluated:
            self.evaluate()
        hist = self._regroup(overrides, by_site)
        self._cache[key] = hist
        while len(self._cache) > 32:
            self._cache.popitem(last=False)
        return hist

    def _regroup(self, overrides: dict, by_site: bool) -> Histogram:
        """The protocol histogram regrouped by changed rules' new verdicts and/or by site."""
        if not overrides and not by_site:
            return self._base
        base_fail, base_unknown, key = self._base.fail, self._base.unknown, self._gid
        radix = len(base_fail)
        codes = self._verdicts(list(overrides), overrides)
        changed = [rid for rid in overrides if rid in codes]
        sites: tuple[str, ...] = ()
        n_sites = 1
        if by_site:
            site, sites = self._site_codes()
            n_sites = len(sites)
        if radix * 3 ** len(changed) * n_sites > 2**62:  # key would overflow: regroup the masks
            f, u = self._f, self._u
            for rid in changed:
                bit = np.uint64(1 << self.bit[rid])
                f = (f & ~bit) | np.where(codes[rid] == 1, bit, np.uint64(0))
                u = (u & ~bit) | np.where(codes[rid] == 2, bit, np.uint64(0))
            key, base_fail, base_unknown = _group(f, u)
            radix, changed = len(base_fail), []
        for rid in changed:
            key = key * 3 + codes[rid]
            radix *= 3
        if by_site:
            key = key * n_sites + site
            radix *= n_sites
        if radix <= max(4 * len(key), 1 << 22):
            counts = np.bincount(key, minlength=radix)
            keys = np.flatnonzero(counts)
            counts = counts[keys]
        else:
            group, keys = pd.factorize(key)
            counts = np.bincount(group, minlength=len(keys))
        site_col = None
        if by_site:
            keys, site_col = np.divmod(keys, n_sites)
        fail_bits = np.zeros(len(keys), np.uint64)
        unk_bits = np.zeros(len(keys), np.uint64)
        keep = np.uint64((2**64 - 1) & ~sum(1 << self.bit[rid] for rid in changed))
        for rid in reversed(changed):
            keys, v = np.divmod(keys, 3)
            bit = np.uint64(1 << self.bit[rid])
            fail_bits |= np.where(v == 1, bit, np.uint64(0))
            unk_bits |= np.where(v == 2, bit, np.uint64(0))
        fail = (base_fail[keys] & keep) | fail_bits
        unknown = (base_unknown[keys] & keep) | unk_bits
        if site_col is None:
            return Histogram(fail, unknown, counts)
        return Histogram(fail, unknown, counts, site_col.astype(np.int32), sites)

    def _store_masks(self) -> None:
        """Copy the per-patient masks into DuckDB (once) for SQL that needs them per row."""
        if not self._evaluated:
            self.evaluate()
        if not self._masks_stored:
            cur = cursor(self.con)  # its own registrations and results
            cur.register("_new_masks", pa.table({"f": self._f, "u": self._u}))
            cur.execute(f"CREATE OR REPLACE TABLE {q(self._masks)} AS SELECT f, u FROM _new_masks")
            cur.unregister("_new_masks")
            cur.close()
            self._masks_stored = True

    def masks_sql(self, overrides: dict | None = None) -> str:
        """SELECT of every cohort column plus the patient's fail / unknown masks `_f`, `_u`."""
        self._store_masks()
        overrides = {rid: self._check(rid, v) for rid, v in (overrides or {}).items() if v}
        overrides.update({rid: self.protocol.rule(rid).defaults()
                          for rid in self._always if rid not in overrides})
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


def _unpack(buffer, offset: int, n: int, invert: bool, mask=None) -> np.ndarray:
    bits = np.frombuffer(buffer, np.uint8)
    if invert:
        bits = ~bits
    if mask is not None:
        bits = bits & mask
    return np.unpackbits(bits, count=offset + n, bitorder="little")[offset:]


def _bit_planes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray | None]:
    """0/1 arrays (fail, unknown) of a boolean Arrow column, from its bitmaps bytewise."""
    fails, unks, any_null = [], [], False
    for chunk in column.chunks:
        n, off = len(chunk), chunk.offset
        validity, data = chunk.buffers()[0], chunk.buffers()[1]
        if validity is None or not chunk.null_count:
            fails.append(_unpack(data, off, n, invert=True))
            unks.append(None)
            continue
        valid = np.frombuffer(validity, np.uint8)
        fails.append(_unpack(data, off, n, invert=True, mask=valid))
        unks.append(_unpack(validity, off, n, invert=True))
        any_null = True
    fail = np.concatenate(fails) if len(fails) != 1 else fails[0]
    if not any_null:
        return fail, None
    unk = np.concatenate([u if u is not None else np.zeros(len(f), np.uint8)
                          for u, f in zip(unks, fails, strict=True)])
    return fail, unk


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    """Verdict codes of a boolean Arrow column: 0 pass (TRUE), 1 fail (FALSE), 2 unknown (NULL)."""
    fail, unk = _bit_planes(column)
    return fail if unk is None else fail + 2 * unk


_HASH = np.uint64(0x9E3779B97F4A7C15)


def _group(fail: np.ndarray, unknown: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group index per patient and the distinct (fail, unknown) pairs.

    A hash table (pandas factorize) on one 64-bit key is O(n); the key mixes both masks,
    so every group is checked against its first member and a collision falls back to
    an exact sort.
    """
    key = (fail * _HASH) ^ unknown
    gid, uniques = pd.factorize(key)
    first = np.empty(len(uniques), np.int64)
    first[gid[::-1]] = np.arange(len(gid) - 1, -1, -1)
    g_fail, g_unknown = fail[first], unknown[first]
    if np.array_equal(g_fail[gid], fail) and np.array_equal(g_unknown[gid], unknown):
        return gid.astype(np.int64, copy=False), g_fail, g_unknown
    pairs, gid = np.unique(np.stack([fail, unknown], axis=1), axis=0, return_inverse=True)
    return gid.reshape(-1).astype(np.int64), pairs[:, 0].copy(), pairs[:, 1].copy()


def sql_of(tree: exp.Expression) -> str:
    """Render a sqlglot tree as DuckDB SQL (used by tests and the CLI)."""
    return tree.sql(dialect="duckdb")


__all__ = ["Engine", "Verdict", "compile_rule", "missing_columns", "sqlglot"]
