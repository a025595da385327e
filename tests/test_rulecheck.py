"""Tests for kn026.rules.rulecheck: the grammar, messages, binding, the hostile corpus, and
random expression trees (Hypothesis) evaluated in DuckDB on a cohort with NULLs."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kn026.base.sqlpass import harden
from kn026.base.table import COHORT_DB, connect
from kn026.core.criteria import load_protocol
from kn026.ingest.cohort import load_cohort
from kn026.rules import sandbox
from kn026.rules.grammar import ALLOWED_FUNCTIONS
from kn026.rules.rulecheck import (
    CheckedRule,
    RuleError,
    bind,
    check_expression,
    dictionary_kinds,
    param_value,
    point_at,
)

CORPUS = Path(__file__).with_name("hostile") / "corpus.yaml"
PARAMS = {"min_age": 18, "p_dec": Decimal("1.5"), "p_neg": Decimal("-2.25"), "p_zero": 0}


def cohort_frame() -> pd.DataFrame:
    """Six patients, NULLs in every column, values at the edges of their ranges."""
    return pd.DataFrame({
        "patient_id": ["p1", "p2", "p3", "p4", "p5", "p6"],
        "site_id": ["s1", "s1", "s2", None, "s2", "s3"],
        "screening_date": ["2024-01-05", "2024-02-29", None, "2024-03-03", "2024-04-04", "2024-05-05"],
        "age_years": [45, 17.5, None, 80, 0, 120],
        "sex": ["F", "M", None, "female", "M", "F"],
        "weight_kg": [60.5, 80, 70, None, 20, 120],
        "her2_ihc": [3, 2, None, 0, 1, 3],
        "her2_ish": ["positive", None, "negative", None, "positive", None],
        "ecog": [0, 1, 2, None, 5, 0],
        "consent_signed": ["yes", "no", None, "true", "0", "1"],
        "liver_metastases": [True, False, None, True, False, None],
        "creatinine_umol_l": [80, 100, None, 50, 15, 2000],
        "days_since_transfusion": [None, 3, 14, 36500, 0, None],
        "anc_1e9_l": [1.5, 0, None, 3.2, 100, 1e-9],
        "brain_metastases": ["none", "active", None, "treated_stable", "none", "active"],
        "primary_site": ["stomach", "gej", "other", None, "stomach", "gej"],
        "lvef_drop_on_anti_her2_pct": [-5, 10, None, 0, 100, -100],
    })


@pytest.fixture(scope="module")
def live():
    """A loaded, locked-down session, with one record value at the engine's NEVER_DAYS."""
    cohort = load_cohort(cohort_frame(), connect())
    # the engine reads NULL record-based days as 1e9; INTEGER arithmetic on it overflows
    # (the table lives in the compressed in-memory database; `cohort` is a view of it)
    cohort.con.execute(f"UPDATE {COHORT_DB}.main.cohort SET days_since_transfusion = 1000000000 "
                       "WHERE patient_id = 'p6'")
    sandbox.lock_down(cohort.con, memory_limit="256MB", threads=1)
    kinds = dictionary_kinds(cohort.present)
    return cohort, kinds


def evaluate(con, checked: CheckedRule, values=None) -> int:
    sql = bind(checked, values or PARAMS)
    return sandbox.run_with_timeout(con, f"SELECT count_if(({sql})) FROM cohort", seconds=10,
                                    fetch="one")[0]


def verdicts(con, checked: CheckedRule, values=None) -> list:
    sql = bind(checked, values or PARAMS)
    return [r[0] for r in con.execute(f"SELECT ({sql}) FROM cohort ORDER BY patient_id").fetchall()]


# -- accepted grammar ----------------------------------------------------------------------

ACCEPTED = [
    "age_years >= :min_age",
    "age_years >= $min_age AND ecog IN (0, 1)",
    "NOT consent_signed",
    "consent_signed",
    "TRUE",
    "her2_ihc = 3 OR (her2_ihc = 2 AND her2_ish = 'positive')",
    "ecog <> 1 AND ecog != 2",
    "age_years BETWEEN 18 AND :min_age + 60",
    "age_years NOT BETWEEN 0 AND 17",
    "sex IS NULL OR sex IS NOT NULL",
    "ecog NOT IN (2, 3, 4, 5)",
    "ecog IN (-1, 0, :min_age)",
    "CASE WHEN sex = 'F' THEN age_years * 0.85 ELSE age_years END > :p_dec",
    "CASE sex WHEN 'F' THEN TRUE WHEN 'M' THEN FALSE END",
    "COALESCE(days_since_transfusion, 1000000) >= 14",
    "ifnull(liver_metastases, FALSE) OR anc_1e9_l >= 1.5",
    "abs(lvef_drop_on_anti_her2_pct) < 10",
    "round(age_years, 0) = 45 OR round(age_years, -1) = 20 OR round(age_years) = 0",
    "least(age_years, 100) > greatest(weight_kg, 1)",
    "ln(weight_kg) > 0 OR log10(weight_kg) > 0 OR log2(weight_kg) > 0 OR log(weight_kg) > 0",
    "sqrt(weight_kg) > 2 AND power(age_years, 2) > 1 AND pow(age_years, 0.5) > 1",
    "age_years ^ 2 > 100",
    "floor(age_years) = 17 OR ceil(age_years) = 18 OR ceiling(age_years) = 18",
    "nullif(ecog, 0) IS NULL",
    "lower(sex) = 'f' OR upper(sex) = 'M' OR trim(primary_site) = 'gej'",
    "ltrim(primary_site) = 'gej' OR rtrim(primary_site) = 'gej'",
    "length(primary_site) > 3",
    "sign(lvef_drop_on_anti_her2_pct) < 0 OR exp(ecog) > 100",
    "-age_years < -17 AND - -age_years > 17",
    "weight_kg / creatinine_umol_l > 0.5",
    "screening_date >= '2024-02-29'",
    "\"age_years\" > 1",
    "site_id = 'it''s -- not a comment'",
    "age_years > 1e2 OR age_years < 1.5e-3",
    "(((age_years > 1)))",
    "age_years\n  >= 18\tAND\r\n ecog <= 1",
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_accepted_expressions_evaluate(live, text):
    cohort, kinds = live
    checked = check_expression(text, kinds, PARAMS)
    assert isinstance(checked, CheckedRule)
    evaluate(cohort.con, checked)
    again = check_expression(checked.sql, kinds, PARAMS)  # re-checking is a fixed point
    assert again.sql == checked.sql
    assert again.columns == checked.columns and again.params == checked.params


def test_every_allowed_function_name_is_accepted(live):
    _, kinds = live
    args = {"round": "age_years, 1", "log": "2, age_years", "pow": "age_years, 2",
            "power": "age_years, 2", "least": "age_years, 1", "greatest": "age_years, 1",
            "coalesce": "age_years, 1", "ifnull": "age_years, 1", "nullif": "age_years, 1"}
    text_fns = {"lower", "upper", "trim", "ltrim", "rtrim"}
    for name in ALLOWED_FUNCTIONS:
        if name in text_fns:
            expr = f"{name}(sex) = 'F'"
        elif name == "length":
            expr = "length(sex) = 1"
        else:
            expr = f"{name}({args.get(name, 'age_years')}) > 1"
        check_expression(expr, kinds, PARAMS)


def test_protocol_rules_are_all_accepted():
    """Every predicate of the shipped protocol passes the validator (typed) and binds."""
    protocol = load_protocol()
    kinds = dictionary_kinds(numbers=protocol.derived)
    for rule in protocol.rules:
        for sql in rule.sql.values():
            checked = check_expression(sql, kinds, rule.defaults())
            bind(checked, rule.defaults())
    for derived in protocol.derived.values():
        check_expression(f"({derived.sql}) IS NULL", dictionary_kinds(),
                         {"washout_min_days": 14, "washout_max_days": 28, "washout_half_lives": 5})


def test_result_lists_columns_and_params_and_renders_placeholders():
    checked = check_expression("age_years >= :min_age AND ecog <= :p_dec", {"age_years", "ecog", "sex"},
                               {"min_age", "p_dec", "unused"})
    assert checked.columns == frozenset({"age_years", "ecog"})
    assert checked.params == frozenset({"min_age", "p_dec"})
    assert checked.sql == "age_years >= $min_age AND ecog <= $p_dec"
    assert checked.text == "age_years >= :min_age AND ecog <= :p_dec"


def test_sql_is_directly_executable_with_named_parameters(live):
    cohort, kinds = live
    checked = check_expression("age_years >= :min_age", kinds, PARAMS)
    n = cohort.con.execute(f"SELECT count_if({checked.sql}) FROM cohort", {"min_age": 18}).fetchone()[0]
    assert n == evaluate(cohort.con, checked) == 3


def test_untyped_columns_accept_without_type_checks():
    checked = check_expression("flag_x AND value_y > 1", {"flag_x", "value_y"}, set())
    assert checked.columns == {"flag_x", "value_y"}
    with pytest.raises(RuleError, match="must be a condition"):
        check_expression("value_y + 1", {"value_y"}, set())


# -- rejections: messages and positions ----------------------------------------------------

@pytest.mark.parametrize("text, message, position, token", [
    ("age_years > read_csv('x')", "read_csv is not an allowed function (position 12). Allowed: abs",
     12, "read_csv"),
    ("age_years > 1; DROP TABLE cohort", "';' at position 13", 13, ";"),
    ("age_years > 1 -- trailing", "comments (--) are not allowed", 14, "--"),
    ("cohort.age_years > 1", "qualified names", 0, None),
    ("ecog IN (0, 1) AND age_years::VARCHAR = '1'", "casts", 28, None),
    ("age_years > :nope", ":nope is not a declared parameter (position 12); declared: :min_age", 12, "nope"),
    ("age_yeras > 1", "age_yeras is not a column of this cohort (position 0); did you mean age_years?",
     0, "age_yeras"),
    ("AGE_YEARS > 1", "did you mean age_years?", 0, "AGE_YEARS"),
    ("sex > 5", "cannot compare a number with text", 0, None),
    ("ecog IN (0, 'x')", "cannot compare a number with text", 12, None),
    ("consent_signed AND ecog", "ecog is a number, but a condition (true/false) is needed here (position 19)",
     19, None),
    ("lower(ecog) = 'x'", "ecog is a number, but text is needed here", 6, None),
    ("age_years > (SELECT 1)", "subqueries", 12, None),
    ("age_years >", "does not parse", 10, ">"),
    ("age_years > 1 b", "did you forget an operator", 14, None),
    ("sex = 'F", "quote ' is left open (position 6)", 6, "'"),
    ("round(age_years, 1.5) > 1", "whole number of decimals", 17, None),
    ("round(age_years, 99) > 1", "whole number of decimals", 17, None),
    ("CASE WHEN age_years THEN TRUE END", "age_years is a number, but a condition", 10, None),
    ("CASE WHEN sex = 'F' THEN 1 ELSE 'x' END = 1", "cannot mix a number with text", 32, None),
    ("ecog IN (age_years)", "IN takes a list of literal values", 9, None),
    ("trim(sex, sex) = 'F'", "trim's characters must be a 'quoted text'", 10, None),
    ("len(sex) > 1", "len is not an allowed function", 0, "len"),
    ("age_years > 1 AND \u0430ge_years > 1", "CYRILLIC SMALL LETTER A", 18, "\u0430"),
])
def test_rejection_messages_point_at_the_token(live, text, message, position, token):
    _, kinds = live
    with pytest.raises(RuleError) as info:
        check_expression(text, kinds, {"min_age": 18})
    err = info.value
    assert message in err.message
    assert str(err) == err.message
    assert err.position == position
    if token is not None:
        assert err.token == token


def test_limits_are_configurable():
    with pytest.raises(RuleError, match="the limit is 10"):
        check_expression("age_years > 100", {"age_years"}, set(), max_length=10)
    with pytest.raises(RuleError, match="nested too deeply"):
        check_expression("((((age_years > 1))))", {"age_years"}, set(), max_depth=3)
    with pytest.raises(RuleError, match="too large"):
        check_expression("age_years > 1 AND age_years < 5", {"age_years"}, set(), max_nodes=5)
    deep = "(" * 5000 + "age_years > 1" + ")" * 5000
    with pytest.raises(RuleError, match="nested too deeply"):
        check_expression(deep, {"age_years"}, set(), max_length=100_000, max_depth=10_000,
                         max_nodes=100_000)
    with pytest.raises(RuleError, match="nested too deeply"):
        check_expression(" AND ".join(["age_years > 1"] * 2001), {"age_years"}, set(), max_length=100_000)


def test_bad_arguments():
    with pytest.raises(RuleError, match="must be text"):
        check_expression(b"age_years > 1", {"age_years"}, set())
    with pytest.raises(TypeError):
        check_expression("age_years > 1", "age_years", set())
    with pytest.raises(ValueError, match="unknown kind"):
        check_expression("age_years > 1", {"age_years": "blob"}, set())
    with pytest.raises(RuleError, match="must be a number"):
        check_expression("age_years > :x", {"age_years"}, {"x": "18"})
    with pytest.raises(ValueError, match="parameter names"):
        check_expression("age_years > 1", {"age_years"}, {"X-1"})


# -- division, binding, hardening ----------------------------------------------------------

def test_division_is_null_safe(live):
    cohort, kinds = live
    checked = check_expression("age_years / ecog > 10", kinds, PARAMS)
    assert checked.sql == "age_years / NULLIF(ecog, 0) > 10"
    # p1 and p6 have ecog 0: unknown, not "infinitely large"
    got = verdicts(cohort.con, checked)
    assert got[0] is None and got[5] is None
    assert check_expression("age_years / 2 > 10", kinds, PARAMS).sql == "age_years / 2 > 10"
    assert check_expression("age_years / 0 > 10", kinds, PARAMS).sql == "age_years / NULLIF(0, 0) > 10"
    assert "NULLIF(NULLIF" not in check_expression(checked.sql, kinds, PARAMS).sql


def test_bind_uses_exact_decimal_literals():
    checked = check_expression("a >= :x AND a <= :y AND a <> :z", {"a"}, {"x", "y", "z"})
    sql = bind(checked, {"x": 0.1, "y": Decimal("1.50"), "z": -3})
    assert sql == "a >= 0.1 AND a <= 1.5 AND a <> (-3)"
    assert "(-3)" in bind(checked, {"x": 1, "y": 2, "z": -3})
    assert bind(checked, {"x": Decimal("-0"), "y": 1e14, "z": 7}).startswith("a >= 0 AND a <= 100000000000000")


@pytest.mark.parametrize("value, message", [
    (True, "must be a number"), ("18", "must be a number"), (None, "must be a number"),
    (float("nan"), "finite"), (float("inf"), "finite"), (Decimal("NaN"), "finite"),
    (1e15, "out of range"), (Decimal("0.1234567890123456789"), "more than 18 digits"),
])
def test_bind_rejects_non_numbers(value, message):
    checked = check_expression("a >= :x", {"a"}, {"x"})
    with pytest.raises(RuleError, match=message):
        bind(checked, {"x": value})
    with pytest.raises(RuleError, match=message):
        param_value("x", value)


def test_bind_requires_every_parameter():
    checked = check_expression("a >= :x AND a < :y", {"a"}, {"x", "y"})
    with pytest.raises(RuleError, match=":y"):
        bind(checked, {"x": 1})
    assert bind(checked, {"x": 1, "y": 2, "extra": "ignored"}) == "a >= 1 AND a < 2"


def test_limits_are_exact_at_the_boundary(live):
    """1.5 x 1.2 is exactly 1.8 in a bound rule, whatever binary floating point says."""
    cohort, _ = live
    cohort.con.execute("CREATE OR REPLACE TEMP TABLE tie AS SELECT 1.8::DOUBLE AS inr, 1.2::DOUBLE AS "
                       "inr_uln, 31.5::DOUBLE AS bili")
    kinds = {"inr": "number", "inr_uln": "number", "bili": "number"}
    for text, values in (("inr <= :k * 1.2", {"k": Decimal("1.5")}),
                         ("inr <= :k * inr_uln", {"k": 1.5}),
                         ("inr / inr_uln <= :k", {"k": 1.5}),
                         ("bili <= :k * 21", {"k": 1.5}),
                         ("inr <= :limit", {"limit": 1.8})):
        sql = bind(check_expression(text, kinds, set(values)), values)
        assert cohort.con.execute(f"SELECT {sql} FROM tie").fetchone()[0] is True, (text, sql)
    assert cohort.con.execute("SELECT inr <= 1.5 * inr_uln FROM tie").fetchone()[0] is False


def test_harden_prevents_integer_overflow(live):
    cohort, kinds = live
    checked = check_expression("days_since_transfusion * 24 > 100 AND -ecog < 0", kinds, PARAMS)
    raw = checked.sql
    with pytest.raises(Exception, match="Overflow"):
        cohort.con.execute(f"SELECT count_if({raw}) FROM cohort").fetchall()
    assert evaluate(cohort.con, checked) >= 1
    hardened = harden(checked.tree).sql(dialect="duckdb")
    assert "CAST(days_since_transfusion AS DOUBLE) * CAST(24 AS DOUBLE)" in hardened
    assert harden(harden(checked.tree)).sql(dialect="duckdb") == hardened


def test_three_valued_logic_is_kept(live):
    cohort, kinds = live
    checked = check_expression("age_years >= 18 OR ecog <= 1", kinds, PARAMS)
    # p3 has neither value: unknown; p4 has age 80 and no ECOG: passes
    got = verdicts(cohort.con, checked)
    assert got[2] is None and got[3] is True


# -- the hostile corpus --------------------------------------------------------------------

def load_corpus(tmp: str = "/tmp/kn026-hostile") -> list[dict]:
    cases = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))["cases"]
    out = []
    for case in cases:
        if "text" in case:
            text = case["text"].replace("{tmp}", tmp)
        else:
            b = case["build"]
            if "join" in b:
                text = b["sep"].join([b["join"]] * b["times"])
            else:
                text = b["repeat"] * b["times"] + b["middle"] + b["close"] * b["times"]
        out.append({**case, "text": text})
    return out


def snapshot(con):
    rows = con.execute("SELECT * FROM cohort ORDER BY patient_id").fetchall()
    digest = con.execute("SELECT count(*), sum(hash(c)) FROM cohort c").fetchone()
    settings_now = con.execute("SELECT name, value FROM duckdb_settings() ORDER BY name").fetchall()
    tables = con.execute("SELECT database_name, schema_name, table_name FROM duckdb_tables() "
                         "ORDER BY ALL").fetchall()
    macros = con.execute("SELECT function_name FROM duckdb_functions() WHERE NOT internal "
                         "ORDER BY ALL").fetchall()
    dbs = con.execute("SELECT database_name FROM duckdb_databases() ORDER BY ALL").fetchall()
    return rows, digest, settings_now, tables, macros, dbs


def test_corpus_is_large_and_well_formed():
    cases = load_corpus()
    assert len(cases) >= 60
    ids = [c["id"] for c in cases]
    assert len(ids) == len(set(ids))
    assert all(c.get("why") for c in cases)
    assert any(len(c["text"]) >= 100_000 for c in cases)


def test_hostile_corpus_is_rejected_without_effect(live):
    cohort, kinds = live
    before = snapshot(cohort.con)
    for case in load_corpus():
        text = case["text"]
        for mode, columns, limits in (
                ("typed", kinds, {}),
                ("untyped", set(kinds), {}),
                ("no length limit", kinds, {"max_length": 1_000_000})):
            if mode == "untyped" and case.get("typed"):
                continue
            with pytest.raises(RuleError) as info:
                check_expression(text, columns, {"min_age": 18}, **limits)
            err = info.value
            assert err.message and len(err.message) < 600, case["id"]
            assert err.position is None or 0 <= err.position <= len(text), case["id"]
            expect = {"typed": case.get("expect"), "no length limit": case.get("expect_unlimited")}.get(mode)
            if expect:
                assert expect.lower() in err.message.lower(), (case["id"], mode, err.message)
    assert snapshot(cohort.con) == before
    assert sandbox.is_locked(cohort.con)


# -- Hypothesis: random expression trees -----------------------------------------------------

NUM_COLS = ["age_years", "weight_kg", "her2_ihc", "ecog", "creatinine_umol_l", "days_since_transfusion",
            "anc_1e9_l", "lvef_drop_on_anti_her2_pct"]
TEXT_COLS = ["sex", "her2_ish", "site_id", "brain_metastases", "primary_site", "patient_id"]
FLAG_COLS = ["consent_signed", "liver_metastases"]
NUMBERS = ["0", "1", "-1", "0.5", "1.5", "18", "2147483647", "999999999999999999", "0.000000001",
           "1e300", "1.5e-3", "1e-300", "123456.789012345678"]
PARAM_REFS = [":min_age", ":p_dec", ":p_neg", ":p_zero"]
BAD_LEAVES = ["read_csv('x')", "*", "cohort.age_years", "$$x$$", "age_years::INT", "?", ":nope",
              "getenv('HOME')", "(SELECT 1)", "sum(age_years)", "unknown_col", "'a' || 'b'",
              "[1, 2]", "x -> x", "random()", "\"Age\"", "E'x'", "0x10", "age_years % 2", "#1",
              "DATE '2024-01-01'", "current_setting('threads')", "count(*)", "{'a': 1}"]
GOOD_FUNCS_NUM1 = ["abs", "ln", "sqrt", "floor", "ceil", "sign", "exp", "log10", "log2", "log"]
GOOD_FUNCS_NUM2 = ["power", "pow", "least", "greatest", "nullif", "coalesce", "log", "round"]
BAD_FUNCS = ["read_text", "glob", "list_transform", "repeat", "concat", "format", "query", "md5",
             "to_json", "typeof", "len", "if"]


def sql_string(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def typed_strategies():
    num_leaf = st.one_of(st.sampled_from(NUM_COLS), st.sampled_from(NUMBERS), st.sampled_from(PARAM_REFS),
                         st.integers(-10**9, 10**9).map(str),
                         st.decimals(-10**6, 10**6, places=3, allow_nan=False).map(str), st.just("NULL"))
    text_leaf = st.one_of(st.sampled_from(TEXT_COLS), st.text("FMfm x'-é", max_size=4).map(sql_string),
                          st.just("NULL"))
    bool_leaf = st.one_of(st.sampled_from(FLAG_COLS), st.sampled_from(["TRUE", "FALSE", "NULL"]))

    def num_ext(child):
        return st.one_of(
            st.tuples(child, st.sampled_from(["+", "-", "*", "/"]), child).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            child.map(lambda c: f"-{c}"),
            st.tuples(st.sampled_from(GOOD_FUNCS_NUM1), child).map(lambda t: f"{t[0]}({t[1]})"),
            st.tuples(st.sampled_from(GOOD_FUNCS_NUM2), child, child).map(
                lambda t: f"{t[0]}({t[1]}, {'2' if t[0] == 'round' else t[2]})"),
            st.tuples(bool_leaf, child, child).map(lambda t: f"CASE WHEN {t[0]} THEN {t[1]} ELSE {t[2]} END"),
            text_leaf.map(lambda t: f"length({t})"),
        )

    nums = st.recursive(num_leaf, num_ext, max_leaves=6)
    texts = st.one_of(text_leaf, text_leaf.map(lambda t: f"lower({t})"), text_leaf.map(lambda t: f"trim({t})"))

    def bool_ext(child):
        return st.one_of(
            st.tuples(child, st.sampled_from(["AND", "OR"]), child).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            child.map(lambda c: f"NOT ({c})"),
            child.map(lambda c: f"({c}) IS NULL"),
            st.tuples(bool_leaf, child, child).map(lambda t: f"CASE WHEN {t[0]} THEN {t[1]} ELSE {t[2]} END"),
            st.tuples(child, child).map(lambda t: f"COALESCE({t[0]}, {t[1]})"),
        )

    compare = st.sampled_from(["=", "<>", "!=", "<", "<=", ">", ">="])
    atoms = st.one_of(
        bool_leaf,
        st.tuples(nums, compare, nums).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        st.tuples(texts, compare, texts).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        st.tuples(nums, st.lists(st.sampled_from(NUMBERS + PARAM_REFS), min_size=1, max_size=4)).map(
            lambda t: f"{t[0]} IN ({', '.join(t[1])})"),
        st.tuples(texts, st.lists(st.sampled_from(["'F'", "'M'", "'gej'", "NULL"]), min_size=1, max_size=3)).map(
            lambda t: f"{t[0]} NOT IN ({', '.join(t[1])})"),
        st.tuples(nums, nums, nums).map(lambda t: f"{t[0]} BETWEEN {t[1]} AND {t[2]}"),
        st.tuples(nums).map(lambda t: f"{t[0]} IS NOT NULL"),
        st.sampled_from(["screening_date > '2024-02-01'", "screening_date BETWEEN '2024-01-01' AND "
                         "'2024-12-31'", "screening_date IS NULL", "screening_date = '2024-02-30'"]),
    )
    return st.recursive(atoms, bool_ext, max_leaves=8)


def chaos_strategy():
    """Anything from the grammar, plus disallowed leaves, functions and operators, ill-typed."""
    leaf = st.one_of(st.sampled_from(NUM_COLS + TEXT_COLS + FLAG_COLS + ["screening_date"]),
                     st.sampled_from(NUMBERS + PARAM_REFS + ["TRUE", "FALSE", "NULL", "'F'", "'x''y'"]),
                     st.sampled_from(BAD_LEAVES))
    ops = st.sampled_from(["=", "<>", "<", ">=", "AND", "OR", "+", "-", "*", "/", "%", "||", "LIKE",
                           "IS", "IN", "::", "->", ";", "--", "/*", "^", "BETWEEN"])

    def ext(child):
        return st.one_of(
            st.tuples(child, ops, child, st.booleans()).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})" if t[3] else f"{t[0]} {t[1]} {t[2]}"),
            child.map(lambda c: f"NOT {c}"),
            child.map(lambda c: f"-{c}"),
            st.tuples(st.sampled_from(list(ALLOWED_FUNCTIONS) + BAD_FUNCS), st.lists(child, min_size=1,
                      max_size=3)).map(lambda t: f"{t[0]}({', '.join(t[1])})"),
            st.tuples(child, child, child).map(lambda t: f"CASE WHEN {t[0]} THEN {t[1]} ELSE {t[2]} END"),
            st.tuples(child, st.lists(child, min_size=1, max_size=3)).map(
                lambda t: f"{t[0]} IN ({', '.join(t[1])})"),
            st.tuples(child, child, child).map(lambda t: f"{t[0]} BETWEEN {t[1]} AND {t[2]}"),
            child.map(lambda c: f"{c} IS NOT NULL"),
        )

    return st.recursive(leaf, ext, max_leaves=10)


HYPOTHESIS = settings(max_examples=300, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@HYPOTHESIS
@given(text=typed_strategies())
def test_random_typed_rules_evaluate_or_are_rejected(live, text):
    cohort, kinds = live
    try:
        checked = check_expression(text, kinds, PARAMS)
    except RuleError:
        return
    evaluate(cohort.con, checked)  # never a DuckDB error after bind
    assert check_expression(checked.sql, kinds, PARAMS).sql == checked.sql


@HYPOTHESIS
@given(text=chaos_strategy())
def test_random_chaos_only_raises_rule_error(live, text):
    cohort, kinds = live
    try:
        checked = check_expression(text, kinds, PARAMS)
    except RuleError as err:
        assert err.message
        return
    evaluate(cohort.con, checked)
    for banned in ("read_", "getenv", "SELECT", "::", ";", "--", "/*", "||", "%", "->"):
        assert banned not in checked.sql


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
def test_typed_strategy_accepts_a_good_share():
    """Guard against a generator that only ever produces rejected text."""
    from hypothesis import find

    kinds = dictionary_kinds()

    def accepted(text):
        try:
            check_expression(text, kinds, PARAMS)
            return len(text) > 40
        except RuleError:
            return False

    assert find(typed_strategies(), accepted)


# -- pointing at the offending token (the app's error box) ------------------------------------


def _point(text):
    with pytest.raises(RuleError) as info:
        check_expression(text, dictionary_kinds(), PARAMS)
    return point_at(text, info.value.position, info.value.token)


def test_point_at_underlines_the_token_as_typed():
    assert _point("age_years > 1 AND read_csv('/etc/passwd') IS NULL") == (
        "age_years > 1 AND read_csv('/etc/passwd') IS NULL\n"
        "                  ^^^^^^^^")
    # the checker reports the subquery re-rendered (COUNT); the carets still cover it as typed
    assert _point("age_years > (select count(*) from cohort)").splitlines()[1] == " " * 12 + "^" * 29
    assert _point("age_years > 1; DROP TABLE cohort").splitlines()[1] == " " * 13 + "^"
    # no token: the word at the position
    assert _point("sex > 5").splitlines()[1] == "^^^"


def test_point_at_multiline_long_and_invisible_text():
    text = "age_years >= 18\nAND ecog <= 1\nAND glob('*') IS NULL"
    assert _point(text) == "line 3 | AND glob('*') IS NULL\n" + " " * 13 + "^^^^"
    long = "age_years + " * 10 + "1 > 0 AND read_csv('x') IS NULL AND " + "ecog < 2 AND " * 8 + "TRUE"
    line, marks = _point(long).splitlines()
    assert len(line) <= 78 and line.startswith("…") and line.endswith("…")
    assert line[marks.index("^"):marks.index("^") + 8] == "read_csv" and marks.count("^") == 8
    # a zero-width space is drawn as a visible mark, and the caret stays under it
    hidden = "age_years\u200b > 1"
    line, marks = _point(hidden).splitlines()
    assert line == "age_years\ufffd > 1" and marks == " " * 9 + "^"
    assert point_at("x > 1", None) == ""
    assert point_at("abc", 99) == "abc\n   ^"  # past the end: after the last character
