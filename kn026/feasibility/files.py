"""The feasibility report as an Excel workbook or a self-contained HTML page.

Both hold the same sections as `kn026.feasibility.document.Report`: a title block on every sheet /
section (protocol, stage, cohort, scenario, population, date, suppression), the table
with hidden cells written as the report's label (never the number), and in HTML the
plotly charts drawn from the same suppressed tables (plotly.js inline: the page opens
offline, no CDN). Text that a spreadsheet would run as a formula is neutralised
(kn026.report.neutralise.neutralise_text) in table cells, titles and provenance lines alike, and
every string in the HTML is escaped.
"""

from __future__ import annotations

import html
import io

import pandas as pd
import plotly.graph_objects as go

from kn026.feasibility.document import Report, Section
from kn026.report import charts, neutralise

HEADER_ROW = 5  # 1-based row of the table header on every section sheet


def context_line(report: Report) -> str:
    """One line of provenance for a title block or a slide footer."""
    about = dict(report.about)
    parts = [about.get("Protocol", ""), about.get("Stage", ""), about.get("Cohort", ""),
             f"scenario: {about.get('Scenario', '')}", f"population: {about.get('Population', '')}",
             about.get("Generated", "")]
    return " · ".join(p for p in parts if p)


def suppression_line(report: Report) -> str:
    if not report.k:
        return "Small-cell suppression: off."
    return (f"“{report.settings.label}”: a count below {report.k}, or a count hidden so that no hidden count "
            f"can be worked out from the others (small-cell suppression, threshold {report.k}).")


def sheet_name(section: Section) -> str:
    return {"attrition": "Attrition", "combinations": "Combinations", "totals": "Scenario vs protocol",
            "deltas": "Per-criterion changes", "sites": "Sites", "countries": "Countries"}.get(section.key,
                                                                                            section.key)[:31]


def to_xlsx(report: Report) -> bytes:
    """An .xlsx workbook: "About" then one sheet per section (title block, then the table from row 5)."""
    from openpyxl import Workbook
    from openpyxl.styles import Font, PatternFill

    safe = neutralise.neutralise_text
    wb = Workbook()
    about = wb.active
    about.title = "About"
    about.append([safe(report.title)])
    about["A1"].font = Font(bold=True, size=14)
    about.append([])
    about.append(["Item", "Value"])
    for item, value in report.about:
        about.append([safe(item), safe(str(value))])
    about.append([])
    about.append([safe(suppression_line(report))])
    about.column_dimensions["A"].width = 26
    about.column_dimensions["B"].width = 100
    grey = PatternFill("solid", fgColor="EEEEEE")
    for section in report.sections:
        ws = wb.create_sheet(sheet_name(section))
        ws.append([safe(section.title)])
        ws["A1"].font = Font(bold=True, size=13)
        ws.append([safe(context_line(report))])
        ws.append([safe(suppression_line(report) + (" " + section.note if section.note else ""))])
        ws.append([])
        frame = section.display(report.settings.label)
        ws.append([str(c) for c in frame.columns])
        for cell in ws[HEADER_ROW]:
            cell.font = Font(bold=True)
        for row in frame.itertuples(index=False):
            ws.append([_cell(v) for v in row])
        for row in ws.iter_rows(min_row=HEADER_ROW + 1):
            for cell in row:
                if cell.value == report.settings.label:
                    cell.fill = grey
        ws.freeze_panes = f"A{HEADER_ROW + 1}"
        for i, col in enumerate(frame.columns, start=1):
            width = max([len(str(col))] + [len(str(v)) for v in frame.iloc[:, i - 1]])
            ws.column_dimensions[ws.cell(HEADER_ROW, i).column_letter].width = min(max(9, width + 2), 60)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _cell(value):
    """A value openpyxl writes as data: numbers as numbers, missing as empty, text neutralised."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, str):
        return neutralise.neutralise_text(value)
    return value


# --------------------------------------------------------------------------- HTML


def figures(report: Report) -> dict[str, go.Figure]:
    """The plotly charts of the report, keyed by section, from the suppressed tables only."""
    out: dict[str, go.Figure] = {}
    s = report.section("attrition")
    out["attrition"] = charts.funnel_figure(s.table.masked(), report.labels, report.texts, report.settings.policy,
                                            title=None)
    s = report.section("combinations")
    if s is not None:
        out["combinations"] = charts.combinations_figure(s.table.masked(), list(report.order), report.labels,
                                                         report.settings.bound, title="")
    s = report.section("totals")
    if s is not None:
        frame = report.published.tables["Scenario vs protocol"].masked()  # measure keys, not display names
        out["totals"] = charts.compare_figure(frame, report.scenario_name, title="")
    s = report.section("deltas")
    if s is not None:
        shown = s.table.masked()
        if (charts._num(shown["failed_delta"]) != 0).any():
            out["deltas"] = charts.deltas_figure(shown, report.labels, title="")
    for key, by in (("sites", "site"), ("countries", "country")):
        s = report.section(key)
        if s is not None:
            shown = s.table.masked()
            if key == "sites":
                shown = shown.assign(site=[html.escape(str(v)) for v in shown["site"]])
            else:
                shown = shown.assign(country=[html.escape(str(v)) for v in shown["country"]])
            out[key] = charts.sites_figure(shown, key=by, title="", top=25 if key == "sites" else None)
    return out


def table_html(section: Section, label: str) -> str:
    """An HTML table of the section; hidden cells carry class "suppressed" and the label."""
    frame = section.display(label)
    hidden = section.table.hidden[list(section.columns)].to_numpy()
    head = "".join(f"<th scope='col'>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cells = []
        for j, v in enumerate(row):
            text = "" if v is None or (not isinstance(v, str) and pd.isna(v)) else \
                f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
            cls = " class='suppressed'" if hidden[i, j] else " class='num'" if isinstance(v, (int, float)) else ""
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table class='data' data-section='{html.escape(section.key)}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def to_html(report: Report, include_plotlyjs: bool | str = True) -> str:
    """One self-contained page: title, provenance, then per section its chart and table."""
    figs = figures(report)
    parts = []
    first = True
    for section in report.sections:
        chart = ""
        if section.key in figs:
            chart = figs[section.key].to_html(full_html=False, include_plotlyjs=include_plotlyjs if first else False,
                                              config={"displaylogo": False, "responsive": True})
            first = False
        note = f"<p class='note'>{html.escape(section.note)}</p>" if section.note else ""
        parts.append(f"<section id='{html.escape(section.key)}'><h2>{html.escape(section.title)}</h2>"
                     f"<p class='context'>{html.escape(context_line(report))}</p>{note}{chart}"
                     f"<div class='scroll'>{table_html(section, report.settings.label)}</div></section>")
    about = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in report.about)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(report.title)}</h1><table class='about'>{about}</table>"
        f"<p class='legend'><span class='suppressed'>{html.escape(report.settings.label)}</span> "
        f"{html.escape(suppression_line(report))}</p>{''.join(parts)}</body></html>"
    )


_CSS = (
    "body{font-family:'Source Sans Pro',Arial,sans-serif;color:#1f2937;margin:24px auto;max-width:1200px;"
    "padding:0 16px}h1{font-size:26px}h2{font-size:20px;margin-top:40px;border-top:1px solid #e6e9ee;"
    "padding-top:16px}.context,.note,.legend{color:#6b7280;font-size:13px;margin:4px 0}"
    "table{border-collapse:collapse;font-size:13px}.about th,.about td{text-align:left;padding:2px 14px 2px 0}"
    ".about th{color:#6b7280;font-weight:600}.scroll{overflow-x:auto;margin-top:8px}"
    ".data th{background:#f3f5f8;text-align:left;padding:4px 8px;border-bottom:1px solid #d5dae1;"
    "position:sticky;top:0}.data td{padding:3px 8px;border-bottom:1px solid #eef0f3;white-space:nowrap}"
    ".data td.num{text-align:right;font-variant-numeric:tabular-nums}"
    "td.suppressed,span.suppressed{color:#6b7280;font-style:italic;text-align:right;"
    "background:repeating-linear-gradient(135deg,#f3f4f6 0,#f3f4f6 4px,#ffffff 4px,#ffffff 8px)}"
    "span.suppressed{padding:0 6px;border:1px solid #d1d5db}"
)
