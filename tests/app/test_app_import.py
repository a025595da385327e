"""AppTest: the data-loading integration (issues 6 and 7) in the running app.

* every session connection is locked down once its cohort is loaded (built-in, upload,
  generated, OMOP, mapped): no file reads or writes, no ATTACH, no SET; the app still
  screens, changes thresholds, exports and runs custom rules afterwards;
* "OMOP CDM (zip upload)": a zip uploaded on the Cohort page is imported in memory and
  its import report is shown (the planted persons of tests/fixtures/omop always; the
  Synthea sample when ../shared/data/omop is present);
* "CSV / Excel with mapping": a foreign CSV (haemoglobin in g/dL, "Female", "IHC 3+")
  is mapped, previewed, loaded and converted; the mapping YAML round-trips;
* renamed binaries, HTML pages and oversize files are refused with a message.

Streamlit 1.67's AppTest drives st.file_uploader (`set_value((name, bytes, mime))`), so
the real widgets are used; tests/app/test_browser_import.py repeats the main paths in Chromium.
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from kn026.core import analysis
from kn026.core.custom import CustomRule
from kn026.core.scenario import Scenario
from kn026.ingest import synth
from kn026.report import export
from kn026.rules import sandbox
from tests import app_support
from tests.app_support import ROOT, go, ok, open_expander, sidebar_radio
from tests.shared_data import OMOP_SAMPLE
from ui import session, sources, wizard

TIMEOUT = 180
FIXTURES = ROOT / "tests" / "fixtures" / "omop"
SAMPLE = OMOP_SAMPLE
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
HTML = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Session expired</body></html>"

needs_sample = pytest.mark.skipif(not SAMPLE.is_file(), reason=f"OMOP sample {SAMPLE} is not present "
                                  "(CI keeps a read-only copy of shared/ beside the repository)")


# --------------------------------------------------------------------------- helpers


def new_app() -> AppTest:
    return app_support.new_app(timeout=TIMEOUT)


def uploader(at: AppTest, key: str):
    found = [u for u in at.file_uploader if u.key == key]
    assert found, f"no file uploader {key!r}: {[u.key for u in at.file_uploader]}"
    return found[0]


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "error", "success", "info", "warning", "subheader")
             for e in at.get(kind)]
    return "\n".join(str(p) for p in parts)


def errors(at: AppTest) -> str:
    return "\n".join(e.value for e in at.error)


def bundle(at: AppTest):
    return at.session_state[session.K_DATA]


def fixture_zip(with_ancestor: bool = False) -> bytes:
    """The planted persons of tests/fixtures/omop (six persons, CDM tables as CSV) as a zip, in memory."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(FIXTURES.glob("*.csv")):
            if path.name == "CONCEPT_ANCESTOR.csv" and not with_ancestor:
                continue
            zf.writestr(f"cdm/{path.name}", path.read_bytes())
    return buf.getvalue()


def choose(at: AppTest, source: str) -> AppTest:
    """Pick a source in the sidebar; the wizard sources open the Cohort page's Load data tab."""
    sidebar_radio(at, "Cohort").set_value(source).run()
    ok(at)
    if source in sources.WIZARD_SOURCES:
        assert at.title[0].value == "Cohort"
        assert at.session_state[session.tab_key("cohort")] == "Load data"
    return at


def import_omop(at: AppTest, name: str, data: bytes) -> AppTest:
    uploader(at, sources.OMOP_ZIP_KEY).set_value((name, data, "application/zip")).run()
    ok(at)
    at.button(key=session.W + "omop_import").click().run()
    ok(at)
    return at


def assert_locked(con) -> None:
    """The session connection refuses file access, writes, ATTACH and SET."""
    assert sandbox.is_locked(con)
    assert sandbox.setting(con, "enable_external_access").lower() == "false"
    for sql in ("SELECT * FROM read_csv('/etc/passwd')",
                "SELECT * FROM read_text('/etc/hostname')",
                "SELECT * FROM '/etc/passwd'",
                "COPY (SELECT 1 AS x) TO '/tmp/kn026_lockdown_probe.csv'",
                "COPY (SELECT * FROM cohort) TO '/tmp/kn026_lockdown_probe.parquet' (FORMAT parquet)",
                "ATTACH '/tmp/kn026_lockdown_probe.duckdb' AS probe",
                "SET enable_external_access = true",
                "SET lock_configuration = false",
                "SET memory_limit = '100GB'",
                "INSTALL httpfs"):
        with pytest.raises(duckdb.Error):
            con.execute(sql).fetchall()
    for leftover in ("/tmp/kn026_lockdown_probe.csv", "/tmp/kn026_lockdown_probe.parquet",
                     "/tmp/kn026_lockdown_probe.duckdb"):
        assert not Path(leftover).exists(), leftover
    # a cursor (the screening-log export uses one) is locked too
    with pytest.raises(duckdb.Error):
        con.cursor().execute("SELECT * FROM read_csv('/etc/passwd')").fetchall()
    assert con.execute("SELECT count(*) FROM cohort").fetchall()[0][0] > 0


def foreign_frame() -> pd.DataFrame:
    """A site export: own headers, haemoglobin in g/dL, creatinine in mg/dL, spelled-out categories."""
    base = synth.generate(60, 11, sites=3)
    return pd.DataFrame({
        "Subject No.": base["patient_id"],
        "Site": base["site_id"],
        "Date of screening": base["screening_date"].astype(str),
        "AGE": base["age_years"],
        "Gender": base["sex"].map({"F": "Female", "M": "male"}),
        "HER2 IHC score": base["her2_ihc"].map(lambda v: "" if pd.isna(v) else f"IHC {int(v)}+"),
        "Hb (g/dL)": (base["hemoglobin_g_l"] / 10).round(2),
        "Creat_mgdl": (base["creatinine_umol_l"] / 88.4).round(3),
        "ECOG PS": base["ecog"],
        "Comments": "none",
    })


# --------------------------------------------------------------------------- lockdown


def test_builtin_session_connection_is_locked_and_the_app_still_works():
    at = new_app()
    b = bundle(at)
    assert b.kind == "builtin"
    assert_locked(b.con)
    screened = at.metric[0].value
    assert screened == "20,000"
    # threshold change on the Criteria page (re-evaluates one rule on the locked connection)
    go(at, "pages/criteria.py")
    open_expander(at, "INCL07")
    crcl = next(w for w in at.number_input if w.key and w.key.startswith(session.W + "param.INCL07.CRCL.min@"))
    crcl.set_value(60.0).run()
    ok(at)
    assert at.session_state[session.K_ACTIVE] == "My scenario"
    go(at, "pages/funnel.py")
    assert at.metric[0].value == "20,000"
    # exports on the locked connection: screening log (own cursor), attrition CSV
    eng = bundle(at).engines[1]
    log = export.screening_log_csv(eng, at.session_state[session.K_SCENARIOS]["My scenario"])
    assert log.count(b"\n") == 20_001
    # a custom rule through analysis.engine_for on the locked connection, and in the app
    rule = CustomRule("CUST01", "exclusion", "Haemoglobin below a limit", "hemoglobin_g_l < :limit",
                      {"limit": {"default": 100, "unit": "g/L"}})
    scen = Scenario("With a custom rule", "", {}, frozenset(), (), custom=(rule,))
    extended = analysis.engine_for(eng, scen)
    assert "CUST01" in {c.id for c in extended.protocol.criteria}
    plan = analysis.plan(eng, scen)
    assert "CUST01" in plan.ids
    at.session_state[session.K_SCENARIOS]["With a custom rule"] = scen
    at.session_state[session.K_ACTIVE] = "With a custom rule"
    at.run()
    ok(at)
    assert "With a custom rule" in texts(at)
    assert_locked(bundle(at).con)  # still locked after all of it


def test_generated_and_uploaded_connections_are_locked():
    at = new_app()
    sidebar_radio(at, "Cohort").set_value("generate").run()
    at.sidebar.number_input(key=session.W + "gen_n").set_value(2_000)
    at.sidebar.button[0].click().run()
    ok(at)
    assert bundle(at).kind == "generated" and bundle(at).cohort.n == 2_000
    assert_locked(bundle(at).con)
    old = bundle(at).con
    df = synth.generate(300, 5, sites=6)
    sidebar_radio(at, "Cohort").set_value("upload").run()
    at.sidebar.file_uploader[0].set_value(("small.csv", df.to_csv(index=False).encode(), "text/csv")).run()
    ok(at)
    assert bundle(at).kind == "upload" and bundle(at).cohort.n == 300
    assert_locked(bundle(at).con)
    with pytest.raises(duckdb.Error):  # the previous session connection was closed
        old.execute("SELECT 1").fetchall()


# --------------------------------------------------------------------------- OMOP zip


def test_omop_zip_upload_imports_the_planted_persons_with_a_report():
    at = new_app()
    choose(at, "omop")
    assert "Import an OMOP CDM (zip)" in texts(at)
    assert at.button(key=session.W + "omop_import").disabled  # no zip yet
    import_omop(at, "planted_cdm.zip", fixture_zip())
    b = bundle(at)
    assert b.kind == "omop" and b.cohort.n == 6, texts(at)
    assert_locked(b.con)
    assert at.session_state[session.K_SUPPRESS]  # uploaded data: suppression on
    # the report opens: per dictionary column, patients with a value and the concepts
    assert at.session_state[session.tab_key("cohort")] == "Import report"
    report = b.report
    hb = report.column("hemoglobin_g_l")
    assert hb.status == "derived" and hb.n_value >= 1
    assert report.column("primary_site").n_value == 6
    assert any("Adenocarcinoma of stomach" in name for _, name, _ in report.column("primary_site").concepts)
    table = next(d.value for d in at.dataframe if "concepts" in d.value.columns)
    assert {"column", "with_value", "concepts"} <= set(table.columns)
    row = table.set_index("column").loc["primary_site"]
    assert row["with_value"] == 6 and "Adenocarcinoma of stomach" in row["concepts"]
    # counts below 5 are suppressed in the displayed report
    assert pd.isna(table.set_index("column").loc["her2_ish", "with_value"])
    assert "Persons imported" in [m.label for m in at.metric]
    # the imported values reached the session's cohort
    sites = b.con.execute("SELECT patient_id, primary_site FROM cohort ORDER BY patient_id").fetchall()
    assert dict(sites)["1001"] == "stomach" and dict(sites)["1002"] == "gej"
    # the funnel runs on it
    go(at, "pages/funnel.py")
    assert at.metric[0].value in ("6", "suppressed")


def test_omop_fixed_index_date_and_lookback_are_used():
    at = new_app()
    choose(at, "omop")
    at.radio(key=session.W + "omop_index").set_value("fixed").run()
    at.date_input(key=session.W + "omop_date").set_value(dt.date(2024, 6, 30)).run()
    at.number_input(key=session.W + "omop_lookback").set_value(10).run()
    import_omop(at, "planted_cdm.zip", fixture_zip())
    rep = bundle(at).report
    assert rep.index_date == "2024-06-30" and rep.lookback_days == 10
    assert bundle(at).cohort.n == 5  # person 1006 died on 2024-01-01
    assert sum(rep.excluded.values()) == 1
    assert "2024-06-30" in bundle(at).label


@needs_sample
def test_omop_synthea_sample_28_persons():
    at = new_app()
    choose(at, "omop")
    import_omop(at, SAMPLE.name, SAMPLE.read_bytes())
    b = bundle(at)
    assert b.kind == "omop" and b.cohort.n == 28
    assert b.report.n_source_persons == 28
    assert b.report.column("hemoglobin_g_l").n_value == 7  # docs/importers.md: 7 at "last", 30 days
    assert_locked(b.con)


def test_omop_import_writes_nothing_to_disk(monkeypatch, tmp_path):
    """The uploaded zip is read in memory: no temporary directory or file is created."""
    import tempfile

    def refuse(*_a, **_k):
        raise AssertionError("the OMOP upload path created a temporary file")

    at = new_app()
    choose(at, "omop")
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    monkeypatch.setattr(tempfile, "TemporaryDirectory", refuse)
    import_omop(at, "planted_cdm.zip", fixture_zip())
    assert bundle(at).kind == "omop" and bundle(at).cohort.n == 6


def test_omop_bad_uploads_are_refused_with_messages():
    at = new_app()
    choose(at, "omop")
    import_omop(at, "cdm.zip", PNG)
    assert "cdm.zip is a PNG image, not a .zip of OMOP tables" in errors(at)
    assert bundle(at).kind == "builtin"
    at.button(key=session.W + "dismiss_import_error").click().run()
    assert "PNG" not in errors(at)
    import_omop(at, "cdm.zip", HTML)
    assert "HTML" in errors(at)
    # a zip without a PERSON table
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("notes.txt", "hello")
    import_omop(at, "empty_cdm.zip", buf.getvalue())
    assert "no PERSON table" in errors(at)
    assert bundle(at).kind == "builtin" and not at.exception


def test_oversize_uploads_are_refused_by_the_configured_limit(monkeypatch):
    """KN026_MAX_UPLOAD_MB applies to the cohort upload, the OMOP zip and the mapped file."""
    monkeypatch.setenv("KN026_MAX_UPLOAD_MB", "0.002")  # 2 KB
    at = new_app()
    sidebar_radio(at, "Cohort").set_value("upload").run()
    big = synth.generate(300, 2, sites=4).to_csv(index=False).encode()
    at.sidebar.file_uploader[0].set_value(("big.csv", big, "text/csv")).run()
    ok(at)
    assert "big.csv: the file is" in errors(at) and "the limit is 2 KB" in errors(at)
    assert bundle(at).kind == "builtin"
    choose(at, "omop")
    import_omop(at, "planted_cdm.zip", fixture_zip())
    assert "planted_cdm.zip: the file is" in errors(at) and "the limit is 2 KB" in errors(at)
    assert bundle(at).kind == "builtin"
    choose(at, "mapped")
    _upload_foreign(at, foreign_frame(), "big_export.csv")
    assert "big_export.csv: the file is" in errors(at) and "the limit is 2 KB" in errors(at)
    assert bundle(at).kind == "builtin" and not at.exception


# --------------------------------------------------------------------------- mapping wizard


def _upload_foreign(at: AppTest, frame: pd.DataFrame, name: str = "site_export.csv") -> AppTest:
    uploader(at, wizard.MAP_FILE_KEY).set_value((name, frame.to_csv(index=False).encode(), "text/csv")).run()
    ok(at)
    return at


def _select(at: AppTest, key_part: str):
    found = [s for s in at.selectbox if s.key and s.key.startswith(session.W + "map." + key_part + "@")]
    assert found, f"no selectbox {key_part}"
    return found[0]


def preview_value(at: AppTest, column: str):
    """The first preview row's value of `column`."""
    first = next(d.value for d in at.dataframe if column in d.value.columns and "patient_id" in d.value.columns)
    return first[column].iloc[0]


def test_mapping_wizard_loads_a_foreign_csv_with_converted_units():
    at = new_app()
    choose(at, "mapped")
    frame = foreign_frame()
    _upload_foreign(at, frame)
    m = at.session_state[session.K_MAPPING]
    assert m.get("hemoglobin_g_l").source == "Hb (g/dL)" and m.get("hemoglobin_g_l").unit == "g/dL"
    assert m.get("sex").source == "Gender" and m.get("creatinine_umol_l").unit == "mg/dL"
    assert m.unmatched == ["Comments"]
    # the suggested mapping is shown as editable selectboxes, with the unit of each lab
    assert _select(at, "src.hemoglobin_g_l").value == "Hb (g/dL)"
    assert _select(at, "unit.hemoglobin_g_l").value == "g/dL"
    assert "All 60 rows pass" in texts(at)
    # edit: the unit selectbox drives the conversion (g/dL -> g/L is x10; g/L is none)
    _select(at, "unit.hemoglobin_g_l").set_value("g/L").run()
    ok(at)
    assert at.session_state[session.K_MAPPING].get("hemoglobin_g_l").unit is None
    first = frame["Hb (g/dL)"].iloc[0]
    assert preview_value(at, "hemoglobin_g_l") == pytest.approx(first)  # taken as g/L: not converted
    _select(at, "unit.hemoglobin_g_l").set_value("g/dL").run()
    ok(at)
    assert preview_value(at, "hemoglobin_g_l") == pytest.approx(first * 10)
    # a value that cannot be read blocks loading, with row, column and value
    bad = frame.astype(object)
    bad.loc[3, "Hb (g/dL)"] = "n.d."
    _upload_foreign(at, bad, "site_export_bad.csv")
    assert "problem(s) in the mapped file" in errors(at)
    problems = next(d.value for d in at.dataframe if "Problem and fix" in d.value.columns)
    assert problems.iloc[0]["Column"] == "hemoglobin_g_l" and problems.iloc[0]["Row"] == 4
    assert problems.iloc[0]["Value"] == "n.d."
    assert at.button(key=session.W + "map_load").disabled
    _upload_foreign(at, frame)
    # a categorical value translated by hand: "male" -> M is suggested; map it explicitly too
    _select(at, "value_target").set_value("sex").run()
    _select(at, "value.sex.male").set_value("M").run()
    ok(at)
    assert at.session_state[session.K_MAPPING].get("sex").values["male"] == "M"
    at.button(key=session.W + "map_load").click().run()
    ok(at)
    b = bundle(at)
    assert b.kind == "mapped" and b.cohort.n == 60, errors(at)
    assert_locked(b.con)
    got = dict(b.con.execute("SELECT patient_id, hemoglobin_g_l FROM cohort").fetchall())
    for pid, hb in zip(frame["Subject No."], frame["Hb (g/dL)"], strict=True):
        if pd.notna(hb):
            assert got[str(pid)] == pytest.approx(hb * 10), pid
    sexes = {r[0] for r in b.con.execute("SELECT DISTINCT sex FROM cohort").fetchall()}
    assert sexes <= {"F", "M"}
    ihc = {r[0] for r in b.con.execute("SELECT DISTINCT her2_ihc FROM cohort").fetchall()} - {None}
    assert ihc <= {0, 1, 2, 3} and ihc
    assert at.session_state[session.tab_key("cohort")] == "Import report"
    assert "via mapping" in b.label and b.report["file"] == "site_export.csv"


def test_mapping_yaml_round_trip_and_unmapping():
    at = new_app()
    choose(at, "mapped")
    frame = foreign_frame()
    _upload_foreign(at, frame)
    # unmap creatinine and change haemoglobin's unit; download the YAML
    _select(at, "src.creatinine_umol_l").set_value(wizard.NOT_MAPPED).run()
    ok(at)
    assert at.session_state[session.K_MAPPING].get("creatinine_umol_l") is None
    text = at.session_state[session.K_MAPPING].to_yaml()
    assert "Creat_mgdl" not in text and "unit: g/dL" in text
    # map it again from "Map more dictionary columns" (lazy: runs only when open)
    assert not [s for s in at.selectbox if s.key and ".src.albumin_g_l@" in s.key]
    open_expander(at, "map_more")
    _select(at, "src.creatinine_umol_l").set_value("Creat_mgdl").run()
    ok(at)
    again = at.session_state[session.K_MAPPING].get("creatinine_umol_l")
    assert (again.source, again.unit) == ("Creat_mgdl", "mg/dL")  # unit suggested from the header
    # a fresh session: the same file, then the saved mapping
    at2 = new_app()
    choose(at2, "mapped")
    _upload_foreign(at2, frame)
    assert at2.session_state[session.K_MAPPING].get("creatinine_umol_l") is not None
    yaml_up = next(u for u in at2.file_uploader if u.key and u.key.startswith(session.W + "map.yaml@"))
    yaml_up.set_value(("site.yaml", text.encode(), "application/x-yaml")).run()
    ok(at2)
    assert at2.session_state[session.K_MAPPING].get("creatinine_umol_l") is None
    assert not [s for s in at2.selectbox if s.key and ".src.creatinine_umol_l@" in s.key]  # not in the mapped list
    assert _select(at2, "src.hemoglobin_g_l").value == "Hb (g/dL)"
    # a mapping made for another layout names the missing columns
    other = text.replace("Hb (g/dL)", "Haemoglobin")
    yaml_up = next(u for u in at2.file_uploader if u.key and u.key.startswith(session.W + "map.yaml@"))
    yaml_up.set_value(("other.yaml", other.encode(), "application/x-yaml")).run()
    ok(at2)
    assert "'Haemoglobin' are not in the file" in errors(at2)
    # a PNG named .yaml
    yaml_up = next(u for u in at2.file_uploader if u.key and u.key.startswith(session.W + "map.yaml@"))
    yaml_up.set_value(("site.yaml", PNG, "application/x-yaml")).run()
    assert "site.yaml is a PNG image" in errors(at2)


def _warnings(at: AppTest) -> str:
    return "\n".join(w.value for w in at.warning)


def _infos(at: AppTest) -> str:
    return "\n".join(i.value for i in at.info)


def test_mapping_wizard_asks_before_mapping_qtc_and_egfr():
    """Dictionary section 4: a machine QTc (usually Bazett) is not qtcf_ms, an eGFR is not a clearance."""
    at = new_app()
    choose(at, "mapped")
    frame = pd.DataFrame({"Subject No.": ["A1", "A2", "A3"], "AGE": ["61", "55", "70"],
                          "QTc (ms)": ["452", "430", "471"], "QT (ms)": ["400", "390", "410"],
                          "HR": ["72", "65", "80"], "eGFR (CKD-EPI)": ["58", "90", "44"]})
    _upload_foreign(at, frame, "ecg_export.csv")
    m = at.session_state[session.K_MAPPING]
    assert m.get("qtcf_ms") is None and m.get("creatinine_clearance_ml_min") is None
    assert m.get("qt_ms").source == "QT (ms)" and m.get("heart_rate_bpm").source == "HR"
    # offered in the grid, not pre-selected, with the reason beside it
    assert _select(at, "src.qtcf_ms").value == wizard.NOT_MAPPED
    assert _select(at, "src.creatinine_clearance_ml_min").value == wizard.NOT_MAPPED
    warned = _warnings(at)
    assert "“QTc (ms)” looks like `qtcf_ms` but is not mapped without your choice" in warned
    assert "Fridericia" in warned and "Bazett" in warned
    assert "“eGFR (CKD-EPI)” looks like `creatinine_clearance_ml_min`" in warned and "Cockcroft-Gault" in warned
    assert "All 3 rows pass" in texts(at)
    first = next(d.value for d in at.dataframe if "patient_id" in d.value.columns)
    assert "qtcf_ms" not in first.columns and "creatinine_clearance_ml_min" not in first.columns
    # the analyst chooses explicitly: mapped, and the explanation stays in view
    _select(at, "src.qtcf_ms").set_value("QTc (ms)").run()
    ok(at)
    assert at.session_state[session.K_MAPPING].get("qtcf_ms").source == "QTc (ms)"
    assert "“QTc (ms)” is mapped to `qtcf_ms` by your choice" in _infos(at) and "Fridericia" in _infos(at)
    assert "“QTc (ms)” looks like" not in _warnings(at) and "“eGFR (CKD-EPI)” looks like" in _warnings(at)
    assert preview_value(at, "qtcf_ms") == 452
    # unmapped again: offered again, not mapped
    _select(at, "src.qtcf_ms").set_value(wizard.NOT_MAPPED).run()
    ok(at)
    assert at.session_state[session.K_MAPPING].get("qtcf_ms") is None
    assert "“QTc (ms)” looks like `qtcf_ms`" in _warnings(at)
    # the eGFR by explicit choice too; the download YAML holds only what was chosen
    _select(at, "src.creatinine_clearance_ml_min").set_value("eGFR (CKD-EPI)").run()
    ok(at)
    text = at.session_state[session.K_MAPPING].to_yaml()
    assert "creatinine_clearance_ml_min:\n    source: eGFR (CKD-EPI)" in text and "qtcf_ms" not in text
    assert "is mapped to `creatinine_clearance_ml_min` by your choice" in _infos(at)


def test_mapping_bad_files_are_refused():
    at = new_app()
    choose(at, "mapped")
    uploader(at, wizard.MAP_FILE_KEY).set_value(("export.csv", HTML, "text/csv")).run()
    ok(at)
    assert "export.csv looks like an HTML or XML page" in errors(at)
    assert at.session_state[session.K_MAP_FILE] is None
    uploader(at, wizard.MAP_FILE_KEY).set_value(("export.xlsx", PNG, "application/vnd.ms-excel")).run()
    assert "export.xlsx is a PNG image" in errors(at)
    latin1 = "Patient,Gender\nA1,Féminin\n".encode("latin-1")
    uploader(at, wizard.MAP_FILE_KEY).set_value(("latin.csv", latin1, "text/csv")).run()
    assert "not UTF-8" in errors(at) and "line 2" in errors(at)
    assert bundle(at).kind == "builtin" and not at.exception


# --------------------------------------------------------------------------- plain uploads and scenarios


def test_renamed_binary_and_html_cohort_uploads_are_refused():
    at = new_app()
    sidebar_radio(at, "Cohort").set_value("upload").run()
    at.sidebar.file_uploader[0].set_value(("cohort.csv", PNG, "text/csv")).run()
    ok(at)
    assert "cohort.csv is a PNG image, not a CSV file" in errors(at)
    assert not at.dataframe or all("Problem and fix" not in d.value.columns for d in at.dataframe)
    assert bundle(at).kind == "builtin"
    at.sidebar.file_uploader[0].set_value(("cohort.csv", HTML, "text/csv")).run()
    assert "looks like an HTML or XML page" in errors(at)
    assert bundle(at).kind == "builtin"


def test_scenario_upload_is_sniffed():
    at = new_app()
    go(at, "pages/criteria.py")
    up = uploader(at, session.W + "scenario_upload")
    up.set_value(("scenario.yaml", PNG, "application/x-yaml")).run()
    ok(at)
    assert "scenario.yaml is not a usable scenario:** scenario.yaml is a PNG image, not a text file" in errors(at)
    up = uploader(at, session.W + "scenario_upload")
    up.set_value(("scenario.yaml", HTML, "application/x-yaml")).run()
    assert "looks like an HTML or XML page" in errors(at)
    assert at.session_state[session.K_ACTIVE] == session.PROTOCOL


def test_mapping_wizard_reads_excel():
    frame = foreign_frame().astype(str).replace("nan", "")
    buf = io.BytesIO()
    frame.to_excel(buf, index=False, sheet_name="screening")
    at = new_app()
    choose(at, "mapped")
    uploader(at, wizard.MAP_FILE_KEY).set_value(("export.xlsx", buf.getvalue(),
                                                   "application/vnd.ms-excel")).run()
    ok(at)
    assert at.session_state[session.K_MAPPING].get("hemoglobin_g_l").unit == "g/dL"
    assert "All 60 rows pass" in texts(at)
    at.button(key=session.W + "map_load").click().run()
    ok(at)
    assert bundle(at).kind == "mapped" and bundle(at).cohort.n == 60


# --------------------------------------------------------------------------- dates (issue 13, item 3)


def dated_frame(visits: list[str]) -> pd.DataFrame:
    """A site export whose screening dates are written dd/mm/yyyy (or as given)."""
    n = len(visits)
    return pd.DataFrame({"Subject No.": [f"P{i:03d}" for i in range(1, n + 1)], "Date of screening": visits,
                         "AGE": ["61"] * n, "Gender": ["Female"] * n})


def _date_select(at: AppTest, source: str):
    return _select(at, f"date.screening_date.{source}")


def _markdown(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in at.markdown)


def test_mapping_wizard_asks_the_date_format_of_an_ambiguous_column():
    """Every date reads day first and month first: load waits for the analyst's choice; then the
    preview shows the earliest and latest date as read."""
    at = new_app()
    choose(at, "mapped")
    _upload_foreign(at, dated_frame(["05/09/2022", "01/02/2023", "12/11/2022", "03/04/2022"]), "ambiguous.csv")
    m = at.session_state[session.K_MAPPING]
    assert m.get("screening_date").source == "Date of screening" and m.get("screening_date").date_format is None
    select = _date_select(at, "Date of screening")
    assert select.value == wizard.CHOOSE_DATE
    assert select.options[:3] == [wizard.CHOOSE_DATE, "dd/mm/yyyy (day first) · reads all 4",
                                  "mm/dd/yyyy (month first) · reads all 4"]
    assert "every date reads as dd/mm/yyyy (day first) or mm/dd/yyyy (month first)" in _warnings(at)
    assert "'05/09/2022' in row 1 is 5 Sep 2022 or 9 May 2022" in _warnings(at)
    assert "05/09/2022 → **5 Sep 2022 or 9 May 2022**" in _markdown(at)
    assert "Choose the date format of `screening_date` (file column “Date of screening”)" in _warnings(at)
    assert not errors(at)
    assert at.button(key=session.W + "map_load").disabled
    assert "Dates as read" not in _markdown(at)
    # the analyst chooses day first: the preview reads every value day first
    _date_select(at, "Date of screening").set_value("%d/%m/%Y").run()
    ok(at)
    assert at.session_state[session.K_MAPPING].get("screening_date").date_format == "%d/%m/%Y"
    assert not at.button(key=session.W + "map_load").disabled
    assert "05/09/2022 → **5 Sep 2022**" in _markdown(at)
    assert ("`screening_date` from “Date of screening” read as dd/mm/yyyy (day first): earliest **3 Apr 2022**, "
            "latest **1 Feb 2023** (4 dates)") in _markdown(at)
    assert preview_value(at, "screening_date") == "2022-09-05"
    assert "    date_format: '%d/%m/%Y'" in at.session_state[session.K_MAPPING].to_yaml()  # the download
    # month first instead: other dates, shown at once
    _date_select(at, "Date of screening").set_value("%m/%d/%Y").run()
    ok(at)
    assert "earliest **4 Mar 2022**, latest **2 Jan 2023** (4 dates)" in _markdown(at)
    at.button(key=session.W + "map_load").click().run()
    ok(at)
    b = bundle(at)
    assert b.kind == "mapped" and b.cohort.n == 4, errors(at)
    got = dict(b.con.execute("SELECT patient_id, CAST(screening_date AS VARCHAR) FROM cohort").fetchall())
    assert got == {"P001": "2022-05-09", "P002": "2023-01-02", "P003": "2022-12-11", "P004": "2022-03-04"}
    table = sources.mapping_table(b.report["mapping"]).set_index("column")
    assert table.loc["screening_date", "date_format"] == "mm/dd/yyyy (month first): %m/%d/%Y"


def test_mapping_wizard_reads_a_day_first_export_day_first_throughout():
    """Issue 13: 05/09/2022 and 14/09/2022 in one column are 5 and 14 September, never 9 May."""
    at = new_app()
    choose(at, "mapped")
    frame = dated_frame(["05/09/2022", "14/09/2022", "01/10/2022", "28/02/2023", "n.k."])
    _upload_foreign(at, frame, "site.csv")
    assert at.session_state[session.K_MAPPING].get("screening_date").date_format == "%d/%m/%Y"  # proven
    select = _date_select(at, "Date of screening")
    assert select.value == "%d/%m/%Y" and wizard.CHOOSE_DATE not in select.options
    captions = "\n".join(c.value for c in at.caption)
    assert "Recognised as dd/mm/yyyy (day first): 2 date(s) have a first number above 12" in captions
    assert "1 value(s) are not dates" in captions
    assert "earliest **5 Sep 2022**, latest **28 Feb 2023** (4 dates)" in _markdown(at)
    # "n.k." is a bad cell with row, column, value and the fix, never a silent NULL
    problems = next(d.value for d in at.dataframe if "Problem and fix" in d.value.columns)
    assert problems.iloc[0]["Column"] == "screening_date" and problems.iloc[0]["Row"] == 5
    assert problems.iloc[0]["Value"] == "n.k." and "dd/mm/yyyy" in problems.iloc[0]["Problem and fix"]
    assert at.button(key=session.W + "map_load").disabled
    # the saved mapping carries the format and is reused for the next export
    text = at.session_state[session.K_MAPPING].to_yaml()
    assert "date_format: '%d/%m/%Y'" in text
    at2 = new_app()
    choose(at2, "mapped")
    _upload_foreign(at2, dated_frame(["05/09/2022", "01/10/2022"]), "next_export.csv")  # ambiguous alone
    assert _date_select(at2, "Date of screening").value == wizard.CHOOSE_DATE
    yaml_up = next(u for u in at2.file_uploader if u.key and u.key.startswith(session.W + "map.yaml@"))
    yaml_up.set_value(("site.yaml", text.encode(), "application/x-yaml")).run()
    ok(at2)
    assert _date_select(at2, "Date of screening").value == "%d/%m/%Y"
    assert "earliest **5 Sep 2022**, latest **1 Oct 2022** (2 dates)" in _markdown(at2)
    assert not at2.button(key=session.W + "map_load").disabled
