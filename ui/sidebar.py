"""The shared sidebar (data source, stage, scenario, unknown handling, suppression) and the
messages drawn above every page. `draw` runs once per run, from the shell before the page.
"""

from __future__ import annotations

import streamlit as st

from kn026.core import protocol_files
from kn026.core.criteria import Protocol
from ui.badcells import bad_cells_panel, clear_edits, has_choices, upload_edits
from ui.criteria import apply_order_edits
from ui.scenarios import POLICY_LABELS, active_name, active_scenario, scenarios
from ui.session import (
    K_ACTIVE,
    K_DATA,
    K_GEN_N,
    K_GEN_SEED,
    K_GEN_SITES,
    K_LOAD_ERROR,
    K_NOTICE,
    K_PROTOCOL,
    K_PROTOCOL_CHOICE,
    K_PROTOCOL_ERROR,
    K_PROTOCOL_SEEN,
    K_PROTOCOL_UPLOAD,
    K_SOURCE,
    K_SUPPRESS,
    K_UPLOAD_SEEN,
    PROTOCOL,
    UPLOADED,
    Bundle,
    K,
    W,
    bump_epoch,
    defaults,
    persist,
    persisted_widget,
    protocol,
    shipped_protocols,
    tab_key,
    upload_protocol,
    use_protocol,
)
from ui.sources import (
    SOURCES,
    WIZARD_SOURCES,
    data,
    data_badge,
    generate,
    import_omop,
    load_builtin,
    load_upload,
    problems_frame,
    request_upload_reload,
    upload_limit_mb,
)
from ui.wizard import load_mapped

# --------------------------------------------------------------------------- sidebar


def _on_source() -> None:
    persist("source")
    if st.session_state[K_SOURCE] == "builtin" and st.session_state[K_DATA].kind != "builtin":
        st.session_state[K + "want_builtin"] = True
    if st.session_state[K_SOURCE] in WIZARD_SOURCES:
        open_load_data()


def open_load_data() -> None:
    """Go to the Cohort page's "Load data" tab (on this run, from `_data`)."""
    st.session_state[K + "goto_load"] = True


def _on_generate() -> None:
    for name in ("gen_n", "gen_seed", "gen_sites"):
        persist(name)
    st.session_state[K + "want_generate"] = True


def _on_scenario() -> None:
    persist("active")
    bump_epoch()


def draw(title: str) -> None:
    """The shared sidebar of page `title`: protocol, data source, analysis settings, suppression."""
    defaults()
    _protocol()
    bundle = data()
    apply_order_edits()  # before anything is drawn: the scenario summary below shows this run's edits
    proto = protocol()
    _data(bundle, title)
    _analysis(proto)
    _suppression()


def _on_protocol() -> None:
    persist("protocol_choice")
    ss = st.session_state
    ss[K_PROTOCOL_ERROR] = None
    choice = ss[K_PROTOCOL_CHOICE]
    if choice != UPLOADED:
        use_protocol(choice)
    elif ss.get(K_PROTOCOL_UPLOAD):
        use_protocol(UPLOADED)  # the file accepted earlier in this session (the caption names it)


def _protocol() -> None:
    """The protocol picker: a criteria file shipped in kn026/protocols, or an uploaded one
    (every SQL expression allow-listed first, kept in the session only)."""
    sb, ss = st.sidebar, st.session_state
    sb.markdown("### Protocol")
    files = {f.name: f for f in shipped_protocols()}

    def label(name: str) -> str:
        f = files.get(name)
        return f"{f.protocol} · {f.title}" if f else "Upload a criteria file (YAML)…"

    sb.selectbox("Criteria file", [*files, UPLOADED], format_func=label, key=persisted_widget("protocol_choice"),
                 on_change=_on_protocol, label_visibility="collapsed",
                 help="The eligibility criteria every page screens with: a criteria file shipped with the app, "
                      "or your own (same format, see docs/engine.md). Changing it re-screens the cohort.")
    if ss[K_PROTOCOL_CHOICE] == UPLOADED:
        limit = protocol_files.MAX_UPLOAD_BYTES
        up = sb.file_uploader("Criteria file (YAML)", type=["yaml", "yml"], key=W + "protocol_file",
                              max_upload_size=max(1, limit // 1_000_000),
                              help="Every SQL expression in it goes through the same allow-list as an analyst's "
                                   "rule before it is used. The file is read in memory; nothing is written to disk.")
        if up is not None and ss.get(K_PROTOCOL_SEEN) != up.file_id:
            ss[K_PROTOCOL_SEEN] = up.file_id
            refusal = upload_protocol(up.name, up.getvalue(), up.file_id)
            ss[K_PROTOCOL_ERROR] = (up.name, refusal) if refusal else None
            if refusal is None:
                p = protocol()
                ss[K_NOTICE] = f"Screening with {p.name} from {up.name}."
    err = ss.get(K_PROTOCOL_ERROR)
    proto = protocol()
    if err:
        sb.error(f"**{err[0]} was not accepted.** {err[1].rstrip('.')}. The app keeps screening with {proto.name}.",
                 icon=":material/error:")
    if ss[K_PROTOCOL] == UPLOADED:
        sb.caption(f"**In use:** {proto.name} · {proto.title} (uploaded: {ss[K_PROTOCOL_UPLOAD]['name']}; "
                   "its rules run as untrusted)")
    elif ss[K_PROTOCOL_CHOICE] == UPLOADED:
        sb.caption(f"**In use:** {proto.name} until a criteria file is accepted.")


def _data(bundle: Bundle, title: str = "") -> None:
    sb = st.sidebar
    sb.markdown("### Data")
    sb.radio("Cohort", list(SOURCES), format_func=SOURCES.get, key=persisted_widget("source"), on_change=_on_source,
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
            load_upload(up)
        elif up is not None and st.session_state.pop(K + "want_upload", False):
            with st.container(border=True):  # main area, above the page: progress stays in view
                load_upload(up, upload_edits())
    elif source in WIZARD_SOURCES:
        what = "OMOP zip" if source == "omop" else "file and its mapping"
        sb.caption(f"Choose the {what} on the **Cohort** page, tab **Load data**.")
        sb.button("Open Load data", icon=":material/upload_file:", key=W + "open_load", width="stretch",
                  on_click=open_load_data)
    if st.session_state.pop(K + "want_omop", False):
        with st.container(border=True):  # main area, above the page: progress stays in view
            import_omop()
    if st.session_state.pop(K + "want_mapped", False):
        with st.container(border=True):
            load_mapped()
    elif source == "generate":
        with sb.form(W + "generate_form", border=False):
            st.number_input("Patients", min_value=100, max_value=5_000_000, step=10_000, key=persisted_widget("gen_n"))
            c1, c2 = st.columns(2)
            c1.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key=persisted_widget("gen_seed"))
            c2.number_input("Sites", min_value=1, max_value=500, step=1, key=persisted_widget("gen_sites"))
            st.form_submit_button("Generate", type="primary", width="stretch", on_click=_on_generate)
    if st.session_state.pop(K + "want_builtin", False):
        with st.spinner("Loading the built-in synthetic cohort…"):
            load_builtin()
    if st.session_state.pop(K + "want_generate", False):
        ss = st.session_state
        with st.container(border=True):  # main area, above the page: progress stays in view
            generate(int(ss[K_GEN_N]), int(ss[K_GEN_SEED]), int(ss[K_GEN_SITES]))
    bundle = st.session_state[K_DATA]
    sb.caption(f"**In use:** {bundle.label}")
    kind, text = data_badge()
    if kind == "ok":  # the green tick only when the cohort can assess the protocol
        sb.caption(f":green[:material/check_circle:] {text}")
    elif kind == "little":
        sb.warning(f"**Little can be assessed.** {text}", icon=":material/report:")
    else:
        sb.caption(f":material/info: {text}")


def _analysis(ctx_protocol: Protocol) -> None:
    sb = st.sidebar
    sb.markdown("### Analysis")
    stages = sorted(ctx_protocol.stages)
    sb.radio("Protocol stage", stages, format_func=ctx_protocol.stage_name, key=persisted_widget("stage"),
             on_change=persist, args=("stage",),
             help=f"The stages of {ctx_protocol.name}, named as in its criteria file; criteria and thresholds "
                  "can differ between stages.")
    names = [PROTOCOL, *scenarios()]
    st.session_state[K_ACTIVE] = active_name()
    sb.selectbox("Scenario", names, key=persisted_widget("active"), on_change=_on_scenario,
                 format_func=lambda n: "Protocol (as written)" if n == PROTOCOL else n,
                 help="The protocol as written, or a named scenario with changed thresholds or criteria "
                      "(edit on the Criteria page).")
    s = active_scenario()
    if not s.is_protocol:
        changes = s.changes(ctx_protocol)
        short = [c if len(c) <= 70 else c[:69] + "…" for c in changes[:3]]  # rewritten rules carry their SQL
        sb.caption(f"{len(changes)} change(s): " + "; ".join(short) + (" …" if len(changes) > 3 else ""))
    sb.radio("Unknown values", list(POLICY_LABELS), format_func=POLICY_LABELS.get, horizontal=True,
             key=persisted_widget("policy"), on_change=persist, args=("policy",),
             help="Strict: a patient with an unknown value on a criterion counts as failing it. "
                  "Optimistic: counts as passing. Both: strict count with the optimistic bound.")


def _suppression() -> None:
    sb = st.sidebar
    with sb.expander("Small-cell suppression", expanded=bool(st.session_state[K_SUPPRESS])):
        st.toggle("Hide small counts", key=persisted_widget("suppress"), on_change=persist, args=("suppress",),
                  help="Counts below the threshold, and complementary counts that would give them away by "
                       "subtraction, are hidden in tables, charts and exports. On by default for uploads.")
        st.number_input("Threshold (hide counts below)", min_value=2, max_value=50, step=1,
                        key=persisted_widget("threshold"), on_change=persist, args=("threshold",),
                        disabled=not st.session_state[K_SUPPRESS])


def messages() -> None:
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
