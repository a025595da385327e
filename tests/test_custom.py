"""Analyst-written rules: validated, compiled safely, and equal to a fresh evaluation."""

from __future__ import annotations

import pandas as pd
import pytest

from kn026.base.table import connect
from kn026.core import analysis, custom
from kn026.core.criteria import CriteriaError, load_protocol
from kn026.core.engine import Engine
from kn026.core.scenario import Scenario
from kn026.ingest.cohort import load_cohort
from kn026.rules.rulecheck import RuleError

PROTOCOL = load_protocol()


AGE = custom.CustomRule("CUST01", "exclusion", "Not older than 75", "age_years <= :max_age",
                        {"max_age": {"default": 75, "unit": "years", "min": 18, "max": 120}})


def extended(engine, rules=(AGE,), replaced=None):
    protocol, changed = custom.extend(PROTOCOL, engine.cohort, list(rules), replaced)
    return engine.with_protocol(protocol, changed, untrusted=changed), protocol, changed


def test_custom_rule_joins_the_funnel(builtin_engine):
    ext, protocol, changed = extended(builtin_engine)
    fresh = Engine(builtin_engine.cohort, protocol, 1, untrusted=changed)
    assert analysis.run(ext).totals == analysis.run(fresh).totals
    stats = analysis.run(ext).stats.set_index("criterion")
    over = builtin_engine.con.execute("SELECT count(*) FROM cohort WHERE age_years > 75").fetchall()[0][0]
    assert stats.loc["CUST01", "failed"] == over
    assert "CUST01" in analysis.run(ext).plan.ids


def test_custom_rule_parameters_are_scenario_parameters(builtin_engine):
    ext, _, _ = extended(builtin_engine)
    relaxed = analysis.run(ext, Scenario("s", overrides={"CUST01": {"max_age": 80}})).stats
    over80 = builtin_engine.con.execute("SELECT count(*) FROM cohort WHERE age_years > 80").fetchall()[0][0]
    assert relaxed.set_index("criterion").loc["CUST01", "failed"] == over80


def test_replaced_expression_equals_fresh_engine(builtin_engine):
    # the other registry version: creatinine clearance >= 50 written by hand
    sql = "(crcl_if_female >= 50 OR crcl_if_male >= 50) AND (sex <> 'F' OR crcl_if_female >= 50)" \
          " AND (sex <> 'M' OR crcl_if_male >= 50)"
    ext, protocol, changed = extended(builtin_engine, rules=(), replaced={"INCL07.CRCL": sql})
    by_param = analysis.run(builtin_engine, Scenario("p", overrides={"INCL07.CRCL": {"min": 50}})).totals
    assert analysis.run(ext).totals == by_param
    assert changed == {"INCL07.CRCL"}


def test_screen_log_and_three_valued_logic(builtin_engine):
    rule = custom.CustomRule("CUST02", "inclusion", "Known weight", "weight_kg > 0 OR weight_kg IS NULL")
    nullable = custom.CustomRule("CUST03", "inclusion", "Heavy", "weight_kg >= 60")
    ext, _, _ = extended(builtin_engine, rules=(rule, nullable))
    log = builtin_engine.con.execute(analysis.screen_log_sql(ext)).df()
    assert set(log["CUST02"]) == {"pass"}
    nulls = builtin_engine.con.execute("SELECT count(*) FROM cohort WHERE weight_kg IS NULL").fetchall()[0][0]
    assert (log["CUST03"] == "unknown").sum() == nulls


@pytest.mark.parametrize("sql", [
    "read_csv('/etc/passwd') IS NOT NULL",
    "age_years > 1; DROP TABLE cohort",
    "(SELECT count(*) FROM cohort) > 0",
    "CAST(age_years AS VARCHAR) = '1'",
    "age_years > 1 -- comment",
    "nosuchcolumn > 1",
])
def test_hostile_text_is_refused(builtin_engine, sql):
    with pytest.raises(RuleError):
        extended(builtin_engine, rules=(custom.CustomRule("CUST09", "exclusion", "x", sql),))
    assert builtin_engine.con.execute("SELECT count(*) FROM cohort").fetchall()[0][0] == builtin_engine.cohort.n


@pytest.mark.parametrize("rule,match", [
    (custom.CustomRule("INCL01", "exclusion", "x", "age_years > 1"), "already a protocol ID"),
    (custom.CustomRule("cust", "exclusion", "x", "age_years > 1"), "capital letters"),
    (custom.CustomRule("CUST05", "maybe", "x", "age_years > 1"), "inclusion or exclusion"),
])
def test_bad_custom_definitions(builtin_engine, rule, match):
    with pytest.raises(CriteriaError, match=match):
        extended(builtin_engine, rules=(rule,))


def test_extra_columns_can_be_used():
    frame = pd.DataFrame({"patient_id": ["a", "b", "c"], "age_years": [50.0, 60.0, 70.0],
                          "biomarker_x": [1.0, 5.0, None]})
    cohort = load_cohort(frame, connect())
    base = Engine(cohort, PROTOCOL, 1)
    rule = custom.CustomRule("CUST01", "inclusion", "Biomarker X high", "biomarker_x >= 2")
    ext, _, _ = extended(base, rules=(rule,))
    log = cohort.con.execute(analysis.screen_log_sql(ext)).df().set_index("patient_id")
    assert list(log["CUST01"]) == ["fail", "pass", "unknown"]


def test_no_ceiling_on_the_number_of_rules(builtin_engine):
    """64 analyst criteria beside the protocol's rules (no 64-rule limit any more): the reused
    pass with the new rules folded in equals a fresh engine, screening log included."""
    rules = [custom.CustomRule(f"CUST{i:02d}", "exclusion", f"age above {20 + i}", f"age_years <= {20 + i}")
             for i in range(1, 65)]
    ext, protocol, changed = extended(builtin_engine, rules=rules)
    assert len(protocol.rules) == len(PROTOCOL.rules) + 64 and ext.width == (len(protocol.rules) + 63) // 64 >= 2
    fresh = Engine(builtin_engine.cohort, protocol, 1, untrusted=changed)
    assert analysis.run(ext).totals == analysis.run(fresh).totals
    stats = analysis.run(ext).stats.set_index("criterion")
    over = builtin_engine.con.execute("SELECT count(*) FROM cohort WHERE age_years > 84").fetchall()[0][0]
    assert stats.loc["CUST64", "failed"] == over > 0
    log = builtin_engine.con.execute(analysis.screen_log_sql(ext)).df()
    assert (log["CUST64"] == "fail").sum() == over


def test_scenario_yaml_carries_custom_and_replaced_rules(builtin_engine):
    from kn026.core.scenario import parse_scenario

    text = """
scenario: Older patients out, clearance from the measured value
protocol: KN026-001
parameters:
  CUST01: {max_age: 80}
replace:
  INCL07.CRCL: "creatinine_clearance_ml_min >= :min OR crcl_if_female >= :min"
custom:
  - id: CUST01
    kind: exclusion
    text: Not older than the limit
    sql: "age_years <= :max_age"
    params: {max_age: {default: 75, unit: years, min: 18, max: 120}}
"""
    scen = parse_scenario(text, PROTOCOL)
    again = parse_scenario(scen.to_yaml(PROTOCOL), PROTOCOL)
    assert again == scen
    result = analysis.run(builtin_engine, scen)
    over80 = builtin_engine.con.execute("SELECT count(*) FROM cohort WHERE age_years > 80").fetchall()[0][0]
    assert result.stats.set_index("criterion").loc["CUST01", "failed"] == over80
    assert any("rewritten" in c for c in scen.changes(PROTOCOL))
    totals, deltas = analysis.compare(builtin_engine, scen)
    assert "CUST01" in set(deltas["criterion"])


def test_scenario_with_hostile_custom_rule_is_refused_when_screened(builtin_engine):
    from kn026.core.scenario import Scenario as S

    scen = S("bad", custom=(custom.CustomRule("CUST01", "exclusion", "x", "glob('*') IS NULL"),))
    with pytest.raises(RuleError, match="glob"):
        analysis.run(builtin_engine, scen)


# -- helpers of the app's rule editor --------------------------------------------------------


def test_parse_params_round_trips_and_explains_bad_lines():
    params = custom.parse_params("max_age = 75 years\n\n  min_hb: 100.5 g/L\nratio = -0.25")
    assert params == {"max_age": {"default": 75, "unit": "years"}, "min_hb": {"default": 100.5, "unit": "g/L"},
                      "ratio": {"default": -0.25}}
    assert custom.parse_params(custom.format_params(params)) == params
    assert custom.parse_params("") == {}
    for text, match in (("max_age 75", "line 1"), ("a = 1\nb = x", "line 2"), ("Max = 1", "lower case"),
                        ("a = 1\na = 2", "twice"), ("a = 1e99", "name = value"), ("a = 9999999999999999", "large"),
                        ("\n".join(f"p{i} = 1" for i in range(11)), "at most 10")):
        with pytest.raises(CriteriaError, match=match):
            custom.parse_params(text)


def test_parsed_params_build_a_rule_whose_text_shows_current_values(builtin_engine):
    rule = custom.CustomRule("CUST01", "exclusion", "Older than {max_age} {oops}", "age_years <= :max_age",
                             custom.parse_params("max_age = 75 years"))
    built = custom.build_custom(rule, builtin_engine.cohort, PROTOCOL, (1, 2))
    assert built.readable(1) == "age_years <= 75"
    assert built.readable(1, {"max_age": 80}) == "age_years <= 80"
    # braces in quoted text are not parameters: readable() must not fail on them
    odd = custom.replace_rule(PROTOCOL.rule("EXCL01"), "brain_metastases <> '{active}'", builtin_engine.cohort, PROTOCOL)
    assert odd.readable(1) == "rewritten: brain_metastases <> 'active'"


def test_rewritten_rule_reads_with_its_parameters(builtin_engine):
    rule = custom.replace_rule(PROTOCOL.rule("INCL07.CRCL"), "crcl_if_female >= :min + 20", builtin_engine.cohort, PROTOCOL)
    assert rule.readable(1) == "rewritten: crcl_if_female >= 30 + 20"
    assert custom.unused_params(rule, 1, PROTOCOL) == []
    literal = custom.replace_rule(PROTOCOL.rule("INCL07.CRCL"), PROTOCOL.examples.replace[1], builtin_engine.cohort, PROTOCOL)
    assert custom.unused_params(literal, 1, PROTOCOL) == ["min"]
    # parameters reached through a derived value (washout_days) count as used
    washout = next(r for r in PROTOCOL.rules if "washout_days" in r.sql.get(1, ""))
    assert custom.unused_params(washout, 1, PROTOCOL) == []


def test_expression_for_edit_prefills_the_scenario_or_protocol_text():
    assert custom.expression_for_edit(PROTOCOL, {}, "INCL07.ANC", 1) == "anc_1e9_l >= :min"
    assert custom.expression_for_edit(PROTOCOL, {"INCL07.ANC": "anc_1e9_l >= 2"}, "INCL07.ANC", 1) == "anc_1e9_l >= 2"
    staged = next(r for r in PROTOCOL.rules if len(set(r.sql.values())) > 1)
    assert custom.expression_for_edit(PROTOCOL, {}, staged.id, 2) == staged.sql[2]


def test_every_protocol_expression_passes_the_analyst_grammar(builtin_engine):
    # the editor prefills these: submitting one unchanged must never be refused
    for rule in PROTOCOL.rules:
        for stage in rule.stages:
            custom.replace_rule(rule, custom.expression_for_edit(PROTOCOL, {}, rule.id, stage), builtin_engine.cohort,
                                PROTOCOL)


def test_examples_are_valid_and_next_id_skips_taken(builtin_engine):
    ext, _, _ = extended(builtin_engine, rules=(custom.EXAMPLE_CUSTOM,), replaced=dict([PROTOCOL.examples.replace]))
    by_param = analysis.run(builtin_engine, Scenario("p", overrides={"INCL07.CRCL": {"min": 50}}))
    over = builtin_engine.con.execute("SELECT count(*) FROM cohort WHERE age_years > 75").fetchall()[0][0]
    assert analysis.run(ext).stats.set_index("criterion").loc["CUST01", "failed"] == over
    only_crcl, _, _ = extended(builtin_engine, rules=(), replaced=dict([PROTOCOL.examples.replace]))
    assert analysis.run(only_crcl).totals == by_param.totals
    assert custom.next_id([]) == "CUST01" and custom.next_id(["CUST01", "CUST03"]) == "CUST02"


def test_column_help_lists_what_a_rule_may_use():
    frame = pd.DataFrame({"patient_id": ["a"], "age_years": [50.0], "sex": ["F"], "biomarker_x": [1.0]})
    cohort = load_cohort(frame, connect())
    rows = {r["name"]: r for r in custom.column_help(cohort, PROTOCOL)}
    assert rows["age_years"]["kind"] == "number" and rows["age_years"]["unit"] == "years"
    assert "'F'" in rows["sex"]["meaning"]
    assert rows["biomarker_x"]["meaning"] == "extra column of the uploaded file"
    assert rows["crcl_if_female"]["kind"] == "number (derived)"
    assert "weight_kg" not in rows  # absent from this cohort: a rule may not name it


def test_extended_engines_are_bounded_and_reused(builtin_engine):
    """Each scenario with analyst rules gets an extended engine with its own masks once used;
    the caller's cache keeps only the most recent few, and nothing is cached on the engine."""
    scenarios = [Scenario(f"s{i}", custom=(custom.CustomRule("CUST01", "exclusion", "x", f"age_years <= {60 + i}"),))
                 for i in range(analysis.EXTENDED_KEEP + 2)]
    cache = analysis.Extensions()
    first = analysis.engine_for(builtin_engine, scenarios[0], cache)
    assert analysis.engine_for(builtin_engine, scenarios[0], cache) is first
    assert analysis.engine_for(first, scenarios[0]) is first  # already extended for these rules
    assert first.rules_key == analysis.rules_key(scenarios[0]) and builtin_engine.rules_key is None
    assert analysis.engine_for(builtin_engine, scenarios[0]) is not first  # no cache given: made anew
    for s in scenarios:
        analysis.run(analysis.engine_for(builtin_engine, s, cache), s)
    assert len(cache) == analysis.EXTENDED_KEEP
    assert not hasattr(builtin_engine, "_extended") and not hasattr(first, "_scenario_key")
    assert analysis.engine_for(builtin_engine, scenarios[0], cache) is not first  # dropped, made again
    assert analysis.engine_for(builtin_engine, scenarios[-1], cache) is analysis.engine_for(builtin_engine, scenarios[-1], cache)
