"""Bad cells answered without editing the file (kn026/ingest/edits.py): fix, blank, drop, declare a unit.

Every edit is checked against the same file edited by hand and loaded: the cohort must
be identical (columns, types, values, stored order), and the report of changes must
name every changed cell or dropped row. Bad cells are planted where the test knows
they are (a word in a number column), so the hand-edited reference needs no copy of
the loader's validity predicate. The Hypothesis test plants bad cells and random
choices in cohorts loaded in several chunks.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kn026.base import schema
from kn026.base.table import connect
from kn026.ingest import edits as E
from kn026.ingest import omop_concepts, reader, synth, units
from kn026.ingest.cohort import EXAMPLES_PER_COLUMN, load_cohort
from kn026.ingest.problems import CohortError


def base(n: int = 40, seed: int = 3) -> pd.DataFrame:
    """A synthetic cohort as the text a CSV holds (empty string: an empty cell)."""
    df = synth.generate(n, seed, sites=3)
    out = pd.DataFrame({c: df[c].astype(object).map(lambda v: "" if pd.isna(v) else str(v)) for c in df.columns})
    out["screening_date"] = df["screening_date"].dt.strftime("%Y-%m-%d")
    return out


def csv_source(frame: pd.DataFrame, chunk_rows: int | None = None) -> reader.Source:
    """The frame written as CSV and read by the loader's reader (in chunks of `chunk_rows` if given)."""
    data = frame.to_csv(index=False).encode()
    src = reader.open_bytes("c.csv", data, 1 << 30)
    if chunk_rows:
        table = reader.read_all(src)
        src.chunks = iter([table.slice(i, chunk_rows) for i in range(0, len(table), chunk_rows)])
    return src


def load(frame: pd.DataFrame, edits=(), chunk_rows: int | None = None):
    return load_cohort(csv_source(frame, chunk_rows), connect(), edits=edits)


def stored(cohort) -> pd.DataFrame:
    return cohort.con.sql(f"SELECT * FROM {cohort.table}").df()


def same(a, b) -> None:
    pd.testing.assert_frame_equal(stored(a), stored(b))


def problems(frame: pd.DataFrame, **kw) -> list:
    with pytest.raises(CohortError) as err:
        load(frame, **kw)
    return err.value.problems


def plant(frame: pd.DataFrame, column: str, rows: list[int], text: str = "n.d.") -> pd.DataFrame:
    """A copy with `text` in `column` at the 1-based `rows`."""
    out = frame.copy()
    for r in rows:
        out.loc[r - 1, column] = text
    return out


# --------------------------------------------------------------------------- each kind of edit


def test_fix_is_the_file_edited_by_hand():
    good = base()
    bad = plant(good, "age_years", [4], "forty")
    [p] = problems(bad)
    assert (p.column, p.row, p.value, p.kind) == ("age_years", 4, "forty", "value")
    got = load(bad, [E.fix("age_years", 4, "41", was="forty")])
    by_hand = load(plant(good, "age_years", [4], "41"))
    same(got, by_hand)
    [change] = got.changes
    assert change.count == 1 and change.rows == (4,) and "'forty' -> '41'" in str(change)


def test_blank_a_cell_and_every_bad_cell_of_a_column_beyond_the_listed_examples():
    good = base(60)
    rows = [2, 5, 9, 11, 17, 23, 30, 41, 52]  # more than the loader lists
    assert len(rows) > EXAMPLES_PER_COLUMN
    bad = plant(plant(good, "ecog", rows, "two"), "weight_kg", [7], "heavy")
    listed = [p for p in problems(bad) if p.column == "ecog"]
    assert len(listed) == EXAMPLES_PER_COLUMN and listed[0].count == len(rows)
    got = load(bad, [E.blank("ecog"), E.blank("weight_kg", 7, was="heavy")])
    same(got, load(plant(plant(good, "ecog", rows, ""), "weight_kg", [7], "")))
    changes = {c.edit.column: c for c in got.changes}
    assert changes["ecog"].count == len(rows) and changes["ecog"].rows == tuple(rows)
    assert changes["weight_kg"].count == 1 and changes["weight_kg"].rows == (7,)
    assert got.n == 60


def test_drop_rows_where_a_column_is_bad_and_a_single_row():
    good = base(50)
    rows = [3, 4, 10, 20, 21, 33, 49]
    bad = plant(plant(good, "platelets_1e9_l", rows, "clumped"), "sex", [40], "X")
    got = load(bad, [E.drop("platelets_1e9_l"), E.drop("sex", 40, was="X")])
    gone = sorted(rows + [40])
    same(got, load(good.drop(index=[r - 1 for r in gone]).reset_index(drop=True)))
    assert got.n == 50 - len(gone)
    changes = {c.edit.column: c for c in got.changes}
    assert changes["platelets_1e9_l"].count == len(rows) and changes["platelets_1e9_l"].rows == tuple(rows)
    assert changes["sex"].rows == (40,) and "row(s) dropped" in changes["sex"].what
    assert list(E.dropped_rows(got.changes)) == gone


def test_problems_after_a_drop_still_name_the_file_rows():
    good = base(30)
    bad = plant(good, "ecog", [2, 3], "x")
    bad.loc[19, "patient_id"] = bad.loc[9, "patient_id"]  # rows 10 and 20 share an ID
    bad.loc[24, "age_years"] = "old"
    found = problems(bad, edits=[E.drop("ecog")])
    dup = next(p for p in found if p.kind == "duplicate")
    assert "rows 10, 20" in dup.message
    age = next(p for p in found if p.column == "age_years")
    assert age.row == 25
    assert not any(p.column == "ecog" for p in found)


def test_missing_patient_ids_fixed_or_dropped():
    good = base(20)
    bad = plant(good, "patient_id", [6, 8], "")
    assert {(p.kind, p.row) for p in problems(bad)} == {("missing_id", 6), ("missing_id", 8)}
    got = load(bad, [E.fix("patient_id", 6, "NEW6"), E.drop("patient_id")])
    by_hand = plant(good, "patient_id", [6], "NEW6").drop(index=[7]).reset_index(drop=True)
    same(got, load(by_hand))
    with pytest.raises(CohortError, match="patient_id cannot be blank"):
        load(bad, [E.blank("patient_id")])


def test_declare_the_unit_converts_the_column_as_the_mapping_wizard_does():
    good = base(40)
    hb = pd.to_numeric(good["hemoglobin_g_l"], errors="coerce")
    in_gdl = good.copy()
    in_gdl["hemoglobin_g_l"] = [("" if pd.isna(v) else repr(v / 10)) for v in hb]
    found = problems(in_gdl)
    assert {p.kind for p in found if p.column == "hemoglobin_g_l"} <= {"unit", "median"}
    assert E.unit("hemoglobin_g_l", "g/dL") in E.column_edits("hemoglobin_g_l", found)
    got = load(in_gdl, [E.unit("hemoglobin_g_l", "g/dL")])
    by_hand = in_gdl.copy()
    by_hand["hemoglobin_g_l"] = [("" if t == "" else repr(omop_concepts.convert(float(t), 10.0)))
                                 for t in in_gdl["hemoglobin_g_l"]]
    same(got, load(by_hand))
    [change] = got.changes
    assert change.count == int(hb.notna().sum()) and "g/dL (× 10 → g/L)" in str(change)


def test_a_unit_and_a_blank_of_one_column_and_the_guard_left_for_other_values():
    good = base(30)
    bad = good.copy()
    bad["albumin_g_l"] = ["3.5", "n.d.", "4.1", "41"] * 7 + ["3.9", "4.0"]  # g/dL, a word, one value in g/L
    got = problems(bad, edits=[E.unit("albumin_g_l", "g/dL"), E.blank("albumin_g_l")])
    left = [p for p in got if p.column == "albumin_g_l"]
    assert left and all(p.kind == "unit" and p.value == "41" for p in left)  # 41 g/dL is implausible
    assert left[0].row == 4
    fixed = load(bad, [E.unit("albumin_g_l", "g/dL"), E.blank("albumin_g_l")]
                 + [E.fix("albumin_g_l", r, "4.1", was="41") for r in range(4, 29, 4)])
    values = stored(fixed)["albumin_g_l"]
    assert values.iloc[0] == 35.0 and pd.isna(values.iloc[1]) and values.iloc[3] == 41.0


def test_typed_parquet_columns_fixed_blanked_and_converted():
    df = synth.generate(30, 5, sites=2)
    ages = df["age_years"].astype(float).to_numpy(copy=True)
    ages[2], ages[5] = 130.0, 140.0  # out of range
    df = df.assign(age_years=ages, albumin_g_l=df["albumin_g_l"] / 10)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
    data = buf.getvalue()

    def from_parquet(edits=()):
        return load_cohort(reader.open_bytes("c.parquet", data, 1 << 30), connect(), edits=edits)

    with pytest.raises(CohortError) as err:
        from_parquet()
    listed = [p for p in err.value.problems if p.column == "age_years"]
    assert [(p.row, p.value) for p in listed] == [(3, "130.0"), (6, "140.0")]
    got = from_parquet([E.fix("age_years", 3, "31", was="130.0"), E.blank("age_years", 6, was="140.0"),
                        E.unit("albumin_g_l", "g/dL")])
    fixed = ages.copy()
    fixed[2], fixed[5] = 31.0, np.nan
    by_hand = df.assign(age_years=fixed)
    by_hand["albumin_g_l"] = [omop_concepts.convert(v, 10.0) if pd.notna(v) else v for v in df["albumin_g_l"]]
    same(got, load_cohort(by_hand, connect()))


# --------------------------------------------------------------------------- refusals


def test_record_based_columns_are_never_blanked():
    good = base(20)
    bad = plant(plant(good, "days_since_radiotherapy", [3], "recent"), "corticosteroid_prednisone_eq_mg_day",
                [5], "some")
    for column in ("days_since_radiotherapy", "corticosteroid_prednisone_eq_mg_day"):
        assert schema.BY_NAME[column].record_based
        with pytest.raises(CohortError, match=f"{column} cannot be blanked: it is record-based.*drop the row"):
            load(bad, [E.blank(column)])
        with pytest.raises(CohortError, match="cannot be blanked"):
            load(bad, [E.blank(column, 3)])
        problem = next(p for p in problems(bad) if p.column == column)
        assert E.cell_actions(problem) == ["fix", "drop"]
        assert [e.action for e in E.column_edits(column, [problem])] == ["drop"]
    # every column: record-based cells stay problems, the others are blanked
    left = problems(plant(bad, "ecog", [7], "x"), edits=[E.blank(E.ALL)])
    assert {p.column for p in left} == {"days_since_radiotherapy", "corticosteroid_prednisone_eq_mg_day"}
    got = load(bad, [E.drop(E.ALL)])
    assert got.n == 18


def test_unit_guard_problems_offer_the_unit_not_a_blank():
    frame = base(20)
    frame["lvef_pct"] = ["0.6"] * 20
    found = [p for p in problems(frame) if p.column == "lvef_pct"]
    assert found and found[0].kind == "unit"
    assert E.cell_actions(found[0]) == ["fix", "drop"]
    assert E.column_edits("lvef_pct", found) == [E.unit("lvef_pct", "fraction")]
    got = load(frame, [E.unit("lvef_pct", "fraction")])
    assert set(stored(got)["lvef_pct"]) == {60.0}


def test_edits_made_for_another_file_are_refused():
    good = base(20)
    bad = plant(good, "age_years", [4], "forty")
    with pytest.raises(CohortError, match="chosen for the value 'fifty'.*another file"):
        load(bad, [E.fix("age_years", 4, "41", was="fifty")])
    with pytest.raises(CohortError, match="names row 99, but the file has 20 rows"):
        load(bad, [E.fix("age_years", 99, "41")])
    with pytest.raises(CohortError, match="not in the file"):
        load(good.drop(columns="ecog"), [E.blank("ecog")])
    with pytest.raises(CohortError, match="two choices"):
        load(bad, [E.blank("age_years"), E.drop("age_years")])
    with pytest.raises(CohortError, match="nothing to convert"):
        load(good, [E.unit("hemoglobin_g_l", "g/L")])


def test_edit_values_are_checked():
    with pytest.raises(E.EditError, match="corrected text is empty"):
        E.fix("age_years", 3, " ")
    with pytest.raises(E.EditError, match="row"):
        E.blank("age_years", 0)
    with pytest.raises(E.EditError, match="not one of"):
        E.Edit("erase", "age_years")
    with pytest.raises(E.EditError, match="not a dictionary column"):
        E.check([E.blank("agee")])
    with pytest.raises(E.EditError, match="not known for hemoglobin_g_l"):
        E.check([E.unit("hemoglobin_g_l", "kg")])


def test_edits_round_trip_as_data():
    chosen = [E.fix("age_years", 4, "41", was="forty"), E.blank("ecog"), E.drop("sex", 9, was="X"),
              E.unit("hemoglobin_g_l", "g/dL"), E.blank("weight_kg", 3)]
    assert E.from_list(E.to_list(chosen)) == chosen
    assert E.to_list([E.blank("ecog")]) == [{"blank": {"column": "ecog"}}]
    assert E.from_list([{"drop": "ecog"}]) == [E.drop("ecog")]
    with pytest.raises(E.EditError, match="unknown key"):
        E.from_list([{"fix": {"column": "ecog", "row": 1, "text": "1", "colour": "red"}}])
    edited = E.with_edit(chosen, "ecog", None, E.drop("ecog"))
    assert E.column_edit(edited, "ecog") == E.drop("ecog") and E.column_edit(edited, "hemoglobin_g_l",
                                                                              units=True)
    assert E.cell_edit(E.with_edit(edited, "age_years", 4, None), "age_years", 4) is None


def test_guard_conversions_agree_with_the_lab_unit_table():
    for col in schema.COLUMNS:
        for name, factor in col.guard.units if col.guard else ():
            assert units.unit_factor(col.name, name) == pytest.approx(factor), (col.name, name)
            assert name in units.units_for(col.name)


def test_no_edit_and_empty_edits_load_as_before():
    good = base(25)
    plain = load(good)
    assert plain.changes == ()
    same(plain, load(good, [E.blank("ecog")]))  # nothing bad: nothing changes
    assert [c.count for c in load(good, [E.blank("ecog")]).changes] == [0]


# --------------------------------------------------------------------------- property: any chunking


COLUMNS = ("age_years", "ecog", "weight_kg", "sex", "days_since_radiotherapy", "albumin_g_l")


@st.composite
def planted(draw):
    n = draw(st.integers(8, 40))
    cells = draw(st.sets(st.tuples(st.sampled_from(COLUMNS), st.integers(1, n)), min_size=1, max_size=12))
    choices = {}
    for column in sorted({c for c, _ in cells}):
        allowed = ["cells", "drop"] + ([] if E.blank_refusal(column) else ["blank"])
        choices[column] = draw(st.sampled_from(allowed))
    per_cell = {cell: draw(st.sampled_from(["fix", "drop"] + ([] if E.blank_refusal(cell[0]) else ["blank"])))
                for cell in sorted(cells)}
    chunk = draw(st.integers(3, n))
    return n, sorted(cells), choices, per_cell, chunk


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted())
def test_any_edits_in_any_chunks_equal_the_file_edited_by_hand(case):
    n, cells, choices, per_cell, chunk = case
    good = base(n, seed=n)
    bad = good.copy()
    for column, row in cells:
        bad.loc[row - 1, column] = "zz"  # never a valid value of these columns
    chosen, hand, dropped = [], bad.copy(), set()
    fixes = {"age_years": "50", "ecog": "1", "weight_kg": "70", "sex": "F", "days_since_radiotherapy": "400",
             "albumin_g_l": "40"}
    for column, how in choices.items():
        rows = [r for c, r in cells if c == column]
        if how == "blank":
            chosen.append(E.blank(column))
            for r in rows:
                hand.loc[r - 1, column] = ""
        elif how == "drop":
            chosen.append(E.drop(column))
            dropped |= set(rows)
        else:
            for r in rows:
                action = per_cell[column, r]
                if action == "fix":
                    chosen.append(E.fix(column, r, fixes[column], was="zz"))
                    hand.loc[r - 1, column] = fixes[column]
                elif action == "blank":
                    chosen.append(E.blank(column, r, was="zz"))
                    hand.loc[r - 1, column] = ""
                else:
                    chosen.append(E.drop(column, r, was="zz"))
                    dropped.add(r)
    hand = hand.drop(index=[r - 1 for r in dropped]).reset_index(drop=True)
    got = load(bad, chosen, chunk_rows=chunk)
    same(got, load(hand))
    assert got.n == n - len(dropped)
    assert list(E.dropped_rows(got.changes)) == sorted(dropped)
    for c in got.changes:  # each row edit did exactly its own row, once
        if not c.edit.whole_column:
            assert (c.count, c.rows) == (1, (c.edit.row,)), c
        else:  # every planted cell of the column, in all chunks
            assert c.count == len(c.rows) and list(c.rows) == sorted(r for col, r in cells if col == c.edit.column), c
    changed = sum(c.count for c in got.changes if c.edit.action in ("fix", "blank"))
    assert changed == sum(1 for c, r in cells if choices[c] == "blank"
                          or (choices[c] == "cells" and per_cell[c, r] != "drop"))
