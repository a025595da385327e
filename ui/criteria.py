"""State of the Criteria page: widget keys and the criteria order editor.
"""

from __future__ import annotations

from decimal import Decimal

import streamlit as st

from ui.scenarios import move_criterion, set_enabled_value, set_manual_order
from ui.session import K_EDITOR, Ctx, K, W, epoch, wkey


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


def param_value(ctx: Ctx, rule_id: str, param: str) -> Decimal:
    rule = ctx.protocol.rule(rule_id)
    return Decimal(ctx.scenario.overrides.get(rule_id, {}).get(param, rule.params[param].default))


SCENARIO_UPLOAD = W + "scenario_upload"
RULE_EXAMPLE_CUSTOM = W + "rule_example_custom"
RULE_ADD_FORM = W + "rule_add_form"
RULE_EXAMPLE_REPLACE = W + "rule_example_replace"
RULE_REPLACE_FORM = W + "rule_replace_form"
CRITERIA_FILTER = W + "criteria_filter"


def param_key(rule_id: str, param: str) -> str:
    return wkey("param", rule_id, param)


def apply_key(item_id: str) -> str:
    """The switch of a criterion or sub-rule."""
    return wkey("apply", item_id)


def scenario_name_key(name: str) -> str:
    return wkey("scenario_name", name)


def scenario_description_key(name: str) -> str:
    return wkey("scenario_description", name)


def order_key(name: str, mode: str) -> str:
    """The order control's key; with the mode in it, a hand reorder redraws the control ("By hand")."""
    return wkey("order_mode_c", name, mode)


def rule_button_key(action: str, item_id: str) -> str:
    """Edit / Remove / Restore button of a custom criterion or rewritten rule."""
    return W + f"rule_{action}_{item_id}"

