"""Criteria: protocol text, readable rules and thresholds; enable / disable; order; scenarios."""

import dataclasses
import math
import re
from decimal import Decimal

import pandas as pd
import streamlit as st

from kn026.core import custom
from kn026.core.criteria import format_number
from kn026.report import patients
from kn026.rules import grammar, rulecheck
from ui import components, results, rules, scenarios, session, shell
from ui import criteria as page

INTEGRAL_UNITS = {"years", "lines", "lesions", "ECOG", "NYHA class", "CTCAE grade", "days", "half-lives"}
_MD = re.compile(r"([\\`*_{}\[\]<>()#+|!$~])")


def md_escape(text: str) -> str:
    return _MD.sub(r"\\\1", text)


def change_md(change: str) -> str:
    """One scenario change as markdown; a rule's SQL as code, so `>=` is not typeset as ≥."""
    head, sep, sql = change.partition(": ")
    if sep and (head.endswith(" rewritten") or " added (" in head):
        return f"{md_escape(head)}: `{sql.replace('`', chr(39))}`"
    return md_escape(change)


def decimals(value: Decimal) -> int:
    exp = value.normalize().as_tuple().exponent
    return max(0, -exp) if isinstance(exp, int) else 0


def number_widget(ctx, rule, pname: str, column, origin: str = "Protocol", unused: bool = False) -> None:
    param = rule.params[pname]
    current = page.param_value(ctx, rule.id, pname)
    key = page.param_key(rule.id, pname)
    unit = param.unit
    integral = (unit in INTEGRAL_UNITS and all(d is None or d == d.to_integral_value()
                                               for d in (param.default, param.low, param.high)))
    name = ctx.protocol.param_label(pname)
    label = f"{name} ({unit})" if unit and unit not in name else name
    allowed = f"allowed {format_number(param.low)}–{format_number(param.high)}" if param.low is not None else ""
    help_text = f"{origin}: {format_number(param.default)} {unit}. {allowed}".strip()
    if integral:
        column.number_input(label, min_value=int(param.low) if param.low is not None else None,
                            max_value=int(param.high) if param.high is not None else None,
                            value=int(current), step=1, key=key, on_change=scenarios.set_param,
                            args=(rule.id, pname, key), help=help_text, disabled=unused)
    else:
        if unit in ("× ULN", "ratio") or abs(param.default) < 10:
            step = 0.1 if decimals(param.default) <= 1 else 10.0 ** -decimals(param.default)
        else:
            step = 1.0
        places = max(decimals(current), decimals(param.default), -int(math.floor(math.log10(step))))
        column.number_input(label, min_value=float(param.low) if param.low is not None else None,
                            max_value=float(param.high) if param.high is not None else None,
                            value=float(current), step=step, format=f"%.{places}f", key=key,
                            on_change=scenarios.set_param, args=(rule.id, pname, key), help=help_text, disabled=unused)
    if current != param.default:
        column.caption(f":violet[changed] · {origin.lower()} {format_number(param.default)}")
    if unused:
        column.caption("not used by the rewritten expression")


ctx = shell.page_start("Criteria", ":material/rule:")
proto, stage = ctx.protocol, ctx.stage
labels = results.labels(ctx)
criteria = [c for c in proto.criteria if stage in c.stages]
all_ids = [c.id for c in criteria]
shown_ids = list(ctx.order) or all_ids
res = results.result(ctx)
everything = dataclasses.replace(ctx.scenario, disabled=frozenset())  # every criterion, with its changes
stats_all = results.result(ctx, everything, ()).stats.set_index("criterion")
_, coverage = results.cohort_profile(ctx)
leaf = coverage.set_index("rule")

st.title("Criteria")
components.context_line(ctx)
components.metric_cards(ctx)

# ---------------------------------------------------------------- scenario
with st.container(border=True):
    st.subheader("Scenario")
    if ctx.is_protocol:
        st.markdown("You are looking at **the protocol as written**. Change a threshold, switch a criterion off "
                    "or upload a scenario file: the first change starts a new named scenario, and the protocol "
                    "stays available for comparison.")
    else:
        c1, c2 = st.columns([2, 3])
        key = page.scenario_name_key(ctx.scenario_name)
        c1.text_input("Name", value=ctx.scenario_name, key=key, on_change=scenarios.rename_scenario, args=(key,),
                      max_chars=80)
        dkey = page.scenario_description_key(ctx.scenario_name)
        c2.text_input("Description", value=ctx.scenario.description, key=dkey, on_change=scenarios.describe_scenario,
                      args=(dkey,), placeholder="Why this scenario (for example: another registry version)")
        changes = ctx.scenario.changes(proto)
        if changes:
            st.markdown("**Changes from the protocol:** " + " · ".join(change_md(c) for c in changes))
        else:
            st.markdown("**No changes from the protocol yet.**")
    b1, b2, b3, b4 = st.columns([1.2, 1, 1, 2.4], vertical_alignment="bottom")
    slug = re.sub(r"[^A-Za-z0-9]+", "_", ctx.scenario_name).strip("_").lower() or "scenario"
    b1.download_button("Download YAML", scenarios.scenario_yaml(ctx), file_name=f"{slug}.yaml",
                       mime="application/x-yaml", icon=":material/download:", width="stretch",
                       on_click="ignore")
    b2.button("Reset to protocol", on_click=scenarios.reset_scenario, disabled=ctx.is_protocol, width="stretch",
              icon=":material/restart_alt:", help="Undo every change of this scenario (keeps its name).")
    b3.button("Delete scenario", on_click=scenarios.delete_scenario, disabled=ctx.is_protocol, width="stretch",
              icon=":material/delete:")
    with b4:
        ukey = page.SCENARIO_UPLOAD
        st.file_uploader("Upload a scenario (YAML)", type=["yaml", "yml"], key=ukey, label_visibility="collapsed",
                         on_change=scenarios.on_scenario_upload, args=(ukey,), max_upload_size=scenarios.text_upload_limit_mb(),
                         help="A scenario file downloaded from here (or written by hand): name, changed "
                              "thresholds, disabled criteria and an optional order.")
    problem = scenarios.scenario_upload_error()
    if problem:
        st.error(f"**{problem[0]} is not a usable scenario:** {problem[1]}", icon=":material/error:")

# ---------------------------------------------------------------- order and inclusion
st.subheader("Funnel order and criteria in use")
c1, c2 = st.columns([2, 3], vertical_alignment="bottom")
with c1:
    # the mode is part of the key: a hand reorder in the table below switches the mode, and the
    # control must then be drawn anew to say "By hand" (a widget keeps its own value otherwise)
    mkey = page.order_key(ctx.scenario_name, ctx.order_mode)
    st.segmented_control("Order", list(scenarios.ORDER_MODES), format_func=scenarios.ORDER_LABELS.get, default=ctx.order_mode,
                         key=mkey, on_change=scenarios.set_order_mode, args=(mkey, tuple(shown_ids)), required=True)
with c2:
    st.caption("Untick **Apply** to leave a criterion out; type a new **Position** to move it (the order "
               "switches to *by hand*). Counts are patients failing or unknown on each criterion alone.")
disabled = ctx.scenario.disabled
na = res.plan.not_assessable
custom_ids = {c.id for c in ctx.scenario.custom}
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
        "Note": ("not assessable" if cid in na else "custom" if cid in custom_ids else
                 "rewritten" if any(r.id in ctx.scenario.replace for r in crit.rules) else
                 "changed" if any(r.id in ctx.scenario.overrides or r.id in disabled for r in crit.rules) else ""),
    })
editor = pd.DataFrame(rows)
if ctx.k:
    for col in ("Fail", "Unknown"):
        small = editor[col].fillna(0).between(1, ctx.k - 1)
        editor[col] = editor[col].astype("Int64").mask(small)
page.remember_editor_rows(shown_ids)
st.data_editor(
    editor, key=page.editor_key(), hide_index=True, num_rows="fixed", height=min(36 * len(editor) + 40, 520),
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

# ---------------------------------------------------------------- custom criteria and rewritten rules
st.subheader("Custom criteria and rewritten rules")
st.caption("Write a rule as one SQL condition over the cohort's columns: the condition a patient must meet to "
           "**pass** (for an exclusion: *not* to be excluded). It is checked against an allow-list before it "
           "runs, then takes part in the funnel, overlaps, scenario comparison and exports like a protocol "
           "rule. The first rule added to the protocol starts a new scenario.")
stored = scenarios.active_scenario()  # as stored: may hold rules this cohort cannot screen (warned above)
screened_ids = {c.id for c in ctx.scenario.custom} | set(ctx.scenario.replace)
if stored.custom or stored.replace:
    with st.container(border=True):
        st.markdown(f"**In “{md_escape(ctx.scenario_name)}”**")
        for c in stored.custom:
            r1, r2 = st.columns([5, 1.4], vertical_alignment="center")
            badge = ":blue-badge[custom]" + ("" if c.id in screened_ids else " :red-badge[not screened]")
            params = "; ".join(custom.format_params(c.params).splitlines())
            r1.markdown(f"**{c.id}** {badge} {c.kind} · {md_escape(c.text or c.id)}"
                        + (f"  \n:gray[parameters: {md_escape(params)}]" if params else ""))
            r1.code(c.sql, language="sql", wrap_lines=True)
            r2.button("Edit", key=page.rule_button_key("edit", c.id), on_click=rules.edit_custom_rule, args=(c.id,),
                      icon=":material/edit:", width="stretch", help=f"Load {c.id} into the form below to change it")
            r2.button("Remove", key=page.rule_button_key("remove", c.id), on_click=rules.remove_custom_rule, args=(c.id,),
                      icon=":material/delete:", width="stretch", help=f"Remove {c.id} from this scenario")
        for rid, sql in sorted(stored.replace.items()):
            r1, r2 = st.columns([5, 1.4], vertical_alignment="center")
            badge = ":violet-badge[rewritten]" + ("" if rid in screened_ids else " :red-badge[not screened]")
            r1.markdown(f"**{rid}** {badge} {md_escape(proto.rule(rid).label)}")
            r1.code(sql, language="sql", wrap_lines=True)
            r2.button("Undo rewrite", key=page.rule_button_key("restore", rid), on_click=rules.remove_replacement,
                      args=(rid,), icon=":material/undo:", width="stretch",
                      help=f"Give {rid} its protocol expression back")


def rule_error_box(form: str, verb: str) -> None:
    """The last rejection of `form`: the message, and the text with carets under the token."""
    err = rules.rule_error(form)
    if not err:
        return
    # the message on a line of its own: it may start with a column or function name (kept as typed)
    st.error(f"**Not {verb}; nothing changed.**  \n{md_escape(err['message'])}", icon=":material/error:")
    pointer = rulecheck.point_at(err["text"], err["position"], err["token"], width=44)  # fits half the page
    if pointer:
        st.code(pointer, language=None)


add_col, rewrite_col = st.columns(2, gap="medium")
with add_col, st.container(border=True):
    with st.container(horizontal=True, vertical_alignment="center"):
        st.markdown("**Add a criterion**", width="stretch")
        st.button("Example: age ≤ 75", on_click=rules.example_custom_rule, icon=":material/lightbulb:",
                  key=page.RULE_EXAMPLE_CUSTOM, width="content",
                  help="Fill the form with an exclusion of patients older than 75 years (age_years <= :max_age); "
                       "then press Add criterion")
    rules.add_form()
    with st.form(page.RULE_ADD_FORM, border=False):
        f1, f2 = st.columns([1, 2], vertical_alignment="bottom")
        f1.text_input("ID", key=rules.rule_field("add", "id"), max_chars=16,
                      help="2-16 capital letters, digits or _, starting with a letter (CUST01). "
                           "An ID already in this scenario updates that criterion.")
        f2.segmented_control("Kind", ["inclusion", "exclusion"], key=rules.rule_field("add", "kind"),
                             required=True)
        st.text_input("Text (its name in tables and charts)", key=rules.rule_field("add", "text"), max_chars=200,
                      placeholder="e.g. Older than 75 years at screening")
        st.text_area("SQL condition to pass", key=rules.rule_field("add", "sql"), height=96,
                     placeholder="e.g. age_years <= :max_age", max_chars=2000,
                     help="One boolean expression; NULL (a missing value) makes the patient unknown on it.")
        st.text_area("Parameters (one per line: name = value unit)", key=rules.rule_field("add", "params"), height=68,
                     placeholder="e.g. max_age = 75 years",
                     help="Use them as :name in the condition; each gets a number box below, like a protocol "
                          "threshold.")
        st.form_submit_button("Add criterion", on_click=rules.add_custom_rule, type="primary",
                              icon=":material/add:")
    rule_error_box("add", "added")

with rewrite_col, st.container(border=True):
    with st.container(horizontal=True, vertical_alignment="center"):
        st.markdown("**Rewrite a rule's expression**", width="stretch")
        example = proto.examples
        if example.replace:
            st.button(f"Example: {example.replace_label}", on_click=rules.example_replace_rule,
                      icon=":material/lightbulb:", key=page.RULE_EXAMPLE_REPLACE, width="content",
                      help=f"Fill the form with {example.replace[0]} asking {example.replace_why}; then press "
                           "Rewrite rule")
    picked = rules.replace_form(stage)
    base_rules = rules.replace_rules(stage)
    st.selectbox("Rule", list(base_rules), key=rules.rule_field("replace", "rule"),
                 format_func=lambda rid: f"{rid} · {base_rules[rid].label}",
                 on_change=rules.pick_replace_rule, args=(stage,))
    prule = base_rules[picked]
    notes = [f":{p} = {format_number(page.param_value(ctx, picked, p))} {prule.params[p].unit}".rstrip()
             for p in prule.params]
    st.caption((f"Parameters: {md_escape(', '.join(notes))}. " if notes else "No parameters. ")
               + ("Stage 1 and 2 differ in the protocol; a rewrite applies to both. "
                  if len(set(prule.sql.values())) > 1 else "")
               + "Submit the protocol's text again to undo a rewrite.")
    with st.form(page.RULE_REPLACE_FORM, border=False):
        st.text_area("SQL condition to pass", key=rules.rule_field("replace", "sql"), height=150, max_chars=2000)
        st.form_submit_button("Rewrite rule", on_click=rules.replace_rule_expression, type="primary",
                              icon=":material/edit_note:")
    rule_error_box("replace", "rewritten")

help_box = st.expander("Help: columns, parameters, operators and functions", icon=":material/help:",
                       key=session.expander_key("rule_help"), on_change="rerun")
if help_box.open:
    with help_box:
        g1, g2 = st.columns([2, 3.4], gap="medium")
        with g1:
            st.markdown(
                "**How a rule reads**\n\n"
                "* The condition says who **passes**. For an exclusion write the opposite of the reason to "
                "exclude: `age_years <= 75` excludes patients older than 75.\n"
                "* A missing value makes the comparison NULL: the patient is **unknown** on the rule (strict "
                "counts fail, optimistic counts pass). `x IS NULL` / `coalesce(x, 0)` decide it yourself.\n"
                "* Parameters: declare `name = value unit`, write `:name`. A rewritten rule keeps the "
                "protocol rule's parameters.\n"
                "* Custom criteria apply at every stage.\n\n"
                "**Allowed**: column names; numbers; `'text'`; `TRUE` `FALSE` `NULL`; `:parameters`; "
                "`=` `<>` `!=` `<` `<=` `>` `>=`; `AND` `OR` `NOT`; `+` `-` `*` `/`; parentheses; "
                "`CASE WHEN … THEN … ELSE … END`; `IS [NOT] NULL`; `[NOT] IN (values)`; "
                "`[NOT] BETWEEN … AND …`.\n\n"
                "**Functions**: " + ", ".join(f"`{f}`" for f in grammar.ALLOWED_FUNCTIONS) + ".\n\n"
                "**Refused**, with the position: other functions (file readers, settings), subqueries, "
                "several statements (`;`), comments, casts, `LIKE`, table names.")
        with g2:
            st.markdown("**Columns of the loaded cohort**")
            st.dataframe(rules.rule_columns(ctx), hide_index=True, width="stretch", height=560,
                         column_config={"name": st.column_config.TextColumn("Name", width=270),
                                        "kind": st.column_config.TextColumn("Type", width="small"),
                                        "unit": st.column_config.TextColumn("Unit", width="small"),
                                        "meaning": st.column_config.TextColumn("Meaning", width="large")})

# ---------------------------------------------------------------- thresholds
st.subheader("Criteria, rules and thresholds")
show = st.segmented_control("Show", ["All", "Inclusion", "Exclusion", "Changed"], default="All",
                            key=page.CRITERIA_FILTER, required=True)
st.caption("Each criterion's protocol text, then its rule(s) as applied with the current thresholds. "
           "Changing a value updates every page at once.")
for crit in criteria:
    rules = [r for r in crit.rules if stage in r.stages]
    changed = (any(r.id in ctx.scenario.overrides or r.id in disabled or r.id in ctx.scenario.replace
                   for r in rules) or crit.id in disabled or crit.id in custom_ids)
    if show == "Inclusion" and crit.kind != "inclusion" or show == "Exclusion" and crit.kind != "exclusion":
        continue
    if show == "Changed" and not changed:
        continue
    status = []
    if crit.id in disabled:
        status.append(":red-badge[off]")
    if crit.id in na:
        status.append(":gray-badge[not assessable]")
    if crit.id in custom_ids:
        status.append(":blue-badge[custom]")
    elif any(r.id in ctx.scenario.replace for r in rules):
        status.append(":violet-badge[rewritten]")
    elif changed and crit.id not in disabled:
        status.append(":violet-badge[changed]")
    if crit.id in stats_all.index and not ctx.k:
        status.append(f":gray[{int(stats_all.loc[crit.id, 'failed']):,} fail · "
                      f"{int(stats_all.loc[crit.id, 'unknown']):,} unknown on it alone]")
    # The label and icon are the expander's identity: keep them fixed so it stays open while editing.
    box = st.expander(f"**{crit.id}** · {labels[crit.id]}", key=session.expander_key(crit.id), on_change="rerun",
                      icon=":material/login:" if crit.kind == "inclusion" else ":material/logout:")
    if not box.open:
        continue  # content runs only when the expander is open
    with box:
        st.markdown(f"{crit.kind.capitalize()} criterion " + " ".join(status))
        st.markdown(f"> {md_escape(crit.text)}")
        ckey = page.apply_key(crit.id)
        st.toggle("Apply this criterion", value=crit.id not in disabled, key=ckey, on_change=scenarios.set_enabled,
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
                rkey = page.apply_key(rule.id)
                st.toggle(f"Apply {rule.id} ({rule.label})", value=rule.id not in disabled, key=rkey,
                          on_change=scenarios.set_enabled,
                          args=(rule.id, rkey), disabled=crit.id in disabled)
            names = patients.stage_params(rule, stage)
            unused = custom.unused_params(rule, stage, proto) if rule.id in ctx.scenario.replace else []
            if names:
                cols = st.columns(3)
                for i, pname in enumerate(names):
                    number_widget(ctx, rule, pname, cols[i % 3], origin="Default" if crit.id in custom_ids
                                  else "Protocol", unused=pname in unused)

shell.page_end()
