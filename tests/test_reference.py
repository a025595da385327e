"""The plain-Python reference against the hand-checked golden cohorts (tests/golden)."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import reference as ref

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_FILES = sorted(GOLDEN.glob("*.csv"))


@cache
def golden(name: str):
    return ref.read_golden(GOLDEN / name)


@cache
def computed(name: str, index: int, stage: int) -> dict[str, str]:
    rows, columns, _ = golden(name)
    return ref.evaluate_all(rows[index], stage, columns)


def _cases():
    for path in GOLDEN_FILES:
        rows, _, expectations = golden(path.name)
        for i, (row, exp) in enumerate(zip(rows, expectations, strict=True)):
            for (stage, rule), value in sorted(exp.items()):
                yield pytest.param(
                    path.name, i, stage, rule, value,
                    id=f"{path.stem}/{row['patient_id']}/s{stage}/{rule}",
                )


CASES = list(_cases())


@pytest.mark.parametrize(("name", "index", "stage", "rule", "expected"), CASES)
def test_golden(name, index, stage, rule, expected):
    assert computed(name, index, stage)[rule] == expected


# --------------------------------------------------------------------------------------
# The golden files themselves
# --------------------------------------------------------------------------------------


def test_golden_files_present():
    names = {p.name for p in GOLDEN_FILES}
    assert {
        "demographics_tumour.csv", "stage_specific.csv", "labs_blood.csv", "labs_liver.csv",
        "renal_crcl.csv", "coag.csv", "cardiac.csv", "washout_records.csv",
        "exclusions_flags.csv", "consent_contraception.csv", "absent_optional.csv",
        "absent_required.csv", "whole_patient.csv",
        # dictionary version 2: absent columns, the washout without a date
        "absent_pt.csv", "absent_half_life.csv", "absent_tcm.csv", "absent_dbp.csv",
        "absent_sex.csv", "override_only.csv",
    } <= names
    assert len(CASES) > 1000


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_file_shape(path):
    rows, columns, expectations = golden(path.name)
    assert rows and len(rows) == len(expectations)
    assert "patient_id" in columns
    ids = [r["patient_id"] for r in rows]
    assert len(set(ids)) == len(ids) and None not in ids
    assert all(exp for exp in expectations), "every row states at least one expectation"


# Leaves that can never be unknown (where assessable): they read one record-based column
# (NULL = never / none). EXCL03.WASHOUT can: its NULL date is unknown after a prior line.
NEVER_UNKNOWN = {
    "INCL07.TRANSFUSION", "INCL07.CYTOKINE", "EXCL02", "EXCL03.TCM", "EXCL04.RECENT",
    "EXCL05.RECENT", "EXCL06", "EXCL11.MI", "EXCL11.ANGINA", "EXCL11.ARRHYTHMIA", "EXCL14",
}


def test_every_rule_is_covered():
    seen: dict[str, set[str]] = {}
    for path in GOLDEN_FILES:
        for exp in golden(path.name)[2]:
            for (_stage, rule), value in exp.items():
                seen.setdefault(rule, set()).add(value)
    for leaf in ref.LEAVES:
        wanted = {"pass", "fail"} | (set() if leaf in NEVER_UNKNOWN else {"unknown"})
        assert wanted <= seen.get(leaf, set()), leaf
    for crit in ref.CRITERIA:
        assert {"pass", "fail"} <= seen.get(crit, set()), crit
    assert seen[ref.ELIGIBLE] == {"yes", "no", "unknown"}
    # every rule with alternative or optional columns, and every split rule, has an n/a
    # case: none of its required sets present (absent_*.csv)
    for rule in (
        "INCL02.HER2", "INCL02.HISTOLOGY", "INCL03", "INCL03.PROGRESSED", "INCL03.CHEMO",
        "INCL04", "INCL07.ALT", "INCL07.CRCL", "INCL07.APTT", "INCL07.COAG", "INCL07.TBIL",
        "INCL10", "EXCL03.WASHOUT", "EXCL03.TCM", "EXCL04.TOXICITY", "EXCL05.RECENT",
        "EXCL09.NEUROPATHY", "EXCL11.DBP", "EXCL11.LVEF", "EXCL11.QTCF", "EXCL17.HCV",
        "EXCL17.SYPHILIS", "INCL07", "EXCL17",
    ):
        assert "n/a" in seen[rule], rule


def _cockcroft_gault_float(age, weight, sex, creatinine):
    return (140 - age) * weight * (0.85 if sex == "F" else 1) / (72 * creatinine / 88.4)


def _fridericia_float(qt, hr):
    return qt / (60 / hr) ** (1 / 3)


def _note_checks():
    for path in GOLDEN_FILES:
        rows, _, _ = golden(path.name)
        for row in rows:
            note = row_note(path.name, row["patient_id"])
            if "crcl" in note:
                for sex, value in re.findall(r"\b([MF])=(\d+\.\d+)", note):
                    yield path.stem, row, "crcl", sex, float(value)
            for value in re.findall(r"qtcf=(\d+\.\d+)", note):
                yield path.stem, row, "qtcf", None, float(value)


@cache
def _notes(name: str) -> dict[str, str]:
    import csv

    with (GOLDEN / name).open(newline="", encoding="utf-8") as fh:
        return {line["patient_id"]: line.get("note") or "" for line in csv.DictReader(fh)}


def row_note(name: str, patient_id: str) -> str:
    return _notes(name)[patient_id]


NOTE_CHECKS = list(_note_checks())


@pytest.mark.parametrize(
    ("stem", "row", "kind", "sex", "value"),
    NOTE_CHECKS,
    ids=[f"{c[0]}/{c[1]['patient_id']}/{c[2]}{c[3] or ''}" for c in NOTE_CHECKS],
)
def test_hand_arithmetic_in_notes(stem, row, kind, sex, value):
    """The clearance / QTcF worked out by hand in the note column (2 decimals) is right."""
    if kind == "crcl":
        exact = _cockcroft_gault_float(
            row["age_years"], row["weight_kg"], sex, row["creatinine_umol_l"]
        )
    else:
        exact = _fridericia_float(row["qt_ms"], row["heart_rate_bpm"])
    assert value == pytest.approx(exact, abs=0.0051)


def test_note_checks_found():
    kinds = {(c[2], c[3]) for c in NOTE_CHECKS}
    assert {("crcl", "M"), ("crcl", "F"), ("qtcf", None)} <= kinds
    assert len(NOTE_CHECKS) >= 50


# --------------------------------------------------------------------------------------
# API shape and the named ties of the dictionary
# --------------------------------------------------------------------------------------

EXPECTED_LEAVES = [
    "INCL01", "INCL02.SITE", "INCL02.HISTOLOGY", "INCL02.EXTENT", "INCL02.HER2",
    "INCL03.PROGRESSED", "INCL03.ANTI_HER2", "INCL03.CHEMO", "INCL03.LINES",
    "INCL04", "INCL05", "INCL06", "INCL07.ANC", "INCL07.PLT", "INCL07.HGB", "INCL07.TBIL",
    "INCL07.DBIL", "INCL07.AST", "INCL07.ALT", "INCL07.ALB", "INCL07.CRCL", "INCL07.APTT",
    "INCL07.COAG", "INCL07.TRANSFUSION", "INCL07.CYTOKINE", "INCL08", "INCL09", "INCL10",
    "INCL11", "INCL12", "EXCL01", "EXCL02", "EXCL03.WASHOUT", "EXCL03.TCM", "EXCL04.RECENT",
    "EXCL04.TOXICITY", "EXCL05.RECENT", "EXCL05.PLANNED", "EXCL06", "EXCL07", "EXCL08",
    "EXCL09.AE", "EXCL09.NEUROPATHY", "EXCL10", "EXCL11.SBP", "EXCL11.DBP", "EXCL11.HF", "EXCL11.LVEF",
    "EXCL11.MI", "EXCL11.ANGINA", "EXCL11.ARRHYTHMIA", "EXCL11.QTCF", "EXCL11.OTHER",
    "EXCL12", "EXCL13", "EXCL14", "EXCL15", "EXCL16", "EXCL17.HBV", "EXCL17.HCV",
    "EXCL17.HIV", "EXCL17.SYPHILIS", "EXCL18", "EXCL19", "EXCL20", "EXCL21", "EXCL22",
]


def test_leaves_and_criteria():
    assert ref.LEAVES == EXPECTED_LEAVES
    assert len(ref.LEAVES) == 67  # dictionary version 2
    assert ref.CRITERIA == [f"INCL{i:02d}" for i in range(1, 13)] + [
        f"EXCL{i:02d}" for i in range(1, 23)
    ]
    for leaf in ref.LEAVES:
        for stage in ref.STAGES:
            assert all(s and s <= set(ref.COLUMN_TYPES) for s in ref.requires(leaf, stage)), leaf


def leaf(rule: str, stage: int = 1, **row) -> str:
    return ref.evaluate_leaves(row, stage, set(row))[rule]


@pytest.mark.parametrize(
    ("rule", "row", "expected"),
    [
        ("INCL07.COAG", {"inr": 1.8, "inr_uln": 1.2, "pt_s": None}, "pass"),
        ("INCL07.COAG", {"inr": 1.8, "inr_uln": None, "pt_s": None}, "pass"),
        ("INCL07.COAG", {"inr": 1.8000001, "inr_uln": 1.2, "pt_s": None}, "unknown"),
        ("INCL07.TBIL", {"bilirubin_total_umol_l": 31.5}, "pass"),
        ("INCL07.TBIL", {"bilirubin_total_umol_l": 31.500001}, "fail"),
        ("INCL07.TBIL", {"bilirubin_total_umol_l": 30.6, "bilirubin_total_uln_umol_l": 20.4}, "pass"),
        ("INCL07.AST", {"ast_u_l": 100, "liver_metastases": False}, "pass"),
        ("INCL07.AST", {"ast_u_l": 200, "liver_metastases": True}, "pass"),
        ("INCL07.AST", {"ast_u_l": 200, "liver_metastases": None}, "unknown"),
        ("EXCL11.SBP", {"sbp_mmhg": 150}, "pass"),
        ("EXCL11.DBP", {"dbp_mmhg": 100.0}, "pass"),
        ("INCL07.APTT", {"aptt_s": 55.2, "aptt_uln_s": 36.8}, "pass"),
    ],
)
def test_named_ties(rule, row, expected):
    assert leaf(rule, **row) == expected


def test_float_would_get_the_ties_wrong():
    # Why Decimal: the naive float comparisons disagree with the exact ones.
    assert not 1.8 <= 1.5 * 1.2
    assert not 18.3 / 12.2 <= 1.5  # (1.8 / 1.2 happens to give exactly 1.5)
    assert not 55.2 <= 1.5 * 36.8
    assert ref.dec(1.8) <= Decimal("1.5") * ref.dec(1.2)


def test_derived_values_exact():
    assert ref.cockcroft_gault(50, 60, "M", 221) == 30
    assert ref.cockcroft_gault(40, 108, "F", 375.7) == 30
    assert ref.cockcroft_gault(50, 60, "M", 0) is None
    assert leaf("EXCL11.QTCF", qt_ms=375, heart_rate_bpm=103.68, sex="M") == "pass"
    assert leaf("EXCL11.QTCF", qt_ms=375.001, heart_rate_bpm=103.68, sex="M") == "fail"
    assert leaf("EXCL11.QTCF", qt_ms=375, heart_rate_bpm=103.68, sex=None) == "pass"
    assert leaf("EXCL11.QTCF", qt_ms=400, heart_rate_bpm=0, sex="M") == "unknown"


def test_stage_specific_columns():
    # Stage 1 INCL04 requires measurable_lesions; stage 2 either lesion column.
    assert leaf("INCL04", 1, measurable_lesions=1) == "pass"
    assert leaf("INCL04", 2, measurable_lesions=1) == "pass"
    assert leaf("INCL04", 1, nonmeasurable_lesions=1) == "n/a"
    assert leaf("INCL04", 2, nonmeasurable_lesions=0) == "unknown"  # measurable reads unknown
    assert leaf("INCL04", 2, nonmeasurable_lesions=1) == "pass"
    with pytest.raises(ValueError):
        ref.evaluate_leaves({}, 3, set())


def test_absent_versus_null_record_column():
    # A record-based column that is NULL means "never"; one that is absent means n/a.
    assert leaf("EXCL02", days_since_investigational_drug=None) == "pass"
    assert leaf("EXCL02") == "n/a"
    assert leaf("EXCL06", anthracycline_doxorubicin_eq_mg_m2=None) == "pass"
    assert leaf("EXCL06") == "n/a"


def test_missing_therapy_date_is_unknown_after_a_line():
    """Dictionary v2 section 1: the exception to "NULL is none on record"."""
    assert leaf("EXCL03.WASHOUT", days_since_anticancer_therapy=None, prior_systemic_lines=0) == "pass"
    assert leaf("EXCL03.WASHOUT", days_since_anticancer_therapy=None, prior_systemic_lines=1) == "unknown"
    assert leaf("EXCL03.WASHOUT", days_since_anticancer_therapy=None) == "unknown"
    assert leaf("EXCL03.WASHOUT", days_since_anticancer_therapy=27) == "fail"  # half-life absent: 28 d
    assert leaf("EXCL03.WASHOUT", prior_systemic_lines=0) == "n/a"


def test_absent_partner_reads_unknown():
    """Dictionary v2 section 1: an absent non-required column is unknown in every row."""
    assert leaf("INCL07.COAG", inr=1.0) == "pass"
    assert leaf("INCL07.COAG", inr=3) == "unknown"
    assert leaf("INCL07.COAG", pt_uln_s=13.5) == "n/a"
    assert leaf("INCL07.CRCL", age_years=30, weight_kg=70, creatinine_umol_l=80) == "pass"  # sex absent
    assert leaf("INCL07.CRCL", creatinine_clearance_ml_min=29) == "fail"  # override only


def test_empty_table_is_all_na():
    leaves = ref.evaluate_leaves({}, 1, set())
    assert set(leaves.values()) == {"n/a"}
    criteria = ref.evaluate_criteria(leaves)
    assert set(criteria.values()) == {"n/a"}
    assert ref.eligible(criteria) == "yes"  # nothing assessable fails or is unknown


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        (["pass", "pass"], "pass"),
        (["pass", "unknown"], "unknown"),
        (["unknown", "fail"], "fail"),
        (["n/a", "pass"], "pass"),
        (["n/a", "n/a"], "n/a"),
        (["n/a", "unknown"], "unknown"),
    ],
)
def test_combine(verdicts, expected):
    leaves = {f"EXCL17.{k}": v for k, v in zip(("HBV", "HCV"), verdicts, strict=True)}
    assert ref.evaluate_criteria(leaves)["EXCL17"] == expected


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ({"INCL01": "pass", "EXCL01": "n/a"}, "yes"),
        ({"INCL01": "pass", "EXCL01": "unknown"}, "unknown"),
        ({"INCL01": "fail", "EXCL01": "unknown"}, "no"),
        ({"INCL01": "n/a"}, "yes"),
    ],
)
def test_eligible(criteria, expected):
    assert ref.eligible(criteria) == expected


# --------------------------------------------------------------------------------------
# read_golden
# --------------------------------------------------------------------------------------


def test_read_golden_spellings(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text(
        "patient_id,sex,hbv_active,hcv_active,hiv_positive,syphilis_positive,her2_ish,ecog,"
        "inr,note,expect:EXCL17,expect1:INCL05,expect2:ELIGIBLE\n"
        "a, f ,Yes,n,1,T,POSITIVE,1,1.80,x,fail,pass,no\n"
        "b,M,FALSE,No,0,f,,,,,unknown,,\n",
        encoding="utf-8",
    )
    rows, columns, expectations = ref.read_golden(path)
    assert columns == {
        "patient_id", "sex", "hbv_active", "hcv_active", "hiv_positive",
        "syphilis_positive", "her2_ish", "ecog", "inr",
    }
    assert rows[0] == {
        "patient_id": "a", "sex": "F", "hbv_active": True, "hcv_active": False,
        "hiv_positive": True, "syphilis_positive": True, "her2_ish": "positive",
        "ecog": 1, "inr": 1.8,
    }
    assert rows[1]["hbv_active"] is False and rows[1]["ecog"] is None
    assert rows[1]["her2_ish"] is None
    assert expectations[0] == {
        (1, "EXCL17"): "fail", (2, "EXCL17"): "fail", (1, "INCL05"): "pass",
        (2, "ELIGIBLE"): "no",
    }
    assert expectations[1] == {(1, "EXCL17"): "unknown", (2, "EXCL17"): "unknown"}


@pytest.mark.parametrize(
    "text",
    [
        "patient_id,not_a_column\na,1\n",
        "patient_id,expect:NOPE\na,pass\n",
        "patient_id,expectation:INCL01\na,pass\n",
        "patient_id,expect:INCL01\na,maybe\n",
        "patient_id,expect:ELIGIBLE\na,pass\n",
        "patient_id,hbv_active\na,perhaps\n",
        "patient_id,hbv_active\na,true,extra\n",
        "patient_id,expect:INCL01,expect1:INCL01\na,pass,fail\n",
    ],
)
def test_read_golden_rejects(tmp_path, text):
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError):
        ref.read_golden(path)


# --------------------------------------------------------------------------------------
# Property: unknown is sound. Replacing NULLs by any values never turns a pass into a
# fail or a fail into a pass (for columns where NULL means "unknown").
# --------------------------------------------------------------------------------------

# NULL in these has a meaning other than "unknown": a default ULN, the computed value
# (overrides), the 28-day washout, or "none on record" (record-based columns; a NULL
# therapy date after no prior line included).
NOT_UNKNOWN_WHEN_NULL = set(ref.DEFAULT_ULN) | {
    "creatinine_clearance_ml_min", "qtcf_ms", "last_anticancer_half_life_days"} | ref.RECORD_BASED
CATEGORIES = {
    "primary_site": ["stomach", "gej", "other"],
    "histology": ["adenocarcinoma", "squamous"],
    "disease_extent": ["locally_advanced_unresectable", "recurrent", "metastatic", "resectable"],
    "her2_ish": ["positive", "negative"],
    "brain_metastases": ["none", "treated_stable", "active"],
}
EVALUATED = sorted(set(ref.COLUMN_TYPES) - {"patient_id", "site_id", "country", "screening_date",
                                            "stale_columns"})


def _value(column: str):
    kind = ref.COLUMN_TYPES[column]
    if kind == ref.BOOL:
        return st.booleans()
    if kind == ref.SEX:
        return st.sampled_from(["F", "M"])
    if kind == ref.CATEGORY:
        return st.sampled_from(CATEGORIES[column])
    return st.one_of(
        st.integers(0, 500),
        st.sampled_from([1.5, 1.8, 1.2, 31.5, 100.0, 200.0, 450.0, 470.0, 60.0, 17.5]),
        st.floats(0.01, 500, allow_nan=False).map(lambda x: round(x, 2)),
    )


ROWS = st.fixed_dictionaries({c: st.none() | _value(c) for c in EVALUATED})
FILLS = st.fixed_dictionaries({c: _value(c) for c in EVALUATED})


@settings(max_examples=100, deadline=None)
@given(row=ROWS, fill=FILLS, stage=st.sampled_from([1, 2]))
def test_unknown_is_sound(row, fill, stage):
    columns = set(EVALUATED)
    before = ref.evaluate_leaves(row, stage, columns)
    filled = {
        c: fill[c] if v is None and c not in NOT_UNKNOWN_WHEN_NULL else v
        for c, v in row.items()
    }
    after = ref.evaluate_leaves(filled, stage, columns)
    for rule in ref.LEAVES:
        if before[rule] in ("pass", "fail"):
            assert after[rule] == before[rule], rule
    assert "n/a" not in before.values()


def test_columns_outside_the_table_are_ignored():
    row = {"inr": 1.9, "inr_uln": 1.3, "pt_s": None}
    assert ref.evaluate_leaves(row, 1, {"inr", "inr_uln", "pt_s"})["INCL07.COAG"] == "pass"
    assert ref.evaluate_leaves(row, 1, {"inr", "pt_s"})["INCL07.COAG"] == "unknown"


def test_nan_is_null():
    assert leaf("INCL01", age_years=math.nan) == "unknown"
