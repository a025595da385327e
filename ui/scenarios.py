"""Scenarios: the active one, edits to thresholds and switches, uploads, and the funnel order.
"""

from __future__ import annotations

import dataclasses

import streamlit as st

from kn026.core import analysis, custom
from kn026.core.criteria import CriteriaError, to_decimal
from kn026.core.engine import Engine
from kn026.core.scenario import Scenario, parse_scenario
from kn026.rules.rulecheck import RuleError
from ui.session import (
    K_ACTIVE,
    K_NOTICE,
    K_ORDERS,
    K_SCENARIOS,
    K_STAGE,
    PROTOCOL,
    Ctx,
    K,
    bump_epoch,
    engine_for,
    engine_key,
    extensions,
    memo,
    protocol,
    scenario_key,
)

ORDER_MODES = ("protocol", "restrictive", "manual")
ORDER_LABELS = {"protocol": "Protocol order", "restrictive": "Most restrictive first", "manual": "By hand"}
POLICY_LABELS = {"both": "Both", "strict": "Strict", "optimistic": "Optimistic"}


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


def replace_scenario(name: str, scenario: Scenario) -> None:
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
    replace_scenario(name, dataclasses.replace(s, overrides=over))


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
    replace_scenario(name, dataclasses.replace(s, disabled=frozenset(disabled)))


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
    replace_scenario(name, dataclasses.replace(s, description=str(st.session_state[key])))


def reset_scenario() -> None:
    """Back to the protocol's thresholds and criteria (keeps the scenario's name)."""
    name = active_name()
    if name == PROTOCOL:
        return
    s = scenarios()[name]
    replace_scenario(name, Scenario(s.name, s.description))
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
    from kn026.ingest import sniff as upload

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
    from kn026.ingest import sniff as upload

    return max(1, upload.MAX_TEXT_BYTES // 2**20)


def scenario_upload_error() -> tuple[str, str] | None:
    return st.session_state.get(K + "scenario_error")


def scenario_yaml(ctx: Ctx) -> str:
    s = active_scenario()  # as stored: with custom rules this cohort cannot screen, if any
    order = ctx.order if ctx.order_mode != "protocol" else ()
    name = s.name if not ctx.is_protocol else PROTOCOL
    return dataclasses.replace(s, name=name, order=tuple(order)).to_yaml(ctx.protocol)


def stage_engine() -> Engine:
    return engine_for(int(st.session_state[K_STAGE]))


def rules_problem(s: Scenario) -> str | None:
    """Why `s`'s custom or rewritten rules cannot run on the loaded cohort (None: they can)."""
    if not s.custom and not s.replace:
        return None
    try:
        analysis.engine_for(stage_engine(), s, extensions(stage_engine()))
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
        return analysis.engine_for(base, scen, extensions(base)), scen, []
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
        return analysis.engine_for(base, kept, extensions(base)), kept, problems
    except (RuleError, CriteriaError, ValueError) as err:
        return base, without(ids, (), {}), [*problems, str(err)]


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


def resolved_order(engine: Engine, scenario: Scenario, mode: str, manual: tuple[str, ...]) -> tuple[str, ...]:
    ids = [c.id for c in engine.protocol.criteria if engine.stage in c.stages]
    if mode == "restrictive":
        return tuple(memo(("restrictive", engine_key(engine), scenario_key(scenario)),
                          lambda: analysis.restrictive_order(engine, scenario)))
    if mode == "manual" and manual:
        known = [c for c in manual if c in ids]
        return tuple(known + [c for c in ids if c not in known])
    return ()
