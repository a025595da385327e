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
  uploaded data never leaves the session and nothing is written to disk.
* `st.cache_resource` holds only shared, read-only things: the protocol, the
  built-in cohort (as an Arrow table) and the example scenarios.
* Buttons act through `on_click` callbacks, never through their return value: the
  first run of a fresh server (and every AppTest run) is rerouted once through
  `app.py` (see `page_start`), and a rerun drops a button's one-shot click.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pandas as pd
import streamlit as st

from kn026 import analysis, export, patients, suppression
from kn026 import funnel as fm
from kn026.cohort import COHORT_DB, Cohort, CohortError, connect, load_cohort
from kn026.criteria import CriteriaError, Protocol, format_number, load_protocol, to_decimal
from kn026.engine import Engine
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
SOURCES = {"builtin": "Built-in synthetic cohort", "upload": "Upload a file", "generate": "Generate a synthetic cohort"}
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
K_NOTICE = K + "notice"
K_MEMO = K + "memo"
K_EPOCH = K + "epoch"  # bumped when a scenario is replaced wholesale: page widgets reset
K_EDITOR = K + "editor"  # version of the criteria order editor
K_CONDITIONS = K + "conditions"
K_PATIENT = K + "patient"
K_TIMING = K + "timing"
K_LAST_RUN = K + "last_run"
K_RUN_START = K + "run_start"
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
    kind: str  # builtin / upload / generated
    token: int
    seconds: float
    engines: dict


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


def _install(con, cohort, label: str, kind: str, seconds: float) -> None:
    old = st.session_state.get(K_DATA)
    st.session_state[K_DATA] = Bundle(con, cohort, label, kind, _new_token(), seconds, {})
    st.session_state[K_MEMO] = OrderedDict()
    st.session_state[K_SUPPRESS] = kind == "upload"  # on by default for uploaded data
    st.session_state[K_LOAD_ERROR] = None
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
    con = connect()
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


def _load_upload(uploaded) -> None:
    t0 = time.perf_counter()
    with st.status(f"Loading {uploaded.name}…", expanded=True) as status:
        try:
            st.write("Reading the file…")
            table = export.read_cohort_bytes(uploaded.name, uploaded.getvalue())
            st.write(f"Checking {table.num_rows if hasattr(table, 'num_rows') else len(table):,} rows "
                     "against the data dictionary…")
            con = connect()
            cohort = load_cohort(table, con)
        except CohortError as err:
            st.session_state[K_LOAD_ERROR] = (uploaded.name, err.problems, err.total)
            status.update(label=f"{uploaded.name} could not be loaded", state="error", expanded=False)
            return
        st.write("Evaluating every criterion…")
        _install(con, cohort, f"{uploaded.name} ({cohort.n:,} patients)", "upload", time.perf_counter() - t0)
        engine_for(st.session_state[K_STAGE])
        status.update(label=f"Loaded {uploaded.name}: {cohort.n:,} patients", state="complete", expanded=False)
    absent = cohort.absent
    if absent:
        st.session_state[K_NOTICE] = (f"{len(absent)} dictionary column(s) are absent from {uploaded.name}; "
                                      "rules that need them are not assessable (see the Cohort page).")


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
    con = connect()
    cohort = load_cohort(table, con)
    del table, parts
    label = f"Synthetic cohort ({cohort.n:,} patients, {sites} sites, seed {seed})"
    _install(con, cohort, label, "generated", time.perf_counter() - t0)
    bar.progress(0.9, text="Evaluating every criterion…")
    engine_for(st.session_state[K_STAGE])
    bar.progress(1.0, text=f"Ready: {cohort.n:,} patients in {time.perf_counter() - t0:.1f} s")


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
    rule = protocol().rule(rule_id)
    dec = to_decimal(round(float(value), 6), f"{rule_id}.{param}")
    over = {r: dict(v) for r, v in s.overrides.items()}
    vals = over.setdefault(rule_id, {})
    if dec == rule.params[param].default:
        vals.pop(param, None)
    else:
        vals[param] = rule.params[param].check(dec, rule_id)
    if not vals:
        over.pop(rule_id)
    _replace(name, Scenario(s.name, s.description, over, s.disabled, s.order))


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
    _replace(name, Scenario(s.name, s.description, s.overrides, frozenset(disabled), s.order))


def rename_scenario(key: str) -> None:
    """Widget callback: the scenario's name or description changed."""
    new = str(st.session_state[key]).strip()
    name = active_name()
    if name == PROTOCOL or not new or new == name:
        return
    new = _unique_name(new)
    s = scenarios().pop(name)
    scenarios()[new] = Scenario(new, s.description, s.overrides, s.disabled, s.order)
    orders = st.session_state[K_ORDERS]
    if name in orders:
        orders[new] = orders.pop(name)
    st.session_state[K_ACTIVE] = new


def describe_scenario(key: str) -> None:
    name = active_name()
    if name == PROTOCOL:
        return
    s = scenarios()[name]
    _replace(name, Scenario(s.name, str(st.session_state[key]), s.overrides, s.disabled, s.order))


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
    final = s.name if s.name not in scenarios() else _unique_name(s.name)
    scenarios()[final] = Scenario(final, s.description, s.overrides, s.disabled, ())
    st.session_state[K_ORDERS][final] = ("manual", tuple(s.order)) if s.order else ("protocol", ())
    set_active(final)
    return None


def on_scenario_upload(key: str) -> None:
    """File-uploader callback: read the scenario file, make it active, or keep the error."""
    up = st.session_state.get(key)
    st.session_state[K + "scenario_error"] = None
    if up is None:
        return
    error = upload_scenario(up.name, up.getvalue().decode("utf-8", errors="replace"))
    if error:
        st.session_state[K + "scenario_error"] = (up.name, error)


def scenario_upload_error() -> tuple[str, str] | None:
    return st.session_state.get(K + "scenario_error")


def scenario_yaml(ctx: Ctx) -> str:
    s = ctx.scenario
    order = ctx.order if ctx.order_mode != "protocol" else ()
    name = s.name if not ctx.is_protocol else PROTOCOL
    return Scenario(name, s.description, s.overrides, s.disabled, tuple(order)).to_yaml(ctx.protocol)


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
    return over, tuple(sorted(s.disabled))


def engine_key(engine: Engine) -> tuple:
    return (st.session_state[K_DATA].token, engine.stage)


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
    return memo(("run", engine_key(ctx.engine), scenario_key(s), o),
                lambda: analysis.run(ctx.engine, s, order=list(o) or None))


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


def _on_generate() -> None:
    for name in ("gen_n", "gen_seed", "gen_sites"):
        _sync(name)
    st.session_state[K + "want_generate"] = True


def _on_scenario() -> None:
    _sync("active")
    bump_epoch()


def _sidebar_data(bundle: Bundle) -> None:
    sb = st.sidebar
    sb.markdown("### Data")
    sb.radio("Cohort", list(SOURCES), format_func=SOURCES.get, key=_seed("source"), on_change=_on_source,
             label_visibility="collapsed")
    source = st.session_state[K_SOURCE]
    if source == "upload":
        up = sb.file_uploader("Cohort file (CSV, Parquet or Excel)", type=["csv", "txt", "tsv", "parquet", "xlsx",
                                                                           "xlsm"],
                              key=W + "upload", help="One row per patient, columns as in the data dictionary. "
                                                     "The file stays in this session; nothing is stored.")
        if up is not None and st.session_state.get(K_UPLOAD_SEEN) != up.file_id:
            st.session_state[K_UPLOAD_SEEN] = up.file_id
            _load_upload(up)
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


def _sidebar_analysis(ctx_protocol: Protocol) -> None:
    sb = st.sidebar
    sb.markdown("### Analysis")
    stages = sorted(ctx_protocol.stages)
    sb.radio("Protocol stage", stages, format_func=lambda s: f"Stage {s}", horizontal=True, key=_seed("stage"),
             on_change=_sync, args=("stage",), help=" · ".join(f"Stage {s}: {ctx_protocol.stages[s]}" for s in stages))
    names = [PROTOCOL, *scenarios()]
    st.session_state[K_ACTIVE] = active_name()
    sb.selectbox("Scenario", names, key=_seed("active"), on_change=_on_scenario,
                 format_func=lambda n: "Protocol (as written)" if n == PROTOCOL else n,
                 help="The protocol as written, or a named scenario with changed thresholds or criteria "
                      "(edit on the Criteria page).")
    s = active_scenario()
    if not s.is_protocol:
        changes = s.changes(ctx_protocol)
        sb.caption(f"{len(changes)} change(s): " + "; ".join(changes[:3]) + (" …" if len(changes) > 3 else ""))
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
    _sidebar_data(bundle)
    _sidebar_analysis(proto)
    _sidebar_suppression()
    apply_order_edits()
    bundle = st.session_state[K_DATA]
    stage = int(st.session_state[K_STAGE])
    engine = engine_for(stage)
    name = active_name()
    scen = active_scenario()
    scen = Scenario(scen.name, scen.description, scen.overrides, scen.disabled, ())
    mode, manual = order_state(name)
    order = resolved_order(engine, scen, mode, manual)
    k = int(st.session_state[K_THRESHOLD]) if st.session_state[K_SUPPRESS] else None
    ctx = Ctx(proto, bundle, engine, stage, scen, name, order, mode, st.session_state[K_POLICY], k)
    _messages()
    return ctx


def _messages() -> None:
    notice = st.session_state.pop(K_NOTICE, None)
    if notice:
        st.toast(notice, icon=":material/info:")
    err = st.session_state.get(K_LOAD_ERROR)
    if err:
        name, problems, total = err
        with st.container(border=True):
            st.error(f"**{name} could not be loaded** — {total:,} problem(s) found. Fix them in the file and "
                     "upload it again; the app keeps using the cohort it had before.", icon=":material/error:")
            st.dataframe(problems_frame(problems), hide_index=True, width="stretch")
            st.caption("Row numbers count data rows: row 1 is the first line under the header.")
            st.button("Dismiss", key=W + "dismiss_error", on_click=_dismiss_error)


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
    off_rules = sorted(r for r in ctx.scenario.disabled if "." in r)
    items += [f"sub-rule **{r}** (disabled)" for r in off_rules]
    if items:
        st.info("Left out of the funnel: " + "; ".join(items), icon=":material/info:")
