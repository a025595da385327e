"""File bytes in and out: uploaded cohorts in; screening log, attrition tables, charts out.

Everything is built in memory (bytes or text); nothing is written to disk. Uploaded
files are read as text columns (CSV, Excel) or as stored (Parquet) and handed to
`kn026.ingest.cohort.load_cohort`, which validates every value. Tables that went through
small-cell suppression (kn026.report.suppression.Table) are written with the word
"suppressed" in hidden cells, never the hidden number.
"""

from __future__ import annotations

import datetime as _dt
import html
import io
import re
from collections.abc import Collection, Iterable, Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
import pyarrow as pa
import pyarrow.csv as pacsv

from kn026.core import analysis
from kn026.core.engine import Engine
from kn026.core.scenario import Scenario
from kn026.report import neutralise
from kn026.report.suppression import Table

ATTRITION_COLUMNS = {
    "step": "Step",
    "criterion": "Criterion",
    "label": "Short name",
    "kind": "Kind",
    "strict": "Remaining (strict)",
    "optimistic": "Remaining (optimistic)",
    "unknown_so_far": "Unknown so far",
    "lost_strict": "Lost at step (strict)",
    "lost_optimistic": "Lost at step (optimistic)",
    "pct_strict": "% of screened (strict)",
    "pct_optimistic": "% of screened (optimistic)",
    "failed": "Fail (marginal)",
    "unique": "Fail only this (unique)",
    "unknown": "Unknown on criterion",
    "shapley_strict": "Shapley share (strict)",
    "shapley_optimistic": "Shapley share (optimistic)",
}

# One set of headers for the same columns wherever they are written (app table, CSV, Excel).
SITE_COLUMNS = {"site": "Site", "country": "Country", "sites": "Sites", "screened": "Screened",
                "strict": "Eligible (strict)", "optimistic": "Eligible (optimistic)", "unknown": "Unknown",
                "excluded": "Not eligible", "pct_strict": "% eligible (strict)",
                "pct_optimistic": "% eligible (optimistic)"}
TOTALS_COLUMNS = {"measure": "Measure", "base": "Protocol", "other": "Scenario", "delta": "Change"}
_STATS = {"failed": "Fail", "unknown": "Unknown", "marginal": "Fail (marginal)", "unique": "Fail only this"}
DELTA_COLUMNS = {"criterion": "Criterion", "label": "Short name", "in_base": "In protocol",
                 "in_other": "In scenario"} | {
    f"{stat}_{side}": f"{name} ({where})" for stat, name in _STATS.items()
    for side, where in (("base", "protocol"), ("other", "scenario"), ("delta", "change"))}


def attrition_frame(result: analysis.Result, labels: Mapping[str, str],
                    kinds: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per funnel step: remaining, lost, and the criterion's own statistics.

    Row 0 is "Screened". `unknown_so_far` is the funnel's optimistic - strict after the
    step; `unknown` is the number of patients unknown on that criterion alone.
    """
    funnel = result.funnel.rename(columns={"unknown": "unknown_so_far"})
    stats = result.stats[["criterion", "failed", "unique", "unknown", "shapley_strict", "shapley_optimistic"]]
    out = funnel.merge(stats, on="criterion", how="left")
    out.insert(2, "label", [("" if c == "Screened" else labels.get(c, "")) for c in out["criterion"]])
    out.insert(3, "kind", [("" if c == "Screened" else (kinds or {}).get(c, "")) for c in out["criterion"]])
    for col in ("failed", "unique", "unknown"):
        out[col] = out[col].astype("Int64")
    return out[list(ATTRITION_COLUMNS)]


def _readable(frame: pd.DataFrame, names: Mapping[str, str] | None = None) -> pd.DataFrame:
    out = frame.copy()
    for col in out.columns:
        if col.startswith("pct_") or col.startswith("shapley_"):
            out[col] = out[col].map(lambda v: round(float(v), 2) if isinstance(v, (int, float)) and not pd.isna(v)
                                    else v)
    return out.rename(columns=dict(names or ATTRITION_COLUMNS))


def table_for_export(table: Table | pd.DataFrame, names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """A (possibly suppressed) table with hidden cells labelled and readable headers.

    Text that a spreadsheet would run as a formula (a site called "=HYPERLINK(...)") is
    neutralised (kn026.report.neutralise.neutralise_formulas).
    """
    frame = table.labelled() if isinstance(table, Table) else table
    return neutralise.neutralise_formulas(_readable(frame, names if names is not None else {}))


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """CSV (UTF-8 with BOM so Excel opens accents and ≥ correctly); formulas neutralised."""
    frame = neutralise.neutralise_formulas(frame)
    return ("\ufeff" + frame.to_csv(index=False, lineterminator="\n")).encode("utf-8")


def safe_view(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame to hand to a table widget whose toolbar offers its own CSV download
    (st.dataframe): the same formula neutralisation as every export."""
    return neutralise.neutralise_formulas(frame)


def excel_bytes(sheets: Mapping[str, pd.DataFrame], about: Sequence[tuple[str, str]] = ()) -> bytes:
    """An .xlsx workbook: an "About" sheet (what, when, settings) then one sheet per table.

    Every text cell, header, sheet name and About line is neutralised (a scenario or a
    site called "=HYPERLINK(...)" stays text)."""
    buf = io.BytesIO()
    safe = neutralise.neutralise_text
    with pd.ExcelWriter(buf, engine="openpyxl") as writer:
        info = pd.DataFrame([(safe(str(k)), safe(str(v))) for k, v in (list(about) or [("Generated", _now())])],
                            columns=["Item", "Value"])
        info.to_excel(writer, sheet_name="About", index=False)
        for name, frame in sheets.items():
            neutralise.neutralise_formulas(frame).to_excel(writer, sheet_name=name[:31], index=False)
        for ws in writer.book.worksheets:
            ws.freeze_panes = "A2"
            for column in ws.columns:
                for cell in column[1:]:  # thousands separators, as in the app (3,889.8, not 3889.8)
                    if isinstance(cell.value, bool) or not isinstance(cell.value, (int, float)):
                        continue
                    cell.number_format = "#,##0" if float(cell.value).is_integer() else "#,##0.0#"
                width = max((len(str(c.value)) for c in column if c.value is not None), default=8)
                ws.column_dimensions[column[0].column_letter].width = min(max(10, width + 2), 70)
    return buf.getvalue()


def _now() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()


def charts_html(figures: Sequence[tuple[str, go.Figure]], title: str,
                about: Sequence[tuple[str, str]] = (), include_plotlyjs: bool | str = True) -> str:
    """One self-contained HTML page with every figure (plotly.js embedded once by default)."""
    parts = []
    for i, (heading, fig) in enumerate(figures):
        body = fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs if i == 0 else False,
                           config={"displaylogo": False, "responsive": True})
        parts.append(f"<section><h2>{html.escape(heading)}</h2>{body}</section>")
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in about)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:'Source Sans Pro',Arial,sans-serif;color:#1f2937;margin:24px auto;"
        "max-width:1200px}h1{font-size:26px}h2{font-size:20px;margin-top:36px}"
        "table{border-collapse:collapse}th,td{text-align:left;padding:3px 12px 3px 0;font-size:14px}"
        "th{color:#6b7280;font-weight:600}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table>{rows}</table>{''.join(parts)}</body></html>"
    )


def drop_patient_lines(lines: Iterable[str], patient_ids: Collection[str],
                       patient_level: bool = False) -> tuple[list[str], int]:
    """Lines fit to show (or export) beside aggregates, and how many were dropped.

    A line *names patients* when it lists patient IDs: a token of `patient_ids` after a
    colon or a comma and followed by a comma, "..." or the end of the line (the form of
    the import report's "...: P001, P007, P019 ..." warnings). Such lines are dropped
    unless patient-level views are allowed (`patient_level`); a count followed by a word
    ("5 persons have no year of birth") is not a list and stays.
    """
    kept, dropped = [], 0
    ids = patient_ids if isinstance(patient_ids, (set, frozenset, dict)) else set(map(str, patient_ids))
    for line in lines:
        if not patient_level and any(m.group(1) in ids for m in _LISTED.finditer(str(line))):
            dropped += 1
            continue
        kept.append(line)
    return kept, dropped


_LISTED = re.compile(r"(?:[:,]\s*)([^\s,;:]+?)(?=\s*(?:,|$|\.\.\.|…))")


def screening_log_sql(engine: Engine, scenario: Scenario | None = None) -> str:
    """The screening log query. Building it may store the engine's masks, so build it on
    the thread that owns the connection; running it can happen anywhere with a cursor."""
    extra = tuple(c for c in ("site_id", "country") if c in engine.cohort.present)
    return analysis.screen_log_sql(engine, scenario or Scenario(), extra=extra) + " ORDER BY patient_id"


def screening_log(engine: Engine, scenario: Scenario | None = None, con=None, sql: str | None = None) -> pa.Table:
    """Per patient: site, country, status per criterion and sub-rule, eligible (Arrow).

    From another thread pass `con`, a cursor of the engine's connection, and `sql` from
    `screening_log_sql` built beforehand on the connection's own thread.
    """
    sql = sql or screening_log_sql(engine, scenario)
    table = (con or engine.con).sql(sql).to_arrow_table()
    return _neutralise_arrow(table, [c for c in ("patient_id", "site_id", "country") if c in table.column_names])


def _neutralise_arrow(table: pa.Table, columns) -> pa.Table:
    """Formula-safe text columns (kn026.report.neutralise.neutralise_text), touching only columns that need it."""
    import pyarrow.compute as pc

    for name in columns:
        col = table.column(name)
        if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
            continue
        risky = pc.any(pc.match_substring_regex(col, r"^[=+\-@\t\r]")).as_py()
        if risky:
            fixed = pa.array([neutralise.neutralise_text(v) for v in col.to_pylist()], type=col.type)
            table = table.set_column(table.column_names.index(name), name, fixed)
    return table


def screening_log_csv(engine: Engine, scenario: Scenario | None = None, con=None, sql: str | None = None) -> bytes:
    """The screening log as CSV bytes (fast Arrow writer; one row per patient)."""
    buf = io.BytesIO()
    pacsv.write_csv(screening_log(engine, scenario, con, sql), buf,
                    write_options=pacsv.WriteOptions(quoting_style="needed"))
    return buf.getvalue()


def about_rows(cohort_label: str, n: int, stage: int, scenario: Scenario, protocol, policy: str,
               order: str, suppression: int | None) -> list[tuple[str, str]]:
    """Provenance lines for the export's About sheet / header."""
    changes = scenario.changes(protocol) if not scenario.is_protocol else []
    return [
        ("Protocol", f"{protocol.name} ({protocol.registry})"),
        ("Stage", protocol.stage_name(stage)),
        # the app's source labels already say "(5,000 patients)": say it once
        ("Cohort", cohort_label if f"{n:,} patients" in cohort_label else f"{cohort_label} ({n:,} patients)"),
        ("Scenario", scenario.name if not scenario.is_protocol else "Protocol"),
        ("Changes from protocol", "; ".join(changes) or "none"),
        ("Funnel order", order),
        ("Unknown handling", policy),
        ("Small-cell suppression", f"counts below {suppression} and complementary cells hidden"
         if suppression else "off"),
        ("Generated", _now()),
    ]
