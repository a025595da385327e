"""Loading uploads into a locked-down session connection (kn026.ingest.loading), in-memory OMOP zips,
ZIP / YAML sniffing (kn026.ingest.sniff.sniff_zip, sniff_text) and the wizard helpers of kn026.ingest.mapping."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from kn026.ingest import loading, omop
from kn026.ingest import mapping as mp
from kn026.ingest import sniff as upload
from kn026.ingest.problems import CohortError
from kn026.rules import sandbox
from tests.shared_data import OMOP_SAMPLE

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "omop"
SAMPLE = OMOP_SAMPLE
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
HTML = b"<!DOCTYPE html><html><body>Not found</body></html>"


def fixture_zip(prefix: str = "cdm/", ancestor: bool = False) -> bytes:
    """The planted persons' CDM tables (tests/fixtures/omop) as a zip, in memory."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(FIXTURES.glob("*.csv")):
            if ancestor or path.name != "CONCEPT_ANCESTOR.csv":
                zf.writestr(prefix + path.name, path.read_bytes())
    return buf.getvalue()


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("patient_id").reset_index(drop=True)


@pytest.fixture
def no_temp_files(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a temporary file or directory was created")

    for name in ("mkdtemp", "mkstemp", "NamedTemporaryFile", "TemporaryDirectory", "TemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)


# ----------------------------------------------------------------------------- sniff_zip / sniff_text


def test_sniff_zip_accepts_a_cdm_zip_and_refuses_the_rest():
    assert upload.sniff_zip(fixture_zip(), "cdm.zip") == "zip"
    cases = [
        (PNG, "cdm.zip", "cdm.zip is a PNG image, not a .zip of OMOP tables"),
        (HTML, "cdm.zip", "cdm.zip is an HTML or XML page"),
        (b"person_id\n1\n", "cdm.zip", "cdm.zip is not a ZIP archive"),
        (fixture_zip(), "cdm.csv", "unsupported file type .csv; upload a .zip"),
        (fixture_zip()[:200], "cdm.zip", "not a readable ZIP archive"),
        (b"", "cdm.zip", "the file is empty"),
    ]
    for data, name, message in cases:
        with pytest.raises(upload.UploadError, match=message.replace(".", r"\.").replace("(", r"\(")):
            upload.sniff_zip(data, name)
    with pytest.raises(upload.UploadError, match=r"cdm\.zip: the file is .*; the limit is 1 KB"):
        upload.sniff_zip(fixture_zip(), "/tmp/x/cdm.zip", max_bytes=1024)


def test_sniff_zip_refuses_zip_bombs_and_huge_archives():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("MEASUREMENT.csv", b"0" * 20_000_000)  # 20 MB of zeros: about 20 KB packed
    with pytest.raises(upload.UploadError, match="expands to 19 MB"):
        upload.sniff_zip(buf.getvalue(), "bomb.zip")
    with pytest.raises(upload.UploadError, match="the limit is 4 KB"):
        upload.sniff_zip(fixture_zip(), "cdm.zip", max_uncompressed=4096)
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(upload.MAX_ZIP_MEMBERS + 1):
            zf.writestr(f"f{i}.txt", b"")
    with pytest.raises(upload.UploadError, match="10,001 members"):
        upload.sniff_zip(many.getvalue(), "many.zip")


def test_sniff_text_for_yaml_uploads():
    assert upload.sniff_text("name: Älter\n".encode(), "s.yaml") == "name: Älter\n"
    assert upload.sniff_text(b"\xef\xbb\xbfname: x\n", "s.yml") == "name: x\n"
    for data, name, message in [
        (PNG, "s.yaml", r"s\.yaml is a PNG image, not a text file"),
        (HTML, "s.yaml", "looks like an HTML or XML page"),
        ("name: Älter\n".encode("latin-1"), "s.yaml", r"not UTF-8 text \(byte 0xC4 at byte 6, line 1\)"),
        (b"a: 1\x00\n", "s.yaml", "NUL bytes"),
        (b"a: 1\n", "s.txt", r"unsupported file type \.txt"),
        (b"", "s.yaml", "empty"),
        (b"a: 1\n" * 300_000, "s.yaml", "the limit is 1.0 MB"),
    ]:
        with pytest.raises(upload.UploadError, match=message):
            upload.sniff_text(data, name)


# ----------------------------------------------------------------------------- OMOP from bytes


def test_omop_zip_bytes_import_equals_the_folder_import_and_writes_nothing(no_temp_files):
    con = loading.session_connection()
    sandbox.lock_down(con)  # the in-memory path needs no file access
    frame, report = omop.import_omop(fixture_zip(ancestor=True), "last", con=con, name="planted.zip")
    assert len(frame) == 6 and report.source == "planted.zip" and report.n_persons == 6
    assert frame.set_index("patient_id").loc["1005", "first_line_anti_her2"]  # Herceptin via CONCEPT_ANCESTOR
    ref, ref_report = omop.import_omop(FIXTURES, "last")  # a folder: read in place, no temp files either
    pd.testing.assert_frame_equal(_sorted(frame), _sorted(ref))
    assert [c.to_dict() for c in report.columns] == [c.to_dict() for c in ref_report.columns]
    # nothing left behind in the session connection
    left = con.execute("SELECT table_name FROM information_schema.tables WHERE table_name LIKE '_omop%'").fetchall()
    assert left == []


@pytest.mark.skipif(not SAMPLE.is_file(), reason=f"OMOP sample {SAMPLE} is not present")
def test_omop_sample_bytes_equal_the_zip_path():
    frame, report = omop.import_omop(SAMPLE.read_bytes(), "last", name=SAMPLE.name)
    ref, ref_report = omop.import_omop(SAMPLE, "last")
    assert len(frame) == 28
    pd.testing.assert_frame_equal(_sorted(frame), _sorted(ref))
    # 5 within INCL07's 7-day window (tests/ingest/test_omop.py derives them from the raw table)
    assert report.column("hemoglobin_g_l").n_value == ref_report.column("hemoglobin_g_l").n_value == 5


def test_omop_zip_bytes_errors_name_the_member():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("PERSON.csv", "person_id,year_of_birth\n1,1960\n")
        zf.writestr("other/PERSON.csv", "person_id,year_of_birth\n2,1961\n")
    with pytest.raises(ValueError, match=r"2 files for table PERSON \(PERSON.csv, PERSON.csv\); keep one"):
        omop.import_omop(buf.getvalue(), "last", name="dup.zip")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("PERSON.parquet", b"PAR1 not really")
    with pytest.raises(ValueError, match=r"OMOP table PERSON.parquet cannot be read"):
        omop.import_omop(buf.getvalue(), "last", name="bad.zip")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("README.txt", "no tables")
    with pytest.raises(ValueError, match="has no PERSON table"):
        omop.import_omop(buf.getvalue(), "last", name="empty.zip")


# ----------------------------------------------------------------------------- loading


def test_upload_limit_is_configurable(monkeypatch):
    monkeypatch.delenv(loading.ENV_UPLOAD_MB, raising=False)
    assert loading.upload_limit() == 200 * 1024 * 1024 and loading.upload_limit_mb() == 200
    monkeypatch.setenv(loading.ENV_UPLOAD_MB, "1.5")
    assert loading.upload_limit() == int(1.5 * 1024 * 1024) and loading.upload_limit_mb() == 1
    monkeypatch.setenv(loading.ENV_UPLOAD_MB, "lots")
    with pytest.raises(loading.LoadError, match="KN026_MAX_UPLOAD_MB='lots' is not a number"):
        loading.upload_limit()


def test_every_loader_returns_a_connection_that_seal_locks(monkeypatch):
    from kn026.ingest import synth

    monkeypatch.setenv(loading.ENV_MEMORY, "512MB")
    csv = synth.generate(200, 3, sites=4).to_csv(index=False).encode()
    con, cohort = loading.load_upload("c.csv", csv)
    assert cohort.n == 200 and not sandbox.is_locked(con)
    lock = loading.seal(con)
    assert sandbox.is_locked(con) and lock.memory_limit.startswith(("488", "512"))
    with pytest.raises(duckdb.Error):
        con.execute("SELECT * FROM read_csv('/etc/passwd')").fetchall()
    con2, cohort2, report = loading.import_omop_upload("cdm.zip", fixture_zip())
    assert cohort2.n == 6 and sandbox.is_locked(con2) and report.n_persons == 6
    with pytest.raises(CohortError, match="PNG image"):
        loading.load_upload("c.csv", PNG)
    with pytest.raises(loading.LoadError, match="cdm.zip is a PNG image"):
        loading.import_omop_upload("cdm.zip", PNG)
    with pytest.raises(loading.LoadError, match="the limit is 1 KB"):
        loading.import_omop_upload("cdm.zip", fixture_zip(), max_bytes=1024)
    with pytest.raises(loading.LoadError, match="no person could be screened"):
        loading.import_omop_upload("cdm.zip", fixture_zip(), index_date="1900-01-01")


def test_read_foreign_and_load_mapped():
    frame = pd.DataFrame({"Patient ID": ["A1", "A2"], "Hb (g/dL)": ["12.5", "9.1"], "Gender": ["Female", "male"]})
    got = loading.read_foreign("x.csv", frame.to_csv(index=False).encode())
    assert list(got.columns) == ["Patient ID", "Hb (g/dL)", "Gender"] and got["Hb (g/dL)"].tolist() == ["12.5", "9.1"]
    m = mp.suggest_mapping(got.columns, sample=got)
    con, cohort = loading.load_mapped(got, m)
    assert sorted(con.execute("SELECT hemoglobin_g_l FROM cohort").fetchall()) == [(91.0,), (125.0,)]
    with pytest.raises(loading.LoadError, match="x.csv is a PNG image"):
        loading.read_foreign("x.csv", PNG)
    with pytest.raises(loading.LoadError, match="names column 'a' twice"):
        loading.read_foreign("x.csv", b"a,a\n1,2\n")
    with pytest.raises(loading.LoadError, match="header but no rows"):
        loading.read_foreign("x.csv", b"a,b\n")
    with pytest.raises(loading.LoadError, match="no dictionary column is mapped"):
        loading.load_mapped(got, mp.Mapping())
    yaml_text = m.to_yaml().encode()
    assert loading.read_mapping_yaml("m.yaml", yaml_text, got).get("hemoglobin_g_l").unit == "g/dL"
    with pytest.raises(loading.LoadError, match=r"'Hb \(g/dL\)' are not in the file"):
        loading.read_mapping_yaml("m.yaml", yaml_text, got.rename(columns={"Hb (g/dL)": "Hb"}))
    with pytest.raises(loading.LoadError, match="m.yaml: 'hb' is not a dictionary column"):
        loading.read_mapping_yaml("m.yaml", b"columns:\n  hb: {source: Hb}\n", got)


def test_report_tables_hide_small_counts():
    _, report = omop.import_omop(fixture_zip(), "last", name="p.zip")
    table = loading.omop_report_table(report, k=5).set_index("column")
    assert table.loc["primary_site", "with_value"] == 6 and table.loc["primary_site", "pct"] == 100
    assert pd.isna(table.loc["her2_ish", "with_value"]) and pd.isna(table.loc["her2_ish", "pct"])
    assert "(fewer than 5)" in table.loc["primary_site", "concepts"]
    assert table.loc["age_years", "true"] == ""  # not a flag
    # 1 of 6: 1001 (1002's line 1 is unknown without an advanced-disease record; 1005's Herceptin needs
    # CONCEPT_ANCESTOR)
    assert table.loc["first_line_anti_her2", "true"] == "suppressed"
    plain = loading.omop_report_table(report).set_index("column")
    assert plain.loc["her2_ish", "with_value"] == 1 and plain.loc["first_line_anti_her2", "true"] == "1"
    m = mp.Mapping()
    m.set("patient_id", "Pt")
    m.set("hemoglobin_g_l", "Hb", unit="g/dL")
    m.set("site_id", constant="S01")
    m.set("sex", "Gender", values={"Female": "F", "n.k.": ""})
    t = loading.mapping_table(m).set_index("column")
    assert t.loc["hemoglobin_g_l", "unit"] == "g/dL × 10 → g/L" and t.loc["patient_id", "unit"] == ""
    assert t.loc["site_id", "from"] == "constant 'S01'" and t.loc["sex", "values"] == "Female → F; n.k. → (empty)"
    values = pd.DataFrame({"column": ["sex", "sex"], "value": ["F", "M"], "count": [3, 40]})
    assert loading.value_table(values, 5)["count"].isna().tolist() == [True, False]


# ----------------------------------------------------------------------------- mapping helpers


def test_suggest_column_and_dictionary_values():
    sample = pd.DataFrame({"Haemoglobin": ["12.1", "9.8", "14"], "Sexe": ["Female", "male", "F"]})
    c = mp.suggest_column("hemoglobin_g_l", "Haemoglobin", sample)
    assert (c.source, c.unit) == ("Haemoglobin", "g/dL")
    assert mp.suggest_column("sex", "Sexe", sample).values == {"Female": "F", "male": "M"}
    assert mp.suggest_column("creatinine_umol_l", "Creat (mg/dL)").unit == "mg/dL"
    with pytest.raises(ValueError, match="'hb' is not a dictionary column"):
        mp.suggest_column("hb", "Hb")
    assert mp.dictionary_values("sex") == ["F", "M"]
    assert mp.dictionary_values("her2_ihc") == ["0", "1", "2", "3"]
    assert mp.dictionary_values("hbv_active") == ["true", "false"]
    assert "stomach" in mp.dictionary_values("primary_site")
    assert mp.dictionary_values("hemoglobin_g_l") == []
