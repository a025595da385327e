"""Navigation and the frame of every run: app.py registers the pages, draws the sidebar, runs the page.
"""

from __future__ import annotations

import dataclasses
import time

import streamlit as st

from ui import sidebar
from ui.scenarios import active_name, active_scenario, order_state, resolved_order, screening
from ui.session import (
    APP_TITLE,
    K_DATA,
    K_LAST_RUN,
    K_POLICY,
    K_RUN_START,
    K_STAGE,
    K_SUPPRESS,
    K_THRESHOLD,
    K_TIMING,
    SHELL,
    Ctx,
    K,
    engine_for,
)
from ui.sidebar import messages

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


def run() -> None:
    """The whole of app.py: register the pages, draw the sidebar once, run the chosen page."""
    page = navigation()
    st.session_state[SHELL] = True  # the navigation is registered for this run
    st.session_state[K_RUN_START] = time.perf_counter()
    _configure(page.title, page.icon)
    sidebar.draw(page.title)
    page.run()


def _configure(title: str, icon: str | None) -> None:
    st.set_page_config(page_title=f"{title} · {APP_TITLE}", page_icon=icon or ":material/filter_alt:",
                       layout="wide", initial_sidebar_state="expanded")


def page_start(title: str, icon: str | None = None) -> Ctx:
    """Shared start of every page (after app.py drew the sidebar): apply the order editor's
    edits, resolve the session's engine, scenario and order, show messages; returns the Ctx."""
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
        _configure(title, icon)  # still without app.py: this page draws the sidebar itself
        sidebar.draw(title)
    else:
        st.session_state.pop(K + "rerouting", None)
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
    messages()
    if rule_problems:
        st.warning("Left out because this cohort cannot screen them (the scenario keeps them): "
                   + "; ".join(rule_problems), icon=":material/warning:")
    return ctx


def page_end() -> None:
    """Last line of every page: record (and with ?timing=1 show) the server time of this run."""
    start = st.session_state.pop(K_RUN_START, None)
    if start is None:
        return
    seconds = time.perf_counter() - start
    st.session_state[K_LAST_RUN] = seconds
    if st.session_state.get(K_TIMING):
        st.sidebar.caption(f"Server time: {seconds * 1000:.0f} ms", help="Time to run this page's script.")
