"""Custom rules: analyst-written criteria and rewritten rule expressions of the active scenario.

Text is validated against the loaded cohort (kn026.core.custom, kn026.rules.rulecheck) and screened once
*before* the scenario changes, so a rejected rule changes nothing; the rejection (with the
position of the offending token) is kept until the next attempt. Form fields use epoch keys,
so switching or resetting the scenario refills them.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import streamlit as st

from kn026.core import analysis, custom
from kn026.core.criteria import CriteriaError
from kn026.core.scenario import Scenario
from kn026.rules.rulecheck import RuleError
from ui.scenarios import (
    active_name,
    active_scenario,
    editable_scenario,
    order_state,
    replace_scenario,
    scenarios,
    stage_engine,
)
from ui.session import K_ORDERS, K_RULE_ERROR, PROTOCOL, Ctx, add_notice, extensions, memo, protocol, wkey

# --- custom rules
# Analyst-written criteria and rewritten rule expressions of the active scenario. Text is
# validated against the loaded cohort (kn026.core.custom, kn026.rules.rulecheck) and screened once
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


def _screen_once(candidate: Scenario) -> Scenario:
    """`candidate` validated against the protocol and screened on the loaded cohort
    (raises RuleError, CriteriaError, ValueError or a DuckDB error)."""
    candidate = candidate.validate(protocol())
    analysis.run(analysis.engine_for(stage_engine(), candidate, extensions(stage_engine())), candidate)
    return candidate


def _apply(candidate: Scenario, done: str) -> bool:
    """Store a checked candidate as the active scenario (a new one when the protocol is active)."""
    name = editable_scenario()
    replace_scenario(name, dataclasses.replace(candidate, name=name))
    st.session_state[K_RULE_ERROR] = None
    add_notice(done)
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
        custom.build_custom(rule, stage_engine().cohort, proto, proto.stages)  # positions point into `text`
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
    replace_scenario(name, dataclasses.replace(
        s, custom=tuple(c for c in s.custom if c.id != cid),
        overrides={r: v for r, v in s.overrides.items() if r != cid},
        disabled=frozenset(d for d in s.disabled if d != cid), order=tuple(c for c in s.order if c != cid)))
    mode, manual = order_state(name)
    st.session_state[K_ORDERS][name] = (mode, tuple(c for c in manual if c != cid))
    st.session_state[K_RULE_ERROR] = None
    add_notice(f"{cid} removed.")


def replace_choices(stage: int) -> list[str]:
    """Rule IDs that may be rewritten at `stage` (every protocol rule of the stage)."""
    return [r.id for r in protocol().rules if stage in r.stages]


def replace_rules(stage: int) -> dict:
    """Rule ID -> the protocol's own rule (its label as written, so the picker's option labels stay
    the same when a rewrite marks the scenario's copy "(rewritten)": a changed label would lose
    the selection in the browser)."""
    return {rid: protocol().rule(rid) for rid in replace_choices(stage)}


def replace_form(stage: int) -> str:
    """Seed the rewrite form (picked rule, its current expression); returns the picked rule."""
    ss = st.session_state
    pick, sql = rule_field("replace", "rule"), rule_field("replace", "sql")
    choices = replace_choices(stage)
    if ss.get(pick) not in choices:
        example = protocol().examples.replace
        ss[pick] = example[0] if example and example[0] in choices else choices[0]
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
    """Button callback: fill the rewrite form with the protocol file's rewrite example."""
    rid, sql = protocol().examples.replace
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
        rewritten = custom.replace_rule(rule, text, stage_engine().cohort, proto)  # positions point into `text`
        as_written = {s: custom.replace_rule(rule, rule.sql[s], stage_engine().cohort, proto).sql[s]
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
    replace_scenario(name, dataclasses.replace(s, replace={r: v for r, v in s.replace.items() if r != rid}))
    if st.session_state.get(rule_field("replace", "rule")) == rid:
        st.session_state.pop(rule_field("replace", "sql"), None)  # prefill the protocol's text again
    st.session_state[K_RULE_ERROR] = None
    add_notice(f"{rid} back to the protocol's expression.")


def rule_columns(ctx: Ctx) -> pd.DataFrame:
    """The names a rule may use on the loaded cohort (kind, unit, meaning), for the help."""
    return memo(("rule_columns", ctx.data.token),
                lambda: pd.DataFrame(custom.column_help(ctx.data.cohort, protocol())))
