"""The command line (kn026/cli/main.py): `screen` and `funnel`, and how it fails.

Most tests call `kn026.cli.main.main(argv)` in-process; two run `python -m kn026` for real.
Every user error must exit with status 2 and a short message naming the problem and
the fix, with no traceback.

Fixture `tests/fixtures/cli_cohort.csv` (every dictionary column, plus `note`):
P01 eligible; P02 two prior lines (stage 1 yes, stage 2 no); P03 measured CrCl 40
(eligible, but not with CrCl >= 50); P04 HCV status NULL (unknown); P05 ECOG 2 (no).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kn026.cli.main import main
from kn026.core.criteria import load_protocol

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "cli_cohort.csv"
CRCL50 = ROOT / "data" / "scenario_crcl50.yaml"
PROTOCOL = load_protocol()
VERDICTS = {"pass", "fail", "unknown", "n/a"}

# Column order of the screening log: each criterion, followed by its sub-rules.
LOG_COLUMNS = ["patient_id"]
for _c in PROTOCOL.criteria:
    LOG_COLUMNS.append(_c.id)
    if len(_c.rules) > 1:
        LOG_COLUMNS += [r.id for r in _c.rules]
LOG_COLUMNS.append("eligible")


def run(argv, capsys):
    """main(argv) -> (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def read_log(path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == LOG_COLUMNS
        return {row["patient_id"]: row for row in reader}


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_cohort(path, drop=(), change=None, extra_rows=()):
    """A copy of the fixture without columns `drop`, with {(patient, column): value} changed."""
    with FIXTURE.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for (pid, col), value in (change or {}).items():
        next(r for r in rows if r["patient_id"] == pid)[col] = value
    rows += [dict(rows[0], **r) for r in extra_rows]
    header = [c for c in rows[0] if c not in drop]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


# -- screen ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage, eligible", [
    (1, {"P01": "yes", "P02": "yes", "P03": "yes", "P04": "unknown", "P05": "no"}),
    (2, {"P01": "yes", "P02": "no", "P03": "yes", "P04": "unknown", "P05": "no"}),
])
def test_screen_writes_one_row_per_patient(tmp_path, capsys, stage, eligible):
    out = tmp_path / "log.csv"
    code, stdout, stderr = run(["screen", "--cohort", FIXTURE, "--stage", stage, "--out", out], capsys)
    assert code == 0, stderr
    log = read_log(out)
    assert {pid: row["eligible"] for pid, row in log.items()} == eligible
    for row in log.values():
        assert {row[c] for c in LOG_COLUMNS[1:-1]} <= VERDICTS
        assert row["eligible"] in {"yes", "no", "unknown"}
    counts = {v: list(eligible.values()).count(v) for v in ("yes", "unknown", "no")}
    assert (f"5 patients screened for stage {stage}: {counts['yes']} eligible, "
            f"{counts['unknown']} unknown, {counts['no']} not eligible") in stderr


def test_screen_verdict_details(tmp_path, capsys):
    out = tmp_path / "log.csv"
    assert run(["screen", "--cohort", FIXTURE, "--stage", 2, "--out", out], capsys)[0] == 0
    log = read_log(out)
    assert log["P02"]["INCL03"] == "fail"
    assert (log["P04"]["EXCL17"], log["P04"]["EXCL17.HCV"], log["P04"]["EXCL17.HBV"]) == \
        ("unknown", "unknown", "pass")
    assert log["P05"]["INCL05"] == "fail"
    assert all(v == "pass" for k, v in log["P01"].items() if k not in ("patient_id", "eligible"))


def test_screen_with_scenario(tmp_path, capsys):
    out = tmp_path / "log.csv"
    code, _, stderr = run(["screen", "--cohort", FIXTURE, "--stage", 1, "--out", out,
                           "--scenario", CRCL50], capsys)
    assert code == 0, stderr
    log = read_log(out)
    assert (log["P03"]["INCL07.CRCL"], log["P03"]["INCL07"], log["P03"]["eligible"]) == ("fail", "fail", "no")
    assert log["P01"]["eligible"] == "yes"


def test_screen_absent_columns_are_na(tmp_path, capsys):
    cohort = write_cohort(tmp_path / "c.csv", drop=("ecog", "hcv_active", "hbv_active", "hiv_positive",
                                                    "syphilis_positive"))
    out = tmp_path / "log.csv"
    assert run(["screen", "--cohort", cohort, "--stage", 1, "--out", out], capsys)[0] == 0
    log = read_log(out)
    for row in log.values():
        assert row["INCL05"] == "n/a"
        assert row["EXCL17"] == row["EXCL17.HCV"] == row["EXCL17.SYPHILIS"] == "n/a"
    # n/a criteria are ignored: P05 (ECOG 2) and P04 (HCV NULL) become eligible
    assert {pid: r["eligible"] for pid, r in log.items()} == {p: "yes" for p in log}


def test_screen_partly_assessable_criterion(tmp_path, capsys):
    cohort = write_cohort(tmp_path / "c.csv", drop=("hcv_active",))
    out = tmp_path / "log.csv"
    assert run(["screen", "--cohort", cohort, "--stage", 1, "--out", out], capsys)[0] == 0
    row = read_log(out)["P04"]
    assert (row["EXCL17"], row["EXCL17.HCV"], row["EXCL17.HBV"], row["eligible"]) == ("pass", "n/a", "pass", "yes")


def test_screen_overwrites_only_the_output(tmp_path, capsys):
    cohort = write_cohort(tmp_path / "c.csv")
    before = sha256(cohort)
    out = tmp_path / "log.csv"
    out.write_text("old")
    assert run(["screen", "--cohort", cohort, "--stage", 1, "--out", out], capsys)[0] == 0
    assert sha256(cohort) == before
    assert out.read_text().startswith("patient_id,INCL01,")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv", "log.csv"]


# -- funnel -------------------------------------------------------------------------------------------
def test_funnel_text(capsys):
    code, out, err = run(["funnel", "--cohort", FIXTURE, "--stage", 2], capsys)
    assert code == 0 and err == ""
    assert out.splitlines()[0] == ("KN026-001 stage 2, scenario 'Protocol': 5 screened, 2 eligible (strict), "
                                   "3 eligible (optimistic), 1 unknown")
    for token in ("Screened", "INCL03", "EXCL22", "lost_strict", "shapley_strict"):
        assert token in out


def funnel_json(argv, capsys):
    code, out, err = run(["funnel", "--json", *argv], capsys)
    assert code == 0, err
    return json.loads(out)


def test_funnel_json(capsys):
    doc = funnel_json(["--cohort", FIXTURE, "--stage", 1], capsys)
    assert {"totals", "funnel", "criteria"} <= set(doc)
    assert doc["totals"] == {"screened": 5, "strict": 3, "optimistic": 4, "unknown": 1,
                             "excluded_strict": 2, "excluded_optimistic": 1}
    assert [s["criterion"] for s in doc["funnel"]] == ["Screened"] + [c.id for c in PROTOCOL.criteria]
    assert doc["funnel"][-1]["strict"] == 3 and doc["funnel"][-1]["optimistic"] == 4
    by_id = {c["criterion"]: c for c in doc["criteria"]}
    assert set(by_id) == {c.id for c in PROTOCOL.criteria}
    assert (by_id["INCL05"]["failed"], by_id["EXCL17"]["unknown"]) == (1, 1)
    assert doc["not_assessable"] == {} and doc["disabled"] == [] and doc["changes"] == []


def test_funnel_json_with_scenario(capsys):
    doc = funnel_json(["--cohort", FIXTURE, "--stage", 1, "--scenario", CRCL50], capsys)
    assert doc["changes"] == ["INCL07.CRCL min: 30 -> 50 mL/min"]
    assert doc["scenario"].startswith("Creatinine clearance >= 50")
    assert doc["totals"]["strict"] == 2 and doc["totals"]["optimistic"] == 3


def test_funnel_order(capsys):
    doc = funnel_json(["--cohort", FIXTURE, "--stage", 1, "--order", "EXCL17, INCL05"], capsys)
    assert [s["criterion"] for s in doc["funnel"][:4]] == ["Screened", "EXCL17", "INCL05", "INCL01"]
    assert doc["funnel"][1]["strict"] == 4 and doc["funnel"][2]["strict"] == 3


def test_funnel_disable(capsys):
    doc = funnel_json(["--cohort", FIXTURE, "--stage", 1, "--disable", "EXCL17,INCL05"], capsys)
    assert doc["disabled"] == ["INCL05", "EXCL17"]
    assert doc["totals"]["strict"] == 5
    assert "EXCL17" not in [s["criterion"] for s in doc["funnel"]]


def test_funnel_disable_sub_rule(capsys):
    doc = funnel_json(["--cohort", FIXTURE, "--stage", 1, "--disable", "EXCL17.HCV"], capsys)
    assert doc["totals"]["strict"] == 4 and "EXCL17" in [s["criterion"] for s in doc["funnel"]]


def test_funnel_not_assessable(tmp_path, capsys):
    cohort = write_cohort(tmp_path / "c.csv", drop=("ecog",))
    doc = funnel_json(["--cohort", cohort, "--stage", 1], capsys)
    assert doc["not_assessable"] == {"INCL05": ["ecog"]}
    assert doc["not_assessable_criteria"] == {"INCL05": ["ecog"]}
    assert doc["warnings"] == []  # one rule of 67 n/a: enough can be assessed
    assert "INCL05" not in [s["criterion"] for s in doc["funnel"]]
    code, out, _ = run(["funnel", "--cohort", cohort, "--stage", 1], capsys)
    assert code == 0 and "INCL05: n/a, left out (missing ecog)" in out


# -- errors ------------------------------------------------------------------------------------------
def _bad_value(tmp_path):
    return write_cohort(tmp_path / "c.csv", change={("P03", "ecog"): "7"})


def _dup_id(tmp_path):
    return write_cohort(tmp_path / "c.csv", change={("P03", "patient_id"): "P01"})


def _dup_header(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("patient_id,ECOG,ecog\nP1,1,1\n")
    return path


def _unsupported(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{}")
    return path


def _scenario(text):
    def make(tmp_path):
        path = tmp_path / "s.yaml"
        path.write_text(text, encoding="utf-8")
        return path
    return make


ERRORS = [
    # (name, argv maker, fragments expected on stderr)
    ("missing cohort file", lambda t: ["funnel", "--cohort", t / "nope.csv", "--stage", 1],
     ["nope.csv does not exist", "check the path"]),
    ("unsupported cohort type", lambda t: ["funnel", "--cohort", _unsupported(t), "--stage", 1],
     ["unsupported file type '.json'", "use CSV, Parquet or Excel"]),
    ("bad column value", lambda t: ["funnel", "--cohort", _bad_value(t), "--stage", 1],
     ["ecog: row 3 (patient_id P03) value '7'", "expected a whole number >= 0 and <= 5"]),
    ("bad column value (screen)", lambda t: ["screen", "--cohort", _bad_value(t), "--stage", 1, "--out", t / "o.csv"],
     ["ecog: row 3 (patient_id P03) value '7'"]),
    ("duplicate patient_id", lambda t: ["funnel", "--cohort", _dup_id(t), "--stage", 1],
     ["patient_id P01", "is duplicated (rows 1, 3)", "must be unique"]),
    ("duplicate header", lambda t: ["funnel", "--cohort", _dup_header(t), "--stage", 1],
     ["ecog: appears twice in the header", "keep one column"]),
    ("unknown --disable ID", lambda t: ["funnel", "--cohort", FIXTURE, "--stage", 1, "--disable", "EXCL23"],
     ["--disable: unknown criterion ID 'EXCL23'", "known: INCL01"]),
    ("unknown --order ID", lambda t: ["funnel", "--cohort", FIXTURE, "--stage", 1, "--order", "INCL01,INCL99"],
     ["unknown criterion ID(s) INCL99", "known: INCL01"]),
    ("sub-rule in --order", lambda t: ["funnel", "--cohort", FIXTURE, "--stage", 1, "--order", "INCL07.ANC"],
     ["unknown criterion ID(s) INCL07.ANC"]),
    ("repeated --order ID", lambda t: ["funnel", "--cohort", FIXTURE, "--stage", 1, "--order", "INCL05,INCL01,INCL05"],
     ["--order lists INCL05 more than once"]),
    ("scenario value out of range", lambda t: ["funnel", "--cohort", FIXTURE, "--stage", 1, "--scenario",
                                               _scenario("parameters:\n  INCL07.CRCL:\n    min: 500\n")(t)],
     ["INCL07.CRCL.min = 500 is outside the allowed range 0..150 mL/min"]),
    ("scenario unknown rule", lambda t: ["screen", "--cohort", FIXTURE, "--stage", 1, "--out", t / "o.csv",
                                         "--scenario", _scenario("parameters:\n  INCL77:\n    min: 5\n")(t)],
     ["unknown rule ID 'INCL77'"]),
    ("scenario unknown key", lambda t: ["funnel", "--cohort", FIXTURE, "--stage", 1, "--scenario",
                                        _scenario("scenario: x\nthresholds: {}\n")(t)],
     ["s.yaml: unknown key(s) ['thresholds']"]),
    ("scenario for another protocol", lambda t: ["funnel", "--cohort", FIXTURE, "--stage", 1, "--scenario",
                                                 _scenario("protocol: OTHER\n")(t)],
     ["s.yaml is for protocol 'OTHER', not 'KN026-001'"]),
    ("scenario not YAML", lambda t: ["funnel", "--cohort", FIXTURE, "--stage", 1, "--scenario",
                                     _scenario("parameters: [\n")(t)],
     ["s.yaml is not valid YAML"]),
    ("scenario file missing", lambda t: ["funnel", "--cohort", FIXTURE, "--stage", 1, "--scenario", t / "none.yaml"],
     ["cannot read scenario file", "none.yaml"]),
    ("protocol file missing", lambda t: ["funnel", "--cohort", FIXTURE, "--stage", 1, "--protocol", t / "p.yaml"],
     ["cannot read protocol file"]),
    ("--out not CSV", lambda t: ["screen", "--cohort", FIXTURE, "--stage", 1, "--out", t / "log.txt"],
     ["must end in .csv"]),
    ("--out in a missing directory", lambda t: ["screen", "--cohort", FIXTURE, "--stage", 1, "--out",
                                                t / "no" / "log.csv"],
     ["non-existent directory"]),
    ("--out is the cohort", lambda t: ["screen", "--cohort", write_cohort(t / "c.csv"), "--stage", 1,
                                       "--out", t / "c.csv"],
     ["is the cohort file itself", "choose another path"]),
]


@pytest.mark.parametrize("make_argv, fragments", [(a, f) for _, a, f in ERRORS], ids=[n for n, _, _ in ERRORS])
def test_user_errors_exit_2_without_traceback(tmp_path, capsys, make_argv, fragments):
    code, out, err = run(make_argv(tmp_path), capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ")
    assert "Traceback" not in err and 'File "' not in err
    for fragment in fragments:
        assert fragment in err
    assert len(err) < 2000
    if (tmp_path / "c.csv").exists():  # the input is never touched, even on failure
        assert "patient_id" in (tmp_path / "c.csv").read_text().splitlines()[0]


def test_a_stage_the_protocol_lacks_exits_2_naming_its_stages(capsys):
    code, _, err = run(["funnel", "--cohort", FIXTURE, "--stage", 3], capsys)
    assert code == 2 and "Traceback" not in err
    assert "--stage 3: KN026-001 has stage(s) 1 (Stage 1 (open-label)), 2 (Stage 2 (randomised))" in err


@pytest.mark.parametrize("argv", [
    ["funnel", "--cohort", FIXTURE],
    ["screen", "--cohort", FIXTURE, "--stage", 1],  # no --out
    ["bogus"],
    [],
])
def test_usage_errors_exit_2(capsys, argv):
    code, _, err = run(argv, capsys)
    assert code == 2 and "usage:" in err and "Traceback" not in err


def test_cohort_error_lists_every_problem(tmp_path, capsys):
    cohort = write_cohort(tmp_path / "c.csv", change={("P01", "sex"): "unknown", ("P02", "her2_ihc"): "4",
                                                       ("P03", "screening_date"): "2024-13-01"})
    code, _, err = run(["funnel", "--cohort", cohort, "--stage", 1], capsys)
    assert code == 2
    assert err.splitlines()[0] == "error: the cohort could not be loaded (3 problem(s)):"
    assert "sex: row 1 (patient_id P01) value 'unknown'" in err
    assert "her2_ihc: row 2 (patient_id P02) value '4'" in err
    assert "screening_date: row 3 (patient_id P03) value '2024-13-01'" in err


# -- real processes ---------------------------------------------------------------------------------
def _python_m(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "kn026", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_subprocess_funnel_json_and_screen(tmp_path):
    before = sha256(FIXTURE)
    proc = _python_m(["funnel", "--cohort", FIXTURE, "--stage", 1, "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["totals"]["screened"] == 5 and doc["funnel"] and doc["criteria"]
    out = tmp_path / "log.csv"
    proc = _python_m(["screen", "--cohort", FIXTURE, "--stage", 2, "--out", out, "--scenario", CRCL50], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_log(out)["P03"]["eligible"] == "no"
    assert sha256(FIXTURE) == before


def test_subprocess_error_has_no_traceback(tmp_path):
    bad = _bad_value(tmp_path)
    proc = _python_m(["screen", "--cohort", bad, "--stage", 1, "--out", tmp_path / "o.csv"], tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert "ecog: row 3 (patient_id P03) value '7'" in proc.stderr
    assert not (tmp_path / "o.csv").exists()


ANALYST_YAML = """\
scenario: Analyst rules
custom:
  - id: ONELINE
    kind: inclusion
    text: At most $max_lines prior line at site S01
    sql: site_id = 'S01' AND prior_systemic_lines <= $max_lines
    params:
      max_lines: {default: 1}
replace:
  INCL07.CRCL: "(crcl_if_female >= 50 OR crcl_if_male >= 50) AND (sex <> 'F' OR crcl_if_female >= 50) AND (sex <> 'M' OR crcl_if_male >= 50)"
"""


def test_funnel_keeps_the_scenarios_custom_rules(tmp_path, capsys):
    """P02 (two lines) fails the custom rule, P03 (CrCl 40) the rewritten one; --disable knows custom IDs."""
    scen = tmp_path / "analyst.yaml"
    scen.write_text(ANALYST_YAML)
    doc = funnel_json(["--cohort", FIXTURE, "--stage", 1, "--scenario", scen], capsys)
    assert doc["totals"]["strict"] == 1 and doc["totals"]["optimistic"] == 2
    assert doc["funnel"][-1]["criterion"] == "ONELINE"
    doc = funnel_json(["--cohort", FIXTURE, "--stage", 1, "--scenario", scen, "--disable", "ONELINE"], capsys)
    assert doc["totals"]["strict"] == 2 and doc["disabled"] == ["ONELINE"]


def test_sql_histogram_and_merge_commands(tmp_path, capsys):
    """`sql`, `histogram` and `merge` are subcommands of `python -m kn026`."""
    from kn026.base.table import connect
    from kn026.ingest.cohort import load_cohort

    code, out, err = run(["sql", "--stage", 1, "--dialect", "duckdb", "--no-header"], capsys)
    assert code == 0, err
    con = load_cohort(FIXTURE, connect()).con  # the site's own database, in dictionary types
    rows = con.execute(out.rstrip().rstrip(";")).fetchall()
    (tmp_path / "rows.csv").write_text("f,u,n\n" + "\n".join(",".join(map(str, r)) for r in rows))
    code, _, err = run(["histogram", "--rows", tmp_path / "rows.csv", "--stage", 1, "--site", "A",
                        "--out", tmp_path / "a.json"], capsys)  # the header of rows version 1
    assert code == 2 and "older kn026 (rows version 1)" in err and "f0, f1, u0, u1, n" in err
    assert "Traceback" not in err
    (tmp_path / "rows.csv").write_text("f0,f1,u0,u1,n\n" + "\n".join(",".join(map(str, r)) for r in rows))
    code, _, err = run(["histogram", "--rows", tmp_path / "rows.csv", "--stage", 1, "--site", "A",
                        "--out", tmp_path / "a.json"], capsys)
    assert code == 0, err
    code, _, err = run(["histogram", "--cohort", FIXTURE, "--stage", 1, "--site", "B",
                        "--out", tmp_path / "b.json"], capsys)
    assert code == 0, err
    code, out, err = run(["merge", tmp_path / "a.json", tmp_path / "b.json", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["totals"]["screened"] == 10
    assert [(s["site"], s["strict"]) for s in doc["sites"]] == [("A", 3), ("B", 3)]
    code, _, err = run(["merge", tmp_path / "a.json", tmp_path / "missing.json"], capsys)
    assert code == 2 and "missing.json" in err and "Traceback" not in err


def test_funnel_names_missing_columns_per_rule_and_warns(tmp_path, capsys):
    """Dictionary v2: sub-rules are n/a on their own, with their missing columns; a cohort that
    leaves more than a third of the rules n/a gets a warning, in JSON and in text."""
    keep = ["patient_id", "age_years", "inr", "days_since_anticancer_therapy", "sbp_mmhg"]
    path = tmp_path / "few.csv"
    path.write_text("\n".join([",".join(keep), "P1,60,3,7,180", "P2,70,1.0,,120"]) + "\n")
    doc = funnel_json(["--cohort", path, "--stage", 1], capsys)
    na = doc["not_assessable"]
    assert na["EXCL03.TCM"] == ["days_since_antitumor_tcm"] and "EXCL03.WASHOUT" not in na
    assert na["EXCL11.DBP"] == ["dbp_mmhg"] and "EXCL11.SBP" not in na and "INCL07.COAG" not in na
    assert na["INCL07.CRCL"] == ["creatinine_clearance_ml_min", "creatinine_umol_l", "weight_kg"]
    assert "EXCL03" not in doc["not_assessable_criteria"]  # the washout still screens
    assert len(na) == 67 - 4 and doc["warnings"][0].startswith("63 of 67 rules cannot be assessed")
    assert doc["totals"]["strict"] == 0  # P1: INR 3 unknown, dosed 7 days ago, SBP 180; P2: no date
    code, out, _ = run(["funnel", "--cohort", path, "--stage", 1], capsys)
    assert code == 0 and "EXCL03.TCM: n/a, left out (missing days_since_antitumor_tcm)" in out
    assert "INCL07.CRCL: n/a, left out (missing creatinine_clearance_ml_min, or creatinine_umol_l + " \
           "weight_kg)" in out
    assert "warning: 63 of 67 rules cannot be assessed" in out


# -- import --mapping: dates are never guessed (issue 13) ---------------------------------------------
SITE_EXPORT = ("Subject,Visit date,Hb (g/dL)\n"
               "S01,05/09/2022,12.1\nS02,01/10/2022,11.4\nS03,12/11/2022,13.0\n")
SITE_MAPPING = ("name: site A\ncolumns:\n  patient_id: {source: Subject}\n"
                "  screening_date: {source: Visit date%s}\n  hemoglobin_g_l: {source: Hb (g/dL), unit: g/dL}\n")


def _site(tmp_path, date_format: str = "", rows: str = SITE_EXPORT):
    (tmp_path / "export.csv").write_text(rows, encoding="utf-8")
    (tmp_path / "site.yaml").write_text(SITE_MAPPING % (f", date_format: '{date_format}'" if date_format else ""),
                                        encoding="utf-8")
    return ["import", "--mapping", tmp_path / "site.yaml", "--in", tmp_path / "export.csv",
            "--out", tmp_path / "cohort.csv"]


def test_import_mapping_refuses_an_ambiguous_date_column(tmp_path, capsys):
    """Every date reads day first and month first: refused, naming the column and date_format."""
    argv = _site(tmp_path)
    before = sha256(tmp_path / "export.csv")
    code, out, err = run(argv, capsys)
    assert code == 2 and out == "" and sha256(tmp_path / "export.csv") == before
    assert err.startswith("error: mapping: screening_date (file column 'Visit date'): every date reads as "
                          "dd/mm/yyyy (day first) or mm/dd/yyyy (month first)")
    assert "give its date_format: '%d/%m/%Y' for dd/mm/yyyy (day first) or '%m/%d/%Y' for mm/dd/yyyy" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "cohort.csv").exists()
    # a day above 12 proves day first: no date_format needed, and it is listed
    code, _, err = run(_site(tmp_path, rows=SITE_EXPORT + "S04,14/09/2022,12.0\n"), capsys)
    assert code == 0, err
    assert "dates: screening_date (file column 'Visit date') read as dd/mm/yyyy (day first) with date_format " \
           "'%d/%m/%Y', proven by its values: 1 date(s) have a first number above 12" in err
    cohort = (tmp_path / "cohort.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in cohort[1:]] == ["2022-09-05", "2022-10-01", "2022-11-12", "2022-09-14"]


def test_import_mapping_with_an_explicit_date_format(tmp_path, capsys):
    code, _, err = run(_site(tmp_path, "%m/%d/%Y"), capsys)
    assert code == 0, err
    assert ("dates: screening_date (file column 'Visit date') read as mm/dd/yyyy (month first) with date_format "
            "'%m/%d/%Y', given in the mapping; 3 dates from 2022-01-10 to 2022-12-11") in err
    rows = {line.split(",")[0]: line.split(",")[1] for line in (tmp_path / "cohort.csv").read_text().splitlines()[1:]}
    assert rows == {"S01": "2022-05-09", "S02": "2022-01-10", "S03": "2022-12-11"}
    # a value the given format does not read is a bad cell: row, column, value and fix; nothing written
    (tmp_path / "cohort.csv").unlink()
    code, _, err = run(_site(tmp_path, "%m/%d/%Y", SITE_EXPORT + "S04,14/09/2022,12.0\n"), capsys)
    assert code == 2 and err.splitlines()[0] == "error: the cohort could not be loaded (1 problem(s)):"
    assert ("screening_date: row 4 (patient_id S04) value '14/09/2022': is not a date in the format mm/dd/yyyy "
            "(month first) (%m/%d/%Y) of file column 'Visit date'") in err
    assert not (tmp_path / "cohort.csv").exists()


def test_import_mapping_date_refusal_in_a_real_process(tmp_path):
    argv = _site(tmp_path, rows="Subject,Visit date,Hb (g/dL)\nS01,13/01/2022,12.1\nS02,01/13/2022,11.4\n")
    proc = _python_m(argv, tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert ("error: mapping: screening_date (file column 'Visit date'): it mixes date formats: '13/01/2022' in row "
            "1 reads as dd/mm/yyyy (day first), '01/13/2022' in row 2 only as mm/dd/yyyy (month first)") in proc.stderr
    assert not (tmp_path / "cohort.csv").exists()


# -- import --sdtm (tests/fixtures/sdtm/README.md derives the values) ------------------------------------
SDTM = Path(__file__).parent / "fixtures" / "sdtm"


def test_import_sdtm_writes_a_loadable_cohort_and_the_report(tmp_path, capsys):
    out, report = tmp_path / "hist01.csv", tmp_path / "report.csv"
    code, _, err = run(["import", "--sdtm", SDTM / "study_xpt", "--out", out, "--report", report], capsys)
    assert code == 0, err
    assert "6 subjects (2 RFXSTDTC (first dose), 1 RFSTDTC, 1 RFICDTC (informed consent), 1 DMDTC, " \
           "1 EXSTDTC (first dose in EX))" in err
    assert "domains not found: FA" in err and "left out: 1 without a usable index date" in err
    rows = {r["patient_id"]: r for r in csv.DictReader(out.open(encoding="utf-8"))}
    assert rows["HIST01-S01"]["hemoglobin_g_l"] == "125.0" and rows["HIST01-S02"]["stale_columns"] == "ast_u_l,alt_u_l"
    assert "primary_site" not in rows["HIST01-S01"]  # not in SDTM: absent, so its rule is n/a
    table = {r["column"]: r for r in csv.DictReader(report.open(encoding="utf-8"))}
    assert table["hemoglobin_g_l"]["conversions"] == "g/dL x 10; mmol/L x 16.11"
    assert table["hemoglobin_g_l"]["n_stale"] == "1"
    subjects = list(csv.DictReader((tmp_path / "report_subjects.csv").open(encoding="utf-8")))
    assert subjects[2] == {"patient_id": "HIST01-S03", "index_date": "2024-05-10",
                           "index_source": "RFICDTC (informed consent)"}
    # the cohort screens: S02's INCL07.AST is unknown (stale), S03 fails INCL07.PLT (45)
    log = tmp_path / "log.csv"
    assert run(["screen", "--cohort", out, "--stage", 1, "--out", log], capsys)[0] == 0
    verdicts = {r["patient_id"]: r for r in csv.DictReader(log.open(encoding="utf-8"))}
    assert verdicts["HIST01-S02"]["INCL07.AST"] == "unknown" and verdicts["HIST01-S03"]["INCL07.PLT"] == "fail"
    assert verdicts["HIST01-S01"]["INCL04"] == "pass" and verdicts["HIST01-S01"]["INCL02.HER2"] == "n/a"


def test_import_sdtm_options_parquet_and_text_report(tmp_path, capsys):
    out, report = tmp_path / "c.parquet", tmp_path / "r.txt"
    code, _, err = run(["import", "--sdtm", SDTM / "study_csv", "--index-date", "screening", "--lookback-days", "10",
                        "--open-world", "--out", out, "--report", report], capsys)
    assert code == 0, err
    import pandas as pd

    frame = pd.read_parquet(out).set_index("patient_id")
    assert frame.loc["HIST01-S03", "hemoglobin_g_l"] == 120.0  # the screening retest
    text = report.read_text(encoding="utf-8")
    assert text.startswith("SDTM import from") and "10 days (override)" in text and "open world" in text


@pytest.mark.parametrize("argv, fragment", [
    (["--sdtm", SDTM / "study_csv", "--in", "x.csv"], "--in applies to --mapping"),
    (["--sdtm", SDTM / "study_csv", "--concepts", "c.yaml"], "--concepts applies to --omop"),
    (["--sdtm", SDTM / "study_csv", "--index-date", "last"], "give first-dose, screening or a date"),
    (["--sdtm", SDTM / "nope"], "does not exist"),
    (["--sdtm", SDTM / "study_csv", "--index-date", "2020-01-01", "--lookback-days", "-2"], "whole number of days"),
])
def test_import_sdtm_errors_exit_2(tmp_path, capsys, argv, fragment):
    code, out, err = run(["import", *argv, "--out", tmp_path / "o.csv"], capsys)
    assert code == 2 and out == "" and fragment in err and "Traceback" not in err
    assert not (tmp_path / "o.csv").exists()


def test_import_sdtm_unit_guard_stops_the_import(tmp_path, capsys):
    study = tmp_path / "study"
    study.mkdir()
    for p in (SDTM / "study_csv").glob("*.csv"):
        (study / p.name).write_bytes(p.read_bytes())
    with (study / "lb.csv").open("a", encoding="utf-8") as fh:  # g/dL values labelled g/L
        for n, day in ((1, "2024-03-15"), (2, "2024-04-02"), (3, "2024-05-10")):
            fh.write(f"HIST01,LB,HIST01-S0{n},30,HGB,Hemoglobin,BLOOD,12,g/L,12,12,g/L,,,SCREENING,{day}\n")
    code, _, err = run(["import", "--sdtm", study, "--out", tmp_path / "o.csv"], capsys)
    assert code == 2 and "hemoglobin_g_l" in err and "HIST01-S01" in err
    assert not (tmp_path / "o.csv").exists()
