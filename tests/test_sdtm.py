"""SDTM importer (kn026/sdtm*.py): the hand-made study HIST01 in tests/fixtures/sdtm.

Every expected value is derived by hand in tests/fixtures/sdtm/README.md (dates, windows,
unit arithmetic); none comes from running the importer.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kn026.base import schema
from kn026.core.criteria import load_protocol
from kn026.ingest.cohort import load_cohort
from kn026.ingest.problems import CohortError
from kn026.ingest.sdtm import import_sdtm
from kn026.ingest.sdtm_source import read_study
from kn026.ingest.sdtm_terms import load_terms, parse_dtc
from tests.sdtm_support import FIXTURES, dataset_json, ibm_double, write_fixtures

PROTOCOL = load_protocol()
TERMS = load_terms()
CSV = FIXTURES / "study_csv"
XPT = FIXTURES / "study_xpt"
D = dt.date


def sid(n: int) -> str:
    return f"HIST01-S0{n}"


@pytest.fixture(scope="module")
def study():
    frame, report = import_sdtm(CSV)
    return frame.set_index("patient_id", drop=False), report


def _csv_files(**replace: str) -> dict[str, bytes]:
    """The CSV study as {file name: bytes}, with some files replaced (text) or dropped (None)."""
    files = {p.name: p.read_bytes() for p in CSV.glob("*.csv")}
    for name, text in replace.items():
        if text is None:
            files.pop(name, None)
        else:
            files[name] = text.encode()
    return files


def _add_rows(name: str, rows: str) -> dict[str, bytes]:
    return _csv_files(**{name: (CSV / name).read_text() + rows})


# ----------------------------------------------------------------------------- index dates, DM


def test_index_date_per_subject_and_who_got_which(study):
    frame, report = study
    expected = {1: (D(2024, 3, 15), "RFXSTDTC (first dose)"), 2: (D(2024, 4, 2), "RFSTDTC"),
                3: (D(2024, 5, 10), "RFICDTC (informed consent)"), 4: (D(2024, 6, 1), "DMDTC"),
                6: (D(2024, 7, 1), "RFXSTDTC (first dose)"), 7: (D(2024, 8, 5), "EXSTDTC (first dose in EX)")}
    assert list(frame.index) == [sid(n) for n in expected]  # one row per DM subject with an index date
    got = {s: (d, src) for s, d, src in report.subjects}
    for n, (day, source) in expected.items():
        assert frame.loc[sid(n), "screening_date"] == day
        assert got[sid(n)] == (day.isoformat(), source)
    assert got[sid(5)] == (None, "no usable date") and list(report.excluded.values()) == [[sid(5)]]
    sub = report.subjects_frame()
    assert list(sub.columns) == ["patient_id", "index_date", "index_source"] and len(sub) == 7


def test_demographics_from_dm(study):
    frame, _ = study
    assert frame.loc[sid(1), ["age_years", "sex", "site_id", "country"]].tolist() == [63, "M", "101", "CHN"]
    assert frame.loc[sid(6), "age_years"] == 74  # birthday on the index day
    assert frame.loc[sid(2), ["age_years", "sex", "country"]].tolist() == [55, "F", "KOR"]  # AGE / AGEU


# ----------------------------------------------------------------------------- labs and windows

LABS = {  # hand-derived (README): subject -> column -> value (None: NULL)
    1: {"hemoglobin_g_l": 125.0, "platelets_1e9_l": 180.0, "anc_1e9_l": 3.2, "creatinine_umol_l": 79.56,
        "bilirubin_total_umol_l": 20.52, "bilirubin_total_uln_umol_l": 20.52, "bilirubin_direct_umol_l": 3.42,
        "bilirubin_direct_uln_umol_l": 5.13, "ast_u_l": 35.0, "ast_uln_u_l": 40.0, "alt_u_l": 30.0,
        "alt_uln_u_l": 45.0, "albumin_g_l": 38.0, "inr": 1.1, "inr_uln": 1.2, "aptt_s": 32.0, "aptt_uln_s": 40.0,
        "pt_s": 12.5, "pt_uln_s": 13.5, "creatinine_clearance_ml_min": None},
    2: {"hemoglobin_g_l": 112.77, "platelets_1e9_l": 250.0, "anc_1e9_l": 3.3, "creatinine_umol_l": 70.0,
        "bilirubin_total_umol_l": 15.0, "bilirubin_total_uln_umol_l": None, "ast_u_l": None, "alt_u_l": None,
        "inr": 1.0, "inr_uln": None, "creatinine_clearance_ml_min": None, "albumin_g_l": None},
    3: {"hemoglobin_g_l": 130.0, "platelets_1e9_l": 45.0, "creatinine_clearance_ml_min": 55.0, "anc_1e9_l": None},
    4: {c: None for c in ("hemoglobin_g_l", "platelets_1e9_l", "anc_1e9_l", "creatinine_umol_l")},
    6: {"hemoglobin_g_l": None, "platelets_1e9_l": None, "anc_1e9_l": None},
}


def _equal(got, want) -> bool:
    return pd.isna(got) if want is None else got == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("n", sorted(LABS))
def test_labs_converted_to_dictionary_units_within_7_days(study, n):
    frame, _ = study
    for col, want in LABS[n].items():
        assert _equal(frame.loc[sid(n), col], want), (n, col, frame.loc[sid(n), col], want)


def test_window_edges_day_0_and_7_inside_day_8_outside(study):
    frame, report = study
    # S01: HGB day 7 (12.5 g/dL) taken over the day-8 mmol/L result; platelets of day 0 taken, day -1 ignored
    assert frame.loc[sid(1), "hemoglobin_g_l"] == 125.0 and frame.loc[sid(1), "platelets_1e9_l"] == 180.0
    # S02: AST on day 8 and ALT on day 10 only: NULL and stale; S06's only haemoglobin is on day 8
    assert pd.isna(frame.loc[sid(2), "ast_u_l"]) and pd.isna(frame.loc[sid(2), "ast_uln_u_l"])
    stale = frame["stale_columns"].to_dict()
    assert stale == {sid(1): None, sid(2): "ast_u_l,alt_u_l", sid(3): "weight_kg", sid(4): None,
                     sid(6): "measurable_lesions,nonmeasurable_lesions,hemoglobin_g_l,lvef_pct", sid(7): None}
    hb = report.column("hemoglobin_g_l")
    assert (hb.n_value, hb.n_stale) == (3, 1) and hb.window == "0-7 days before the index date (INCL07)"
    assert report.column("ast_u_l").n_stale == 1


def test_report_units_conversions_and_skipped_records(study):
    _, report = study
    hb = report.column("hemoglobin_g_l")
    assert hb.source == "LB HGB" and hb.units == {"g/dL": 3, "mmol/L": 3, "": 1}
    assert hb.conversions == {"g/dL": "x 10", "mmol/L": "x 16.11"} and hb.skipped == {"not done": 1}
    plt = report.column("platelets_1e9_l")
    assert plt.conversions == {"10^9/L": "x 1", "/uL": "x 0.001", "10^3/uL": "x 1"}
    assert plt.skipped == {"unit 10^12/L not convertible": 1}
    assert report.column("creatinine_umol_l").skipped == {"urine specimen": 1}
    assert report.column("alt_u_l").conversions == {"ukat/L": "x 60"}
    assert report.column("anc_1e9_l").skipped == {"partial date": 1}
    crcl = report.column("creatinine_clearance_ml_min")
    assert crcl.skipped == {"unit mL/min/1.73m2 not convertible": 1, "GFRE: an eGFR is not a creatinine clearance": 1}
    assert report.column("bilirubin_total_uln_umol_l").n_value == 1


def test_anc_from_the_differential_only_where_the_draw_has_no_neut(study):
    frame, report = study
    assert frame.loc[sid(2), "anc_1e9_l"] == 3.3  # 60 % x 5.5
    assert "NEUTLE x WBC" in report.column("anc_1e9_l").source
    # the same draw with a NEUT result: the direct count wins
    files = _add_rows("lb.csv", "HIST01,LB,HIST01-S02,20,NEUT,Neutrophils,BLOOD,3.0,10^9/L,3.0,3.0,10^9/L,,,"
                                "SCREENING,2024-03-30T07:45\n")
    again, _ = import_sdtm(files)
    assert again.set_index("patient_id").loc[sid(2), "anc_1e9_l"] == 3.0


# ----------------------------------------------------------------------------- vitals, ECG, LVEF, ECOG, lesions


def test_vitals_ecg_lvef_ecog(study):
    frame, report = study
    expect = {1: {"weight_kg": 69.853225, "sbp_mmhg": 142.0, "dbp_mmhg": 88.0, "qt_ms": 400.0, "qtcf_ms": 430.0,
                  "heart_rate_bpm": 75.0, "lvef_pct": 60.0, "ecog": 1},
              2: {"weight_kg": 58.0, "sbp_mmhg": 155.0, "qt_ms": None, "qtcf_ms": None, "heart_rate_bpm": 90.0,
                  "ecog": 2},
              3: {"weight_kg": None, "sbp_mmhg": 120.0, "dbp_mmhg": None},
              6: {"weight_kg": 65.0, "qtcf_ms": 440.0, "qt_ms": 380.0, "heart_rate_bpm": 80.0, "lvef_pct": None,
                  "ecog": 0}}
    for n, cols in expect.items():
        for col, want in cols.items():
            assert _equal(frame.loc[sid(n), col], want), (n, col)
    assert report.column("weight_kg").conversions == {"LB": "x 0.45359237", "kg": "x 1"}


def test_bazett_qtc_never_becomes_qtcf(study):
    frame, report = study
    assert pd.isna(frame.loc[sid(2), "qtcf_ms"]) and pd.isna(frame.loc[sid(2), "qt_ms"])  # a QTCB-only ECG
    assert report.column("qtcf_ms").skipped == {"QTCB: Bazett-corrected QTc is not QTcF": 2}
    assert report.column("qtcf_ms").source == "EG QTCFAG/QTCF"


def test_recist_lesions_from_tu(study):
    frame, _ = study
    cols = ["measurable_lesions", "nonmeasurable_lesions", "liver_metastases"]
    assert frame.loc[sid(1), cols].tolist() == [2, 1, True]
    assert frame.loc[sid(2), cols].tolist() == [1, 0, False]
    assert frame.loc[sid(6), cols].isna().all()  # lesions on day 42: outside the 28-day RECIST window


# ----------------------------------------------------------------------------- events


EVENTS = {
    1: {"days_since_myocardial_infarction": 259, "days_since_anticancer_therapy": 24,
        "last_anticancer_half_life_days": None, "corticosteroid_prednisone_eq_mg_day": 20.0,
        "days_since_growth_factor": 5, "days_since_transfusion": 365, "days_since_radiotherapy": 15,
        "days_since_major_surgery": 319, "days_since_investigational_drug": None, "hcv_active": False,
        "heart_failure_history": False, "other_malignancy_5y": False},
    2: {"hcv_active": True, "hiv_positive": True, "immunodeficiency_or_transplant": True, "other_malignancy_5y": False,
        "days_since_anticancer_therapy": 28, "last_anticancer_half_life_days": 28.0,
        "corticosteroid_prednisone_eq_mg_day": 53.3336, "days_since_investigational_drug": 78,
        "days_since_transfusion": 11, "days_since_major_surgery": None},
    3: {"other_malignancy_5y": None, "heart_failure_history": True, "corticosteroid_prednisone_eq_mg_day": None},
    4: {"heart_failure_history": None, "hiv_positive": None, "other_malignancy_5y": None,
        "days_since_anticancer_therapy": None},
    6: {"days_since_angina": 47, "days_since_myocardial_infarction": None, "other_malignancy_5y": False,
        "days_since_anticancer_therapy": 31, "days_since_transfusion": None, "days_since_radiotherapy": 11},
    7: {"other_malignancy_5y": None, "heart_failure_history": False, "days_since_investigational_drug": None},
}


@pytest.mark.parametrize("n", sorted(EVENTS))
def test_history_medications_procedures(study, n):
    frame, _ = study
    for col, want in EVENTS[n].items():
        assert _equal(frame.loc[sid(n), col], want), (n, col, frame.loc[sid(n), col], want)


def test_event_lookback_edges_and_report(study):
    _, report = study
    tr = report.column("days_since_transfusion")
    assert tr.window.startswith("look-back 365 days") and tr.skipped == {"before the look-back": 2}  # S06 PR and CM
    assert report.column("days_since_anticancer_therapy").window.startswith("look-back the whole record")
    mi = report.column("days_since_myocardial_infarction")
    assert mi.skipped == {"partial date read as its latest day (counted)": 1, "before the look-back": 1}
    assert report.column("hiv_positive").terms == {"HIV test positive": 1}
    assert report.column("corticosteroid_prednisone_eq_mg_day").skipped == {
        "local route": 1, "dose or ingredient not computable": 1}
    assert any("corticosteroid_prednisone_eq_mg_day: 1 subjects" in w and sid(3) in w for w in report.warnings)


def test_open_world_leaves_flags_without_a_record_unknown():
    frame, _ = import_sdtm(CSV, closed_world=False)
    frame = frame.set_index("patient_id")
    assert pd.isna(frame.loc[sid(1), "hiv_positive"]) and frame.loc[sid(2), "hiv_positive"] == True  # noqa: E712
    assert frame.loc[sid(6), "days_since_angina"] == 47


# ----------------------------------------------------------------------------- other index dates, overrides


def test_screening_index_date():
    frame, report = import_sdtm(CSV, "screening")
    frame = frame.set_index("patient_id")
    got = {s: (d, src) for s, d, src in report.subjects}
    visit = "screening visit (last VISIT ~ SCREEN date)"
    assert got[sid(1)] == ("2024-03-14", visit) and got[sid(2)] == ("2024-03-31", visit)
    assert got[sid(3)] == ("2024-05-12", visit) and got[sid(6)] == ("2024-06-30", visit)
    assert got[sid(4)] == ("2024-06-01", "DMDTC") and got[sid(7)] == ("2024-07-20", "RFICDTC (informed consent)")
    assert frame.loc[sid(3), "hemoglobin_g_l"] == 120.0  # the retest is now on the index day
    assert pd.isna(frame.loc[sid(1), "platelets_1e9_l"]) and frame.loc[sid(1), "hemoglobin_g_l"] == 125.0
    assert report.column("platelets_1e9_l").n_after == 1


def test_fixed_index_date_leaves_out_the_dead():
    frame, report = import_sdtm(CSV, "2024-09-01")
    frame = frame.set_index("patient_id")
    assert report.excluded == {"who died before the index date (DTHDTC)": [sid(6)]}
    assert sid(5) in frame.index and (frame["screening_date"] == D(2024, 9, 1)).all()
    days = frame["days_since_investigational_drug"]
    assert days.dropna().to_dict() == {sid(1): 170, sid(2): 230, sid(7): 6} and days.isna().sum() == 3


def test_lookback_override_changes_assessment_windows_only():
    frame, report = import_sdtm(CSV, lookback_days=10)
    frame = frame.set_index("patient_id")
    assert (frame.loc[sid(2), "ast_u_l"], frame.loc[sid(2), "alt_u_l"]) == (100.0, 40.0)
    assert frame.loc[sid(6), "hemoglobin_g_l"] == 128.88  # 8.0 x 16.11 on day 8
    assert frame.loc[sid(1), "days_since_transfusion"] == 365 and pd.isna(frame.loc[sid(6), "days_since_transfusion"])
    assert report.lookback_days == 10 and "10 days (override)" in report.to_text()


@pytest.mark.parametrize("bad", ["yesterday", "2024-13-01", "last"])
def test_bad_index_option(bad):
    with pytest.raises(ValueError, match="give first-dose, screening or a date YYYY-MM-DD"):
        import_sdtm(CSV, bad)


# ----------------------------------------------------------------------------- formats and sources


def test_xpt_and_dataset_json_give_the_same_cohort(study):
    frame, report = study
    other, rep = import_sdtm(XPT)
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), other)
    assert rep.domains["LB"] == "lb.xpt (SAS transport, 36 rows)"
    assert rep.domains["VS"] == "vs.json (Dataset-JSON, 13 rows)"
    assert report.not_found == rep.not_found == ["FA"]


def test_fixture_xpt_files_are_what_the_helper_writes(tmp_path, monkeypatch):
    """The committed .xpt / .json files are reproducible from the CSVs (python -m tests.sdtm_support)."""
    import tests.sdtm_support as support

    copy = tmp_path / "sdtm"
    (copy / "study_csv").mkdir(parents=True)
    for p in CSV.glob("*.csv"):
        (copy / "study_csv" / p.name).write_bytes(p.read_bytes())
    monkeypatch.setattr(support, "FIXTURES", copy)
    for written in write_fixtures():
        assert written.read_bytes() == (XPT / written.name).read_bytes(), written.name


def test_ibm_float_encoding_known_values():
    # TS-140: 1 = 0x41100000 00000000, -118.625 = 0xC276A000 00000000, missing = '.' then zeros
    assert ibm_double(1.0).hex() == "4110000000000000"
    assert ibm_double(-118.625).hex() == "c276a00000000000"
    assert ibm_double(None) == b".\x00\x00\x00\x00\x00\x00\x00" and ibm_double(0.0) == b"\x00" * 8


def test_in_memory_files_zip_bytes_and_zip_path(study, tmp_path):
    frame, _ = study
    files = {p.name: p.read_bytes() for p in XPT.iterdir()}
    from_dict, _ = import_sdtm(files, name="upload")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"study/{name}", data)
        zf.writestr("__MACOSX/._dm.xpt", b"junk")
    from_zip, rep = import_sdtm(buf.getvalue(), name="study.zip")
    (tmp_path / "s.zip").write_bytes(buf.getvalue())
    from_path, _ = import_sdtm(tmp_path / "s.zip")
    for other in (from_dict, from_zip, from_path):
        pd.testing.assert_frame_equal(frame.reset_index(drop=True), other)
    assert rep.source == "study.zip"


def test_dataset_json_1_0_and_ndjson():
    vs = pd.read_csv(CSV / "vs.csv", dtype=str, keep_default_na=False)
    v11 = dataset_json(vs, "VS", ("VSSTRESN", "VSSEQ"))
    items = [{"OID": "ITEMGROUPDATASEQ", "name": "ITEMGROUPDATASEQ", "label": "Record", "type": "integer"}] + [
        {"OID": c["itemOID"], "name": c["name"], "label": c["label"], "type": c["dataType"]} for c in v11["columns"]]
    v10 = {"creationDateTime": "2026-01-01T00:00:00", "datasetJSONVersion": "1.0.0",
           "clinicalData": {"studyOID": "HIST01", "metaDataVersionOID": "MDV.1", "itemGroupData": {
               "IG.VS": {"records": len(v11["rows"]), "name": "VS", "label": "Vital Signs", "items": items,
                         "itemData": [[i + 1, *row] for i, row in enumerate(v11["rows"])]}}}}
    meta = {k: v for k, v in v11.items() if k != "rows"}
    ndjson = "\n".join([json.dumps(meta)] + [json.dumps(r) for r in v11["rows"]]) + "\n"
    ref = read_study({"vs.csv": (CSV / "vs.csv").read_bytes()})["VS"].frame
    for name, data in (("vitals.json", json.dumps(v10)), ("vs.ndjson", ndjson)):
        got = read_study({name: data.encode()})["VS"]  # the domain from the dataset name, not the file name
        assert got.frame.equals(ref), name


def test_a_column_never_measured_is_absent_not_unknown():
    """A study whose ECGs report only a Bazett QTc never measured QTcF: qtcf_ms is absent (the engine then
    computes QTcF from QT and the rate), not NULL for everyone."""
    eg = ("STUDYID,DOMAIN,USUBJID,EGSEQ,EGTESTCD,EGSTRESN,EGSTRESU,EGDTC\n"
          "HIST01,EG,HIST01-S01,1,QTCB,445,msec,2024-03-10\nHIST01,EG,HIST01-S01,2,QT,400,msec,2024-03-10\n")
    frame, report = import_sdtm(_csv_files(**{"eg.csv": eg}))
    assert "qtcf_ms" not in frame.columns and "qt_ms" in frame.columns
    assert report.column("qtcf_ms").status == "absent"
    assert "QTCB: Bazett-corrected QTc is not QTcF" in report.column("qtcf_ms").note


def test_a_study_without_most_domains_leaves_their_columns_absent():
    files = {"dm.csv": (CSV / "dm.csv").read_bytes(), "lb.csv": (CSV / "lb.csv").read_bytes()}
    frame, report = import_sdtm(files)
    assert report.not_found == ["VS", "EG", "CV", "QS", "RS", "FA", "TU", "MH", "CM", "EX", "PR"]
    assert "hemoglobin_g_l" in frame.columns and "stale_columns" in frame.columns
    for col in ("weight_kg", "qtcf_ms", "hiv_positive", "days_since_transfusion", "measurable_lesions", "ecog"):
        assert col not in frame.columns and report.column(col).status == "absent", col
    assert "not searched: MH not in the study" == report.column("hiv_positive").note
    assert report.column("primary_site").note.startswith("the index tumour's site")
    # without EX, S07 has no dose: its index is the consent date
    assert dict((s, d) for s, d, _ in report.subjects)[sid(7)] == "2024-07-20"


def test_cohort_loads_and_only_derived_columns_are_present(study):
    frame, report = study
    cohort = load_cohort(frame.reset_index(drop=True))
    assert cohort.n == 6
    assert cohort.present == frozenset(c.column for c in report.columns if c.status in ("derived", "index"))
    assert [c.column for c in report.columns] == [c.name for c in schema.COLUMNS]
    text = report.to_text()
    assert "domains not found: FA" in text and "hemoglobin_g_l: 3/6 with a value [LB HGB]" in text


def test_unit_guard_refuses_a_mislabelled_unit():
    """The output goes through load_cohort: g/dL values labelled g/L are refused, never fixed silently."""
    rows = "".join(f"HIST01,LB,HIST01-S0{n},30,HGB,Hemoglobin,BLOOD,12,g/L,12,12,g/L,,,SCREENING,{d}\n"
                   for n, d in ((1, "2024-03-15"), (2, "2024-04-02"), (3, "2024-05-10")))
    frame, _ = import_sdtm(_add_rows("lb.csv", rows))
    with pytest.raises(CohortError, match="hemoglobin_g_l"):
        load_cohort(frame)


ERRORS = [
    ("no DM", lambda: import_sdtm(_csv_files(**{"dm.csv": None})), r"no DM \(demographics\) domain"),
    ("domain twice", lambda: import_sdtm({**_csv_files(), "LB.xpt": (XPT / "lb.xpt").read_bytes()}),
     r"domain LB is given twice \(lb.csv, LB.xpt\); keep one file per domain"),
    ("duplicate subject", lambda: import_sdtm(_add_rows("dm.csv", "HIST01,DM,HIST01-S01,S01,,,,2024-01-01,,101,,"
                                                                  "50,YEARS,M,CHN,X\n")),
     r"DM lists USUBJID HIST01-S01 more than once"),
    ("unreadable xpt", lambda: import_sdtm({**_csv_files(**{"lb.csv": None}), "lb.xpt": b"not a transport file"}),
     r"SDTM file lb.xpt cannot be read as SAS transport"),
    ("bad json", lambda: import_sdtm({**_csv_files(**{"vs.csv": None}), "vs.json": b'{"rows": 1}'}),
     r"SDTM file vs.json cannot be read as Dataset-JSON"),
    ("missing folder", lambda: import_sdtm(Path("/nonexistent/study")), r"does not exist"),
    ("negative look-back", lambda: import_sdtm(CSV, lookback_days=-1), r"whole number of days >= 0"),
]


@pytest.mark.parametrize("call, message", [(c, m) for _, c, m in ERRORS], ids=[n for n, _, _ in ERRORS])
def test_errors_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- properties


def test_parse_dtc():
    assert parse_dtc("2024-06-25T08:30").first == D(2024, 6, 25) and parse_dtc("2024-06-25T08:30").time == "08:30"
    assert (parse_dtc("2024-02").first, parse_dtc("2024-02").last) == (D(2024, 2, 1), D(2024, 2, 29))
    assert (parse_dtc("2023").first, parse_dtc("2023").last) == (D(2023, 1, 1), D(2023, 12, 31))
    assert parse_dtc("") is None and parse_dtc(None) is None and parse_dtc("2024-02-30") is None
    assert parse_dtc("2024-12").last == D(2024, 12, 31)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 12), st.integers(80, 160)), min_size=0, max_size=6),
       st.integers(0, 10))
def test_latest_result_inside_the_window_property(results, window):
    """For any set of HGB results around the index date, the value is the latest one dated 0..window days
    before it (the higher LBSEQ on one day), NULL otherwise, and stale exactly when only older ones exist."""
    index = D(2024, 3, 15)
    dm = "STUDYID,DOMAIN,USUBJID,RFXSTDTC,SEX,AGE\nP,DM,P-1,2024-03-15,F,50\n"
    lb = "STUDYID,DOMAIN,USUBJID,LBSEQ,LBTESTCD,LBSTRESN,LBSTRESU,LBDTC\n" + "".join(
        f"P,LB,P-1,{i + 1},HGB,{v},g/L,{(index - dt.timedelta(days=d)).isoformat()}\n"
        for i, (d, v) in enumerate(results))
    frame, _ = import_sdtm({"dm.csv": dm.encode(), "lb.csv": lb.encode()}, lookback_days=window,
                           protocol=PROTOCOL, terms=TERMS)
    inside = [(d, i, v) for i, (d, v) in enumerate(results) if 0 <= d <= window]
    want = min(inside, key=lambda x: (x[0], -x[1]))[2] if inside else None
    row = frame.iloc[0]
    if not results:
        assert "hemoglobin_g_l" not in frame.columns  # no HGB record at all: absent
        return
    assert _equal(row["hemoglobin_g_l"], None if want is None else float(want))
    stale = want is None and any(d > window for d, _ in results)
    assert (row["stale_columns"] == "hemoglobin_g_l") == stale


def test_sdtm_modules_stay_small_and_free_of_streamlit():
    paths = sorted(Path(__file__).resolve().parents[1].glob("kn026/ingest/sdtm*.py"))
    assert len(paths) >= 6, paths  # the importer and its source, terms, findings, events and report modules
    for path in paths:
        text = path.read_text()
        assert len(text.splitlines()) < 800 and "streamlit" not in text, path.name
