"""The feasibility report as a PowerPoint deck with native, editable charts (python-pptx).

No browser or image renderer is involved: every chart is a PowerPoint chart object
whose data lives in the deck's embedded workbook, so a sponsor can restyle it. Slides:
title and provenance; funnel; per-criterion failures; scenario vs protocol; sites and
countries; recruitment forecast (when the cohort has site histories); then the
report's tables, split over as many slides as they need. Every slide carries the
provenance line (protocol, stage, cohort, scenario, population, date) and the
suppression rule in its footer.

Suppressed values: the data series holds an empty point (never the number); a
separate series named "Suppressed ..." draws a hatched placeholder labelled with the
report's label, whose length is the nearest count a reader already knows bounds it
(funnel) or a fixed stub (other charts), never derived from a hidden value. Every text
that reaches the deck, including chart categories and series names that python-pptx
writes into the embedded workbook, is neutralised (a leading = + - @ would be a
formula there).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from kn026.feasibility.document import Report, Section
from kn026.feasibility.files import context_line, suppression_line
from kn026.report import charts, neutralise

SUPPRESSED_SERIES = "Suppressed (placeholder length, not a count)"
ROWS_PER_SLIDE = 14
TABLE_COLUMNS = {  # the columns a slide has room for (all of them in Excel / HTML)
    "attrition": ["criterion", "label", "strict", "optimistic", "lost_strict", "lost_optimistic", "failed", "unique",
                  "unknown"],
    "deltas": ["criterion", "failed_base", "failed_other", "failed_delta", "unknown_base", "unknown_other",
               "unknown_delta", "unique_base", "unique_other", "unique_delta"],
    "sites": ["site", "country", "screened", "strict", "optimistic", "unknown", "excluded"],
    "countries": ["country", "sites", "screened", "strict", "optimistic", "unknown", "excluded"],
}


def _t(text) -> str:
    return neutralise.neutralise_text(str(text))


def to_pptx(report: Report) -> bytes:
    from pptx import Presentation
    from pptx.util import Inches

    prs = Presentation()
    prs.slide_width, prs.slide_height = Inches(13.333), Inches(7.5)
    deck = _Deck(prs, report)
    deck.title_slide()
    att = report.section("attrition")
    shown = att.table.masked()
    labels = [_t(c if c == "Screened" else f"{c} · {charts.short(report.labels.get(c, ''), 28)}")
              for c in shown["criterion"]]
    policy = report.settings.policy
    strict, unknown, optimistic = (charts._num(shown[c]) for c in ("strict", "unknown_so_far", "optimistic"))
    if policy == "both":
        hidden = np.isnan(strict) | np.isnan(unknown)
        reach = np.maximum(charts._known_bound(optimistic) - np.nan_to_num(strict), 0)
        series = [("Eligible so far, strict", strict, charts.COLORS["strict"]),
                  ("Unknown (optimistic bound)", np.where(np.isnan(strict), np.nan, unknown), charts.COLORS["unknown"])]
    else:
        vals = strict if policy == "strict" else optimistic
        hidden = np.isnan(vals)
        reach = charts._known_bound(vals, optimistic if policy == "strict" else None)
        series = [(f"Eligible so far, {policy}", vals, charts.COLORS[policy])]
    deck.bar_chart("Patients remaining after each criterion", labels, series, stacked=True,
                   placeholder=np.where(hidden, reach, np.nan), note=att.note)
    crit = att.table.masked().iloc[1:]
    if len(crit):
        deck.bar_chart("Patients failing each criterion", labels[1:],
                       [("Fail (marginal)", charts._num(crit["failed"]), charts.COLORS["excluded"]),
                        ("Fail only this (unique)", charts._num(crit["unique"]), charts.COLORS["strict"])],
                       note="Marginal: fails it, whatever else; unique: fails it and nothing else.")
    tot = report.published.tables.get("Scenario vs protocol")
    if tot is not None and report.section("totals") is not None:
        t = tot.masked().set_index("measure")
        cats = [m for m in ("strict", "optimistic", "unknown") if m in t.index]
        names = {"strict": "Eligible, strict", "optimistic": "Eligible, optimistic", "unknown": "Unknown"}
        deck.bar_chart(f"{report.scenario_name} vs the protocol", [names[m] for m in cats],
                       [("Protocol", charts._num(t.loc[cats, "base"]), charts.COLORS["protocol"]),
                        (_t(report.scenario_name)[:60], charts._num(t.loc[cats, "other"]), charts.COLORS["scenario"])],
                       note=report.section("totals").note)
    for key, by, title in (("sites", "site", "Screened and eligible patients per site (25 largest)"),
                           ("countries", "country", "Screened and eligible patients per country")):
        s = report.section(key)
        if s is None:
            continue
        f = s.table.masked().head(25)
        cats = [_t(v) for v in f[by]]
        deck.bar_chart(title, cats, [("Screened", charts._num(f["screened"]), charts.COLORS["screened"]),
                                     ("Eligible, optimistic", charts._num(f["optimistic"]), charts.COLORS["optimistic"]),
                                     ("Eligible, strict", charts._num(f["strict"]), charts.COLORS["strict"])],
                       note=s.note)
    if report.extra.get("curves"):
        deck.forecast_slide(report.extra["curves"], report.section("forecast"))
    for section in report.sections:
        deck.table_slides(section)
    buf = io.BytesIO()
    prs.save(buf)
    return buf.getvalue()


def _rgb(hex_color: str):
    from pptx.dml.color import RGBColor

    return RGBColor.from_string(hex_color.lstrip("#").upper())


class _Deck:
    def __init__(self, prs, report: Report):
        self.prs, self.report = prs, report

    def _slide(self, title: str):
        from pptx.util import Inches, Pt

        slide = self.prs.slides.add_slide(self.prs.slide_layouts[6])  # blank
        box = slide.shapes.add_textbox(Inches(0.4), Inches(0.2), Inches(12.5), Inches(0.7))
        box.text_frame.text = _t(title)
        run = box.text_frame.paragraphs[0].runs[0]
        run.font.size, run.font.bold = Pt(24), True
        foot = slide.shapes.add_textbox(Inches(0.4), Inches(6.85), Inches(12.5), Inches(0.55))
        tf = foot.text_frame
        tf.word_wrap = True
        tf.text = _t(context_line(self.report))
        p = tf.add_paragraph()
        p.text = _t(suppression_line(self.report))
        for para in tf.paragraphs:
            for r in para.runs:
                r.font.size = Pt(9)
                r.font.color.rgb = _rgb(charts.COLORS["muted"])
        return slide

    def title_slide(self) -> None:
        from pptx.util import Inches, Pt

        slide = self._slide(self.report.title)
        rows = self.report.about
        shape = slide.shapes.add_table(len(rows), 2, Inches(0.5), Inches(1.2), Inches(12.3), Inches(0.3 * len(rows)))
        table = shape.table
        table.columns[0].width, table.columns[1].width = Inches(2.6), Inches(9.7)
        for i, (k, v) in enumerate(rows):
            for j, text in enumerate((k, v)):
                cell = table.cell(i, j)
                cell.text = _t(text)
                for para in cell.text_frame.paragraphs:
                    for r in para.runs:
                        r.font.size = Pt(12)

    def bar_chart(self, title: str, categories: list[str], series, stacked: bool = False,
                  placeholder: np.ndarray | None = None, note: str = "") -> None:
        """Horizontal bars, one series per (name, values with NaN where hidden, colour)."""
        from pptx.chart.data import CategoryChartData
        from pptx.enum.chart import XL_CHART_TYPE, XL_LABEL_POSITION, XL_LEGEND_POSITION
        from pptx.enum.dml import MSO_PATTERN
        from pptx.util import Inches, Pt

        slide = self._slide(title)
        if note:
            box = slide.shapes.add_textbox(Inches(0.4), Inches(0.8), Inches(12.5), Inches(0.4))
            box.text_frame.text = _t(note)
            box.text_frame.paragraphs[0].runs[0].font.size = Pt(11)
        data = CategoryChartData()
        data.categories = [_t(c) for c in categories]
        all_vals = np.concatenate([v for _, v, _ in series]) if series else np.array([])
        if placeholder is None:  # a fixed stub wherever a series is hidden (one per hidden point)
            stub = charts.stub_length(all_vals)
            hidden_any = np.zeros(len(categories), bool)
            for _, v, _ in series:
                hidden_any |= np.isnan(v)
            placeholder = np.where(hidden_any, stub, np.nan)
        for name, values, _ in series:
            data.add_series(_t(name), [None if np.isnan(v) else float(v) for v in values])
        has_placeholder = bool(np.any(~np.isnan(placeholder)))
        if has_placeholder:
            data.add_series(SUPPRESSED_SERIES, [None if np.isnan(v) else float(v) for v in placeholder])
        kind = XL_CHART_TYPE.BAR_STACKED if stacked else XL_CHART_TYPE.BAR_CLUSTERED
        frame = slide.shapes.add_chart(kind, Inches(0.4), Inches(1.2), Inches(12.5), Inches(5.6), data)
        chart = frame.chart
        chart.has_legend = True
        chart.legend.position = XL_LEGEND_POSITION.TOP
        chart.legend.include_in_layout = False
        chart.legend.font.size = Pt(10)
        chart.category_axis.reverse_order = True
        chart.category_axis.tick_labels.font.size = Pt(8 if len(categories) > 20 else 10)
        chart.value_axis.tick_labels.font.size = Pt(9)
        chart.value_axis.has_major_gridlines = True
        plot = chart.plots[0]
        plot.gap_width = 40
        if stacked:
            plot.overlap = 100
        for s, (_, _, color) in zip(plot.series, series, strict=False):
            s.format.fill.solid()
            s.format.fill.fore_color.rgb = _rgb(color)
        if has_placeholder:
            ps = plot.series[len(series)]
            ps.format.fill.patterned()
            ps.format.fill.pattern = MSO_PATTERN.WIDE_UPWARD_DIAGONAL
            ps.format.fill.fore_color.rgb = _rgb(charts.COLORS["muted"])
            ps.format.fill.back_color.rgb = _rgb("#FFFFFF")
            ps.format.line.color.rgb = _rgb(charts.COLORS["muted"])
            for j, v in enumerate(placeholder):
                if np.isnan(v):
                    continue
                label = ps.points[j].data_label
                label.has_text_frame = True
                label.text_frame.text = _t(self.report.settings.label)
                label.position = XL_LABEL_POSITION.INSIDE_BASE if stacked else XL_LABEL_POSITION.OUTSIDE_END
                label.font.size = Pt(8)

    def forecast_slide(self, curves: dict, section: Section | None) -> None:
        """Enrolled patients over time: median and 10-90 % band per bound (a native line chart)."""
        from pptx.chart.data import CategoryChartData
        from pptx.enum.chart import XL_CHART_TYPE, XL_LEGEND_POSITION
        from pptx.util import Inches, Pt

        slide = self._slide("Recruitment forecast: patients enrolled over time")
        if section is not None and section.note:
            box = slide.shapes.add_textbox(Inches(0.4), Inches(0.8), Inches(12.5), Inches(0.4))
            box.text_frame.text = _t(section.note)
            box.text_frame.paragraphs[0].runs[0].font.size = Pt(11)
        months = sorted({float(m) for c in curves.values() for m in c["month"]})
        data = CategoryChartData()
        data.categories = [f"{m:g}" for m in months]
        colors = []
        for bound, curve in curves.items():
            by_month = curve.set_index("month")
            for q, what in (("q50", "median"), ("q10", "10 %"), ("q90", "90 %")):
                vals = [float(by_month.loc[m, q]) if m in by_month.index else None for m in months]
                data.add_series(f"{bound.capitalize()}, {what}", vals)
                colors.append((charts.COLORS[bound], q != "q50"))
        frame = slide.shapes.add_chart(XL_CHART_TYPE.LINE, Inches(0.4), Inches(1.2), Inches(12.5), Inches(5.6),
                                       data)
        chart = frame.chart
        chart.has_legend = True
        chart.legend.position = XL_LEGEND_POSITION.TOP
        chart.legend.include_in_layout = False
        chart.category_axis.tick_labels.font.size = Pt(9)
        chart.value_axis.has_major_gridlines = True
        from pptx.enum.dml import MSO_LINE_DASH_STYLE

        for s, (color, dashed) in zip(chart.plots[0].series, colors, strict=True):
            s.smooth = False
            s.format.line.color.rgb = _rgb(color)
            s.format.line.width = Pt(1.25 if dashed else 2.5)
            if dashed:
                s.format.line.dash_style = MSO_LINE_DASH_STYLE.DASH
            s.marker.style = None

    def table_slides(self, section: Section) -> None:
        from pptx.util import Inches, Pt

        frame = section.display(self.report.settings.label)
        keep = [section.columns[c] for c in TABLE_COLUMNS.get(section.key, list(section.columns))
                if c in section.columns]
        frame = frame[keep]
        chunks = max(1, -(-len(frame) // ROWS_PER_SLIDE))
        for part in range(chunks):
            rows = frame.iloc[part * ROWS_PER_SLIDE:(part + 1) * ROWS_PER_SLIDE]
            suffix = f" ({part + 1}/{chunks})" if chunks > 1 else ""
            slide = self._slide(section.title + suffix)
            shape = slide.shapes.add_table(len(rows) + 1, len(keep), Inches(0.4), Inches(1.0), Inches(12.5),
                                           Inches(0.32 * (len(rows) + 1)))
            table = shape.table
            for j, col in enumerate(keep):
                table.cell(0, j).text = _t(col)
            for i, row in enumerate(rows.itertuples(index=False), start=1):
                for j, v in enumerate(row):
                    table.cell(i, j).text = _t(_fmt(v))
            for cell in (table.cell(i, j) for i in range(len(rows) + 1) for j in range(len(keep))):
                for para in cell.text_frame.paragraphs:
                    for r in para.runs:
                        r.font.size = Pt(9)


def _fmt(v) -> str:
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.2f}"
    return str(v)
