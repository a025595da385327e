"""Uploads in (bytes -> table) and downloads out (CSV, Excel, HTML, screening log)."""

from __future__ import annotations

import io

import openpyxl
import pandas as pd
import pytest

from kn026.base.table import connect
from kn026.core import analysis
from kn026.core.criteria import load_protocol
from kn026.core.engine import Engine
from kn026.core.scenario import Scenario
from kn026.ingest import reader, synth
from kn026.ingest.cohort import load_cohort
from kn026.ingest.problems import CohortError
from kn026.report import charts
from kn026.report import export as X
from kn026.report import patients as P
from kn026.report import suppression as sp

N = 1_500


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synth.generate(N, 4, sites=8)


@pytest.fixture(scope="module")
def engine(frame) -> Engine:
    return Engine(load_cohort(frame, connect()), load_protocol(), 1)


# --------------------------------------------------------------------------- uploads


def test_csv_upload_reads_text_and_keeps_every_row(frame):
    data = frame.to_csv(index=False).encode()
    table = reader.read_cohort_bytes("cohort.csv", data)
    assert table.num_rows == N and set(table.column_names) == set(frame.columns)
    cohort = load_cohort(table, connect())
    assert cohort.n == N and "her2_ish" in cohort.present


def test_csv_with_bom_and_semicolons():
    text = "\ufeffpatient_id;age_years;sex\nA;40;female\nB;;M\n"
    table = reader.read_cohort_bytes("x.csv", text.encode("utf-8"))
    assert table.column_names == ["patient_id", "age_years", "sex"]
    cohort = load_cohort(table, connect())
    ages = cohort.con.execute("SELECT age_years FROM cohort ORDER BY patient_id").fetchall()
    assert ages == [(40.0,), (None,)]


def test_parquet_and_excel_uploads(frame):
    buf = io.BytesIO()
    frame.head(40).to_parquet(buf, index=False)
    assert reader.read_cohort_bytes("c.parquet", buf.getvalue()).num_rows == 40
    xbuf = io.BytesIO()
    frame.head(30).astype(object).where(frame.head(30).notna(), None).to_excel(xbuf, index=False)
    excel = reader.read_cohort_bytes("c.xlsx", xbuf.getvalue())
    assert len(excel) == 30 and load_cohort(excel, connect()).n == 30


@pytest.mark.parametrize("name, data", [
    ("empty.csv", b""),
    ("notes.docx", b"hello"),
    ("broken.parquet", b"PAR1 not really"),
    ("noheader.csv", b"\n\n"),
    ("picture.csv", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64),
    ("big.csv", b"patient_id\n" + b"P1\n" * 100),
])
def test_unreadable_uploads_raise_a_readable_problem(name, data):
    with pytest.raises(CohortError) as err:
        reader.read_cohort_bytes(name, data, max_bytes=200)
    problem = err.value.problems[0]
    assert problem.column == "file" and problem.row is None
    assert len(problem.message) > 15 and "Traceback" not in problem.message


def test_exports_neutralise_spreadsheet_formulas():
    frame = pd.DataFrame({"site": ["=HYPERLINK(\"x\")", "S2"], "n": [-5, 3]})
    out = X.table_for_export(frame, {})
    assert out["site"].tolist() == ["'=HYPERLINK(\"x\")", "S2"] and out["n"].tolist() == [-5, 3]
    cohort = pd.DataFrame({"patient_id": ["=1+1", "P2"], "site_id": ["@cmd", "S1"], "age_years": [40, 50]})
    eng = Engine(load_cohort(cohort, connect()), load_protocol(), 1)
    log = X.screening_log(eng)
    assert log.column("patient_id").to_pylist() == ["'=1+1", "P2"]
    assert log.column("site_id").to_pylist() == ["'@cmd", "S1"]


# --------------------------------------------------------------------------- tables


def test_attrition_frame_combines_funnel_and_statistics(engine):
    res = analysis.run(engine)
    labels = {c.id: P.criterion_label(c, 1) for c in engine.protocol.criteria}
    kinds = {c.id: c.kind for c in engine.protocol.criteria}
    f = X.attrition_frame(res, labels, kinds)
    assert list(f.columns) == list(X.ATTRITION_COLUMNS)
    assert f["criterion"].iloc[0] == "Screened" and f["strict"].iloc[0] == N
    assert pd.isna(f["failed"].iloc[0])
    stats = res.stats.set_index("criterion")
    row = f.set_index("criterion").loc["INCL05"]
    assert row["failed"] == stats.loc["INCL05", "failed"] and row["kind"] == "inclusion"
    assert row["unknown"] == stats.loc["INCL05", "unknown"]  # unknown on the criterion itself
    assert f["unknown_so_far"].iloc[-1] == res.totals["unknown"]
    assert f["strict"].iloc[-1] == res.totals["strict"]


def test_csv_and_excel_downloads_label_hidden_cells(engine):
    res = analysis.run(engine)
    f = X.attrition_frame(res, {}, {})
    table = sp.suppress_attrition(f, 5)
    out = X.table_for_export(table, X.ATTRITION_COLUMNS)
    assert "Remaining (strict)" in out.columns
    csv = X.csv_bytes(out)
    assert csv.startswith("\ufeff".encode())
    back = pd.read_csv(io.BytesIO(csv), encoding="utf-8-sig")
    assert len(back) == len(f)
    if table.n_hidden:
        assert "suppressed" in csv.decode("utf-8-sig")
    for i, (col, hidden) in enumerate(zip(table.hidden.columns, table.hidden.to_numpy().T, strict=True)):
        assert hidden.sum() == (out.iloc[:, i] == "suppressed").sum(), col
    xlsx = X.excel_bytes({"Attrition": out, "Other": pd.DataFrame({"a": [1]})},
                         about=[("Protocol", "KN026-001"), ("Stage", "1")])
    book = openpyxl.load_workbook(io.BytesIO(xlsx))
    assert book.sheetnames == ["About", "Attrition", "Other"]
    assert book["About"]["A2"].value == "Protocol" and book["Attrition"]["A1"].value == "Step"
    assert book["Attrition"].max_row == len(f) + 1


def test_charts_html_embeds_plotly_once():
    fig = charts.compare_figure(pd.DataFrame({"measure": ["screened", "strict", "optimistic", "unknown"],
                                              "base": [10, 5, 6, 1], "other": [10, 4, 6, 2],
                                              "delta": [0, -1, 0, 1]}), "S")
    html = X.charts_html([("One", fig), ("Two & more", fig)], "Title <x>", about=[("Stage", "1")])
    assert html.startswith("<!DOCTYPE html>") and html.count("<section>") == 2
    assert html.count("plotly.js v") <= 2 and "Two &amp; more" in html and "Title &lt;x&gt;" in html
    small = X.charts_html([("One", fig)], "t", include_plotlyjs="cdn")
    assert "cdn.plot.ly" in small and len(small) < len(html) / 10


def test_screening_log(engine):
    scenario = Scenario("s", disabled=frozenset({"EXCL20"}))
    data = X.screening_log_csv(engine, scenario)
    log = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    assert len(log) == N and list(log.columns[:3]) == ["patient_id", "site_id", "country"]
    assert {"INCL07", "INCL07.ANC", "EXCL20", "eligible"} <= set(log.columns)
    assert log["patient_id"].is_monotonic_increasing
    totals = analysis.run(engine, scenario).totals
    counts = log["eligible"].value_counts()
    assert counts.get("yes", 0) == totals["strict"] and counts.get("unknown", 0) == totals["unknown"]
    assert set(log["INCL07.ANC"]) <= {"pass", "fail", "unknown"}
    # another cursor of the same database (the download runs on its own thread)
    sql = X.screening_log_sql(engine, scenario)
    cur = engine.con.cursor()
    assert X.screening_log(engine, scenario, con=cur, sql=sql).num_rows == N
    cur.close()


def test_about_rows():
    protocol = load_protocol()
    rows = dict(X.about_rows("Built-in", 20000, 1, Scenario("S", overrides={"INCL01": {"min_age": 21}}),
                             protocol, "Both", "Protocol order", 5))
    assert rows["Cohort"] == "Built-in (20,000 patients)"
    assert "INCL01 min_age: 18 -> 21" in rows["Changes from protocol"]
    assert rows["Small-cell suppression"].startswith("counts below 5")


def test_every_table_download_neutralises_formulas():
    frame = pd.DataFrame({"site": ["=HYPERLINK(\"http://x\")", "+1+1", "-5", "S2"], "n": [1, 2, -3, 4]})
    text = X.csv_bytes(frame).decode("utf-8-sig")
    assert "'=HYPERLINK" in text and "'+1+1" in text and "\n-5," in text  # a plain number stays a number
    data = X.excel_bytes({"=cmd": frame}, [("Scenario", "@SUM(A1)")])
    wb = openpyxl.load_workbook(io.BytesIO(data))
    assert wb["About"]["B2"].value == "'@SUM(A1)"
    ws = wb.worksheets[1]
    assert ws["A2"].value.startswith("'=") and ws["A2"].data_type == "s" and ws["B4"].value == -3
    assert X.safe_view(frame)["site"].tolist()[:2] == ["'=HYPERLINK(\"http://x\")", "'+1+1"]


def test_patient_naming_lines_are_dropped_unless_patient_level_views_are_allowed():
    lines = ["carboplatin: 3 patients have administrations whose dose cannot be computed; ...: P0012, P0015, P0099",
             "drug X: 12 patients ...: P0003 ...",
             "5 persons have no usable year of birth; age_years is NULL for them",
             "concept 5 Neutrophils (5)"]
    ids = {"P0012", "P0015", "P0099", "P0003", "5"}
    kept, dropped = X.drop_patient_lines(lines, ids)
    assert kept == lines[2:] and dropped == 2
    assert X.drop_patient_lines(lines, ids, patient_level=True) == (lines, 0)
