"""The command line (kn026/cli.py): `screen` and `funnel`, and how it fails.

Most tests call `kn026.cli.main(argv)` in-process; two run `python -m kn026` for real.
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

from kn026.cli import main
from kn026.criteria import load_protocol

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
    assert "INCL05" not in [s["criterion"] for s in doc["funnel"]]
    code, out, _ = run(["funnel", "--cohort", cohort, "--stage", 1], capsys)
    assert code == 0 and "INCL05: n/a (missing column(s) ecog)" in out


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


@pytest.mark.parametrize("argv", [
    ["funnel", "--cohort", FIXTURE, "--stage", 3],
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
    from kn026.cohort import connect, load_cohort

    code, out, err = run(["sql", "--stage", 1, "--dialect", "duckdb", "--no-header"], capsys)
    assert code == 0, err
    con = load_cohort(FIXTURE, connect()).con  # the site's own database, in dictionary types
    rows = con.execute(out.rstrip().rstrip(";")).fetchall()
    (tmp_path / "rows.csv").write_text("f,u,n\n" + "\n".join(",".join(map(str, r)) for r in rows))
    code, _, err = run(["histogram", "--rows", tmp_path / "rows.csv", "--stage", 1, "--site", "A",
                        "--out", tmp_path / "a.json"], capsys)  # the header of rows version 1
    assert code == 2 and "older kn026 (rows version 1)" in err and "f0, u0, n" in err and "Traceback" not in err
    (tmp_path / "rows.csv").write_text("f0,u0,n\n" + "\n".join(",".join(map(str, r)) for r in rows))
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
