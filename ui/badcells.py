"""Bad cells of an upload or a mapped file: the analyst's choices (kn026.ingest.edits) instead of editing the file.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from kn026.ingest import edits
from ui.session import K_BAD_PENDING, K_UPLOAD_EDITS, W
from ui.sources import schema_column, schema_names
from ui.wizard import map_file, map_unit_label, map_units, mapping, on_map_unit

# ---- bad cells: the analyst's choices instead of editing the file (kn026.ingest.edits)

CELL_LABELS = {"keep": "Leave it (stays a problem)", "fix": "Fix the value", "blank": "Blank it (unknown)",
               "drop": "Drop the row"}
PER_VALUE = "per value"


def upload_edits() -> list:
    """The choices made for the uploaded file's bad cells (reset when another file is uploaded)."""
    up = st.session_state.get(W + "upload")
    state = st.session_state.get(K_UPLOAD_EDITS)
    if up is None or state is None or state["id"] != up.file_id:
        return []
    return list(state["edits"])


def flow_edits(flow: str) -> list:
    """The choices of a flow: "upload" (a plain upload) or "mapped" (the mapping wizard's mapping)."""
    return upload_edits() if flow == "upload" else list(mapping().edits)


def _set_edits(flow: str, chosen: list) -> None:
    if flow == "upload":
        up = st.session_state.get(W + "upload")
        st.session_state[K_UPLOAD_EDITS] = {"id": up.file_id if up is not None else None, "edits": list(chosen)}
    else:
        mapping().edits = list(chosen)


def _bad_key(flow: str, *parts) -> str:
    return W + "bad." + flow + "." + ".".join(str(p) for p in parts)


def bad_groups(problems) -> list[tuple[str, list]]:
    """The problems by column, in the loader's order; a duplicated patient_id once per row."""
    groups: dict[str, list] = {}
    for p in edits.cells(problems):
        groups.setdefault(p.column, []).append(p)
    return list(groups.items())


def has_choices(problems) -> bool:
    """True when some of the problems can be answered in the app (cells, not the file itself)."""
    return any(edits.cell_actions(p) or edits.column_edits(p.column, [p]) for p in edits.cells(problems))


def _source_of(column: str) -> str | None:
    """The mapped file's column behind dictionary column `column` (or the index date column)."""
    from kn026.ingest import date_formats

    m = mapping()
    if column == "index_column":
        return date_formats.index_source(m)
    c = m.get(column)
    return c.source if c is not None else None


def cell_text(flow: str, problem) -> str | None:
    """The bad cell as the file has it (a mapped file: its own cell, before the mapping)."""
    if flow == "upload":
        return problem.value
    source = _source_of(problem.column)
    if source is None:
        return problem.value
    value = map_file()["frame"][source].iloc[problem.row - 1]
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def cell_actions(flow: str, problem) -> list[str]:
    """"keep" and what kn026.ingest.edits offers for the cell; a mapped constant cannot be fixed in the file,
    and the date the day counts count from is never blanked (kn026.ingest.mapped)."""
    actions = edits.cell_actions(problem)
    if flow == "mapped":
        from kn026.ingest import mapped

        if _source_of(problem.column) is None:
            actions = [a for a in actions if a == "drop"]
        if not mapped.blankable(mapping(), problem.column):
            actions = [a for a in actions if a != "blank"]
    return ["keep", *actions] if actions else []


def column_choices(flow: str, column: str, problems) -> list[str]:
    """PER_VALUE, then "blank" / "drop" for every bad value of `column`, as kn026.ingest.edits offers them."""
    found = [e.action for e in edits.column_edits(column, problems) if e.action != "unit"]
    if flow == "mapped":
        from kn026.ingest import mapped

        if not mapped.blankable(mapping(), column):
            found = [a for a in found if a != "blank"]
    return [PER_VALUE, *found] if found else []


def unit_choices(flow: str, column: str, problems) -> list[str]:
    """The units the column may be declared in ("" = its own) when the unit guard flagged it."""
    if column not in schema_names() or not {p.kind for p in problems} & {"unit", "median"}:
        return []
    if flow == "mapped":
        from kn026.ingest.mapping import units_for

        return units_for(column) if mapping().get(column) is not None else []
    declared = [e.text for e in upload_edits() if e.action == "unit" and e.column == column]
    return ["", *dict.fromkeys([u for u, _ in units_guard(column)] + declared)]


def units_guard(column: str):
    from kn026.ingest import units

    return units.guard_units(column)


def unit_label(flow: str, column: str, unit: str) -> str:
    from kn026.ingest import units

    col = schema_column(column)
    if flow == "mapped":
        return map_unit_label(column, unit)
    return f"in {col.unit} (no conversion)" if not unit else f"in {units.conversion_text(column, unit)}"


def cell_widget(flow: str, problem) -> dict:
    """Keyword arguments of a problem's choice selectbox, seeded from the chosen edits."""
    e = edits.cell_edit(flow_edits(flow), problem.column, problem.row)
    pending = (flow, problem.column, problem.row) in st.session_state.setdefault(K_BAD_PENDING, set())
    key = _bad_key(flow, "cell", problem.column, problem.row)
    st.session_state[key] = e.action if e is not None else "fix" if pending else "keep"
    return {"key": key, "on_change": _on_cell, "args": (flow, problem, key)}


def _on_cell(flow: str, problem, key: str) -> None:
    action = st.session_state[key]
    pending = st.session_state.setdefault(K_BAD_PENDING, set())
    pending.discard((flow, problem.column, problem.row))
    was = cell_text(flow, problem)
    new = {"keep": None, "fix": None, "blank": edits.blank(problem.column, problem.row, was),
           "drop": edits.drop(problem.column, problem.row, was)}[action]
    if action == "fix":
        pending.add((flow, problem.column, problem.row))
    _set_edits(flow, edits.with_edit(flow_edits(flow), problem.column, problem.row, new))


def fix_widget(flow: str, problem) -> dict:
    """Keyword arguments of a problem's "corrected value" text input."""
    e = edits.cell_edit(flow_edits(flow), problem.column, problem.row)
    key = _bad_key(flow, "text", problem.column, problem.row)
    st.session_state[key] = e.text if e is not None and e.action == "fix" else ""
    return {"key": key, "on_change": _on_fix, "args": (flow, problem, key)}


def _on_fix(flow: str, problem, key: str) -> None:
    text = str(st.session_state[key] or "").strip()
    new = edits.fix(problem.column, problem.row, text, cell_text(flow, problem)) if text else None
    if new is not None:
        st.session_state.setdefault(K_BAD_PENDING, set()).discard((flow, problem.column, problem.row))
    else:
        st.session_state.setdefault(K_BAD_PENDING, set()).add((flow, problem.column, problem.row))
    _set_edits(flow, edits.with_edit(flow_edits(flow), problem.column, problem.row, new))


def column_widget(flow: str, column: str) -> dict:
    e = edits.column_edit(flow_edits(flow), column)
    key = _bad_key(flow, "column", column)
    st.session_state[key] = e.action if e is not None else PER_VALUE
    return {"key": key, "on_change": _on_column, "args": (flow, column, key)}


def _on_column(flow: str, column: str, key: str) -> None:
    action = st.session_state[key]
    new = None if action == PER_VALUE else edits.Edit(action, column)
    _set_edits(flow, edits.with_edit(flow_edits(flow), column, None, new))


def unit_widget(flow: str, column: str) -> dict:
    key = _bad_key(flow, "unit", column)
    if flow == "mapped":
        c = mapping().get(column)
        st.session_state[key] = c.unit if c is not None and c.unit else map_units(column)[0]
    else:
        e = edits.column_edit(upload_edits(), column, units=True)
        st.session_state[key] = e.text if e is not None else ""
    return {"key": key, "on_change": _on_unit, "args": (flow, column, key)}


def _on_unit(flow: str, column: str, key: str) -> None:
    unit = st.session_state[key]
    if flow == "mapped":  # the column's unit setting, as in section 2
        on_map_unit(column, key)
        return
    new = edits.unit(column, unit) if unit else None
    _set_edits(flow, edits.with_edit(upload_edits(), column, None, new, units=True))


def remove_edit(flow: str, index: int) -> None:
    """Button callback: forget one choice."""
    chosen = flow_edits(flow)
    if 0 <= index < len(chosen):
        e = chosen.pop(index)
        st.session_state.setdefault(K_BAD_PENDING, set()).discard((flow, e.column, e.row))
        _set_edits(flow, chosen)


def clear_edits(flow: str) -> None:
    _set_edits(flow, [])
    st.session_state[K_BAD_PENDING] = {p for p in st.session_state.get(K_BAD_PENDING, set()) if p[0] != flow}


def chosen_text(e) -> str:
    """One choice, in words, for the list under the problems."""
    return e.describe()


def column_label(action: str, n: int) -> str:
    if action == PER_VALUE:
        return "Choose value by value"
    if n == 1:
        return {"blank": "Blank it (unknown)", "drop": "Drop its row"}[action]
    return {"blank": f"Blank all {n:,} (unknown)", "drop": f"Drop all {n:,} rows"}[action]


def _covered(flow: str, column: str) -> tuple[set, str]:
    """Kinds of problems of `column` a whole-column choice already answers (upload: until the file
    loads again), and the sentence that says so; a mapped file's preview drops them at once."""
    if flow != "upload":
        return set(), ""
    chosen = upload_edits()
    whole, unit = edits.column_edit(chosen, column), edits.column_edit(chosen, column, units=True)
    kinds, said = set(), []
    if whole is not None:
        kinds |= {"value", "date", "missing_id"}
        said.append(f"every bad value will be {'blanked' if whole.action == 'blank' else 'dropped with its row'}")
    if unit is not None:
        kinds |= {"unit", "median"}
        said.append(f"its values will be converted from {unit.text}; values still implausible then are listed again")
    return kinds, ("As the file loads, " + "; ".join(said) + "." if said else "")


def bad_cells_panel(flow: str, problems) -> None:
    """The reported problems with a choice for each (fix / blank / drop) and for each column (all of its
    bad values, the unit of its values), then the choices made so far. Layout only: the choices are
    kn026.ingest.edits data, offered and applied by kn026."""
    st.markdown("**Choose what to do with each problem.** The file itself is not changed: the choices are "
                "applied as it loads" + (" and saved in the mapping." if flow == "mapped" else "."))
    st.caption("*Blank* makes a value unknown. Record-based columns (days since an event, cumulative doses) "
               "cannot be blanked: there an empty cell means *none on record* and would pass the patient. A value "
               "outside the plausible range usually means another unit: declare the unit of the column.")
    for column, group in bad_groups(problems):
        cells = [p for p in group if cell_actions(flow, p)]
        total = sum({(p.kind, p.message): p.count for p in group if p.row is not None}.values())
        per_column = column_choices(flow, column, group) if total > len(cells) or len(cells) > 1 else []
        unit_options = unit_choices(flow, column, group)
        if not (cells or per_column or unit_options):
            for p in group:
                st.error(str(p), icon=":material/error:")
            continue
        covered, note = _covered(flow, column)
        col = schema_column(column) if column in schema_names() else None
        with st.container(border=True):
            head, choice = st.columns([3, 2], vertical_alignment="top")
            unit_text = f" ({col.unit})" if col is not None and col.unit else ""
            what = f"{total:,} bad value(s)" if total else "the whole column"
            head.markdown(f"**`{column}`**{unit_text} · {what}")
            head.caption(" · ".join(dict.fromkeys(p.message for p in group)))
            if per_column:
                choice.selectbox(f"Every bad value of {column}", per_column,
                                 format_func=lambda a, n=total: column_label(a, n),
                                 **column_widget(flow, column))
            if unit_options:
                choice.selectbox(f"Unit of the file's {column} values", unit_options,
                                 format_func=lambda u, c=column: unit_label(flow, c, u), **unit_widget(flow, column))
            shown = [p for p in cells if p.kind not in covered]
            for p in shown:
                c1, c2, c3, c4 = st.columns([2, 2, 3, 3], vertical_alignment="center")
                c1.markdown(f"Row {p.row:,}" + (f" · `{p.patient_id}`" if p.patient_id else ""))
                was = cell_text(flow, p)
                c2.markdown("empty" if was is None else f"“{was}”")
                action = c3.selectbox(f"Row {p.row} of {column}", cell_actions(flow, p), format_func=CELL_LABELS.get,
                                      label_visibility="collapsed", **cell_widget(flow, p))
                if action == "fix":
                    c4.text_input(f"Corrected value of row {p.row} of {column}", label_visibility="collapsed",
                                  placeholder="type the corrected value, Enter", **fix_widget(flow, p))
            if note:
                st.caption(f":material/check: {note}")
            elif {p.kind for p in group} & {"median"}:
                st.caption("The column as a whole looks like another unit: declare the unit above.")
            listed = len({p.row for p in shown})
            if total > listed and shown:
                acts = " and ".join(what for what, offered in (("*Every bad value*", per_column),
                                                              ("the unit", unit_options)) if offered)
                st.caption(f"… and {total - listed:,} more row(s) with a bad `{column}` not listed here: "
                           f"{acts} above act{'s' if ' and ' not in acts else ''} on all of them.")
    choices_list(flow)


def choices_list(flow: str, changes=()) -> None:
    """The choices made so far, each with what it changed (when known) and an Undo button."""
    chosen = flow_edits(flow)
    did = {c.edit: c.what for c in changes}
    if chosen:
        st.markdown(f"**Your choices ({len(chosen)})**")
        for i, e in enumerate(chosen):
            c1, c2 = st.columns([10, 1], vertical_alignment="center")
            c1.markdown(f"- {chosen_text(e)}" + (f" — *{did[e]}*" if e in did else ""))
            c2.button("Undo", key=_bad_key(flow, "undo", i, len(chosen)), on_click=remove_edit, args=(flow, i),
                      help="Forget this choice", width="stretch")
