"""Column-mapping wizard: header suggestions, units, value translations, YAML, preview, CLI."""

from __future__ import annotations

import argparse
import datetime as dt

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kn026.base import schema
from kn026.cli import importing
from kn026.ingest import date_formats, mapped
from kn026.ingest import mapping as mp
from kn026.ingest.cohort import load_cohort
from kn026.ingest.problems import CohortError
from tests.shared_data import OMOP_SAMPLE

SAMPLE = OMOP_SAMPLE

MESSY = {
    "Subject No.": ("patient_id", None),
    "Site": ("site_id", None),
    "Date of screening": ("screening_date", None),
    "AGE": ("age_years", None),
    "Gender": ("sex", None),
    "Weight (lb)": ("weight_kg", "lb"),
    "Tumour Site": ("primary_site", None),
    "Histology": ("histology", None),
    "HER2 IHC score": ("her2_ihc", None),
    "HER2 FISH": ("her2_ish", None),
    "ECOG PS": ("ecog", None),
    "Hb (g/dL)": ("hemoglobin_g_l", "g/dL"),
    "Platelet count [10^9/L]": ("platelets_1e9_l", None),
    "ANC": ("anc_1e9_l", None),
    "Total Bilirubin (mg/dL)": ("bilirubin_total_umol_l", "mg/dL"),
    "AST/SGOT": ("ast_u_l", None),
    "ALT (IU/L)": ("alt_u_l", None),
    "Creat_mgdl": ("creatinine_umol_l", "mg/dL"),
    "LVEF %": ("lvef_pct", None),
    "Systolic BP": ("sbp_mmhg", None),
    "Hepatitis B": ("hbv_active", None),
    "prior_lines": ("prior_systemic_lines", None),
}


def test_suggest_mapping_on_messy_headers():
    headers = list(MESSY) + ["Comments", "Study arm", "Randomisation no"]
    m = mp.suggest_mapping(headers)
    got = {c.source: (c.target, c.unit) for c in m.columns}
    assert got == MESSY
    assert m.unmatched == ["Comments", "Study arm", "Randomisation no"]
    assert [c.target for c in m.columns] == [c.name for c in schema.COLUMNS if c.name in {t for t, _ in got.values()}]


def test_each_header_and_column_used_once():
    m = mp.suggest_mapping(["Hb", "Hemoglobin", "HGB (g/L)", "hb"])
    assert len(m.columns) == 1 and m.columns[0].source == "Hb"
    assert m.unmatched == ["Hemoglobin", "HGB (g/L)", "hb"]
    assert mp.suggest_mapping([]).columns == []


def test_unit_guessed_from_values_when_header_is_silent():
    sample = pd.DataFrame({"Hemoglobin": ["12.1", "9.8", "14"], "Albumin": ["38", "41", ""],
                           "Creatinine": ["1.1", "0.8", "2.0"], "Platelets": ["150000", "90000", "220000"]})
    m = mp.suggest_mapping(sample.columns, sample=sample)
    assert m.get("hemoglobin_g_l").unit == "g/dL"  # a median of 12 g/L is not a haemoglobin
    assert m.get("albumin_g_l").unit is None  # already g/L
    assert m.get("creatinine_umol_l").unit == "mg/dL"
    assert m.get("platelets_1e9_l").unit == "cells/uL"
    assert mp.guess_unit("hemoglobin_g_l", ["abc"]) is None
    assert mp.guess_unit("ecog", ["1"]) is None


@pytest.mark.parametrize(("values", "decimal"), [
    (["12,5", "9,8"], ","), (["12.5", "9,8"], "."), (["1,234", "150,000"], "."), (["7", "8"], "."),
])
def test_guess_decimal(values, decimal):
    assert mp.guess_decimal(values) == decimal


@pytest.mark.parametrize(("column", "value", "expected"), [
    ("sex", "Female", "F"), ("sex", " male ", "M"), ("sex", "W", "F"), ("sex", "F", "F"),
    ("her2_ihc", "IHC 3+", "3"), ("her2_ihc", "2+", "2"), ("her2_ihc", "score 1+", "1"), ("her2_ihc", "3", "3"),
    ("her2_ihc", "HER2 2+ (equivocal)", "2"), ("her2_ihc", "negative", "negative"),  # 0 or 1+: not guessed
    ("her2_ish", "Positive", "positive"), ("her2_ish", "Not amplified", "negative"), ("her2_ish", "AMP", "positive"),
    ("primary_site", "Gastric", "stomach"), ("primary_site", "Gastro-oesophageal junction", "gej"),
    ("primary_site", "colon", "colon"),
    ("histology", "Signet ring cell carcinoma", "signet_ring_cell_carcinoma"), ("histology", "Squamous", "Squamous"),
    ("histology", "8490/3", "signet_ring_cell_carcinoma"), ("histology", "Tubular", "tubular_adenocarcinoma"),
    ("histology", "Papillary adenocarcinoma", "papillary_adenocarcinoma"),
    ("histology", "Mucinous", "mucinous_adenocarcinoma"), ("histology", "Diffuse type", "poorly_cohesive_carcinoma"),
    ("histology", "Poorly cohesive carcinoma", "poorly_cohesive_carcinoma"),
    ("histology", "Mixed", "mixed_adenocarcinoma"), ("histology", "Intestinal type", "adenocarcinoma"),
    ("histology", "8140/3", "adenocarcinoma"),
    ("disease_extent", "Stage IV", "metastatic"), ("disease_extent", "Locally advanced", "locally_advanced_unresectable"),
    ("ecog", "ECOG 1", "1"), ("ecog", "PS 0", "0"), ("nyha_class", "III", "3"), ("nyha_class", "class ii", "2"),
    ("hiv_positive", "Positive", "true"), ("hbv_active", "neg", "false"), ("hcv_active", "yes", "yes"),
    ("brain_metastases", "No", "none"), ("brain_metastases", "treated, stable", "treated, stable"),
    ("brain_metastases", "yes", "yes"),  # active or treated? left for the analyst
    ("peripheral_neuropathy_grade", "Grade 2", "2"), ("sex", "", None), ("sex", None, None),
])
def test_categorical_values(column, value, expected):
    assert mp.translate_value(column, value) == expected


@pytest.mark.parametrize(("header", "held_for"), [
    ("QTc", "qtcf_ms"), ("QTc (ms)", "qtcf_ms"), ("QTcB", "qtcf_ms"), ("QTc Bazett", "qtcf_ms"),
    ("QTc interval", "qtcf_ms"), ("Corrected QT", "qtcf_ms"), ("eGFR", "creatinine_clearance_ml_min"),
    ("eGFR (CKD-EPI)", "creatinine_clearance_ml_min"), ("GFR MDRD", "creatinine_clearance_ml_min"),
    ("CKD-EPI creatinine", "creatinine_clearance_ml_min"),
])
def test_qtc_and_egfr_headers_are_offered_never_mapped(header, held_for):
    """Dictionary section 4: qtcf_ms is Fridericia only, the clearance is measured or Cockcroft-Gault."""
    m = mp.suggest_mapping(["Subject", header, "QT (ms)", "HR"])
    assert m.get(held_for) is None and header in m.unmatched
    assert [(h.header, h.target) for h in m.held] == [(header, held_for)]
    why = m.held[0].why
    assert ("Fridericia" in why and "Bazett" in why) if held_for == "qtcf_ms" else ("eGFR" in why and "Cockcroft" in why)
    assert m.get("qt_ms").source == "QT (ms)"  # "QTc" never becomes the uncorrected QT either
    assert mp.caution(held_for, header) == why
    # the analyst's explicit choice is kept (and still explained)
    m.set(held_for, header)
    assert m.get(held_for).source == header and mp.Mapping.from_yaml(m.to_yaml()).get(held_for).source == header


@pytest.mark.parametrize(("header", "target"), [
    ("QTcF", "qtcf_ms"), ("QTc Fridericia", "qtcf_ms"), ("QTc (Fridericia)", "qtcf_ms"),
    ("Creatinine clearance", "creatinine_clearance_ml_min"), ("CrCl", "creatinine_clearance_ml_min"),
])
def test_fridericia_and_clearance_headers_map_as_before(header, target):
    m = mp.suggest_mapping([header])
    assert m.get(target).source == header and not m.held and mp.caution(target, header) == ""


def test_qtc_is_not_held_when_a_fridericia_column_exists():
    m = mp.suggest_mapping(["QTcF", "QTc"])
    assert m.get("qtcf_ms").source == "QTcF" and not m.held and m.unmatched == ["QTc"]


def test_user_value_table_wins():
    assert mp.translate_value("sex", "1", {"1": "M", "2": "F"}) == "M"
    assert mp.translate_value("her2_ihc", "Negative", {"negative": "0"}) == "0"
    assert mp.suggest_values("sex", ["Female", "F", "male", None, ""]) == {"Female": "F", "male": "M"}
    assert mp.suggest_values("hemoglobin_g_l", ["12"]) == {}


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        "Pt": ["A1", "A2", "A3"],
        "Visit": ["31/01/2024", "15/02/2024", "01/03/2024"],
        "DOB": ["1960-03-15", "1970-02-16", "1990-03-01"],
        "Gender": ["Female", "male", "F"],
        "Hb": ["12,5", "9,1", "13"],
        "Plt": ["150000", "95000", "300000"],
        "Creat": ["1,2", "0,8", ""],
        "Wt": ["154", "176", "143"],
        "HER2": ["IHC 3+", "2+", "3+"],
        "ISH": ["", "Amplified", ""],
        "Last transfusion": ["20/01/2024", "", "15/03/2024"],
        "Notes": ["x", "y", "z"],
    })


def _mapping() -> mp.Mapping:
    m = mp.Mapping(name="site A", decimal=",")
    m.set("patient_id", "Pt")
    m.set("screening_date", "Visit", date_format="%d/%m/%Y")
    m.set("age_years", "DOB", transform="age_from_birth_date")
    m.set("sex", "Gender")
    m.set("hemoglobin_g_l", "Hb", unit="g/dL")
    m.set("platelets_1e9_l", "Plt", unit="cells/uL")
    m.set("creatinine_umol_l", "Creat", unit="mg/dL")
    m.set("weight_kg", "Wt", unit="lb")
    m.set("her2_ihc", "HER2")
    m.set("her2_ish", "ISH", values={"Amplified": "positive"})
    m.set("days_since_transfusion", "Last transfusion", transform="days_since", date_format="%d/%m/%Y")
    m.set("site_id", constant="S01")
    m.set("country", constant="Spain")
    return m


def test_apply_mapping_converts_units_translates_values_and_dates():
    out = mp.apply_mapping(_frame(), _mapping())
    assert list(out.columns) == ["patient_id", "site_id", "country", "screening_date", "age_years", "sex",
                                 "weight_kg", "her2_ihc", "her2_ish", "platelets_1e9_l", "hemoglobin_g_l",
                                 "creatinine_umol_l", "days_since_transfusion"]
    assert out["hemoglobin_g_l"].tolist() == [125.0, 91.0, 130.0]  # 12,5 g/dL, decimal comma
    assert out["platelets_1e9_l"].tolist() == [150.0, 95.0, 300.0]
    assert out["creatinine_umol_l"].tolist() == [106.08, 70.72, None]
    assert out["weight_kg"].tolist() == [69.853225, 79.832257, 64.863709]
    assert out["sex"].tolist() == ["F", "M", "F"] and out["her2_ihc"].tolist() == ["3", "2", "3"]
    assert out["her2_ish"].tolist() == [None, "positive", None]
    assert out["screening_date"].tolist() == ["2024-01-31", "2024-02-15", "2024-03-01"]
    assert out["age_years"].tolist() == [63, 53, 34]  # 1970-02-16 -> 2024-02-15: not yet 54
    assert out["days_since_transfusion"].tolist() == [11, None, None]  # 2024-03-15 is after the visit
    assert out["site_id"].tolist() == ["S01"] * 3
    cohort = load_cohort(out)
    assert cohort.n == 3 and "Notes" not in cohort.present


def test_preview_runs_validation_and_lists_problems():
    frame = _frame()
    frame.loc[1, "Hb"] = "n.d."
    frame.loc[2, "Gender"] = "unknown"
    preview = mapped.preview(frame, _mapping(), rows=2)
    assert not preview.ok and preview.n_rows == 3 and len(preview.frame) == 2
    by_col = {p.column: p for p in preview.problems}
    assert set(by_col) == {"hemoglobin_g_l", "sex"}
    assert (by_col["hemoglobin_g_l"].row, by_col["hemoglobin_g_l"].patient_id,
            by_col["hemoglobin_g_l"].value) == (2, "A2", "n.d.")
    assert by_col["sex"].value == "unknown" and preview.total_problems == 2
    assert "her2_ihc" in preview.present and "ecog" in preview.absent
    vals = preview.values.set_index(["column", "value"])
    assert vals.loc[("sex", "unknown"), "valid"] == False  # noqa: E712
    assert vals.loc[("her2_ihc", "IHC 3+"), "maps_to"] == "3"
    assert mapped.preview(_frame(), _mapping()).ok


def test_yaml_round_trip(tmp_path):
    m = _mapping()
    text = m.to_yaml()
    assert "hemoglobin_g_l:\n    source: Hb\n    unit: g/dL" in text
    again = mp.Mapping.from_yaml(text)
    assert again == m and again.to_yaml() == text
    path = m.save(tmp_path / "site_a.yaml")
    assert mp.Mapping.from_yaml(path) == m and mp.Mapping.from_yaml(str(path)) == m
    pd.testing.assert_frame_equal(mp.apply_mapping(_frame(), mp.Mapping.from_yaml(path)),
                                  mp.apply_mapping(_frame(), m))
    short = mp.Mapping.from_yaml("columns:\n  patient_id: ID\n  hemoglobin_g_l: {source: Hb, factor: 10}\n")
    assert short.get("patient_id").source == "ID" and short.get("hemoglobin_g_l").factor == 10.0
    # YAML 1.1 would read Yes / no as booleans; a mapping means the spelling
    hand = mp.Mapping.from_yaml("columns:\n  sex: {source: G, values: {Yes: M, no: F}}\n"
                                "  hiv_positive: {source: H, values: {pos: true}}\n")
    assert hand.get("sex").values == {"Yes": "M", "no": "F"}
    assert mp.apply_mapping(pd.DataFrame({"G": ["yes", "NO"], "H": ["pos", ""]}), hand).to_dict("list") == {
        "sex": ["M", "F"], "hiv_positive": ["True", None]}


_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(targets=st.lists(st.sampled_from([c.name for c in schema.COLUMNS]), unique=True, min_size=1, max_size=8),
       sources=st.lists(_text, min_size=8, max_size=8), values=st.dictionaries(_text, _text, max_size=3),
       decimal=st.sampled_from([".", ","]), name=st.one_of(st.just(""), _text))
def test_yaml_round_trip_property(targets, sources, values, decimal, name):
    m = mp.Mapping(name=name, decimal=decimal)
    for target, source in zip(targets, sources, strict=False):
        if target in ("weight_kg", "hemoglobin_g_l"):
            m.set(target, source, unit=mp.units_for(target)[-1], values=values)
        elif target == "site_id":
            m.set(target, constant=source)
        else:
            m.set(target, source, values=values)
    assert mp.Mapping.from_yaml(m.to_yaml()) == m


def test_mapping_errors_name_the_problem_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="'hemoglobin' is not a dictionary column; did you mean 'hemoglobin_g_l'"):
        mp.Mapping.from_yaml("columns:\n  hemoglobin: Hb\n")
    with pytest.raises(ValueError, match="exactly one of source"):
        mp.Mapping.from_yaml("columns:\n  site_id: {source: S, constant: X}\n")
    with pytest.raises(ValueError, match=r"unit 'mg/L' is not known for hemoglobin_g_l; use one of g/L, g/dL"):
        mp.Mapping.from_yaml("columns:\n  hemoglobin_g_l: {source: Hb, unit: mg/L}\n")
    with pytest.raises(ValueError, match="needs an index date"):
        mp.Mapping.from_yaml("columns:\n  days_since_transfusion: {source: T, transform: days_since}\n")
    with pytest.raises(ValueError, match="unknown key"):
        mp.Mapping.from_yaml("columns:\n  sex: {source: G, value: {}}\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        mp.Mapping.from_yaml("columns: [\n")
    with pytest.raises(ValueError, match="cannot be read"):
        mp.Mapping.from_yaml(tmp_path / "missing.yaml")
    m = mp.Mapping()
    m.set("patient_id", "Patient")
    with pytest.raises(ValueError, match=r"column 'Patient' is not in the file \(did you mean 'Patients'\?\)"):
        mp.apply_mapping(pd.DataFrame({"Patients": ["1"]}), m)


def test_read_table_csv_semicolon_excel_and_parquet(tmp_path):
    csv = tmp_path / "export.csv"
    csv.write_text("Pt;Hb\nA1;12,5\nA2;\n", encoding="utf-8")
    frame = mp.read_table(csv)
    assert frame.to_dict("list") == {"Pt": ["A1", "A2"], "Hb": ["12,5", ""]}
    xlsx = tmp_path / "export.xlsx"
    frame.to_excel(xlsx, index=False, sheet_name="screening")
    assert mp.read_table(xlsx, "screening").to_dict("list") == {"Pt": ["A1", "A2"], "Hb": ["12,5", ""]}
    one = tmp_path / "one.csv"
    one.write_text("patient_id\n1\n2\n")
    assert mp.read_table(one).to_dict("list") == {"patient_id": ["1", "2"]}  # no delimiter to sniff
    pq = tmp_path / "export.parquet"
    pd.DataFrame({"Pt": ["A1"], "Hb": [12.5]}).to_parquet(pq)
    assert mp.read_table(pq)["Hb"].tolist() == [12.5]
    with pytest.raises(ValueError, match="does not exist"):
        mp.read_table(tmp_path / "nope.csv")
    other = tmp_path / "export.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match="unsupported file type"):
        mp.read_table(other)


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kn026-test")
    importing.add_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    return args.func(args)


def test_cli_import_with_mapping_to_csv_and_parquet(tmp_path, capsys):
    src = tmp_path / "export.xlsx"
    _frame().to_excel(src, index=False)
    mapping = _mapping().save(tmp_path / "map.yaml")
    assert _run("import", "--mapping", str(mapping), "--in", str(src), "--out", str(tmp_path / "c.csv"),
                "--report", str(tmp_path / "values.csv")) == 0
    assert "3 patients, 13 dictionary columns" in capsys.readouterr().err
    cohort = load_cohort(tmp_path / "c.csv")
    assert cohort.n == 3 and "hemoglobin_g_l" in cohort.present
    assert pd.read_csv(tmp_path / "values.csv")["column"].tolist()[:3] == ["sex"] * 3
    assert _run("import", "--mapping", str(mapping), "--in", str(src), "--out", str(tmp_path / "c.parquet")) == 0
    assert pd.read_parquet(tmp_path / "c.parquet")["hemoglobin_g_l"].tolist() == [125.0, 91.0, 130.0]


def test_cli_suggest_names_the_headers_it_did_not_map(tmp_path, capsys):
    src = tmp_path / "export.csv"
    pd.DataFrame({"Patient ID": ["1"], "QTc (ms)": ["455"], "eGFR": ["61"]}).to_csv(src, index=False)
    out = tmp_path / "suggested.yaml"
    assert _run("import", "--suggest", str(out), "--in", str(src)) == 0
    err = capsys.readouterr().err
    assert "not mapped without your choice: 'QTc (ms)' -> qtcf_ms" in err and "Fridericia" in err
    assert "'eGFR' -> creatinine_clearance_ml_min" in err
    assert set(mp.Mapping.from_yaml(out).to_dict()["columns"]) == {"patient_id"}


def test_cli_suggest_then_import(tmp_path):
    src = tmp_path / "export.csv"
    pd.DataFrame({"Patient ID": ["1", "2"], "Gender": ["Female", "Male"], "Hb (g/dL)": ["12.5", "10"]}).to_csv(
        src, index=False)
    out = tmp_path / "suggested.yaml"
    assert _run("import", "--suggest", str(out), "--in", str(src)) == 0
    m = mp.Mapping.from_yaml(out)
    assert {c.target for c in m.columns} == {"patient_id", "sex", "hemoglobin_g_l"}
    assert _run("import", "--mapping", str(out), "--in", str(src), "--out", str(tmp_path / "c.csv")) == 0
    assert pd.read_csv(tmp_path / "c.csv")["hemoglobin_g_l"].tolist() == [125.0, 100.0]


def test_cli_bad_input_raises_one_line_errors(tmp_path):
    src = tmp_path / "export.csv"
    pd.DataFrame({"Pt": ["1", "1"], "Hb": ["12", "x"]}).to_csv(src, index=False)
    m = mp.Mapping()
    m.set("patient_id", "Pt")
    m.set("hemoglobin_g_l", "Hb")
    path = m.save(tmp_path / "m.yaml")
    with pytest.raises(CohortError) as err:
        _run("import", "--mapping", str(path), "--in", str(src), "--out", str(tmp_path / "c.csv"))
    assert {p.column for p in err.value.problems} == {"patient_id", "hemoglobin_g_l"}
    assert not (tmp_path / "c.csv").exists()
    cases = [
        (["--mapping", str(path), "--out", "c.csv"], "--mapping needs --in"),
        (["--mapping", str(path), "--in", str(src), "--out", "c.txt"], r"end the name in \.csv or \.parquet"),
        (["--mapping", str(path), "--in", str(src)], "needs --out"),
        (["--omop", str(tmp_path), "--out", "c.csv"], "--omop needs --index-date"),
        (["--mapping", str(path), "--in", str(src), "--out", "c.csv", "--index-date", "last"], "applies to --omop"),
        (["--suggest", "s.yaml"], "--suggest needs --in"),
    ]
    for argv, message in cases:
        with pytest.raises(ValueError, match=message):
            _run("import", *argv)
    for line in [m for _, m in cases]:
        assert "\n" not in line
    with pytest.raises(SystemExit):
        _parser().parse_args(["import", "--mapping", "a.yaml", "--omop", "b", "--out", "c.csv"])


@pytest.mark.skipif(not SAMPLE.is_file(), reason=f"OMOP sample {SAMPLE} is not present")
def test_cli_import_omop(tmp_path, capsys):
    out, report = tmp_path / "synthea.parquet", tmp_path / "report.csv"
    assert _run("import", "--omop", str(SAMPLE), "--index-date", "last", "--lookback-days", "36500",
                "--out", str(out), "--report", str(report)) == 0
    err = capsys.readouterr().err
    assert "28 of 28 persons" in err and str(out) in err
    frame = pd.read_parquet(out)
    assert len(frame) == 28 and frame["hemoglobin_g_l"].notna().all()
    assert load_cohort(frame).n == 28
    table = pd.read_csv(report).set_index("column")
    assert table.loc["hemoglobin_g_l", "n_value"] == 28 and table.loc["consent_signed", "status"] == "absent"
    assert _run("import", "--omop", str(SAMPLE), "--index-date", "2020-01-01", "--open-world",
                "--out", str(tmp_path / "fixed.csv")) == 0
    fixed = pd.read_csv(tmp_path / "fixed.csv")
    assert (fixed["screening_date"] == "2020-01-01").all() and fixed["heart_failure_history"].isna().all()


# ----------------------------------------------------------------------------- dates (issue 13, item 3)


def _site_export(n: int = 300, seed: int = 13) -> tuple[pd.DataFrame, list[str]]:
    """A dd/mm/yyyy site export (as in issue 13) and its true ISO screening dates."""
    import random

    rng = random.Random(seed)
    start = dt.date(2022, 1, 1)
    days = [start + dt.timedelta(days=rng.randrange(400)) for _ in range(n)]
    frame = pd.DataFrame({"Subject": [f"S{i:04d}" for i in range(n)], "Visit": [d.strftime("%d/%m/%Y") for d in days],
                          "Age": ["60"] * n})
    return frame, [d.isoformat() for d in days]


def _suggested_format(frame: pd.DataFrame) -> str | None:
    """The date_format suggest_mapping writes for the Visit column (named as suggest_mapping knows it)."""
    sample = frame.rename(columns={"Visit": "Date of screening"})
    return mp.suggest_mapping(sample.columns, sample=sample).get("screening_date").date_format


def _dated_mapping(**date) -> mp.Mapping:
    m = mp.Mapping()
    m.set("patient_id", "Subject")
    m.set("screening_date", "Visit", **date)
    m.set("age_years", "Age")
    return m


def test_day_first_export_is_read_day_first_throughout():
    """05/09/2022 is 5 September like 14/09/2022 is 14 September: never 9 May (issue 13)."""
    frame, truth = _site_export()
    visits = frame["Visit"].str.split("/", expand=True).astype(int)
    misread = int(((visits[0] <= 12) & (visits[0] != visits[1])).sum())
    assert misread > 100  # the values a per-value guess read month first
    guessed = pd.to_datetime(frame["Visit"], format="mixed", dayfirst=False).dt.strftime("%Y-%m-%d")
    assert int((guessed != pd.Series(truth)).sum()) == misread  # the bug this guards against
    assert _suggested_format(frame) == "%d/%m/%Y"  # proven: some days above 12
    out = mp.apply_mapping(frame, _dated_mapping())  # no date_format: the values prove day first
    assert out["screening_date"].tolist() == truth
    assert mp.apply_mapping(frame, _dated_mapping(date_format="%d/%m/%Y"))["screening_date"].tolist() == truth
    two = pd.DataFrame({"Subject": ["A", "B"], "Visit": ["05/09/2022", "14/09/2022"], "Age": ["60", "61"]})
    assert mp.apply_mapping(two, _dated_mapping())["screening_date"].tolist() == ["2022-09-05", "2022-09-14"]
    inf = date_formats.infer(two["Visit"])
    assert (inf.status, inf.format) == ("proven", "%d/%m/%Y")
    assert "1 date(s) have a first number above 12 (e.g. '14/09/2022' in row 2)" in inf.why
    assert mapped.preview(frame, _dated_mapping()).ok


def test_ambiguous_date_column_is_refused_naming_the_column_and_date_format():
    frame = pd.DataFrame({"Subject": ["A", "B", "C"], "Visit": ["05/09/2022", "01/10/2022", "12/12/2022"],
                          "Age": ["60", "61", "62"]})
    message = (r"mapping: screening_date \(file column 'Visit'\): every date reads as dd/mm/yyyy \(day first\) or "
               r"mm/dd/yyyy \(month first\) \(e\.g\. '05/09/2022' in row 1 is 5 Sep 2022 or 9 May 2022\); dates are "
               r"never guessed, give its date_format: '%d/%m/%Y' for dd/mm/yyyy \(day first\) or '%m/%d/%Y' for "
               r"mm/dd/yyyy \(month first\)")
    with pytest.raises(date_formats.DateFormatError, match=message):
        mp.apply_mapping(frame, _dated_mapping())
    with pytest.raises(ValueError, match=message):
        mapped.preview(frame, _dated_mapping())
    assert _suggested_format(frame) is None  # asked
    # the analyst's format decides, both ways
    assert mp.apply_mapping(frame, _dated_mapping(date_format="%d/%m/%Y"))["screening_date"].tolist() == [
        "2022-09-05", "2022-10-01", "2022-12-12"]
    assert mp.apply_mapping(frame, _dated_mapping(date_format="%m/%d/%Y"))["screening_date"].tolist() == [
        "2022-05-09", "2022-01-10", "2022-12-12"]
    # 2-digit years: 14/09/22 is 14 Sep 2022 or 22 Sep 2014
    inf = date_formats.infer(pd.Series(["14/09/22", "05/09/22"]))
    assert inf.status == "ambiguous" and inf.candidates == ("%d/%m/%y", "%y/%m/%d")


@pytest.mark.parametrize(("visits", "code", "iso"), [
    (["2022-09-05", "2023-01-02", ""], "%Y-%m-%d", ["2022-09-05", "2023-01-02", None]),
    (["2022-09-05 00:00:00", "2023-01-02 00:00:00"], "%Y-%m-%d %H:%M:%S", ["2022-09-05", "2023-01-02"]),  # Excel
    (["2022-09-05T14:30:00", "2023-01-02T08:00:00"], "%Y-%m-%dT%H:%M:%S", ["2022-09-05", "2023-01-02"]),
    (["20220905", "20230102"], "%Y%m%d", ["2022-09-05", "2023-01-02"]),
    (["05-SEP-2022", "02-Jan-2023"], "%d-%b-%Y", ["2022-09-05", "2023-01-02"]),
    (["09/14/2022", "01/02/2023"], "%m/%d/%Y", ["2022-09-14", "2023-01-02"]),  # month first, proven
])
def test_proven_formats_pass_without_date_format(visits, code, iso):
    frame = pd.DataFrame({"Subject": [f"P{i}" for i in range(len(visits))], "Visit": visits,
                          "Age": ["60"] * len(visits)})
    inf = date_formats.infer(frame["Visit"])
    assert (inf.status, inf.format) == ("proven", code)
    assert mp.apply_mapping(frame, _dated_mapping())["screening_date"].tolist() == iso
    assert _suggested_format(frame) == code


def test_contradictory_date_column_is_refused_and_a_given_format_reports_the_other_cells():
    frame = pd.DataFrame({"Subject": ["A", "B", "C"], "Visit": ["13/01/2022", "01/13/2022", ""],
                          "Age": ["60", "61", "62"]})
    with pytest.raises(date_formats.DateFormatError,
                       match=r"screening_date \(file column 'Visit'\): it mixes date formats: '13/01/2022' in row 1 "
                             r"reads as dd/mm/yyyy \(day first\), '01/13/2022' in row 2 only as mm/dd/yyyy \(month "
                             r"first\); one column takes one format.*give its date_format"):
        mp.apply_mapping(frame, _dated_mapping())
    # one format given: the cell it does not read is a bad cell (row, column, value, fix), never NULL
    with pytest.raises(CohortError) as err:
        mp.apply_mapping(frame, _dated_mapping(date_format="%d/%m/%Y"))
    (p,) = err.value.problems
    assert (p.column, p.row, p.patient_id, p.value, p.count) == ("screening_date", 2, "B", "01/13/2022", 1)
    assert p.message == ("is not a date in the format dd/mm/yyyy (day first) (%d/%m/%Y) of file column 'Visit'; "
                         "correct the cell (empty if unknown), or give the format the file uses (date_format)")
    preview = mapped.preview(frame, _dated_mapping(date_format="%d/%m/%Y"))
    assert not preview.ok and [q.row for q in preview.problems] == [2] and preview.total_problems == 1
    assert preview.frame["screening_date"].tolist() == ["2022-01-13", None, None]
    # ISO and day-first values in one column are mixed too
    with pytest.raises(date_formats.DateFormatError, match="mixes date formats"):
        mp.apply_mapping(frame.assign(Visit=["2022-09-05", "14/09/2022", ""]), _dated_mapping())


def test_unreadable_values_are_bad_cells_and_unreadable_columns_are_asked():
    frame = pd.DataFrame({"Subject": ["A", "B", "C"], "Visit": ["14/09/2022", "n.k.", "31/02/2022"],
                          "Age": ["60", "61", "62"]})
    inf = date_formats.infer(frame["Visit"])  # n.k. and 31 February read in no format: they prove nothing
    assert (inf.status, inf.format, inf.unreadable) == ("proven", "%d/%m/%Y", (("n.k.", 2), ("31/02/2022", 3)))
    with pytest.raises(CohortError) as err:
        mp.apply_mapping(frame, _dated_mapping())
    assert [(p.row, p.value, p.count) for p in err.value.problems] == [(2, "n.k.", 2), (3, "31/02/2022", 2)]
    assert err.value.total == 2
    words = frame.assign(Visit=["soon", "n.k.", ""])
    with pytest.raises(date_formats.DateFormatError,
                       match=r"no common date format reads its values \(e\.g\. 'soon' in row 1\); give its "
                             r"date_format \(a strptime format such as '%d/%m/%Y'\)"):
        mp.apply_mapping(words, _dated_mapping())


def test_date_transforms_and_index_column_take_one_format_each():
    frame = pd.DataFrame({"Subject": ["A", "B"], "Visit": ["2024-03-10", "2024-03-20"],
                          "Transfused": ["05/03/2024", "01/02/2024"], "Born": ["05/09/1960", "01/02/1970"]})
    m = mp.Mapping()
    m.set("patient_id", "Subject")
    m.set("screening_date", "Visit")
    m.set("days_since_transfusion", "Transfused", transform="days_since")
    with pytest.raises(date_formats.DateFormatError, match=r"days_since_transfusion \(file column 'Transfused'\)"):
        mp.apply_mapping(frame, m)
    m.get("days_since_transfusion").date_format = "%d/%m/%Y"
    assert mp.apply_mapping(frame, m)["days_since_transfusion"].tolist() == [5, 48]
    # an index column of its own, with its own format
    frame["Index"] = ["10/03/2024", "11/03/2024"]  # ambiguous alone
    m = mp.Mapping(index_column="Index")
    m.set("patient_id", "Subject")
    m.set("age_years", "Born", transform="age_from_birth_date", date_format="%d/%m/%Y")
    assert [d.key for d in date_formats.date_columns(m)] == ["age_years", "index_column"]
    with pytest.raises(date_formats.DateFormatError, match=r"index_column 'Index'.*give its index_column_format"):
        mp.apply_mapping(frame, m)
    m.index_column_format = "%d/%m/%Y"
    assert mp.apply_mapping(frame, m)["age_years"].tolist() == [63, 54]
    again = mp.Mapping.from_yaml(m.to_yaml())
    assert again == m and "index_column_format: '%d/%m/%Y'" in m.to_yaml()
    frame.loc[1, "Index"] = "2024-03-20"
    with pytest.raises(CohortError) as err:
        mp.apply_mapping(frame, m)
    assert [(p.column, p.row, p.value) for p in err.value.problems] == [("index_column", 2, "2024-03-20")]
    assert "(index_column_format)" in err.value.problems[0].message


def test_date_format_checks_and_yaml_round_trip():
    m = _dated_mapping(date_format="%d.%m.%Y")
    assert mp.Mapping.from_yaml(m.to_yaml()) == m and "date_format: '%d.%m.%Y'" in m.to_yaml()
    for bad, message in [("%m/%Y", "needs exactly one day directive"), ("%d/%m/%Y %z", "'%z' is not a supported"),
                         ("%d/%d/%Y", "needs exactly one day"), ("", "give a strptime format")]:
        with pytest.raises(ValueError, match=message):
            mp.Mapping.from_yaml(f"columns:\n  screening_date: {{source: V, date_format: '{bad}'}}\n")
    with pytest.raises(ValueError, match="'hemoglobin_g_l' is not a date; date_format applies to screening_date"):
        mp.Mapping.from_yaml("columns:\n  hemoglobin_g_l: {source: Hb, date_format: '%d/%m/%Y'}\n")
    with pytest.raises(ValueError, match="index_column_format needs index_column"):
        mp.Mapping.from_yaml("index_column_format: '%d/%m/%Y'\ncolumns:\n  patient_id: P\n")
    # a custom strptime format is used as written
    frame = pd.DataFrame({"Subject": ["A"], "Visit": ["2022 | 5 | 9"], "Age": ["60"]})
    assert mp.apply_mapping(frame, _dated_mapping(date_format="%Y | %d | %m"))["screening_date"].tolist() == [
        "2022-09-05"]


def test_typed_dates_need_no_format():
    frame = pd.DataFrame({"Subject": ["A", "B", "C"], "Visit": pd.to_datetime(["2022-09-05", None, "2023-01-02"]),
                          "Age": ["60", "61", "62"]})
    assert date_formats.infer(frame["Visit"]).status == "typed"
    assert mp.apply_mapping(frame, _dated_mapping())["screening_date"].tolist() == ["2022-09-05", None, "2023-01-02"]
    objects = frame.assign(Visit=[dt.date(2022, 9, 5), None, dt.datetime(2023, 1, 2, 10, 0)])
    assert mp.apply_mapping(objects, _dated_mapping())["screening_date"].tolist() == ["2022-09-05", None, "2023-01-02"]
    report = date_formats.date_report(frame, _dated_mapping()).iloc[0]
    assert (report["how"], report["earliest"], report["latest"], report["dates"]) == (
        "typed", pd.Timestamp("2022-09-05"), pd.Timestamp("2023-01-02"), 2)


_DATES = st.lists(st.dates(min_value=dt.date(1970, 1, 1), max_value=dt.date(2068, 12, 31)), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(days=_DATES, code=st.sampled_from(date_formats.CATALOGUE))
def test_inferred_formats_never_misread_a_date(days, code):
    """Whatever the values, a proven format reads every date as written; otherwise the writer's format is
    among those asked about (never a wrong date without asking)."""
    texts = pd.Series([d.strftime(code) for d in days], dtype=object)
    inf = date_formats.infer(texts)
    if inf.status == "proven":
        dates, bad = date_formats.read(texts, inf.format)
        assert not bad.any() and [d.date() for d in dates] == days
    else:
        assert inf.status == "ambiguous" and code in inf.candidates
        mixed = {date_formats.order(c) for c in inf.candidates}
        assert len(mixed) > 1  # asked only when the values truly read in two orders
    assert date_formats.read(texts, code)[0].dt.date.tolist() == days  # the writer's format reads them back
