"""AppTest: bad cells answered in the app (upload and mapping wizard), and the honest data badge.

* a plain upload with bad cells: per value fix / blank / drop, every bad value of a column,
  the unit of a column the unit guard flags; record-based columns offer no blank;
  *Load with these choices* loads the file with them and the Import report lists them;
* the mapping wizard: a cell the mapping cannot read no longer blocks *Load this cohort*:
  blank it (or fix it, or drop its row) in the preview; the choice goes into the YAML;
* the data badge: a green tick only when the cohort can assess the protocol; a two-column,
  one-patient CSV says how little it can assess.
"""

from __future__ import annotations

import pandas as pd
import pytest

from kn026.ingest import edits as E
from kn026.ingest import mapping as mp
from tests.app.test_app import small_cohort
from tests.app.test_app_import import _select, _upload_foreign, bundle, choose, foreign_frame, new_app, texts
from tests.app_support import go, ok, open_tab, sidebar_radio
from ui import session

W = session.W


def select(at, key: str):
    found = [s for s in at.selectbox if s.key == key]
    assert found, f"no selectbox {key!r}: {[s.key for s in at.selectbox if s.key and 'bad.' in s.key]}"
    return found[0]


def upload(at, frame: pd.DataFrame, name: str = "bad.csv"):
    sidebar_radio(at, "Cohort").set_value("upload").run()
    at.sidebar.file_uploader[0].set_value((name, frame.to_csv(index=False).encode(), "text/csv")).run()
    ok(at)
    return at


def bad_upload() -> pd.DataFrame:
    df = small_cohort(50)
    df = df.astype({"age_years": object, "sex": object, "days_since_radiotherapy": object})
    for r in (3, 5, 8, 11, 12, 20, 30):  # seven bad ages: more than the loader lists
        df.loc[r, "age_years"] = "forty"
    df.loc[7, "sex"] = "X"
    df.loc[9, "days_since_radiotherapy"] = "recent"
    df.loc[14, "ecog"] = 7  # out of range
    df["hemoglobin_g_l"] = (df["hemoglobin_g_l"] / 10).round(1)  # g/dL
    return df


def test_upload_choices_fix_blank_drop_and_unit_then_load():
    at = new_app()
    df = bad_upload()
    upload(at, df)
    assert "bad.csv could not be loaded" in "\n".join(e.value for e in at.error)
    assert bundle(at).kind == "builtin"
    # record-based: no blank, neither for the cell nor for the column
    assert select(at, W + "bad.upload.cell.days_since_radiotherapy.10").options == [
        "Leave it (stays a problem)", "Fix the value", "Drop the row"]
    assert not [s for s in at.selectbox if s.key == W + "bad.upload.column.days_since_radiotherapy"]  # one value
    assert select(at, W + "bad.upload.column.age_years").options == ["Choose value by value", "Blank all 7 (unknown)",
                                                                     "Drop all 7 rows"]
    # the unit guard: the unit of the column, not a blank
    hb = select(at, W + "bad.upload.unit.hemoglobin_g_l")
    assert "in g/dL (× 10 → g/L)" in hb.options
    assert "Blank it (unknown)" not in select(at, W + "bad.upload.cell.hemoglobin_g_l.1").options
    assert at.button(key=W + "upload_with_choices").disabled
    # every kind of choice
    select(at, W + "bad.upload.cell.age_years.4").set_value("fix").run()
    at.text_input(key=W + "bad.upload.text.age_years.4").input("44").run()
    select(at, W + "bad.upload.column.age_years").set_value("blank").run()
    select(at, W + "bad.upload.cell.sex.8").set_value("blank").run()
    select(at, W + "bad.upload.cell.days_since_radiotherapy.10").set_value("drop").run()
    select(at, W + "bad.upload.cell.ecog.15").set_value("fix").run()
    at.text_input(key=W + "bad.upload.text.ecog.15").input("1").run()
    select(at, W + "bad.upload.unit.hemoglobin_g_l").set_value("g/dL").run()
    ok(at)
    # the rows a whole-column choice answers are no longer offered one by one
    assert not [s for s in at.selectbox if s.key and s.key.startswith(W + "bad.upload.cell.hemoglobin_g_l.")]
    assert not [s for s in at.selectbox if s.key and s.key.startswith(W + "bad.upload.cell.age_years.")]
    assert "its values will be converted from g/dL" in texts(at)
    chosen = at.session_state[session.K_UPLOAD_EDITS]["edits"]
    assert set(chosen) == {E.fix("age_years", 4, "44", "forty"), E.blank("age_years"), E.blank("sex", 8, "X"),
                           E.drop("days_since_radiotherapy", 10, "recent"), E.fix("ecog", 15, "1", "7"),
                           E.unit("hemoglobin_g_l", "g/dL")}
    assert "Your choices (6)" in texts(at)
    at.button(key=W + "upload_with_choices").click().run()
    ok(at)
    b = bundle(at)
    assert b.kind == "upload" and b.cohort.n == 49, "\n".join(e.value for e in at.error)
    got = b.con.execute("SELECT patient_id, age_years, sex, ecog, hemoglobin_g_l FROM cohort").df()
    got = got.set_index("patient_id")
    assert got.loc[df.loc[3, "patient_id"], "age_years"] == 44
    assert pd.isna(got.loc[df.loc[5, "patient_id"], "age_years"])  # blanked with the rest of the column
    assert pd.isna(got.loc[df.loc[7, "patient_id"], "sex"])
    assert df.loc[9, "patient_id"] not in got.index
    assert got.loc[df.loc[14, "patient_id"], "ecog"] == 1
    first = df.loc[0, "hemoglobin_g_l"]
    assert got.loc[df.loc[0, "patient_id"], "hemoglobin_g_l"] == pytest.approx(first * 10)
    assert "change(s) chosen" in b.label
    changes = {c.edit: c for c in b.report["changes"]}
    assert changes[E.blank("age_years")].count == 6 and changes[E.unit("hemoglobin_g_l", "g/dL")].count == 50
    go(at, "pages/cohort.py")
    open_tab(at, "cohort", "Import report")
    table = next(d.value for d in at.dataframe if "change" in d.value.columns)
    assert len(table) == 6 and "drop row 10 (bad days_since_radiotherapy ('recent'))" in table["change"].tolist()


def test_undo_and_new_file_reset_the_choices():
    at = new_app()
    upload(at, bad_upload())
    select(at, W + "bad.upload.column.age_years").set_value("drop").run()
    assert at.session_state[session.K_UPLOAD_EDITS]["edits"] == [E.drop("age_years")]
    undo = next(b for b in at.button if b.label == "Undo")
    undo.click().run()
    ok(at)
    assert at.session_state[session.K_UPLOAD_EDITS]["edits"] == []
    select(at, W + "bad.upload.column.age_years").set_value("drop").run()
    other = bad_upload()
    other.loc[0, "patient_id"] = "ANOTHER"
    upload(at, other, "bad2.csv")
    assert "Your choices" not in texts(at)
    assert select(at, W + "bad.upload.column.age_years").value == "per value"


def test_mapping_wizard_bad_cell_blanked_in_the_preview_then_loaded():
    at = new_app()
    choose(at, "mapped")
    frame = foreign_frame().astype(object)
    frame.loc[3, "Hb (g/dL)"] = "n.d."
    frame.loc[8, "ECOG PS"] = "unknown?"
    _upload_foreign(at, frame, "site_export_bad.csv")
    assert at.button(key=W + "map_load").disabled
    select(at, W + "bad.mapped.cell.hemoglobin_g_l.4").set_value("blank").run()
    select(at, W + "bad.mapped.cell.ecog.9").set_value("fix").run()
    at.text_input(key=W + "bad.mapped.text.ecog.9").input("1").run()
    ok(at)
    m = at.session_state[session.K_MAPPING]
    assert set(m.edits) == {E.blank("hemoglobin_g_l", 4, "n.d."), E.fix("ecog", 9, "1", "unknown?")}
    assert not at.button(key=W + "map_load").disabled
    assert "Your choices (2)" in texts(at) and "1 cell(s) fixed" in texts(at) and "1 cell(s) blanked" in texts(at)
    yaml_text = m.to_yaml()
    assert "was: n.d." in yaml_text and mp.Mapping.from_yaml(yaml_text).edits == m.edits
    at.button(key=W + "map_load").click().run()
    ok(at)
    b = bundle(at)
    assert b.kind == "mapped" and b.cohort.n == 60
    cohort = b.con.execute("SELECT patient_id, hemoglobin_g_l, ecog FROM cohort").df().set_index("patient_id")
    assert pd.isna(cohort.loc[str(frame.loc[3, "Subject No."]), "hemoglobin_g_l"])
    assert cohort.loc[str(frame.loc[8, "Subject No."]), "ecog"] == 1
    assert [c.count for c in b.report["changes"]] == [1, 1]
    assert b.report["mapping"].edits == m.edits
    assert any("change" in d.value.columns for d in at.dataframe)  # the Import report lists them


def test_mapping_wizard_unit_choice_is_the_columns_unit_setting():
    at = new_app()
    choose(at, "mapped")
    frame = foreign_frame()
    _upload_foreign(at, frame)
    _select(at, "unit.hemoglobin_g_l").set_value("g/L").run()  # wrong: the file is in g/dL
    ok(at)
    unit = select(at, W + "bad.mapped.unit.hemoglobin_g_l")
    unit.set_value("g/dL").run()
    ok(at)
    assert at.session_state[session.K_MAPPING].get("hemoglobin_g_l").unit == "g/dL"
    assert at.session_state[session.K_MAPPING].edits == []
    assert "All 60 rows pass" in texts(at)


def test_honest_badge_for_a_two_column_one_patient_csv():
    at = new_app()
    ok_badge = [c.value for c in at.sidebar.caption if "Can assess all" in c.value]
    assert ok_badge and ":green[:material/check_circle:]" in ok_badge[0]  # the built-in cohort
    tiny = pd.DataFrame({"patient_id": ["P1"], "age_years": [61]})
    upload(at, tiny, "tiny.csv")
    assert bundle(at).kind == "upload" and bundle(at).cohort.n == 1
    side = "\n".join(w.value for w in at.sidebar.warning)
    assert "Little can be assessed" in side and "rules cannot be assessed" in side
    assert not any("check_circle" in c.value for c in at.sidebar.caption)
    main = "\n".join(w.value for w in at.main.warning)
    assert "little of the protocol can be assessed" in main  # the load message, not a green tick
    assert "rules cannot be assessed" in main
    go(at, "pages/funnel.py")
    assert "Little of the protocol can be assessed" in "\n".join(w.value for w in at.main.warning)
    assert "Little can be assessed" in "\n".join(w.value for w in at.sidebar.warning)
