"""The screening engine: compile rules to SQL and reduce patients to a mask histogram.

One pass over the cohort evaluates every rule in SQL three-valued logic (TRUE pass,
FALSE fail, NULL unknown); numpy packs the results, one Arrow record batch at a time,
into two masks per patient (bit j = rule j fails / is unknown) of as many 64-bit words
as the rules need (:mod:`kn026.base.masks`), and a group index into the histogram. A
histogram of distinct (fail, unknown[, site]) masks with counts feeds every funnel
computation, so reordering or toggling criteria never touches patient rows. A changed
threshold re-evaluates only its own rule against the stored masks.

In SQL (:meth:`Engine.masks_sql`) the masks are the UBIGINT columns ``_f0, _f1, ...``
and ``_u0, _u1, ...`` (word k = bits 64k .. 64k + 63); :func:`meets_sql` writes a test
against a Python-int mask and :func:`row_masks` reads a row's masks back as ints.
"""

from __future__ import annotations

import functools
import itertools
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlglot
from sqlglot import exp

from kn026.base import masks as mw
from kn026.base import schema, sqlpass
from kn026.base.table import Cohort, cursor, q
from kn026.core.criteria import Protocol, Rule, format_number, parse_predicate
from kn026.core.funnel import Histogram

MASKS = "_masks"
BATCH_ROWS = 1 << 20  # rows per Arrow record batch in the full pass (bounds its memory)
KEEP_MASK_TABLES = 4  # per-patient mask tables kept per cohort table (oldest dropped)
_SERIAL = itertools.count(1)
_STORED: dict[tuple[int, str], list[str]] = {}  # (id(con), cohort table) -> mask tables, oldest first


def _literal(text: str) -> exp.Expression:
    node = exp.Literal.number(text.lstrip("-"))
    return exp.Neg(this=node) if text.startswith("-") else node


def compile_rule(rule: Rule, stage: int, values: dict[str, Decimal], present: frozenset[str],
                 protocol: Protocol, untrusted: bool = False) -> str:
    """The rule's predicate as DuckDB SQL with parameters bound as exact literals.

    Derived values are expanded; record-based columns read NULL as "none on record"
    unless the rule lists them in `null_is_unknown`; every absent column reads as NULL
    (unknown; an absent ULN then takes its default through the rule's COALESCE).
    Whether the rule is assessable at all is `missing_columns`' business. An
    `untrusted` rule (analyst-written, already allow-listed by kn026.rules.rulecheck) also
    gets its arithmetic in DOUBLE so no value can make DuckDB raise an overflow.

    The result is a string determined by the texts it is built from, so it is memoised
    per process (`_compiled`): parsing is most of the cost of a full pass on a small
    cohort, and every new engine (app session, stage, scenario) compiles the same rules.
    """
    derived = tuple((name, d.sql) for name, d in protocol.derived.items())
    bound = tuple(sorted((name, format_number(v)) for name, v in values.items()))
    return _compiled(rule.id, rule.sql[stage], bound, frozenset(present), derived, rule.null_is_unknown,
                     bool(untrusted))


@functools.lru_cache(maxsize=4096)
def _compiled(rule_id: str, sql: str, values: tuple[tuple[str, str], ...], present: frozenset[str],
              derived_sql: tuple[tuple[str, str], ...], null_is_unknown: frozenset[str], untrusted: bool) -> str:
    """`compile_rule` from hashable texts only (parameters as exact number texts)."""
    tree = parse_predicate(sql, rule_id)
    derived = {name: parse_predicate(text, name) for name, text in derived_sql}
    literal = dict(values)

    def expand(node):
        if isinstance(node, exp.Column) and node.name in derived:
            return exp.Paren(this=derived[node.name].copy())
        return node

    tree = sqlpass.exact(tree.transform(expand, copy=False))

    def bind(node):
        if isinstance(node, exp.Placeholder):
            return _literal(literal[node.name])
        if isinstance(node, exp.Column):
            col = schema.BY_NAME.get(node.name)
            if col is None:  # an extra cohort column named by an analyst-written rule
                return exp.column(node.name, quoted=True)
            if node.name not in present:
                return exp.cast(exp.Null(), col.sql_type)
            ref = exp.column(node.name, quoted=True)
            if col.record_based and node.name not in null_is_unknown:
                return exp.Coalesce(this=ref, expressions=[exp.Literal.number(int(col.record_none))])
            return ref
        return node

    tree = tree.transform(bind, copy=False)
    if untrusted:
        tree = sqlpass.harden(tree)
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


@dataclass(frozen=True)
class EvaluatedPass:
    """An engine's pass over its patients (`Engine.evaluated_pass`): read-only masks, groups,
    the protocol histogram and site codes, for the protocol, stage, rows and columns it was made for."""

    protocol: Protocol
    stage: int
    n: int
    present: frozenset[str]
    fail: np.ndarray
    unknown: np.ndarray
    gid: np.ndarray
    base: Histogram
    sites: tuple[np.ndarray, tuple[str, ...]] | None


class Engine:
    """Screening of one cohort for one protocol stage; caches histograms per scenario."""

    def __init__(self, cohort: Cohort, protocol: Protocol, stage: int,
                 untrusted: frozenset[str] = frozenset(), rules_key: str | None = None):
        if stage not in protocol.stages:
            raise ValueError(f"stage {stage} is not a stage of {protocol.name}; "
                             f"choose one of {sorted(protocol.stages)}")
        self.cohort, self.protocol, self.stage = cohort, protocol, stage
        self.con = cohort.con
        self.rules: tuple[Rule, ...] = tuple(r for r in protocol.rules if stage in r.stages)
        self.bit = {r.id: j for j, r in enumerate(self.rules)}
        self.width = mw.width_for(len(self.rules))  # 64-bit words per mask
        self.not_assessable = {r.id: m for r in self.rules
                               if (m := missing_columns(r, stage, cohort.present))}
        self._masks = f"{MASKS}_{cohort.table}_{stage}_{next(_SERIAL)}"
        self._cache: OrderedDict = OrderedDict()
        self._evaluated = False
        self._masks_stored = False
        self._sites: tuple[np.ndarray, tuple[str, ...]] | None = None
        self.untrusted = frozenset(untrusted)  # analyst-written rules (see kn026.core.custom)
        self.rules_key = rules_key  # the analyst rules this engine adds (kn026.core.analysis.rules_key)
        self._pending: frozenset[str] = frozenset()  # rules newer than the masks (see with_protocol)

    def with_protocol(self, protocol: Protocol, changed, untrusted=frozenset(), rules_key=None) -> Engine:
        """An engine for `protocol` that reuses this engine's pass over the patients.

        `protocol` must keep this engine's rules in the same order (same bits) and may
        append rules; `changed` names the rules whose predicate differs (replaced or
        new). On first use the new engine evaluates only those and folds them into its
        own copy of the masks (widened if the new rules need more words), so later
        threshold changes cost what they cost without them. Rules untrusted here stay
        untrusted there (an uploaded protocol's, kn026.core.protocol_files).
        """
        other = Engine(self.cohort, protocol, self.stage, frozenset(untrusted) | self.untrusted, rules_key)
        if [r.id for r in other.rules[:len(self.rules)]] != [r.id for r in self.rules]:
            raise ValueError("the extended protocol must keep the original rules in order")
        self._ready()
        other._f, other._u, other._gid, other._base = self._f, self._u, self._gid, self._base
        other._evaluated, other._sites = True, self._sites
        other._pending = frozenset(changed)
        return other

    def evaluated_pass(self) -> EvaluatedPass:
        """This engine's pass over the patients (evaluated first if need be), read-only, to be
        given to engines of other connections holding the same rows: see `take_pass`."""
        self._ready()
        if "site_id" in self.cohort.present:
            self._site_codes()
        arrays = [self._f, self._u, self._gid, self._base.fail, self._base.unknown, self._base.count]
        for arr in arrays + ([self._sites[0]] if self._sites else []):
            arr.flags.writeable = False  # shared: nobody may change it in place (copies are made)
        return EvaluatedPass(self.protocol, self.stage, self.cohort.n, self.cohort.present, self._f, self._u,
                             self._gid, self._base, self._sites)

    def take_pass(self, done: EvaluatedPass) -> None:
        """Use `done` (`evaluated_pass` of an engine over the same rows in the same order, with the
        same protocol, stage and columns) instead of evaluating again. The app gives every session
        the built-in cohort's pass this way: a session's own connection, no evaluation."""
        if (done.protocol is not self.protocol or done.stage != self.stage or done.n != self.cohort.n
                or done.present != self.cohort.present):
            raise ValueError("the evaluated pass is for another cohort, protocol or stage")
        self._f, self._u, self._gid, self._base = done.fail, done.unknown, done.gid, done.base
        self._sites, self._evaluated, self._pending = done.sites, True, frozenset()
        self._masks_stored = False
        self._cache.clear()

    # -- SQL -------------------------------------------------------------------
    def rule_sql(self, rule_id: str, values: dict | None = None) -> str:
        rule = self.protocol.rule(rule_id)
        vals = {**rule.defaults(), **(values or {})}
        return compile_rule(rule, self.stage, vals, self.cohort.present, self.protocol,
                            untrusted=rule_id in self.untrusted)

    def _bits_sql(self, rule_ids, overrides: dict) -> tuple[list[str], list[str]]:
        """SQL per mask word for the fail and unknown contributions of `rule_ids`."""
        fails: list[list[str]] = [[] for _ in range(self.width)]
        unknowns: list[list[str]] = [[] for _ in range(self.width)]
        for rid in rule_ids:
            if rid in self.not_assessable:
                continue
            word, bit = divmod(self.bit[rid], mw.WORD)
            pred = self.rule_sql(rid, overrides.get(rid))
            fails[word].append(f"CASE WHEN NOT ({pred}) THEN {1 << bit}::UBIGINT ELSE 0::UBIGINT END")
            unknowns[word].append(f"CASE WHEN ({pred}) IS NULL THEN {1 << bit}::UBIGINT ELSE 0::UBIGINT END")
        return ([" | ".join(t) or "0::UBIGINT" for t in fails],
                [" | ".join(t) or "0::UBIGINT" for t in unknowns])

    # -- evaluation --------------------------------------------------------------
    def _select(self, rule_ids, overrides: dict) -> tuple[list[str], str | None]:
        """The assessable ones of `rule_ids` and one SELECT evaluating their predicates."""
        ids = [rid for rid in rule_ids if rid not in self.not_assessable]
        if not ids:
            return ids, None
        cols = ", ".join(f"({self.rule_sql(rid, overrides.get(rid))}) AS {q(rid)}" for rid in ids)
        return ids, f"SELECT {cols} FROM {q(self.cohort.table)}"

    def _verdicts(self, rule_ids, overrides: dict) -> dict[str, np.ndarray]:
        """Per-patient verdict codes (0 pass, 1 fail, 2 unknown) of `rule_ids`."""
        ids, sql = self._select(rule_ids, overrides)
        if sql is None:
            return {}
        # a cursor of its own: another caller's unfinished result on `con` cannot block it
        table = cursor(self.con).sql(sql).to_arrow_table()
        return {rid: _codes(table.column(rid)) for rid in ids}

    def _pack(self, rule_ids, fail: np.ndarray, unknown: np.ndarray) -> None:
        """OR the verdict bits of `rule_ids` (protocol defaults) into the ``(W, n)`` masks.

        DuckDB evaluates only the predicates and streams them as Arrow record batches of
        BATCH_ROWS patients, so memory stays bounded by a batch however large the cohort.
        Per batch the Arrow bitmaps are combined bytewise (fail = NOT value AND valid,
        unknown = NOT valid) into eight byte planes per touched word, which interleave into
        that word's 64-bit masks. Packing bits in SQL instead costs twice the predicates.
        """
        ids, sql = self._select(rule_ids, {})
        if sql is None:
            return
        words = sorted({self.bit[rid] // mw.WORD for rid in ids})
        plane_of = {}
        for rid in ids:
            word, rest = divmod(self.bit[rid], mw.WORD)
            byte, shift = divmod(rest, 8)
            plane_of[rid] = (8 * words.index(word) + byte, np.uint8(shift))
        start = 0
        for batch in cursor(self.con).sql(sql).to_arrow_reader(BATCH_ROWS):
            rows = batch.num_rows
            fail_planes = np.zeros((8 * len(words), rows), np.uint8)
            unk_planes = np.zeros((8 * len(words), rows), np.uint8)
            for i, rid in enumerate(ids):
                plane, shift = plane_of[rid]
                fail01, unk01 = _bit_planes(batch.column(i))
                fail_planes[plane] |= fail01 << shift
                if unk01 is not None:
                    unk_planes[plane] |= unk01 << shift
            for j, word in enumerate(words):
                for planes, out in ((fail_planes, fail), (unk_planes, unknown)):
                    out[word, start:start + rows] |= (
                        np.ascontiguousarray(planes[8 * j: 8 * j + 8].T).view("<u8").ravel())
            start += rows
        if start != fail.shape[1]:
            raise RuntimeError(f"the screening pass returned {start} rows for {fail.shape[1]} patients")

    def evaluate(self) -> None:
        """One pass: every rule's verdict packed into per-patient masks (protocol defaults)."""
        n = self.cohort.n
        self._f = np.zeros((self.width, n), np.uint64)
        self._u = np.zeros((self.width, n), np.uint64)
        self._pack([r.id for r in self.rules], self._f, self._u)
        self._set_base()
        self._evaluated = True
        self._pending = frozenset()

    def _set_base(self) -> None:
        self._gid, fail, unknown = _group(self._f, self._u)
        self._base = Histogram(fail, unknown, np.bincount(self._gid, minlength=fail.shape[1]))
        self._masks_stored = False
        self._cache.clear()

    def _absorb(self) -> None:
        """Evaluate the rules newer than the masks and fold them into a copy (widened)."""
        changed, self._pending = self._pending, frozenset()
        clear = mw.split(sum(1 << self.bit[rid] for rid in changed if rid in self.bit), self.width)
        f, u = (mw.widen(m, self.width).copy() for m in (self._f, self._u))
        for k in np.flatnonzero(clear):
            f[k] &= ~clear[k]
            u[k] &= ~clear[k]
        self._pack([r.id for r in self.rules if r.id in changed], f, u)
        self._f, self._u = f, u
        self._set_base()

    def _ready(self) -> None:
        """Masks up to date: the full pass on first use, then any newer rules folded in."""
        if not self._evaluated:
            self.evaluate()
        if self._pending or len(self._f) < self.width:
            self._absorb()

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
        overrides = {rid: v for rid, v in overrides.items() if v != self.protocol.rule(rid).defaults()}
        by_site = by_site and "site_id" in self.cohort.present
        key = (tuple(sorted((rid, tuple(sorted(v.items()))) for rid, v in overrides.items())), by_site)
        self._ready()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
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
        radix = base_fail.shape[1]
        codes = self._verdicts(list(overrides), overrides)
        changed = [rid for rid in overrides if rid in codes]
        sites: tuple[str, ...] = ()
        n_sites = 1
        if by_site:
            site, sites = self._site_codes()
            n_sites = len(sites)
        if radix * 3 ** len(changed) * n_sites > 2**62:  # key would overflow: regroup the masks
            f, u = self._f.copy(), self._u.copy()
            for rid in changed:
                word, bit = divmod(self.bit[rid], mw.WORD)
                bit = np.uint64(1 << bit)
                f[word] = (f[word] & ~bit) | np.where(codes[rid] == 1, bit, np.uint64(0))
                u[word] = (u[word] & ~bit) | np.where(codes[rid] == 2, bit, np.uint64(0))
            key, base_fail, base_unknown = _group(f, u)
            radix, changed = base_fail.shape[1], []
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
        fail_bits = np.zeros((self.width, len(keys)), np.uint64)
        unk_bits = np.zeros((self.width, len(keys)), np.uint64)
        keep = mw.split(((1 << (mw.WORD * self.width)) - 1)
                        & ~sum(1 << self.bit[rid] for rid in changed), self.width)
        for rid in reversed(changed):
            keys, v = np.divmod(keys, 3)
            word, bit = divmod(self.bit[rid], mw.WORD)
            bit = np.uint64(1 << bit)
            fail_bits[word] |= np.where(v == 1, bit, np.uint64(0))
            unk_bits[word] |= np.where(v == 2, bit, np.uint64(0))
        fail = (mw.take(base_fail, keys) & keep[:, None]) | fail_bits
        unknown = (mw.take(base_unknown, keys) & keep[:, None]) | unk_bits
        if site_col is None:
            return Histogram(fail, unknown, counts)
        return Histogram(fail, unknown, counts, site_col.astype(np.int32), sites)

    def _store_masks(self) -> None:
        """Copy the per-patient masks into DuckDB (once) for SQL that needs them per row.

        Each engine has its own table (`_masks_<cohort>_<stage>_<serial>`); at most
        KEEP_MASK_TABLES are kept per cohort table, the oldest dropped, so a query built
        from a dropped table fails loudly instead of reading another engine's masks.
        """
        self._ready()
        stored = _STORED.setdefault((id(self.con), self.cohort.table), [])
        if self._masks_stored and self._masks in stored:
            return
        cur = cursor(self.con)  # its own registrations and results
        cols = {**{f"f{k}": self._f[k] for k in range(self.width)},
                **{f"u{k}": self._u[k] for k in range(self.width)}}
        cur.register("_new_masks", pa.table(cols))
        cur.execute(f"CREATE OR REPLACE TABLE {q(self._masks)} AS SELECT * FROM _new_masks")
        cur.unregister("_new_masks")
        if self._masks in stored:
            stored.remove(self._masks)
        stored.append(self._masks)
        while len(stored) > KEEP_MASK_TABLES:
            cur.execute(f"DROP TABLE IF EXISTS {q(stored.pop(0))}")
        cur.close()
        self._masks_stored = True

    def masks_sql(self, overrides: dict | None = None) -> str:
        """SELECT of every cohort column plus the patient's fail / unknown mask words
        `_f0`, `_f1`, ... and `_u0`, `_u1`, ... (UBIGINT; see :func:`meets_sql`)."""
        self._store_masks()
        overrides = {rid: self._check(rid, v) for rid, v in (overrides or {}).items() if v}
        fail = [f"m.f{k}" for k in range(self.width)]
        unk = [f"m.u{k}" for k in range(self.width)]
        if overrides:
            keep = mw.split(((1 << (mw.WORD * self.width)) - 1)
                            & ~sum(1 << self.bit[rid] for rid in overrides), self.width)
            fsql, usql = self._bits_sql(overrides, overrides)
            fail = [f"({c} & {int(m)}::UBIGINT) | ({t})" for c, m, t in zip(fail, keep, fsql, strict=True)]
            unk = [f"({c} & {int(m)}::UBIGINT) | ({t})" for c, m, t in zip(unk, keep, usql, strict=True)]
        cols = [f"{sql} AS _f{k}" for k, sql in enumerate(fail)] + [f"{sql} AS _u{k}" for k, sql in enumerate(unk)]
        return (f"SELECT c.*, {', '.join(cols)} FROM {q(self.cohort.table)} c "
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


def _bit_planes(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray | None]:
    """0/1 arrays (fail, unknown) of a boolean Arrow column, from its bitmaps bytewise."""
    fails, unks, any_null = [], [], False
    for chunk in (column.chunks if isinstance(column, pa.ChunkedArray) else [column]):
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


def _group(fail: np.ndarray, unknown: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group index per patient and the distinct (fail, unknown) pairs of ``(W, n)`` masks.

    A hash table (pandas factorize) on one 64-bit key mixing every word is O(n); every
    group is checked against its first member and a collision falls back to an exact
    sort (:func:`kn026.base.masks.group_rows`).
    """
    gid, first = mw.group_rows([*fail, *unknown])
    return gid, mw.take(fail, first), mw.take(unknown, first)


def _word_test(prefixes: tuple[str, ...], word: int, value: int) -> str:
    cols = " | ".join(f"{p}{word}" for p in prefixes)
    return f"(({cols}) & {value}::UBIGINT) <> 0"


def meets_sql(mask: int, *prefixes: str) -> str:
    """SQL that is TRUE when the OR of the mask columns `prefixes` (``"_f"``, ``"_u"``; words
    ``_f0``, ``_f1``, ... as in :meth:`Engine.masks_sql`) shares a bit with `mask` (a Python
    int of any size); ``FALSE`` for an empty mask. Wrap in ``NOT (...)`` for "no bit"."""
    mask = int(mask)
    terms = []
    word = 0
    while mask:
        if mask & (2**mw.WORD - 1):
            terms.append(_word_test(prefixes, word, mask & (2**mw.WORD - 1)))
        mask >>= mw.WORD
        word += 1
    return "(" + (" OR ".join(terms) or "FALSE") + ")"


def mask_columns(width: int) -> list[str]:
    """The mask word columns of :meth:`Engine.masks_sql`: ``_f0 .. _f{W-1}, _u0 .. _u{W-1}``."""
    return [f"_f{k}" for k in range(width)] + [f"_u{k}" for k in range(width)]


def row_masks(row, width: int) -> tuple[int, int]:
    """(fail, unknown) of one row of :meth:`Engine.masks_sql` (a dict or a pandas row) as ints."""
    fail = sum(int(row[f"_f{k}"]) << (mw.WORD * k) for k in range(width))
    unknown = sum(int(row[f"_u{k}"]) << (mw.WORD * k) for k in range(width))
    return fail, unknown


__all__ = ["Engine", "compile_rule", "mask_columns", "meets_sql", "missing_columns",
           "row_masks", "sqlglot"]
