"""Session state basics: the state keys, shared caches, the loaded cohort's engines and the memo.

Every session-state key is spelled here (pages and the other ui modules use the
constants and key helpers); every memo key is built from `engine_key` / `scenario_key`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from kn026.base.table import connect
from kn026.core import analysis, protocol_files
from kn026.core.criteria import DEFAULT_PROTOCOL, CriteriaError, Protocol, format_number
from kn026.core.engine import Engine, EvaluatedPass
from kn026.core.scenario import Scenario, parse_scenario
from kn026.ingest.cohort import adopt, load_cohort
from kn026.report import suppression

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
BUILTIN = DATA / "builtin_cohort.parquet"
BUILTIN_N, BUILTIN_SEED = 20_000, 26
APP_TITLE = "KN026 Feasibility Explorer"
PROTOCOL = "Protocol"  # name of the unchanged protocol in the scenario list
DEFAULT_FILE = DEFAULT_PROTOCOL.stem  # the criteria file a session starts with (kn026/protocols)
UPLOADED = "upload"  # the picker's choice "an uploaded criteria file"
MEMO_SIZE = 24

# ---- session-state keys (the only place they are spelled out) -----------------------------
K = "kn026."
W = "kn026.w."  # widget keys
K_DATA = K + "data"  # Bundle of the loaded cohort
K_SOURCE = K + "source"
K_PROTOCOL = K + "protocol"  # the criteria file in use: a shipped file's name, or UPLOADED
K_PROTOCOL_CHOICE = K + "protocol_choice"  # the picker's value (UPLOADED before a file is accepted)
K_PROTOCOL_UPLOAD = K + "protocol_upload"  # the accepted upload: {"id", "name", "digest", "protocol"}
K_PROTOCOL_SEEN = K + "protocol_seen"  # file_id of the last criteria file checked
K_PROTOCOL_ERROR = K + "protocol_error"  # (file name, message) of a refused criteria file
K_SHELF = K + "shelf"  # {protocol key: scenario state} of the protocols switched away from
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
K_UPLOAD_EDITS = K + "upload_edits"  # {"id": file_id, "edits": [kn026.ingest.edits.Edit]}: the upload's choices
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
def shipped_protocols() -> list[protocol_files.Shipped]:
    """The criteria files in kn026/protocols (the picker's list), the default first."""
    return protocol_files.shipped()


@st.cache_resource(show_spinner=False)
def shipped_protocol(name: str) -> Protocol:
    return protocol_files.load(name)


def protocol() -> Protocol:
    """The session's protocol: a shipped criteria file, or the accepted upload (sidebar picker)."""
    ss = st.session_state
    name = ss.get(K_PROTOCOL, DEFAULT_FILE)
    if name == UPLOADED and ss.get(K_PROTOCOL_UPLOAD):
        return ss[K_PROTOCOL_UPLOAD]["protocol"]
    return shipped_protocol(name if name != UPLOADED else DEFAULT_FILE)


def protocol_key() -> str:
    """Identity of the session's protocol: "file:<name>", or "upload:<sha256 of the file>"."""
    ss = st.session_state
    name = ss.get(K_PROTOCOL, DEFAULT_FILE)
    if name == UPLOADED and ss.get(K_PROTOCOL_UPLOAD):
        return "upload:" + ss[K_PROTOCOL_UPLOAD]["digest"]
    return "file:" + (name if name != UPLOADED else DEFAULT_FILE)


@st.cache_resource(show_spinner="Preparing the built-in synthetic cohort…")
def builtin_table():
    """The built-in cohort as a read-only Arrow table shared by every session."""
    if BUILTIN.is_file():
        import pyarrow.parquet as pq

        return pq.read_table(BUILTIN)
    import pyarrow as pa

    from kn026.ingest import synth

    return pa.Table.from_pandas(synth.generate(BUILTIN_N, BUILTIN_SEED), preserve_index=False)


@st.cache_resource(show_spinner=False)
def _scenario_files() -> tuple[tuple[str, str], ...]:
    out = []
    for path in sorted(DATA.glob("scenario_*.yaml")):
        try:
            out.append((path.name, path.read_text(encoding="utf-8")))
        except OSError:
            continue
    return tuple(out)


def example_scenarios(proto: Protocol | None = None) -> dict[str, Scenario]:
    """The example scenarios in data/ that fit `proto` (default: the session's); files written
    for another protocol are left out."""
    proto = proto or protocol()
    out = {}
    for name, text in _scenario_files():
        try:
            s = parse_scenario(text, proto, source=name)
        except CriteriaError:
            continue
        out[s.name] = s
    return out


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
    extended: dict = dataclasses.field(default_factory=dict)  # stage -> analysis.Extensions


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


def defaults() -> None:
    ss = st.session_state
    ss.setdefault(K_PROTOCOL, DEFAULT_FILE)
    ss.setdefault(K_PROTOCOL_CHOICE, ss[K_PROTOCOL])
    ss.setdefault(K_SHELF, {})
    ss.setdefault(K_SOURCE, "builtin")
    ss.setdefault(K_STAGE, min(protocol().stages))
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


def persisted_widget(name: str) -> str:
    """Seed widget `kn026.w.<name>` from persistent `kn026.<name>`; return the widget key."""
    st.session_state[W + name] = st.session_state[K + name]
    return W + name


def persist(name: str) -> None:
    st.session_state[K + name] = st.session_state[W + name]


def page_input(scope: str, name: str, default) -> dict:
    """Keyword arguments (key, on_change, args) for input `name` of page `scope` ("rec", "net"):
    the widget `kn026.w.<scope>.<name>` is seeded from the persistent `kn026.<scope>.<name>`
    (`default` the first time) and writes back on change, so the input survives page switches."""
    ss = st.session_state
    ss.setdefault(K + scope + "." + name, default)
    ss[W + scope + "." + name] = ss[K + scope + "." + name]
    return {"key": W + scope + "." + name, "on_change": _persist_input, "args": (scope, name)}


def _persist_input(scope: str, name: str) -> None:
    st.session_state[K + scope + "." + name] = st.session_state[W + scope + "." + name]


def page_value(scope: str, name: str, default=None):
    """The persistent value of input `name` of page `scope` (see `page_input`)."""
    return st.session_state.get(K + scope + "." + name, default)


def bump_epoch() -> None:
    st.session_state[K_EPOCH] += 1


def epoch() -> int:
    return st.session_state[K_EPOCH]


def wkey(*parts) -> str:
    """A page widget key tied to the current scenario epoch."""
    return W + ".".join(str(p) for p in parts) + f"@{epoch()}"


# --------------------------------------------------------------------------- protocol choice

# What depends on the protocol: scenarios (thresholds, switched-off criteria, analyst rules and
# rewrites name its rules), their funnel orders, the active scenario, the stage, the Patients
# filters and chosen patient, the criteria editor's state and the Recruitment target (from the
# file's `enrollment`). Scenarios, orders and the active scenario are shelved per protocol and
# come back when the analyst switches back; the rest is reset (docs/dashboard.md "Protocol").
_SHELVED = (K_SCENARIOS, K_ORDERS, K_ACTIVE)


def use_protocol(name: str, upload: dict | None = None) -> None:
    """Screen with criteria file `name` (a shipped file's name, or UPLOADED for the accepted
    upload, replaced by `upload` when given) from now on: shelve the old protocol's scenarios,
    reset what depends on it and re-screen the loaded cohort (engines rebuilt by `engine_for`)."""
    ss = st.session_state
    old = protocol_key()
    if upload is not None:
        ss[K_PROTOCOL_UPLOAD] = upload
    ss[K_PROTOCOL] = name
    new = protocol_key()
    if new == old:
        return
    ss[K_SHELF][old] = {k: ss[k] for k in _SHELVED if k in ss}
    shelf = ss[K_SHELF].pop(new, None)
    if shelf is not None:
        ss.update(shelf)
    else:
        ss[K_SCENARIOS], ss[K_ORDERS], ss[K_ACTIVE] = dict(example_scenarios()), {}, PROTOCOL
    stages = protocol().stages
    if ss.get(K_STAGE) not in stages:
        ss[K_STAGE] = min(stages)
    ss[K_CONDITIONS] = []
    for key in (K_PATIENT, K_RULE_ERROR, K + "rec.target"):
        ss.pop(key, None)
    bundle = ss.get(K_DATA)
    if bundle is not None:  # the same cohort, screened afresh: new engines, new memo keys
        bundle.engines, bundle.extended, bundle.token = {}, {}, new_token()
    ss[K_MEMO] = OrderedDict()
    ss[K_EDITOR] = ss.get(K_EDITOR, 0) + 1
    bump_epoch()


def upload_protocol(name: str, data: bytes, file_id: str) -> str | None:
    """Check an uploaded criteria file (kn026.core.protocol_files.from_upload: every SQL
    expression through the analyst allow-list) and use it; None, or the refusal's message
    (the protocol in use stays). The file lives in the session only."""
    try:
        proto = protocol_files.from_upload(data, name)
    except CriteriaError as err:
        return str(err)
    digest = hashlib.sha256(data).hexdigest()
    use_protocol(UPLOADED, {"id": file_id, "name": name, "digest": digest, "protocol": proto})
    return None


# --------------------------------------------------------------------------- data loading


def new_token() -> int:
    st.session_state[K + "tokens"] = st.session_state.get(K + "tokens", 0) + 1
    return st.session_state[K + "tokens"]


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


@st.cache_resource(show_spinner=False)
def builtin_pass(stage: int) -> EvaluatedPass:
    """The built-in cohort's evaluated pass for `stage`, once per process (read-only arrays).

    Every session still screens in its own connection (its own copy of the rows, locked
    down); only the masks of the full pass are shared, so a new session's first funnel
    costs no evaluation. Made on a connection of its own, closed afterwards.
    """
    table, present, extra = builtin_cohort()
    con = connect()
    try:
        default = shipped_protocol(DEFAULT_FILE)  # the same object every session's default protocol() is
        eng = Engine(adopt(con, table, present, extra, source=str(BUILTIN)), default, stage)
        return eng.evaluated_pass()
    finally:
        con.close()


def engine_for(stage: int) -> Engine:
    bundle = st.session_state[K_DATA]
    eng = bundle.engines.get(stage)
    if eng is None:
        proto = protocol()  # an uploaded one runs as untrusted: arithmetic hardened (kn026.rules)
        eng = Engine(bundle.cohort, proto, stage, untrusted=protocol_files.untrusted_rules(proto))
        shared = bundle.kind == "builtin" and proto is shipped_protocol(DEFAULT_FILE)
        done = builtin_pass(stage) if shared else None
        if done is not None and done.protocol is eng.protocol and done.present == bundle.cohort.present:
            eng.take_pass(done)  # the default protocol on the built-in cohort: masks shared per server
        elif bundle.cohort.n >= 200_000:
            with st.spinner(f"Evaluating every criterion for {bundle.cohort.n:,} patients (stage {stage})…"):
                eng.evaluate()
        else:
            eng.evaluate()
        bundle.engines[stage] = eng
    return eng


def extensions(base: Engine) -> analysis.Extensions:
    """The loaded cohort's engines extended with scenarios' analyst rules, per stage."""
    return st.session_state[K_DATA].extended.setdefault(base.stage, analysis.Extensions())


def add_notice(text: str) -> None:
    prev = st.session_state.get(K_NOTICE)
    st.session_state[K_NOTICE] = f"{prev} {text}" if prev else text


# --------------------------------------------------------------------------- memo


def scenario_key(s: Scenario) -> tuple:
    over = tuple(sorted((rid, tuple(sorted((p, format_number(v)) for p, v in vals.items())))
                        for rid, vals in s.overrides.items()))
    rules = (tuple(repr(c.to_doc()) for c in s.custom), tuple(sorted(s.replace.items())))
    return over, tuple(sorted(s.disabled)), rules


def engine_key(engine: Engine) -> tuple:
    # an engine extended with a scenario's custom / rewritten rules has more rules than the
    # stage's engine (analysis.engine_for gives it the rules' key)
    return (st.session_state[K_DATA].token, engine.stage, engine.rules_key)


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


def tabs(name: str, labels_: list[str]):
    """Tabs whose content runs only when selected (`tab.open`); the choice is kept while on the page."""
    return st.tabs(labels_, key=W + "tabs." + name, on_change="rerun")


def tab_key(name: str) -> str:
    return W + "tabs." + name


def expander_key(item: str) -> str:
    return W + "expander." + item
