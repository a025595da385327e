"""Protocol knowledge lives in criteria files only (issue 14, item 3).

- no criterion ID of KN026-001 appears in the Python of the package or the app;
- criteria files are picked by name or path, uploaded ones go through the analyst allow-list;
- every command runs on a second, different, small protocol (tests/fixtures/protocols/mini.yaml:
  other IDs, stages 1 and 3, its own measures, examples and target) and its output is that
  protocol's.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kn026.cli import options
from kn026.cli.main import build_parser, main
from kn026.core import protocol_files as pf
from kn026.core.criteria import DEFAULT_PROTOCOL, CriteriaError, Enrollment, load_protocol

ROOT = Path(__file__).resolve().parents[1]
MINI = Path(__file__).parent / "fixtures" / "protocols" / "mini.yaml"
CLI_COHORT = Path(__file__).parent / "fixtures" / "cli_cohort.csv"
CRITERION_ID = re.compile(r"\b(INCL|EXCL)\d")


def _python_files() -> list[Path]:
    files = [p for p in (ROOT / "kn026").rglob("*.py") if "protocols" not in p.relative_to(ROOT / "kn026").parts]
    files += list((ROOT / "pages").rglob("*.py")) + list((ROOT / "ui").rglob("*.py"))
    files.append(ROOT / "app.py")
    return files


def test_no_criterion_id_in_python_outside_protocol_files():
    files = _python_files()
    assert len(files) > 30 and ROOT / "kn026" / "core" / "criteria.py" in files
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if CRITERION_ID.search(line)]
    assert not found, "criterion IDs belong in kn026/protocols/*.yaml:\n" + "\n".join(found)


def test_the_scan_would_see_an_id():
    assert CRITERION_ID.search('EXAMPLES = (("fails only", "EXCL09"),)')
    assert not CRITERION_ID.search("INCLUDE = EXCLUDED_1")


# -- picking a file ------------------------------------------------------------------------------


def test_shipped_files_with_their_titles():
    shipped = pf.shipped()
    assert shipped[0].name == "kn026_001" and shipped[0].protocol == "KN026-001"
    assert shipped[0].title.startswith("KN026 with chemotherapy") and shipped[0].path == DEFAULT_PROTOCOL


def test_resolve_by_name_path_or_default(tmp_path):
    assert pf.resolve(None) == DEFAULT_PROTOCOL and pf.resolve("kn026_001") == DEFAULT_PROTOCOL
    assert pf.resolve(str(MINI)) == MINI
    with pytest.raises(CriteriaError, match=r"--protocol nope: no such file.*\(kn026_001\)"):
        pf.resolve("nope")
    assert pf.load(MINI).name == "MINI-01"


def test_stage_is_checked_against_the_protocols_stages():
    mini = pf.load(MINI)
    assert mini.check_stage("3") == 3
    with pytest.raises(CriteriaError, match=re.escape("--stage 2: MINI-01 has stage(s) 1 (Part A (dose finding)), "
                                                      "3 (Part C (expansion))")):
        mini.check_stage(2)


# -- an uploaded file -----------------------------------------------------------------------------


def test_the_shipped_and_the_mini_files_pass_the_upload_checks():
    for path in (DEFAULT_PROTOCOL, MINI):
        p = pf.from_upload(path.read_bytes(), path.name)
        assert p == dataclasses.replace(pf.load(path), source=f"upload:{path.name}")
        assert pf.untrusted_rules(p) == frozenset(p.rule_ids())
    assert pf.untrusted_rules(pf.load(MINI)) == frozenset()


def _mini_doc() -> dict:
    return yaml.safe_load(MINI.read_text(encoding="utf-8"))


def _set(doc, path, value):
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


@pytest.mark.parametrize("path, value, message", [
    (("criteria", 0, "rules", 0, "sql"), "age_years >= (SELECT 18)", "mini.yaml, rule ADULT1:"),
    (("criteria", 0, "rules", 0, "sql"), "read_csv('/etc/passwd') IS NULL", "mini.yaml, rule ADULT1:"),
    (("criteria", 1, "rules", 1, "sql", 3), "platelets_1e9_l >= CAST(:min_part_c AS INT)",
     "mini.yaml, rule LABS2.PLT (stage 3): casts"),
    (("derived", "qtcf", "sql"), "qtcf_ms + getenv('HOME')", "mini.yaml, derived qtcf:"),
    (("derived", "qtcf", "sql"), "qtcf_ms::INT", "mini.yaml, derived qtcf: casts (CAST(...) or ::TYPE) are not "
                                                 "allowed (position 7)"),
    (("measures", 0, "expression"), "age_years -- comment", "mini.yaml, measure age:"),
    (("categories", 0, "groups", 0, "when"), "ecog IN (SELECT 1)", "mini.yaml, categories of PS3, group ECOG 0-1:"),
    (("examples", "replace", "sql"), "ecog <= 1; DROP TABLE cohort", "mini.yaml, examples.replace PS3:"),
])
def test_uploaded_sql_goes_through_the_analyst_allow_list(path, value, message):
    data = yaml.safe_dump(_set(_mini_doc(), path, value), allow_unicode=True).encode()
    with pytest.raises(CriteriaError) as err:
        pf.from_upload(data, "mini.yaml")
    assert str(err.value).startswith(message), str(err.value)


def test_uploaded_file_refusals_name_the_problem():
    with pytest.raises(CriteriaError, match="mini.yaml is not a criteria file: it must start with `format"):
        pf.from_upload(b"protocol: X\ncriteria: []\n", "mini.yaml")
    with pytest.raises(CriteriaError, match="not UTF-8"):
        pf.from_upload(b"\xff\xfe\x00", "mini.yaml")
    with pytest.raises(CriteriaError, match="too large"):
        pf.from_upload(b"#" * (pf.MAX_UPLOAD_BYTES + 1), "mini.yaml")
    doc = _mini_doc()
    doc["version"] = 99
    with pytest.raises(CriteriaError, match="format version 99 is not one this program reads"):
        pf.from_upload(yaml.safe_dump(doc).encode(), "mini.yaml")


# -- every command on the second protocol -------------------------------------------------------


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mini") / "cohort.parquet"
    assert main(["synth", "--n", "400", "--seed", "3", "--sites", "4", "--out", str(path)]) == 0
    return path


def test_every_command_runs_on_the_mini_protocol(cohort, tmp_path, capsys):
    ran = set()
    frame = pd.read_parquet(cohort)
    ran.add("synth")  # the fixture

    # screen: one column per criterion / sub-rule of MINI-01 at stage 3 (BRAIN4 is Part C only)
    log = tmp_path / "log.csv"
    code, _, err = _run(capsys, "screen", "--cohort", cohort, "--protocol", MINI, "--stage", 3, "--out", log)
    assert code == 0, err
    ran.add("screen")
    with log.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["patient_id", "ADULT1", "LABS2", "LABS2.ANC", "LABS2.PLT", "PS3", "BRAIN4", "QTC5",
                             "eligible"]
    ages = dict(zip(frame["patient_id"], frame["age_years"], strict=True))
    for row in rows:  # age >= 40 (not KN026-001's 18)
        age = ages[row["patient_id"]]
        assert row["ADULT1"] == ("unknown" if pd.isna(age) else "pass" if age >= 40 else "fail")
    assert any(row["ADULT1"] == "fail" for row in rows)
    code, _, err = _run(capsys, "screen", "--cohort", cohort, "--protocol", MINI, "--stage", 2, "--out", log)
    assert code == 2 and "--stage 2: MINI-01 has stage(s) 1 (Part A (dose finding)), 3 (Part C (expansion))" in err

    # funnel: stage 1 has no BRAIN4; the totals are the cohort's
    code, out, err = _run(capsys, "funnel", "--cohort", cohort, "--protocol", MINI, "--stage", 1, "--json")
    assert code == 0, err
    ran.add("funnel")
    doc = json.loads(out)
    assert doc["protocol"] == "MINI-01" and doc["stage"] == 1 and doc["totals"]["screened"] == len(frame)
    assert [c["criterion"] for c in doc["criteria"]] == ["ADULT1", "LABS2", "PS3", "QTC5"]
    eligible3 = sum(row["eligible"] == "yes" for row in rows)
    code, out, _ = _run(capsys, "funnel", "--cohort", cohort, "--protocol", MINI, "--stage", 3, "--json")
    assert json.loads(out)["totals"]["strict"] == eligible3

    # sql: the stage's own thresholds (Part C platelets 100, not Part A's 75)
    code, out, err = _run(capsys, "sql", "--protocol", MINI, "--stage", 3, "--dialect", "postgres")
    assert code == 0, err
    ran.add("sql")
    assert "MINI-01" in out and re.search(r"platelets_1e9_l\"? >= 100\b", out) and ">= 75" not in out

    # histogram per site, merged: the same funnel as the whole cohort
    files = []
    for site in sorted(frame["site_id"].dropna().unique())[:2]:
        part = tmp_path / f"{site}.csv"
        frame[frame["site_id"] == site].to_csv(part, index=False)
        files.append(tmp_path / f"{site}.json")
        code, _, err = _run(capsys, "histogram", "--cohort", part, "--protocol", MINI, "--stage", 3,
                            "--site", site, "--out", files[-1])
        assert code == 0, err
    ran.add("histogram")
    code, out, err = _run(capsys, "merge", *files, "--json")
    assert code == 0, err
    ran.add("merge")
    merged = json.loads(out)
    assert merged["protocol"] == "MINI-01" and merged["stage"] == 3
    assert merged["totals"]["screened"] == int(frame["site_id"].isin([f.stem for f in files]).sum())

    # forecast: the file's target (40, Part C), a share of it, or the user's own figure
    code, out, err = _run(capsys, "forecast", "--cohort", cohort, "--protocol", MINI, "--stage", 3,
                          "--n-sims", 200)
    assert code == 0, err
    ran.add("forecast")
    assert "target: 40 patients (Part C expansion, MINI-01 made-up figure)" in out
    code, out, _ = _run(capsys, "forecast", "--cohort", cohort, "--protocol", MINI, "--stage", 3,
                        "--n-sims", 200, "--share", 50, "--json")
    doc = json.loads(out)
    assert doc["target"] == 20 and doc["target_source"] == "20 patients (50 % of 40, Part C expansion, MINI-01 made-up figure)"
    code, _, err = _run(capsys, "forecast", "--cohort", cohort, "--protocol", MINI, "--stage", 3,
                        "--share", 50, "--target", 10)
    assert code == 2 and "not both" in err

    # report: titled with the protocol, its criteria, its target
    out_html = tmp_path / "r.html"
    code, _, err = _run(capsys, "report", "--cohort", cohort, "--protocol", MINI, "--stage", 3, "--out", out_html)
    assert code == 0, err
    ran.add("report")
    html = out_html.read_text(encoding="utf-8")
    assert "MINI-01" in html and "QTC5" in html and "Target 40 patients (Part C expansion" in html

    # import: an SDTM study with the mini protocol's (default) windows
    out_csv = tmp_path / "imported.csv"
    code, _, err = _run(capsys, "import", "--sdtm", ROOT / "tests" / "fixtures" / "sdtm" / "study_csv",
                        "--protocol", MINI, "--out", out_csv)
    ran.add("import")
    assert code == 0, err
    assert out_csv.exists()

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = set(sub.choices)
    assert ran == commands, f"not run on the mini protocol: {sorted(commands - ran)}"


def test_forecast_says_which_figure_it_uses_for_kn026(capsys):
    code, out, err = _run(capsys, "forecast", "--cohort", CLI_COHORT, "--stage", 1, "--n-sims", 200,
                          "--sites", 3, "--mean-rate", 5)
    assert code == 0, err
    assert "target: 286 patients (whole study, KN026-001 estimated enrollment)" in out
    assert load_protocol().enrollment.target == 286


def test_target_for_the_file_a_share_or_the_users_figure():
    ns, mini = argparse.Namespace, pf.load(MINI)
    assert options.target_for(ns(target=None, share=None), mini) == (40, "40 patients (Part C expansion, MINI-01 made-up figure)")
    assert options.target_for(ns(target=None, share=25.0), mini)[0] == 10
    assert options.target_for(ns(target=7, share=None), mini) == (7, "7 patients (given with --target)")
    with pytest.raises(ValueError, match="--share must be a percentage above 0"):
        options.target_for(ns(target=None, share=0.0), mini)
    bare = dataclasses.replace(mini, enrollment=Enrollment())
    with pytest.raises(ValueError, match="MINI-01's criteria file declares no enrolment target"):
        options.target_for(ns(target=None, share=None), bare)
    assert options.target_for(ns(target=None, share=None), bare, required=False) == (None, "")
