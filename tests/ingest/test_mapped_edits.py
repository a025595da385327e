"""Bad cells of a mapped file answered in the mapping (kn026/ingest/mapped.py, kn026/ingest/edits.py).

A fix is typed as the file writes the value and then goes through the mapping; date
cells a format does not read are blanked or their rows dropped, all of them, not only
the examples listed; the edits travel in the mapping's YAML and refuse to touch another
file's cells. Each result is compared with the file edited by hand and mapped.
"""

from __future__ import annotations

import pandas as pd
import pytest

from kn026.base.table import connect
from kn026.ingest import edits as E
from kn026.ingest import mapped
from kn026.ingest import mapping as mp
from kn026.ingest.cohort import EXAMPLES_PER_COLUMN
from kn026.ingest.problems import CohortError


def export(n: int = 30) -> pd.DataFrame:
    """A site export: Hb in g/dL with a decimal comma, dd/mm/yyyy visits, radiotherapy dates."""
    return pd.DataFrame({
        "Subject": [f"S{i:03d}" for i in range(1, n + 1)],
        "Visit": [f"{1 + i % 28:02d}/0{1 + i % 9}/2023" for i in range(n)],
        "Hb": [f"{10 + i % 5},{i % 10}" for i in range(n)],
        "Sex": ["Female", "male"] * (n // 2) + ["Female"] * (n % 2),
        "RT": ["" if i % 3 else f"{1 + i % 28:02d}/01/2023" for i in range(n)],
    })


def mapping() -> mp.Mapping:
    m = mp.Mapping(decimal=",")
    m.set("patient_id", "Subject")
    m.set("screening_date", "Visit", date_format="%d/%m/%Y")
    m.set("sex", "Sex", values={"Female": "F", "male": "M"})
    m.set("hemoglobin_g_l", "Hb", unit="g/dL")
    m.set("days_since_radiotherapy", "RT", transform="days_since", date_format="%d/%m/%Y")
    return m


def loaded(frame: pd.DataFrame, m: mp.Mapping):
    return mapped.load(frame, m, connect())


def table(cohort) -> pd.DataFrame:
    return cohort.con.sql(f"SELECT * FROM {cohort.table}").df()


def edited(frame: pd.DataFrame, column: str, rows, text) -> pd.DataFrame:
    out = frame.copy()
    for r in rows:
        out.loc[r - 1, column] = text
    return out


def test_a_fix_is_typed_as_the_file_writes_it_and_goes_through_the_mapping():
    good = export()
    bad = edited(good, "Hb", [5], "12,5 g")
    preview = mapped.preview(bad, mapping())
    [p] = preview.problems
    assert (p.column, p.row, p.kind) == ("hemoglobin_g_l", 5, "value")
    m = mapping()
    m.edits = [E.fix("hemoglobin_g_l", 5, "12,5", was="12,5 g")]
    preview = mapped.preview(bad, m)
    assert preview.ok and [str(c) for c in preview.changes] == [
        "fix hemoglobin_g_l row 5: '12,5 g' -> '12,5': 1 cell(s) fixed"]
    got = loaded(bad, m)
    pd.testing.assert_frame_equal(table(got), table(loaded(edited(good, "Hb", [5], "12,5"), mapping())))
    assert table(got)["hemoglobin_g_l"].iloc[4] == 125.0  # 12,5 g/dL with a decimal comma


def test_every_unread_date_of_a_column_blanked_or_its_rows_dropped():
    good = export(40)
    rows = [2, 6, 7, 13, 19, 22, 31]
    bad = edited(good, "Visit", rows, "2023-13-45")
    assert len(rows) > EXAMPLES_PER_COLUMN
    listed = [p for p in mapped.preview(bad, mapping()).problems if p.column == "screening_date"]
    assert len(listed) == EXAMPLES_PER_COLUMN and all(p.kind == "date" for p in listed)
    m = mapping()
    m.index_date = "2023-12-31"  # the transforms count from a fixed date: Visit may be blanked
    m.edits = [E.blank("screening_date")]
    preview = mapped.preview(bad, m)
    assert preview.ok, preview.problems
    [change] = preview.changes
    assert change.count == len(rows) and change.rows == tuple(rows)
    hand = good.copy()
    hand.loc[[r - 1 for r in rows], "Visit"] = ""
    fixed = mapping()
    fixed.index_date = "2023-12-31"
    pd.testing.assert_frame_equal(table(loaded(bad, m)), table(loaded(hand, fixed)))
    m.edits = [E.drop("screening_date")]
    got = loaded(bad, m)
    assert got.n == 40 - len(rows)
    fixed_hand = good.drop(index=[r - 1 for r in rows]).reset_index(drop=True)
    pd.testing.assert_frame_equal(table(got), table(loaded(fixed_hand, fixed)))
    assert [(c.edit, c.count, c.rows) for c in got.changes] == [(E.drop("screening_date"), len(rows), tuple(rows))]


def test_the_index_date_of_day_counts_is_never_blanked():
    bad = edited(export(), "Visit", [3], "someday")
    m = mapping()  # days_since_radiotherapy counts from screening_date's Visit
    m.edits = [E.blank("screening_date")]
    preview = mapped.preview(bad, m)
    assert not preview.ok and preview.problems[0].kind == "edit"
    assert "index date of the days_since_* columns" in preview.problems[0].message
    m.edits = [E.drop("screening_date", 3, was="someday")]
    assert mapped.preview(bad, m).ok


def test_record_based_transforms_are_never_blanked():
    bad = edited(export(), "RT", [4, 8], "last year")
    m = mapping()
    with pytest.raises(ValueError, match="days_since_radiotherapy cannot be blanked: it is record-based"):
        m.edits = [E.blank("days_since_radiotherapy")]
        m.check()
    m.edits = [E.drop("days_since_radiotherapy")]
    got = loaded(bad, m)
    assert got.n == 28


def test_edits_travel_in_the_yaml_and_refuse_another_file():
    bad = edited(export(), "Hb", [5], "12,5 g")
    m = mapping()
    m.edits = [E.fix("hemoglobin_g_l", 5, "12,5", was="12,5 g"), E.drop("sex")]
    text = m.to_yaml()
    assert "edits:" in text and "was: 12,5 g" in text
    back = mp.Mapping.from_yaml(text)
    assert back.edits == m.edits
    assert mapped.preview(bad, back).ok
    other = edited(export(), "Hb", [5], "11,0")  # next month's export: row 5 is another value
    preview = mapped.preview(other, back)
    assert not preview.ok and "made for another file" in preview.problems[0].message
    with pytest.raises(ValueError, match="unit of a mapped column is its `unit` setting"):
        mp.Mapping.from_yaml(text + "edits:\n- unit: {column: hemoglobin_g_l, text: g/dL}\n")


def test_written_cohort_is_the_file_edited_by_hand():
    good = export()
    bad = edited(edited(good, "Sex", [3, 9], "unknown?"), "Hb", [11], "clotted")
    m = mapping()
    m.edits = [E.blank("sex"), E.drop("hemoglobin_g_l", 11, was="clotted")]
    out, changes = mapped.written(bad, m)
    hand = edited(good, "Sex", [3, 9], "").drop(index=[10]).reset_index(drop=True)
    expected, none = mapped.written(hand, mapping())
    pd.testing.assert_frame_equal(out, expected)
    assert none == []
    assert sorted(str(c) for c in changes) == [
        "blank every bad value of sex (empty: unknown): 2 cell(s) blanked (rows 3, 9)",
        "drop row 11 (bad hemoglobin_g_l ('clotted')): 1 row(s) dropped"]
    with pytest.raises(CohortError):
        mapped.written(bad, mapping())


def test_an_index_date_column_of_its_own_fixed_or_its_row_dropped():
    frame = export(12).assign(Index=[f"{1 + i:02d}/06/2024" for i in range(12)])
    frame.loc[4, "Index"] = "June"
    m = mapping()
    m.index_column, m.index_column_format = "Index", "%d/%m/%Y"
    [p] = [p for p in mapped.preview(frame, m).problems]
    assert (p.column, p.row, p.kind) == ("index_column", 5, "date")
    assert E.cell_actions(p) == ["fix", "blank", "drop"] and E.column_edits("index_column", [p]) == []
    assert not mapped.blankable(m, "index_column")
    m.edits = [E.fix("index_column", 5, "05/06/2024", was="June")]
    fixed = loaded(frame, m)
    pd.testing.assert_frame_equal(table(fixed), table(loaded(edited(frame, "Index", [5], "05/06/2024"), _with_index())))
    m.edits = [E.drop("index_column", 5, was="June")]
    assert loaded(frame, m).n == 11


def _with_index() -> mp.Mapping:
    m = mapping()
    m.index_column, m.index_column_format = "Index", "%d/%m/%Y"
    return m
