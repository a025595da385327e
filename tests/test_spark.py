"""Spark runs the emitted Spark SQL and returns the engine's histogram (needs pyspark + Java).

Spark starts slowly (15-50 s on two cores), so one session serves the whole module
and each test runs few queries on small cohorts.
"""

from __future__ import annotations

import random
import shutil
from decimal import Decimal

import pytest

pytest.importorskip("pyspark", reason="PySpark is optional: pip install -r requirements-spark.txt")
if shutil.which("java") is None:  # pragma: no cover - Java is on the machine image
    pytest.skip("Spark needs Java 17+", allow_module_level=True)

from kn026.base.table import connect
from kn026.cli import engines
from kn026.core import analysis
from kn026.core.criteria import load_protocol
from kn026.core.engine import Engine
from kn026.core.scenario import Scenario
from kn026.ingest import synth
from kn026.ingest.cohort import load_cohort
from kn026.scale import spark as kspark
from tests import cohorts
from tests.cohorts import as_counter

PROTOCOL = load_protocol()
WASHOUT = Scenario("washout", overrides={"EXCL03.WASHOUT": {"washout_min_days": Decimal(30),
                                                    "washout_max_days": Decimal(21)},
                                         "INCL07.CRCL": {"min": Decimal(50)}})
MIXED = Scenario("mixed", overrides={"INCL07.COAG": {"max_x_uln": Decimal("1.25")},
                                     "EXCL11.QTCF": {"max_male": Decimal(440)}})


@pytest.fixture(scope="module")
def spark():
    session = kspark.spark_session("local[2]", driver_memory="2g")
    yield session
    session.stop()


def random_cohort(n: int, seed: int, absent=()) -> list[dict]:
    """Rows drawn from the boundary values (and NULLs) of tests/cohorts.py, like cohorts.rows()."""
    rng = random.Random(seed)
    return [{c: rng.choice(v) for c, v in cohorts.VALUES.items() if c not in absent} for _ in range(n)]


def to_parquet(tmp_path, name: str, rows: list[dict], absent=()):
    """Load through the DuckDB loader (dictionary types) and write Parquet; return (path, engine cohort)."""
    csv_path = tmp_path / f"{name}.csv"
    csv_path.write_text(cohorts.to_csv(rows, set(absent)))
    cohort = load_cohort(csv_path, connect())
    path = tmp_path / f"{name}.parquet"
    cohort.con.execute(f"COPY cohort TO '{path}' (FORMAT parquet)")
    return path, cohort


@pytest.fixture(scope="module")
def random_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spark")
    full = to_parquet(tmp, "full", random_cohort(3000, seed=1))
    # dictionary v2: COAG is n/a only without both INR and PT, WASHOUT without the last-therapy date
    absent = ("pt_s", "inr", "inr_uln", "days_since_anticancer_therapy", "last_anticancer_half_life_days",
              "heart_rate_bpm")
    part = to_parquet(tmp, "part", random_cohort(1500, seed=2, absent=absent), absent)
    return full, part


@pytest.mark.parametrize("stage,scenario,by_site", [
    (1, Scenario(), True),
    (1, WASHOUT, False),
    (2, MIXED, False),
])
def test_spark_equals_duckdb_on_random_cohort_with_nulls(spark, random_files, stage, scenario, by_site):
    (path, cohort), _ = random_files
    got = kspark.spark_histogram(path, PROTOCOL, stage, scenario, by_site=by_site, spark=spark)
    want = Engine(cohort, PROTOCOL, stage).histogram(scenario.overrides, by_site=by_site)
    assert got.total == 3000
    assert as_counter(got) == as_counter(want)


def test_spark_equals_duckdb_with_absent_columns(spark, random_files):
    _, (path, cohort) = random_files
    sp = kspark.spark_engine(path, PROTOCOL, 1, spark=spark)
    engine = Engine(cohort, PROTOCOL, 1)
    assert sp.not_assessable == engine.not_assessable
    assert set(sp.not_assessable) >= {"INCL07.COAG", "EXCL03.WASHOUT"}
    assert as_counter(sp.histogram(WASHOUT.overrides)) == as_counter(engine.histogram(WASHOUT.overrides))


def test_spark_engine_drives_the_analysis(spark, tmp_path):
    path = synth.write(tmp_path / "synthetic.parquet", 4000, seed=9, sites=6)
    sp = kspark.spark_engine(path, PROTOCOL, 1, spark=spark)
    engine = Engine(load_cohort(path, connect()), PROTOCOL, 1)
    a, b = analysis.run(engine, MIXED), analysis.run(sp, MIXED)
    assert a.totals == b.totals
    assert a.funnel.equals(b.funnel)
    assert a.stats.equals(b.stats)
    assert analysis.by_site(engine, MIXED).equals(analysis.by_site(sp, MIXED))


def test_64_analyst_criteria_on_spark_equal_duckdb(spark, random_files):
    """Two mask words (67 + 64 = 131 leaves): Spark's histogram and funnel equal the engine's."""
    (path, cohort), _ = random_files
    wide = Scenario("wide", overrides={"CUST64": {"limit": 1}}, custom=tuple(cohorts.analyst_rules(64)))
    sp = analysis.engine_for(kspark.spark_engine(path, PROTOCOL, 1, spark=spark), wide)
    engine = analysis.engine_for(Engine(cohort, PROTOCOL, 1), wide)
    assert len(sp.rules) == 131
    got = sp.histogram(wide.overrides, by_site=True)
    want = engine.histogram(wide.overrides, by_site=True)
    assert max(f | u for f, u, *_ in want.records()).bit_length() > 64
    assert as_counter(got) == as_counter(want)
    a, b = analysis.run(engine, wide), analysis.run(sp, wide)
    assert len(a.plan.ids) > 64 and a.funnel.equals(b.funnel) and a.stats.equals(b.stats)


def test_engine_option_helpers():
    import argparse

    parser = argparse.ArgumentParser()
    engines.add_cli_engine_option(parser)
    args = parser.parse_args(["--engine", "spark"])
    assert args.engine == "spark" and args.spark_master == "local[*]"
    args.cohort, args.stage = "cohort.csv", 1
    with pytest.raises(ValueError, match="Parquet"):
        engines.engine_from_args(args, PROTOCOL)
    args.engine = "duckdb"
    assert engines.engine_from_args(args, PROTOCOL) is None


def test_unreadable_path_is_a_clear_error(spark, tmp_path):
    with pytest.raises(ValueError, match="cannot read .* as Parquet"):
        kspark.spark_engine(tmp_path / "missing.parquet", PROTOCOL, 1, spark=spark)


def test_funnel_command_on_spark_equals_duckdb_with_analyst_rules(spark, tmp_path, capsys):
    """`python -m kn026 funnel --engine spark` gives DuckDB's JSON, custom criteria included."""
    import json

    from kn026.cli.main import main

    path = synth.write(tmp_path / "c.parquet", 3000, seed=4, sites=5)
    scen = tmp_path / "analyst.yaml"
    scen.write_text(
        "scenario: analyst\n"
        "custom:\n"
        "  - {id: AGECAP, kind: inclusion, text: at most $max_age, sql: age_years <= $max_age,\n"
        "     params: {max_age: {default: 70}}}\n"
        "replace:\n"
        "  INCL05: ecog IN (0, 1) OR ecog IS NULL AND age_years < 40\n")
    docs = []
    for engine in ("duckdb", "spark"):
        argv = ["funnel", "--json", "--cohort", str(path), "--stage", "1", "--scenario", str(scen),
                "--engine", engine, "--spark-master", "local[2]"]
        assert main(argv) == 0
        docs.append(json.loads(capsys.readouterr().out))
    duck, spk = docs
    assert duck["criteria"][-1]["criterion"] == "AGECAP"
    assert duck["totals"] == spk["totals"] and duck["funnel"] == spk["funnel"]
    assert duck["criteria"] == spk["criteria"]
