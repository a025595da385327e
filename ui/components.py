"""Rendering helpers every page shares: the context line, metric cards, left-out notes.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from kn026.core import analysis
from kn026.report import patients
from ui.results import assessability, compare_tables, totals
from ui.scenarios import ORDER_LABELS
from ui.session import Ctx, engine_key, memo

# --------------------------------------------------------------------------- shared rendering


def fmt(value) -> str:
    return "suppressed" if value is None else f"{int(value):,}"


def context_line(ctx: Ctx) -> None:
    """One line under a page title: protocol, stage, cohort, scenario, order, suppression."""
    parts = [f"{ctx.protocol.name} · {ctx.protocol.stages.get(ctx.stage, f'Stage {ctx.stage}')}",
             ctx.data.label,
             "Protocol as written" if ctx.is_protocol else f"Scenario: {ctx.scenario_name}",
             ORDER_LABELS[ctx.order_mode]]
    if ctx.k:
        parts.append(f"counts below {ctx.k} hidden")
    st.caption(" · ".join(parts))
    assessability_notice(ctx)


def assessability_notice(ctx: Ctx) -> None:
    """Say beside the counts when rules are n/a (naming the missing columns), and warn when
    so much is n/a or unknown that the counts say little (dictionary section 1)."""
    report = assessability(ctx)
    if report is None or not (report.not_assessable or report.mostly_unknown):
        return
    if report.little:
        st.warning("**Little of the protocol can be assessed on this cohort.**  \n"
                   + "  \n".join(f"- {m}" for m in report.messages()), icon=":material/report:")
        return
    shown = "; ".join(f"{rid} (missing {needs})" for rid, needs in list(report.not_assessable.items())[:8])
    more = len(report.not_assessable) - 8
    st.caption(f":material/info: Not assessable, left out of the counts: {shown}"
               + (f" and {more} more" if more > 0 else "") + ".")


def metric_cards(ctx: Ctx) -> None:
    """Screened / eligible strict / eligible optimistic / unknown, with deltas vs the protocol."""
    t = totals(ctx)
    base = None
    if not ctx.is_protocol:
        tot, _ = compare_tables(ctx)
        m = tot.masked().set_index("measure")
        base = {row: (None if pd.isna(m.loc[row, "delta"]) else int(m.loc[row, "delta"]))
                for row in ("strict", "optimistic", "unknown")}
    n = t["screened"] or 1

    def pct(v):
        return None if v is None else f"{100 * v / n:.1f}% of screened"

    cols = st.columns(4)
    facts = memo(("facts", engine_key(ctx.engine)), lambda: patients.cohort_facts(ctx.engine))
    where = (f"{facts['sites']:,} sites" if facts["sites"] else "") + \
        (f" · {facts['countries']} countries" if facts["countries"] else "")
    cols[0].metric(":gray[■] Screened", fmt(t["screened"]), border=True, delta=where or None,
                   delta_color="off", delta_arrow="off",
                   help="Patients in the cohort (everyone is screened against every criterion).")
    specs = (("strict", ":blue[■] Eligible · strict", "normal",
              "No criterion fails and none is unknown (unknown counts as failing)."),
             ("optimistic", ":green[■] Eligible · optimistic", "normal",
              "No criterion fails (unknown counts as passing): the upper bound."),
             ("unknown", ":orange[■] Unknown", "inverse",
              "Optimistic minus strict: no criterion fails but at least one cannot be assessed."))
    for col, (key, label, color, help_text) in zip(cols[1:], specs, strict=True):
        if base is not None and base[key] is not None:
            col.metric(label, fmt(t[key]), delta=f"{base[key]:+,}", delta_color=color, border=True,
                       help=help_text, delta_description="vs protocol")
        else:
            col.metric(label, fmt(t[key]), delta=pct(t[key]), delta_color="off", delta_arrow="off",
                       border=True, help=help_text)


def left_out(ctx: Ctx, res) -> None:
    """Note which criteria are not in the funnel, and why."""
    items = [f"**{cid}** (disabled)" for cid in res.plan.disabled]
    items += [f"**{cid}** (not assessable: {', '.join(cols)} absent)" for cid, cols in res.plan.not_assessable.items()]
    rules = {r.id: r for r in ctx.engine.rules}
    partly = [rid for rid in analysis.not_assessable_rules(ctx.engine)
              if rules[rid].criterion != rid and rules[rid].criterion not in res.plan.not_assessable]
    items += [f"sub-rule **{rid}** (not assessable: {', '.join(ctx.engine.not_assessable[rid])} absent)"
              for rid in partly]
    off_rules = sorted(r for r in ctx.scenario.disabled if "." in r)
    items += [f"sub-rule **{r}** (disabled)" for r in off_rules]
    if items:
        st.info("Left out of the funnel: " + "; ".join(items), icon=":material/info:")
