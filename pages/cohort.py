"""Cohort: size, sites and countries; completeness and assessability; key distributions."""

import streamlit as st

import ui_state as ui
from kn026 import charts, patients, suppression

ctx = ui.page_start("Cohort", ":material/groups:")
cohort = ctx.data.cohort
columns, coverage = ui.cohort_profile(ctx)

st.title("Cohort")
ui.context_line(ctx)

facts = ui.memo(("facts", ui.engine_key(ctx.engine)), lambda: patients.cohort_facts(ctx.engine))
c = st.columns(4)
c[0].metric("Patients", f"{cohort.n:,}", border=True)
c[1].metric("Sites", f"{facts['sites']:,}" if facts["sites"] is not None else "—", border=True)
c[2].metric("Countries", f"{facts['countries']:,}" if facts["countries"] is not None else "—", border=True,
            help=facts["country_list"] or None)
c[3].metric("Screening period", f"{facts['months']} months" if facts["months"] else "—", border=True,
            delta=facts["dates"] or None, delta_color="off", delta_arrow="off")

n_na = int((coverage["status"] == "n/a").sum())
n_mostly = int((coverage["status"] == "mostly unknown").sum())
n_often = int((coverage["status"] == "often unknown").sum())
absent = [col for col, present in zip(columns["column"], columns["present"], strict=True) if not present]

tab_complete, tab_dist, tab_columns = ui.tabs("cohort", ["Completeness", "Distributions", "Columns"])


def completeness_tab():
    st.subheader("Can every rule be assessed?")
    if n_na:
        na_rules = coverage[coverage["status"] == "n/a"]
        st.warning(f"**{n_na} rule(s) are not assessable (n/a)** because a column they need is absent: "
                   + "; ".join(f"{r} ({reason.split(' absent')[0].replace('columns ', '').replace('column ', '')})"
                               for r, reason in zip(na_rules["rule"], na_rules["reason"], strict=True))
                   + ". They are left out of the funnel, never counted as passed.", icon=":material/block:")
    else:
        st.success(f"All {len(coverage)} rules of stage {ctx.stage} are assessable: every column they need is "
                   "present.", icon=":material/check_circle:")
    if n_mostly:
        st.warning(f"{n_mostly} rule(s) are unknown for at least half of the patients.", icon=":material/help:")
    elif n_often:
        st.info(f"{n_often} rule(s) are unknown for at least 10% of the patients; the others for fewer.",
                icon=":material/help:")
    order = {"n/a": 0, "mostly unknown": 1, "often unknown": 2, "ok": 3}
    view = coverage.assign(_o=coverage["status"].map(order)).sort_values(["_o", "unknown_pct"],
                                                                          ascending=[True, False])
    view = view.drop(columns="_o")
    if ctx.k:
        hide = suppression.primary(view["unknown"].fillna(0).to_numpy(dtype="int64"), ctx.k)
        view.loc[hide, ["unknown", "unknown_pct"]] = None
    st.dataframe(
        view[["rule", "label", "status", "unknown", "unknown_pct", "reason"]], hide_index=True,
        height=400, placeholder="suppressed" if ctx.k else "—", key="coverage_table",
        column_config={
            "rule": st.column_config.TextColumn("Rule", width=150),
            "label": st.column_config.TextColumn("Rule name", width=240),
            "status": st.column_config.TextColumn("Status", width=120),
            "unknown": st.column_config.NumberColumn("Unknown", format="localized", width=90),
            "unknown_pct": st.column_config.ProgressColumn("Unknown %", format="%.1f%%", min_value=0,
                                                           max_value=100, width=130),
            "reason": st.column_config.TextColumn("Why (columns with empty values)", width="large"),
        })
    if (coverage["unknown"].fillna(0) > 0).any():
        top = view.dropna(subset=["unknown_pct"]).nlargest(15, "unknown_pct")
        st.plotly_chart(charts.coverage_figure(top, title="Rules with the most unknown patients"), theme=None,
                        config={"displaylogo": False}, key="coverage_chart")
    st.caption("Empty cells mean *unknown*, except record-based columns (days since an event, cumulative doses) "
               "where an empty cell means *none on record*, and optional ULN / override columns where the "
               "default is used. Unknown on a rule: a value it needs is missing and the other values do not "
               "settle the verdict.")


def distribution_figures() -> list:
    figs = []
    her2 = patients.her2_counts(ctx.engine)
    if not her2.empty:
        h = her2.copy()
        if ctx.k:
            hide = suppression.suppress_parts(h["count"].tolist(), cohort.n, ctx.k)
            h["count"] = h["count"].astype("Int64").mask(hide)
        figs.append(("her2", charts.category_figure(h, "HER2 status (INCL02.HER2)",
                                                    "passes: IHC 3+, or IHC 2+ with ISH positive")))
    for measure in patients.MEASURES:
        dist = ui.distribution(ctx, measure)
        if not dist.available or dist.bins.empty:
            figs.append((measure.key, None, f"**{measure.title}**: {dist.reason or 'no values'}"))
            continue
        bins = dist.bins.copy()
        missing = dist.missing
        if ctx.k:
            hide = suppression.suppress_parts([*bins["count"].tolist(), missing], cohort.n, ctx.k)
            bins["count"] = bins["count"].astype("Int64").mask(hide[:-1])
            missing = 0 if hide[-1] else missing
        figs.append((measure.key, charts.distribution_figure(
            bins, f"{measure.title} ({measure.rule})", measure.unit, dist.limits, measure.passes,
            measure.discrete, missing, cohort.n)))
    return figs


def distributions_tab():
    st.subheader("Key distributions and the protocol's limits")
    st.caption("Bars meeting the current limit are teal, the others red; a dashed line marks the protocol's "
               "limit when the scenario changes it. Extreme values are gathered in the end bins.")
    figs = ui.memo(("distribution_figures", *ui.ckey(ctx)), distribution_figures)
    for i in range(0, len(figs), 3):
        row = st.columns(3)
        for col, item in zip(row, figs[i:i + 3], strict=False):
            with col:
                if item[1] is None:
                    st.info(item[2])
                else:
                    st.plotly_chart(item[1], theme=None, config={"displaylogo": False}, key=f"dist_{item[0]}")


def columns_tab():
    st.subheader("Columns of the data dictionary")
    if absent:
        st.caption(f"{len(absent)} column(s) absent from this cohort: {', '.join(absent)}.")
    cols = columns.copy()
    if ctx.k:
        hide = suppression.primary(cols["missing"].to_numpy(dtype="int64"), ctx.k)
        cols["missing"] = cols["missing"].astype("Int64").mask(hide)
        cols["missing_pct"] = cols["missing_pct"].astype("Float64").mask(hide)
    cols["present"] = cols["present"].map({True: "present", False: "absent"})
    st.dataframe(cols, hide_index=True, height=520, placeholder="suppressed" if ctx.k else "—", key="columns_table",
                 column_config={
                     "column": st.column_config.TextColumn("Column"),
                     "description": st.column_config.TextColumn("Description", width="medium"),
                     "unit": st.column_config.TextColumn("Unit", width="small"),
                     "present": st.column_config.TextColumn("In cohort", width="small"),
                     "missing": st.column_config.NumberColumn("Empty", format="localized", width="small"),
                     "missing_pct": st.column_config.ProgressColumn("Empty %", format="%.1f%%", min_value=0,
                                                                    max_value=100, width="small"),
                     "empty_means": st.column_config.TextColumn("Empty means", width="small"),
                     "used_by": st.column_config.TextColumn("Used by rules", width="medium"),
                 })
    if cohort.extra:
        st.caption("Other columns kept as read (not in the dictionary): " + ", ".join(cohort.extra))


for tab, body in ((tab_complete, completeness_tab), (tab_dist, distributions_tab), (tab_columns, columns_tab)):
    if tab.open:
        with tab:
            body()

ui.page_end()
