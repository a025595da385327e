"""The column-mapping wizard (Cohort page, "Load data"): a CSV / Excel file, its mapping and its dates.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from kn026.ingest import loading
from ui.session import K_IMPORT_ERROR, K_MAP_EPOCH, K_MAP_FILE, K_MAPPING, K, W, memo
from ui.sources import after_import, import_failed, install, progress_bar

MAP_FILE_KEY = W + "map_file"


# ---- CSV / Excel with a mapping (Cohort page, "Load data")

NOT_MAPPED = "— not mapped —"
KEEP_VALUE, EMPTY_VALUE = "(keep as written)", "(empty: unknown)"


def map_file() -> dict | None:
    """The file being mapped: {"name", "id", "frame"} (parsed in memory), or None."""
    return st.session_state.get(K_MAP_FILE)


def mapping():
    return st.session_state.get(K_MAPPING)


def map_key(*parts) -> str:
    return W + "map." + ".".join(str(p) for p in parts) + f"@{st.session_state.get(K_MAP_EPOCH, 0)}"


def _new_mapping(m) -> None:
    st.session_state[K_MAPPING] = m
    st.session_state[K_MAP_EPOCH] = st.session_state.get(K_MAP_EPOCH, 0) + 1


def on_map_file(key: str) -> None:
    """File-uploader callback: check and parse the file, suggest a mapping (or keep a fitting one)."""
    from kn026.ingest.mapping import suggest_mapping

    up = st.session_state.get(key)
    st.session_state[K_IMPORT_ERROR] = None
    if up is None:
        st.session_state[K_MAP_FILE] = None
        return
    try:
        frame = loading.read_foreign(up.name, up.getvalue())
    except Exception as err:  # noqa: BLE001 - a message, never a traceback
        st.session_state[K_MAP_FILE] = None
        import_failed("mapped", up.name, err)
        return
    st.session_state[K_MAP_FILE] = {"name": up.name, "id": up.file_id, "frame": frame}
    old = mapping()
    if old is not None and old.columns and all(c.source in frame.columns for c in old.columns if c.source):
        old.unmatched = [h for h in frame.columns if h not in {c.source for c in old.columns}]
        old.edits = [e for e in old.edits if e.whole_column]  # a cell's choice was for the other file
        _fill_dates(old)
        _new_mapping(old)  # the same layout again: keep the analyst's mapping
        return
    m = suggest_mapping(frame.columns, sample=frame)
    m.name = Path(up.name).stem
    _new_mapping(m)


def on_map_yaml(key: str) -> None:
    """Mapping-YAML uploader callback: reuse a saved mapping for the file being mapped."""
    up = st.session_state.get(key)
    st.session_state[K_IMPORT_ERROR] = None
    f = map_file()
    if up is None or f is None:
        return
    try:
        m = loading.read_mapping_yaml(up.name, up.getvalue(), f["frame"])
    except Exception as err:  # noqa: BLE001
        import_failed("mapped", up.name, err)
        return
    m.unmatched = [h for h in f["frame"].columns if h not in {c.source for c in m.columns}]
    _fill_dates(m)
    _new_mapping(m)


def mapping_yaml() -> str:
    m = mapping()
    return m.to_yaml() if m is not None else ""


def map_source_options(target: str) -> list[str]:
    f, m = map_file(), mapping()
    options = [NOT_MAPPED, *f["frame"].columns]
    c = m.get(target)
    if c is not None and c.constant is not None:
        options.insert(1, f"constant: {c.constant}")
    return options


def map_source_widget(target: str) -> dict:
    """Keyword arguments of the file-column selectbox of dictionary column `target`."""
    c = mapping().get(target)
    value = NOT_MAPPED if c is None else c.source if c.source is not None else f"constant: {c.constant}"
    key = map_key("src", target)
    st.session_state[key] = value
    return {"key": key, "on_change": _on_map_source, "args": (target, key)}


def _on_map_source(target: str, key: str) -> None:
    from kn026.ingest.mapping import suggest_column

    m, f = mapping(), map_file()
    value = st.session_state[key]
    old = m.get(target)
    if value == NOT_MAPPED:
        m.columns = [c for c in m.columns if c.target != target]
    elif old is not None and (old.source == value or old.constant is not None and value == f"constant: {old.constant}"):
        return
    else:
        m.set(target, value)  # replaced below by the suggestion for this header (unit, values)
        m.columns = [c for c in m.columns if c.target != target] + [suggest_column(target, value, f["frame"],
                                                                                   m.decimal)]
        m._sort()
    m.unmatched = [h for h in f["frame"].columns if h not in {c.source for c in m.columns}]


def map_held_targets() -> list[str]:
    """Dictionary columns a header was offered for but not mapped without asking (QTc, eGFR)."""
    m = mapping()
    return [h.target for h in m.held if m.get(h.target) is None]


def map_note(target: str) -> tuple[str, str]:
    """("held" | "chosen", explanation) for a column the analyst must choose by hand, else ("", "")."""
    from kn026.ingest.mapping import caution

    m = mapping()
    c = m.get(target)
    if c is None:
        held = next((h for h in m.held if h.target == target), None)
        if held is None:
            return "", ""
        return "held", (f"“{held.header}” looks like `{target}` but is not mapped without your choice. "
                        f"{held.why}")
    why = caution(target, c.source) if c.source else ""
    return ("chosen", f"“{c.source}” is mapped to `{target}` by your choice. {why}") if why else ("", "")


def map_units(target: str) -> list[str]:
    """Units the file's column for `target` may be in (the dictionary unit first); [] if none."""
    from kn026.ingest.mapping import units_for

    return units_for(target)


def map_unit_label(target: str, unit: str) -> str:
    """"in g/dL (× 10 → g/L)", or "in g/L (no conversion)" for the dictionary unit."""
    from kn026.ingest.mapping import unit_factor

    base = map_units(target)[0]
    if unit == base:
        return f"in {unit} (no conversion)"
    return f"in {unit} (× {unit_factor(target, unit):g} → {base})"


def map_unit_widget(target: str) -> dict:
    c = mapping().get(target)
    units = map_units(target)
    key = map_key("unit", target)
    st.session_state[key] = c.unit if c is not None and c.unit in units else units[0]
    return {"key": key, "on_change": on_map_unit, "args": (target, key)}


def on_map_unit(target: str, key: str) -> None:
    c = mapping().get(target)
    if c is None:
        return
    unit = st.session_state[key]
    c.unit = None if unit == map_units(target)[0] else unit
    c.factor = None


def map_decimal_widget() -> dict:
    key = map_key("decimal")
    st.session_state[key] = mapping().decimal
    return {"key": key, "on_change": _on_map_decimal, "args": (key,)}


def _on_map_decimal(key: str) -> None:
    mapping().decimal = st.session_state[key]


def map_value_targets() -> list[str]:
    """Mapped categorical columns whose values can be translated, in dictionary order."""
    from kn026.ingest.mapping import dictionary_values

    return [c.target for c in mapping().columns
            if c.source is not None and not c.transform and dictionary_values(c.target)]


def map_distinct_values(target: str, limit: int = 40) -> list[tuple[str, int]]:
    """The file's distinct values of `target`'s column, most frequent first, with counts."""
    c = mapping().get(target)
    counts = map_file()["frame"][c.source].dropna().astype(str)
    counts = counts[counts.str.strip() != ""].value_counts()
    return [(str(v), int(n)) for v, n in counts.head(limit).items()]


def map_value_options(target: str) -> list[str]:
    from kn026.ingest.mapping import dictionary_values

    return [KEEP_VALUE, EMPTY_VALUE, *dictionary_values(target)]


def map_value_widget(target: str, value: str) -> dict:
    from kn026.ingest.mapping import translate_value

    c = mapping().get(target)
    now = translate_value(target, value, c.values)
    options = map_value_options(target)
    shown = EMPTY_VALUE if now is None or str(now).strip() == "" else str(now) if str(now) in options else KEEP_VALUE
    key = map_key("value", target, value)
    st.session_state[key] = shown
    return {"key": key, "on_change": _on_map_value, "args": (target, value, key)}


def _on_map_value(target: str, value: str, key: str) -> None:
    c = mapping().get(target)
    if c is None:
        return
    chosen = st.session_state[key]
    values = dict(c.values)
    if chosen == KEEP_VALUE:
        values[value] = value
    else:
        values[value] = "" if chosen == EMPTY_VALUE else chosen
    c.values = values


CHOOSE_DATE = "— choose the date format —"


def _date_inference(source: str):
    """What file column `source` says about its date format (kn026.ingest.date_formats.infer), per file."""
    from kn026.ingest import date_formats

    f = map_file()
    return memo(("map_date_infer", f["id"], source), lambda: date_formats.infer(f["frame"][source]))


def _fill_dates(m) -> None:
    """Write the formats the file's values prove into mapping `m`, so the downloaded YAML carries them."""
    from kn026.ingest import date_formats

    date_formats.fill(map_file()["frame"], m, _date_inference)


def map_date_columns() -> list:
    """The mapping's date columns that are in the file (kn026.ingest.date_formats.DateColumn)."""
    from kn026.ingest import date_formats

    frame = map_file()["frame"]
    return [d for d in date_formats.date_columns(mapping()) if d.source in frame.columns]


def _date_reads(source: str, code: str) -> int:
    """Non-empty rows of file column `source` that format `code` reads."""
    from kn026.ingest import date_formats

    inf = _date_inference(source)
    if code in inf.rows or code in date_formats.CATALOGUE:
        return inf.rows.get(code, 0)
    f = map_file()
    return memo(("map_date_reads", f["id"], source, code),
                lambda: inf.n - int(date_formats.read(f["frame"][source], code)[1].sum()))


def map_date_open() -> list:
    """Date columns whose format is neither chosen nor proven by the values: loading waits for them."""
    return [d for d in map_date_columns() if not d.given and not _date_inference(d.source).settled]


def map_date_wait() -> str:
    """Why the preview and loading wait for a date format ("" when none is missing)."""
    asked = map_date_open()
    if not asked:
        return ""
    return ("Choose the date format of " + ", ".join(f"`{d.key}` (file column “{d.source}”)" for d in asked)
            + " in section 3 first: its dates read in more than one way, and dates are never guessed. "
            "*Load this cohort* is enabled once every date column has its format.")


def map_date_options(d) -> list[str]:
    """The formats offered for date column `d`: those that read the most of its values first."""
    from kn026.ingest.date_formats import CATALOGUE

    inf = _date_inference(d.source)
    if inf.status in ("typed", "empty") and not d.given:
        return []  # typed dates (Parquet, Excel) or no value: nothing to choose
    codes = sorted(inf.rows, key=lambda c: (-inf.rows[c], CATALOGUE.index(c))) or list(CATALOGUE)
    if d.given and d.given not in codes:
        codes.insert(0, d.given)
    return codes if inf.settled else [CHOOSE_DATE, *codes]


def map_date_label(d, code: str) -> str:
    """"dd/mm/yyyy (day first) · reads all 300"."""
    from kn026.ingest.date_formats import describe

    if code == CHOOSE_DATE:
        return code
    inf = _date_inference(d.source)
    got = _date_reads(d.source, code)
    return f"{describe(code)} · reads {'all ' + format(got, ',') if got == inf.n else f'{got:,} of {inf.n:,}'}"


def map_date_widget(d) -> dict:
    key = map_key("date", d.key, d.source)
    inf = _date_inference(d.source)
    st.session_state[key] = d.given or inf.format or CHOOSE_DATE
    return {"key": key, "on_change": _on_map_date, "args": (d.key, key)}


def _on_map_date(target: str, key: str) -> None:
    from kn026.ingest import date_formats

    chosen = st.session_state[key]
    date_formats.set_format(mapping(), target, None if chosen == CHOOSE_DATE else chosen)


def map_date_samples(d, n: int = 3) -> list[tuple[str, str]]:
    """The column's first distinct values and how they read: under its format, or under each candidate."""
    from kn026.ingest import date_formats

    inf = _date_inference(d.source)
    texts = map_file()["frame"][d.source].dropna().astype(str).str.strip()
    firsts = pd.Series(texts[texts != ""].unique()[:n], dtype=object)
    code = d.given or inf.format
    codes = [code] if code else list(inf.candidates[:3] if inf.status == "ambiguous" else [])
    readings = [date_formats.read(firsts, c)[0] for c in codes]
    out = []
    for i, value in enumerate(firsts):
        got = [date_formats.human(r.iloc[i]) if pd.notna(r.iloc[i]) else "not read" for r in readings]
        out.append((value, " or ".join(got) if got else "?"))
    return out


def map_date_note(d) -> tuple[str, str]:
    """("asked" | "proven" | "chosen", the sentence to show beside date column `d`)."""
    from kn026.ingest.date_formats import describe

    inf = _date_inference(d.source)
    if not d.given and not inf.settled:
        return "asked", (f"“{d.source}”: {inf.why}. Dates are never guessed: choose the format the file uses; "
                         "the cohort cannot be loaded until you do.")
    if d.given and not (inf.status == "proven" and inf.format == d.given):
        not_read = inf.n - _date_reads(d.source, d.given)
        extra = f" {not_read:,} value(s) do not match it: they are listed as problems below." if not_read else ""
        return "chosen", f"Read as {describe(d.given)}, as chosen.{extra}"
    if inf.status == "proven":
        extra = "" if inf.rows.get(inf.format, 0) == inf.n else \
            f" {inf.n - inf.rows[inf.format]:,} value(s) are not dates: they are listed as problems below."
        return "proven", f"Recognised as {describe(inf.format)}: {inf.why}.{extra}"
    return "proven", inf.why.capitalize() + "."


def human_date(value) -> str:
    from kn026.ingest.date_formats import human

    return human(value)


def map_date_report() -> pd.DataFrame:
    """kn026.ingest.date_formats.date_report of the file under the current mapping: earliest and latest dates."""
    from kn026.ingest import date_formats

    f, m = map_file(), mapping()
    return memo(("map_date_report", f["id"], m.to_yaml()),
                lambda: date_formats.date_report(f["frame"], m, _date_inference))


def map_preview():
    """(Preview of the whole mapped file with load_cohort's problems, or None; error message)."""
    from kn026.ingest.mapped import preview

    f, m = map_file(), mapping()

    def build():
        try:
            return preview(f["frame"], m, rows=20), ""
        except ValueError as err:
            return None, str(err).removeprefix("mapping: ")

    return memo(("map_preview", f["id"], m.to_yaml()), build)


def request_mapped_load() -> None:
    st.session_state[K + "want_mapped"] = True
    st.session_state[K_IMPORT_ERROR] = None


def load_mapped() -> None:
    import copy

    from kn026.ingest.mapping import value_report

    f, m = map_file(), mapping()
    if f is None or m is None:
        import_failed("mapped", "", loading.LoadError("upload the CSV / Excel file first"))
        return
    t0 = time.perf_counter()
    bar, progress = progress_bar(f["name"])
    try:
        con, cohort = loading.load_mapped(f["frame"], m, progress=lambda x, msg: progress(0.6 * x, msg))
    except Exception as err:  # noqa: BLE001 - a message, never a traceback
        bar.empty()
        import_failed("mapped", f["name"], err)
        return
    report = {"file": f["name"], "rows": len(f["frame"]), "mapping": copy.deepcopy(m),
              "values": value_report(f["frame"], m), "absent": cohort.absent, "changes": list(cohort.changes)}
    label = f"{f['name']} via mapping ({cohort.n:,} patients)"
    install(con, cohort, label, "mapped", time.perf_counter() - t0, report)
    after_import(bar, label, time.perf_counter() - t0)
