"""The portable screening SQL run for real on PostgreSQL, against the DuckDB engine.

One throwaway server for the session (tests/pg_support.py: initdb as the postgres user,
Unix socket in a temporary folder, no TCP). Two levels:

* every PostgreSQL rewrite of :mod:`kn026.scale.pgsql` gives DuckDB's value, row by row, on
  ties, zeros, negatives, NULL, NaN and infinities;
* the command line as a site would use it: ``sql --dialect postgres`` -> psql ->
  CSV with a header -> ``histogram --rows`` -> ``merge --json``, compared with
  ``funnel --json`` (DuckDB engine) on the same cohort file: all columns, absent
  columns, a scenario with custom and rewritten rules, and ``--by-site``.

The cohort is ``python -m kn026 synth`` plus hand-made rows on exact limits (INR 1.8
with ULN 1.2, bilirubin 31.5 with ULN 21, clearance exactly 30), zero divisors and
halves for ROUND. Nothing here names the mask columns of the query's result: the CSV
goes to ``histogram --rows`` as psql wrote it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
from pathlib import Path

import duckdb
import pytest
import sqlglot

from kn026.cli import main as cli
from kn026.scale import portable

N_PATIENTS = 3000
SITES = 2


def run_cli(argv: list[str]) -> str:
    """`python -m kn026 ...` in this process (the same entry point); stdout, or a failure with stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    assert code == 0, f"python -m kn026 {' '.join(map(str, argv))} exited {code}:\n{err.getvalue()}"
    return out.getvalue()


def same(got, want, where: str = "") -> None:
    """Equal JSON documents; floats (percentages, Shapley values) to 1e-9 relative."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got} != {want}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


# --------------------------------------------------------------------------- one value at a time

VALUES = ["NULL", "0", "1", "-1", "0.5", "-0.5", "2.5", "-2.5", "44.5", "0.49999999999999994", "2.675",
          "-2.675", "1.005", "1.15", "7.05", "-7.05", "0.125", "32", "125", "8", "1e-5", "123456.785",
          "709.782712893384", "709.7827128933841", "-745.1332191019411", "-745.1332191019412", "1000",
          "-1000", "4503599627370497", "1e20", "'NaN'", "'Infinity'", "'-Infinity'", "'-0'"]
SECOND = ["NULL", "0.5", "-1", "2", "3", "0", "-0.5", "1.0/3"]
EXPRESSIONS = [
    "ROUND(x)", "ROUND(x, 0)", "ROUND(x, 1)", "ROUND(x, 2)", "ROUND(x, -1)", "ROUND(x, -2)", "ROUND(x * 3, 1)",
    "ROUND(x / 4, 1) >= 7.1", "ROUND(2.675, 2)", "ROUND(-2.675, 2)", "ROUND(5, -1)",
    "LN(x)", "LOG(x)", "LOG10(x)", "LOG2(x)", "LOG(2, x)", "LOG(x, 8)", "LOG(y, x)",
    "SQRT(x)", "POWER(x, y)", "POW(x, 2)", "x ** y", "EXP(x)", "EXP(x) > y",
    "SQRT(LN(x))", "ROUND(LN(ABS(x) + 1), 3)", "LN(x) * 2 < y", "x / y", "GREATEST(x, y)",
]
OVERFLOW = {("1e20", "3")}  # POWER beyond the double range stays an error in PostgreSQL (kn026.scale.pgsql)


def _float(value):
    """A PostgreSQL text value or a DuckDB value as float / bool / None."""
    if value is None or value == "":
        return None
    if value in ("t", "f"):
        return value == "t"
    if isinstance(value, bool):
        return value
    return float(value)


def _agree(got, want) -> bool:
    got, want = _float(got), _float(want)
    if got is None or want is None or isinstance(want, bool):
        return got == want
    return (math.isnan(got) and math.isnan(want)) or got == want


def _load_pairs(postgres, pairs: list[tuple[str, str]]) -> duckdb.DuckDBPyConnection:
    """The same (x, y) doubles as table `v` in PostgreSQL and in a DuckDB connection."""
    rows = ", ".join(f"({i}, CAST({a} AS DOUBLE PRECISION), CAST({b} AS DOUBLE PRECISION))"
                     for i, (a, b) in enumerate(pairs))
    postgres("-c", f"DROP TABLE IF EXISTS v; CREATE TABLE v AS SELECT * FROM (VALUES {rows}) AS t(i, x, y)")
    con = duckdb.connect()
    con.execute(f"CREATE TABLE v AS SELECT * FROM (VALUES {rows.replace('DOUBLE PRECISION', 'DOUBLE')}) "
                "AS t(i, x, y)")
    return con


def _transpile(text: str, dialect: str) -> str:
    """DuckDB SQL made portable and written in `dialect`, as the screening query does it."""
    return portable.to_dialect(portable.make_portable(sqlglot.parse_one(text, read="duckdb")), dialect)


def _compare(postgres, con, pairs, expressions) -> list[str]:
    problems = []
    for text in expressions:
        want = [r[0] for r in con.execute(f"SELECT {_transpile(text, 'duckdb')} FROM v ORDER BY i"
                                          ).fetchall()]
        got = postgres("-c", f"SELECT {_transpile(text, 'postgres')} FROM v ORDER BY i").split("\n")
        for (a, b), g, w in zip(pairs, got, want, strict=False):
            if not _agree(g, w):
                problems.append(f"{text} with x={a}, y={b}: PostgreSQL {g!r}, DuckDB {w!r}")
    return problems


def test_postgres_rewrites_give_duckdb_values(postgres):
    """ROUND (half away, with digits), logarithms with a base, and NaN/infinity where
    PostgreSQL would raise: each rewrite of kn026.scale.pgsql, value by value."""
    pairs = [(a, b) for a in VALUES for b in SECOND if (a, b) not in OVERFLOW]
    con = _load_pairs(postgres, pairs)
    assert _compare(postgres, con, pairs, EXPRESSIONS) == []


def test_postgres_round_with_digits_matches_duckdb_on_random_doubles(postgres):
    """DuckDB rounds a double's exact binary value: ROUND(7.05, 1) is 7.0, ROUND(0.125, 2) 0.13."""
    rng = random.Random(26)
    xs = []
    for _ in range(1500):
        d = rng.randint(0, 6)
        half = (rng.randint(-10**7, 10**7) + 0.5) / 10**d  # nearest double to a decimal half
        xs.append(repr(half if rng.random() < 0.6 else rng.uniform(-1000, 1000)))
    pairs = [(x, "0") for x in xs]
    con = _load_pairs(postgres, pairs)
    exprs = [f"ROUND(x, {d})" for d in range(-3, 7)]
    assert _compare(postgres, con, pairs, exprs) == []


def test_postgres_nested_functions_stay_small(postgres):
    """Rewrites repeat small arguments and compute big ones once: eight nested ROUND(LN(...), 3)
    give a short query (copying every argument inline would make 25**8 copies of x) with
    DuckDB's values, and PostgreSQL plans it without flattening it back."""
    text = "x"
    for _ in range(8):
        text = f"ROUND(LN(ABS({text}) + 2), 3) + SQRT(EXP(y))"
    sql = _transpile(text, "postgres")
    assert len(sql) < 100_000
    pairs = [(a, b) for a in ("NULL", "0", "-7.05", "1e5") for b in ("0", "-1", "2")]
    con = _load_pairs(postgres, pairs)
    assert _compare(postgres, con, pairs, [text]) == []


# --------------------------------------------------------------------------- the command line

def _edge_rows(base: dict) -> list[dict]:
    """Patients on exact limits, with zero divisors for the custom rules and halves for ROUND."""
    eligible = dict(base, age_years="60", sex="M", weight_kg="70", prior_systemic_lines="1", ecog="1",
                    inr="1.0", inr_uln="1.2", bilirubin_total_umol_l="10", bilirubin_total_uln_umol_l="21",
                    creatinine_umol_l="70", creatinine_clearance_ml_min="", hemoglobin_g_l="120",
                    platelets_1e9_l="250", albumin_g_l="40", lvef_drop_on_anti_her2_pct="0",
                    measurable_lesions="1", nonmeasurable_lesions="0")
    changes = [
        {"inr": "1.8", "inr_uln": "1.2"},  # exactly 1.5 x ULN: passes
        {"inr": "1.8", "inr_uln": ""},  # the default ULN 1.2
        {"inr": "1.81", "inr_uln": "1.2"},
        {"bilirubin_total_umol_l": "31.5", "bilirubin_total_uln_umol_l": "21"},
        {"bilirubin_total_umol_l": "31.5", "bilirubin_total_uln_umol_l": ""},
        {"bilirubin_total_umol_l": "31.6", "bilirubin_total_uln_umol_l": "21"},
        {"age_years": "68", "weight_kg": "30", "creatinine_umol_l": "88.4", "sex": "M"},  # clearance 30
        {"platelets_1e9_l": "200"},  # zero divisor: platelets_1e9_l - 200 (custom rule)
        {"measurable_lesions": "0", "nonmeasurable_lesions": "3"},  # zero divisor (custom rule)
        {"hemoglobin_g_l": "89"},  # ROUND(89 / 2) = 45 (half away; 44 half to even)
        {"lvef_drop_on_anti_her2_pct": "-5"},  # ROUND(-2.5) = -3; SQRT of a negative: NaN
        {"albumin_g_l": "28.2"},  # ROUND(28.2 / 4, 1) = ROUND(7.04999..., 1) = 7.0
        {"inr": "1.15"},  # ROUND(1.15, 1) = 1.1 (1.149999...)
        {"inr": "1.25"},  # ROUND(1.25, 1) = 1.3 (an exact half)
        {"prior_systemic_lines": "0"},  # LN(0) = -Infinity
        {"weight_kg": "32"},  # LOG2(32) = 5 exactly
        {"ecog": "0", "site_id": ""},  # no site
        {"site_id": ""},
    ]
    return [dict(eligible, **change, patient_id=f"EDGE{i:03d}") for i, change in enumerate(changes)]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """`python -m kn026 synth` with the edge patients appended (CSV, as a site would export it)."""
    folder = tmp_path_factory.mktemp("pg_cohort")
    synth = folder / "synth.csv"
    run_cli(["synth", "--n", N_PATIENTS, "--seed", 26, "--sites", SITES, "--out", synth])
    with synth.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        names, rows = reader.fieldnames, list(reader)
    assert any(v == "" for r in rows for v in r.values())  # NULLs in the synthetic cohort
    path = folder / "cohort.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows + _edge_rows(rows[0]))
    return path


ABSENT = ["pt_s", "inr_uln", "qtcf_ms", "creatinine_clearance_ml_min", "consent_signed", "lvef_pct",
          "days_since_transfusion", "heart_rate_bpm", "her2_ish"]


@pytest.fixture(scope="module")
def partial(cohort) -> Path:
    """The cohort without several dictionary columns (ULNs, overrides, inputs of whole rules)."""
    with cohort.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        names = [n for n in reader.fieldnames if n not in ABSENT]
        rows = [{n: r[n] for n in names} for r in reader]
    path = cohort.with_name("partial.csv")
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


SCENARIO = """\
scenario: PostgreSQL check
protocol: KN026-001
parameters:
  INCL01: {min_age: 21}
  EXCL03.WASHOUT: {washout_min_days: 30, washout_max_days: 21}
  RATIO: {max_ratio: 1500}
disabled: [INCL12]
replace:
  INCL07.CRCL: >-
    (crcl_if_female >= 50 OR crcl_if_male >= 50) AND (sex <> 'F' OR crcl_if_female >= 50)
    AND (sex <> 'M' OR crcl_if_male >= 50)
custom:
  - id: HALVES
    kind: inclusion
    text: halves round away from zero
    sql: ROUND(hemoglobin_g_l / 2) >= 45 AND ROUND(lvef_drop_on_anti_her2_pct / 2) >= -2
  - id: RATIO
    kind: exclusion
    text: ratios with zero divisors
    sql: hemoglobin_g_l * 100 / (platelets_1e9_l - 200) > $max_ratio OR nonmeasurable_lesions / measurable_lesions > 2
    params: {max_ratio: {default: 2000, unit: ratio}}
  - id: ROUNDED
    kind: inclusion
    text: rounded to one decimal
    sql: ROUND(albumin_g_l / 4, 1) >= 7.1 AND ROUND(inr, 1) <= 1.2
  - id: LOGS
    kind: inclusion
    text: logarithms, roots, powers
    sql: >-
      LOG2(weight_kg) >= 5 AND LOG10(weight_kg) < 2 AND (LN(prior_systemic_lines) < 0.5 OR
      SQRT(lvef_drop_on_anti_her2_pct) < 2) AND POWER(ecog, 0.5) <= 1.2 AND EXP(ecog) < 8
"""


@pytest.fixture(scope="module")
def loaded(postgres, cohort, partial) -> dict[Path, tuple[str, list[str]]]:
    """Both cohort files as PostgreSQL tables with dictionary types; file -> (table, columns)."""
    return {cohort: ("site_cohort", postgres.load_csv("site_cohort", cohort)),
            partial: ("site_cohort_partial", postgres.load_csv("site_cohort_partial", partial))}


def postgres_rows(postgres, loaded, path: Path, stage: int, folder: Path, extra=(), by_site=False) -> Path:
    """`sql --dialect postgres` run by psql: the result CSV with its header."""
    table, columns = loaded[path]
    argv = ["sql", "--stage", stage, "--dialect", "postgres", "--table", table, *extra]
    if path.name != "cohort.csv":
        argv += ["--columns", ",".join(columns)]
    if by_site:
        argv.append("--by-site")
    query = folder / f"query_{table}_{stage}{'_site' if by_site else ''}.sql"
    query.write_text(run_cli(argv), encoding="utf-8")
    return postgres.query_to_csv(query, query.with_suffix(".csv"))


def site_file(rows: Path, path: Path, stage: int, site: str, out: Path, loaded, extra=()) -> Path:
    argv = ["histogram", "--rows", rows, "--stage", stage, "--site", site, "--out", out, *extra]
    if path.name != "cohort.csv":
        argv += ["--columns", ",".join(loaded[path][1])]
    run_cli(argv)
    return out


_FUNNELS: dict = {}


def duckdb_funnel(path: Path, stage: int, extra=()) -> dict:
    key = (path, stage, tuple(map(str, extra)))
    if key not in _FUNNELS:
        _FUNNELS[key] = json.loads(run_cli(["funnel", "--cohort", path, "--stage", stage, "--json", *extra]))
    return _FUNNELS[key]


def check_network(merged: dict, funnel: dict) -> None:
    for key in ("totals", "not_assessable", "disabled", "funnel", "criteria"):
        same(merged[key], funnel[key], key)


def postgres_funnel(postgres, loaded, path, stage, folder, extra=()) -> dict:
    rows = postgres_rows(postgres, loaded, path, stage, folder, extra)
    with rows.open(encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert not any(name.lstrip("-").isdigit() for name in header)  # psql wrote the header
    site = site_file(rows, path, stage, "PostgreSQL", folder / f"{rows.stem}.json", loaded, extra)
    return json.loads(run_cli(["merge", site, "--json"]))


@pytest.mark.parametrize("stage", [1, 2])
def test_cli_postgres_funnel_equals_duckdb_engine(postgres, loaded, cohort, stage, tmp_path):
    merged = postgres_funnel(postgres, loaded, cohort, stage, tmp_path)
    funnel = duckdb_funnel(cohort, stage)
    check_network(merged, funnel)
    assert merged["totals"]["screened"] == N_PATIENTS + len(_edge_rows({}))


@pytest.mark.parametrize("stage", [1, 2])
def test_cli_postgres_with_absent_columns(postgres, loaded, partial, stage, tmp_path):
    merged = postgres_funnel(postgres, loaded, partial, stage, tmp_path)
    funnel = duckdb_funnel(partial, stage)
    check_network(merged, funnel)
    assert funnel["not_assessable"]  # some rules are n/a without these columns


@pytest.mark.parametrize("stage", [1, 2])
def test_cli_postgres_scenario_with_custom_rules(postgres, loaded, cohort, stage, tmp_path):
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    extra = ["--scenario", scenario]
    merged = postgres_funnel(postgres, loaded, cohort, stage, tmp_path, extra)
    funnel = duckdb_funnel(cohort, stage, extra)
    check_network(merged, funnel)
    assert {"HALVES", "RATIO", "ROUNDED", "LOGS"} <= {c["criterion"] for c in funnel["criteria"]}
    assert funnel["disabled"] == ["INCL12"]


def test_cli_postgres_by_site(postgres, loaded, cohort, tmp_path):
    """The --by-site result split into one histogram file per site, merged: the same network
    funnel and per-site table as each site screening its own part of the cohort file."""
    stage = 1
    rows = postgres_rows(postgres, loaded, cohort, stage, tmp_path, by_site=True)
    with rows.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        per_site: dict[str, list[dict]] = {}
        for row in reader:
            per_site.setdefault(row.pop("site_id"), []).append(row)
        names = [n for n in reader.fieldnames if n != "site_id"]
    with cohort.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        patients: dict[str, list[dict]] = {}
        for row in reader:
            patients.setdefault(row["site_id"] or portable.NO_SITE, []).append(row)
        columns = reader.fieldnames
    assert sorted(per_site) == sorted(patients) and portable.NO_SITE in per_site and len(per_site) == SITES + 1
    from_postgres, from_duckdb = [], []
    for i, site in enumerate(sorted(per_site)):
        part = tmp_path / f"rows_{i}.csv"
        with part.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, names, lineterminator="\n")
            writer.writeheader()
            writer.writerows(per_site[site])
        from_postgres.append(site_file(part, cohort, stage, site, tmp_path / f"pg_{i}.json", loaded))
        own = tmp_path / f"cohort_{i}.csv"
        with own.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(patients[site])
        run_cli(["histogram", "--cohort", own, "--stage", stage, "--site", site, "--out", tmp_path / f"dd_{i}.json"])
        from_duckdb.append(tmp_path / f"dd_{i}.json")
    merged = json.loads(run_cli(["merge", *from_postgres, "--json"]))
    expected = json.loads(run_cli(["merge", *from_duckdb, "--json"]))
    for key in ("totals", "sites", "not_assessable", "partially_assessable", "funnel", "criteria"):
        same(merged[key], expected[key], key)
    check_network(merged, duckdb_funnel(cohort, stage))
