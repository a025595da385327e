"""`--on-bad-value {error,blank,drop}` on the commands that load a cohort (kn026/cli/main.py).

error (the default) stops with the loader's list; blank empties bad values (unknown) and
refuses record-based columns, naming them and suggesting drop; drop leaves their rows
out. Every change is one `changed:` line on stderr; the input file is never modified.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pandas as pd

from tests.cli.test_cli import FIXTURE, run

ROWS = 5  # patients of the fixture


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def bad_cohort(tmp_path, **cells) -> Path:
    """The CLI fixture with `column=(row, text)` cells replaced (1-based data rows)."""
    frame = pd.read_csv(FIXTURE, dtype=str, keep_default_na=False)
    for column, (row, text) in cells.items():
        frame.loc[row - 1, column] = text
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    return path


def funnel(path, capsys, *extra):
    code, out, err = run(["funnel", "--cohort", path, "--stage", 1, "--json", *extra], capsys)
    return code, (json.loads(out) if code == 0 else None), err


def test_default_is_error_with_the_loaders_list(tmp_path, capsys):
    path = bad_cohort(tmp_path, age_years=(2, "fifty"))
    code, _, err = funnel(path, capsys)
    assert code == 2 and "age_years: row 2 (patient_id P02) value 'fifty'" in err
    code, _, err = funnel(path, capsys, "--on-bad-value", "error")
    assert code == 2 and "value 'fifty'" in err


def test_blank_empties_bad_values_and_lists_each_change(tmp_path, capsys):
    path = bad_cohort(tmp_path, age_years=(2, "fifty"), ecog=(5, "two"))
    before = sha(path)
    code, doc, err = funnel(path, capsys, "--on-bad-value", "blank")
    assert code == 0, err
    assert doc["totals"]["screened"] == ROWS
    lines = [line for line in err.splitlines() if line.startswith("changed: ")]
    assert lines == ["changed: blank every bad value of age_years (empty: unknown): 1 cell(s) blanked (rows 2)",
                     "changed: blank every bad value of ecog (empty: unknown): 1 cell(s) blanked (rows 5)"]
    assert doc["edits"] == [line.removeprefix("changed: ") for line in lines]
    assert sha(path) == before  # the file is only read
    # the same counts as the file with those cells emptied by hand
    hand = bad_cohort(tmp_path, age_years=(2, ""), ecog=(5, ""))
    code, by_hand, _ = funnel(hand, capsys)
    assert code == 0 and by_hand["totals"] == doc["totals"] and by_hand["funnel"] == doc["funnel"]


def test_blank_refuses_record_based_columns_naming_them(tmp_path, capsys):
    path = bad_cohort(tmp_path, age_years=(2, "fifty"), days_since_radiotherapy=(3, "recently"))
    code, _, err = funnel(path, capsys, "--on-bad-value", "blank")
    assert code == 2
    assert ("--on-bad-value: blank does not blank record-based columns (days_since_radiotherapy): there an empty "
            "cell means 'none on record' and would pass the patient; use --on-bad-value drop") in err
    assert "value 'recently'" in err and "fifty" not in err  # age was blanked; the rest is listed


def test_drop_leaves_the_rows_out(tmp_path, capsys):
    path = bad_cohort(tmp_path, days_since_radiotherapy=(3, "recently"))
    code, doc, err = funnel(path, capsys, "--on-bad-value", "drop")
    assert code == 0, err
    assert doc["totals"]["screened"] == ROWS - 1
    assert "changed: drop every row where days_since_radiotherapy is bad: 1 row(s) dropped (rows 3)" in err
    out = tmp_path / "log.csv"
    code, _, err = run(["screen", "--cohort", path, "--stage", 1, "--out", out, "--on-bad-value", "drop"], capsys)
    assert code == 0, err
    with open(out, newline="") as fh:
        assert [r["patient_id"] for r in csv.DictReader(fh)] == ["P01", "P02", "P04", "P05"]


def test_histogram_and_forecast_take_the_option(tmp_path, capsys):
    path = bad_cohort(tmp_path, ecog=(1, "x"))
    out = tmp_path / "a.json"
    code, _, err = run(["histogram", "--cohort", path, "--stage", 1, "--site", "A", "--out", out], capsys)
    assert code == 2 and "value 'x'" in err
    code, _, err = run(["histogram", "--cohort", path, "--stage", 1, "--site", "A", "--out", out,
                        "--on-bad-value", "drop"], capsys)
    assert code == 0, err
    assert "1 row(s) dropped" in err
    assert json.loads(out.read_text())["total"] == ROWS - 1
    code, _, err = run(["histogram", "--rows", out, "--stage", 1, "--site", "A", "--out", tmp_path / "b.json",
                        "--on-bad-value", "drop"], capsys)
    assert code == 2 and "--on-bad-value applies to --cohort" in err
    code, _, err = run(["forecast", "--cohort", path, "--stage", 1, "--sites", "3", "--mean-rate", "2",
                        "--n-sims", "200", "--json", "--on-bad-value", "blank"], capsys)
    assert code == 0, err
    assert "changed: blank every bad value of ecog" in err
    code, _, err = run(["funnel", "--cohort", path, "--stage", 1, "--engine", "spark", "--on-bad-value", "blank"],
                       capsys)
    assert code == 2 and "DuckDB engine only" in err


def test_import_mapping_takes_the_option_and_writes_the_edited_cohort(tmp_path, capsys):
    frame = pd.DataFrame({"Subject": ["A1", "A2", "A3"], "Age": ["61", "sixty", "70"], "RT": ["3", "x", ""]})
    src = tmp_path / "export.csv"
    frame.to_csv(src, index=False)
    mapping = tmp_path / "m.yaml"
    mapping.write_text("columns:\n  patient_id: Subject\n  age_years: Age\n  days_since_radiotherapy: RT\n")
    out = tmp_path / "cohort.csv"
    argv = ["import", "--mapping", mapping, "--in", src, "--out", out]
    code, _, err = run(argv, capsys)
    assert code == 2 and not out.exists()
    code, _, err = run([*argv, "--on-bad-value", "blank"], capsys)
    assert code == 2 and "record-based columns (days_since_radiotherapy)" in err and not out.exists()
    code, _, err = run([*argv, "--on-bad-value", "drop"], capsys)
    assert code == 0, err
    assert pd.read_csv(out, dtype=str)["patient_id"].tolist() == ["A1", "A3"]
    assert "changed: drop every row where age_years is bad: 1 row(s) dropped (rows 2)" in err
    # a mapping's own edits, then the option for the rest
    mapping.write_text(mapping.read_text() + "edits:\n- fix: {column: age_years, row: 2, text: '60', was: sixty}\n")
    code, _, err = run([*argv, "--on-bad-value", "drop"], capsys)
    assert code == 0, err
    assert pd.read_csv(out, dtype=str)["patient_id"].tolist() == ["A1", "A3"]  # RT 'x' still drops A2
    assert "changed: fix age_years row 2: 'sixty' -> '60': 1 cell(s) fixed" in err
    code, _, err = run(["import", "--omop", tmp_path, "--index-date", "last", "--out", out,
                        "--on-bad-value", "drop"], capsys)
    assert code == 2 and "--on-bad-value applies to --mapping" in err
