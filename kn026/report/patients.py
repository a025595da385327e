"""Patient-level views built on the engine's public API: filters, drill-down, cohort profile.

Everything here is SQL over `Engine.masks_sql()` (the cohort plus each patient's fail /
unknown bitmasks) or over the cohort table, so no rule is evaluated twice and a
scenario's overrides are honoured the same way the funnel honours them.

* Filters: "fails X", "fails only X", "unknown on X", "passes X" for a criterion or
  sub-rule X, combined with AND, plus the eligibility verdict and the site.
* Drill-down: for one patient, each rule with the patient's value(s), derived values
  (clearance, QTcF, washout), the requirement with the scenario's thresholds, and the
  verdict.
* Cohort profile: completeness per column, which rules are n/a or mostly unknown and
  why, binned distributions of the protocol file's measures with their thresholds, patients
  per declared category coloured by the rule's verdict, and
  screened / eligible counts per site and country.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import pandas as pd

from kn026.base import schema
from kn026.base.table import q
from kn026.core import analysis
from kn026.core import funnel as fm
from kn026.core.criteria import (
    FILTER_STATUSES,
    CategoryChart,
    Measure,
    Rule,
    format_number,
    names_in,
    parse_predicate,
)
from kn026.core.engine import Engine, compile_rule, mask_columns, meets_sql, row_masks
from kn026.core.scenario import Scenario

STATUSES = FILTER_STATUSES
ELIGIBLE = ("yes", "no", "unknown")
MOSTLY_UNKNOWN = 0.5  # share of patients unknown on a rule above which it is "mostly unknown"
OFTEN_UNKNOWN = 0.1
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


# --------------------------------------------------------------------------- targets


def targets(engine: Engine) -> list[tuple[str, str]]:
    """Criteria and (for criteria with several rules) their sub-rules: (ID, label)."""
    out = []
    for crit in engine.protocol.criteria:
        if engine.stage not in crit.stages:
            continue
        rules = [r for r in crit.rules if engine.stage in r.stages]
        out.append((crit.id, criterion_label(crit, engine.stage)))
        if len(rules) > 1:
            out += [(r.id, r.label) for r in rules]
    return out


def criterion_label(crit, stage: int | None = None, width: int = 60) -> str:
    """A short name for a criterion: its rule's label, or its sub-rules' labels joined."""
    label = getattr(crit, "label", "")  # a protocol file may one day carry one
    if label:
        return label
    rules = [r for r in crit.rules if stage is None or stage in r.stages]
    if len(rules) == 1:
        return rules[0].label
    text = ", ".join([rules[0].label] + [_lower_first(r.label) for r in rules[1:]])
    if len(text) <= width:
        return text
    cut = text[: width - 1].rsplit(" ", 1)[0]
    return cut.rstrip(",;- ") + "…"


def _lower_first(text: str) -> str:
    """'Platelets' -> 'platelets' but keep acronyms ('AST', 'LVEF drop', 'HIV positive')."""
    first = text.split(" ", 1)[0]
    return text if first.isupper() or len(first) > 1 and first[1].isupper() else text[0].lower() + text[1:]


def target_mask(engine: Engine, scenario: Scenario, target: str) -> int:
    """Leaf bits of a criterion (its enabled, assessable rules) or of one sub-rule."""
    protocol = engine.protocol
    ids = {c.id for c in protocol.criteria}
    if target in ids:
        mask = 0
        for r in protocol.criterion(target).rules:
            if (r.id in engine.bit and r.id not in engine.not_assessable
                    and r.id not in scenario.disabled):
                mask |= 1 << engine.bit[r.id]
        return mask
    rule = protocol.rule(target)
    if rule.id not in engine.bit or rule.id in engine.not_assessable:
        return 0
    return 1 << engine.bit[rule.id]


def scope_mask(engine: Engine, scenario: Scenario) -> int:
    """Union of the leaf bits of the criteria that take part in the scenario's funnel."""
    mask = 0
    for m in analysis.plan(engine, scenario).masks:
        mask |= m
    return mask


# --------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class Condition:
    """One filter: a status on a criterion or sub-rule ("fails only", a criterion ID)."""

    status: str
    target: str

    def __str__(self) -> str:
        return f"{self.status} {self.target}"


def condition_sql(engine: Engine, scenario: Scenario, cond: Condition) -> str:
    """SQL predicate over the mask words `_f*` / `_u*` for one condition (FALSE when the
    target is n/a)."""
    if cond.status not in STATUSES:
        raise ValueError(f"unknown status {cond.status!r}; choose one of {', '.join(STATUSES)}")
    m = target_mask(engine, scenario, cond.target)
    if not m:
        return "FALSE"
    if cond.status == "fails":
        return meets_sql(m, "_f")
    if cond.status == "fails only":
        others = scope_mask(engine, scenario) & ~m
        return f"({meets_sql(m, '_f')} AND NOT {meets_sql(others, '_f')})"
    if cond.status == "unknown on":
        return f"(NOT {meets_sql(m, '_f')} AND {meets_sql(m, '_u')})"
    return f"NOT {meets_sql(m, '_f', '_u')}"


def eligible_sql(scope: int, value: str) -> str:
    """SQL predicate for the eligibility verdict over the scenario's criteria."""
    if value == "yes":
        return f"NOT {meets_sql(scope, '_f', '_u')}"
    if value == "no":
        return meets_sql(scope, "_f")
    if value == "unknown":
        return f"(NOT {meets_sql(scope, '_f')} AND {meets_sql(scope, '_u')})"
    raise ValueError(f"eligible must be one of {', '.join(ELIGIBLE)}, not {value!r}")


@dataclass(frozen=True)
class Found:
    """Patients matching a filter: the total and the first rows."""

    total: int
    frame: pd.DataFrame
    where: str = ""


def find(engine: Engine, scenario: Scenario, conditions=(), eligible: str | None = None,
         site: str | None = None, limit: int = 500) -> Found:
    """Patients matching every condition, with their eligibility and failing criteria."""
    scenario = scenario or Scenario()
    scope = scope_mask(engine, scenario)
    where = [condition_sql(engine, scenario, c) for c in conditions]
    if eligible:
        where.append(eligible_sql(scope, eligible))
    params: list = []
    present = engine.cohort.present
    if site is not None and "site_id" in present:
        where.append("site_id IS NOT DISTINCT FROM ?")
        params.append(site)
    clause = " AND ".join(where) or "TRUE"
    src = engine.masks_sql(scenario.overrides)
    extra = [c for c in ("site_id", "country") if c in present]
    words = mask_columns(engine.width)
    cols = ", ".join(["patient_id", *extra, *words])
    con = engine.con
    total = con.execute(f"SELECT count(*) FROM ({src}) WHERE {clause}", params).fetchall()[0][0]
    rows = con.execute(f"SELECT {cols} FROM ({src}) WHERE {clause} ORDER BY patient_id LIMIT {int(limit)}",
                       params).df()
    p = analysis.plan(engine, scenario)
    failed, unknown, verdict = [], [], []
    for row in rows[words].to_dict("records"):
        f, u = row_masks(row, engine.width)
        fails = [cid for cid, m in zip(p.ids, p.masks, strict=True) if f & m]
        unks = [cid for cid, m in zip(p.ids, p.masks, strict=True) if not f & m and u & m]
        failed.append(", ".join(fails))
        unknown.append(", ".join(unks))
        verdict.append("no" if fails else "unknown" if unks else "yes")
    out = rows.drop(columns=words)
    out["eligible"] = verdict
    out["fails"] = failed
    out["unknown on"] = unknown
    return Found(int(total), out, clause)


# --------------------------------------------------------------------------- drill-down


def _fake_rule(rule: Rule, stage: int, expression: str) -> Rule:
    return Rule(rule.id, rule.criterion, rule.kind, rule.label, {stage: expression},
                {stage: expression}, rule.params, rule.columns)


def expression_sql(engine: Engine, rule: Rule, expression: str, values: dict | None = None) -> str:
    """Compile an expression over columns, derived values and the rule's :params to SQL."""
    vals = {**rule.defaults(), **(values or {})}
    return compile_rule(_fake_rule(rule, engine.stage, expression), engine.stage, vals,
                        engine.cohort.present, engine.protocol)


def derived_used(engine: Engine, rule: Rule) -> list[str]:
    """Derived values (clearance, QTcF, washout) a rule's predicate uses at this stage."""
    cols, _ = names_in(parse_predicate(rule.sql[engine.stage], rule.id))
    return [name for name in engine.protocol.derived if name in cols]


def stage_params(rule: Rule, stage: int) -> list[str]:
    """Parameters shown for a rule at a stage: those its readable rule mentions, else all."""
    named = [n for n in _PLACEHOLDER.findall(rule.template[stage]) if n in rule.params]
    seen = list(dict.fromkeys(named))
    return seen or list(rule.params)


def format_value(value, column: str | None = None) -> str:
    """A patient's value as text: missing / none on record / yes / 1.5."""
    spec = schema.BY_NAME.get(column) if column else None
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        if spec is not None and spec.record_based:
            return "none on record"
        if spec is not None and spec.when_null:
            return f"not recorded ({spec.when_null})"
        return "missing"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return format_number(Decimal(repr(round(float(value), 4))))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def patient_row(engine: Engine, scenario: Scenario, patient_id: str) -> dict | None:
    """The patient's cohort columns plus the mask words `_f0`.. / `_u0`.. under the scenario
    (None if unknown ID; :func:`kn026.core.engine.row_masks` reads them)."""
    src = engine.masks_sql((scenario or Scenario()).overrides)
    cur = engine.con.execute(f"SELECT * FROM ({src}) WHERE patient_id = ? LIMIT 1", [patient_id])
    names = [d[0] for d in cur.description]
    rows = cur.fetchall()  # fetch to the end: DuckDB keeps an unfinished result open otherwise
    if not rows:
        return None
    return dict(zip(names, rows[0], strict=True))


def patient_detail(engine: Engine, scenario: Scenario, patient_id: str) -> pd.DataFrame:
    """One row per rule: requirement (scenario thresholds), the patient's values, verdict.

    Columns: criterion, rule, label, requirement, values, verdict (pass / fail /
    unknown / n/a), note (disabled, changed threshold, missing columns).
    """
    scenario = scenario or Scenario()
    row = patient_row(engine, scenario, patient_id)
    if row is None:
        raise KeyError(f"no patient with patient_id {patient_id!r}")
    f, u = row_masks(row, engine.width)
    protocol, stage = engine.protocol, engine.stage
    present = engine.cohort.present
    derived_sql = {}
    for rule in engine.rules:
        if rule.id in engine.not_assessable:
            continue
        for name in derived_used(engine, rule):
            key = (rule.id, name)
            derived_sql[key] = expression_sql(engine, rule, name, scenario.overrides.get(rule.id))
    derived_vals = {}
    if derived_sql:
        keys = list(derived_sql)
        select = ", ".join(f"{sql} AS d{i}" for i, sql in enumerate(derived_sql.values()))
        vals = engine.con.execute(f"SELECT {select} FROM {q(engine.cohort.table)} WHERE patient_id = ?",
                                  [patient_id]).fetchall()[0]
        derived_vals = dict(zip(keys, vals, strict=True))
    records = []
    for crit in protocol.criteria:
        if stage not in crit.stages:
            continue
        for rule in crit.rules:
            if stage not in rule.stages:
                continue
            overrides = scenario.overrides.get(rule.id, {})
            values = []
            for col in sorted(rule.columns[stage]):
                if col in present:
                    values.append(f"{col} = {format_value(row.get(col), col)}")
                else:
                    values.append(f"{col}: column absent, {schema.BY_NAME[col].when_null or 'read as unknown'}")
            for name in derived_used(engine, rule):
                val = derived_vals.get((rule.id, name))
                if name.startswith("crcl_if_") and row.get("sex") in ("F", "M"):
                    if name != ("crcl_if_female" if row["sex"] == "F" else "crcl_if_male"):
                        continue
                label = protocol.derived[name].label.split("(")[0].strip() or name
                values.append(f"{label} = {format_value(val) if val is not None else 'not computable'}")
            notes = []
            if rule.id in engine.not_assessable:
                verdict = "n/a"
                notes.append("not assessable: " + ", ".join(engine.not_assessable[rule.id]) + " absent")
            else:
                bit = 1 << engine.bit[rule.id]
                verdict = "fail" if f & bit else "unknown" if u & bit else "pass"
            if crit.id in scenario.disabled or rule.id in scenario.disabled:
                notes.append("disabled in this scenario")
            for pname, value in overrides.items():
                default = rule.params[pname].default
                if Decimal(value) != default:
                    notes.append(f"{pname}: protocol {format_number(default)} → {format_number(value)}")
            records.append({
                "criterion": crit.id,
                "rule": rule.id,
                "label": rule.label,
                "requirement": rule.readable(stage, overrides),
                "values": "; ".join(values),
                "verdict": verdict,
                "note": "; ".join(notes),
            })
    return pd.DataFrame(records)


def patient_summary(engine: Engine, scenario: Scenario, patient_id: str) -> dict:
    """Eligibility verdict and failing / unknown criteria of one patient."""
    scenario = scenario or Scenario()
    row = patient_row(engine, scenario, patient_id)
    if row is None:
        raise KeyError(f"no patient with patient_id {patient_id!r}")
    f, u = row_masks(row, engine.width)
    p = analysis.plan(engine, scenario)
    fails = [cid for cid, m in zip(p.ids, p.masks, strict=True) if f & m]
    unks = [cid for cid, m in zip(p.ids, p.masks, strict=True) if not f & m and u & m]
    return {
        "patient_id": patient_id,
        "site_id": row.get("site_id"),
        "country": row.get("country"),
        "eligible": "no" if fails else "unknown" if unks else "yes",
        "fails": fails,
        "unknown": unks,
    }


# --------------------------------------------------------------------------- completeness


def cohort_facts(engine: Engine) -> dict:
    """Sites, countries (with patients per country) and the screening date range."""
    present, table, con = engine.cohort.present, q(engine.cohort.table), engine.con
    out = {"sites": None, "countries": None, "country_list": "", "dates": "", "months": None}
    if "site_id" in present:
        out["sites"] = con.execute(f"SELECT count(DISTINCT site_id) FROM {table}").fetchall()[0][0]
    if "country" in present:
        rows = con.execute(f"SELECT country, count(*) AS n FROM {table} WHERE country IS NOT NULL "
                           f"GROUP BY country ORDER BY n DESC, country").fetchall()
        out["countries"] = len(rows)
        out["country_list"] = ", ".join(str(c) for c, _ in rows)
    if "screening_date" in present:
        lo, hi = con.execute(f"SELECT min(screening_date), max(screening_date) FROM {table}").fetchall()[0]
        if lo is not None:
            out["dates"] = f"{lo:%b %Y} – {hi:%b %Y}"
            out["months"] = (hi.year - lo.year) * 12 + hi.month - lo.month + 1
    return out


def site_ids(engine: Engine) -> list:
    """The cohort's site IDs, sorted (the Patients page's site filter)."""
    return [r[0] for r in engine.con.execute(
        f"SELECT DISTINCT site_id FROM {q(engine.cohort.table)} WHERE site_id IS NOT NULL ORDER BY site_id").fetchall()]



def completeness(engine: Engine) -> pd.DataFrame:
    """Per dictionary column: present or absent, missing values, and the rules that use it."""
    cohort, stage = engine.cohort, engine.stage
    used: dict[str, list[str]] = {}
    for rule in engine.rules:
        for col in sorted(rule.columns[stage]):
            used.setdefault(col, []).append(rule.id)
    present = [c.name for c in schema.COLUMNS if c.name in cohort.present]
    counts = {}
    if present and cohort.n:
        sel = ", ".join(f"count({q(c)})" for c in present)
        got = engine.con.execute(f"SELECT {sel} FROM {q(cohort.table)}").fetchall()[0]
        counts = dict(zip(present, got, strict=True))
    rows = []
    for col in schema.COLUMNS:
        is_present = col.name in cohort.present
        missing = cohort.n - counts.get(col.name, 0) if is_present else cohort.n
        meaning = col.null_meaning
        rows.append({
            "column": col.name,
            "description": col.description,
            "unit": col.unit,
            "present": is_present,
            "missing": int(missing),
            "missing_pct": (100.0 * missing / cohort.n) if cohort.n else 0.0,
            "empty_means": meaning,
            "used_by": ", ".join(used.get(col.name, [])),
        })
    return pd.DataFrame(rows)


def rule_coverage(engine: Engine, scenario: Scenario | None = None,
                  columns: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per rule: assessable or n/a, how many patients are unknown on it, and why.

    `status` is "n/a" (a required column is absent), "mostly unknown" (at least
    MOSTLY_UNKNOWN of patients), "often unknown" (at least OFTEN_UNKNOWN), or "ok".
    `reason` names the absent columns, or the rule's columns with the most missing values.
    """
    scenario = scenario or Scenario()
    cols = completeness(engine) if columns is None else columns
    missing = dict(zip(cols["column"], cols["missing_pct"], strict=True))
    assessable = [r for r in engine.rules if r.id not in engine.not_assessable]
    stats = None
    if assessable:
        hist = engine.histogram(scenario.overrides)
        leaf = fm.collapse(hist, [1 << engine.bit[r.id] for r in assessable])
        stats = fm.criterion_stats(leaf, [r.id for r in assessable]).set_index("criterion")
    n = engine.cohort.n
    rows = []
    for rule in engine.rules:
        if rule.id in engine.not_assessable:
            absent = engine.not_assessable[rule.id]
            rows.append({"rule": rule.id, "criterion": rule.criterion, "label": rule.label,
                         "status": "n/a", "unknown": None, "unknown_pct": None, "failed": None,
                         "reason": f"column{'s' if len(absent) > 1 else ''} {', '.join(absent)} "
                                   "absent from the cohort: left out of the funnel"})
            continue
        unk = int(stats.loc[rule.id, "unknown"])
        failed = int(stats.loc[rule.id, "failed"])
        share = unk / n if n else 0.0
        status = ("mostly unknown" if share >= MOSTLY_UNKNOWN else
                  "often unknown" if share >= OFTEN_UNKNOWN else "ok")
        gaps = sorted(((missing.get(c, 0.0), c) for c in rule.columns[engine.stage]
                       if schema.BY_NAME[c].null_meaning == "unknown"),
                      reverse=True)
        gaps = [f"{c} missing for {_pct_text(pct)}" if c in engine.cohort.present else f"no {c} column"
                for pct, c in gaps if pct > 0][:3]
        reason = "; ".join(gaps) if unk else ""
        rows.append({"rule": rule.id, "criterion": rule.criterion, "label": rule.label, "status": status,
                     "unknown": unk, "unknown_pct": 100.0 * share, "failed": failed, "reason": reason})
    return pd.DataFrame(rows)


LITTLE_ASSESSABLE = 1 / 3  # above this share of n/a rules, say the cohort says little


@dataclass(frozen=True)
class Assessability:
    """How much of the protocol a cohort can assess: the n/a rules and the mostly unknown ones.

    A plain green tick on a cohort that leaves a third of the rules n/a, or half of the
    patients unknown on a rule, would hide that its counts say little; the pages show
    `messages()` beside their counts instead.
    """

    rules: int  # rules of the stage
    not_assessable: dict[str, str]  # rule ID -> what it lacks (analysis.missing_text)
    mostly_unknown: dict[str, tuple[float, str]]  # rule ID -> (% unknown, why)

    @property
    def little(self) -> bool:
        return len(self.not_assessable) > self.rules * LITTLE_ASSESSABLE or bool(self.mostly_unknown)

    def messages(self, limit: int = 6) -> list[str]:
        """Plain sentences naming the missing columns and the mostly unknown rules."""
        out = []
        if self.not_assessable:
            absent = sorted({c.strip() for text in self.not_assessable.values()
                             for alt in text.split(", or ") for c in alt.split("+")})
            shown = ", ".join(absent[:limit]) + (f" and {len(absent) - limit} more" if len(absent) > limit else "")
            out.append(f"{len(self.not_assessable)} of {self.rules} rules cannot be assessed and are left "
                       f"out of the counts: these columns are missing: {shown}")
        for rid, (pct, why) in list(self.mostly_unknown.items())[:limit]:
            out.append(f"{rid} is unknown for {_pct_text(pct)} of patients" + (f": {why}" if why else ""))
        if len(self.mostly_unknown) > limit:
            out.append(f"... and {len(self.mostly_unknown) - limit} more mostly unknown rules")
        return out


def assessability(engine: Engine, scenario: Scenario | None = None,
                  coverage: pd.DataFrame | None = None) -> Assessability:
    """The cohort's n/a rules (with what they lack) and its rules unknown for most patients."""
    coverage = rule_coverage(engine, scenario) if coverage is None else coverage
    na = {rid: analysis.missing_text(engine.protocol.rule(rid), engine.stage, engine.cohort.present)
          for rid in analysis.not_assessable_rules(engine)}
    mostly = {}
    for row in coverage.itertuples(index=False):
        if row.status != "n/a" and row.unknown_pct > 100 * MOSTLY_UNKNOWN:  # more than half
            mostly[row.rule] = (float(row.unknown_pct), row.reason or "")
    return Assessability(len(engine.rules), na, mostly)


def _pct_text(pct: float) -> str:
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.1f}%" if pct >= 0.1 else "<0.1%"


# --------------------------------------------------------------------------- distributions


def measures(protocol) -> tuple[Measure, ...]:
    """The protocol file's key measures (its `measures:`), in file order."""
    return protocol.measures


@dataclass
class Distribution:
    """Binned values of one measure with its limits under the scenario and the protocol."""

    measure: Measure
    bins: pd.DataFrame  # x0, x1, count (discrete: x0 = value, x1 = value)
    n: int
    missing: int
    limits: list[dict] = field(default_factory=list)  # value, label, protocol (bool)
    available: bool = True
    reason: str = ""


def _nice_width(span: float, target_bins: int) -> float:
    raw = span / max(target_bins, 1)
    if raw <= 0:
        return 1.0
    exp10 = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * exp10:
            return m * exp10
    return 10 * exp10


def distribution(engine: Engine, measure: Measure, scenario: Scenario | None = None,
                 target_bins: int = 40) -> Distribution:
    """Histogram of a measure (SQL binning, so it scales to millions of rows)."""
    scenario = scenario or Scenario()
    rule = engine.protocol.rule(measure.rule)
    values = scenario.overrides.get(rule.id, {})
    limits = []
    for pname, template in measure.limits:
        default = rule.params[pname].default
        current = Decimal(values.get(pname, default))
        limits.append({"value": float(current), "label": template.format(v=format_number(current)),
                       "protocol": current == default, "param": pname})
        if current != default:
            limits.append({"value": float(default),
                           "label": "protocol " + template.format(v=format_number(default)),
                           "protocol": True, "param": pname})
    n = engine.cohort.n
    if rule.id in engine.not_assessable or engine.stage not in rule.stages:
        missing_cols = engine.not_assessable.get(rule.id, [])
        return Distribution(measure, pd.DataFrame(columns=["x0", "x1", "count"]), n, n, limits, False,
                            f"{', '.join(missing_cols)} absent" if missing_cols else "not used at this stage")
    sql = expression_sql(engine, rule, measure.expression, values)
    table = q(engine.cohort.table)
    con = engine.con
    src = f"(SELECT CAST(({sql}) AS DOUBLE) AS x FROM {table}) v"
    if measure.discrete:
        frame = con.execute(f"SELECT x, count(*) AS n FROM {src} WHERE x IS NOT NULL GROUP BY x ORDER BY x").df()
        bins = pd.DataFrame({"x0": frame["x"].astype(float), "x1": frame["x"].astype(float),
                             "count": frame["n"].astype("int64")})
        known = int(bins["count"].sum())
        return Distribution(measure, bins, n, n - known, limits)
    known, lo, hi, vmin, vmax = con.execute(
        f"SELECT count(x), quantile_cont(x, 0.005), quantile_cont(x, 0.995), min(x), max(x) "
        f"FROM {src} WHERE isfinite(x)").fetchall()[0]
    if not known:
        return Distribution(measure, pd.DataFrame(columns=["x0", "x1", "count"]), n, n, limits, True,
                            "no recorded values")
    marks = [lim["value"] for lim in limits]
    lo, hi = min([lo, *marks]), max([hi, *marks])
    pad = 0.04 * (hi - lo)
    lo, hi = max(lo - pad, vmin), min(hi + pad, max(vmax, *marks))
    if hi <= lo:
        hi = lo + 1.0
    width = _nice_width(hi - lo, target_bins)
    start = math.floor(lo / width) * width
    nbins = max(1, int(math.ceil((hi - start) / width)))
    frame = con.execute(
        f"SELECT least(greatest(CAST(floor((x - ?) / ?) AS BIGINT), 0), ?) AS b, count(*) AS n "
        f"FROM {src} WHERE isfinite(x) GROUP BY b ORDER BY b", [start, width, nbins - 1]).df()
    b = frame["b"].to_numpy(dtype=np.int64)
    bins = pd.DataFrame({"x0": start + b * width, "x1": start + (b + 1) * width,
                         "count": frame["n"].to_numpy(dtype=np.int64)})
    return Distribution(measure, bins, n, n - int(known), limits)


def category_counts(engine: Engine, chart: CategoryChart, scenario: Scenario | None = None) -> pd.DataFrame:
    """Patients per declared category with the verdict the chart's rule gives them.

    The verdict is read from the screening masks of the scenario's engine (rewritten
    rules and thresholds included), never re-derived here: a category whose patients get
    different verdicts becomes one bar per verdict ("IHC 2+ ISH + · fail"). Columns:
    category, count, verdict ("" for an empty category). Empty frame when the rule is n/a.
    """
    scenario = scenario or Scenario()
    screened = analysis.engine_for(engine, scenario)
    rule = screened.protocol.rule(chart.rule)
    empty = pd.DataFrame(columns=["category", "count", "verdict"])
    if engine.stage not in rule.stages or rule.id in screened.not_assessable or rule.id not in screened.bit:
        return empty
    whens = [expression_sql(screened, rule, when) for _, when in chart.groups]
    case = " ".join(f"WHEN {w} THEN {i}" for i, w in enumerate(whens))
    bit = 1 << screened.bit[rule.id]
    verdict = f"CASE WHEN {meets_sql(bit, '_f')} THEN 'fail' WHEN {meets_sql(bit, '_u')} THEN 'unknown' ELSE 'pass' END"
    rows = screened.con.execute(
        f"SELECT CASE {case} ELSE -1 END AS g, {verdict} AS v, count(*) AS n "
        f"FROM ({screened.masks_sql(scenario.overrides)}) GROUP BY ALL").fetchall()
    found: dict[int, dict[str, int]] = {}
    for g, v, n in rows:
        found.setdefault(int(g), {})[v] = int(n)
    labels = [label for label, _ in chart.groups] + ["other"]
    out = []
    for g, label in enumerate(labels):
        by_verdict = found.get(g if g < len(chart.groups) else -1, {})
        if not by_verdict and g < len(chart.groups):
            out.append((label, 0, ""))
        for v in ("pass", "unknown", "fail"):
            if v in by_verdict:
                out.append((label if len(by_verdict) == 1 else f"{label} · {v}", by_verdict[v], v))
    return pd.DataFrame(out, columns=["category", "count", "verdict"])


# --------------------------------------------------------------------------- sites


def site_table(engine: Engine, scenario: Scenario | None = None) -> pd.DataFrame:
    """Per site: country, screened, eligible strict / optimistic, unknown, not eligible."""
    scenario = scenario or Scenario()
    sites = analysis.by_site(engine, scenario)
    if "country" in engine.cohort.present:
        countries = engine.con.execute(
            f"SELECT COALESCE(site_id, '(no site)') AS site, mode(country) AS country "
            f"FROM {q(engine.cohort.table)} GROUP BY ALL").df()
        sites = sites.merge(countries, on="site", how="left")
    else:
        sites["country"] = None
    sites["country"] = sites["country"].astype(object).where(sites["country"].notna(), "(unknown)")
    sites["excluded"] = sites["screened"] - sites["optimistic"]
    cols = ["site", "country", "screened", "strict", "optimistic", "unknown", "excluded"]
    return sites[cols].sort_values(["screened", "site"], ascending=[False, True]).reset_index(drop=True)


def country_table(sites: pd.DataFrame) -> pd.DataFrame:
    """Per country sums of a site table (with the number of sites)."""
    counts = ["screened", "strict", "optimistic", "unknown", "excluded"]
    out = sites.groupby("country", dropna=False)[counts].sum().reset_index()
    out.insert(1, "sites", sites.groupby("country", dropna=False)["site"].count().to_numpy())
    return out.sort_values(["screened", "country"], ascending=[False, True]).reset_index(drop=True)


def with_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """Add eligible % (strict and optimistic) of screened."""
    out = frame.copy()
    screened = out["screened"].where(out["screened"] > 0)
    out["pct_strict"] = 100.0 * out["strict"] / screened
    out["pct_optimistic"] = 100.0 * out["optimistic"] / screened
    return out
