"""Criteria: protocol text, readable rules and thresholds; enable / disable; order; scenarios."""

import math
import re
from decimal import Decimal

import pandas as pd
import streamlit as st

import ui_state as ui
from kn026 import patients
from kn026.criteria import format_number
from kn026.scenario import Scenario

INTEGRAL_UNITS = {"years", "lines", "lesions", "ECOG", "NYHA class", "CTCAE grade", "days", "half-lives"}
PARAM_NAMES = {
    "min": "Minimum", "max": "Maximum", "min_age": "Minimum age", "max_ecog": "Highest ECOG",
    "min_months": "Minimum", "max_x_uln": "Maximum × ULN", "max_x_uln_liver_mets": "Maximum × ULN, liver mets",
    "default_uln": "Default ULN", "inr_default_uln": "Default INR ULN", "pt_default_uln": "Default PT ULN",
    "window_days": "Window", "min_prior_lines": "Minimum prior lines", "stage2_prior_lines": "Prior lines",
    "min_lesions": "Minimum lesions", "max_class": "Highest NYHA class", "washout_min_days": "Washout at least",
    "washout_max_days": "Washout at most", "washout_half_lives": "Half-lives", "tcm_days": "Chinese medicine window",
    "max_dose": "Maximum dose", "max_grade": "Highest grade", "excluded_grade": "Excluded from grade",
    "max_sbp": "Maximum systolic", "max_dbp": "Maximum diastolic", "drop_with_low_nadir": "Drop (with low nadir)",
    "low_nadir": "Low nadir below", "drop_any": "Drop (any nadir)", "max_male": "Maximum, male",
    "max_female": "Maximum, female",
}
_MD = re.compile(r"([\\`*_{}\[\]<>()#+|!$~])")


def md_escape(text: str) -> str:
    return _MD.sub(r"\\\1", text)


def decimals(value: Decimal) -> int:
    exp = value.normalize().as_tuple().exponent
    return max(0, -exp) if isinstance(exp, int) else 0


def number_widget(ctx, rule, pname: str, column) -> None:
    param = rule.params[pname]
    current = ui.param_value(ctx, rule.id, pname)
    key = ui.wkey("param", rule.id, pname)
    unit = param.unit
    integral = (unit in INTEGRAL_UNITS and all(d is None or d == d.to_integral_value()
                                               for d in (param.default, param.low, param.high)))
    name = PARAM_NAMES.get(pname, pname.replace("_", " ").capitalize())
    label = f"{name} ({unit})" if unit and unit not in name else name
    allowed = f"allowed {format_number(param.low)}–{format_number(param.high)}" if param.low is not None else ""
    help_text = f"Protocol: {format_number(param.default)} {unit}. {allowed}".strip()
    if integral:
        column.number_input(label, min_value=int(param.low) if param.low is not None else None,
                            max_value=int(param.high) if param.high is not None else None,
                            value=int(current), step=1, key=key, on_change=ui.set_param,
                            args=(rule.id, pname, key), help=help_text)
    else:
        if unit in ("× ULN", "ratio") or abs(param.default) < 10:
            step = 0.1 if decimals(param.default) <= 1 else 10.0 ** -decimals(param.default)
        else:
            step = 1.0
        places = max(decimals(current), decimals(param.default), -int(math.floor(math.log10(step))))
        column.number_input(label, min_value=float(param.low) if param.low is not None else None,
                            max_value=float(param.high) if param.high is not None else None,
                            value=float(current), step=step, format=f"%.{places}f", key=key,
                            on_change=ui.set_param, args=(rule.id, pname, key), help=help_text)
    if current != param.default:
        column.caption(f":violet[changed] · protocol {format_number(param.default)}")


ctx = ui.page_start("Criteria", ":material/rule:")
proto, stage = ctx.protocol, ctx.stage
labels = ui.labels(ctx)
criteria = [c for c in proto.criteria if stage in c.stages]
all_ids = [c.id for c in criteria]
shown_ids = list(ctx.order) or all_ids
res = ui.result(ctx)
everything = Scenario(overrides=ctx.scenario.overrides)
stats_all = ui.result(ctx, everything, ()).stats.set_index("criterion")
_, coverage = ui.cohort_profile(ctx)
leaf = coverage.set_index("rule")

st.title("Criteria")
ui.context_line(ctx)
ui.metric_cards(ctx)

# ---------------------------------------------------------------- scenario
with st.container(border=True):
    st.subheader("Scenario")
    if ctx.is_protocol:
        st.markdown("You are looking at **the protocol as written**. Change a threshold, switch a criterion off "
                    "or upload a scenario file: the first change starts a new named scenario, and the protocol "
                    "stays available for comparison.")
    else:
        c1, c2 = st.columns([2, 3])
        key = ui.wkey("scenario_name", ctx.scenario_name)
        c1.text_input("Name", value=ctx.scenario_name, key=key, on_change=ui.rename_scenario, args=(key,),
                      max_chars=80)
        dkey = ui.wkey("scenario_description", ctx.scenario_name)
        c2.text_input("Description", value=ctx.scenario.description, key=dkey, on_change=ui.describe_scenario,
                      args=(dkey,), placeholder="Why this scenario (for example: another registry version)")
        changes = ctx.scenario.changes(proto)
        if changes:
            st.markdown("**Changes from the protocol:** " + " · ".join(md_escape(c) for c in changes))
        else:
            st.markdown("**No changes from the protocol yet.**")
    b1, b2, b3, b4 = st.columns([1.2, 1, 1, 2.4], vertical_alignment="bottom")
    slug = re.sub(r"[^A-Za-z0-9]+", "_", ctx.scenario_name).strip("_").lower() or "scenario"
    b1.download_button("Download YAML", ui.scenario_yaml(ctx), file_name=f"{slug}.yaml",
                       mime="application/x-yaml", icon=":material/download:", width="stretch",
                       on_click="ignore")
    b2.button("Reset to protocol", on_click=ui.reset_scenario, disabled=ctx.is_protocol, width="stretch",
              icon=":material/restart_alt:", help="Undo every change of this scenario (keeps its name).")
    b3.button("Delete scenario", on_click=ui.delete_scenario, disabled=ctx.is_protocol, width="stretch",
              icon=":material/delete:")
    with b4:
        ukey = ui.W + "scenario_upload"
        st.file_uploader("Upload a scenario (YAML)", type=["yaml", "yml"], key=ukey, label_visibility="collapsed",
                         on_change=ui.on_scenario_upload, args=(ukey,),
                         help="A scenario file downloaded from here (or written by hand): name, changed "
                              "thresholds, disabled criteria and an optional order.")
    problem = ui.scenario_upload_error()
    if problem:
        st.error(f"**{problem[0]} is not a usable scenario:** {problem[1]}", icon=":material/error:")

# ---------------------------------------------------------------- order and inclusion
st.subheader("Funnel order and criteria in use")
c1, c2 = st.columns([2, 3], vertical_alignment="bottom")
with c1:
    mkey = ui.wkey("order_mode_c", ctx.scenario_name)
    st.segmented_control("Order", list(ui.ORDER_MODES), format_func=ui.ORDER_LABELS.get, default=ctx.order_mode,
                         key=mkey, on_change=ui.set_order_mode, args=(mkey, tuple(shown_ids)), required=True)
with c2:
    st.caption("Untick **Apply** to leave a criterion out; type a new **Position** to move it (the order "
               "switches to *by hand*). Counts are patients failing or unknown on each criterion alone.")
disabled = ctx.scenario.disabled
na = res.plan.not_assessable
rows = []
for pos, cid in enumerate(shown_ids, start=1):
    crit = proto.criterion(cid)
    rows.append({
        "Position": pos,
        "Apply": cid not in disabled,
        "Criterion": cid,
        "Kind": crit.kind,
        "Short name": labels[cid],
        "Fail": int(stats_all.loc[cid, "failed"]) if cid in stats_all.index else None,
        "Unknown": int(stats_all.loc[cid, "unknown"]) if cid in stats_all.index else None,
        "Note": ("not assessable" if cid in na else
                 "changed" if any(r.id in ctx.scenario.overrides or r.id in disabled for r in crit.rules) else ""),
    })
editor = pd.DataFrame(rows)
if ctx.k:
    for col in ("Fail", "Unknown"):
        small = editor[col].fillna(0).between(1, ctx.k - 1)
        editor[col] = editor[col].astype("Int64").mask(small)
ui.remember_editor_rows(shown_ids)
st.data_editor(
    editor, key=ui.editor_key(), hide_index=True, num_rows="fixed", height=min(36 * len(editor) + 40, 520),
    disabled=["Criterion", "Kind", "Short name", "Fail", "Unknown", "Note"],
    column_config={
        "Position": st.column_config.NumberColumn("Position", min_value=1, max_value=len(editor), step=1,
                                                  width="small"),
        "Apply": st.column_config.CheckboxColumn("Apply", width="small"),
        "Criterion": st.column_config.TextColumn(width="small"),
        "Kind": st.column_config.TextColumn(width="small"),
        "Short name": st.column_config.TextColumn(width="large"),
        "Fail": st.column_config.NumberColumn(format="localized", width="small"),
        "Unknown": st.column_config.NumberColumn(format="localized", width="small"),
        "Note": st.column_config.TextColumn(width="small"),
    })

# ---------------------------------------------------------------- thresholds
st.subheader("Criteria, rules and thresholds")
show = st.segmented_control("Show", ["All", "Inclusion", "Exclusion", "Changed"], default="All",
                            key=ui.W + "criteria_filter", required=True)
st.caption("Each criterion's protocol text, then its rule(s) as applied with the current thresholds. "
           "Changing a value updates every page at once.")
for crit in criteria:
    rules = [r for r in crit.rules if stage in r.stages]
    changed = any(r.id in ctx.scenario.overrides or r.id in disabled for r in rules) or crit.id in disabled
    if show == "Inclusion" and crit.kind != "inclusion" or show == "Exclusion" and crit.kind != "exclusion":
        continue
    if show == "Changed" and not changed:
        continue
    status = []
    if crit.id in disabled:
        status.append(":red-badge[off]")
    if crit.id in na:
        status.append(":gray-badge[not assessable]")
    if changed and crit.id not in disabled:
        status.append(":violet-badge[changed]")
    if crit.id in stats_all.index and not ctx.k:
        status.append(f":gray[{int(stats_all.loc[crit.id, 'failed']):,} fail · "
                      f"{int(stats_all.loc[crit.id, 'unknown']):,} unknown on it alone]")
    # The label and icon are the expander's identity: keep them fixed so it stays open while editing.
    box = st.expander(f"**{crit.id}** · {labels[crit.id]}", key=ui.expander_key(crit.id), on_change="rerun",
                      icon=":material/login:" if crit.kind == "inclusion" else ":material/logout:")
    if not box.open:
        continue  # content runs only when the expander is open
    with box:
        st.markdown(f"{crit.kind.capitalize()} criterion " + " ".join(status))
        st.markdown(f"> {md_escape(crit.text)}")
        ckey = ui.wkey("apply", crit.id)
        st.toggle("Apply this criterion", value=crit.id not in disabled, key=ckey, on_change=ui.set_enabled,
                  args=(crit.id, ckey))
        for rule in rules:
            if len(rules) > 1:
                st.divider()
            line = f"**{rule.id}** · {md_escape(rule.readable(stage, ctx.scenario.overrides.get(rule.id)))}"
            if rule.id in ctx.engine.not_assessable:
                line += f"  \n:gray[not assessable: {', '.join(ctx.engine.not_assessable[rule.id])} absent]"
            elif rule.id in leaf.index and not ctx.k:
                row = leaf.loc[rule.id]
                line += f"  \n:gray[{int(row['failed']):,} fail · {int(row['unknown']):,} unknown]"
            st.markdown(line)
            if len(rules) > 1:
                rkey = ui.wkey("apply", rule.id)
                st.toggle(f"Apply {rule.id} ({rule.label})", value=rule.id not in disabled, key=rkey,
                          on_change=ui.set_enabled,
                          args=(rule.id, rkey), disabled=crit.id in disabled)
            names = patients.stage_params(rule, stage)
            if names:
                cols = st.columns(3)
                for i, pname in enumerate(names):
                    number_widget(ctx, rule, pname, cols[i % 3])

ui.page_end()
