"""The app's Streamlit state: caches, session-state keys and the shared sidebar.

This is the one module outside `kn026/` that owns Streamlit state. Pages call
`page_start()` first; it returns a `Ctx` with the session's engine, scenario, order,
unknown handling and suppression threshold, after drawing the sidebar controls that
every page shares (data source, stage, scenario, unknown handling, suppression).

State model
-----------
* Persistent values live under `kn026.*` keys that no widget owns. Widgets use
  `kn026.w.*` keys, are seeded from the persistent value on every run and copy their
  value back in an `on_change` callback. So a sidebar control keeps its value across
  page switches and reruns even when Streamlit gives the widget a new identity (it
  does when the same control is drawn by another page script, and on the first run
  of a server whose app folder has a `pages/` directory).
* Each session owns its DuckDB connection (in session state, not `st.cache_resource`):
  uploaded data never leaves the session and nothing is written to disk. `_install`
  locks it down (kn026.loading.seal) as soon as its cohort is loaded, whatever the source.
* `st.cache_resource` holds only shared, read-only things: the protocol, the
  built-in cohort (as an Arrow table) and the example scenarios.
* Buttons act through `on_click` callbacks, never through their return value: the
  first run of a fresh server (and every AppTest run) is rerouted once through
  `app.py` (see `page_start`), and a rerun drops a button's one-shot click.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pandas as pd
import streamlit as st

from kn026 import analysis, custom, edits, export, loading, patients, reader, suppression
from kn026 import funnel as fm
from kn026.cohort import COHORT_DB, Cohort, CohortError, connect, load_cohort
from kn026.criteria import CriteriaError, Protocol, format_number, load_protocol, to_decimal
from kn026.engine import Engine
from kn026.rulecheck import RuleError
from kn026.scenario import Scenario, parse_scenario

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data"
BUILTIN = DATA / "builtin_cohort.parquet"
BUILTIN_N, BUILTIN_SEED = 20_000, 26
APP_TITLE = "KN026 Feasibility Explorer"
PROTOCOL = "Protocol"  # name of the unchanged protocol in the scenario list
ORDER_MODES = ("protocol", "restrictive", "manual")
ORDER_LABELS = {"protocol": "Protocol order", "restrictive": "Most restrictive first", "manual": "By hand"}
POLICY_LABELS = {"both": "Both", "strict": "Strict", "optimistic": "Optimistic"}
SOURCES = {"builtin": "Built-in synthetic cohort", "upload": "Upload a file", "generate": "Generate a synthetic cohort",
           "omop": "OMOP CDM (zip upload)", "mapped": "CSV / Excel with mapping"}
WIZARD_SOURCES = ("omop", "mapped")  # loaded through the Cohort page's "Load data" tab
MEMO_SIZE = 24

# ---- session-state keys (the only place they are spelled out) -----------------------------
K = "kn026."
W = "kn026.w."  # widget keys
K_DATA = K + "data"  # Bundle of the loaded cohort
K_SOURCE = K + "source"
K_STAGE = K + "stage"
K_POLICY = K + "policy"
K_ACTIVE = K + "active"  # PROTOCOL or a scenario name
K_SCENARIOS = K + "scenarios"  # {name: Scenario}
K_ORDERS = K + "orders"  # {name: (mode, manual tuple)}
K_SUPPRESS = K + "suppress"
K_THRESHOLD = K + "threshold"
K_GEN_N, K_GEN_SEED, K_GEN_SITES = K + "gen_n", K + "gen_seed", K + "gen_sites"
K_UPLOAD_SEEN = K + "upload_seen"
K_LOAD_ERROR = K + "load_error"
K_UPLOAD_EDITS = K + "upload_edits"  # {"id": file_id, "edits": [kn026.edits.Edit]}: the upload's choices
K_BAD_PENDING = K + "bad_pending"  # (flow, column, row) whose "Fix" was chosen before a value was typed
K_IMPORT_ERROR = K + "import_error"  # (source, file name, message, problems, total) of a failed import
K_OMOP_INDEX, K_OMOP_DATE = K + "omop_index", K + "omop_date"  # "last" / "fixed", and the fixed date
K_OMOP_LOOKBACK, K_OMOP_CLOSED = K + "omop_lookback", K + "omop_closed"
K_MAP_FILE = K + "map_file"  # the file being mapped: {"name", "id", "frame"}
K_MAPPING = K + "mapping"  # its Mapping
K_MAP_EPOCH = K + "map_epoch"  # bumped when the mapping is replaced: wizard widgets reset
K_NOTICE = K + "notice"
K_MEMO = K + "memo"
K_EPOCH = K + "epoch"  # bumped when a scenario is replaced wholesale: page widgets reset
K_EDITOR = K + "editor"  # version of the criteria order editor
K_CONDITIONS = K + "conditions"
K_PATIENT = K + "patient"
K_TIMING = K + "timing"
K_LAST_RUN = K + "last_run"
K_RUN_START = K + "run_start"
K_RULE_ERROR = K + "rule_error"  # the last rejected custom rule or rewrite (see "custom rules")
SHELL = K + "shell"  # set by app.py right before it runs the page


# --------------------------------------------------------------------------- caches (shared)


@st.cache_resource(show_spinner=False)
def protocol() -> Protocol:
    return load_protocol()


@st.cache_resource(show_spinner="Preparing the built-in synthetic cohort…")
def builtin_table():
    """The built-in cohort as a read-only Arrow table shared by every session."""
    if BUILTIN.is_file():
        import pyarrow.parquet as pq

        return pq.read_table(BUILTIN)
    import pyarrow as pa

    from kn026 import synth

    return pa.Table.from_pandas(synth.generate(BUILTIN_N, BUILTIN_SEED), preserve_index=False)


@st.cache_resource(show_spinner=False)
def example_scenarios() -> dict[str, Scenario]:
    out = {}
    for path in sorted(DATA.glob("scenario_*.yaml")):
        try:
            s = parse_scenario(path.read_text(encoding="utf-8"), protocol(), source=path.name)
        except (CriteriaError, OSError):
            continue
        out[s.name] = s
    return out


# --------------------------------------------------------------------------- navigation


PAGES = (
    ("pages/funnel.py", "Funnel", ":material/filter_alt:", "funnel"),
    ("pages/cohort.py", "Cohort", ":material/groups:", "cohort"),
    ("pages/criteria.py", "Criteria", ":material/rule:", "criteria"),
    ("pages/patients.py", "Patients", ":material/person_search:", "patients"),
    ("pages/sites.py", "Sites", ":material/location_on:", "sites"),
    ("pages/recruitment.py", "Recruitment", ":material/trending_up:", "recruitment"),
    ("pages/network.py", "Network", ":material/hub:", "network"),
)


def navigation():
    """Register the pages (Funnel is the default) and return the page to run."""
    pages = [st.Page(path, title=title, icon=icon, url_path=url, default=i == 0)
             for i, (path, title, icon, url) in enumerate(PAGES)]
    return st.navigation(pages, position="sidebar")


def mark_shell() -> None:
    """Called by app.py before `page.run()`: the navigation is registered for this run."""
    st.session_state[SHELL] = True
    st.session_state[K_RUN_START] = time.perf_counter()


# --------------------------------------------------------------------------- state basics


@dataclass
class Bundle:
    """A loaded cohort with its private connection and one engine per stage."""

    con: object
    cohort: object
    label: str
    kind: str  # builtin / upload / generated / omop / mapped
    token: int
    seconds: float
    engines: dict
    report: object = None  # omop.ImportReport, or {"mapping", "values", ...} for a mapped file


@dataclass
class Ctx:
    """What a page needs: the session's engine and analysis settings."""

    protocol: Protocol
    data: Bundle
    engine: Engine
    stage: int
    scenario: Scenario  # the active one (order stripped); Scenario() for the protocol
    scenario_name: str  # PROTOCOL or the scenario's name
    order: tuple[str, ...]  # resolved funnel order (empty: protocol order)
    order_mode: str
    policy: str  # both / strict / optimistic
    k: int | None  # suppression threshold, None when off

    @property
    def is_protocol(self) -> bool:
        return self.scenario_name == PROTOCOL


def _defaults() -> None:
    ss = st.session_state
    ss.setdefault(K_SOURCE, "builtin")
    ss.setdefault(K_STAGE, 1)
    ss.setdefault(K_POLICY, "both")
    ss.setdefault(K_ACTIVE, PROTOCOL)
    if K_SCENARIOS not in ss:
        ss[K_SCENARIOS] = dict(example_scenarios())
    ss.setdefault(K_ORDERS, {})
    ss.setdefault(K_SUPPRESS, False)
    ss.setdefault(K_THRESHOLD, suppression.DEFAULT_THRESHOLD)
    ss.setdefault(K_GEN_N, 100_000)
    ss.setdefault(K_GEN_SEED, 1)
    ss.setdefault(K_GEN_SITES, 50)
    ss.setdefault(K_EPOCH, 0)
    ss.setdefault(K_EDITOR, 0)
    ss.setdefault(K_CONDITIONS, [])
    ss.setdefault(K_MEMO, OrderedDict())
    if K_TIMING not in ss:
        ss[K_TIMING] = str(st.query_params.get("timing", "")) in ("1", "true", "yes")


def _seed(name: str) -> str:
    """Seed widget `kn026.w.<name>` from persistent `kn026.<name>`; return the widget key."""
    st.session_state[W + name] = st.session_state[K + name]
    return W + name


def _sync(name: str) -> None:
    st.session_state[K + name] = st.session_state[W + name]


def bump_epoch() -> None:
    st.session_state[K_EPOCH] += 1


def epoch() -> int:
    return st.session_state[K_EPOCH]


def wkey(*parts) -> str:
    """A page widget key tied to the current scenario epoch."""
    return W + ".".join(str(p) for p in parts) + f"@{epoch()}"


# --------------------------------------------------------------------------- data loading


def _new_token() -> int:
    st.session_state[K + "tokens"] = st.session_state.get(K + "tokens", 0) + 1
    return st.session_state[K + "tokens"]


def _install(con, cohort, label: str, kind: str, seconds: float, report=None) -> None:
    """Make a loaded cohort the session's: lock its connection down first (kn026.sandbox:
    limits, no file / network access, configuration locked), then replace the old one."""
    loading.seal(con)
    old = st.session_state.get(K_DATA)
    st.session_state[K_DATA] = Bundle(con, cohort, label, kind, _new_token(), seconds, {}, report)
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


@st.cache_resource(show_spinner=False)
def builtin_cohort():
    """The built-in cohort loaded and validated once per process: (Arrow table, present, extra).

    Sessions copy it into their own DuckDB connection without validating it again.
    """
    con = connect()
    cohort = load_cohort(builtin_table(), con)
    table = con.sql(f"SELECT * FROM {cohort.table}").to_arrow_table()
    con.close()
    return table, cohort.present, cohort.extra


def _load_builtin() -> None:
    t0 = time.perf_counter()
    table, present, extra = builtin_cohort()
    con = loading.session_connection()
    # Same layout as kn026.cohort.load_cohort: the table in the compressed in-memory
    # database when the connection has one, named by a view in the default catalog.
    compressed = con.execute("SELECT count(*) FROM duckdb_databases() WHERE database_name = ?",
                             [COHORT_DB]).fetchall()[0][0]
    target = f"{COHORT_DB}.main.cohort" if compressed else "cohort"
    con.register("_builtin", table)
    con.execute(f"CREATE TABLE {target} AS SELECT * FROM _builtin")
    con.unregister("_builtin")
    if compressed:
        con.execute(f"CHECKPOINT {COHORT_DB}")
        con.execute(f"CREATE OR REPLACE VIEW cohort AS SELECT * FROM {target}")
    cohort = Cohort(con, "cohort", table.num_rows, present, extra, source=str(BUILTIN))
    sites = con.execute("SELECT count(DISTINCT site_id) FROM cohort").fetchall()[0][0] if "site_id" in present else 0
    label = f"Built-in synthetic cohort ({cohort.n:,} patients" + (f", {sites} sites)" if sites else ")")
    _install(con, cohort, label, "builtin", time.perf_counter() - t0)


def _load_upload(uploaded, chosen=()) -> None:
    """Load an uploaded cohort file (with the analyst's choices about its bad cells, kn026.edits)."""
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
        bar.progress(0.92, text=f"screening {cohort.n:,} patients")
        changed = [c for c in cohort.changes if c.count]
        label = f"{uploaded.name} ({cohort.n:,} patients" + (f"; {len(changed)} change(s) chosen)" if chosen else ")")
        report = {"kind": "upload", "file": uploaded.name, "changes": list(cohort.changes)} if chosen else None
        _install(con, cohort, label, "upload", time.perf_counter() - t0, report)
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


# ---- bad cells: the analyst's choices instead of editing the file (kn026.edits)

CELL_LABELS = {"keep": "Leave it (stays a problem)", "fix": "Fix the value", "blank": "Blank it (unknown)",
               "drop": "Drop the row"}
PER_VALUE = "per value"


def upload_edits() -> list:
    """The choices made for the uploaded file's bad cells (reset when another file is uploaded)."""
    up = st.session_state.get(W + "upload")
    state = st.session_state.get(K_UPLOAD_EDITS)
    if up is None or state is None or state["id"] != up.file_id:
        return []
    return list(state["edits"])


def flow_edits(flow: str) -> list:
    """The choices of a flow: "upload" (a plain upload) or "mapped" (the mapping wizard's mapping)."""
    return upload_edits() if flow == "upload" else list(mapping().edits)


def _set_edits(flow: str, chosen: list) -> None:
    if flow == "upload":
        up = st.session_state.get(W + "upload")
        st.session_state[K_UPLOAD_EDITS] = {"id": up.file_id if up is not None else None, "edits": list(chosen)}
    else:
        mapping().edits = list(chosen)


def _bad_key(flow: str, *parts) -> str:
    return W + "bad." + flow + "." + ".".join(str(p) for p in parts)


def bad_groups(problems) -> list[tuple[str, list]]:
    """The problems by column, in the loader's order; a duplicated patient_id once per row."""
    groups: dict[str, list] = {}
    for p in edits.cells(problems):
        groups.setdefault(p.column, []).append(p)
    return list(groups.items())


def has_choices(problems) -> bool:
    """True when some of the problems can be answered in the app (cells, not the file itself)."""
    return any(edits.cell_actions(p) or edits.column_edits(p.column, [p]) for p in edits.cells(problems))


def _source_of(column: str) -> str | None:
    """The mapped file's column behind dictionary column `column` (or the index date column)."""
    from kn026 import date_formats

    m = mapping()
    if column == "index_column":
        return date_formats.index_source(m)
    c = m.get(column)
    return c.source if c is not None else None


def cell_text(flow: str, problem) -> str | None:
    """The bad cell as the file has it (a mapped file: its own cell, before the mapping)."""
    if flow == "upload":
        return problem.value
    source = _source_of(problem.column)
    if source is None:
        return problem.value
    value = map_file()["frame"][source].iloc[problem.row - 1]
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def cell_actions(flow: str, problem) -> list[str]:
    """"keep" and what kn026.edits offers for the cell; a mapped constant cannot be fixed in the file,
    and the date the day counts count from is never blanked (kn026.mapped)."""
    actions = edits.cell_actions(problem)
    if flow == "mapped":
        from kn026 import mapped

        if _source_of(problem.column) is None:
            actions = [a for a in actions if a == "drop"]
        if not mapped.blankable(mapping(), problem.column):
            actions = [a for a in actions if a != "blank"]
    return ["keep", *actions] if actions else []


def column_choices(flow: str, column: str, problems) -> list[str]:
    """PER_VALUE, then "blank" / "drop" for every bad value of `column`, as kn026.edits offers them."""
    found = [e.action for e in edits.column_edits(column, problems) if e.action != "unit"]
    if flow == "mapped":
        from kn026 import mapped

        if not mapped.blankable(mapping(), column):
            found = [a for a in found if a != "blank"]
    return [PER_VALUE, *found] if found else []


def unit_choices(flow: str, column: str, problems) -> list[str]:
    """The units the column may be declared in ("" = its own) when the unit guard flagged it."""
    if column not in schema_names() or not {p.kind for p in problems} & {"unit", "median"}:
        return []
    if flow == "mapped":
        from kn026.mapping import units_for

        return units_for(column) if mapping().get(column) is not None else []
    declared = [e.text for e in upload_edits() if e.action == "unit" and e.column == column]
    return ["", *dict.fromkeys([u for u, _ in units_guard(column)] + declared)]


def units_guard(column: str):
    from kn026 import units

    return units.guard_units(column)


def unit_label(flow: str, column: str, unit: str) -> str:
    from kn026 import units

    col = schema_column(column)
    if flow == "mapped":
        return map_unit_label(column, unit)
    return f"in {col.unit} (no conversion)" if not unit else f"in {units.conversion_text(column, unit)}"


def cell_widget(flow: str, problem) -> dict:
    """Keyword arguments of a problem's choice selectbox, seeded from the chosen edits."""
    e = edits.cell_edit(flow_edits(flow), problem.column, problem.row)
    pending = (flow, problem.column, problem.row) in st.session_state.setdefault(K_BAD_PENDING, set())
    key = _bad_key(flow, "cell", problem.column, problem.row)
    st.session_state[key] = e.action if e is not None else "fix" if pending else "keep"
    return {"key": key, "on_change": _on_cell, "args": (flow, problem, key)}


def _on_cell(flow: str, problem, key: str) -> None:
    action = st.session_state[key]
    pending = st.session_state.setdefault(K_BAD_PENDING, set())
    pending.discard((flow, problem.column, problem.row))
    was = cell_text(flow, problem)
    new = {"keep": None, "fix": None, "blank": edits.blank(problem.column, problem.row, was),
           "drop": edits.drop(problem.column, problem.row, was)}[action]
    if action == "fix":
        pending.add((flow, problem.column, problem.row))
    _set_edits(flow, edits.with_edit(flow_edits(flow), problem.column, problem.row, new))


def fix_widget(flow: str, problem) -> dict:
    """Keyword arguments of a problem's "corrected value" text input."""
    e = edits.cell_edit(flow_edits(flow), problem.column, problem.row)
    key = _bad_key(flow, "text", problem.column, problem.row)
    st.session_state[key] = e.text if e is not None and e.action == "fix" else ""
    return {"key": key, "on_change": _on_fix, "args": (flow, problem, key)}


def _on_fix(flow: str, problem, key: str) -> None:
    text = str(st.session_state[key] or "").strip()
    new = edits.fix(problem.column, problem.row, text, cell_text(flow, problem)) if text else None
    if new is not None:
        st.session_state.setdefault(K_BAD_PENDING, set()).discard((flow, problem.column, problem.row))
    else:
        st.session_state.setdefault(K_BAD_PENDING, set()).add((flow, problem.column, problem.row))
    _set_edits(flow, edits.with_edit(flow_edits(flow), problem.column, problem.row, new))


def column_widget(flow: str, column: str) -> dict:
    e = edits.column_edit(flow_edits(flow), column)
    key = _bad_key(flow, "column", column)
    st.session_state[key] = e.action if e is not None else PER_VALUE
    return {"key": key, "on_change": _on_column, "args": (flow, column, key)}


def _on_column(flow: str, column: str, key: str) -> None:
    action = st.session_state[key]
    new = None if action == PER_VALUE else edits.Edit(action, column)
    _set_edits(flow, edits.with_edit(flow_edits(flow), column, None, new))


def unit_widget(flow: str, column: str) -> dict:
    key = _bad_key(flow, "unit", column)
    if flow == "mapped":
        c = mapping().get(column)
        st.session_state[key] = c.unit if c is not None and c.unit else map_units(column)[0]
    else:
        e = edits.column_edit(upload_edits(), column, units=True)
        st.session_state[key] = e.text if e is not None else ""
    return {"key": key, "on_change": _on_unit, "args": (flow, column, key)}


def _on_unit(flow: str, column: str, key: str) -> None:
    unit = st.session_state[key]
    if flow == "mapped":  # the column's unit setting, as in section 2
        _on_map_unit(column, key)
        return
    new = edits.unit(column, unit) if unit else None
    _set_edits(flow, edits.with_edit(upload_edits(), column, None, new, units=True))


def remove_edit(flow: str, index: int) -> None:
    """Button callback: forget one choice."""
    chosen = flow_edits(flow)
    if 0 <= index < len(chosen):
        e = chosen.pop(index)
        st.session_state.setdefault(K_BAD_PENDING, set()).discard((flow, e.column, e.row))
        _set_edits(flow, chosen)


def clear_edits(flow: str) -> None:
    _set_edits(flow, [])
    st.session_state[K_BAD_PENDING] = {p for p in st.session_state.get(K_BAD_PENDING, set()) if p[0] != flow}


def request_upload_reload() -> None:
    """Button callback: load the uploaded file again with the choices (on this run, with progress)."""
    st.session_state[K + "want_upload"] = True


def chosen_text(e) -> str:
    """One choice, in words, for the list under the problems."""
    return e.describe()


def column_label(action: str, n: int) -> str:
    if action == PER_VALUE:
        return "Choose value by value"
    if n == 1:
        return {"blank": "Blank it (unknown)", "drop": "Drop its row"}[action]
    return {"blank": f"Blank all {n:,} (unknown)", "drop": f"Drop all {n:,} rows"}[action]


def _covered(flow: str, column: str) -> tuple[set, str]:
    """Kinds of problems of `column` a whole-column choice already answers (upload: until the file
    loads again), and the sentence that says so; a mapped file's preview drops them at once."""
    if flow != "upload":
        return set(), ""
    chosen = upload_edits()
    whole, unit = edits.column_edit(chosen, column), edits.column_edit(chosen, column, units=True)
    kinds, said = set(), []
    if whole is not None:
        kinds |= {"value", "date", "missing_id"}
        said.append(f"every bad value will be {'blanked' if whole.action == 'blank' else 'dropped with its row'}")
    if unit is not None:
        kinds |= {"unit", "median"}
        said.append(f"its values will be converted from {unit.text}; values still implausible then are listed again")
    return kinds, ("As the file loads, " + "; ".join(said) + "." if said else "")


def bad_cells_panel(flow: str, problems) -> None:
    """The reported problems with a choice for each (fix / blank / drop) and for each column (all of its
    bad values, the unit of its values), then the choices made so far. Layout only: the choices are
    kn026.edits data, offered and applied by kn026."""
    st.markdown("**Choose what to do with each problem.** The file itself is not changed: the choices are "
                "applied as it loads" + (" and saved in the mapping." if flow == "mapped" else "."))
    st.caption("*Blank* makes a value unknown. Record-based columns (days since an event, cumulative doses) "
               "cannot be blanked: there an empty cell means *none on record* and would pass the patient. A value "
               "outside the plausible range usually means another unit: declare the unit of the column.")
    for column, group in bad_groups(problems):
        cells = [p for p in group if cell_actions(flow, p)]
        total = sum({(p.kind, p.message): p.count for p in group if p.row is not None}.values())
        per_column = column_choices(flow, column, group) if total > len(cells) or len(cells) > 1 else []
        unit_options = unit_choices(flow, column, group)
        if not (cells or per_column or unit_options):
            for p in group:
                st.error(str(p), icon=":material/error:")
            continue
        covered, note = _covered(flow, column)
        col = schema_column(column) if column in schema_names() else None
        with st.container(border=True):
            head, choice = st.columns([3, 2], vertical_alignment="top")
            unit_text = f" ({col.unit})" if col is not None and col.unit else ""
            what = f"{total:,} bad value(s)" if total else "the whole column"
            head.markdown(f"**`{column}`**{unit_text} · {what}")
            head.caption(" · ".join(dict.fromkeys(p.message for p in group)))
            if per_column:
                choice.selectbox(f"Every bad value of {column}", per_column,
                                 format_func=lambda a, n=total: column_label(a, n),
                                 **column_widget(flow, column))
            if unit_options:
                choice.selectbox(f"Unit of the file's {column} values", unit_options,
                                 format_func=lambda u, c=column: unit_label(flow, c, u), **unit_widget(flow, column))
            shown = [p for p in cells if p.kind not in covered]
            for p in shown:
                c1, c2, c3, c4 = st.columns([2, 2, 3, 3], vertical_alignment="center")
                c1.markdown(f"Row {p.row:,}" + (f" · `{p.patient_id}`" if p.patient_id else ""))
                was = cell_text(flow, p)
                c2.markdown("empty" if was is None else f"“{was}”")
                action = c3.selectbox(f"Row {p.row} of {column}", cell_actions(flow, p), format_func=CELL_LABELS.get,
                                      label_visibility="collapsed", **cell_widget(flow, p))
                if action == "fix":
                    c4.text_input(f"Corrected value of row {p.row} of {column}", label_visibility="collapsed",
                                  placeholder="type the corrected value, Enter", **fix_widget(flow, p))
            if note:
                st.caption(f":material/check: {note}")
            elif {p.kind for p in group} & {"median"}:
                st.caption("The column as a whole looks like another unit: declare the unit above.")
            listed = len({p.row for p in shown})
            if total > listed and shown:
                acts = " and ".join(what for what, offered in (("*Every bad value*", per_column),
                                                              ("the unit", unit_options)) if offered)
                st.caption(f"… and {total - listed:,} more row(s) with a bad `{column}` not listed here: "
                           f"{acts} above act{'s' if ' and ' not in acts else ''} on all of them.")
    choices_list(flow)


def choices_list(flow: str, changes=()) -> None:
    """The choices made so far, each with what it changed (when known) and an Undo button."""
    chosen = flow_edits(flow)
    did = {c.edit: c.what for c in changes}
    if chosen:
        st.markdown(f"**Your choices ({len(chosen)})**")
        for i, e in enumerate(chosen):
            c1, c2 = st.columns([10, 1], vertical_alignment="center")
            c1.markdown(f"- {chosen_text(e)}" + (f" — *{did[e]}*" if e in did else ""))
            c2.button("Undo", key=_bad_key(flow, "undo", i, len(chosen)), on_click=remove_edit, args=(flow, i),
                      help="Forget this choice", width="stretch")


def _generate(n: int, seed: int, sites: int) -> None:
    import pyarrow as pa

    from kn026 import synth

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
    _install(con, cohort, label, "generated", time.perf_counter() - t0)
    bar.progress(0.9, text="Evaluating every criterion…")
    engine_for(st.session_state[K_STAGE])
    bar.progress(1.0, text=f"Ready: {cohort.n:,} patients in {time.perf_counter() - t0:.1f} s")


def _bar_text(bar):
    """A kn026 progress callback (fraction, message) drawn on a Streamlit progress bar."""
    def progress(fraction: float, message: str) -> None:
        bar.progress(min(max(fraction, 0.0), 1.0), text=message[:1].upper() + message[1:])

    return progress


def _file_problem(name: str, err: BaseException):
    from kn026.cohort import Problem

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
    return {"key": _seed(name), "on_change": _sync, "args": (name,)}


def _import_failed(source: str, name: str, err: BaseException) -> None:
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


def _progress_bar(name: str):
    bar = st.progress(0.0, text=f"Importing {name}…")

    def progress(fraction: float, message: str) -> None:
        bar.progress(min(0.9, 0.9 * fraction), text=f"{name}: {message}")

    return bar, progress


def _after_import(bar, label: str, seconds: float) -> None:
    bar.progress(0.92, text="Evaluating every criterion…")
    engine_for(st.session_state[K_STAGE])
    bar.progress(1.0, text=f"Ready: {label} in {seconds:.1f} s")
    st.session_state[tab_key("cohort")] = "Import report"


# ---- OMOP CDM zip (Cohort page, "Load data")

OMOP_INDEX_LABELS = {"last": "Each person's last observation", "fixed": "One fixed date"}
OMOP_ZIP_KEY = W + "omop_zip"
MAP_FILE_KEY = W + "map_file"


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


def _import_omop() -> None:
    import datetime as dt

    ss = st.session_state
    up = ss.get(OMOP_ZIP_KEY)
    if up is None:
        _import_failed("omop", "", loading.LoadError("choose the OMOP CDM .zip first"))
        return
    t0 = time.perf_counter()
    index = ss.get(K_OMOP_DATE, dt.date.today()) if ss.get(K_OMOP_INDEX) == "fixed" else "last"
    bar, progress = _progress_bar(up.name)
    try:
        con, cohort, report = loading.import_omop_upload(
            up.name, up.getvalue(), index, int(ss.get(K_OMOP_LOOKBACK, 30)), bool(ss.get(K_OMOP_CLOSED, True)),
            progress)
    except Exception as err:  # noqa: BLE001 - every failure becomes a message, never a traceback
        bar.empty()
        _import_failed("omop", up.name, err)
        return
    label = f"OMOP {up.name} ({cohort.n:,} patients, index {report.index_date})"
    _install(con, cohort, label, "omop", time.perf_counter() - t0, report)
    _after_import(bar, label, time.perf_counter() - t0)


# ---- CSV / Excel with a mapping (Cohort page, "Load data")

NOT_MAPPED = "— not mapped —"
KEEP_VALUE, EMPTY_VALUE = "(keep as written)", "(empty: unknown)"


def map_file() -> dict | None:
    """The file being mapped: {"name", "id", "frame"} (parsed in memory), or None."""
    return st.session_state.get(K_MAP_FILE)


def mapping():
    return st.session_state.get(K_MAPPING)


def map_key(*parts) -> str:
    return W + "map." + ".".join(str(p) for p in parts) + f"@{st.session_state.get(K_MAP_EPOCH, 0)}"


def _new_mapping(m) -> None:
    st.session_state[K_MAPPING] = m
    st.session_state[K_MAP_EPOCH] = st.session_state.get(K_MAP_EPOCH, 0) + 1


def on_map_file(key: str) -> None:
    """File-uploader callback: check and parse the file, suggest a mapping (or keep a fitting one)."""
    from kn026.mapping import suggest_mapping

    up = st.session_state.get(key)
    st.session_state[K_IMPORT_ERROR] = None
    if up is None:
        st.session_state[K_MAP_FILE] = None
        return
    try:
        frame = loading.read_foreign(up.name, up.getvalue())
    except Exception as err:  # noqa: BLE001 - a message, never a traceback
        st.session_state[K_MAP_FILE] = None
        _import_failed("mapped", up.name, err)
        return
    st.session_state[K_MAP_FILE] = {"name": up.name, "id": up.file_id, "frame": frame}
    old = mapping()
    if old is not None and old.columns and all(c.source in frame.columns for c in old.columns if c.source):
        old.unmatched = [h for h in frame.columns if h not in {c.source for c in old.columns}]
        old.edits = [e for e in old.edits if e.whole_column]  # a cell's choice was for the other file
        _fill_dates(old)
        _new_mapping(old)  # the same layout again: keep the analyst's mapping
        return
    m = suggest_mapping(frame.columns, sample=frame)
    m.name = Path(up.name).stem
    _new_mapping(m)


def on_map_yaml(key: str) -> None:
    """Mapping-YAML uploader callback: reuse a saved mapping for the file being mapped."""
    up = st.session_state.get(key)
    st.session_state[K_IMPORT_ERROR] = None
    f = map_file()
    if up is None or f is None:
        return
    try:
        m = loading.read_mapping_yaml(up.name, up.getvalue(), f["frame"])
    except Exception as err:  # noqa: BLE001
        _import_failed("mapped", up.name, err)
        return
    m.unmatched = [h for h in f["frame"].columns if h not in {c.source for c in m.columns}]
    _fill_dates(m)
    _new_mapping(m)


def mapping_yaml() -> str:
    m = mapping()
    return m.to_yaml() if m is not None else ""


def map_source_options(target: str) -> list[str]:
    f, m = map_file(), mapping()
    options = [NOT_MAPPED, *f["frame"].columns]
    c = m.get(target)
    if c is not None and c.constant is not None:
        options.insert(1, f"constant: {c.constant}")
    return options


def map_source_widget(target: str) -> dict:
    """Keyword arguments of the file-column selectbox of dictionary column `target`."""
    c = mapping().get(target)
    value = NOT_MAPPED if c is None else c.source if c.source is not None else f"constant: {c.constant}"
    key = map_key("src", target)
    st.session_state[key] = value
    return {"key": key, "on_change": _on_map_source, "args": (target, key)}


def _on_map_source(target: str, key: str) -> None:
    from kn026.mapping import suggest_column

    m, f = mapping(), map_file()
    value = st.session_state[key]
    old = m.get(target)
    if value == NOT_MAPPED:
        m.columns = [c for c in m.columns if c.target != target]
    elif old is not None and (old.source == value or old.constant is not None and value == f"constant: {old.constant}"):
        return
    else:
        m.set(target, value)  # replaced below by the suggestion for this header (unit, values)
        m.columns = [c for c in m.columns if c.target != target] + [suggest_column(target, value, f["frame"],
                                                                                   m.decimal)]
        m._sort()
    m.unmatched = [h for h in f["frame"].columns if h not in {c.source for c in m.columns}]


def map_held_targets() -> list[str]:
    """Dictionary columns a header was offered for but not mapped without asking (QTc, eGFR)."""
    m = mapping()
    return [h.target for h in m.held if m.get(h.target) is None]


def map_note(target: str) -> tuple[str, str]:
    """("held" | "chosen", explanation) for a column the analyst must choose by hand, else ("", "")."""
    from kn026.mapping import caution

    m = mapping()
    c = m.get(target)
    if c is None:
        held = next((h for h in m.held if h.target == target), None)
        if held is None:
            return "", ""
        return "held", (f"“{held.header}” looks like `{target}` but is not mapped without your choice. "
                        f"{held.why}")
    why = caution(target, c.source) if c.source else ""
    return ("chosen", f"“{c.source}” is mapped to `{target}` by your choice. {why}") if why else ("", "")


def map_units(target: str) -> list[str]:
    """Units the file's column for `target` may be in (the dictionary unit first); [] if none."""
    from kn026.mapping import units_for

    return units_for(target)


def map_unit_label(target: str, unit: str) -> str:
    """"in g/dL (× 10 → g/L)", or "in g/L (no conversion)" for the dictionary unit."""
    from kn026.mapping import unit_factor

    base = map_units(target)[0]
    if unit == base:
        return f"in {unit} (no conversion)"
    return f"in {unit} (× {unit_factor(target, unit):g} → {base})"


def map_unit_widget(target: str) -> dict:
    c = mapping().get(target)
    units = map_units(target)
    key = map_key("unit", target)
    st.session_state[key] = c.unit if c is not None and c.unit in units else units[0]
    return {"key": key, "on_change": _on_map_unit, "args": (target, key)}


def _on_map_unit(target: str, key: str) -> None:
    c = mapping().get(target)
    if c is None:
        return
    unit = st.session_state[key]
    c.unit = None if unit == map_units(target)[0] else unit
    c.factor = None


def map_decimal_widget() -> dict:
    key = map_key("decimal")
    st.session_state[key] = mapping().decimal
    return {"key": key, "on_change": _on_map_decimal, "args": (key,)}


def _on_map_decimal(key: str) -> None:
    mapping().decimal = st.session_state[key]


def map_value_targets() -> list[str]:
    """Mapped categorical columns whose values can be translated, in dictionary order."""
    from kn026.mapping import dictionary_values

    return [c.target for c in mapping().columns
            if c.source is not None and not c.transform and dictionary_values(c.target)]


def map_distinct_values(target: str, limit: int = 40) -> list[tuple[str, int]]:
    """The file's distinct values of `target`'s column, most frequent first, with counts."""
    c = mapping().get(target)
    counts = map_file()["frame"][c.source].dropna().astype(str)
    counts = counts[counts.str.strip() != ""].value_counts()
    return [(str(v), int(n)) for v, n in counts.head(limit).items()]


def map_value_options(target: str) -> list[str]:
    from kn026.mapping import dictionary_values

    return [KEEP_VALUE, EMPTY_VALUE, *dictionary_values(target)]


def map_value_widget(target: str, value: str) -> dict:
    from kn026.mapping import translate_value

    c = mapping().get(target)
    now = translate_value(target, value, c.values)
    options = map_value_options(target)
    shown = EMPTY_VALUE if now is None or str(now).strip() == "" else str(now) if str(now) in options else KEEP_VALUE
    key = map_key("value", target, value)
    st.session_state[key] = shown
    return {"key": key, "on_change": _on_map_value, "args": (target, value, key)}


def _on_map_value(target: str, value: str, key: str) -> None:
    c = mapping().get(target)
    if c is None:
        return
    chosen = st.session_state[key]
    values = dict(c.values)
    if chosen == KEEP_VALUE:
        values[value] = value
    else:
        values[value] = "" if chosen == EMPTY_VALUE else chosen
    c.values = values


CHOOSE_DATE = "— choose the date format —"


def _date_inference(source: str):
    """What file column `source` says about its date format (kn026.date_formats.infer), per file."""
    from kn026 import date_formats

    f = map_file()
    return memo(("map_date_infer", f["id"], source), lambda: date_formats.infer(f["frame"][source]))


def _fill_dates(m) -> None:
    """Write the formats the file's values prove into mapping `m`, so the downloaded YAML carries them."""
    from kn026 import date_formats

    date_formats.fill(map_file()["frame"], m, _date_inference)


def map_date_columns() -> list:
    """The mapping's date columns that are in the file (kn026.date_formats.DateColumn)."""
    from kn026 import date_formats

    frame = map_file()["frame"]
    return [d for d in date_formats.date_columns(mapping()) if d.source in frame.columns]


def _date_reads(source: str, code: str) -> int:
    """Non-empty rows of file column `source` that format `code` reads."""
    from kn026 import date_formats

    inf = _date_inference(source)
    if code in inf.rows or code in date_formats.CATALOGUE:
        return inf.rows.get(code, 0)
    f = map_file()
    return memo(("map_date_reads", f["id"], source, code),
                lambda: inf.n - int(date_formats.read(f["frame"][source], code)[1].sum()))


def map_date_open() -> list:
    """Date columns whose format is neither chosen nor proven by the values: loading waits for them."""
    return [d for d in map_date_columns() if not d.given and not _date_inference(d.source).settled]


def map_date_wait() -> str:
    """Why the preview and loading wait for a date format ("" when none is missing)."""
    asked = map_date_open()
    if not asked:
        return ""
    return ("Choose the date format of " + ", ".join(f"`{d.key}` (file column “{d.source}”)" for d in asked)
            + " in section 3 first: its dates read in more than one way, and dates are never guessed. "
            "*Load this cohort* is enabled once every date column has its format.")


def map_date_options(d) -> list[str]:
    """The formats offered for date column `d`: those that read the most of its values first."""
    from kn026.date_formats import CATALOGUE

    inf = _date_inference(d.source)
    if inf.status in ("typed", "empty") and not d.given:
        return []  # typed dates (Parquet, Excel) or no value: nothing to choose
    codes = sorted(inf.rows, key=lambda c: (-inf.rows[c], CATALOGUE.index(c))) or list(CATALOGUE)
    if d.given and d.given not in codes:
        codes.insert(0, d.given)
    return codes if inf.settled else [CHOOSE_DATE, *codes]


def map_date_label(d, code: str) -> str:
    """"dd/mm/yyyy (day first) · reads all 300"."""
    from kn026.date_formats import describe

    if code == CHOOSE_DATE:
        return code
    inf = _date_inference(d.source)
    got = _date_reads(d.source, code)
    return f"{describe(code)} · reads {'all ' + format(got, ',') if got == inf.n else f'{got:,} of {inf.n:,}'}"


def map_date_widget(d) -> dict:
    key = map_key("date", d.key, d.source)
    inf = _date_inference(d.source)
    st.session_state[key] = d.given or inf.format or CHOOSE_DATE
    return {"key": key, "on_change": _on_map_date, "args": (d.key, key)}


def _on_map_date(target: str, key: str) -> None:
    from kn026 import date_formats

    chosen = st.session_state[key]
    date_formats.set_format(mapping(), target, None if chosen == CHOOSE_DATE else chosen)


def map_date_samples(d, n: int = 3) -> list[tuple[str, str]]:
    """The column's first distinct values and how they read: under its format, or under each candidate."""
    from kn026 import date_formats

    inf = _date_inference(d.source)
    texts = map_file()["frame"][d.source].dropna().astype(str).str.strip()
    firsts = pd.Series(texts[texts != ""].unique()[:n], dtype=object)
    code = d.given or inf.format
    codes = [code] if code else list(inf.candidates[:3] if inf.status == "ambiguous" else [])
    readings = [date_formats.read(firsts, c)[0] for c in codes]
    out = []
    for i, value in enumerate(firsts):
        got = [date_formats.human(r.iloc[i]) if pd.notna(r.iloc[i]) else "not read" for r in readings]
        out.append((value, " or ".join(got) if got else "?"))
    return out


def map_date_note(d) -> tuple[str, str]:
    """("asked" | "proven" | "chosen", the sentence to show beside date column `d`)."""
    from kn026.date_formats import describe

    inf = _date_inference(d.source)
    if not d.given and not inf.settled:
        return "asked", (f"“{d.source}”: {inf.why}. Dates are never guessed: choose the format the file uses; "
                         "the cohort cannot be loaded until you do.")
    if d.given and not (inf.status == "proven" and inf.format == d.given):
        not_read = inf.n - _date_reads(d.source, d.given)
        extra = f" {not_read:,} value(s) do not match it: they are listed as problems below." if not_read else ""
        return "chosen", f"Read as {describe(d.given)}, as chosen.{extra}"
    if inf.status == "proven":
        extra = "" if inf.rows.get(inf.format, 0) == inf.n else \
            f" {inf.n - inf.rows[inf.format]:,} value(s) are not dates: they are listed as problems below."
        return "proven", f"Recognised as {describe(inf.format)}: {inf.why}.{extra}"
    return "proven", inf.why.capitalize() + "."


def human_date(value) -> str:
    from kn026.date_formats import human

    return human(value)


def map_date_report() -> pd.DataFrame:
    """kn026.date_formats.date_report of the file under the current mapping: earliest and latest dates."""
    from kn026 import date_formats

    f, m = map_file(), mapping()
    return memo(("map_date_report", f["id"], m.to_yaml()),
                lambda: date_formats.date_report(f["frame"], m, _date_inference))


def map_preview():
    """(Preview of the whole mapped file with load_cohort's problems, or None; error message)."""
    from kn026.mapping import preview_mapping

    f, m = map_file(), mapping()

    def build():
        try:
            return preview_mapping(f["frame"], m, rows=20), ""
        except ValueError as err:
            return None, str(err).removeprefix("mapping: ")

    return memo(("map_preview", f["id"], m.to_yaml()), build)


def request_mapped_load() -> None:
    st.session_state[K + "want_mapped"] = True
    st.session_state[K_IMPORT_ERROR] = None


def _load_mapped() -> None:
    import copy

    from kn026.mapping import value_report

    f, m = map_file(), mapping()
    if f is None or m is None:
        _import_failed("mapped", "", loading.LoadError("upload the CSV / Excel file first"))
        return
    t0 = time.perf_counter()
    bar, progress = _progress_bar(f["name"])
    try:
        con, cohort = loading.load_mapped(f["frame"], m, progress=lambda x, msg: progress(0.6 * x, msg))
    except Exception as err:  # noqa: BLE001 - a message, never a traceback
        bar.empty()
        _import_failed("mapped", f["name"], err)
        return
    report = {"file": f["name"], "rows": len(f["frame"]), "mapping": copy.deepcopy(m),
              "values": value_report(f["frame"], m), "absent": cohort.absent, "changes": list(cohort.changes)}
    label = f"{f['name']} via mapping ({cohort.n:,} patients)"
    _install(con, cohort, label, "mapped", time.perf_counter() - t0, report)
    _after_import(bar, label, time.perf_counter() - t0)


def import_report():
    """The loaded cohort's import report: omop.ImportReport, a mapped file's dict, or None."""
    return st.session_state[K_DATA].report


def has_upload(key: str) -> bool:
    return st.session_state.get(key) is not None


def schema_column(name: str):
    from kn026 import schema

    return schema.BY_NAME[name]


def schema_names() -> set[str]:
    from kn026 import schema

    return set(schema.BY_NAME)


def dictionary_columns() -> list[str]:
    from kn026 import schema

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
    from kn026 import upload

    return upload.neutralise_formulas(frame).to_csv(index=False)


def data() -> Bundle:
    if st.session_state.get(K_DATA) is None:
        with st.spinner("Loading the built-in synthetic cohort…"):
            _load_builtin()
    return st.session_state[K_DATA]


def engine_for(stage: int) -> Engine:
    bundle = st.session_state[K_DATA]
    eng = bundle.engines.get(stage)
    if eng is None:
        eng = Engine(bundle.cohort, protocol(), stage)
        if bundle.cohort.n >= 200_000:
            with st.spinner(f"Evaluating every criterion for {bundle.cohort.n:,} patients (stage {stage})…"):
                eng.evaluate()
        else:
            eng.evaluate()
        bundle.engines[stage] = eng
    return eng


# --------------------------------------------------------------------------- scenarios


def scenarios() -> dict[str, Scenario]:
    return st.session_state[K_SCENARIOS]


def active_name() -> str:
    name = st.session_state[K_ACTIVE]
    return name if name in scenarios() else PROTOCOL


def active_scenario() -> Scenario:
    name = active_name()
    return Scenario() if name == PROTOCOL else scenarios()[name]


def set_active(name: str) -> None:
    st.session_state[K_ACTIVE] = name
    bump_epoch()


def _unique_name(base: str) -> str:
    names = set(scenarios()) | {PROTOCOL}
    if base not in names:
        return base
    i = 2
    while f"{base} ({i})" in names:
        i += 1
    return f"{base} ({i})"


def editable_scenario() -> str:
    """Name of the scenario edits go to; editing the protocol starts a new scenario."""
    name = active_name()
    if name != PROTOCOL:
        return name
    new = _unique_name("My scenario")
    scenarios()[new] = Scenario(new)
    st.session_state[K_ORDERS][new] = order_state(PROTOCOL)
    st.session_state[K_ACTIVE] = new
    st.session_state[K_NOTICE] = (f"Editing a new scenario, “{new}”. The protocol itself never changes; "
                                  "switch back to it in the sidebar.")
    return new


def _replace(name: str, scenario: Scenario) -> None:
    scenarios()[name] = scenario


def set_param(rule_id: str, param: str, key: str) -> None:
    """Widget callback: a threshold changed."""
    value = st.session_state[key]
    if value is None:
        return
    name = editable_scenario()
    s = scenarios()[name]
    spec = s.rule_params(protocol(), rule_id)[param]  # a protocol rule or a custom criterion
    dec = to_decimal(round(float(value), 6), f"{rule_id}.{param}")
    over = {r: dict(v) for r, v in s.overrides.items()}
    vals = over.setdefault(rule_id, {})
    if dec == spec.default:
        vals.pop(param, None)
    else:
        vals[param] = spec.check(dec, rule_id)
    if not vals:
        over.pop(rule_id)
    _replace(name, dataclasses.replace(s, overrides=over))


def set_enabled(item_id: str, key: str) -> None:
    """Widget callback: a criterion or sub-rule switched on or off."""
    set_enabled_value(item_id, bool(st.session_state[key]))


def set_enabled_value(item_id: str, enabled: bool) -> None:
    name = editable_scenario()
    s = scenarios()[name]
    disabled = set(s.disabled)
    if enabled:
        disabled.discard(item_id)
    else:
        disabled.add(item_id)
    _replace(name, dataclasses.replace(s, disabled=frozenset(disabled)))


def rename_scenario(key: str) -> None:
    """Widget callback: the scenario's name or description changed."""
    new = str(st.session_state[key]).strip()
    name = active_name()
    if name == PROTOCOL or not new or new == name:
        return
    new = _unique_name(new)
    s = scenarios().pop(name)
    scenarios()[new] = dataclasses.replace(s, name=new)
    orders = st.session_state[K_ORDERS]
    if name in orders:
        orders[new] = orders.pop(name)
    st.session_state[K_ACTIVE] = new


def describe_scenario(key: str) -> None:
    name = active_name()
    if name == PROTOCOL:
        return
    s = scenarios()[name]
    _replace(name, dataclasses.replace(s, description=str(st.session_state[key])))


def reset_scenario() -> None:
    """Back to the protocol's thresholds and criteria (keeps the scenario's name)."""
    name = active_name()
    if name == PROTOCOL:
        return
    s = scenarios()[name]
    _replace(name, Scenario(s.name, s.description))
    st.session_state[K_ORDERS][name] = ("protocol", ())
    bump_epoch()


def delete_scenario() -> None:
    name = active_name()
    if name != PROTOCOL:
        scenarios().pop(name, None)
        st.session_state[K_ORDERS].pop(name, None)
    set_active(PROTOCOL)


def upload_scenario(name: str, text: str) -> str | None:
    """Add a scenario from YAML text and make it active; returns an error message or None."""
    try:
        s = parse_scenario(text, protocol(), source=name)
    except CriteriaError as err:
        return str(err)
    problem = rules_problem(s)  # custom / rewritten rules must run on the loaded cohort
    if problem:
        return problem
    final = s.name if s.name not in scenarios() else _unique_name(s.name)
    scenarios()[final] = dataclasses.replace(s, name=final, order=())
    st.session_state[K_ORDERS][final] = ("manual", tuple(s.order)) if s.order else ("protocol", ())
    set_active(final)
    return None


def on_scenario_upload(key: str) -> None:
    """File-uploader callback: read the scenario file, make it active, or keep the error."""
    up = st.session_state.get(key)
    st.session_state[K + "scenario_error"] = None
    if up is None:
        return
    from kn026 import upload

    try:  # checked by content first: size, a renamed binary or HTML page, UTF-8
        text = upload.sniff_text(up.getvalue(), up.name)
    except upload.UploadError as err:
        st.session_state[K + "scenario_error"] = (up.name, str(err))
        return
    error = upload_scenario(up.name, text)
    if error:
        st.session_state[K + "scenario_error"] = (up.name, error)


def text_upload_limit_mb() -> int:
    """The scenario / mapping YAML limit in whole MB, for the uploader's own label and check."""
    from kn026 import upload

    return max(1, upload.MAX_TEXT_BYTES // 2**20)


def scenario_upload_error() -> tuple[str, str] | None:
    return st.session_state.get(K + "scenario_error")


def scenario_yaml(ctx: Ctx) -> str:
    s = active_scenario()  # as stored: with custom rules this cohort cannot screen, if any
    order = ctx.order if ctx.order_mode != "protocol" else ()
    name = s.name if not ctx.is_protocol else PROTOCOL
    return dataclasses.replace(s, name=name, order=tuple(order)).to_yaml(ctx.protocol)


# --- custom rules
# Analyst-written criteria and rewritten rule expressions of the active scenario. Text is
# validated against the loaded cohort (kn026.custom, kn026.rulecheck) and screened once
# *before* the scenario changes, so a rejected rule changes nothing; the rejection (with the
# position of the offending token) is kept under K_RULE_ERROR until the next attempt.
# Applying edits the active scenario like a threshold does (editable_scenario()). Form
# fields use epoch keys, so switching or resetting the scenario refills them.


def rule_field(form: str, name: str) -> str:
    """Widget key of field `name` of the rule form `form` ("add" or "replace")."""
    return wkey("rule", form, name)


def rule_error(form: str) -> dict | None:
    """The last rejection in `form`: text, message, position, token (None after a success)."""
    err = st.session_state.get(K_RULE_ERROR)
    return err if err and err["form"] == form else None


def _reject(form: str, text: str, err: Exception, located: bool = True) -> None:
    st.session_state[K_RULE_ERROR] = {
        "form": form, "text": text, "message": getattr(err, "message", None) or str(err),
        "position": getattr(err, "position", None) if located else None,
        "token": getattr(err, "token", None) if located else None}


def _notice(text: str) -> None:
    prev = st.session_state.get(K_NOTICE)
    st.session_state[K_NOTICE] = f"{prev} {text}" if prev else text


def _stage_engine() -> Engine:
    return engine_for(int(st.session_state[K_STAGE]))


def _screen_once(candidate: Scenario) -> Scenario:
    """`candidate` validated against the protocol and screened on the loaded cohort
    (raises RuleError, CriteriaError, ValueError or a DuckDB error)."""
    candidate = candidate.validate(protocol())
    analysis.run(_stage_engine(), candidate)
    return candidate


def _apply(candidate: Scenario, done: str) -> bool:
    """Store a checked candidate as the active scenario (a new one when the protocol is active)."""
    name = editable_scenario()
    _replace(name, dataclasses.replace(candidate, name=name))
    st.session_state[K_RULE_ERROR] = None
    _notice(done)
    return True


def _try(form: str, text: str, candidate: Scenario) -> Scenario | None:
    """The candidate screened once, or None with the rejection kept (nothing changes)."""
    try:
        return _screen_once(candidate)
    except (RuleError, CriteriaError, ValueError) as err:
        _reject(form, text, err, located=False)  # about the scenario as a whole, not this text
    except Exception as err:  # noqa: BLE001 - a DuckDB run-time error must not leave a half-applied rule
        _reject(form, text, RuleError("the rule could not be evaluated on this cohort: "
                                      + str(err).splitlines()[0][:160]))
    return None


def custom_ids() -> list[str]:
    return [c.id for c in active_scenario().custom]


def add_custom_rule() -> None:
    """Form callback: add a custom criterion, or update the one with the same ID."""
    ss = st.session_state
    field = lambda name: ss.get(rule_field("add", name))  # noqa: E731
    cid = str(field("id") or "").strip().upper()
    text = str(field("sql") or "").strip()
    label = " ".join(str(field("text") or "").split())
    proto = protocol()
    try:
        params = custom.parse_params(field("params"))
        rule = custom.CustomRule(cid, str(field("kind") or "exclusion"), label or cid, text, params)
        if not text:
            raise RuleError("write the condition a patient must meet to pass, for example age_years <= 75")
        custom.build_custom(rule, _stage_engine().cohort, proto, proto.stages)  # positions point into `text`
    except (RuleError, CriteriaError) as err:
        _reject("add", text, err)
        return
    s = active_scenario()
    updating = cid in {c.id for c in s.custom}
    rules = tuple(rule if c.id == cid else c for c in s.custom) if updating else (*s.custom, rule)
    over = {r: dict(v) for r, v in s.overrides.items()}
    if cid in over:  # keep tuned values of parameters the new version still declares
        over[cid] = {p: v for p, v in over[cid].items() if p in params}
        if not over[cid]:
            over.pop(cid)
    candidate = _try("add", text, dataclasses.replace(s, custom=rules, overrides=over))
    if candidate is None:
        return
    _apply(candidate, f"{cid} {'updated' if updating else 'added'}: it is in the funnel, overlaps and exports.")
    ss[rule_field("add", "id")] = custom.next_id(custom_ids())
    for name in ("text", "sql", "params"):
        ss[rule_field("add", name)] = ""


def add_form() -> None:
    """Seed the add form the first time it is drawn: the first free ID, kind exclusion."""
    ss = st.session_state
    ss.setdefault(rule_field("add", "id"), custom.next_id(custom_ids()))
    ss.setdefault(rule_field("add", "kind"), "exclusion")


def edit_custom_rule(cid: str) -> None:
    """Button callback: put a custom criterion into the add form to change it."""
    rule = next((c for c in active_scenario().custom if c.id == cid), None)
    if rule is None:
        return
    fill_custom_form(rule)


def fill_custom_form(rule: custom.CustomRule) -> None:
    ss = st.session_state
    ss[rule_field("add", "id")] = rule.id
    ss[rule_field("add", "kind")] = rule.kind
    ss[rule_field("add", "text")] = rule.text
    ss[rule_field("add", "sql")] = rule.sql
    ss[rule_field("add", "params")] = custom.format_params(rule.params)
    ss[K_RULE_ERROR] = None


def example_custom_rule() -> None:
    """Button callback: fill the add form with the worked example (a new free ID)."""
    fill_custom_form(dataclasses.replace(custom.EXAMPLE_CUSTOM, id=custom.next_id(custom_ids())))


def remove_custom_rule(cid: str) -> None:
    """Button callback: drop a custom criterion with its tuned values, switch and position."""
    name = active_name()
    if name == PROTOCOL:
        return
    s = scenarios()[name]
    _replace(name, dataclasses.replace(
        s, custom=tuple(c for c in s.custom if c.id != cid),
        overrides={r: v for r, v in s.overrides.items() if r != cid},
        disabled=frozenset(d for d in s.disabled if d != cid), order=tuple(c for c in s.order if c != cid)))
    mode, manual = order_state(name)
    st.session_state[K_ORDERS][name] = (mode, tuple(c for c in manual if c != cid))
    st.session_state[K_RULE_ERROR] = None
    _notice(f"{cid} removed.")


def replace_choices(stage: int) -> list[str]:
    """Rule IDs that may be rewritten at `stage` (every protocol rule of the stage)."""
    return [r.id for r in protocol().rules if stage in r.stages]


def replace_form(stage: int) -> str:
    """Seed the rewrite form (picked rule, its current expression); returns the picked rule."""
    ss = st.session_state
    pick, sql = rule_field("replace", "rule"), rule_field("replace", "sql")
    choices = replace_choices(stage)
    if ss.get(pick) not in choices:
        ss[pick] = custom.EXAMPLE_REPLACE[0] if custom.EXAMPLE_REPLACE[0] in choices else choices[0]
        ss.pop(sql, None)
    if sql not in ss:
        ss[sql] = custom.expression_for_edit(protocol(), active_scenario().replace, ss[pick], stage)
    return ss[pick]


def pick_replace_rule(stage: int) -> None:
    """Selectbox callback: prefill the expression of the newly picked rule."""
    ss = st.session_state
    ss[rule_field("replace", "sql")] = custom.expression_for_edit(
        protocol(), active_scenario().replace, ss[rule_field("replace", "rule")], stage)
    ss[K_RULE_ERROR] = None


def example_replace_rule() -> None:
    """Button callback: fill the rewrite form with the clearance >= 50 mL/min example."""
    rid, sql = custom.EXAMPLE_REPLACE
    st.session_state[rule_field("replace", "rule")] = rid
    st.session_state[rule_field("replace", "sql")] = sql
    st.session_state[K_RULE_ERROR] = None


def replace_rule_expression() -> None:
    """Form callback: rewrite the picked rule's expression (the protocol's text again: undo)."""
    ss = st.session_state
    rid = str(ss.get(rule_field("replace", "rule")) or "")
    text = str(ss.get(rule_field("replace", "sql")) or "").strip()
    proto = protocol()
    try:
        rule = proto.rule(rid)
        if not text:
            raise RuleError("write the condition a patient must meet to pass this rule")
        rewritten = custom.replace_rule(rule, text, _stage_engine().cohort, proto)  # positions point into `text`
        as_written = {s: custom.replace_rule(rule, rule.sql[s], _stage_engine().cohort, proto).sql[s]
                      for s in rule.stages}
    except (RuleError, CriteriaError, KeyError) as err:
        _reject("replace", text, err)
        return
    s = active_scenario()
    replace = dict(s.replace)
    unchanged = all(rewritten.sql[stg] == as_written[stg] for stg in rule.stages)
    if unchanged:
        if rid not in replace:
            _reject("replace", text, RuleError(f"this is {rid} as the protocol writes it; change it first"))
            return
        replace.pop(rid)
    else:
        replace[rid] = text
    candidate = _try("replace", text, dataclasses.replace(s, replace=replace))
    if candidate is None:
        return
    _apply(candidate, f"{rid} back to the protocol's expression." if unchanged else f"{rid} rewritten.")


def remove_replacement(rid: str) -> None:
    """Button callback: give a rewritten rule its protocol expression back."""
    name = active_name()
    if name == PROTOCOL:
        return
    s = scenarios()[name]
    _replace(name, dataclasses.replace(s, replace={r: v for r, v in s.replace.items() if r != rid}))
    if st.session_state.get(rule_field("replace", "rule")) == rid:
        st.session_state.pop(rule_field("replace", "sql"), None)  # prefill the protocol's text again
    st.session_state[K_RULE_ERROR] = None
    _notice(f"{rid} back to the protocol's expression.")


def rules_problem(s: Scenario) -> str | None:
    """Why `s`'s custom or rewritten rules cannot run on the loaded cohort (None: they can)."""
    if not s.custom and not s.replace:
        return None
    try:
        analysis.engine_for(_stage_engine(), s)
    except (RuleError, CriteriaError, ValueError) as err:
        return str(err)
    return None


def screening(base: Engine, scen: Scenario) -> tuple[Engine, Scenario, list[str]]:
    """The engine screening `scen` (its custom and rewritten rules), the scenario as screened,
    and what had to be left out: a rule naming a column this cohort lacks (after loading
    another file, say) is dropped here with a message instead of breaking every page."""
    if not scen.custom and not scen.replace:
        return base, scen, []
    try:
        return analysis.engine_for(base, scen), scen, []
    except (RuleError, CriteriaError, ValueError):
        pass
    proto, problems, keep, replace = base.protocol, [], [], {}
    for c in scen.custom:
        try:
            custom.build_custom(c, base.cohort, proto, proto.stages)
            keep.append(c)
        except (RuleError, CriteriaError) as err:
            problems.append(f"{c.id}: {err}")
    for rid, sql in scen.replace.items():
        try:
            custom.replace_rule(proto.rule(rid), sql, base.cohort, proto)
            replace[rid] = sql
        except (RuleError, CriteriaError, KeyError) as err:
            problems.append(f"{rid} (rewritten): {err}")

    def without(ids, customs, rewrites):
        return dataclasses.replace(scen, custom=tuple(customs), replace=rewrites,
                                   overrides={r: v for r, v in scen.overrides.items() if r not in ids},
                                   disabled=frozenset(d for d in scen.disabled if d not in ids))

    ids = {c.id for c in scen.custom}
    kept = without(ids - {c.id for c in keep}, keep, replace)
    try:
        return analysis.engine_for(base, kept), kept, problems
    except (RuleError, CriteriaError, ValueError) as err:
        return base, without(ids, (), {}), [*problems, str(err)]


def rule_columns(ctx: Ctx) -> pd.DataFrame:
    """The names a rule may use on the loaded cohort (kind, unit, meaning), for the help."""
    return memo(("rule_columns", ctx.data.token),
                lambda: pd.DataFrame(custom.column_help(ctx.data.cohort, protocol())))


# --------------------------------------------------------------------------- order


def order_state(name: str | None = None) -> tuple[str, tuple[str, ...]]:
    return st.session_state[K_ORDERS].get(name or active_name(), ("protocol", ()))


def set_order_mode(key: str, current: tuple[str, ...] = ()) -> None:
    """Widget callback: protocol / most restrictive / by hand (starts from `current`)."""
    mode = st.session_state[key] or "protocol"
    _, manual = order_state()
    if mode == "manual" and not manual:
        manual = tuple(current)
    st.session_state[K_ORDERS][active_name()] = (mode, manual)


def move_criterion(ids: list[str], cid: str, position: int) -> list[str]:
    """`ids` with `cid` moved to 1-based `position` (clamped)."""
    out = [c for c in ids if c != cid]
    pos = min(max(int(position), 1), len(out) + 1)
    out.insert(pos - 1, cid)
    return out


def set_manual_order(order: list[str]) -> None:
    st.session_state[K_ORDERS][active_name()] = ("manual", tuple(order))


def editor_key() -> str:
    return W + f"order_editor.{st.session_state[K_EDITOR]}.{epoch()}"


def remember_editor_rows(ids: list[str]) -> None:
    """The criteria shown in the order editor, row by row (edits refer to row positions)."""
    st.session_state[K + "editor_ids"] = list(ids)


def apply_order_edits() -> bool:
    """Apply edits made in the criteria table (position / apply columns); True if any.

    Runs in `page_start`, before anything that depends on the scenario is computed;
    then the editor gets a fresh key so it shows the new state.
    """
    state = st.session_state.get(editor_key())
    shown_ids = st.session_state.get(K + "editor_ids") or []
    if not isinstance(state, dict) or not shown_ids:
        return False
    edited = state.get("edited_rows") or {}
    if not edited:
        return False
    order = list(shown_ids)
    moves = []
    for row, change in edited.items():
        row = int(row)
        if not 0 <= row < len(shown_ids):
            continue
        cid = shown_ids[row]
        if "Apply" in change:
            set_enabled_value(cid, bool(change["Apply"]))
        if "Position" in change and change["Position"] is not None:
            moves.append((int(change["Position"]), cid))
    for position, cid in sorted(moves):
        order = move_criterion(order, cid, position)
    if moves:
        set_manual_order(order)
    st.session_state[K_EDITOR] += 1
    return True


def resolved_order(engine: Engine, scenario: Scenario, mode: str, manual: tuple[str, ...]) -> tuple[str, ...]:
    ids = [c.id for c in engine.protocol.criteria if engine.stage in c.stages]
    if mode == "restrictive":
        return tuple(memo(("restrictive", engine_key(engine), scenario_key(scenario)),
                          lambda: analysis.restrictive_order(engine, scenario)))
    if mode == "manual" and manual:
        known = [c for c in manual if c in ids]
        return tuple(known + [c for c in ids if c not in known])
    return ()


# --------------------------------------------------------------------------- memo


def scenario_key(s: Scenario) -> tuple:
    over = tuple(sorted((rid, tuple(sorted((p, format_number(v)) for p, v in vals.items())))
                        for rid, vals in s.overrides.items()))
    rules = (tuple(repr(c.to_doc()) for c in s.custom), tuple(sorted(s.replace.items())))
    return over, tuple(sorted(s.disabled)), rules


def engine_key(engine: Engine) -> tuple:
    # an engine extended with a scenario's custom / rewritten rules has more rules than the
    # stage's engine (analysis.engine_for marks it with the rules' key)
    return (st.session_state[K_DATA].token, engine.stage, getattr(engine, "_scenario_key", None))


def memo(key, fn):
    cache: OrderedDict = st.session_state[K_MEMO]
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = fn()
    cache[key] = value
    while len(cache) > MEMO_SIZE:
        cache.popitem(last=False)
    return value


def result(ctx: Ctx, scenario: Scenario | None = None, order=None) -> analysis.Result:
    s = ctx.scenario if scenario is None else scenario
    o = ctx.order if order is None else tuple(order)
    base = ctx.data.engines[ctx.stage]  # not ctx.engine: `s` (the protocol, say) brings its own rules
    return memo(("run", engine_key(base), scenario_key(s), o),
                lambda: analysis.run(base, s, order=list(o) or None))


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


def tabs(name: str, labels_: list[str]):
    """Tabs whose content runs only when selected (`tab.open`); the choice is kept while on the page."""
    return st.tabs(labels_, key=W + "tabs." + name, on_change="rerun")


def tab_key(name: str) -> str:
    return W + "tabs." + name


def expander_key(item: str) -> str:
    return W + "expander." + item


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


# --------------------------------------------------------------------------- sidebar


def _on_source() -> None:
    _sync("source")
    if st.session_state[K_SOURCE] == "builtin" and st.session_state[K_DATA].kind != "builtin":
        st.session_state[K + "want_builtin"] = True
    if st.session_state[K_SOURCE] in WIZARD_SOURCES:
        open_load_data()


def open_load_data() -> None:
    """Go to the Cohort page's "Load data" tab (on this run, from `_sidebar_data`)."""
    st.session_state[K + "goto_load"] = True


def _on_generate() -> None:
    for name in ("gen_n", "gen_seed", "gen_sites"):
        _sync(name)
    st.session_state[K + "want_generate"] = True


def _on_scenario() -> None:
    _sync("active")
    bump_epoch()


def _sidebar_data(bundle: Bundle, title: str = "") -> None:
    sb = st.sidebar
    sb.markdown("### Data")
    sb.radio("Cohort", list(SOURCES), format_func=SOURCES.get, key=_seed("source"), on_change=_on_source,
             label_visibility="collapsed")
    source = st.session_state[K_SOURCE]
    if st.session_state.pop(K + "goto_load", False):
        st.session_state[tab_key("cohort")] = "Load data"
        if title != "Cohort":
            st.switch_page("pages/cohort.py")
    if source == "upload":
        up = sb.file_uploader("Cohort file (CSV, Parquet or Excel)", type=["csv", "txt", "tsv", "parquet", "xlsx",
                                                                           "xlsm"],
                              key=W + "upload", max_upload_size=upload_limit_mb(),
                              help="One row per patient, columns as in the data dictionary. The file is checked "
                                   f"and read in memory (at most {upload_limit_mb()} MB); nothing is written to disk.")
        if up is not None and st.session_state.get(K_UPLOAD_SEEN) != up.file_id:
            st.session_state[K_UPLOAD_SEEN] = up.file_id
            _load_upload(up)
        elif up is not None and st.session_state.pop(K + "want_upload", False):
            with st.container(border=True):  # main area, above the page: progress stays in view
                _load_upload(up, upload_edits())
    elif source in WIZARD_SOURCES:
        what = "OMOP zip" if source == "omop" else "file and its mapping"
        sb.caption(f"Choose the {what} on the **Cohort** page, tab **Load data**.")
        sb.button("Open Load data", icon=":material/upload_file:", key=W + "open_load", width="stretch",
                  on_click=open_load_data)
    if st.session_state.pop(K + "want_omop", False):
        with st.container(border=True):  # main area, above the page: progress stays in view
            _import_omop()
    if st.session_state.pop(K + "want_mapped", False):
        with st.container(border=True):
            _load_mapped()
    elif source == "generate":
        with sb.form(W + "generate_form", border=False):
            st.number_input("Patients", min_value=100, max_value=5_000_000, step=10_000, key=_seed("gen_n"))
            c1, c2 = st.columns(2)
            c1.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key=_seed("gen_seed"))
            c2.number_input("Sites", min_value=1, max_value=500, step=1, key=_seed("gen_sites"))
            st.form_submit_button("Generate", type="primary", width="stretch", on_click=_on_generate)
    if st.session_state.pop(K + "want_builtin", False):
        with st.spinner("Loading the built-in synthetic cohort…"):
            _load_builtin()
    if st.session_state.pop(K + "want_generate", False):
        ss = st.session_state
        with st.container(border=True):  # main area, above the page: progress stays in view
            _generate(int(ss[K_GEN_N]), int(ss[K_GEN_SEED]), int(ss[K_GEN_SITES]))
    bundle = st.session_state[K_DATA]
    sb.caption(f"**In use:** {bundle.label}")
    kind, text = data_badge()
    if kind == "ok":  # the green tick only when the cohort can assess the protocol
        sb.caption(f":green[:material/check_circle:] {text}")
    elif kind == "little":
        sb.warning(f"**Little can be assessed.** {text}", icon=":material/report:")
    else:
        sb.caption(f":material/info: {text}")


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


def _sidebar_analysis(ctx_protocol: Protocol) -> None:
    sb = st.sidebar
    sb.markdown("### Analysis")
    stages = sorted(ctx_protocol.stages)
    sb.radio("Protocol stage", stages, format_func=lambda s: f"Stage {s}", horizontal=True, key=_seed("stage"),
             on_change=_sync, args=("stage",), help=" · ".join(export.stage_name(ctx_protocol, s) for s in stages))
    names = [PROTOCOL, *scenarios()]
    st.session_state[K_ACTIVE] = active_name()
    sb.selectbox("Scenario", names, key=_seed("active"), on_change=_on_scenario,
                 format_func=lambda n: "Protocol (as written)" if n == PROTOCOL else n,
                 help="The protocol as written, or a named scenario with changed thresholds or criteria "
                      "(edit on the Criteria page).")
    s = active_scenario()
    if not s.is_protocol:
        changes = s.changes(ctx_protocol)
        short = [c if len(c) <= 70 else c[:69] + "…" for c in changes[:3]]  # rewritten rules carry their SQL
        sb.caption(f"{len(changes)} change(s): " + "; ".join(short) + (" …" if len(changes) > 3 else ""))
    sb.radio("Unknown values", list(POLICY_LABELS), format_func=POLICY_LABELS.get, horizontal=True,
             key=_seed("policy"), on_change=_sync, args=("policy",),
             help="Strict: a patient with an unknown value on a criterion counts as failing it. "
                  "Optimistic: counts as passing. Both: strict count with the optimistic bound.")


def _sidebar_suppression() -> None:
    sb = st.sidebar
    with sb.expander("Small-cell suppression", expanded=bool(st.session_state[K_SUPPRESS])):
        st.toggle("Hide small counts", key=_seed("suppress"), on_change=_sync, args=("suppress",),
                  help="Counts below the threshold, and complementary counts that would give them away by "
                       "subtraction, are hidden in tables, charts and exports. On by default for uploads.")
        st.number_input("Threshold (hide counts below)", min_value=2, max_value=50, step=1,
                        key=_seed("threshold"), on_change=_sync, args=("threshold",),
                        disabled=not st.session_state[K_SUPPRESS])


def page_start(title: str, icon: str | None = None) -> Ctx:
    """Shared start of every page: navigation, page config, sidebar, engine; returns the Ctx."""
    if not st.session_state.pop(SHELL, False):
        # The page runs without app.py: Streamlit's legacy multipage mode ran it directly
        # (first run of a server whose app folder has a pages/ directory, and every AppTest
        # run). Registering our navigation switches that mode off for the process; rerun at
        # once so the page is drawn through app.py, as every later run will be, and widget
        # identities never change between the first run and the next.
        navigation()
        if not st.session_state.pop(K + "rerouting", False):
            st.session_state[K + "rerouting"] = True
            st.rerun()
        st.session_state[K_RUN_START] = time.perf_counter()
    else:
        st.session_state.pop(K + "rerouting", None)
    st.set_page_config(page_title=f"{title} · {APP_TITLE}", page_icon=icon or ":material/filter_alt:",
                       layout="wide", initial_sidebar_state="expanded")
    _defaults()
    proto = protocol()
    bundle = data()
    apply_order_edits()  # before the sidebar: an edit may start a scenario the sidebar must show
    _sidebar_data(bundle, title)
    _sidebar_analysis(proto)
    _sidebar_suppression()
    bundle = st.session_state[K_DATA]
    stage = int(st.session_state[K_STAGE])
    engine = engine_for(stage)
    name = active_name()
    scen = dataclasses.replace(active_scenario(), order=())
    engine, scen, rule_problems = screening(engine, scen)  # custom / rewritten rules (see "custom rules")
    mode, manual = order_state(name)
    order = resolved_order(engine, scen, mode, manual)
    k = int(st.session_state[K_THRESHOLD]) if st.session_state[K_SUPPRESS] else None
    ctx = Ctx(engine.protocol, bundle, engine, stage, scen, name, order, mode, st.session_state[K_POLICY], k)
    _messages()
    if rule_problems:
        st.warning("Left out because this cohort cannot screen them (the scenario keeps them): "
                   + "; ".join(rule_problems), icon=":material/warning:")
    return ctx


def _messages() -> None:
    notice = st.session_state.pop(K_NOTICE, None)
    if notice:
        st.toast(notice, icon=":material/info:")
    err = st.session_state.get(K_LOAD_ERROR)
    if err:
        name, problems, total = err
        with st.container(border=True):
            if problems and all(p.column == "file" and p.row is None for p in problems):
                # the file itself was refused (type, size, encoding): one message, no table
                st.error(f"**{name} could not be loaded.** " + " ".join(p.sentence for p in problems)
                         + " The app keeps using the cohort it had before.", icon=":material/error:")
            elif (has_choices(problems) or upload_edits()) and st.session_state.get(W + "upload") is not None:
                upload_problems(name, problems, total)
            else:
                st.error(f"**{name} could not be loaded** — {total:,} problem(s) found. Fix them in the file and "
                         "upload it again; the app keeps using the cohort it had before.", icon=":material/error:")
                st.dataframe(problems_frame(problems), hide_index=True, width="stretch")
                st.caption("Row numbers count data rows: row 1 is the first line under the header.")
            st.button("Dismiss", key=W + "dismiss_error", on_click=_dismiss_error)


def upload_problems(name: str, problems, total: int) -> None:
    """A plain upload's bad cells: the problems, a choice for each, and *Load with these choices*."""
    chosen = upload_edits()
    again = " left after your choices" if chosen else ""
    st.error(f"**{name} could not be loaded** — {total:,} problem(s){again}. Fix them in the file and upload it "
             "again, or choose below what to do with each; the app keeps using the cohort it had before until "
             "then.", icon=":material/error:")
    st.caption("Row numbers count data rows: row 1 is the first line under the header.")
    with st.expander("The problems as a table"):
        st.dataframe(problems_frame(problems), hide_index=True, width="stretch")
    bad_cells_panel("upload", problems)
    c1, c2, _ = st.columns([2, 2, 3])
    c1.button("Load with these choices", type="primary", icon=":material/upload:", key=W + "upload_with_choices",
              on_click=request_upload_reload, disabled=not chosen, width="stretch")
    c2.button("Clear the choices", key=W + "upload_clear_choices", on_click=clear_edits, args=("upload",),
              disabled=not chosen, width="stretch")


def _dismiss_error() -> None:
    st.session_state[K_LOAD_ERROR] = None


def problems_frame(problems) -> pd.DataFrame:
    return pd.DataFrame([{
        "Column": p.column,
        "Row": p.row,
        "patient_id": p.patient_id,
        "Value": p.value,
        "Problem and fix": p.message,
        "Rows with this problem": p.count,
    } for p in problems])


def page_end() -> None:
    """Last line of every page: record (and with ?timing=1 show) the server time of this run."""
    start = st.session_state.pop(K_RUN_START, None)
    if start is None:
        return
    seconds = time.perf_counter() - start
    st.session_state[K_LAST_RUN] = seconds
    if st.session_state.get(K_TIMING):
        st.sidebar.caption(f"Server time: {seconds * 1000:.0f} ms", help="Time to run this page's script.")


# --------------------------------------------------------------------------- page helpers


def conditions() -> list[patients.Condition]:
    return st.session_state[K_CONDITIONS]


def add_condition(status_key: str, target_key: str) -> None:
    status, target = st.session_state.get(status_key), st.session_state.get(target_key)
    if status and target:
        cond = patients.Condition(status, target)
        if cond not in conditions():
            conditions().append(cond)


def add_example(key: str) -> None:
    """Widget callback: an example filter ("fails only EXCL09") was picked."""
    value = st.session_state.get(key)
    if value:
        status, target = str(value).rsplit(" ", 1)
        cond = patients.Condition(status, target)
        if cond not in conditions():
            conditions().append(cond)
    st.session_state[key] = None


def selection_changed(name: str, rows) -> bool:
    """True when a table's row selection differs from the last one seen."""
    key = K + "selection." + name
    rows = tuple(rows or ())
    if st.session_state.get(key) == rows:
        return False
    st.session_state[key] = rows
    return True


def remove_condition(index: int) -> None:
    conds = conditions()
    if 0 <= index < len(conds):
        conds.pop(index)


def clear_conditions() -> None:
    conditions().clear()


def seed_widget(name: str, value) -> str:
    """Set widget `kn026.w.<name>` to `value` before it is drawn; returns its key."""
    st.session_state[W + name] = value
    return W + name


def selected_patient() -> str | None:
    return st.session_state.get(K_PATIENT)


def select_patient(key: str) -> None:
    value = st.session_state.get(key)
    st.session_state[K_PATIENT] = str(value).strip() if value else None


def set_patient(patient_id: str | None) -> None:
    st.session_state[K_PATIENT] = patient_id


def param_value(ctx: Ctx, rule_id: str, param: str) -> Decimal:
    rule = ctx.protocol.rule(rule_id)
    return Decimal(ctx.scenario.overrides.get(rule_id, {}).get(param, rule.params[param].default))


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


def assessability(ctx: Ctx):
    """How much of the protocol this cohort can assess (None for engines without patient rows)."""
    if not hasattr(ctx.engine.cohort, "con"):
        return None
    return memo(("assess", engine_key(ctx.engine), scenario_key(ctx.scenario)),
                lambda: patients.assessability(analysis.engine_for(ctx.engine, ctx.scenario), ctx.scenario))


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


# --- recruitment
# State of the Recruitment page (pages/recruitment.py): persistent input values under
# `kn026.rec.*` (widgets `kn026.w.rec.*`, seeded on every run like the sidebar, so the
# inputs survive page switches), and per-session memos of the site estimate, the
# forecasts and the figures. The computations themselves are in kn026.recruitment.

K_REC = K + "rec."


def rec_state(name: str, default) -> dict:
    """Keyword arguments (key, on_change, args) for Recruitment input `name`: the widget is
    seeded from the persistent value (`default` the first time) and writes back on change."""
    ss = st.session_state
    ss.setdefault(K_REC + name, default)
    ss[W + "rec." + name] = ss[K_REC + name]
    return {"key": W + "rec." + name, "on_change": _rec_sync, "args": (name,)}


def _rec_sync(name: str) -> None:
    st.session_state[K_REC + name] = st.session_state[W + "rec." + name]


def rec_token() -> int:
    """Identity of the loaded cohort (memo keys, per-cohort defaults such as the approach share)."""
    return st.session_state[K_DATA].token


def rec_estimated_sites(ctx: Ctx):
    """(SiteInputs estimated from the cohort's site_id / screening_date, or None; why not)."""
    def build():
        from kn026 import forecast, recruitment

        frame = recruitment.cohort_site_frame(ctx.data.cohort)
        if frame is None:
            return None, "the cohort has no site_id and screening_date columns"
        try:
            return forecast.estimate_sites(frame), ""
        except ValueError as err:
            return None, str(err)

    return memo(("rec_sites", rec_token()), build)


def rec_totals(ctx: Ctx) -> dict[str, dict[str, int | None]]:
    """Funnel totals of the protocol and, when one is active, of the scenario, keyed by name;
    counts hidden by small-cell suppression are None (as on the Funnel page)."""
    active = totals(ctx)
    if ctx.is_protocol:
        return {PROTOCOL: active}
    tot = compare_tables(ctx)[0].masked().set_index("measure")
    base = {m: (None if pd.isna(tot.loc[m, "base"]) else int(tot.loc[m, "base"]))
            for m in ("strict", "optimistic", "unknown")}
    return {PROTOCOL: {"screened": active["screened"], **base}, ctx.scenario_name: active}


def rec_hidden_sites(ctx: Ctx) -> tuple[str, ...]:
    """Sites whose screened count the Sites page hides under small-cell suppression."""
    if not ctx.k:
        return ()
    tables = site_tables(ctx)
    if tables is None:
        return ()
    sites = tables[0]
    return tuple(sites.frame.loc[sites.hidden["screened"].to_numpy(), "site"].astype(str))


def rec_outcome(ctx: Ctx, plan, sites, bound: str, fraction: float | None, label: str, with_need: bool = True):
    """One bound's forecast for `plan` (memoised per cohort, plan, bound, fraction and label)."""
    from kn026 import recruitment

    key = ("rec_run", rec_token(), plan, bound, fraction, label, with_need)
    return memo(key, lambda: recruitment.run_bound(plan, sites, bound, fraction, ctx.data.cohort.n,
                                                   label=label, with_need=with_need))


def rec_figure(name: str, key: tuple, build):
    """A Recruitment figure, built once per cohort and `key`."""
    return memo(("rec_fig", name, rec_token(), *key), build)


# --- network
# State of the Network page (pages/network.py): the site histogram files uploaded in this
# session (read from memory once, kept across page switches under `kn026.net.files`), the
# page's inputs under `kn026.net.*` (widgets `kn026.w.net.*`), and memos of this session's
# own histogram and of the merged network. Reading, merging and the file format are in
# kn026.federated; nothing here writes to disk.

K_NET = K + "net."
K_NET_FILES = K_NET + "files"  # {sha256 of the bytes: NetFile}, in upload order
K_NET_UPLOADER = K_NET + "uploader"  # version of the uploader widget (bumped to empty it)
K_NET_IN_WIDGET = K_NET + "in_widget"  # file keys the uploader held at its last change


@dataclass(frozen=True)
class NetFile:
    """One uploaded histogram file: its document, or why it was refused."""

    key: str  # SHA-256 of the bytes: the same file uploaded twice is kept once
    name: str
    doc: dict | None
    error: str | None


@dataclass(frozen=True)
class Network:
    """A merged network and the (suppressed) tables the page shows."""

    hist: fm.Histogram
    meta: dict
    result: analysis.Result
    attrition: suppression.Table  # network funnel + per-criterion statistics
    sites: suppression.Table  # screened / strict / optimistic / unknown per site
    files: suppression.Table  # per site: engine, its own suppression, rules n/a there
    download: bytes  # the merged network histogram (kn026-histogram JSON)


def net_state(name: str, default) -> dict:
    """Keyword arguments (key, on_change, args) for Network input `name`, persisted like the sidebar's."""
    ss = st.session_state
    ss.setdefault(K_NET + name, default)
    ss[W + "net." + name] = ss[K_NET + name]
    return {"key": W + "net." + name, "on_change": _net_sync, "args": (name,)}


def _net_sync(name: str) -> None:
    st.session_state[K_NET + name] = st.session_state[W + "net." + name]


def net_value(name: str, default=None):
    return st.session_state.get(K_NET + name, default)


def net_files() -> list[NetFile]:
    return list(st.session_state.setdefault(K_NET_FILES, {}).values())


def net_add_files(files) -> list[NetFile]:
    """Read uploaded histogram files, given as (name, bytes) pairs, into the session.

    A malformed file is kept with its error message (shown next to its name), so the
    analyst sees which file to fix; only valid files take part in a merge.
    """
    import hashlib

    from kn026 import federated

    store = st.session_state.setdefault(K_NET_FILES, {})
    added = []
    for name, data in files:
        key = hashlib.sha256(data).hexdigest()
        if key not in store:
            try:
                store[key] = NetFile(key, name, federated.histogram_from_bytes(data, name), None)
            except federated.FederatedError as err:
                store[key] = NetFile(key, name, None, str(err))
        added.append(store[key])
    return added


def net_uploader_key() -> str:
    """Key of the site-file uploader; a fresh uploader (after a page switch) holds none of the kept files."""
    key = W + f"net.upload.{st.session_state.get(K_NET_UPLOADER, 0)}"
    if not st.session_state.get(key):
        st.session_state[K_NET_IN_WIDGET] = ()
    return key


def net_on_upload(key: str) -> None:
    """Uploader callback: add new files; drop the ones removed from the uploader (its ✕)."""
    current = net_add_files((f.name, f.getvalue()) for f in (st.session_state.get(key) or []))
    keys = tuple(f.key for f in current)
    store = st.session_state[K_NET_FILES]
    for gone in set(st.session_state.get(K_NET_IN_WIDGET, ())) - set(keys):
        store.pop(gone, None)
    st.session_state[K_NET_IN_WIDGET] = keys


def net_clear() -> None:
    """Button callback: forget every uploaded site file (and empty the uploader)."""
    st.session_state[K_NET_FILES] = {}
    st.session_state[K_NET_IN_WIDGET] = ()
    st.session_state[K_NET_UPLOADER] = st.session_state.get(K_NET_UPLOADER, 0) + 1


def net_scenario(ctx: Ctx) -> Scenario:
    """The active scenario as the sites must all run it: its funnel order as in its YAML file.

    The order is part of the scenario fingerprint (it is the network funnel's default
    order): a hand-made order is kept as stored (as a scenario file gives it), the most
    restrictive order as resolved on this cohort (as the scenario download writes it).
    """
    mode, manual = order_state(ctx.scenario_name)
    order = manual if mode == "manual" else ctx.order if mode == "restrictive" else ()
    return dataclasses.replace(ctx.scenario, order=tuple(order))


def net_site_doc(ctx: Ctx, site: str, below: int | None) -> dict:
    """This session's cohort as a site's histogram document (stage and scenario of the sidebar)."""
    from kn026 import federated

    scen = net_scenario(ctx)
    key = ("net_doc", engine_key(ctx.engine), scenario_key(scen), scen.order, str(site).strip(), below)
    return memo(key, lambda: federated.export_histogram(ctx.engine.histogram(scen.overrides), ctx.engine, scen,
                                                        site, below))


def histogram_json(doc: dict) -> bytes:
    """A histogram document as the file a site shares (as `python -m kn026 histogram` writes it)."""
    import json

    return (json.dumps(doc, indent=1) + "\n").encode("utf-8")


def _session_mismatch(own: dict, first: dict) -> str | None:
    """Why this session's histogram cannot join the uploaded ones, in terms of the sidebar."""
    if own["protocol"] != first["protocol"]:
        return (f"the uploaded files screen {first['protocol']}, this session {own['protocol']}; leave this "
                "session's cohort out")
    if own["stage"] != first["stage"]:
        return (f"the uploaded files are for stage {first['stage']}, this session's cohort is screened at stage "
                f"{own['stage']}: pick Stage {first['stage']} in the sidebar, or leave this session's cohort out")
    if own["scenario"]["fingerprint"] != first["scenario"]["fingerprint"]:
        name = first["scenario"]["name"]
        return (f"the uploaded files ran scenario “{name}”, this session runs “{own['scenario']['name']}”: "
                f"select the same scenario in the sidebar (upload its YAML on the Criteria page, with its "
                f"funnel order), or leave this session's cohort out")
    if own["criteria_fingerprint"] != first["criteria_fingerprint"]:
        return ("the uploaded files were screened with other criteria or thresholds than this session; "
                "leave this session's cohort out")
    return None


def net_merge(ctx: Ctx, include_session: bool, site: str) -> tuple[Network | None, str | None]:
    """Merge the valid uploaded files (and this session's cohort if asked): (network, None) or (None, why not)."""
    from kn026 import federated

    docs = [f.doc for f in net_files() if f.doc is not None]
    own = None
    if include_session:
        try:
            own = net_site_doc(ctx, site, None)
        except federated.FederatedError as err:
            return None, f"This session's cohort cannot join the network: {err} (the Share tab's site name)."
        if docs:
            why = _session_mismatch(own, docs[0])
            if why:
                return None, f"This session's cohort cannot join the network: {why}."
        docs = [*docs, own]
    if not docs:
        return None, None
    key = ("net_merge", tuple(f.key for f in net_files() if f.doc is not None),
           None if own is None else (engine_key(ctx.engine), scenario_key(net_scenario(ctx)), own["site"]),
           ctx.k)

    def build():
        try:
            federated.check_no_overlap(docs)
            hist, meta = federated.merge_histograms(docs)
            res, by_site = federated.network_result(hist, meta)
        except (federated.FederatedError, ValueError, CriteriaError) as err:
            return None, str(err)
        frame = export.attrition_frame(res, labels(ctx), kinds(ctx))
        sites = patients.with_rates(by_site.assign(excluded=by_site["screened"] - by_site["optimistic"]))
        rows = pd.DataFrame([{"site": s["site"], "engine": s["engine"] or "",
                              "suppress_below": s["suppress_below"], "suppressed": s["suppressed"],
                              "not_assessable": ", ".join(s["not_assessable"])} for s in meta["sites"]])
        if ctx.k:
            table = suppression.suppress_attrition(frame, ctx.k)
            site_table = suppression.suppress_margins(
                sites, ["strict", "unknown", "excluded"], "screened", ctx.k,
                sums={"optimistic": ["strict", "unknown"]}, also={"pct_strict": "strict",
                                                                   "pct_optimistic": "optimistic"})
            files = suppression.suppress_independent(rows, ["suppressed"], ctx.k)
        else:
            table, site_table, files = (suppression.unsuppressed(frame), suppression.unsuppressed(sites),
                                        suppression.unsuppressed(rows))
        body = histogram_json(federated.network_histogram(hist, meta))
        return Network(hist, meta, res, table, site_table, files, body), None

    return memo(key, build)
