"""The data-source registry: the built-in, uploaded, generated, OMOP and mapped cohorts.

Each source loads into the session's own DuckDB connection and is installed by
`install` (sealed first); the sidebar and the Cohort page call these.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import pandas as pd
import streamlit as st

from kn026.core import analysis
from kn026.core.scenario import Scenario
from kn026.ingest import edits, loading, reader
from kn026.ingest.cohort import adopt, load_cohort
from kn026.ingest.problems import CohortError
from kn026.report import patients
from ui.session import (
    BUILTIN,
    K_DATA,
    K_IMPORT_ERROR,
    K_LOAD_ERROR,
    K_MEMO,
    K_NOTICE,
    K_OMOP_CLOSED,
    K_OMOP_DATE,
    K_OMOP_INDEX,
    K_OMOP_LOOKBACK,
    K_PATIENT,
    K_SOURCE,
    K_STAGE,
    K_SUPPRESS,
    Bundle,
    K,
    W,
    builtin_cohort,
    engine_for,
    engine_key,
    memo,
    new_token,
    persist,
    persisted_widget,
    scenario_key,
    tab_key,
)

SOURCES = {"builtin": "Built-in synthetic cohort", "upload": "Upload a file", "generate": "Generate a synthetic cohort",
           "omop": "OMOP CDM (zip upload)", "mapped": "CSV / Excel with mapping"}
WIZARD_SOURCES = ("omop", "mapped")  # loaded through the Cohort page's "Load data" tab


def install(con, cohort, label: str, kind: str, seconds: float, report=None) -> None:
    """Make a loaded cohort the session's: lock its connection down first (kn026.rules.sandbox:
    limits, no file / network access, configuration locked), then replace the old one."""
    loading.seal(con)
    old = st.session_state.get(K_DATA)
    st.session_state[K_DATA] = Bundle(con, cohort, label, kind, new_token(), seconds, {}, report)
    st.session_state[K_MEMO] = OrderedDict()
    st.session_state[K_SUPPRESS] = kind in ("upload", "omop", "mapped")  # on by default for uploaded data
    st.session_state[K_LOAD_ERROR] = None
    st.session_state[K_IMPORT_ERROR] = None
    st.session_state.pop(K_PATIENT, None)
    if old is not None and old.con is not con:
        try:
            old.con.close()
        except Exception:  # noqa: BLE001 - closing a connection that is already gone
            pass


def load_builtin() -> None:
    t0 = time.perf_counter()
    table, present, extra = builtin_cohort()
    con = loading.session_connection()
    cohort = adopt(con, table, present, extra, source=str(BUILTIN))  # the loader's layout, checked once
    sites = con.execute("SELECT count(DISTINCT site_id) FROM cohort").fetchall()[0][0] if "site_id" in present else 0
    label = f"Built-in synthetic cohort ({cohort.n:,} patients" + (f", {sites} sites)" if sites else ")")
    install(con, cohort, label, "builtin", time.perf_counter() - t0)


def load_upload(uploaded, chosen=()) -> None:
    """Load an uploaded cohort file (with the analyst's choices about its bad cells, kn026.ingest.edits)."""
    t0 = time.perf_counter()
    box = st.empty()  # the status, replaced by an honest warning when little can be assessed
    with box.status(f"Loading {uploaded.name}…", expanded=True) as status:
        try:
            st.write("Checking, reading and validating the file" + (" with your choices…" if chosen else "…"))
            bar = st.progress(0.0, text=f"Reading {uploaded.name}…")
            con, cohort = loading.load_upload(uploaded.name, uploaded.getvalue(),  # sniffed, size-limited
                                              progress=reader.part(_bar_text(bar), 0.0, 0.9), edits=chosen)
        except CohortError as err:
            st.session_state[K_LOAD_ERROR] = (uploaded.name, err.problems, err.total)
            status.update(label=f"{uploaded.name} could not be loaded", state="error", expanded=False)
            return
        except Exception as err:  # noqa: BLE001 - a parser's own error on a malformed file: a message, not a traceback
            st.session_state[K_LOAD_ERROR] = (uploaded.name, [_file_problem(uploaded.name, err)], 1)
            status.update(label=f"{uploaded.name} could not be loaded", state="error", expanded=False)
            return
        st.write("Evaluating every criterion…")
        bar.progress(0.92, text=f"Screening {cohort.n:,} patients")
        changed = [c for c in cohort.changes if c.count]
        label = f"{uploaded.name} ({cohort.n:,} patients" + (f"; {len(changed)} change(s) chosen)" if chosen else ")")
        report = {"kind": "upload", "file": uploaded.name, "changes": list(cohort.changes)} if chosen else None
        install(con, cohort, label, "upload", time.perf_counter() - t0, report)
        engine_for(st.session_state[K_STAGE])
        bar.progress(1.0, text=f"Ready: {cohort.n:,} patients in {time.perf_counter() - t0:.1f} s")
        status.update(label=f"Loaded {uploaded.name}: {cohort.n:,} patients", state="complete", expanded=False)
    kind, text = data_badge()
    loaded = f"Loaded {uploaded.name}: {cohort.n:,} patient{'s' if cohort.n != 1 else ''}"
    if kind == "little":  # the green tick only when the cohort can assess the protocol
        box.warning(f"**{loaded}, but little of the protocol can be assessed.** {text}", icon=":material/report:")
    elif kind == "some":
        box.info(f"**{loaded}.** {text}", icon=":material/info:")
    if changed:
        st.session_state[K_NOTICE] = (f"{uploaded.name} loaded with your {len(changed)} change(s); the file is "
                                      "unchanged (Cohort page, Import report).")
    elif cohort.absent and kind != "little":
        st.session_state[K_NOTICE] = (f"{len(cohort.absent)} dictionary column(s) are absent from {uploaded.name}; "
                                      "rules that need them are not assessable (see the Cohort page).")


def request_upload_reload() -> None:
    """Button callback: load the uploaded file again with the choices (on this run, with progress)."""
    st.session_state[K + "want_upload"] = True


def generate(n: int, seed: int, sites: int) -> None:
    import pyarrow as pa

    from kn026.ingest import synth

    t0 = time.perf_counter()
    chunk = max(10_000, min(200_000, n // 10 or n))
    bar = st.progress(0.0, text=f"Generating {n:,} synthetic patients…")
    parts, done = [], 0
    for table in synth.iter_tables(n, seed, sites, chunk_size=chunk):
        parts.append(table)
        done += table.num_rows
        bar.progress(0.7 * done / max(n, 1), text=f"Generating patients: {done:,} of {n:,}")
    table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    bar.progress(0.72, text="Loading into DuckDB and validating…")
    con = loading.session_connection()
    cohort = load_cohort(table, con, progress=reader.part(_bar_text(bar), 0.72, 0.9))
    del table, parts
    label = f"Synthetic cohort ({cohort.n:,} patients, {sites} sites, seed {seed})"
    install(con, cohort, label, "generated", time.perf_counter() - t0)
    bar.progress(0.9, text="Evaluating every criterion…")
    engine_for(st.session_state[K_STAGE])
    bar.progress(1.0, text=f"Ready: {cohort.n:,} patients in {time.perf_counter() - t0:.1f} s")


def _bar_text(bar):
    """A kn026 progress callback (fraction, message) drawn on a Streamlit progress bar."""
    def progress(fraction: float, message: str) -> None:
        bar.progress(min(max(fraction, 0.0), 1.0), text=message[:1].upper() + message[1:])

    return progress


def _file_problem(name: str, err: BaseException):
    from kn026.ingest.problems import Problem

    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return Problem("file", f"{name} could not be read: {first}. Check that it is a CSV (UTF-8), Parquet or "
                           "Excel (.xlsx) file")


def upload_limit_mb() -> int:
    """The upload size limit in MB (KN026_MAX_UPLOAD_MB, default 200); every uploader uses it."""
    return loading.upload_limit_mb()


def load_setting(name: str, default) -> dict:
    """Keyword arguments (key, on_change, args) for a Load-data setting widget `name`, seeded from
    the persistent `kn026.<name>` (`default` the first time), written back on change."""
    st.session_state.setdefault(K + name, default)
    return {"key": persisted_widget(name), "on_change": persist, "args": (name,)}


def import_failed(source: str, name: str, err: BaseException) -> None:
    if isinstance(err, CohortError):
        message = (f"**{name} could not be loaded** — {err.total:,} problem(s) found. Fix them in the file (or "
                   "the mapping) and load again; the app keeps using the cohort it had before.")
        st.session_state[K_IMPORT_ERROR] = (source, name, message, list(err.problems), err.total)
        return
    if isinstance(err, ValueError):  # LoadError, UploadError, mapping errors: one line with the fix
        message = str(err)
    else:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        message = f"{name} could not be imported ({first})"
    st.session_state[K_IMPORT_ERROR] = (source, name, message, [], 0)


def import_error(source: str) -> tuple[str, list, int] | None:
    """(message, problems, total) of the last failed import from `source` ("omop" / "mapped")."""
    err = st.session_state.get(K_IMPORT_ERROR)
    return (err[2], err[3], err[4]) if err and err[0] == source else None


def dismiss_import_error() -> None:
    st.session_state[K_IMPORT_ERROR] = None


def progress_bar(name: str):
    bar = st.progress(0.0, text=f"Importing {name}…")

    def progress(fraction: float, message: str) -> None:
        bar.progress(min(0.9, 0.9 * fraction), text=f"{name}: {message}")

    return bar, progress


def after_import(bar, label: str, seconds: float) -> None:
    bar.progress(0.92, text="Evaluating every criterion…")
    engine_for(st.session_state[K_STAGE])
    bar.progress(1.0, text=f"Ready: {label} in {seconds:.1f} s")
    st.session_state[tab_key("cohort")] = "Import report"


# ---- OMOP CDM zip (Cohort page, "Load data")

OMOP_INDEX_LABELS = {"last": "Each person's last observation", "fixed": "One fixed date"}
OMOP_ZIP_KEY = W + "omop_zip"


def data_source() -> str:
    """The source chosen in the sidebar (a key of SOURCES)."""
    return st.session_state[K_SOURCE]


def choose_source(source: str) -> None:
    """Button callback: choose a source without the sidebar (the radio follows on the next run)."""
    st.session_state[K_SOURCE] = source


def request_omop_import() -> None:
    """The Import button's callback: import on this run, above the page, with progress."""
    st.session_state[K + "want_omop"] = True
    st.session_state[K_IMPORT_ERROR] = None


def import_omop() -> None:
    import datetime as dt

    ss = st.session_state
    up = ss.get(OMOP_ZIP_KEY)
    if up is None:
        import_failed("omop", "", loading.LoadError("choose the OMOP CDM .zip first"))
        return
    t0 = time.perf_counter()
    index = ss.get(K_OMOP_DATE, dt.date.today()) if ss.get(K_OMOP_INDEX) == "fixed" else "last"
    bar, progress = progress_bar(up.name)
    try:
        con, cohort, report = loading.import_omop_upload(
            up.name, up.getvalue(), index, int(ss.get(K_OMOP_LOOKBACK, 30)), bool(ss.get(K_OMOP_CLOSED, True)),
            progress)
    except Exception as err:  # noqa: BLE001 - every failure becomes a message, never a traceback
        bar.empty()
        import_failed("omop", up.name, err)
        return
    label = f"OMOP {up.name} ({cohort.n:,} patients, index {report.index_date})"
    install(con, cohort, label, "omop", time.perf_counter() - t0, report)
    after_import(bar, label, time.perf_counter() - t0)


def import_report():
    """The loaded cohort's import report: omop.ImportReport, a mapped file's dict, or None."""
    return st.session_state[K_DATA].report


def has_upload(key: str) -> bool:
    return st.session_state.get(key) is not None


def schema_column(name: str):
    from kn026.base import schema

    return schema.BY_NAME[name]


def schema_names() -> set[str]:
    from kn026.base import schema

    return set(schema.BY_NAME)


def dictionary_columns() -> list[str]:
    from kn026.base import schema

    return [c.name for c in schema.COLUMNS]


changes_frame = edits.changes_frame


def dropped_count(changes) -> int:
    """Rows the choices dropped (each once)."""
    return len(edits.dropped_rows(changes))


omop_report_table = loading.omop_report_table
count_text = loading.count_text
mapping_table = loading.mapping_table
value_table = loading.value_table


def report_csv(frame: pd.DataFrame) -> str:
    """A report table as CSV, with spreadsheet formulas neutralised (concept names are data)."""
    from kn026.report import neutralise

    return neutralise.neutralise_formulas(frame).to_csv(index=False)


def data() -> Bundle:
    if st.session_state.get(K_DATA) is None:
        with st.spinner("Loading the built-in synthetic cohort…"):
            load_builtin()
    return st.session_state[K_DATA]


def data_assessability():
    """How much of the protocol as written the loaded cohort can assess at the sidebar's stage."""
    engine = engine_for(int(st.session_state[K_STAGE]))
    scen = Scenario()
    return memo(("assess", engine_key(engine), scenario_key(scen)),
                lambda: patients.assessability(analysis.engine_for(engine, scen), scen))


def data_badge() -> tuple[str, str]:
    """("ok" | "some" | "little", the data badge's text): a green tick only when every rule of the
    stage can be assessed and none is unknown for most patients (patients.Assessability)."""
    report = data_assessability()
    stage = int(st.session_state[K_STAGE])
    if report.little:
        parts = [f"{len(report.not_assessable)} of {report.rules} rules cannot be assessed (columns missing)"] \
            if report.not_assessable else []
        mostly = list(report.mostly_unknown.items())
        parts += [f"{rid} is unknown for {pct:.0f}% of patients" for rid, (pct, _) in mostly[:2]]
        if len(mostly) > 2:
            parts.append(f"{len(mostly) - 2} more rules are unknown for most patients")
        return "little", "; ".join(parts) + ". Details beside the counts and on the Cohort page."
    if report.not_assessable:
        return "some", (f"{len(report.not_assessable)} of {report.rules} rules of stage {stage} cannot be assessed "
                        "(columns missing: see the Cohort page); the others can.")
    return "ok", f"Can assess all {report.rules} rules of stage {stage}."


def problems_frame(problems) -> pd.DataFrame:
    return pd.DataFrame([{
        "Column": p.column,
        "Row": p.row,
        "patient_id": p.patient_id,
        "Value": p.value,
        "Problem and fix": p.message,
        "Rows with this problem": p.count,
    } for p in problems])
