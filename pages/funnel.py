"""Funnel: sequential attrition, per-criterion table, overlaps, scenario vs protocol."""

import pandas as pd
import streamlit as st

from kn026.report import charts, suppression
from ui import components, results, scenarios, session, shell
from ui import funnel as page

ctx = shell.page_start("Funnel", ":material/filter_alt:")
res = results.result(ctx)
labels, texts = results.labels(ctx), results.texts(ctx)
table = results.attrition(ctx)
shown = table.masked()
placeholder = "suppressed" if ctx.k else ""

st.title("Eligibility funnel")
components.context_line(ctx)
components.metric_cards(ctx)

left, right = st.columns([3, 2], vertical_alignment="bottom")
with left:
    key = page.order_key(ctx.order_mode)  # redrawn when a hand reorder sets the mode
    st.segmented_control("Funnel order", list(scenarios.ORDER_MODES), format_func=scenarios.ORDER_LABELS.get,
                         default=ctx.order_mode, key=key, on_change=scenarios.set_order_mode,
                         args=(key, tuple(res.plan.ids)), required=True)
with right:
    if ctx.order_mode == "manual":
        st.caption("Reorder by hand on the **Criteria** page (type a new position in the table).")

tab_funnel, tab_table, tab_overlap, tab_compare = session.tabs(
    "funnel", ["Funnel", "Per-criterion table", "Overlap", "Scenario vs protocol"])

if tab_funnel.open:
    with tab_funnel:
        fig = results.figure(ctx, "funnel", lambda: charts.funnel_figure(
            shown, labels, texts, ctx.policy,
            title=f"Patients remaining after each criterion · {charts.POLICY_LABELS[ctx.policy]}"))
        st.plotly_chart(fig, theme=None, config={"displaylogo": False}, key="funnel_chart")
        if ctx.policy == "both":
            st.caption("Blue: eligible so far under the strict reading (unknown counts as failing). "
                       "Amber: patients whose eligibility is still unknown; blue + amber is the optimistic bound. "
                       "Hover a bar for the criterion's text and counts.")
        components.left_out(ctx, res)

if tab_table.open:
    with tab_table:
        st.subheader("Per criterion, in funnel order")
        st.caption("Remaining and lost depend on the order. Fail (marginal), fail only this (unique), unknown "
                   "and the Shapley share do not: the Shapley share splits each excluded patient equally among "
                   "the criteria that exclude them, so shares add up to the number excluded.")
        cols = ["step", "criterion", "label", "strict", "optimistic", "unknown_so_far", "lost_strict",
                "lost_optimistic", "failed", "unique", "unknown", "shapley_strict", "shapley_optimistic"]
        if ctx.policy == "strict":
            cols = [c for c in cols if c not in ("optimistic", "unknown_so_far", "lost_optimistic",
                                                 "shapley_optimistic")]
        elif ctx.policy == "optimistic":
            cols = [c for c in cols if c not in ("strict", "lost_strict", "shapley_strict")]
        count = st.column_config.NumberColumn
        config = {
            "step": st.column_config.NumberColumn("Step", width=50, pinned=True),
            "criterion": st.column_config.TextColumn("Criterion", width=80, pinned=True),
            "label": st.column_config.TextColumn("Short name", width=210),
            "strict": count("Remaining · strict", format="localized"),
            "optimistic": count("Remaining · optimistic", format="localized"),
            "unknown_so_far": count("Unknown so far", format="localized"),
            "lost_strict": count("Lost here · strict", format="localized"),
            "lost_optimistic": count("Lost here · optimistic", format="localized"),
            "failed": count("Fail (marginal)", format="localized"),
            "unique": count("Fail only this", format="localized"),
            "unknown": count("Unknown on it", format="localized"),
            "shapley_strict": count("Shapley · strict", format="%,.1f"),
            "shapley_optimistic": count("Shapley · optimistic", format="%,.1f"),
        }
        st.dataframe(shown[cols], hide_index=True, column_config=config, height=36 * min(len(shown), 18) + 38,
                     placeholder=placeholder, key="attrition_table")

if tab_overlap.open:
    with tab_overlap:
        st.subheader("Which criteria exclude patients together")
        c1, c2 = st.columns([1, 2])
        with c1:
            top = st.slider("Combinations shown", 5, 25, 12, key=page.overlap_top_key())
        with c2:
            if ctx.policy == "both":
                bound = st.radio("Count a patient under", ["optimistic", "strict"], horizontal=True,
                                 key=page.overlap_bound_key(),
                                 format_func={"optimistic": "the criteria they fail",
                                              "strict": "the criteria they fail or are unknown on"}.get)
            else:
                bound = ctx.policy
        combos = page.combinations(ctx, res, top, bound)
        if combos.empty:
            st.info("No patient is excluded by the criteria in this funnel.")
        else:
            if ctx.k:
                combos = suppression.suppress_independent(combos, ["count"], ctx.k, also={"pct": "count"}).masked()
            fig = results.figure(ctx, "overlap", lambda: charts.combinations_figure(combos, list(res.plan.ids), labels,
                                                                             bound), top, bound)
            st.plotly_chart(fig, theme=None, config={"displaylogo": False}, key="overlap_chart")
            st.caption("Each excluded patient is counted once, under the exact set of criteria that exclude them "
                       "(UpSet style). Bars: patients; dots: the criteria in the combination.")
            listing = pd.DataFrame({"Combination": combos["label"], "Criteria": combos["size"],
                                    "Patients": combos["count"], "% of screened": combos["pct"]})
            st.dataframe(listing, hide_index=True, placeholder=placeholder, key="overlap_table",
                         column_config={"Patients": st.column_config.NumberColumn(format="localized"),
                                        "% of screened": st.column_config.NumberColumn(format="%.2f%%")})

if tab_compare.open:
    with tab_compare:
        if ctx.is_protocol:
            st.info("The protocol as written is selected. Pick a scenario in the sidebar, or change a threshold "
                    "or switch a criterion off on the Criteria page, to compare it with the protocol.",
                    icon=":material/compare_arrows:")
            st.page_link("pages/criteria.py", label="Open the Criteria page", icon=":material/rule:")
        else:
            tot, deltas = results.compare_tables(ctx)
            st.subheader(f"{ctx.scenario_name} vs the protocol")
            changes = ctx.scenario.changes(ctx.protocol)
            st.caption("Changes: " + ("; ".join(changes) if changes else "none (same as the protocol)"))
            c1, c2 = st.columns([3, 2])
            with c1:
                st.plotly_chart(results.figure(ctx, "compare", lambda: charts.compare_figure(tot.masked(),
                                                                                      ctx.scenario_name)),
                                theme=None, config={"displaylogo": False}, key="compare_chart")
            with c2:
                t = tot.masked()
                t["measure"] = t["measure"].map({"screened": "Screened", "strict": "Eligible · strict",
                                                 "optimistic": "Eligible · optimistic", "unknown": "Unknown"})
                st.dataframe(t.rename(columns={"measure": "", "base": "Protocol", "other": "Scenario",
                                               "delta": "Change"}),
                             hide_index=True, placeholder=placeholder, key="compare_totals",
                             column_config={c: st.column_config.NumberColumn(format="localized")
                                            for c in ("Protocol", "Scenario")}
                             | {"Change": st.column_config.NumberColumn(format="%+,d")})
            st.markdown("**Per criterion**: patients failing, unknown on, or failing only this criterion, "
                        "protocol → scenario.")
            d = deltas.masked()
            show_all = st.toggle("Show unchanged criteria too", key=page.compare_all_key())
            changed = (d[["failed_delta", "unknown_delta", "unique_delta"]].fillna(1) != 0).any(axis=1) | \
                (d["in_base"] != d["in_other"])
            view = d if show_all else d[changed]
            view = view.assign(label=[labels.get(c, "") for c in view["criterion"]],
                               status=["disabled in scenario" if not o else "only in scenario" if not b else ""
                                       for b, o in zip(view["in_base"], view["in_other"], strict=True)])
            cols = ["criterion", "label", "status", "failed_base", "failed_other", "failed_delta", "unknown_base",
                    "unknown_other", "unknown_delta", "unique_base", "unique_other", "unique_delta"]
            num = st.column_config.NumberColumn
            cfg = {"criterion": st.column_config.TextColumn("Criterion", width=80, pinned=True),
                   "label": st.column_config.TextColumn("Short name", width=200), "status": "Note",
                   "failed_base": num("Fail · protocol", format="localized"),
                   "failed_other": num("Fail · scenario", format="localized"),
                   "failed_delta": num("Fail · change", format="%+,d"),
                   "unknown_base": num("Unknown · protocol", format="localized"),
                   "unknown_other": num("Unknown · scenario", format="localized"),
                   "unknown_delta": num("Unknown · change", format="%+,d"),
                   "unique_base": num("Only this · protocol", format="localized"),
                   "unique_other": num("Only this · scenario", format="localized"),
                   "unique_delta": num("Only this · change", format="%+,d")}
            if view.empty:
                st.info("No criterion changes its counts under this scenario.")
            else:
                st.dataframe(view[cols], hide_index=True, column_config=cfg, placeholder=placeholder,
                             key="compare_table")
                if (view["failed_delta"].fillna(0) != 0).any():
                    st.plotly_chart(charts.deltas_figure(view, labels), theme=None,
                                    config={"displaylogo": False}, key="deltas_chart")

shell.page_end()
