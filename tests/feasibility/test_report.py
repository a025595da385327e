"""The feasibility report: `python -m kn026 report` to each format, bad arguments, export safety,
and a look at the HTML report in headless Chromium."""

from __future__ import annotations

import io
import re
from pathlib import Path

import openpyxl
import pytest

from kn026.base.table import connect
from kn026.cli import main as cli
from kn026.core.criteria import load_protocol
from kn026.core.engine import Engine
from kn026.core.scenario import load_scenario
from kn026.feasibility import report
from kn026.ingest import synth
from kn026.ingest.cohort import load_cohort

ROOT = Path(__file__).resolve().parents[2]

EVIL = '=HYPERLINK("http://example.invalid","x")'


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 900-patient cohort with one site called like a formula, and a scenario named like one."""
    d = tmp_path_factory.mktemp("report")
    frame = synth.generate(900, 5, sites=8)
    frame.loc[frame["site_id"] == frame["site_id"].iloc[0], "site_id"] = "@SUM(1+1)"
    cohort = d / "cohort.parquet"
    frame.to_parquet(cohort)
    scenario = d / "scenario.yaml"
    scenario.write_text(f"scenario: '{EVIL}'\nprotocol: KN026-001\nparameters:\n  INCL07.CRCL: {{min: 50}}\n",
                        encoding="utf-8")
    return d, cohort, scenario


def _run(args, capsys):
    code = cli.main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["xlsx", "html", "pptx"])
def test_report_command_writes_each_format(files, fmt, capsys):
    d, cohort, scenario = files
    out = d / f"r.{fmt}"
    code, err = _run(["report", "--cohort", str(cohort), "--stage", "1", "--scenario", str(scenario),
                      "--order", "EXCL03,INCL07", "--disable", "INCL07.DBIL", "--suppress-below", "11",
                      "--out", str(out)], capsys)
    assert code == 0, err
    assert "cells suppressed (threshold 11" in err
    data = out.read_bytes()
    if fmt == "xlsx":
        wb = openpyxl.load_workbook(io.BytesIO(data))
        assert wb.sheetnames[:2] == ["About", "Attrition"] and {"Sites", "Countries", "Scenario vs protocol",
                                                                "Per-criterion changes"} <= set(wb.sheetnames)
        about = {r[0]: r[1] for r in wb["About"].iter_rows(min_row=4, values_only=True) if r and r[0]}
        assert about["Scenario"] == "'" + EVIL and about["Population"] == "all patients"
        assert about["Cohort"] == "cohort.parquet (900 patients)" and about["Funnel order"] == "as given"
        assert "below 11" in about["Small-cell suppression"]
        att = wb["Attrition"]
        assert att["A1"].value.startswith("Sequential attrition") and " · Stage 1 (open-label) · " in att["A2"].value
        header = [c.value for c in att[5]]
        assert header[:2] == ["Step", "Criterion"] and att["B7"].value == "EXCL03"  # the order asked for
        for ws in wb.worksheets:  # nothing a spreadsheet would run
            for row in ws.iter_rows():
                for c in row:
                    assert c.data_type != "f", (ws.title, c.coordinate, c.value)
        sites = [r[0] for r in wb["Sites"].iter_rows(min_row=6, values_only=True)]
        assert "'@SUM(1+1)" in sites
    elif fmt == "html":
        text = data.decode("utf-8")
        tags = re.findall(r"<(?:script|link)\b[^>]*>", text)
        assert tags and not [t for t in tags if re.search(r"\b(src|href)=", t)]  # plotly.js inline: opens offline
        assert text.count("<table class='data'") >= 6 and "class='suppressed'" in text
        assert "=HYPERLINK(&quot;http://example.invalid&quot;" in text and EVIL not in text  # escaped
    else:
        from pptx import Presentation

        prs = Presentation(io.BytesIO(data))
        charts = [s.chart for slide in prs.slides for s in slide.shapes if s.has_chart]
        assert len(charts) >= 5  # funnel, per criterion, comparison, sites, countries (+ forecast)
        texts = [s.text_frame.text for slide in prs.slides for s in slide.shapes if s.has_text_frame]
        assert any(t.startswith("Patients remaining after each criterion") for t in texts)
        assert all("cohort.parquet (900 patients)" in slide.shapes[1].text_frame.text for slide in prs.slides)
        for chart in charts:  # the embedded workbooks behind the charts hold no formula either
            wb = openpyxl.load_workbook(io.BytesIO(chart.part.chart_workbook.xlsx_part.blob))
            for row in wb.active.iter_rows():
                for c in row:
                    assert c.data_type != "f", c.value
        cells = [c.text for slide in prs.slides for s in slide.shapes if s.has_table
                 for r in s.table.rows for c in r.cells]
        assert "'@SUM(1+1)" in cells and "@SUM(1+1)" not in cells


@pytest.mark.parametrize("args, message", [
    (["--out", "r.docx"], "must end in .xlsx, .html or .pptx"),
    (["--out", "r.xlsx", "--suppress-below", "-3"], "must be >= 0"),
    (["--out", "r.xlsx", "--suppress-below", "often"], "unknown suppression threshold"),
    (["--out", "r.xlsx", "--order", "INCL01,INCL01"], "more than once"),
    (["--out", "r.xlsx", "--order", "NOPE"], "unknown criterion ID"),
    (["--out", "r.xlsx", "--disable", "NOPE"], "unknown criterion ID 'NOPE'"),
    (["--out", "r.xlsx", "--approach", "0"], "--approach must be a percentage"),
    (["--out", "missing_folder/r.xlsx"], "does not exist"),
])
def test_bad_arguments_exit_2_with_a_message(files, args, message, capsys, monkeypatch):
    d, cohort, _ = files
    monkeypatch.chdir(d)
    code, err = _run(["report", "--cohort", str(cohort), "--stage", "1", *args], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["report", "--stage", "1", "--out", "r.xlsx"])
    assert e.value.code == 2 and "--cohort" in capsys.readouterr().err


def test_suppression_off_and_the_api(files):
    d, cohort, scenario = files
    protocol = load_protocol()
    engine = Engine(load_cohort(cohort, connect()), protocol, 2)
    rep = report.build(engine, load_scenario(scenario, protocol), report.Settings(k=0, population="site A only"),
                       "c.parquet")
    assert rep.k == 0 and rep.published.n_hidden == 0
    assert dict(rep.about)["Small-cell suppression"] == "off" and dict(rep.about)["Population"] == "site A only"
    with pytest.raises(ValueError, match="unknown report format"):
        report.render(rep, "pdf")


def test_html_report_in_headless_chromium(tmp_path, chromium):
    """Render the built-in cohort's report (k = 5) and keep a screenshot for a human to look at."""
    from tests.browser_support import ARTIFACTS

    protocol = load_protocol()
    engine = Engine(load_cohort(ROOT / "data" / "builtin_cohort.parquet", connect()), protocol, 1)
    rep = report.build(engine, load_scenario(ROOT / "data" / "scenario_crcl50.yaml", protocol),
                       report.Settings(k=5), "builtin_cohort.parquet")
    page_file = tmp_path / "report.html"
    page_file.write_bytes(report.render(rep, "html"))
    ARTIFACTS.mkdir(exist_ok=True)
    page = chromium.new_page(viewport={"width": 1280, "height": 1500})
    try:
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_file.as_uri())
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
        assert not errors
        assert page.locator(".js-plotly-plot").count() >= 6  # every chart drew
        assert page.locator("td.suppressed").count() == sum(
            int(s.table.hidden[list(s.columns)].to_numpy().sum()) for s in rep.sections)
        # the funnel labels suppressed steps on the chart itself
        assert page.locator("#attrition .js-plotly-plot text", has_text="suppressed").count() >= 1
        page.screenshot(path=str(ARTIFACTS / "report_top.png"))
        page.locator("#sites").scroll_into_view_if_needed()
        page.locator("#sites").screenshot(path=str(ARTIFACTS / "report_sites.png"))
    finally:
        page.close()
