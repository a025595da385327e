"""One-column CSV cohorts for the loader's tests (tests/test_cohort.py, tests/test_unit_guard.py)."""

from __future__ import annotations

import csv

import pytest

from kn026.ingest.cohort import load_cohort
from kn026.ingest.problems import CohortError, Problem


def write_csv(path, header, rows):
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def load_column(tmp_path, column, raw):
    """Load a one-patient CSV with `column` = raw text; return the stored value."""
    path = write_csv(tmp_path / "c.csv", ["patient_id", column], [["P1", raw]])
    cohort = load_cohort(path)
    return cohort.con.execute(f'SELECT "{column}" FROM {cohort.table}').fetchone()[0]


def problems_for(tmp_path, column, raw) -> list[Problem]:
    """Load a one-patient CSV expected to fail; return the problems."""
    path = write_csv(tmp_path / "c.csv", ["patient_id", column], [["P1", raw]])
    with pytest.raises(CohortError) as info:
        load_cohort(path)
    return info.value.problems


def assert_rejected(tmp_path, column, raw):
    problems = problems_for(tmp_path, column, raw)
    assert len(problems) == 1, problems
    p = problems[0]
    assert (p.column, p.row, p.patient_id, p.value, p.count) == (column, 1, "P1", raw, 1)
    text = str(p)
    assert column in text and "row 1" in text and "P1" in text and repr(raw) in text
    assert "expected" in text or "plausible range" in text  # the fix is named
