"""Cohort: size, sites and countries; completeness and assessability; key distributions;
loading data through the OMOP and column-mapping wizards, and their import report."""

import datetime as dt

import streamlit as st

from kn026.report import charts, patients, suppression
from ui import badcells, components, results, scenarios, session, shell, sources, wizard
from ui import cohort as page

ctx = shell.page_start("Cohort", ":material/groups:")
cohort = ctx.data.cohort
columns, coverage = results.cohort_profile(ctx)

st.title("Cohort")
components.context_line(ctx)

facts = page.facts(ctx)
c = st.columns(4)
c[0].metric("Patients", f"{cohort.n:,}", border=True)
c[1].metric("Sites", f"{facts['sites']:,}" if facts["sites"] else "—", border=True)
c[2].metric("Countries", f"{facts['countries']:,}" if facts["countries"] else "—", border=True,
            help=facts["country_list"] or None)
c[3].metric("Screening period", f"{facts['months']} months" if facts["months"] else "—", border=True,
            delta=facts["dates"] or None, delta_color="off", delta_arrow="off")

n_na = int((coverage["status"] == "n/a").sum())
n_mostly = int((coverage["status"] == "mostly unknown").sum())
n_often = int((coverage["status"] == "often unknown").sum())
absent = [col for col, present in zip(columns["column"], columns["present"], strict=True) if not present]

tab_complete, tab_dist, tab_columns, tab_load, tab_report = session.tabs(
    "cohort", ["Completeness", "Distributions", "Columns", "Load data", "Import report"])


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
    for chart in ctx.protocol.categories:  # patients per category, coloured by the rule's verdict
        h = patients.category_counts(ctx.engine, chart, ctx.scenario)
        if h.empty:
            continue
        if ctx.k:
            hide = suppression.suppress_parts(h["count"].tolist(), cohort.n, ctx.k)
            h["count"] = h["count"].astype("Int64").mask(hide)
        figs.append((f"cat_{chart.rule}", charts.category_figure(h, f"{chart.title} ({chart.rule})", chart.subtitle)))
    for measure in patients.measures(ctx.protocol):
        dist = results.distribution(ctx, measure)
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
    figs = page.distribution_figures(ctx, distribution_figures)
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


def in_use(text: str) -> None:
    """The loaded cohort's line: a green tick only when it can assess the protocol (sources.data_badge)."""
    kind, badge = sources.data_badge()
    if kind == "ok":
        st.success(f"{text} {badge}", icon=":material/check_circle:")
    elif kind == "little":
        st.warning(f"{text} **Little can be assessed.** {badge}", icon=":material/report:")
    else:
        st.info(f"{text} {badge}", icon=":material/info:")


def changes_table(changes) -> None:
    """What the analyst's choices about bad cells changed (kn026.ingest.edits.Change), one row each."""
    st.dataframe(sources.changes_frame(changes), hide_index=True, width="stretch", column_config={
        "column": st.column_config.TextColumn("Column", width=180),
        "change": st.column_config.TextColumn("Your choice", width="large"),
        "result": st.column_config.TextColumn("What it changed", width=170),
        "rows": st.column_config.TextColumn("Rows", width=200),
    })


def show_import_error(source: str) -> None:
    err = sources.import_error(source)
    if err is None:
        return
    message, problems, _total = err
    with st.container(border=True):
        st.error(message, icon=":material/error:")
        if problems:
            st.dataframe(sources.problems_frame(problems), hide_index=True, width="stretch")
            st.caption("Row numbers count data rows: row 1 is the first line under the header.")
        st.button("Dismiss", key=page.DISMISS_IMPORT_ERROR, on_click=sources.dismiss_import_error)


def omop_wizard():
    st.subheader("Import an OMOP CDM (zip)")
    st.caption(f"A .zip of the CDM 5.3 / 5.4 tables as CSV or Parquet (PERSON, OBSERVATION_PERIOD, MEASUREMENT, "
               f"CONDITION_OCCURRENCE, DRUG_EXPOSURE, CONCEPT, ...), at most {sources.upload_limit_mb()} MB. It is "
               "read in memory, in this session only; nothing is written to disk.")
    st.file_uploader("OMOP CDM zip", type=["zip"], key=sources.OMOP_ZIP_KEY, max_upload_size=sources.upload_limit_mb())
    c1, c2, c3 = st.columns([2, 1, 1], gap="large")
    with c1:
        index = st.radio("Index date", list(sources.OMOP_INDEX_LABELS), format_func=sources.OMOP_INDEX_LABELS.get,
                         horizontal=True, **sources.load_setting("omop_index", "last"),
                         help="The date each person is screened at. Only records up to it are used.")
        if index == "fixed":
            st.date_input("Fixed index date", min_value=dt.date(1900, 1, 1), max_value=dt.date(2100, 12, 31),
                          format="YYYY-MM-DD", **sources.load_setting("omop_date", dt.date.today()))
    c2.number_input("Look-back for labs (days)", min_value=0, max_value=36500, step=1,
                    **sources.load_setting("omop_lookback", 30),
                    help="Each lab is the latest value within this many days up to the index date.")
    with c3:
        st.write("")
        st.toggle("No record means no", **sources.load_setting("omop_closed", True),
                  help="On: a condition or drug with no record counts as absent (false / none / 0), as for "
                       "a full health record. Off: it is unknown.")
    st.button("Import the OMOP CDM", type="primary", icon=":material/database:", key=page.OMOP_IMPORT,
              on_click=sources.request_omop_import, disabled=not sources.has_upload(sources.OMOP_ZIP_KEY))
    show_import_error("omop")
    if ctx.data.kind == "omop":
        in_use(f"In use: {ctx.data.label}. What each column was filled from is in the **Import report** tab.")


def mapped_columns_grid(targets):
    """One row per dictionary column: name and unit | file column | unit of the file's values."""
    for target in targets:
        col = sources.schema_column(target)
        c1, c2, c3 = st.columns([3, 3, 2], vertical_alignment="center")
        c1.markdown(f"`{target}`" + (f" ({col.unit})" if col.unit else ""), help=col.description or None)
        source = c2.selectbox(target, wizard.map_source_options(target), label_visibility="collapsed",
                              **wizard.map_source_widget(target))
        units = wizard.map_units(target)
        if units and source != wizard.NOT_MAPPED and not source.startswith("constant: "):
            c3.selectbox(f"Unit of {source}", units, label_visibility="collapsed",
                         format_func=lambda u, t=target: wizard.map_unit_label(t, u), **wizard.map_unit_widget(target))
        kind, note = wizard.map_note(target)  # QTc -> qtcf_ms, eGFR -> clearance: only by the analyst's choice
        if kind == "held":
            st.warning(note, icon=":material/help:")
        elif kind == "chosen":
            st.info(note, icon=":material/info:")


def dates_section():
    """One format per date column: recognised when the values prove it, else chosen here."""
    dates = wizard.map_date_columns()
    if not dates:
        return
    st.markdown("#### 3 · Dates")
    st.caption("Each date column is read with one format for every row, never guessed value by value. A format "
               "is recognised when the values prove it (ISO 8601 such as 2022-09-05, a month name, or a number "
               "above 12 that can only be the day); when every date reads both day first and month first, "
               "choose.")
    h1, h2, h3 = st.columns([3, 3, 4])
    h1.caption("Date column ← file column")
    h2.caption("Format of the file's dates")
    h3.caption("First values, as read")
    for d in dates:
        c1, c2, c3 = st.columns([3, 3, 4], vertical_alignment="center")
        c1.markdown(f"`{d.key}` ← “{d.source}”")
        options = wizard.map_date_options(d)
        if options:
            labels = {code: wizard.map_date_label(d, code) for code in options}  # a plain lookup: AppTest calls it
            c2.selectbox(f"Date format of {d.source}", options, label_visibility="collapsed",
                         format_func=labels.get, **wizard.map_date_widget(d))
        else:
            c2.caption("dates already (no format needed)")
        c3.markdown("  \n".join(f"{value} → **{read}**" for value, read in wizard.map_date_samples(d)) or "—")
        kind, note = wizard.map_date_note(d)
        if kind == "asked":
            st.warning(note, icon=":material/event:")
        elif kind == "chosen" and "problems below" in note:
            st.info(note, icon=":material/info:")
        else:
            st.caption(note)


def date_ranges():
    """Earliest and latest date of each date column as read: wrong years or months show at once."""
    report = wizard.map_date_report()
    report = report[report["dates"] > 0]
    if report.empty:
        return
    lines = [f"- `{r.column}` from “{r.source}” read as {r.shown}: earliest **{wizard.human_date(r.earliest)}**, "
             f"latest **{wizard.human_date(r.latest)}** ({r.dates:,} dates)" for r in report.itertuples()]
    st.markdown("**Dates as read** (check the years and months):\n" + "\n".join(lines))


def mapping_wizard():
    st.subheader("Import a CSV / Excel file with a column mapping")
    st.caption("For exports in another layout: map the file's columns to the data dictionary, choose units and "
               f"value translations, check the preview, load. At most {sources.upload_limit_mb()} MB; read in memory, "
               "in this session only; nothing is written to disk.")
    c1, c2 = st.columns(2, gap="large")
    c1.file_uploader("1 · The file (CSV UTF-8, Excel .xlsx or Parquet)", type=["csv", "txt", "tsv", "xlsx",
                                                                               "parquet"],
                     key=wizard.MAP_FILE_KEY, on_change=wizard.on_map_file, args=(wizard.MAP_FILE_KEY,),
                     max_upload_size=sources.upload_limit_mb())
    f = wizard.map_file()
    if f is not None:
        yaml_key = wizard.map_key("yaml")
        c2.file_uploader("Reuse a saved mapping (YAML)", type=["yaml", "yml"], key=yaml_key,
                         on_change=wizard.on_map_yaml, args=(yaml_key,), max_upload_size=scenarios.text_upload_limit_mb(),
                         help="A mapping downloaded from this wizard (or written by hand, see docs/importers.md).")
    show_import_error("mapped")
    if f is None:
        return
    m = wizard.mapping()
    frame = f["frame"]
    st.markdown(f"**{f['name']}**: {len(frame):,} rows, {len(frame.columns)} columns; {len(m.columns)} mapped to "
                "the dictionary" + (f"; not used: {', '.join(m.unmatched)}" if m.unmatched else "") + ".")

    st.markdown("#### 2 · Columns and units")
    st.radio("Decimal separator in the file", [".", ","], horizontal=True,
             format_func={".": "12.5 (point)", ",": "12,5 (comma)"}.get, **wizard.map_decimal_widget())
    mapped = [c.target for c in m.columns]
    mapped += [t for t in wizard.map_held_targets() if t not in mapped]  # offered, waiting for a choice
    h1, h2, h3 = st.columns([3, 3, 2])
    h1.caption("Dictionary column (unit)")
    h2.caption("File column")
    h3.caption("The file's unit (converted)")
    mapped_columns_grid(mapped)
    others = [c for c in sources.dictionary_columns() if c not in mapped]
    # fixed label (the expander's identity); its content runs only when open
    more = st.expander("Map more dictionary columns", key=session.expander_key("map_more"), on_change="rerun")
    if more.open:
        with more:
            st.caption(f"{len(others)} dictionary column(s) are not mapped; rules that need them are not "
                       "assessable. Choose the file column that holds one:")
            mapped_columns_grid(others)

    dates_section()
    targets = wizard.map_value_targets()
    if targets:
        st.markdown("#### 4 · Values")
        target = st.selectbox("Translate the values of", targets, key=wizard.map_key("value_target"),
                              format_func=lambda t: f"{t} (file column {m.get(t).source})")
        options = wizard.map_value_options(target)
        distinct = wizard.map_distinct_values(target)
        cols = st.columns(3)
        for i, (value, count) in enumerate(distinct):
            cols[i % 3].selectbox(f"“{value}” ({count:,} rows)", options, **wizard.map_value_widget(target, value))
        if not distinct:
            st.caption("The column is empty in the file.")

    st.markdown("#### 5 · Preview and validation")
    waiting = wizard.map_date_wait()
    preview, error = (None, "") if waiting else wizard.map_preview()
    if waiting:
        st.warning(waiting, icon=":material/event:")
    elif error:
        st.error(f"The mapping cannot be applied: {error}", icon=":material/error:")
    elif preview is not None:
        if preview.ok:
            dropped = sources.dropped_count(preview.changes)
            rows = (f"All {preview.n_rows - dropped:,} rows left after your choices ({dropped:,} dropped)"
                    if dropped else f"All {preview.n_rows:,} rows")
            st.success(f"{rows} pass the data dictionary's checks. {len(preview.present)} "
                       f"dictionary column(s) filled; {len(preview.absent)} absent (rules needing them are "
                       "not assessable).", icon=":material/check_circle:")
            badcells.choices_list("mapped", preview.changes)
        else:
            st.error(f"{preview.total_problems:,} problem(s) in the mapped file. Fix the mapping (units, "
                     "values) above, choose below what to do with each, or fix the file.", icon=":material/error:")
            with st.expander("The problems as a table"):
                st.dataframe(sources.problems_frame(preview.problems), hide_index=True, width="stretch")
            badcells.bad_cells_panel("mapped", preview.problems)
        date_ranges()
        st.caption("First rows after mapping (dictionary columns and units):")
        st.dataframe(preview.frame, hide_index=True, width="stretch", height=240)
        if not preview.values.empty:
            with st.expander("Categorical values: what each file value becomes", expanded=not preview.ok):
                st.dataframe(preview.values, hide_index=True, width="stretch", column_config={
                    "valid": st.column_config.CheckboxColumn("Valid"),
                    "maps_to": st.column_config.TextColumn("Becomes"),
                })
    b1, b2, _ = st.columns([2, 2, 3])
    b1.button("Load this cohort", type="primary", icon=":material/upload:", key=page.MAP_LOAD,
              on_click=wizard.request_mapped_load, disabled=preview is None or not preview.ok, width="stretch")
    b2.download_button("Download the mapping (YAML)", wizard.mapping_yaml(), file_name=f"{m.name or 'mapping'}.yaml",
                       mime="application/x-yaml", icon=":material/download:", key=page.MAP_DOWNLOAD,
                       on_click="ignore", width="stretch")
    if ctx.data.kind == "mapped":
        in_use(f"In use: {ctx.data.label}.")


def load_tab():
    source = sources.data_source()
    if source == "omop":
        omop_wizard()
    elif source == "mapped":
        mapping_wizard()
    else:
        st.subheader("Load data")
        st.markdown(f"**In use:** {ctx.data.label}. The built-in cohort, a file already in the data dictionary's "
                    "shape, and a generated cohort are chosen in the sidebar. Data in another shape is imported "
                    "here:")
        c1, c2, _ = st.columns([2, 2, 3])
        c1.button(sources.SOURCES["omop"], icon=":material/database:", key=page.CHOOSE_OMOP, width="stretch",
                  on_click=sources.choose_source, args=("omop",))
        c2.button(sources.SOURCES["mapped"], icon=":material/table_view:", key=page.CHOOSE_MAPPED, width="stretch",
                  on_click=sources.choose_source, args=("mapped",))


def omop_report(rep):
    c = st.columns(4)
    c[0].metric("Persons imported", f"{sources.count_text(rep.n_persons, ctx.k)} of {rep.n_source_persons:,}",
                border=True)
    last = rep.index_date == "last"
    c[1].metric("Index date", "Per person" if last else "Fixed", border=True, delta_color="off", delta_arrow="off",
                delta="each person's last observation" if last else rep.index_date,
                help="The end of each person's last observation period, else their latest record."
                     if last else "One date for everyone.")
    c[2].metric("Look-back for labs", f"{rep.lookback_days} days", border=True)
    c[3].metric("CDM version", rep.cdm_version, border=True,
                help="Closed world: no record means no." if rep.closed_world else "Open world: no record is unknown.")
    st.caption(f"Source: {rep.source}. Rows per table: "
               + ", ".join(f"{t} {sources.count_text(n, ctx.k)}" for t, n in rep.tables.items()))
    if rep.excluded:
        st.info("Left out: " + "; ".join(f"{sources.count_text(n, ctx.k)} {reason}" for reason, n in rep.excluded.items()),
                icon=":material/person_off:")
    if rep.warnings:
        with st.expander(f"{len(rep.warnings)} warning(s)"):
            if ctx.k:
                st.caption("Warnings are patient-level (they name patient_ids) and are not suppressed; share them "
                           "only under your data agreement.")
            for w in rep.warnings:
                st.markdown(f"- {w}")
    table = sources.omop_report_table(rep, ctx.k)
    st.dataframe(table, hide_index=True, width="stretch", height=560, placeholder="suppressed" if ctx.k else "—",
                 key="import_report_table", column_config={
                     "column": st.column_config.TextColumn("Dictionary column", width=190),
                     "status": st.column_config.TextColumn("Status", width=80,
                                                           help="derived: from records; index: PERSON / index "
                                                                "date; absent: OMOP cannot provide it (n/a)"),
                     "with_value": st.column_config.NumberColumn("With a value", format="localized", width=100,
                                                                 help="Patients with a value in this column"),
                     "pct": st.column_config.ProgressColumn("%", format="%.0f%%", min_value=0, max_value=100,
                                                            width=100),
                     "true": st.column_config.TextColumn("Of them true", width=100,
                                                         help="Flags: patients with the value true"),
                     "concepts": st.column_config.TextColumn("From concepts (patients)", width="large"),
                     "units": st.column_config.TextColumn("Units (patients)", width=140),
                     "source": st.column_config.TextColumn("OMOP source", width=200),
                     "note": st.column_config.TextColumn("Note", width="large"),
                 })
    st.download_button("Download the import report (CSV)", sources.report_csv(table), file_name="omop_import_report.csv",
                       mime="text/csv", icon=":material/download:", key=page.REPORT_DOWNLOAD, on_click="ignore")


def upload_report(rep):
    st.markdown(f"**{rep['file']}** was loaded with your choices about its bad cells; the file itself is "
                "unchanged. Every change:")
    changes_table(rep["changes"])


def mapped_report(rep):
    st.markdown(f"**{rep['file']}**: {rep['rows']:,} rows mapped onto {len(rep['mapping'].columns)} dictionary "
                f"column(s); {len(rep['absent'])} absent (rules needing them are not assessable).")
    if rep.get("changes"):
        st.markdown("**Your choices about bad cells** (saved in the mapping below; the file is unchanged):")
        changes_table(rep["changes"])
    table = sources.mapping_table(rep["mapping"])
    for name in ("transform", "date_format"):
        if not table[name].astype(bool).any():
            table = table.drop(columns=name)
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "column": st.column_config.TextColumn("Dictionary column"),
        "from": st.column_config.TextColumn("File column"),
        "unit": st.column_config.TextColumn("Unit conversion"),
        "transform": st.column_config.TextColumn("Date transform"),
        "date_format": st.column_config.TextColumn("Date format", width=260),
        "values": st.column_config.TextColumn("Value translations", width="large"),
    })
    if not rep["values"].empty:
        st.markdown("**Categorical values**")
        st.dataframe(sources.value_table(rep["values"], ctx.k), hide_index=True, width="stretch",
                     placeholder="suppressed" if ctx.k else "—",
                     column_config={"valid": st.column_config.CheckboxColumn("Valid"),
                                    "maps_to": st.column_config.TextColumn("Becomes")})
    st.download_button("Download the mapping (YAML)", rep["mapping"].to_yaml(),
                       file_name=f"{rep['mapping'].name or 'mapping'}.yaml", mime="application/x-yaml",
                       icon=":material/download:", key=page.REPORT_MAPPING_DOWNLOAD, on_click="ignore")


def report_tab():
    st.subheader("Import report")
    rep = sources.import_report()
    if rep is None:
        st.info(f"{ctx.data.label} was not imported through a wizard, so there is no import report. Import an "
                "OMOP CDM or a mapped file in the **Load data** tab.", icon=":material/info:")
    elif isinstance(rep, dict) and rep.get("kind") == "upload":
        upload_report(rep)
    elif isinstance(rep, dict):
        mapped_report(rep)
    else:
        omop_report(rep)


for tab, body in ((tab_complete, completeness_tab), (tab_dist, distributions_tab), (tab_columns, columns_tab),
                  (tab_load, load_tab), (tab_report, report_tab)):
    if tab.open:
        with tab:
            body()

shell.page_end()
