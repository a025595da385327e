"""From engine + scenario + order to the tables every page and the CLI show.

This is the one place that decides which criteria take part in a funnel: a
criterion is a unit of the funnel when at least one of its rules is assessable
(its columns exist) and enabled in the scenario. Everything below the engine's
histogram is pure funnel maths, so reordering or toggling is cheap.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import pandas as pd

from kn026.core import custom
from kn026.core import funnel as fm
from kn026.core.engine import Engine, meets_sql
from kn026.core.scenario import Scenario
from kn026.core.screening import ScreeningEngine

EXTENDED_KEEP = 4  # extended engines (scenarios with analyst rules) kept per engine, least recent dropped


def rules_key(scenario: Scenario | None) -> str | None:
    """The identity of a scenario's analyst rules (custom criteria and rewritten rules);
    None when it has none and the stage's own engine screens it."""
    if scenario is None or (not scenario.custom and not scenario.replace):
        return None
    return repr(([c.to_doc() for c in scenario.custom], sorted(scenario.replace.items())))


class Extensions:
    """Engines extended with scenarios' analyst rules, for one base engine: the `keep`
    most recently used are kept (each holds its own per-patient masks once used).

    The caller owns it (the app: one per loaded cohort and stage), so nothing is cached
    on the engines themselves and the bound is explicit.
    """

    def __init__(self, keep: int = EXTENDED_KEEP):
        self.keep = keep
        self._engines: OrderedDict[str, Engine] = OrderedDict()

    def __len__(self) -> int:
        return len(self._engines)

    def get(self, key: str, make):
        """The engine for rules `key`, made by `make()` when not kept."""
        if key in self._engines:
            self._engines.move_to_end(key)
            return self._engines[key]
        engine = make()
        self._engines[key] = engine
        while len(self._engines) > self.keep:
            self._engines.popitem(last=False)
        return engine


def engine_for(engine: ScreeningEngine, scenario: Scenario | None,
               cache: Extensions | None = None) -> ScreeningEngine:
    """The engine screening `scenario`: `engine` itself, or one extended with the
    scenario's custom criteria and rewritten rules (reuses the patient pass).

    An engine already extended for these rules (its `rules_key`) is returned as is;
    `cache`, when given, keeps the extended engines of `engine` for reuse.
    """
    key = rules_key(scenario)
    if key is None or engine.rules_key == key:
        return engine

    def make():
        protocol, changed = custom.extend(engine.protocol, engine.cohort, list(scenario.custom),
                                          scenario.replace)
        return engine.with_protocol(protocol, changed, untrusted=changed, rules_key=key)

    return make() if cache is None else cache.get(key, make)


@dataclass(frozen=True)
class Plan:
    """The funnel's units: criterion IDs in order with their leaf masks, and what was left out."""

    ids: tuple[str, ...]
    masks: tuple[int, ...]
    not_assessable: dict[str, list[str]]  # criterion ID -> missing columns (all its rules n/a)
    disabled: tuple[str, ...]


def plan(engine: ScreeningEngine, scenario: Scenario | None = None, order=None) -> Plan:
    """Which criteria enter the funnel, in which order (default: scenario order, else protocol)."""
    scenario = scenario or Scenario()
    engine = engine_for(engine, scenario)
    criteria = [c for c in engine.protocol.criteria if engine.stage in c.stages]
    wanted = list(order or scenario.order or [c.id for c in criteria])
    by_id = {c.id: c for c in criteria}
    unknown = [cid for cid in wanted if cid not in by_id]
    if unknown:
        raise ValueError(f"unknown criterion ID(s) {', '.join(unknown)}; "
                         f"known: {', '.join(by_id)}")
    wanted += [c.id for c in criteria if c.id not in wanted]  # a partial order keeps the rest
    ids, masks, na, disabled = [], [], {}, []
    for cid in wanted:
        crit = by_id[cid]
        if cid in scenario.disabled:
            disabled.append(cid)
            continue
        mask = 0
        missing: list[str] = []
        for rule in crit.rules:
            if rule.id in scenario.disabled or engine.stage not in rule.stages:
                continue
            if rule.id in engine.not_assessable:
                missing += engine.not_assessable[rule.id]
                continue
            mask |= 1 << engine.bit[rule.id]
        if mask:
            ids.append(cid)
            masks.append(mask)
        elif missing:
            na[cid] = sorted(set(missing))
        else:
            disabled.append(cid)
    return Plan(tuple(ids), tuple(masks), na, tuple(disabled))


def missing_text(rule, stage: int, present) -> str:
    """What a not-assessable rule lacks, alternative by alternative.

    "pt_s" for a one-column rule; "creatinine_clearance_ml_min, or weight_kg +
    creatinine_umol_l" when any of several column sets would do (dictionary section 5).
    """
    sets = rule.requires.get(stage) or (rule.columns[stage],)
    parts = [" + ".join(sorted(c for c in s if c not in present)) for s in sets]
    return ", or ".join(p for p in parts if p)


def not_assessable_rules(engine: ScreeningEngine) -> dict[str, list[str]]:
    """Rule ID -> its absent columns, for every rule of the stage that is n/a on this cohort."""
    return {r.id: engine.not_assessable[r.id] for r in engine.rules if r.id in engine.not_assessable}


@dataclass(frozen=True)
class Result:
    """Funnel outputs for one engine, scenario and order."""

    plan: Plan
    histogram: fm.Histogram  # collapsed: bit i = plan.ids[i]
    funnel: pd.DataFrame
    stats: pd.DataFrame
    totals: dict[str, int]

    def combinations(self, top: int = 10, bound: str = "optimistic") -> pd.DataFrame:
        return fm.combinations(self.histogram, self.plan.ids, top=top, bound=bound)


def run(engine: ScreeningEngine, scenario: Scenario | None = None, order=None) -> Result:
    """Funnel, per-criterion table and eligible counts for a scenario (protocol by default)."""
    scenario = scenario or Scenario()
    engine = engine_for(engine, scenario)
    p = plan(engine, scenario, order)
    hist = fm.collapse(engine.histogram(scenario.overrides), p.masks)
    stats = fm.criterion_stats(hist, p.ids)
    steps = fm.funnel(hist, p.ids)
    stats = stats.merge(steps[["criterion", "step", "lost_strict", "lost_optimistic"]],
                        on="criterion", how="left")
    return Result(p, hist, steps, stats, fm.eligible_counts(hist))


def restrictive_order(engine: ScreeningEngine, scenario: Scenario | None = None) -> list[str]:
    """Criteria by failures, most first (ties: more unknowns first, then protocol order)."""
    result = run(engine, scenario, order=None)
    stats = result.stats.assign(pos=range(len(result.stats)))
    stats = stats.sort_values(["failed", "unknown", "pos"], ascending=[False, False, True])
    return list(stats["criterion"])


def by_site(engine: ScreeningEngine, scenario: Scenario | None = None) -> pd.DataFrame:
    """Screened and eligible counts per site (requires site_id)."""
    scenario = scenario or Scenario()
    if "site_id" not in engine.cohort.present:
        raise ValueError("the cohort has no site_id column; per-site counts need it")
    engine = engine_for(engine, scenario)
    p = plan(engine, scenario)
    hist = fm.collapse(engine.histogram(scenario.overrides, by_site=True), p.masks)
    return fm.by_site(hist)


def compare(engine: ScreeningEngine, scenario: Scenario, base: Scenario | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scenario against the protocol (or `base`): eligible totals and per-criterion deltas."""
    a = run(engine, base or Scenario())
    b = run(engine, scenario)
    return (fm.compare_totals(a.histogram, b.histogram),
            fm.compare(a.histogram, b.histogram, a.plan.ids, b.plan.ids))


def _status(mask: int) -> str:
    if not mask:
        return "'n/a'"
    return f"CASE WHEN {meets_sql(mask, '_f')} THEN 'fail' WHEN {meets_sql(mask, '_u')} THEN 'unknown' ELSE 'pass' END"


def screen_log_sql(engine: ScreeningEngine, scenario: Scenario | None = None, extra: tuple[str, ...] = ()) -> str:
    """SQL of the screening log: one row per patient, a status per criterion and sub-rule.

    Criterion and sub-rule columns hold pass / fail / unknown / n/a; `eligible` holds
    yes / no / unknown over the scenario's enabled, assessable criteria (a disabled
    criterion still shows its own verdict but does not count).
    """
    scenario = scenario or Scenario()
    engine = engine_for(engine, scenario)
    p = plan(engine, scenario)
    cols = ["patient_id", *extra]
    for crit in engine.protocol.criteria:
        if engine.stage not in crit.stages:
            continue
        leaves = [r for r in crit.rules if engine.stage in r.stages]
        masks = {r.id: 0 if r.id in engine.not_assessable else 1 << engine.bit[r.id] for r in leaves}
        cols.append(f"{_status(sum(masks.values()))} AS \"{crit.id}\"")
        if len(leaves) > 1:
            cols += [f"{_status(masks[r.id])} AS \"{r.id}\"" for r in leaves]
    union = 0
    for m in p.masks:
        union |= m
    eligible = (f"CASE WHEN {meets_sql(union, '_f')} THEN 'no' "
                f"WHEN {meets_sql(union, '_u')} THEN 'unknown' ELSE 'yes' END")
    cols.append(f"{eligible} AS eligible")
    return f"SELECT {', '.join(cols)} FROM ({engine.masks_sql(scenario.overrides)})"
