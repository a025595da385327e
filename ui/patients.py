"""State of the Patients page: filter conditions, the selected patient, widget keys, the site list.
"""

from __future__ import annotations

import streamlit as st

from kn026.report import patients
from ui.session import K_CONDITIONS, K_PATIENT, K, W, engine_key, memo, wkey

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
    """Widget callback: an example filter of the protocol file ("fails only X") was picked."""
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


COND_STATUS = W + "cond_status"
COND_TARGET = W + "cond_target"
EXAMPLES = W + "examples"
CLEAR_CONDITIONS = W + "clear_conds"
ELIGIBLE_FILTER = W + "eligible_filter"
SITE_FILTER = W + "site_filter"
PATIENT_ID_INPUT = W + "patient_id_input"
DETAIL_FILTER = W + "detail_filter"


def remove_condition_key(index: int, cond) -> str:
    return W + f"remove_cond_{index}_{cond}"


def patient_list_key(*parts) -> str:
    return wkey("patient_list", *parts)


def site_list(ctx) -> list:
    """The cohort's site IDs for the site filter (once per loaded cohort and stage)."""
    return memo(("site_list", engine_key(ctx.engine)), lambda: patients.site_ids(ctx.engine))

