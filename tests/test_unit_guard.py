"""The unit guard (cohort dictionary section 4, "Plausible ranges and units"): a value outside a
column's plausible range, or a column whose median says another unit, is refused naming the column,
row, value and the likely unit."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from kn026.base import schema
from kn026.ingest.cohort import load_cohort
from kn026.ingest.problems import CohortError
from tests.cohort_support import load_column, problems_for, write_csv

GUARDED = [c for c in schema.COLUMNS if c.guard is not None]


# -- unit guard (dictionary section 4, "Plausible ranges and units") ----------------------

# column, plausible range and the likely unit named for a value below / above it, as the
# dictionary lists them (written out here, not read from kn026.base.schema)
GUARD_SPEC = [
    ("hemoglobin_g_l", 30, 250, "g/dL", None),
    ("platelets_1e9_l", 1, 2000, None, "per microlitre"),
    ("anc_1e9_l", 0, 100, None, "per microlitre"),
    ("creatinine_umol_l", 15, 2500, "mg/dL", None),
    ("albumin_g_l", 10, 70, "g/dL", None),
    ("lvef_pct", 5, 95, "fraction", None),
    ("weight_kg", 20, 350, None, "pounds"),
]


def test_guarded_columns_are_the_dictionarys():
    assert {c.name for c in GUARDED} == {g[0] for g in GUARD_SPEC}
    for name, low, high, _, _ in GUARD_SPEC:
        guard = schema.column(name).guard
        assert (guard.low, guard.high) == (low, high), name


@pytest.mark.parametrize("name, low, high, below, above", GUARD_SPEC, ids=[g[0] for g in GUARD_SPEC])
def test_unit_guard_names_column_row_value_and_unit(tmp_path, name, low, high, below, above):
    """On the plausible limits a value loads; outside it is refused naming the likely unit."""
    assert load_column(tmp_path, name, f"{low:g}") == low
    assert load_column(tmp_path, name, f"{high:g}") == high
    for raw, unit in ((f"{low - 0.01:g}", below), (f"{high + 0.01:g}", above)):
        if low - 0.01 < 0 and raw.startswith("-"):
            continue  # below zero is the dictionary's plain range error
        problems = problems_for(tmp_path, name, raw)
        assert len(problems) == 1, problems
        text = str(problems[0])
        assert name in text and "row 1" in text and "P1" in text and repr(raw) in text
        assert f"plausible range {low:g}-{high:g}" in text
        if unit:
            assert unit in text


def test_hemoglobin_in_g_dl_is_refused_with_the_fix(tmp_path):
    path = write_csv(tmp_path / "c.csv", ["patient_id", "hemoglobin_g_l"],
                     [["P1", "12.1"], ["P2", "95"], ["P3", "11.5"]])
    with pytest.raises(CohortError) as info:
        load_cohort(path)
    problems = info.value.problems
    assert [(p.column, p.row, p.value) for p in problems] == [("hemoglobin_g_l", 1, "12.1"),
                                                              ("hemoglobin_g_l", 3, "11.5")]
    assert "multiply by 10" in str(problems[1])


def _column_csv(tmp_path, name, values):
    return write_csv(tmp_path / "c.csv", ["patient_id", name],
                     [[f"P{i}", v] for i, v in enumerate(values, start=1)])


@pytest.mark.parametrize("name, values, unit", [
    ("weight_kg", ["150", "160", "170", "180", "140", "155", "165", "175", "145", "130"], "pounds"),
    ("platelets_1e9_l", ["20", "25", "18", "30", "22", "21", "19", "40", "35", "28"], "10^4/uL"),
    ("anc_1e9_l", ["55", "60", "62", "58", "70", "48", "51", "66", "59", "61"], "percentage"),
    ("hemoglobin_g_l", ["55", "58", "40", "45", "50", "52", "57", "59", "56", "120"], "g/dL"),
])
def test_unit_guard_median(tmp_path, name, values, unit):
    """Every value plausible, the median typical of another unit: refused as a column."""
    with pytest.raises(CohortError) as info:
        load_cohort(_column_csv(tmp_path, name, values))
    (problem,) = info.value.problems
    assert problem.column == name and problem.row is None
    assert "median" in str(problem) and unit in str(problem)


def test_unit_guard_median_needs_ten_values(tmp_path):
    """A median of nine values says little about a unit (docs/engine.md): loaded."""
    cohort = load_cohort(_column_csv(tmp_path, "weight_kg", ["150"] * 9))
    assert cohort.n == 9
    with pytest.raises(CohortError):
        load_cohort(_column_csv(tmp_path, "weight_kg", ["150"] * 10))


def test_unit_guard_on_the_median_limit_loads(tmp_path):
    """A median exactly on the dictionary's limit is not beyond it."""
    cohort = load_cohort(_column_csv(tmp_path, "weight_kg", ["120"] * 10))
    assert cohort.n == 10
    cohort = load_cohort(_column_csv(tmp_path, "platelets_1e9_l", ["50"] * 10))
    assert cohort.n == 10


def _unit_guard_cases():
    path = Path(__file__).parent / "golden" / "loader" / "unit_guard.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        for i, case in enumerate(csv.DictReader(fh), start=2):
            yield pytest.param(case, id=f"{case['column']}-line{i}")


@pytest.mark.parametrize("case", list(_unit_guard_cases()))
def test_unit_guard_golden(tmp_path, case):
    """Hand-written cases (tests/golden/loader/unit_guard.csv): each column in the wrong unit."""
    values = case["values"].split(";")
    path = _column_csv(tmp_path, case["column"], values)
    if case["outcome"] == "loaded":
        assert load_cohort(path).n == len(values)
        return
    with pytest.raises(CohortError) as info:
        load_cohort(path)
    problems = info.value.problems
    assert {p.column for p in problems} == {case["column"]}
    assert all(case["names"] in str(p) for p in problems), problems
    if case["outcome"] == "refused median":
        assert [p.row for p in problems] == [None]
    else:
        rows = [int(r) for r in case["outcome"].removeprefix("refused rows ").split()]
        assert [p.row for p in problems] == rows
