"""OMOP CDM importer: the Synthea sample, planted gastric-cancer persons, unit conversions.

The sample lives beside the repository (`../shared/data/omop/Synthea27Nj_5.4.zip`); the
planted persons are CSV deltas in tests/fixtures/omop appended to a copy of it at run time.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import shutil
import zipfile
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from kn026.base import schema
from kn026.ingest import omop
from kn026.ingest.cohort import load_cohort
from kn026.ingest.omop_columns import at_least
from kn026.ingest.omop_vocab import icdo_parts
from tests.shared_data import OMOP_SAMPLE

SAMPLE = OMOP_SAMPLE
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "omop"
CLINICAL = FIXTURES.parent / "omop_clinical"
INDEX = dt.date(2024, 6, 30)  # last observation of the planted persons

needs_sample = pytest.mark.skipif(not SAMPLE.is_file(), reason=f"OMOP sample {SAMPLE} is not present "
                                  "(CI keeps a read-only copy of shared/ beside the repository)")


# ----------------------------------------------------------------------------- fixtures


def _extract(target: Path) -> Path:
    """The sample's CDM tables (without the 14 MB CONCEPT_RELATIONSHIP) as CSV files in `target`."""
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(SAMPLE) as zf:
        for info in zf.infolist():
            name = Path(info.filename).name
            if info.filename.startswith("__MACOSX") or name.startswith(".") or not name.endswith(".csv"):
                continue
            if name == "CONCEPT_RELATIONSHIP.csv":
                continue
            with zf.open(info) as src, (target / name).open("wb") as dst:
                shutil.copyfileobj(src, dst)
    return target


def _append(table_csv: Path, delta_csv: Path) -> None:
    """Append the delta's rows to a CDM CSV, matching columns by name (missing ones empty)."""
    with table_csv.open(newline="") as fh:
        header = next(csv.reader(fh))
    with delta_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    unknown = set(rows[0]) - set(header)
    assert not unknown, f"{delta_csv.name}: columns {unknown} are not in {table_csv.name}"
    with table_csv.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, lineterminator="\n")
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in header})


def _planted(target: Path, ancestor: bool = False) -> Path:
    _extract(target)
    for delta in sorted(FIXTURES.glob("*.csv")):
        if delta.name == "CONCEPT_ANCESTOR.csv" and not ancestor:
            continue
        _append(target / delta.name, delta)
    return target


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory) -> Path:
    if not SAMPLE.is_file():
        pytest.skip(f"OMOP sample {SAMPLE} is not present")
    return _planted(tmp_path_factory.mktemp("omop") / "planted")


@pytest.fixture(scope="module")
def planted(planted_dir):
    """The planted copy imported at each person's last observation."""
    frame, report = omop.import_omop(planted_dir, "last")
    return frame.set_index("patient_id", drop=False), report


@pytest.fixture(scope="module")
def synthea():
    if not SAMPLE.is_file():
        pytest.skip(f"OMOP sample {SAMPLE} is not present")
    frame, report = omop.import_omop(SAMPLE, "last", lookback_days=36500)
    return frame.set_index("patient_id", drop=False), report


@pytest.fixture(scope="module")
def raw_measurement() -> pd.DataFrame:
    if not SAMPLE.is_file():
        pytest.skip(f"OMOP sample {SAMPLE} is not present")
    with zipfile.ZipFile(SAMPLE) as zf, zf.open("MEASUREMENT.csv") as fh:
        return pd.read_csv(fh, dtype={"person_id": str, "unit_source_value": str})


# ----------------------------------------------------------------------------- Synthea sample


@needs_sample
def test_synthea_persons_age_and_sex(synthea):
    frame, report = synthea
    assert len(frame) == 28 and report.n_persons == 28 and report.n_source_persons == 28
    assert frame["patient_id"].is_unique
    with zipfile.ZipFile(SAMPLE) as zf, zf.open("PERSON.csv") as fh:
        person = pd.read_csv(fh, dtype={"person_id": str}).set_index("person_id")
    expected_sex = person["gender_concept_id"].map({8532: "F", 8507: "M"})
    assert (frame["sex"] == expected_sex.reindex(frame.index)).all()
    assert frame["sex"].value_counts().to_dict() == {"M": 15, "F": 13}
    # index = end of the observation period; age in whole years at that date
    assert frame.loc["1", "screening_date"] == dt.date(2022, 9, 30)
    assert frame.loc["1", "age_years"] == 24  # born 1998-04-09
    assert frame.loc["7", "age_years"] == 81  # born 1938, died 2019-05-28 = last observation
    assert frame.loc["27", "age_years"] == 0  # born 2022-02-09
    assert report.cdm_version == "5.4"


@needs_sample
def test_synthea_hemoglobin_and_platelets_for_everyone_in_dictionary_units(synthea, raw_measurement):
    frame, report = synthea
    assert frame["hemoglobin_g_l"].notna().all() and frame["platelets_1e9_l"].notna().all()
    # converted by hand from the raw rows: g/dL x 10 -> g/L, 10*3/uL x 1 -> 10^9/L
    hand = {"3": (12.9 * 10, 257.6), "12": (16.6 * 10, 374.5), "14": (14.4 * 10, 258.4), "11": (147.0, 351.0)}
    for pid, (hgb, plt) in hand.items():
        assert frame.loc[pid, "hemoglobin_g_l"] == pytest.approx(hgb, abs=1e-9)
        assert frame.loc[pid, "platelets_1e9_l"] == pytest.approx(plt, abs=1e-9)
    # and against the raw table for every person: the latest row on or before the index date
    raw = raw_measurement.assign(measurement_date=pd.to_datetime(raw_measurement["measurement_date"]).dt.date)
    for concept, column, factor, unit in ((3000963, "hemoglobin_g_l", 10, "g/dL"),
                                          (3024929, "platelets_1e9_l", 1, "10*3/uL")):
        rows = raw[raw["measurement_concept_id"] == concept]
        assert set(rows["unit_source_value"]) == {unit}
        for pid, row in frame.iterrows():
            mine = rows[(rows["person_id"] == pid) & (rows["measurement_date"] <= row["screening_date"])]
            latest = mine.sort_values(["measurement_date", "measurement_id"]).iloc[-1]
            assert row[column] == pytest.approx(latest["value_as_number"] * factor, abs=1e-9), (pid, column)
    assert report.column("hemoglobin_g_l").units == {"g/dL": 28}
    assert report.column("hemoglobin_g_l").concepts[0][0] == 3000963


@needs_sample
def test_synthea_protocol_window_keeps_only_labs_within_7_days(raw_measurement):
    """INCL07's "within 7 days before enrollment" (protocol.windows): a haemoglobin dated 0-7 days
    before the index date is taken; an older one only is no assessment: NULL and listed in
    stale_columns (before dictionary v2's windows it was kept and listed)."""
    frame, report = omop.import_omop(SAMPLE, "last")
    frame = frame.set_index("patient_id")
    raw = raw_measurement[raw_measurement["measurement_concept_id"] == 3000963]
    raw = raw.assign(d=pd.to_datetime(raw["measurement_date"]).dt.date)
    for pid, row in frame.iterrows():
        mine = raw[(raw["person_id"] == pid) & (raw["d"] <= row["screening_date"])]
        week = mine[mine["d"] >= row["screening_date"] - dt.timedelta(days=7)]
        assert pd.isna(row["hemoglobin_g_l"]) == week.empty, pid
        stale = "hemoglobin_g_l" in str(row["stale_columns"] or "").split(",")
        assert stale == (week.empty and not mine.empty), pid
    # counted from the raw table by hand: persons 3, 12, 14, 17, 21 have one within 7 days, the other 23 older ones
    assert sorted(frame.index[frame["hemoglobin_g_l"].notna()], key=int) == ["3", "12", "14", "17", "21"]
    assert frame.loc["3", "hemoglobin_g_l"] == 129.0  # measured on the index day (day 0 is inside)
    stale = frame.loc["11", "stale_columns"].split(",")
    assert {"platelets_1e9_l", "hemoglobin_g_l"} <= set(stale)
    assert stale == [c.name for c in schema.COLUMNS if c.name in stale]  # dictionary order
    assert "0-7 days before the index date (INCL07)" in report.column("hemoglobin_g_l").note
    # --lookback-days replaces the assessment windows: 30 days takes persons 11 and 16 too
    month, report = omop.import_omop(SAMPLE, "last", lookback_days=30)
    month = month.set_index("patient_id")
    assert sorted(month.index[month["hemoglobin_g_l"].notna()], key=int) == ["3", "11", "12", "14", "16", "17", "21"]
    assert "hemoglobin_g_l" not in str(month.loc["11", "stale_columns"]) and report.lookback_days == 30
    assert "hemoglobin_g_l" in month.loc["1", "stale_columns"].split(",")


@needs_sample
def test_synthea_import_passes_cohort_validation(synthea):
    frame, report = synthea
    cohort = load_cohort(frame.reset_index(drop=True))
    assert cohort.n == 28
    derived = {c.column for c in report.columns if c.status in ("derived", "index")}
    assert cohort.present == frozenset(derived)
    absent = {c.column for c in report.columns if c.status == "absent"}
    assert absent and not absent & set(frame.columns)
    assert {"measurable_lesions", "consent_signed", "days_since_investigational_drug"} <= absent


@needs_sample
def test_synthea_conditions_and_closed_world_flags(synthea):
    frame, report = synthea
    assert frame.loc["11", "heart_failure_history"] == True  # noqa: E712 - chronic CHF on record
    assert (frame.drop(index="11")["heart_failure_history"] == False).all()  # noqa: E712
    assert report.column("heart_failure_history").concepts == [(4229440, "Chronic congestive heart failure", 1)]
    # nobody has gastric cancer: the closed world says "none", so INCL02 fails rather than unknown
    assert set(frame["primary_site"]) == {"none"} and set(frame["histology"]) == {"none"}
    assert frame["first_line_anti_her2"].eq(False).all() and frame["prior_systemic_lines"].eq(0).all()
    # NYHA: 0 without heart disease, unknown with coronary disease or heart failure
    assert frame.loc[["10", "11", "26"], "nyha_class"].isna().all()
    assert frame.loc["1", "nyha_class"] == 0
    # packed cells 2005-09-14, index 2022-06-26: 6132 days, beyond the 365-day look-back of INCL07.TRANSFUSION
    # (window_days up to 365): none on record (the long-window import below finds it)
    assert frame["days_since_transfusion"].isna().all()
    assert frame["days_since_myocardial_infarction"].isna().all()  # record-based: none on record


@needs_sample
def test_event_lookback_follows_the_protocol_and_not_lookback_days():
    """The transfusion look-back is INCL07.TRANSFUSION's window_days maximum (protocol.windows): with
    the maximum raised to 36500 days, person 16's 2005 transfusion is on record; --lookback-days
    (assessment windows only) does not move it."""
    import yaml

    from kn026.core.criteria import DEFAULT_PROTOCOL, build_protocol

    doc = yaml.safe_load(DEFAULT_PROTOCOL.read_text(encoding="utf-8"))
    rule = next(r for c in doc["criteria"] for r in c["rules"] if r["id"] == "INCL07.TRANSFUSION")
    rule["params"]["window_days"]["max"] = 36500
    frame, report = omop.import_omop(SAMPLE, "last", protocol=build_protocol(doc))
    frame = frame.set_index("patient_id")
    assert frame.loc["16", "days_since_transfusion"] == 6132  # packed cells 2005-09-14, index 2022-06-26
    assert "searched 36500 days back" in report.column("days_since_transfusion").note
    short, _ = omop.import_omop(SAMPLE, "last", lookback_days=36500)
    assert short["days_since_transfusion"].isna().all()


@needs_sample
def test_report_lists_every_dictionary_column(synthea):
    _, report = synthea
    assert [c.column for c in report.columns] == [c.name for c in schema.COLUMNS]
    hb = report.column("hemoglobin_g_l")
    assert hb.n_value == 28 and hb.status == "derived" and "MEASUREMENT" in hb.source
    text = report.to_text()
    assert "hemoglobin_g_l: 28/28 with a value" in text and "absent (n/a)" in text
    table = report.to_frame()
    assert list(table.columns)[:4] == ["column", "status", "source", "n_value"]


# ----------------------------------------------------------------------------- planted persons


@needs_sample
def test_planted_gastric_cancer_her2_first_line(planted):
    frame, _ = planted
    p = frame.loc["1001"]
    assert p["screening_date"] == INDEX and p["age_years"] == 64 and p["sex"] == "M"
    assert (p["primary_site"], p["histology"], p["disease_extent"]) == ("stomach", "adenocarcinoma", "metastatic")
    assert p["liver_metastases"] == True  # noqa: E712
    assert (p["her2_ihc"], p["ecog"]) == (3, 1)
    assert p["first_line_anti_her2"] and p["first_line_platinum"] and p["first_line_fluoropyrimidine"]
    assert pd.isna(p["prior_systemic_lines"]) and pd.isna(p["progressed_on_prior"])
    assert p["days_since_anticancer_therapy"] == 21  # trastuzumab 2024-06-09
    assert p["last_anticancer_half_life_days"] == 28
    assert p["days_since_transfusion"] == 10 and p["days_since_growth_factor"] == 5
    assert (p["lvef_pct"], p["lvef_drop_on_anti_her2_pct"], p["lvef_nadir_on_anti_her2_pct"]) == (48, 14, 48)

    q = frame.loc["1002"]
    assert (q["primary_site"], q["histology"]) == ("gej", "adenocarcinoma")  # ICD-10 C16.0 source value
    assert (q["her2_ihc"], q["her2_ish"]) == (2, "positive")
    # clinical-drug concepts found by ingredient name (the 2010 epirubicin predates the cancer), but
    # no advanced-disease record tells line 1 from perioperative therapy: unknown, not true
    assert q[["first_line_anti_her2", "first_line_platinum", "first_line_fluoropyrimidine"]].isna().all()
    assert pd.isna(q["prior_systemic_lines"])
    assert q["days_since_anticancer_therapy"] == (INDEX - dt.date(2023, 10, 5)).days
    assert pd.isna(q["last_anticancer_half_life_days"])  # fluorouracil last: no half-life on file
    assert q["days_since_myocardial_infarction"] == 100
    assert pd.isna(q["hbv_active"])  # chronic hepatitis B without an HBV DNA result: activity unknown
    assert q["other_malignancy_5y"] == True  # noqa: E712

    r = frame.loc["1003"]
    assert r["primary_site"] == "stomach" and pd.isna(r["histology"])  # no histology on record
    assert pd.isna(r["brain_metastases"]) and r["disease_extent"] == "metastatic"
    assert pd.isna(r["other_malignancy_5y"])  # prostate cancer: the exception may apply
    assert not (r["first_line_anti_her2"] or r["first_line_platinum"] or r["first_line_fluoropyrimidine"])
    assert pd.isna(r["nyha_class"]) and r["age_years"] == 73

    s = frame.loc["1004"]
    assert (s["primary_site"], s["histology"]) == ("stomach", "other")
    assert s["pregnant_or_nursing"] == True and s["nyha_class"] == 2  # noqa: E712 - NYHA from OBSERVATION
    assert s["days_since_radiotherapy"] == 10 and pd.isna(s["radiotherapy_toxicity_unresolved"])
    assert s["hiv_positive"] == True and s["immunodeficiency_or_transplant"] == True  # noqa: E712
    assert s["first_line_anti_her2"] == False and s["prior_systemic_lines"] == 0  # noqa: E712

    t = frame.loc["1005"]  # "Herceptin" names no ingredient: unknown without CONCEPT_ANCESTOR
    assert t["first_line_anti_her2"] == False and t["first_line_platinum"] == True  # noqa: E712


@needs_sample
def test_planted_labs_converted_with_reference_range_uln(planted):
    frame, report = planted
    p = frame.loc["1001"]
    assert p["hemoglobin_g_l"] == 120.75  # 7.5 mmol/L x 16.1 (latest, not 9.9 g/dL on 06-01)
    assert p["platelets_1e9_l"] == 150.0  # 150000 cells/uL
    assert p["anc_1e9_l"] == 2.1
    assert (p["bilirubin_total_umol_l"], p["bilirubin_total_uln_umol_l"]) == (20.52, 20.52)  # 1.2 mg/dL x 17.1
    assert (p["ast_u_l"], p["ast_uln_u_l"]) == (80.0, 40.0)  # no unit concept, unit text U/L
    assert (p["inr"], p["inr_uln"]) == (1.1, 1.2)  # INR without any unit
    assert (p["aptt_s"], p["aptt_uln_s"]) == (35.0, 40.0)
    assert (p["creatinine_umol_l"], p["albumin_g_l"], p["weight_kg"]) == (88.0, 35.0, 70.0)
    assert pd.isna(p["alt_uln_u_l"])  # no range_high: the engine's default ULN applies
    q = frame.loc["1002"]
    assert (q["hemoglobin_g_l"], q["platelets_1e9_l"], q["creatinine_umol_l"]) == (124.0, 210.0, 79.56)
    # within INCL07's 7 days: 1002 and Synthea persons 3, 12, 14, 17, 21 in g/dL, 1001 in mmol/L
    # (the 30-day look-back before the protocol windows also took persons 11 and 16)
    assert report.column("hemoglobin_g_l").units == {"g/dL": 6, "mmol/L": 1}


@needs_sample
def test_planted_doses(planted):
    frame, report = planted
    assert frame.loc["1002", "anthracycline_doxorubicin_eq_mg_m2"] == 80.0  # epirubicin 100 mg/m2 x 0.8
    assert frame.loc["1003", "anthracycline_doxorubicin_eq_mg_m2"] == 120.0  # 240 mg / 2.0 m2 (180 cm, 80 kg)
    assert frame.loc["1002", "corticosteroid_prednisone_eq_mg_day"] == 26.6668  # dexamethasone 4 mg/day
    assert frame["corticosteroid_prednisone_eq_mg_day"].notna().sum() == 1
    assert any("anthracycline_doxorubicin_eq_mg_m2: 1 patients" in w and "1003" in w for w in report.warnings)


@needs_sample
def test_planted_import_passes_validation_and_report_names_concepts(planted):
    frame, report = planted
    assert load_cohort(frame.reset_index(drop=True)).n == len(frame) == 34
    site = report.column("primary_site")
    assert site.n_value == 34 and {c[0] for c in site.concepts} >= {4248802, 443387}
    her2 = report.column("first_line_anti_her2")  # 1002's trastuzumab: no advanced-disease record, unknown
    assert her2.n_true == 1 and {c[1] for c in her2.concepts} == {"trastuzumab"}
    assert her2.n_value == 34 - 1


@needs_sample
def test_fixed_index_date_leaves_out_the_dead_and_warns(planted_dir):
    frame, report = omop.import_omop(planted_dir, "2024-06-30", lookback_days=30)
    frame = frame.set_index("patient_id")
    assert not {"1006", "7", "11", "23"} & set(frame.index)  # died 2024-01-01, 2019, 2009, 2001
    assert report.excluded == {"who died before the index date": 4} and len(frame) == 30
    assert (frame["screening_date"] == INDEX).all()
    assert any("not under observation" in w for w in report.warnings)
    assert frame.loc["1001", "hemoglobin_g_l"] == 120.75
    assert frame.loc["3", "age_years"] == 13 and pd.isna(frame.loc["3", "hemoglobin_g_l"])  # 2022 labs are stale


@needs_sample
def test_fixed_index_before_events_ignores_later_records(planted_dir):
    frame, _ = omop.import_omop(planted_dir, dt.date(2023, 1, 15), lookback_days=30)
    p = frame.set_index("patient_id").loc["1001"]
    assert p["primary_site"] == "stomach"  # diagnosed 2023-01-10
    assert p["liver_metastases"] == False and p["first_line_anti_her2"] == False  # noqa: E712 - later
    assert pd.isna(p["days_since_anticancer_therapy"]) and p["her2_ihc"] == 3


@needs_sample
def test_open_world_makes_missing_conditions_unknown(planted_dir):
    frame, report = omop.import_omop(planted_dir, "last", closed_world=False)
    frame = frame.set_index("patient_id")
    assert frame.loc["1", ["heart_failure_history", "hiv_positive", "first_line_anti_her2",
                           "prior_systemic_lines", "primary_site", "nyha_class"]].isna().all()
    assert frame.loc["11", "heart_failure_history"] == True  # noqa: E712
    assert frame.loc["1001", "first_line_anti_her2"] == True  # noqa: E712
    assert pd.isna(frame.loc["1", "days_since_transfusion"])  # record-based: NULL either way
    assert not report.closed_world and "open world" in report.to_text()


@needs_sample
def test_concept_ancestor_finds_brand_drugs(tmp_path):
    folder = _planted(tmp_path / "anc", ancestor=True)
    frame, _ = omop.import_omop(folder, "last")
    frame = frame.set_index("patient_id")
    assert frame.loc["1005", "first_line_anti_her2"] == True  # noqa: E712 - Herceptin -> trastuzumab
    # with a hierarchy, names are not searched (drug_name_fallback: auto): unlinked cisplatin is missed
    assert frame.loc["1002", "first_line_platinum"] == False  # noqa: E712
    doc = omop.load_concepts()
    doc["defaults"] = {**doc["defaults"], "drug_name_fallback": "always"}
    again, _ = omop.import_omop(folder, "last", concepts=doc)
    assert pd.isna(again.set_index("patient_id").loc["1002", "first_line_platinum"])  # given; line 1 unknown


@needs_sample
def test_parquet_folder_and_duckdb_file_give_the_same_cohort(planted_dir, planted, tmp_path):
    expected = planted[0].reset_index(drop=True)
    con = duckdb.connect()
    pq = tmp_path / "parquet"
    pq.mkdir()
    db = tmp_path / "omop_test.duckdb"
    dbcon = duckdb.connect(str(db))
    dbcon.execute("CREATE SCHEMA cdm")
    for f in planted_dir.glob("*.csv"):
        rel = f"read_csv('{f}', header = true, sample_size = -1)"
        con.execute(f"COPY (SELECT * FROM {rel}) TO '{pq / (f.stem.lower() + '.parquet')}' (FORMAT parquet)")
        dbcon.execute(f"CREATE TABLE cdm.{f.stem.lower()} AS SELECT * FROM {rel}")
    dbcon.close()
    for source in (pq, db):
        frame, report = omop.import_omop(source, "last")
        pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
    assert db.is_file()  # read only: still there, unchanged


@needs_sample
def test_progress_callback_and_connection_left_clean(planted_dir):
    seen = []
    con = duckdb.connect()
    con.execute("CREATE TABLE mine AS SELECT 1 AS x")
    omop.import_omop(planted_dir, "last", con=con, progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(isinstance(m, str) and m for _, m in seen)
    left = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert left == {"mine"}


# ----------------------------------------------------------------------------- clinical cases (issue 12)
# Persons 1007-1013 (tests/fixtures/omop_clinical, README there) with the six base persons,
# without the Synthea sample. Every expected value is derived by hand in the README.


def _clinical_folder(target: Path) -> Path:
    """The base and clinical CSV deltas as one CDM folder (columns: the union; missing cells empty)."""
    target.mkdir(parents=True, exist_ok=True)
    for base in sorted(FIXTURES.glob("*.csv")):
        if base.name == "CONCEPT_ANCESTOR.csv":
            continue
        parts = [pd.read_csv(base, dtype=str, keep_default_na=False)]
        extra = CLINICAL / base.name
        if extra.is_file():
            parts.append(pd.read_csv(extra, dtype=str, keep_default_na=False))
        pd.concat(parts).fillna("").to_csv(target / base.name, index=False)
    return target


@pytest.fixture(scope="module")
def clinical_dir(tmp_path_factory) -> Path:
    return _clinical_folder(tmp_path_factory.mktemp("omop") / "clinical")


@pytest.fixture(scope="module")
def clinical(clinical_dir):
    frame, report = omop.import_omop(clinical_dir, "last")
    return frame.set_index("patient_id"), report


def _col(frame: pd.DataFrame, column: str, ids) -> list:
    return [None if pd.isna(v) else v for v in frame.loc[list(ids), column]]


CLIN = ["1007", "1008", "1009", "1010", "1011", "1012", "1013"]


def test_hbv_active_needs_hbv_dna_or_an_active_code(clinical):
    frame, report = clinical
    # 1007 chronic (B18.1) only; 1008 chronic + DNA 1200 IU/mL; 1009 carrier (Z22.51) + DNA "<20";
    # 1010 acute (B16.9, 2 months ago) + DNA not detected; 1011 chronic + DNA 3000 IU/mL 18 months
    # ago (outside 183 days); 1012 chronic + DNA "<1000" (open against 500); 1013 nothing
    assert _col(frame, "hbv_active", CLIN) == [None, True, False, True, None, None, False]
    assert "hbv_dna" in report.column("hbv_active").source


def test_hbv_dna_threshold_is_a_parameter_of_the_concepts_file(clinical_dir):
    doc = copy.deepcopy(omop.load_concepts())
    doc["columns"]["hbv_active"]["lab"]["true_at"] = 1500  # 1008's 1200 IU/mL is now below
    frame, _ = omop.import_omop(clinical_dir, "last", concepts=doc)
    assert frame.set_index("patient_id").loc["1008", "hbv_active"] == False  # noqa: E712


def test_lower_oesophagus_c15_5_gives_an_unknown_site_not_another_malignancy(clinical):
    frame, _ = clinical
    p = frame.loc["1007"]  # C15.5 and 8140/3-C15.5 only: Siewert I or oesophageal, nobody can tell
    assert pd.isna(p["primary_site"]) and p["histology"] == "adenocarcinoma"
    assert p["other_malignancy_5y"] == False  # noqa: E712 - possibly the index tumour
    assert frame.loc["1011", "primary_site"] == "gej"  # C15.5 with C16.0: the junction code decides
    assert pd.isna(frame.loc["1011", "histology"])  # site codes only


def test_histology_who_subtypes_from_icdo3_codes_and_names(clinical):
    frame, _ = clinical
    assert _col(frame, "primary_site", ["1008", "1009", "1010"]) == ["stomach", "gej", "stomach"]
    # 8490/3-C16.9 source value; ICDO3 concept 8480/3-C16.0; "Poorly cohesive carcinoma of stomach"
    # beside "Adenocarcinoma of stomach" (the subtype wins over NOS)
    assert _col(frame, "histology", ["1008", "1009", "1010", "1013"]) == [
        "signet_ring_cell_carcinoma", "mucinous_adenocarcinoma", "poorly_cohesive_carcinoma", "adenocarcinoma"]
    assert load_cohort(frame.reset_index()).n == 13


def test_her2_ish_ratio_decides_then_interpretation_then_copy_number(clinical):
    frame, _ = clinical
    # 1007 ratio 2.3 with the lab's "Negative"; 1008 ratio 1.8 with 6.5 copies; 1009 6.2 copies;
    # 1010 ratio exactly 2.0 with 5.0 copies; 1011 5.0 copies (equivocal); 1012 the lab's
    # "Positive" (LOINC 85318-4, breast cancer specimen); 1013 3.5 copies
    assert _col(frame, "her2_ish", CLIN) == ["positive", "negative", "positive", "positive", None, "positive",
                                             "negative"]


def test_her2_loinc_terms_naming_breast_are_kept(clinical):
    frame, report = clinical
    assert frame.loc["1012", "her2_ihc"] == 3  # 85319-2 HER2 [Presence] in Breast cancer specimen by Immune stain
    ihc = {c[0] for c in report.column("her2_ihc").concepts}
    ish = {c[0] for c in report.column("her2_ish").concepts}
    assert 2000000205 in ihc and 2000000206 in ish


def test_dexamethasone_premedication_does_not_count_for_the_steroid_exclusion(clinical, clinical_dir):
    frame, report = clinical
    # 1007: 8 mg/day from the day before to 3 days after oxaliplatin: premedication, NULL (none)
    # 1008: the same, ending 5 days after: 8 mg x 6.6667 prednisone-equivalent
    assert pd.isna(frame.loc["1007", "corticosteroid_prednisone_eq_mg_day"])
    assert frame.loc["1008", "corticosteroid_prednisone_eq_mg_day"] == 53.3336
    assert "premedication" in report.column("corticosteroid_prednisone_eq_mg_day").note
    doc = copy.deepcopy(omop.load_concepts())  # the window is data: 1 day after makes 1007's course count
    doc["columns"]["corticosteroid_prednisone_eq_mg_day"]["premedication"]["days_after"] = 1
    again, _ = omop.import_omop(clinical_dir, "last", concepts=doc)
    assert again.set_index("patient_id").loc["1007", "corticosteroid_prednisone_eq_mg_day"] == 53.3336


def test_incl03_perioperative_therapy_and_trastuzumab_added_to_line_1(clinical):
    frame, _ = clinical
    cols = ["first_line_anti_her2", "first_line_platinum", "first_line_fluoropyrimidine",
            "prior_systemic_lines", "progressed_on_prior"]
    got = {pid: [None if pd.isna(v) else v for v in frame.loc[pid, cols]] for pid in CLIN[:6]}
    assert got == {
        "1007": [False, None, False, None, None],  # oxaliplatin, no advanced-disease record
        "1008": [True, True, True, None, None],  # adjuvant a year before metastasis; line 1 after it
        "1009": [True, True, True, None, None],  # trastuzumab added on day 45 of line 1
        "1010": [False, True, True, None, None],  # trastuzumab after irinotecan started line 2
        "1011": [None, True, True, None, None],  # perioperative XELOX ended 61 days before metastasis
        "1012": [False, False, False, 0, False],  # adjuvant in 2020, metastasis in 2024, nothing since
    }
    assert load_cohort(frame.reset_index()).n == 13


def test_incl03_open_world_leaves_no_line_unknown(clinical_dir):
    frame, _ = omop.import_omop(clinical_dir, "last", closed_world=False)
    frame = frame.set_index("patient_id")
    p = frame.loc["1012"]  # no line after the advanced-disease record: unknown in the open world
    assert p[["first_line_anti_her2", "prior_systemic_lines", "progressed_on_prior"]].isna().all()
    # 1007 never had anti-HER2 on record: false in the closed world, unknown in the open one
    assert frame.loc["1007", ["first_line_anti_her2", "first_line_platinum"]].isna().all()
    assert frame.loc["1010", "first_line_anti_her2"] == False  # noqa: E712 - line 1 on record, without it


def test_columns_are_left_out_where_their_tables_were_never_searched(tmp_path):
    """No DRUG_EXPOSURE / PROCEDURE_OCCURRENCE: their columns are absent (n/a), not "none on record"."""
    (tmp_path / "person.csv").write_text("person_id,gender_concept_id,year_of_birth\n1,8532,1980\n")
    (tmp_path / "observation_period.csv").write_text(
        "person_id,observation_period_start_date,observation_period_end_date\n1,2020-01-01,2024-05-31\n")
    (tmp_path / "condition_occurrence.csv").write_text(
        "person_id,condition_concept_id,condition_start_date,condition_source_value\n1,0,2024-01-02,C16.3\n")
    frame, report = omop.import_omop(tmp_path, "last")
    for column in ("days_since_anticancer_therapy", "days_since_transfusion", "days_since_radiotherapy",
                   "corticosteroid_prednisone_eq_mg_day", "anthracycline_doxorubicin_eq_mg_m2",
                   "first_line_anti_her2", "prior_systemic_lines", "hemoglobin_g_l", "her2_ish", "stale_columns"):
        assert column not in frame.columns, column
        c = report.column(column)
        assert c.status == "absent" and "not searched" in c.note and "missing or empty" in c.note, column
    assert frame["days_since_myocardial_infarction"].isna().all()  # conditions were searched: none on record
    assert frame["primary_site"].tolist() == ["stomach"]
    cohort = load_cohort(frame)
    assert "days_since_anticancer_therapy" in cohort.absent
    # drug exposures without a CONCEPT table cannot be told apart: not searched either
    (tmp_path / "drug_exposure.csv").write_text("person_id,drug_concept_id,drug_exposure_start_date\n"
                                                "1,1318011,2024-05-01\n")
    frame, report = omop.import_omop(tmp_path, "last")
    assert "days_since_anticancer_therapy" not in frame.columns
    assert "CONCEPT" in report.column("days_since_anticancer_therapy").note


@pytest.mark.parametrize(("code", "parts"), [
    ("8490/3", ("8490/3", None)), ("8490/3-C16.9", ("8490/3", "C169")), ("M8140/3", ("8140/3", None)),
    ("8140/3-c15.5", ("8140/3", "C155")), ("C16.9", None), ("8490", None), ("718-7", None),
])
def test_icdo_parts(code, parts):
    assert icdo_parts(code) == parts


@pytest.mark.parametrize(("value", "op", "expected"), [
    (2.0, None, True), (1.999999, None, False), (2.0, 4172703, True), (500, 4171756, False),
    (1000, 4171756, None), (499, 4171754, False), (500, 4171754, None), (600, 4172704, True),
    (100, 4172704, None), (None, None, None),
])
def test_at_least_respects_the_result_operator(value, op, expected):
    limit = 500 if op in (4171756, 4171754, 4172704) else 2.0
    sql = at_least("v", "o", limit)
    got = duckdb.connect().execute(f"SELECT {sql} FROM (SELECT ?::DOUBLE AS v, ?::BIGINT AS o)",
                                   [value, op]).fetchall()[0][0]
    assert got is expected


# ----------------------------------------------------------------------------- units and errors


@pytest.mark.parametrize(("column", "unit", "value", "expected"), [
    ("hemoglobin_g_l", "g/dL", 13.2, 132.0),
    ("hemoglobin_g_l", "g/L", 132, 132.0),
    ("hemoglobin_g_l", "mmol/L", 8.2, 132.02),
    ("albumin_g_l", "g/dL", 3.5, 35.0),
    ("creatinine_umol_l", "mg/dL", 1.2, 106.08),
    ("creatinine_umol_l", "mg/dL", 0.7, 61.88),
    ("creatinine_umol_l", "mmol/L", 0.09, 90.0),
    ("bilirubin_total_umol_l", "mg/dL", 0.7, 11.97),
    ("bilirubin_total_umol_l", "mg/dL", 1.1, 18.81),
    ("bilirubin_direct_umol_l", "mg/dL", 0.3, 5.13),
    ("platelets_1e9_l", "cells/uL", 150000, 150.0),
    ("platelets_1e9_l", "10*3/uL", 257.6, 257.6),
    ("platelets_1e9_l", "x10^9/L", 90, 90.0),
    ("anc_1e9_l", "/mm3", 1500, 1.5),
    ("anc_1e9_l", "10^3/µL", 1.5, 1.5),
    ("ast_u_l", "IU/L", 40, 40.0),
    ("ast_u_l", "ukat/L", 0.5, 30.0),
    ("weight_kg", "lb", 150, 68.038856),
    ("weight_kg", "[lb_us]", 100, 45.359237),
    ("aptt_s", "sec", 35, 35.0),
    ("inr", "", 1.5, 1.5),
    ("sbp_mmhg", "mm[Hg]", 120, 120.0),
    ("sbp_mmhg", "kPa", 16, 120.00992),
    ("qt_ms", "s", 0.44, 440.0),
    ("lvef_pct", "%", 55, 55.0),
    ("bilirubin_total_uln_umol_l", "mg/dL", 1.2, 20.52),
])
def test_unit_conversions(column, unit, value, expected):
    norm = omop.normalise_unit(unit)
    matches = [u for u in omop.column_units(column) if norm in u["aliases"] or (not norm and u["missing_unit"])]
    assert len(matches) == 1, (column, unit, [u["unit"] for u in matches])
    assert omop.convert(value, matches[0]["factor"]) == expected


@pytest.mark.parametrize(("text", "norm"), [
    ("g/dL", "g/dl"), (" mg / dL ", "mg/dl"), ("10^9/L", "10*9/l"), ("{cells}/uL", "/ul"),
    ("[iU]/L", "iu/l"), ("µmol/L", "umol/l"), ("10*9.{cellls}/L", "10*9/l"), (None, ""),
])
def test_normalise_unit(text, norm):
    assert omop.normalise_unit(text) == norm


def test_unknown_units_are_not_guessed():
    aliases = set().union(*(u["aliases"] for u in omop.column_units("hemoglobin_g_l")))
    assert "mg/l" not in aliases and "" not in aliases
    assert not any(u["missing_unit"] for u in omop.column_units("creatinine_umol_l"))


def test_bad_inputs_name_the_problem_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        omop.import_omop(tmp_path / "nope", "last")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "MEASUREMENT.csv").write_text("person_id\n1\n")
    with pytest.raises(ValueError, match="no PERSON table"):
        omop.import_omop(tmp_path / "empty", "last")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a folder, a zip or a DuckDB"):
        omop.import_omop(tmp_path / "x.txt", "last")
    with pytest.raises(ValueError, match="YYYY-MM-DD or 'last'"):
        omop.import_omop(tmp_path / "empty", "31/12/2024")
    with pytest.raises(ValueError, match="lookback_days"):
        omop.import_omop(tmp_path / "empty", "last", lookback_days=-1)
    dup = tmp_path / "dup"
    dup.mkdir()
    (dup / "PERSON.csv").write_text("person_id,gender_concept_id,year_of_birth\n1,8507,1970\n1,8532,1971\n")
    with pytest.raises(ValueError, match="duplicate person_id 1"):
        omop.import_omop(dup, "last")


def test_minimal_cdm_without_vocabulary(tmp_path):
    """PERSON + OBSERVATION_PERIOD + MEASUREMENT, no CONCEPT: IDs and LOINC source values still work."""
    (tmp_path / "person.csv").write_text("person_id,gender_concept_id,year_of_birth,month_of_birth,day_of_birth\n"
                                         "1,8532,1980,5,20\n2,0,1990,,\n")
    (tmp_path / "observation_period.csv").write_text(
        "person_id,observation_period_start_date,observation_period_end_date\n1,2020-01-01,2024-05-31\n"
        "2,2020-01-01,2024-05-31\n")
    (tmp_path / "measurement.csv").write_text(
        "person_id,measurement_concept_id,measurement_date,value_as_number,unit_concept_id,unit_source_value,"
        "measurement_source_value\n1,0,2024-05-30,11.0,0,g/dL,718-7\n1,3024929,2024-05-30,95,8848,,\n"
        "2,3000963,2024-05-01,100,0,mg/L,\n")
    (tmp_path / "condition_occurrence.csv").write_text(
        "person_id,condition_concept_id,condition_start_date,condition_source_value\n1,0,2024-01-02,C16.3\n")
    frame, report = omop.import_omop(tmp_path, "last")
    frame = frame.set_index("patient_id")
    assert frame.loc["1", ["sex", "age_years", "hemoglobin_g_l", "platelets_1e9_l", "primary_site"]].tolist() == [
        "F", 44.0, 110.0, 95.0, "stomach"]
    assert pd.isna(frame.loc["2", "sex"]) and frame.loc["2", "age_years"] == 33  # born mid-1990 (assumed 1 July)
    assert pd.isna(frame.loc["2", "hemoglobin_g_l"])  # mg/L is not a haemoglobin unit: skipped, not guessed
    assert "'mg/L' (1)" in report.column("hemoglobin_g_l").note
    assert report.cdm_version == "5.3"
    load_cohort(frame.reset_index())


def test_without_observation_period_the_last_record_is_the_index(tmp_path):
    (tmp_path / "PERSON.csv").write_text("person_id,gender_concept_id,year_of_birth\n1,8532,1980\n2,8507,1985\n")
    (tmp_path / "MEASUREMENT.csv").write_text(
        "person_id,measurement_concept_id,measurement_date,value_as_number,unit_concept_id\n"
        "1,3000963,2024-05-30,11.5,8713\n")
    (tmp_path / "DRUG_EXPOSURE.csv").write_text("person_id,drug_concept_id,drug_exposure_start_date\n"
                                                "1,0,2024-06-02\n")
    frame, report = omop.import_omop(tmp_path, "last")
    assert frame["patient_id"].tolist() == ["1"] and frame["screening_date"].tolist() == [dt.date(2024, 6, 2)]
    assert frame["hemoglobin_g_l"].tolist() == [115.0] and frame["age_years"].tolist() == [43.0]
    assert report.excluded == {"without any dated record (no index date)": 1}


def test_concepts_file_is_checked(tmp_path):
    doc = omop.load_concepts()
    assert "hemoglobin_g_l" in doc["columns"] and "trastuzumab" in str(doc["drug_groups"]["anti_her2"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("concept_sets: {a: {include_sets: [b]}}\ncolumns: {}\n")
    with pytest.raises(ValueError, match="unknown set 'b'"):
        omop.load_concepts(bad)
    bad.write_text("concept_sets: {}\ncolumns: {hb: {kind: lab}}\n")
    with pytest.raises(ValueError, match="'hb' is not a dictionary column"):
        omop.load_concepts(bad)
    bad.write_text("concept_sets: {}\ncolumns: {ecog: {kind: guess}}\n")
    with pytest.raises(ValueError, match="kind 'guess'"):
        omop.load_concepts(bad)
    bad.write_text("concept_sets: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        omop.load_concepts(bad)


def test_every_dictionary_column_is_derived_or_documented_as_absent():
    doc = omop.load_concepts()
    covered = set(omop.BUILTIN) | set(omop.DERIVED_EXTRA) | set(doc["columns"]) | set(doc["not_derived"])
    covered |= {s["uln"] for s in doc["columns"].values() if s.get("uln")}
    assert covered == {c.name for c in schema.COLUMNS}
    assert not set(doc["columns"]) & set(doc["not_derived"])


def test_write_cohort_by_suffix(tmp_path):
    frame = pd.DataFrame({"patient_id": ["1"], "hemoglobin_g_l": [120.0]})
    assert omop.write_cohort(frame, tmp_path / "a.csv").read_text().startswith("patient_id")
    assert pd.read_parquet(omop.write_cohort(frame, tmp_path / "a.parquet")).equals(frame)
    with pytest.raises(ValueError, match=r"end the name in \.csv or \.parquet"):
        omop.write_cohort(frame, tmp_path / "a.xlsx")
