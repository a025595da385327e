"""Patients: filter by criterion status, inspect one patient rule by rule, download results."""

import re

import pandas as pd
import streamlit as st

from kn026.report import charts, export, patients, suppression
from ui import components, results, scenarios, session, shell
from ui import patients as page

VERDICT_STYLE = {
    "pass": "color: #1b7a70; font-weight: 600",
    "fail": "color: #b2432f; font-weight: 600",
    "unknown": "color: #a66300; font-weight: 600",
    "n/a": "color: #6b7280",
}

ctx = shell.page_start("Patients", ":material/person_search:")
engine, scenario = ctx.engine, ctx.scenario
labels = results.labels(ctx)
targets = patients.targets(engine)
target_label = dict(targets)

st.title("Patients")
components.context_line(ctx)

tab_find, tab_downloads = session.tabs("patients", ["Find and inspect patients", "Downloads"])


def find_tab():
    with st.container(border=True):
        st.markdown("**Filter patients** — conditions combine with *and*")
        c1, c2, c3 = st.columns([1.2, 2.2, 0.8], vertical_alignment="bottom")
        skey, tkey = page.COND_STATUS, page.COND_TARGET
        c1.selectbox("Status", patients.STATUSES, key=skey,
                     help="fails: fails it (whatever else). fails only: fails it and no other criterion in the "
                          "funnel. unknown on: cannot be assessed on it (and does not fail it). passes: passes it.")
        c2.selectbox("Criterion or sub-rule", [t for t, _ in targets], key=tkey,
                     format_func=lambda t: f"{t} · {target_label.get(t, '')}")
        c3.button("Add", on_click=page.add_condition, args=(skey, tkey), type="primary", width="stretch",
                  icon=":material/add:")
        xkey = page.EXAMPLES
        st.pills("Examples", [f"{s} {t}" for s, t in ctx.protocol.examples.filters], key=xkey, on_change=page.add_example, args=(xkey,))
        conds = page.conditions()
        if conds:
            st.markdown("**Active conditions** (click one to remove it)")
            with st.container(horizontal=True):
                for i, cond in enumerate(conds):
                    st.button(f"{cond.status} **{cond.target}** ✕", key=page.remove_condition_key(i, cond),
                              on_click=page.remove_condition, args=(i,),
                              help=f"{target_label.get(cond.target, '')} — click to remove")
                st.button("Clear all", on_click=page.clear_conditions, key=page.CLEAR_CONDITIONS, type="tertiary")
        e1, e2, _ = st.columns([1, 1, 2])
        eligible = e1.selectbox("Eligible", ["any", "yes", "no", "unknown"], key=page.ELIGIBLE_FILTER,
                                help="Over the criteria in the current funnel: yes = no fail and no unknown; "
                                     "no = at least one fail; unknown = no fail but something unknown.")
        site_choice = "All sites"
        if "site_id" in ctx.data.cohort.present:
            site_list = page.site_list(ctx)
            site_choice = e2.selectbox("Site", ["All sites", *site_list], key=page.SITE_FILTER)
    found = patients.find(engine, scenario, conds, None if eligible == "any" else eligible,
                          None if site_choice == "All sites" else site_choice, limit=500)
    what = " and ".join(f"{c.status} {c.target}" for c in conds) or "all patients"
    st.markdown(f"#### {found.total:,} patient{'s' if found.total != 1 else ''} · {what}"
                + (f" · eligible {eligible}" if eligible != "any" else "")
                + (f" · site {site_choice}" if site_choice != "All sites" else ""))
    if found.total > len(found.frame):
        st.caption(f"Showing the first {len(found.frame):,} by patient ID (download the screening log for all). "
                   "Select a row to inspect that patient below.")
    else:
        st.caption("Select a row to inspect that patient below.")
    listing = found.frame.rename(columns={"patient_id": "Patient", "site_id": "Site", "country": "Country",
                                          "eligible": "Eligible", "fails": "Fails", "unknown on": "Unknown on"})
    picked = st.dataframe(listing, hide_index=True, height=280, on_select="rerun", selection_mode="single-row",
                          key=page.patient_list_key(len(conds), eligible, site_choice),
                          column_config={"Patient": st.column_config.TextColumn(width=110),
                                         "Site": st.column_config.TextColumn(width=70),
                                         "Country": st.column_config.TextColumn(width=120),
                                         "Eligible": st.column_config.TextColumn(width=80),
                                         "Fails": st.column_config.TextColumn(width="large"),
                                         "Unknown on": st.column_config.TextColumn(width="medium")})
    rows = picked.selection.rows if picked is not None and hasattr(picked, "selection") else []
    if page.selection_changed("patient_list", rows) and rows:
        page.set_patient(str(found.frame["patient_id"].iloc[rows[0]]))

    st.subheader("One patient, rule by rule")
    ids = found.frame["patient_id"].astype(str).tolist()
    current = page.selected_patient()
    if current is None and ids:
        current = ids[0]
    options = ids if current in ids or current is None else [current, *ids]
    pkey = page.seed_widget("patient_pick", current)
    p1, p1b, p2 = st.columns([1, 1, 3], vertical_alignment="bottom")
    p1.selectbox("Patient", options, key=pkey, on_change=page.select_patient, args=(pkey,),
                 placeholder="Pick a patient", help="The patients matching the filter (or select a table row).")
    ikey = page.PATIENT_ID_INPUT
    p1b.text_input("…or type a patient ID", key=ikey, on_change=page.select_patient, args=(ikey,),
                   placeholder="e.g. P0000001")
    summary = None
    if current:
        try:
            summary = patients.patient_summary(engine, scenario, current)
        except KeyError:
            p2.warning(f"No patient with ID **{current}** in this cohort.", icon=":material/person_off:")
    if summary:
        verdict = summary["eligible"]
        color = {"yes": "green", "no": "red", "unknown": "orange"}[verdict]
        where = " · ".join(str(x) for x in (summary["site_id"], summary["country"]) if x)
        p2.markdown(f"**{current}** :{color}-badge[eligible: {verdict}] {where}  \n"
                    + (f"Fails **{', '.join(summary['fails'])}**" if summary["fails"] else "Fails no criterion")
                    + (f" · unknown on **{', '.join(summary['unknown'])}**" if summary["unknown"] else ""))
        detail = patients.patient_detail(engine, scenario, current)
        only = st.segmented_control("Rules shown", ["All", "Not passed"],
                                    default="Not passed" if verdict != "yes" else "All",
                                    key=page.DETAIL_FILTER, required=True)
        if only == "Not passed":
            detail = detail[detail["verdict"] != "pass"]
        view = detail[["rule", "verdict", "requirement", "values", "note"]].rename(
            columns={"rule": "Rule", "requirement": "Requirement (current thresholds)",
                     "values": "Patient's values", "verdict": "Verdict", "note": "Note"})
        if view.empty:
            st.success("This patient passes every rule.", icon=":material/check_circle:")
        else:
            styled = view.style.map(lambda v: VERDICT_STYLE.get(v, ""), subset=["Verdict"]).hide(axis="index")
            st.table(styled)


def downloads_tab():
    st.subheader("Downloads")
    st.caption("Files reflect the current stage, scenario, funnel order and unknown handling. "
               + (f"Aggregate tables and charts hide counts below {ctx.k} and complementary counts."
                  if ctx.k else "Small-cell suppression is off."))
    slug = re.sub(r"[^A-Za-z0-9]+", "_", ctx.scenario_name).strip("_").lower()
    base = f"kn026_stage{ctx.stage}_{slug}"
    about = export.about_rows(ctx.data.label, ctx.data.cohort.n, ctx.stage, scenario, ctx.protocol,
                              charts.POLICY_LABELS[ctx.policy], scenarios.ORDER_LABELS[ctx.order_mode], ctx.k)
    attrition = export.table_for_export(results.attrition(ctx), export.ATTRITION_COLUMNS)
    sheets = {"Attrition": attrition}
    if not ctx.is_protocol:
        tot, deltas = results.compare_tables(ctx)
        sheets["Scenario vs protocol"] = export.table_for_export(tot, {"measure": "Measure", "base": "Protocol",
                                                                       "other": "Scenario", "delta": "Change"})
        sheets["Per-criterion changes"] = export.table_for_export(deltas, {})
    site_tabs = results.site_tables(ctx)
    if site_tabs is not None:
        sheets["Sites"] = export.table_for_export(site_tabs[0], {})
        sheets["Countries"] = export.table_for_export(site_tabs[1], {})

    def figures():
        res = results.result(ctx)
        shown = results.attrition(ctx).masked()
        out = [("Sequential attrition", charts.funnel_figure(shown, labels, results.texts(ctx), ctx.policy, title=None))]
        combos = res.combinations(12, "strict" if ctx.policy == "strict" else "optimistic")
        if not combos.empty:
            if ctx.k:
                combos = suppression.suppress_independent(combos, ["count"], ctx.k, also={"pct": "count"}).masked()
            out.append(("Most frequent failure combinations",
                        charts.combinations_figure(combos, list(res.plan.ids), labels,
                                                   "strict" if ctx.policy == "strict" else "optimistic", title="")))
        if not ctx.is_protocol:
            tot, _ = results.compare_tables(ctx)
            out.append(("Scenario vs protocol", charts.compare_figure(tot.masked(), ctx.scenario_name, title="")))
        if site_tabs is not None:
            out.append(("Screened and eligible per site", charts.sites_figure(site_tabs[0].masked(), title="")))
            out.append(("Screened and eligible per country",
                        charts.sites_figure(site_tabs[1].masked(), key="country", title="")))
        return out

    figs = figures()
    con = engine.con
    log_sql = export.screening_log_sql(engine, scenario)  # on this thread: it may store the masks

    def log_csv():
        cursor = con.cursor()  # the download runs on its own thread: give it its own cursor
        try:
            return export.screening_log_csv(engine, scenario, con=cursor, sql=log_sql)
        finally:
            cursor.close()

    grid = st.columns(2)
    with grid[0].container(border=True):
        st.markdown("**Screening log** (CSV)")
        st.caption(f"One row per patient ({ctx.data.cohort.n:,}): pass / fail / unknown / n/a per criterion and "
                   "sub-rule, and eligible yes / no / unknown. Patient-level: share only under your data "
                   "agreement.")
        st.download_button("Screening log (CSV)", log_csv, file_name=f"{base}_screening_log.csv", mime="text/csv",
                           icon=":material/download:", on_click="ignore", key="dl_log")
    with grid[1].container(border=True):
        st.markdown("**Attrition tables** (CSV and Excel)")
        st.caption("Remaining and lost per step, failures, unique failures, unknowns and Shapley shares; the Excel "
                   "workbook adds the scenario comparison, sites and countries, and an About sheet.")
        d1, d2 = st.columns(2)
        d1.download_button("Attrition (CSV)", export.csv_bytes(attrition), file_name=f"{base}_attrition.csv",
                           mime="text/csv", icon=":material/download:", on_click="ignore", key="dl_attrition_csv")
        d2.download_button("Tables (Excel)", lambda: export.excel_bytes(sheets, about),
                           file_name=f"{base}_tables.xlsx", on_click="ignore", key="dl_excel",
                           mime="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                           icon=":material/table_view:")
    with grid[0].container(border=True):
        st.markdown("**Charts** (HTML)")
        st.caption(f"{len(figs)} interactive charts in one self-contained web page (opens offline in any browser): "
                   + ", ".join(t.lower() for t, _ in figs) + ".")
        st.download_button("Charts (HTML)", lambda: export.charts_html(figs, "KN026 feasibility charts", about),
                           file_name=f"{base}_charts.html", mime="text/html", icon=":material/bar_chart:",
                           on_click="ignore", key="dl_html")
    with grid[1].container(border=True):
        st.markdown("**About these files**")
        st.dataframe(pd.DataFrame(about, columns=["Item", "Value"]), hide_index=True, key="about_table")


for tab, body in ((tab_find, find_tab), (tab_downloads, downloads_tab)):
    if tab.open:
        with tab:
            body()

shell.page_end()
