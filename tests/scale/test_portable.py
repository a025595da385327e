"""Portable screening SQL: DuckDB output equals the engine; other dialects parse; traps are closed."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections import Counter
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
import sqlglot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlglot import exp

from kn026.base.table import connect
from kn026.cli import sql as sql_cli
from kn026.core import funnel as fm
from kn026.core.criteria import build_protocol, load_protocol
from kn026.core.custom import CustomRule
from kn026.core.engine import Engine, compile_rule
from kn026.core.scenario import Scenario
from kn026.ingest.cohort import load_cohort
from kn026.scale import portable
from tests import cohorts
from tests.cohorts import as_counter

PROTOCOL = load_protocol()
GOLDEN = sorted((Path(__file__).parents[1] / "golden").glob("*.csv"))
OTHER_DIALECTS = ("spark", "postgres", "bigquery", "snowflake", "trino")
SCENARIOS = {
    "protocol": Scenario(),
    "crcl50": Scenario("crcl50", overrides={"INCL07.CRCL": {"min": Decimal(50)}}),
    # minimum washout above the maximum: the case where GREATEST/LEAST NULL rules differ
    "washout": Scenario("washout", overrides={"EXCL03.WASHOUT": {"washout_min_days": Decimal(30),
                                                         "washout_max_days": Decimal(21)}}),
    "mixed": Scenario("mixed", overrides={"INCL07.COAG": {"max_x_uln": Decimal("1.25")},
                                          "EXCL11.QTCF": {"max_male": Decimal(440)},
                                          "INCL01": {"min_age": Decimal(65)}}),
}


_SQL: dict = {}


def portable_histogram(cohort, stage: int, scenario: Scenario, by_site: bool = False) -> fm.Histogram:
    key = (stage, scenario.name, cohort.table, by_site, cohort.present)
    if key not in _SQL:  # compiling 59 rules through sqlglot is the slow part; cache per layout
        _SQL[key] = portable.screening_sql(PROTOCOL, stage, "duckdb", scenario, table=cohort.table,
                                           by_site=by_site, present=cohort.present)
    return portable.histogram_from_rows(cohort.con.execute(_SQL[key]).fetchall(), by_site=by_site)


def check_same(cohort, stage: int, scenario: Scenario) -> None:
    engine = Engine(cohort, PROTOCOL, stage)
    assert as_counter(portable_histogram(cohort, stage, scenario)) == \
        as_counter(engine.histogram(scenario.overrides))
    if "site_id" in cohort.present:
        assert as_counter(portable_histogram(cohort, stage, scenario, by_site=True)) == \
            as_counter(engine.histogram(scenario.overrides, by_site=True))


# --------------------------------------------------------------------------- DuckDB == engine


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
@pytest.mark.parametrize("stage", [1, 2])
def test_duckdb_sql_matches_engine_on_golden_cohorts(path, stage):
    cohort = load_cohort(path, connect())
    for scenario in SCENARIOS.values():
        check_same(cohort, stage, scenario)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts.cohorts(max_size=40), st.sampled_from([1, 2]), st.sampled_from(sorted(SCENARIOS)))
def test_duckdb_sql_matches_engine_on_random_cohorts(tmp_path_factory, cohort, stage, scenario):
    patients, absent = cohort
    path = tmp_path_factory.mktemp("c") / "cohort.csv"
    path.write_text(cohorts.to_csv(patients, absent))
    check_same(load_cohort(path, connect()), stage, SCENARIOS[scenario])


def test_duckdb_sql_matches_engine_on_synthetic_cohort():
    from kn026.ingest import synth

    cohort = load_cohort(synth.generate(3000, seed=7), connect())
    for stage in (1, 2):
        for scenario in SCENARIOS.values():
            check_same(cohort, stage, scenario)


def test_query_engine_on_parquet_matches_engine(tmp_path):
    from kn026.core import analysis
    from kn026.ingest import synth

    path = tmp_path / "c.parquet"
    synth.write(path, 2000, seed=3)
    engine = Engine(load_cohort(path, connect()), PROTOCOL, 1)
    qe = portable.duckdb_engine(path, PROTOCOL, 1)
    scen = SCENARIOS["mixed"]
    assert as_counter(qe.histogram(scen.overrides, by_site=True)) == \
        as_counter(engine.histogram(scen.overrides, by_site=True))
    a, b = analysis.run(engine, scen), analysis.run(qe, scen)
    assert a.totals == b.totals
    assert a.funnel.equals(b.funnel)
    assert analysis.by_site(engine, scen).equals(analysis.by_site(qe, scen))


# --------------------------------------------------------------------------- other dialects


@pytest.mark.parametrize("dialect", OTHER_DIALECTS)
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("by_site", [False, True])
def test_emitted_sql_parses_back(dialect, stage, by_site):
    present = portable.ALL_COLUMNS - {"pt_s", "inr_uln", "last_anticancer_half_life_days"}
    for scenario in (SCENARIOS["protocol"], SCENARIOS["washout"]):
        scr = portable.screening(PROTOCOL, stage, scenario, present)
        sql = scr.sql(dialect, table="warehouse.kn026.ingest.cohort", by_site=by_site)
        tree = sqlglot.parse_one(sql, read=dialect)
        assert isinstance(tree, exp.Select)
        words = -(-len(portable.stage_rules(PROTOCOL, stage)) // portable.WORD_BITS)
        masks = [f"f{k}" for k in range(words)] + [f"u{k}" for k in range(words)]
        assert words == 2  # dictionary v2: 67 rules need two 63-bit words
        assert [s.alias_or_name for s in tree.selects] == (["site_id"] if by_site else []) + masks + ["n"]
        assert tree.sql(dialect=dialect) == sql  # stable round trip: nothing was lost in parsing
        # the header is SQL comments: header + query is still one statement
        assert isinstance(sqlglot.parse_one(scr.header(dialect) + "\n" + sql, read=dialect), exp.Select)
        assert "GREATEST_IGNORE_NULLS" not in sql.upper()
        columns = {c.this.quoted for c in tree.find_all(exp.Column) if c.name in portable.ALL_COLUMNS}
        # Snowflake: unquoted, so the usual upper-case column names match; elsewhere quoted
        assert columns == {False} if dialect == "snowflake" else True in columns


@pytest.mark.parametrize("dialect", portable.DIALECTS)
def test_every_division_is_floating_and_null_safe(dialect):
    scr = portable.screening(PROTOCOL, 1, SCENARIOS["protocol"])
    divisions = [d for p in scr.predicates.values() for d in p.find_all(exp.Div)]
    assert len(divisions) >= 8  # clearance, QTcF and the exactness rounding
    for div in divisions:
        for side in (div.this, div.expression.this if isinstance(div.expression, exp.Nullif) else div.expression):
            assert isinstance(side, exp.Cast) and side.to.is_type(exp.DataType.Type.DOUBLE), div.sql()
        lit = div.expression.this
        if not (isinstance(lit, exp.Literal) and Decimal(lit.this) != 0):
            assert isinstance(div.expression, exp.Nullif), div.sql()
    sql = scr.sql(dialect)
    tree = sqlglot.parse_one(sql, read=dialect)
    assert tree.find(exp.Div) is not None
    assert not list(tree.find_all(exp.IntDiv))


def test_decimal_literal_division_is_floating_everywhere():
    """Spark and Snowflake compute 1.0 / 3 in DECIMAL (0.333333); the emitted SQL casts to DOUBLE."""
    tree = portable.make_portable(sqlglot.parse_one("POWER(60 / heart_rate_bpm, 1.0 / 3)", read="duckdb"))
    for dialect in portable.DIALECTS:
        sql = portable.to_dialect(tree, dialect)
        assert "CAST(1.0 AS" in sql and ("CAST(3 AS" in sql), (dialect, sql)
    con = duckdb.connect()
    got = con.execute(f"SELECT {portable.to_dialect(tree, 'duckdb')} FROM (SELECT 75.0 AS heart_rate_bpm)"
                      ).fetchone()[0]
    assert got == pytest.approx((60 / 75) ** (1 / 3), rel=1e-15)


def test_zero_divisor_is_unknown_not_an_error():
    scr = portable.screening(PROTOCOL, 1)
    pred = portable.to_dialect(scr.predicates["EXCL11.QTCF"], "duckdb")
    con = duckdb.connect()
    got = con.execute(f"SELECT ({pred}) FROM (SELECT NULL::DOUBLE AS qtcf_ms, 400.0 AS qt_ms, "
                      f"0.0 AS heart_rate_bpm, 'M' AS sex)").fetchone()[0]
    assert got is None


HALF_LIVES = [None, 0.5, 1, 2.8, 3, 4, 5.6, 6, 10]


@pytest.mark.parametrize("mins,maxs,halves", [(14, 28, 5), (30, 21, 5), (0, 0, 0), (28, 14, 2)])
def test_greatest_least_null_safe_under_either_null_rule(mins, maxs, halves):
    """BigQuery, Snowflake and Trino return NULL from GREATEST/LEAST with a NULL argument.

    The emitted washout must give the engine's (DuckDB, skip-NULL) answer under that rule
    too. sqlglot writes DuckDB GREATEST without `ignore_nulls` as the NULL-propagating
    CASE, which lets DuckDB play BigQuery here.
    """
    rule = PROTOCOL.rule("EXCL03.WASHOUT")
    vals = {**rule.defaults(), "washout_min_days": Decimal(mins), "washout_max_days": Decimal(maxs),
            "washout_half_lives": Decimal(halves)}
    engine_sql = compile_rule(rule, 1, vals, portable.ALL_COLUMNS, PROTOCOL)
    portable_tree = portable.make_portable(sqlglot.parse_one(engine_sql, read="duckdb"))
    naive_tree = sqlglot.parse_one(engine_sql, read="duckdb")

    def propagating(tree):
        tree = tree.copy()
        for node in tree.find_all(exp.Greatest, exp.Least):
            node.set("ignore_nulls", None)
        return tree.sql(dialect="duckdb")

    assert "CASE WHEN" in propagating(portable_tree)  # the emulation is in force
    con = duckdb.connect()
    rows = ", ".join(f"({'NULL' if h is None else h}::DOUBLE, {d})" for h in HALF_LIVES for d in range(0, 40))
    table = f"(VALUES {rows}) AS t(last_anticancer_half_life_days, days_since_anticancer_therapy)"
    extra = "NULL::INTEGER AS days_since_antitumor_tcm, 1::INTEGER AS prior_systemic_lines"

    def run(pred):
        return con.execute(f"SELECT ({pred}) FROM (SELECT *, {extra} FROM {table})").fetchall()

    expected = run(engine_sql)
    assert run(propagating(portable_tree)) == expected
    assert run(portable.to_dialect(portable_tree, "duckdb")) == expected
    if mins > maxs:  # without the rewrite a NULL-propagating engine would disagree here
        assert run(propagating(naive_tree)) != expected


def test_postgres_and_spark_round_is_half_away_from_zero():
    x = exp.column("x")
    pg = portable.to_dialect(exp.Round(this=x), "postgres")
    assert "ROUND" not in pg.upper() and "FLOOR" in pg.upper()
    for dialect in ("bigquery", "snowflake", "trino", "duckdb"):
        assert "ROUND(" in portable.to_dialect(exp.Round(this=x), dialect).upper()
    spark = portable.to_dialect(exp.Round(this=x), "spark")
    assert "ROUND" not in spark.upper() and "%" in spark
    values = [0.0, -0.0, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999999999999994, -0.49999999999999994,
              1799999999.9999998, 30000000000.5, -12.500000001, 1e15 + 0.5, 2.0**51 + 0.5,
              2.0**52 + 1, -(2.0**52 + 1), 2.0**53 + 2, 1e300]
    con = duckdb.connect()
    # the PostgreSQL text is valid DuckDB too: compare it with DuckDB's ROUND (half away from zero)
    # and so is the Spark text (DuckDB's % on doubles is fmod, as Spark's)
    for v in values:
        got, got_spark, want = con.execute(
            f"SELECT {pg}, {spark.replace('`', '')}, round(x) FROM (SELECT {v!r}::DOUBLE AS x)").fetchone()
        assert got == want, v
        assert got_spark == want, v


def test_masks_are_bigint_words_of_63_leaves():
    scr = portable.screening(PROTOCOL, 1)
    tree = scr.tree()
    casts = [c for c in tree.find_all(exp.Cast) if c.to.is_type(exp.DataType.Type.BIGINT)]
    values = {int(c.this.this) for c in casts}
    # KN026-001 (dictionary v2): 67 leaves, two words of 63: bits 0..62 and 0..3
    assert values == {0} | {1 << (j % 63) for j in range(len(scr.leaves))}
    assert len(scr.leaves) == 67 and max(values) == 1 << 62
    assert scr.words == 2

    con = duckdb.connect()
    con.execute("CREATE TABLE cohort AS SELECT * FROM (VALUES (10.0), (NULL), (30.0)) t(age_years)")
    for n_leaves, words in ((63, 1), (64, 2), (126, 2), (127, 3)):
        doc = {"protocol": "BIG", "stages": {1: "one"},
               "criteria": [{"id": f"INCL{i:03d}", "kind": "inclusion", "text": "t",
                             "rules": [{"id": f"INCL{i:03d}", "sql": "age_years >= 18"}]}
                            for i in range(1, n_leaves + 1)]}
        big = portable.screening(build_protocol(doc), 1)
        assert big.words == words
        tree = big.tree()
        assert [s.alias_or_name for s in tree.selects] == portable.mask_columns(words) + ["n"]
        values = {int(c.this.this) for c in tree.find_all(exp.Cast) if c.to.is_type(exp.DataType.Type.BIGINT)}
        assert max(values) == 1 << min(n_leaves - 1, 62)  # never the sign bit
        h = portable.histogram_from_rows(con.execute(big.sql("duckdb")).fetchall())
        full = (1 << n_leaves) - 1
        assert as_counter(h) == Counter({(full, 0): 1, (0, full): 1, (0, 0): 1})
        assert "leaf 63 = f1/u1 bit  0 INCL064" in big.header("spark") or n_leaves < 64


def test_rows_of_other_shapes_are_refused():
    with pytest.raises(ValueError, match="f0.., u0.., n"):
        portable.histogram_from_rows([(1, 2)])
    with pytest.raises(ValueError, match="f0.., u0.., n"):
        portable.histogram_from_rows([(1, 0, 0, 2)])  # three mask words cannot pair up
    with pytest.raises(ValueError, match="0 .. 2[*][*]63 - 1"):
        portable.histogram_from_rows([(-1, 0, 2)])
    with pytest.raises(ValueError, match="expected columns"):
        import pyarrow as pa

        portable.histogram_from_arrow(pa.table({"f": [1], "u": [0], "n": [2]}))


@pytest.fixture(scope="module")
def wide_scenario():
    """64 analyst criteria beside the protocol: 59 + 64 = 123 leaves, two 63-bit words."""
    return Scenario("wide", overrides={"CUST64": {"limit": 1}, "INCL07.PLT": {"min": 75}},
                    custom=tuple(cohorts.analyst_rules(64)))


def test_64_analyst_criteria_match_the_engine(wide_scenario):
    """The DuckDB run of the emitted SQL with two mask words equals the engine's histogram."""
    import random

    from kn026.core import analysis

    rng = random.Random(9)
    patients = [{c: rng.choice(v) for c, v in cohorts.VALUES.items()} for _ in range(2000)]
    cohort = load_cohort(_csv_frame(patients), connect())
    extended = analysis.engine_for(Engine(cohort, PROTOCOL, 1), wide_scenario)
    scr = portable.screening(PROTOCOL, 1, wide_scenario, cohort.present)
    assert len(scr.leaves) == 67 + 64 and scr.words == 3 and extended.width == 3
    for by_site in (False, True):
        rows = cohort.con.execute(scr.sql("duckdb", cohort.table, by_site=by_site)).fetchall()
        got = portable.histogram_from_rows(rows, by_site=by_site)
        want = extended.histogram(wide_scenario.overrides, by_site=by_site)
        assert max(f | u for f, u, *_ in want.records()).bit_length() > 64
        assert as_counter(got) == as_counter(want)
        arrow = portable.histogram_from_arrow(cohort.con.cursor().sql(
            scr.sql("duckdb", cohort.table, by_site=by_site)).to_arrow_table(), by_site=by_site)
        assert as_counter(arrow) == as_counter(want)
    for dialect in OTHER_DIALECTS:
        tree = sqlglot.parse_one(scr.sql(dialect), read=dialect)
        assert [s.alias_or_name for s in tree.selects] == ["f0", "f1", "f2", "u0", "u1", "u2", "n"]


def _csv_frame(patients):
    import pandas as pd

    return pd.read_csv(io.StringIO(cohorts.to_csv(patients)), dtype=str, keep_default_na=False)


def test_absent_columns_make_rules_not_assessable():
    present = portable.ALL_COLUMNS - {"pt_s", "inr", "ecog", "inr_uln"}
    scr = portable.screening(PROTOCOL, 1, present=present)
    assert scr.not_assessable == {"INCL05": ["ecog"], "INCL07.COAG": ["inr", "pt_s"]}
    assert "INCL05" not in scr.predicates and "INCL07.COAG" not in scr.predicates
    assert "leaf 10 = f0/u0 bit 10 INCL05  (n/a: missing ecog)" in scr.header("trino")
    # dictionary v2: with INR present, an absent PT reads as unknown and COAG is assessable
    assert "INCL07.COAG" not in portable.screening(PROTOCOL, 1, present=present | {"inr"}).not_assessable
    # an absent optional column (ULN) reads as NULL, so the default ULN applies
    no_uln = portable.screening(PROTOCOL, 1, present=portable.ALL_COLUMNS - {"aptt_uln_s"})
    assert "INCL07.APTT" in no_uln.predicates
    assert "COALESCE(CAST(NULL AS DOUBLE), 40)" in portable.to_dialect(no_uln.predicates["INCL07.APTT"], "spark")
    with pytest.raises(ValueError, match="not dictionary column"):
        portable.screening(PROTOCOL, 1, present=["age_years", "shoe_size"])
    with pytest.raises(ValueError, match="site_id"):
        portable.screening(PROTOCOL, 1, present=["age_years"]).sql("spark", by_site=True)


def test_fingerprints_follow_the_question():
    base = portable.criteria_fingerprint(PROTOCOL, 1)
    assert base == portable.criteria_fingerprint(PROTOCOL, 1, Scenario("renamed"))
    assert base != portable.criteria_fingerprint(PROTOCOL, 2)
    assert base != portable.criteria_fingerprint(PROTOCOL, 1, SCENARIOS["crcl50"])
    same = Scenario("x", overrides={"INCL07.CRCL": {"min": Decimal(30)}})  # the default value
    assert base == portable.criteria_fingerprint(PROTOCOL, 1, same)
    assert portable.scenario_fingerprint(PROTOCOL, same) == portable.scenario_fingerprint(PROTOCOL)
    disabled = Scenario("d", disabled=frozenset({"INCL05"}))
    assert portable.scenario_fingerprint(PROTOCOL, disabled) != portable.scenario_fingerprint(PROTOCOL)


def run_cli(argv) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sql_cli.add_cli(sub)
    args = parser.parse_args(argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.func(args)
    return code, out.getvalue()


@pytest.mark.parametrize("dialect", portable.DIALECTS)
def test_cli_prints_parseable_sql(dialect, tmp_path):
    scen = tmp_path / "s.yaml"
    scen.write_text("scenario: CrCl 50\nparameters:\n  INCL07.CRCL: {min: 50}\n")
    code, text = run_cli(["sql", "--stage", "2", "--dialect", dialect, "--scenario", str(scen),
                          "--table", "proj.ds.cohort", "--by-site", "--columns",
                          ",".join(sorted(portable.ALL_COLUMNS - {"pt_s", "inr"}))])
    assert code == 0
    assert text.startswith("-- KN026-001 stage 2, scenario 'CrCl 50'")
    assert "INCL07.COAG  (n/a: missing inr, pt_s)" in text  # v2: n/a only when neither is present
    tree = sqlglot.parse_one(text.rstrip().rstrip(";"), read=dialect)
    assert [s.alias_or_name for s in tree.selects] == ["site_id", "f0", "f1", "u0", "u1", "n"]
    assert tree.find(exp.Table).name == "cohort"


def test_cli_sql_runs_on_duckdb(tmp_path):
    from kn026.ingest import synth

    path = tmp_path / "c.parquet"
    synth.write(path, 500, seed=5)
    code, text = run_cli(["sql", "--stage", "1", "--dialect", "duckdb", "--no-header"])
    assert code == 0 and not text.startswith("--")
    con = duckdb.connect()
    con.execute(f"CREATE VIEW cohort AS SELECT * FROM read_parquet('{path}')")
    h = portable.histogram_from_rows(con.execute(text).fetchall())
    engine = Engine(load_cohort(path, connect()), PROTOCOL, 1)
    assert as_counter(h) == as_counter(engine.histogram())


# --------------------------------------------------------------------------- a real PostgreSQL
# (the `postgres` fixture: tests/conftest.py and tests/pg_support.py; the command line and
# the PostgreSQL rewrites are checked in tests/scale/test_postgres.py)


def test_postgres_runs_the_emitted_sql(postgres, tmp_path):
    import random

    rng = random.Random(4)
    rows = [{c: rng.choice(v) for c, v in cohorts.VALUES.items()} for _ in range(2500)]
    path = tmp_path / "c.csv"
    path.write_text(cohorts.to_csv(rows))
    cohort = load_cohort(path, connect())
    out = tmp_path / "typed.csv"
    cohort.con.execute(f"COPY cohort TO '{out}' (HEADER, DELIMITER ',')")
    postgres.load_csv("cohort", out)
    for stage in (1, 2):
        engine = Engine(cohort, PROTOCOL, stage)
        for name in ("protocol", "washout", "mixed"):
            scen = SCENARIOS[name]
            for by_site in (False, True):
                sql = portable.screening_sql(PROTOCOL, stage, "postgres", scen, by_site=by_site,
                                             present=cohort.present)
                lines = [line.split(",") for line in postgres("-c", sql).splitlines() if line]
                if by_site:
                    lines = [[s or None, *rest] for s, *rest in lines]
                got = portable.histogram_from_rows(lines, by_site=by_site)
                want = engine.histogram(scen.overrides, by_site=by_site)
                assert as_counter(got) == as_counter(want), (stage, name, by_site)


# --------------------------------------------------------------------------- analyst-written rules

ANALYST = Scenario(
    "analyst",
    overrides={"INCL01": {"min_age": Decimal(21)}},
    custom=(CustomRule("AGECAP", "inclusion", "Aged at most $max_age years", "age_years <= $max_age",
                       {"max_age": {"default": 75, "unit": "years"}}),
            CustomRule("HBRATIO", "inclusion", "Haemoglobin over platelets",
                       "hemoglobin_g_l * 1000 / platelets_1e9_l < 1000 OR ecog IN (0, 1)")),
    replace={"INCL07.CRCL": "(crcl_if_female >= 50 OR crcl_if_male >= 50) AND (sex <> 'F' OR "
                            "crcl_if_female >= 50) AND (sex <> 'M' OR crcl_if_male >= 50)"})


def test_custom_and_rewritten_rules_match_the_engine():
    """A scenario's analyst rules are part of the portable query, evaluated as the engine does."""
    from kn026.core import analysis
    from kn026.ingest import synth

    cohort = load_cohort(synth.generate(3000, seed=11), connect())
    for stage in (1, 2):
        extended = analysis.engine_for(Engine(cohort, PROTOCOL, stage), ANALYST)
        scr = portable.screening(PROTOCOL, stage, ANALYST, cohort.present)
        assert scr.leaves == tuple(r.id for r in extended.rules)
        assert scr.leaves[-2:] == ("AGECAP", "HBRATIO")
        rows = cohort.con.execute(scr.sql("duckdb", cohort.table)).fetchall()
        assert as_counter(portable.histogram_from_rows(rows)) == \
            as_counter(extended.histogram(ANALYST.overrides))
        for dialect in OTHER_DIALECTS:
            sqlglot.parse_one(scr.sql(dialect), read=dialect)


def test_query_engine_runs_custom_rules_through_the_analysis(tmp_path):
    from kn026.core import analysis
    from kn026.ingest import synth

    path = synth.write(tmp_path / "c.parquet", 2000, seed=12)
    engine = Engine(load_cohort(path, connect()), PROTOCOL, 1)
    qe = portable.duckdb_engine(path, PROTOCOL, 1)
    a, b = analysis.run(engine, ANALYST), analysis.run(qe, ANALYST)
    assert a.totals == b.totals
    assert a.stats.equals(b.stats)
    assert "AGECAP" in set(b.stats["criterion"])


def test_custom_rules_change_both_fingerprints():
    base = Scenario("analyst", overrides=ANALYST.overrides)
    extended = portable.scenario_protocol(PROTOCOL, ANALYST)
    assert portable.criteria_fingerprint(extended, 1, ANALYST) != portable.criteria_fingerprint(PROTOCOL, 1, base)
    assert portable.scenario_fingerprint(PROTOCOL, ANALYST) != portable.scenario_fingerprint(PROTOCOL, base)
    assert "AGECAP" in portable.screening(PROTOCOL, 1, ANALYST).header("spark")


def test_hostile_custom_rule_never_reaches_the_query():
    from kn026.rules.rulecheck import RuleError

    bad = Scenario("bad", custom=(CustomRule("EVIL", "exclusion", "x",
                                             "(SELECT count(*) FROM read_csv('/etc/passwd')) > 0"),))
    with pytest.raises(RuleError):
        portable.screening(PROTOCOL, 1, bad)
