"""The cohort loader (kn026/ingest/cohort.py) against cohort-dictionary.md sections 1 and 4.

Table tests in the datasette style: each row is raw input -> expected value, or raw
input -> the problem the loader must report. A bad value is always an error naming
the column, row, patient and value; it never becomes a silent NULL.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kn026.base import schema
from kn026.base.table import connect
from kn026.core.criteria import load_protocol
from kn026.core.engine import Engine
from kn026.ingest.cohort import load_cohort
from kn026.ingest.problems import CohortError, Problem
from tests.cohort_support import assert_rejected, load_column, problems_for, write_csv

PROTOCOL = load_protocol()


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- booleans (dictionary section 1) ------------------------------------------------------
TRUE_SPELLINGS = ["true", "TRUE", "True", "tRuE", "1", "yes", "YES", "Yes", "y", "Y", "t", "T",
                  " true ", "\tyes"]
FALSE_SPELLINGS = ["false", "FALSE", "False", "fAlSe", "0", "no", "NO", "No", "n", "N", "f", "F",
                   " false ", "no\t"]


@pytest.mark.parametrize("raw", TRUE_SPELLINGS)
def test_boolean_true_spellings(tmp_path, raw):
    assert load_column(tmp_path, "consent_signed", raw) is True


@pytest.mark.parametrize("raw", FALSE_SPELLINGS)
def test_boolean_false_spellings(tmp_path, raw):
    assert load_column(tmp_path, "consent_signed", raw) is False


@pytest.mark.parametrize("raw", ["", "   "])
def test_boolean_empty_is_null(tmp_path, raw):
    assert load_column(tmp_path, "hbv_active", raw) is None


@pytest.mark.parametrize("raw", ["2", "-1", "1.0", "0.0", "10", "ja", "nein", "on", "off", "truee",
                                 "yess", "positive", "NA", "N/A", "null", "none", "?", "-", "x"])
def test_boolean_bad_spellings_rejected(tmp_path, raw):
    assert_rejected(tmp_path, "hbv_active", raw)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(schema.TRUE_WORDS + schema.FALSE_WORDS), st.randoms(use_true_random=False))
def test_boolean_any_case(tmp_path_factory, word, rnd):
    mixed = "".join(ch.upper() if rnd.random() < 0.5 else ch for ch in word)
    got = load_column(tmp_path_factory.mktemp("b"), "able_to_comply", mixed)
    assert got is (word in schema.TRUE_WORDS)


def test_every_flag_column_reads_booleans(tmp_path):
    flags = [c.name for c in schema.COLUMNS if c.kind == schema.FLAG]
    rows = [["P1"] + ["Yes"] * len(flags), ["P2"] + ["n"] * len(flags), ["P3"] + [""] * len(flags)]
    cohort = load_cohort(write_csv(tmp_path / "c.csv", ["patient_id", *flags], rows))
    got = cohort.con.execute(f"SELECT * FROM {cohort.table} ORDER BY patient_id").fetchall()
    assert [r[1:] for r in got] == [(True,) * len(flags), (False,) * len(flags), (None,) * len(flags)]


# -- sex and categories -------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    ("F", "F"), ("f", "F"), (" F ", "F"), ("female", "F"), ("Female", "F"), ("FEMALE", "F"),
    ("woman", "F"), ("W", "F"),
    ("M", "M"), ("m", "M"), ("male", "M"), ("Male", "M"), (" MALE ", "M"), ("man", "M"),
    ("", None), ("  ", None),
])
def test_sex_spellings(tmp_path, raw, expected):
    assert load_column(tmp_path, "sex", raw) == expected


@pytest.mark.parametrize("raw", ["x", "U", "unknown", "fm", "2", "0", "females", "other", "NA"])
def test_sex_bad_values_rejected(tmp_path, raw):
    assert_rejected(tmp_path, "sex", raw)


@pytest.mark.parametrize("column, raw, expected", [
    ("brain_metastases", "Treated Stable", "treated_stable"),
    ("brain_metastases", "treated-stable", "treated_stable"),
    ("brain_metastases", "  TREATED   STABLE ", "treated_stable"),
    ("brain_metastases", "None", "none"),
    ("brain_metastases", "ACTIVE", "active"),
    ("primary_site", " GEJ ", "gej"),
    ("primary_site", "Stomach", "stomach"),
    ("primary_site", "Colon Ascending", "colon_ascending"),  # open category: any text, normalised
    ("histology", "Adenocarcinoma", "adenocarcinoma"),
    ("histology", "Signet Ring Cell", "signet_ring_cell"),
    ("disease_extent", "Locally-Advanced Unresectable", "locally_advanced_unresectable"),
    ("disease_extent", "locally advanced unresectable", "locally_advanced_unresectable"),
    ("disease_extent", "Metastatic", "metastatic"),
    ("disease_extent", "RECURRENT", "recurrent"),
    ("disease_extent", "resectable", "resectable"),
    ("her2_ish", "Positive", "positive"),
    ("her2_ish", " NEGATIVE", "negative"),
    ("her2_ish", "", None),
    ("primary_site", "", None),
])
def test_category_normalisation(tmp_path, column, raw, expected):
    assert load_column(tmp_path, column, raw) == expected


@pytest.mark.parametrize("column, raw", [
    ("brain_metastases", "yes"),
    ("brain_metastases", "treated"),
    ("disease_extent", "advanced"),
    ("disease_extent", "locally advanced"),
    ("her2_ish", "equivocal"),
    ("her2_ish", "+"),
])
def test_closed_category_rejects_other_values(tmp_path, column, raw):
    assert_rejected(tmp_path, column, raw)
    assert "one of" in str(problems_for(tmp_path, column, raw)[0])


@pytest.mark.parametrize("column, raw, expected", [
    ("site_id", " S01 ", "S01"),
    ("country", "China", "China"),  # text columns keep their case
    ("site_id", "", None),
])
def test_text_columns_trimmed(tmp_path, column, raw, expected):
    assert load_column(tmp_path, column, raw) == expected


# -- numbers: range bounds -----------------------------------------------------------------
# (column, lowest accepted, just below, highest accepted, just above); None: no bound there.
BOUNDS = [
    ("age_years", "0", "-0.001", "120", "120.001"),
    ("ecog", "0", "-1", "5", "6"),
    ("her2_ihc", "0", "-1", "3", "4"),
    ("unresolved_ae_grade", "0", "-1", "5", "6"),
    ("peripheral_neuropathy_grade", "0", "-1", "5", "6"),
    ("diarrhea_grade", "0", "-1", "5", "6"),
    ("nyha_class", "0", "-1", "4", "5"),
    ("days_since_transfusion", "0", "-1", "36500", "36501"),
    ("days_since_myocardial_infarction", "0", "-1", None, None),
    ("anthracycline_doxorubicin_eq_mg_m2", "0", "-0.5", None, None),
    ("corticosteroid_prednisone_eq_mg_day", "0", "-0.01", None, None),
    ("anc_1e9_l", "0", "-0.01", "100", "100.01"),
    ("hemoglobin_g_l", "30", "29.9", "250", "250.1"),
    ("ast_u_l", "0", "-0.1", None, None),
    ("creatinine_clearance_ml_min", "0", "-0.1", None, None),
    ("lvef_pct", "5", "4.9", "95", "95.1"),
    ("weight_loss_pct_1m", "0", "-0.1", "100", "100.1"),
    ("lvef_drop_on_anti_her2_pct", "-100", "-100.1", "100", "100.1"),
    ("prior_systemic_lines", "0", "-1", "30", "31"),
    ("life_expectancy_months", "0", "-0.1", None, None),
    # bounds excluded at zero (division by these values)
    ("weight_kg", "20", "19.99", "350", "350.01"),
    ("creatinine_umol_l", "15", "14.99", "2500", "2500.01"),
    ("platelets_1e9_l", "1", "0.99", "2000", "2000.1"),
    ("albumin_g_l", "10", "9.9", "70", "70.1"),
    ("heart_rate_bpm", "0.1", "0", "400", "400.1"),
    ("inr_uln", "0.01", "0", None, None),
    ("bilirubin_total_uln_umol_l", "0.1", "0", None, None),
    ("last_anticancer_half_life_days", "0.01", "0", None, None),
]


@pytest.mark.parametrize("column, low, below, high, above", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_range_bounds(tmp_path, column, low, below, high, above):
    assert load_column(tmp_path, column, low) == float(low)
    assert_rejected(tmp_path, column, below)
    if high is not None:
        assert load_column(tmp_path, column, high) == float(high)
        assert_rejected(tmp_path, column, above)


def _just_outside(col, side) -> str:
    step = 1 if col.kind == schema.INTEGER else 0.001
    return format(col.low - step if side == "low" else col.high + step, ".12g")


RANGED = [c for c in schema.COLUMNS if (c.low is not None or c.high is not None) and c.guard is None]
GUARDED = [c for c in schema.COLUMNS if c.guard is not None]


@pytest.mark.parametrize("col", RANGED, ids=[c.name for c in RANGED])
def test_every_dictionary_range_is_enforced(tmp_path, col):
    """Each schema bound: on the bound accepted (unless open), just outside rejected."""
    if col.low is not None:
        if col.low_open:
            assert_rejected(tmp_path, col.name, f"{col.low:g}")
        else:
            assert load_column(tmp_path, col.name, f"{col.low:g}") == col.low
            assert_rejected(tmp_path, col.name, _just_outside(col, "low"))
    if col.high is not None:
        assert load_column(tmp_path, col.name, f"{col.high:g}") == col.high
        assert_rejected(tmp_path, col.name, _just_outside(col, "high"))


def test_dictionary_ranges_match_the_issue():
    """Plausible ranges named in the issue: age 0-120, ECOG 0-5, HER2 0-3, CTCAE 0-5, NYHA 0-4."""
    for name, low, high in [("age_years", 0, 120), ("ecog", 0, 5), ("her2_ihc", 0, 3),
                            ("unresolved_ae_grade", 0, 5), ("peripheral_neuropathy_grade", 0, 5),
                            ("diarrhea_grade", 0, 5), ("nyha_class", 0, 4)]:
        col = schema.column(name)
        assert (col.low, col.high, col.low_open) == (low, high, False), name
    for col in schema.COLUMNS:  # days, doses and lab values are never negative
        if col.name.startswith("days_since_") or col.unit in ("mg/m2", "mg/day") or col.name.endswith(
                ("_u_l", "_umol_l", "_g_l", "_1e9_l", "_s")):
            assert col.low is not None and col.low >= 0, col.name


# -- numbers: parsing -----------------------------------------------------------------------
@pytest.mark.parametrize("column, raw, expected", [
    ("ecog", "2.0", 2),
    ("ecog", "2.00", 2),
    ("ecog", " 1 ", 1),
    ("ecog", "+1", 1),
    ("ecog", "-0", 0),
    ("ecog", "1e0", 1),
    ("her2_ihc", "3.0", 3),
    ("days_since_angina", "091", 91),
    ("age_years", "18", 18.0),
    ("age_years", "17.9", 17.9),
    ("age_years", ".5", 0.5),
    ("age_years", "1E2", 100.0),
    ("inr", "1.8", 1.8),
    ("anc_1e9_l", " 1.5 ", 1.5),
    ("ecog", "", None),
    ("age_years", "", None),
    ("age_years", "   ", None),
])
def test_numbers_accepted(tmp_path, column, raw, expected):
    got = load_column(tmp_path, column, raw)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("column, raw", [
    ("ecog", "1.5"),  # whole number columns reject decimals
    ("ecog", "0.1"),
    ("her2_ihc", "2.5"),
    ("nyha_class", "1.0001"),
    ("days_since_transfusion", "13.5"),
    ("prior_systemic_lines", "1.5"),
    ("measurable_lesions", "0.5"),
    ("ecog", "3000000000"),  # beyond INTEGER: an error, never an overflow
    ("ecog", "1e20"),
    ("age_years", "1e300"),
])
def test_integers_with_decimals_or_huge_rejected(tmp_path, column, raw):
    assert_rejected(tmp_path, column, raw)


NON_NUMERIC = ["abc", "1,5", "12kg", "1.2.3", "0x10", "--1", "one", "NA", "N/A", "null",
               "-", "?", "18 years", "<5", ">=3", "true", "1/2", "½"]


@pytest.mark.parametrize("raw", NON_NUMERIC)
@pytest.mark.parametrize("column", ["age_years", "ecog", "inr"])
def test_non_numeric_text_rejected(tmp_path, column, raw):
    assert_rejected(tmp_path, column, raw)


@pytest.mark.parametrize("raw", ["NaN", "nan", "NAN", "inf", "-inf", "Infinity", "-Infinity", "+inf"])
@pytest.mark.parametrize("column", ["age_years", "ecog", "creatinine_umol_l", "days_since_angina",
                                    "anthracycline_doxorubicin_eq_mg_m2"])
def test_nan_and_infinity_text_rejected(tmp_path, column, raw):
    assert_rejected(tmp_path, column, raw)


# -- dates ------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    ("2024-03-31", dt.date(2024, 3, 31)),
    ("2024-02-29", dt.date(2024, 2, 29)),  # leap day
    (" 2024-01-01 ", dt.date(2024, 1, 1)),
    ("2024-03-31T10:15:00", dt.date(2024, 3, 31)),  # ISO date-time: the date part
    ("2024-03-31 10:15:00", dt.date(2024, 3, 31)),
    ("", None),
])
def test_dates_accepted(tmp_path, raw, expected):
    assert load_column(tmp_path, "screening_date", raw) == expected


@pytest.mark.parametrize("raw", ["2024-13-01", "2024-02-30", "2023-02-29", "2024-00-10", "2024-04-31",
                                 "31/03/2024", "03/31/2024", "31.03.2024", "20240331", "2024-03-31Z",
                                 "yesterday", "45382", "March 31, 2024"])
def test_bad_dates_rejected(tmp_path, raw):
    assert_rejected(tmp_path, "screening_date", raw)
    assert "ISO 8601" in problems_for(tmp_path, "screening_date", raw)[0].message


# -- patient_id -------------------------------------------------------------------------------
def test_duplicate_patient_id_lists_both_rows(tmp_path):
    path = write_csv(tmp_path / "c.csv", ["patient_id", "ecog"],
                     [["P1", "0"], ["P2", "1"], ["P1", "1"]])
    with pytest.raises(CohortError) as info:
        load_cohort(path)
    (p,) = info.value.problems
    assert p.column == "patient_id" and p.patient_id == "P1"
    assert "rows 1, 3" in str(p) and "unique" in str(p)


def test_duplicate_patient_id_after_trimming(tmp_path):
    path = write_csv(tmp_path / "c.csv", ["patient_id"], [["P1"], [" P1 "]])
    with pytest.raises(CohortError) as info:
        load_cohort(path)
    assert [p.patient_id for p in info.value.problems] == ["P1"]


def test_many_duplicate_ids_are_all_counted(tmp_path):
    rows = [[f"P{i % 8}"] for i in range(24)]  # 8 IDs, each three times
    with pytest.raises(CohortError) as info:
        load_cohort(write_csv(tmp_path / "c.csv", ["patient_id"], rows))
    err = info.value
    assert len(err.problems) == 5  # examples
    assert err.total == 8  # but every duplicated ID is counted
    assert "and 3 more" in str(err)


@pytest.mark.parametrize("raw", ["", "   "])
def test_empty_patient_id_rejected(tmp_path, raw):
    path = write_csv(tmp_path / "c.csv", ["patient_id", "ecog"], [["P1", "0"], [raw, "1"], ["P3", "1"]])
    with pytest.raises(CohortError) as info:
        load_cohort(path)
    (p,) = info.value.problems
    assert (p.column, p.row) == ("patient_id", 2)
    assert "row 2" in str(p) and "empty" in str(p)


def test_missing_patient_id_column(tmp_path):
    path = write_csv(tmp_path / "c.csv", ["id", "ecog"], [["P1", "0"]])
    with pytest.raises(CohortError) as info:
        load_cohort(path)
    (p,) = info.value.problems
    assert p.column == "patient_id" and "missing" in p.message and p.row is None


@pytest.mark.parametrize("header", ["patient_id", "Patient_ID", "PATIENT_ID", " patient_id "])
def test_patient_id_header_case_and_whitespace(tmp_path, header):
    cohort = load_cohort(write_csv(tmp_path / "c.csv", [header, "ECOG"], [["P1", "1"]]))
    assert cohort.con.execute(f"SELECT patient_id, ecog FROM {cohort.table}").fetchall() == [("P1", 1)]


# -- header problems ----------------------------------------------------------------------------
@pytest.mark.parametrize("header", [
    ["patient_id", "Age_Years", "age_years"],
    ["patient_id", "age_years", "age_years"],
    ["patient_id", "age_years", "AGE_YEARS"],
    ["patient_id", "age_years", " age_years"],
    ["patient_id", "Note", "note"],  # extra columns too
    ["patient_id", "Patient_Id"],
])
def test_duplicate_header_after_case_folding_csv(tmp_path, header):
    path = write_csv(tmp_path / "c.csv", header, [["P1"] + ["1"] * (len(header) - 1)])
    with pytest.raises(CohortError) as info:
        load_cohort(path)
    (p,) = info.value.problems
    assert "twice" in p.message and p.column == header[-1].strip().lower()


def test_duplicate_header_dataframe():
    frame = pd.DataFrame({"patient_id": ["P1"], "Age_Years": [50], "age_years": [60]})
    with pytest.raises(CohortError, match="twice"):
        load_cohort(frame)
    frame = pd.DataFrame([["P1", 50, 60]], columns=["patient_id", "ecog", "ecog"])
    with pytest.raises(CohortError, match="twice"):
        load_cohort(frame)


def test_duplicate_header_parquet(tmp_path):
    table = pa.Table.from_arrays([pa.array(["P1"]), pa.array([1]), pa.array([2])],
                                 names=["patient_id", "ecog", "ECOG"])
    pq.write_table(table, tmp_path / "c.parquet")
    with pytest.raises(CohortError, match="twice"):
        load_cohort(tmp_path / "c.parquet")


def test_duplicate_header_excel(tmp_path):
    frame = pd.DataFrame([["P1", 50, 60]], columns=["patient_id", "Age_Years", "age_years"])
    frame.to_excel(tmp_path / "c.xlsx", index=False)
    with pytest.raises(CohortError, match="twice"):
        load_cohort(tmp_path / "c.xlsx")


# -- files --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["c.json", "c.xls", "c.md", "c.sav", "c.feather"])
def test_unsupported_suffix(tmp_path, name):
    (tmp_path / name).write_text("patient_id\nP1\n")
    with pytest.raises(CohortError) as info:
        load_cohort(tmp_path / name)
    (p,) = info.value.problems
    assert p.column == "file" and "unsupported" in p.message and "CSV, Parquet or Excel" in p.message


@pytest.mark.parametrize("name", ["nope.csv", "nope.parquet", "nope.xlsx", "missing_dir/c.csv"])
def test_nonexistent_path(tmp_path, name):
    with pytest.raises(CohortError) as info:
        load_cohort(tmp_path / name)
    (p,) = info.value.problems
    assert p.column == "file" and "does not exist" in p.message and "check the path" in p.message


def test_directory_is_not_a_cohort(tmp_path):
    with pytest.raises(CohortError, match="not a file"):
        load_cohort(tmp_path)


@pytest.mark.parametrize("name, data, fragment", [
    ("c.csv", "patient_id,histology\nP1,adénocarcinome\n".encode("latin-1"), "utf-8"),
    ("c.parquet", b"not parquet", "Parquet"),
    ("c.xlsx", b"not a workbook", "Excel"),
])
def test_unreadable_files(tmp_path, name, data, fragment):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(CohortError) as info:
        load_cohort(tmp_path / name)
    (p,) = info.value.problems
    assert p.column == "file" and fragment in p.message and name in p.message
    assert "adénocarcinome" not in p.message  # no patient data echoed from a broken line


@pytest.mark.parametrize("text", [
    "patient_id;ecog\nP1;1\n",  # semicolon
    "patient_id\tecog\nP1\t1\n",  # tab
    '"patient_id","ecog"\n"P1","1"\n',  # quoted
    "patient_id,ecog\r\nP1,1\r\n",  # CRLF
    "\ufeffpatient_id,ecog\nP1,1\n",  # UTF-8 BOM
])
def test_csv_dialects(tmp_path, text):
    path = tmp_path / "c.csv"
    path.write_bytes(text.encode("utf-8"))
    cohort = load_cohort(path)
    assert cohort.con.execute(f"SELECT patient_id, ecog FROM {cohort.table}").fetchall() == [("P1", 1)]


def test_header_only_csv_is_an_empty_cohort(tmp_path):
    cohort = load_cohort(write_csv(tmp_path / "c.csv", ["patient_id", "ecog"], []))
    assert cohort.n == 0 and cohort.present == {"patient_id", "ecog"}


def _typed_table():
    return pa.table({
        "patient_id": pa.array(["P1", "P2", "P3"]),
        "ecog": pa.array([0, 1, None], pa.int64()),
        "her2_ihc": pa.array([3, 2, None], pa.int8()),
        "age_years": pa.array([58.5, 18.0, None], pa.float64()),
        "inr": pa.array([1.8, None, 1.0], pa.float32()),
        "consent_signed": pa.array([True, False, None]),
        "sex": pa.array(["female", "M", None]),
        "brain_metastases": pa.array(["Treated Stable", "none", None]),
        "screening_date": pa.array([dt.date(2024, 3, 31), None, dt.date(2024, 1, 1)], pa.date32()),
        "site_note": pa.array(["a", "b", None]),
    })


EXPECTED_TYPED = {
    "P1": {"ecog": 0, "her2_ihc": 3, "age_years": 58.5, "consent_signed": True, "sex": "F",
           "brain_metastases": "treated_stable", "screening_date": dt.date(2024, 3, 31), "site_note": "a"},
    "P2": {"ecog": 1, "her2_ihc": 2, "age_years": 18.0, "consent_signed": False, "sex": "M",
           "brain_metastases": "none", "screening_date": None, "site_note": "b"},
    "P3": {"ecog": None, "her2_ihc": None, "age_years": None, "consent_signed": None, "sex": None,
           "brain_metastases": None, "screening_date": dt.date(2024, 1, 1), "site_note": None},
}


def _rows(cohort, columns):
    cols = ", ".join(f'"{c}"' for c in columns)
    out = cohort.con.execute(f"SELECT patient_id, {cols} FROM {cohort.table} ORDER BY patient_id").fetchall()
    return {r[0]: dict(zip(columns, r[1:], strict=True)) for r in out}


def test_parquet_typed_columns(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(_typed_table(), path)
    cohort = load_cohort(path)
    assert _rows(cohort, list(EXPECTED_TYPED["P1"])) == EXPECTED_TYPED
    assert cohort.con.execute(f"SELECT inr FROM {cohort.table} WHERE patient_id = 'P1'").fetchone()[0] \
        == pytest.approx(1.8)
    assert cohort.extra == ("site_note",)


def test_parquet_typed_bad_values(tmp_path):
    table = pa.table({
        "patient_id": pa.array(["P1", "P2"]),
        "ecog": pa.array([7, 3_000_000_000], pa.int64()),
        "age_years": pa.array([float("nan"), 121.0]),
        "her2_ihc": pa.array([1.5, float("inf")]),
    })
    pq.write_table(table, tmp_path / "c.parquet")
    with pytest.raises(CohortError) as info:
        load_cohort(tmp_path / "c.parquet")
    got = {(p.column, p.patient_id, p.value) for p in info.value.problems}
    assert got == {("ecog", "P1", "7"), ("ecog", "P2", "3000000000"), ("age_years", "P1", "nan"),
                   ("age_years", "P2", "121.0"), ("her2_ihc", "P1", "1.5"), ("her2_ihc", "P2", "inf")}


def test_parquet_string_typed_numbers(tmp_path):
    table = pa.table({
        "patient_id": pa.array(["P1", "P2"]),
        "ecog": pa.array(["1", "2.0"]),
        "age_years": pa.array(["50", " 60.5 "]),
        "hbv_active": pa.array(["Y", "n"]),
        "screening_date": pa.array(["2024-03-31", ""]),
    })
    pq.write_table(table, tmp_path / "c.parquet")
    cohort = load_cohort(tmp_path / "c.parquet")
    assert _rows(cohort, ["ecog", "age_years", "hbv_active", "screening_date"]) == {
        "P1": {"ecog": 1, "age_years": 50.0, "hbv_active": True, "screening_date": dt.date(2024, 3, 31)},
        "P2": {"ecog": 2, "age_years": 60.5, "hbv_active": False, "screening_date": None},
    }


def test_parquet_string_typed_bad_number(tmp_path):
    pq.write_table(pa.table({"patient_id": ["P1"], "ecog": ["1.5"]}), tmp_path / "c.parquet")
    with pytest.raises(CohortError) as info:
        load_cohort(tmp_path / "c.parquet")
    assert [(p.column, p.value) for p in info.value.problems] == [("ecog", "1.5")]


def test_parquet_detected_by_magic_bytes(tmp_path):
    pq.write_table(pa.table({"patient_id": ["P1"], "ecog": [1]}), tmp_path / "cohort")  # no suffix
    assert load_cohort(tmp_path / "cohort").n == 1


def test_excel_workbook(tmp_path):
    frame = pd.DataFrame({
        "patient_id": ["P1", "P2"], "age_years": [58, 60.5], "ecog": [1, None],
        "consent_signed": [True, False], "sex": ["female", "M"],
        "screening_date": [dt.datetime(2024, 3, 31), None], "disease_extent": ["Metastatic", "Recurrent"],
        "Site Note": ["kept", None],
    })
    path = tmp_path / "c.xlsx"
    frame.to_excel(path, index=False)
    cohort = load_cohort(path)
    assert _rows(cohort, ["age_years", "ecog", "consent_signed", "sex", "screening_date",
                          "disease_extent", "Site Note"]) == {
        "P1": {"age_years": 58.0, "ecog": 1, "consent_signed": True, "sex": "F",
               "screening_date": dt.date(2024, 3, 31), "disease_extent": "metastatic", "Site Note": "kept"},
        "P2": {"age_years": 60.5, "ecog": None, "consent_signed": False, "sex": "M",
               "screening_date": None, "disease_extent": "recurrent", "Site Note": ""},
    }


def test_excel_bad_value_names_row_and_patient(tmp_path):
    pd.DataFrame({"patient_id": ["P1", "P2"], "ecog": [1, 9]}).to_excel(tmp_path / "c.xlsx", index=False)
    with pytest.raises(CohortError) as info:
        load_cohort(tmp_path / "c.xlsx")
    (p,) = info.value.problems
    assert (p.column, p.row, p.patient_id, p.value) == ("ecog", 2, "P2", "9")


def test_dataframe_source():
    frame = pd.DataFrame({
        "patient_id": ["P1", "P2", "P3"],
        "ecog": [0, 1, None],  # float with NaN in pandas
        "age_years": [58.0, float("nan"), 30],
        "consent_signed": [True, None, False],
        "sex": ["F", "male", None],
        "Extra": ["x", "y", "z"],
    })
    cohort = load_cohort(frame)
    assert cohort.source == "DataFrame"
    assert _rows(cohort, ["ecog", "age_years", "consent_signed", "sex", "Extra"]) == {
        "P1": {"ecog": 0, "age_years": 58.0, "consent_signed": True, "sex": "F", "Extra": "x"},
        "P2": {"ecog": 1, "age_years": None, "consent_signed": None, "sex": "M", "Extra": "y"},
        "P3": {"ecog": None, "age_years": 30.0, "consent_signed": False, "sex": None, "Extra": "z"},
    }


def test_dataframe_source_bad_values():
    frame = pd.DataFrame({"patient_id": ["P1", "P2"], "ecog": [1.5, 2.0], "age_years": ["abc", "40"]})
    with pytest.raises(CohortError) as info:
        load_cohort(frame)
    assert {(p.column, p.patient_id, p.value) for p in info.value.problems} == {
        ("ecog", "P1", "1.5"), ("age_years", "P1", "abc")}


def test_arrow_table_source():
    cohort = load_cohort(_typed_table())
    assert _rows(cohort, list(EXPECTED_TYPED["P1"])) == EXPECTED_TYPED


def test_two_cohorts_share_a_connection_by_table_name():
    con = connect()
    a = load_cohort(pd.DataFrame({"patient_id": ["A"]}), con, table="a")
    b = load_cohort(pd.DataFrame({"patient_id": ["B1", "B2"]}), con, table="b")
    assert (a.n, b.n) == (1, 2)
    assert con.execute("SELECT count(*) FROM a").fetchone()[0] == 1
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    # the tables live in the compressed in-memory database; a view names each in the default
    # catalog, and the loader's raw views are dropped
    assert tables == {"a", "b"} and views == {"a", "b"}


# -- messages and completeness -----------------------------------------------------------------
def test_error_message_names_row_column_patient_and_value(tmp_path):
    path = write_csv(tmp_path / "c.csv", ["patient_id", "ecog"], [["P1", "1"], ["P2", "1"], ["KN-007", "7"]])
    with pytest.raises(CohortError) as info:
        load_cohort(path)
    (p,) = info.value.problems
    assert (p.column, p.row, p.patient_id, p.value) == ("ecog", 3, "KN-007", "7")
    assert str(p) == ("ecog: row 3 (patient_id KN-007) value '7': "
                      "expected a whole number >= 0 and <= 5 ECOG; leave empty if unknown")
    assert str(p) in str(info.value)


def test_problems_are_complete(tmp_path):
    """Every bad column is listed with examples and the column's total count."""
    header = ["patient_id", "ecog", "sex", "hbv_active", "screening_date", "age_years", "inr"]
    rows = [[f"P{i}", "1", "F", "yes", "2024-01-01", "60", "1.0"] for i in range(1, 13)]
    for i in range(7):  # 7 bad ECOG values: rows 1-7
        rows[i][1] = str(6 + i)
    rows[8][2] = "x"  # one bad sex
    rows[9][3] = "maybe"  # one bad flag
    rows[10][4] = "2024-13-01"  # one bad date
    rows[11][5] = "old"  # one bad number
    with pytest.raises(CohortError) as info:
        load_cohort(write_csv(tmp_path / "c.csv", header, rows))
    err = info.value
    by_col: dict[str, list[Problem]] = {}
    for p in err.problems:
        by_col.setdefault(p.column, []).append(p)
    assert set(by_col) == {"ecog", "sex", "hbv_active", "screening_date", "age_years"}
    assert [p.row for p in by_col["ecog"]] == [1, 2, 3, 4, 5]  # first examples, in file order
    assert [p.value for p in by_col["ecog"]] == ["6", "7", "8", "9", "10"]
    assert all(p.count == 7 for p in by_col["ecog"])
    assert [(p.row, p.patient_id, p.value, p.count) for p in by_col["sex"]] == [(9, "P9", "x", 1)]
    assert [(p.row, p.value) for p in by_col["hbv_active"]] == [(10, "maybe")]
    assert [(p.row, p.value) for p in by_col["screening_date"]] == [(11, "2024-13-01")]
    assert [(p.row, p.value) for p in by_col["age_years"]] == [(12, "old")]
    assert err.total == 7 + 4
    lines = str(err).splitlines()
    assert lines[:-1] == [str(p) for p in err.problems]  # 9 example lines, all shown
    assert lines[-1] == "... and 2 more"  # the two bad ECOG values beyond the examples


def test_max_examples_and_long_error_text(tmp_path):
    header = ["patient_id"] + [c.name for c in schema.COLUMNS if c.kind == schema.INTEGER]
    rows = [[f"P{i}"] + ["-5"] * (len(header) - 1) for i in range(3)]
    with pytest.raises(CohortError) as info:
        load_cohort(write_csv(tmp_path / "c.csv", header, rows), max_examples=2)
    err = info.value
    assert {p.column for p in err.problems} == set(header[1:])
    assert len(err.problems) == 2 * (len(header) - 1)
    assert err.total == 3 * (len(header) - 1)
    assert str(err).splitlines()[-1] == f"... and {err.total - 20} more"


def test_patient_id_and_value_problems_reported_together(tmp_path):
    path = write_csv(tmp_path / "c.csv", ["patient_id", "ecog"], [["P1", "1"], ["P1", "9"], ["", "0"]])
    with pytest.raises(CohortError) as info:
        load_cohort(path)
    kinds = sorted((p.column, p.message.split(";")[0]) for p in info.value.problems)
    assert kinds == [("ecog", "expected a whole number >= 0 and <= 5 ECOG"),
                     ("patient_id", "is duplicated (rows 1, 2)"), ("patient_id", "is empty")]


# -- extra and absent columns -------------------------------------------------------------------
def test_extra_columns_kept_verbatim(tmp_path):
    header = ["patient_id", "Site Note", "lab_batch", "ecog", "expect:INCL05"]
    rows = [["P1", " keep  me ", "007", "1", "pass"], ["P2", "", "1.50", "", ""]]
    cohort = load_cohort(write_csv(tmp_path / "c.csv", header, rows))
    assert cohort.extra == ("Site Note", "lab_batch", "expect:INCL05")
    got = cohort.con.execute(
        f'SELECT "Site Note", lab_batch, "expect:INCL05" FROM {cohort.table} ORDER BY patient_id').fetchall()
    assert got == [(" keep  me ", "007", "pass"), (None, "1.50", None)]


def test_absent_columns_listed(tmp_path):
    cohort = load_cohort(write_csv(tmp_path / "c.csv", ["patient_id", "ecog", "Age_Years"], [["P1", "1", "50"]]))
    assert cohort.present == {"patient_id", "ecog", "age_years"}
    assert set(cohort.absent) == set(schema.BY_NAME) - {"patient_id", "ecog", "age_years"}
    assert list(cohort.absent) == [c.name for c in schema.COLUMNS if c.name in cohort.absent]  # dictionary order


def _full_row() -> dict[str, str]:
    path = "tests/fixtures/cli_cohort.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        return next(csv.DictReader(fh))


@pytest.mark.parametrize("column, stage, expected", [
    # dictionary v2: a rule is n/a only when none of its required column sets is present
    ("ecog", 1, {"INCL05": ["ecog"]}),
    ("age_years", 1, {"INCL01": ["age_years"]}),  # CRCL: the clearance column is present
    ("liver_metastases", 1, {}),  # optional: reads as unknown
    ("pt_s", 2, {}),  # INR is present
    ("inr", 2, {}),  # PT is present
    ("last_anticancer_half_life_days", 1, {}),  # the 28-day washout applies
    ("days_since_antitumor_tcm", 1, {"EXCL03.TCM": ["days_since_antitumor_tcm"]}),  # not the washout
    ("days_since_anticancer_therapy", 1, {"EXCL03.WASHOUT": ["days_since_anticancer_therapy"]}),
    ("heart_rate_bpm", 2, {}),  # qtcf_ms is present
    ("first_line_platinum", 1, {}),  # fluoropyrimidine is present
    ("prior_systemic_lines", 1, {"INCL03.LINES": ["prior_systemic_lines"]}),
    ("nonmeasurable_lesions", 1, {}),  # stage 1 counts measurable lesions only
    ("nonmeasurable_lesions", 2, {}),  # measurable lesions are present
    ("measurable_lesions", 1, {"INCL04": ["measurable_lesions"]}),
    ("measurable_lesions", 2, {}),
    ("dbp_mmhg", 1, {"EXCL11.DBP": ["dbp_mmhg"]}),
    ("radiotherapy_toxicity_unresolved", 1, {"EXCL04.TOXICITY": ["radiotherapy_toxicity_unresolved"]}),
    ("hcv_active", 1, {"EXCL17.HCV": ["hcv_active"]}),
    ("days_since_transfusion", 1, {"INCL07.TRANSFUSION": ["days_since_transfusion"]}),
    ("sex", 1, {}),  # CRCL and QTcF are decided three-valued
    # optional columns: absent reads as NULL (default ULN, computed value)
    ("bilirubin_total_uln_umol_l", 1, {}),
    ("inr_uln", 1, {}),
    ("creatinine_clearance_ml_min", 1, {}),
    ("qtcf_ms", 1, {}),
    # columns no rule uses
    ("site_id", 1, {}),
    ("screening_date", 1, {}),
])
def test_absent_column_makes_exactly_its_rules_na(tmp_path, column, stage, expected):
    row = _full_row()
    header = [c for c in row if c != column]
    cohort = load_cohort(write_csv(tmp_path / "c.csv", header, [[row[c] for c in header]]))
    assert column in cohort.absent
    assert Engine(cohort, PROTOCOL, stage).not_assessable == expected


def test_complete_cohort_has_nothing_absent_or_na(tmp_path):
    row = _full_row()
    cohort = load_cohort(write_csv(tmp_path / "c.csv", list(row), [list(row.values())]))
    # stale_columns is filled only by importers of dated results
    assert cohort.absent == ("stale_columns",) and cohort.extra == ("note",)
    assert Engine(cohort, PROTOCOL, 1).not_assessable == {}


# -- the input is only read -----------------------------------------------------------------------
def _write_all_formats(tmp_path):
    frame = pd.DataFrame({"patient_id": ["P1", "P2"], "ecog": ["1", ""], "sex": ["female", "m"],
                          "hbv_active": ["Yes", "no"], "brain_metastases": ["Treated Stable", "none"]})
    csv_path = tmp_path / "c.csv"
    frame.to_csv(csv_path, index=False)
    pq_path = tmp_path / "c.parquet"
    frame.to_parquet(pq_path, index=False)
    xl_path = tmp_path / "c.xlsx"
    frame.to_excel(xl_path, index=False)
    return [csv_path, pq_path, xl_path]


def test_input_file_never_modified(tmp_path):
    for path in _write_all_formats(tmp_path):
        before, mtime = sha256(path), path.stat().st_mtime_ns
        cohort = load_cohort(path)
        assert cohort.n == 2
        assert sha256(path) == before and path.stat().st_mtime_ns == mtime, path.name
    bad = write_csv(tmp_path / "bad.csv", ["patient_id", "ecog"], [["P1", "9"]])
    before = sha256(bad)
    with pytest.raises(CohortError):
        load_cohort(bad)
    assert sha256(bad) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "c.csv", "c.parquet", "c.xlsx"]


def test_same_result_from_every_format(tmp_path):
    results = []
    for path in _write_all_formats(tmp_path):
        cohort = load_cohort(path)
        results.append(cohort.con.execute(
            f"SELECT patient_id, ecog, sex, hbv_active, brain_metastases FROM {cohort.table} "
            "ORDER BY patient_id").fetchall())
    expected = [("P1", 1, "F", True, "treated_stable"), ("P2", None, "M", False, "none")]
    assert results == [expected] * 3


@settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(0, 120), st.floats(0, 120, allow_nan=False)),
                min_size=1, max_size=8))
def test_age_round_trip_property(values):
    """Any in-range age written as text loads back as the same number; empty as NULL."""
    text = ["" if v is None else repr(v) for v in values]
    frame = pd.DataFrame({"patient_id": [f"P{i}" for i in range(len(values))], "age_years": text})
    cohort = load_cohort(frame)
    got = [r[0] for r in cohort.con.execute(
        f"SELECT age_years FROM {cohort.table} ORDER BY CAST(substr(patient_id, 2) AS INTEGER)").fetchall()]
    for v, g in zip(values, got, strict=True):
        assert (g is None) if v is None else (math.isclose(g, float(v)) and g == float(v))


def test_problem_str_without_row():
    assert str(Problem("file", "x.csv does not exist")) == "file: x.csv does not exist"
    assert str(Problem("patient_id", "is duplicated", patient_id="P1")) == \
        "patient_id: (patient_id P1) is duplicated"


def test_cohort_error_total_defaults_to_problem_count():
    err = CohortError([Problem("a", "x"), Problem("b", "y")])
    assert err.total == 2 and str(err) == "a: x\nb: y"
