"""Memoised analysis results of the session: funnel, tables, comparisons, profiles.
"""

from __future__ import annotations

import pandas as pd

from kn026.core import analysis
from kn026.core import funnel as fm
from kn026.core.scenario import Scenario
from kn026.report import export, patients, suppression
from ui.session import Ctx, engine_key, extensions, memo, scenario_key


def result(ctx: Ctx, scenario: Scenario | None = None, order=None) -> analysis.Result:
    s = ctx.scenario if scenario is None else scenario
    o = ctx.order if order is None else tuple(order)
    base = ctx.data.engines[ctx.stage]  # not ctx.engine: `s` (the protocol, say) brings its own rules
    return memo(("run", engine_key(base), scenario_key(s), o),
                lambda: analysis.run(analysis.engine_for(base, s, extensions(base)), s, order=list(o) or None))


def protocol_result(ctx: Ctx) -> analysis.Result:
    return result(ctx, Scenario(), ())


def comparison(ctx: Ctx) -> tuple[pd.DataFrame, pd.DataFrame]:
    a, b = protocol_result(ctx), result(ctx, order=())
    return (fm.compare_totals(a.histogram, b.histogram),
            fm.compare(a.histogram, b.histogram, a.plan.ids, b.plan.ids))


# --------------------------------------------------------------------------- derived views


def labels(ctx: Ctx) -> dict[str, str]:
    return {c.id: patients.criterion_label(c, ctx.stage) for c in ctx.protocol.criteria}


def kinds(ctx: Ctx) -> dict[str, str]:
    return {c.id: c.kind for c in ctx.protocol.criteria}


def texts(ctx: Ctx) -> dict[str, str]:
    return {c.id: c.text for c in ctx.protocol.criteria}


def ckey(ctx: Ctx, *extra) -> tuple:
    """Memo key of anything computed from the engine, scenario, order and suppression."""
    return (engine_key(ctx.engine), scenario_key(ctx.scenario), ctx.order, ctx.k, *extra)


def attrition(ctx: Ctx) -> suppression.Table:
    """The combined funnel + per-criterion table, suppressed when suppression is on."""
    def build():
        frame = export.attrition_frame(result(ctx), labels(ctx), kinds(ctx))
        return suppression.suppress_attrition(frame, ctx.k) if ctx.k else suppression.unsuppressed(frame)

    return memo(("attrition", *ckey(ctx)), build)


def figure(ctx: Ctx, name: str, build, *extra):
    """A plotly figure built once per engine / scenario / order / suppression / policy (and `extra`)."""
    return memo(("figure", name, *ckey(ctx, ctx.policy, *extra)), build)


def totals(ctx: Ctx) -> dict[str, int | None]:
    """Eligible counts for the metric cards (None where suppressed)."""
    table = attrition(ctx)
    last = table.masked().iloc[-1]
    screened = ctx.data.cohort.n

    def val(col):
        v = last[col]
        return None if pd.isna(v) else int(v)

    return {"screened": screened, "strict": val("strict"), "optimistic": val("optimistic"),
            "unknown": val("unknown_so_far")}


def compare_tables(ctx: Ctx) -> tuple[suppression.Table, suppression.Table]:
    """Scenario vs protocol: eligible totals and per-criterion deltas (suppressed when on)."""
    def build():
        tot, deltas = comparison(ctx)
        if not ctx.k:
            return suppression.unsuppressed(tot), suppression.unsuppressed(deltas)
        last = attrition(ctx).hidden.iloc[-1]
        force = [(m, "other") for m, col in (("strict", "strict"), ("optimistic", "optimistic"),
                                              ("unknown", "unknown_so_far")) if bool(last[col])]
        return (suppression.suppress_totals(tot, ctx.k, force),
                suppression.suppress_compare(deltas, ctx.k, ("failed", "unknown", "unique")))

    return memo(("compare", *ckey(ctx)), build)


def site_tables(ctx: Ctx) -> tuple[suppression.Table, suppression.Table] | None:
    if "site_id" not in ctx.data.cohort.present:
        return None

    def build():
        sites = patients.with_rates(patients.site_table(ctx.engine, ctx.scenario))
        countries = patients.with_rates(patients.country_table(sites))
        if ctx.k:
            return suppression.suppress_sites(sites, countries, ctx.k)
        return suppression.unsuppressed(sites), suppression.unsuppressed(countries)

    return memo(("sites", engine_key(ctx.engine), scenario_key(ctx.scenario), ctx.k), build)


def cohort_profile(ctx: Ctx) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Completeness per column (per cohort) and assessability per rule (per scenario)."""
    cols = memo(("completeness", engine_key(ctx.engine)), lambda: patients.completeness(ctx.engine))
    # per-rule counts depend on the thresholds only, not on which criteria are switched off
    thresholds = Scenario(overrides=ctx.scenario.overrides)
    coverage = memo(("coverage", engine_key(ctx.engine), scenario_key(thresholds)),
                    lambda: patients.rule_coverage(ctx.engine, thresholds, cols))
    return cols, coverage


def distribution(ctx: Ctx, measure: patients.Measure) -> patients.Distribution:
    rule_values = ctx.scenario.overrides.get(measure.rule, {})
    key = ("dist", engine_key(ctx.engine), measure.key, tuple(sorted((p, str(v)) for p, v in rule_values.items())))
    return memo(key, lambda: patients.distribution(ctx.engine, measure, ctx.scenario))


def assessability(ctx: Ctx):
    """How much of the protocol this cohort can assess (None for engines without patient rows)."""
    if not hasattr(ctx.engine.cohort, "con"):
        return None
    return memo(("assess", engine_key(ctx.engine), scenario_key(ctx.scenario)),
                lambda: patients.assessability(analysis.engine_for(ctx.engine, ctx.scenario), ctx.scenario))
