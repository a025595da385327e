"""Criteria as data (kn026/core/criteria.py, kn026/protocols/kn026_001.yaml).

Two halves: the shipped KN026-001 file against cohort-dictionary.md section 5, and
the validator against small broken protocol documents (one mutation per row ->
the message it must produce).
"""

from __future__ import annotations

import copy
import re
from decimal import Decimal

import pytest
import yaml

from kn026.base import schema
from kn026.core.criteria import (
    DEFAULT_PROTOCOL,
    CriteriaError,
    Param,
    build_protocol,
    format_number,
    load_protocol,
    names_in,
    parse_predicate,
    to_decimal,
)

PROTOCOL = load_protocol()

CRITERIA = [f"INCL{i:02d}" for i in range(1, 13)] + [f"EXCL{i:02d}" for i in range(1, 23)]
SUB_RULES = {
    "INCL02": ["SITE", "HISTOLOGY", "EXTENT", "HER2"],
    "INCL03": ["PROGRESSED", "ANTI_HER2", "CHEMO", "LINES"],
    "INCL07": ["ANC", "PLT", "HGB", "TBIL", "DBIL", "AST", "ALT", "ALB", "CRCL", "APTT", "COAG",
               "TRANSFUSION", "CYTOKINE"],
    "EXCL03": ["WASHOUT", "TCM"],
    "EXCL04": ["RECENT", "TOXICITY"],
    "EXCL05": ["RECENT", "PLANNED"],
    "EXCL09": ["AE", "NEUROPATHY"],
    "EXCL11": ["SBP", "DBP", "HF", "LVEF", "MI", "ANGINA", "ARRHYTHMIA", "QTCF", "OTHER"],
    "EXCL17": ["HBV", "HCV", "HIV", "SYPHILIS"],
}


# -- the shipped protocol ------------------------------------------------------------------------
def test_criterion_ids_in_protocol_order():
    assert [c.id for c in PROTOCOL.criteria] == CRITERIA
    assert [c.kind for c in PROTOCOL.criteria] == ["inclusion"] * 12 + ["exclusion"] * 22


def test_rule_ids():
    expected = []
    for cid in CRITERIA:
        expected += [f"{cid}.{s}" for s in SUB_RULES[cid]] if cid in SUB_RULES else [cid]
    assert PROTOCOL.rule_ids() == expected
    assert len(set(expected)) == len(expected) == 67  # dictionary version 2


def test_protocol_header():
    assert PROTOCOL.name == "KN026-001"
    assert PROTOCOL.registry == "NCT05427383"
    assert sorted(PROTOCOL.stages) == [1, 2]
    assert all(c.stages == (1, 2) for c in PROTOCOL.criteria)
    assert PROTOCOL.source == str(DEFAULT_PROTOCOL)


def test_every_criterion_has_its_protocol_text():
    for c in PROTOCOL.criteria:
        assert len(c.text) > 20 and "\n" not in c.text and "  " not in c.text, c.id


# Dictionary section 5 thresholds, as (rule, parameter, default).
DEFAULTS = [
    ("INCL01", "min_age", "18"),
    ("INCL03.LINES", "min_prior_lines", "1"),
    ("INCL03.LINES", "stage2_prior_lines", "1"),
    ("INCL04", "min_lesions", "1"),
    ("INCL05", "max_ecog", "1"),
    ("INCL06", "min_months", "3"),
    ("INCL07.ANC", "min", "1.5"),
    ("INCL07.PLT", "min", "90"),
    ("INCL07.HGB", "min", "90"),
    ("INCL07.TBIL", "max_x_uln", "1.5"),
    ("INCL07.TBIL", "default_uln", "21"),
    ("INCL07.DBIL", "max_x_uln", "1.0"),
    ("INCL07.DBIL", "default_uln", "6.8"),
    ("INCL07.AST", "max_x_uln", "2.5"),
    ("INCL07.AST", "max_x_uln_liver_mets", "5"),
    ("INCL07.AST", "default_uln", "40"),
    ("INCL07.ALT", "max_x_uln", "2.5"),
    ("INCL07.ALT", "max_x_uln_liver_mets", "5"),
    ("INCL07.ALT", "default_uln", "40"),
    ("INCL07.ALB", "min", "28"),
    ("INCL07.CRCL", "min", "30"),
    ("INCL07.APTT", "max_x_uln", "1.5"),
    ("INCL07.APTT", "default_uln", "40"),
    ("INCL07.COAG", "max_x_uln", "1.5"),
    ("INCL07.COAG", "inr_default_uln", "1.2"),
    ("INCL07.COAG", "pt_default_uln", "13.5"),
    ("INCL07.TRANSFUSION", "window_days", "14"),
    ("INCL07.CYTOKINE", "window_days", "7"),
    ("INCL08", "min", "50"),
    ("INCL09", "max_class", "1"),
    ("EXCL02", "window_days", "28"),
    ("EXCL03.WASHOUT", "washout_min_days", "14"),
    ("EXCL03.WASHOUT", "washout_max_days", "28"),
    ("EXCL03.WASHOUT", "washout_half_lives", "5"),
    ("EXCL03.TCM", "tcm_days", "14"),
    ("EXCL04.RECENT", "window_days", "14"),
    ("EXCL05.RECENT", "window_days", "28"),
    ("EXCL06", "max_dose", "320"),
    ("EXCL09.AE", "max_grade", "1"),
    ("EXCL09.NEUROPATHY", "max_grade", "1"),
    ("EXCL10", "excluded_grade", "2"),
    ("EXCL11.SBP", "max_sbp", "150"),
    ("EXCL11.DBP", "max_dbp", "100"),
    ("EXCL11.LVEF", "drop_with_low_nadir", "10"),
    ("EXCL11.LVEF", "low_nadir", "50"),
    ("EXCL11.LVEF", "drop_any", "15"),
    ("EXCL11.MI", "window_days", "183"),
    ("EXCL11.ANGINA", "window_days", "91"),
    ("EXCL11.ARRHYTHMIA", "window_days", "183"),
    ("EXCL11.QTCF", "max_male", "450"),
    ("EXCL11.QTCF", "max_female", "470"),
    ("EXCL14", "max_dose", "10"),
    ("EXCL20", "max_pct", "5"),
]


@pytest.mark.parametrize("rule_id, param, default", DEFAULTS, ids=[f"{r}.{p}" for r, p, _ in DEFAULTS])
def test_protocol_defaults_match_dictionary(rule_id, param, default):
    assert PROTOCOL.rule(rule_id).params[param].default == Decimal(default)


def test_every_parameter_is_listed_above():
    declared = {(r.id, p) for r in PROTOCOL.rules for p in r.params}
    assert declared == {(r, p) for r, p, _ in DEFAULTS}


@pytest.mark.parametrize("rule", PROTOCOL.rules, ids=lambda r: r.id)
def test_parameters_are_exact_and_in_range(rule):
    for p in rule.params.values():
        assert isinstance(p.default, Decimal)
        assert p.low is not None and p.high is not None and p.low <= p.default <= p.high, p.name
        assert p.unit, p.name


# Columns each rule needs (directly or through derived values), per dictionary section 5.
COLUMNS = [
    ("INCL01", 1, {"age_years"}),
    ("INCL02.HER2", 1, {"her2_ihc", "her2_ish"}),
    ("INCL03.CHEMO", 2, {"first_line_platinum", "first_line_fluoropyrimidine"}),
    ("INCL03.LINES", 2, {"prior_systemic_lines"}),
    ("INCL04", 1, {"measurable_lesions"}),
    ("INCL04", 2, {"measurable_lesions", "nonmeasurable_lesions"}),
    ("INCL07.AST", 1, {"ast_u_l", "ast_uln_u_l", "liver_metastases"}),
    ("INCL07.CRCL", 1, {"age_years", "weight_kg", "sex", "creatinine_umol_l", "creatinine_clearance_ml_min"}),
    ("INCL07.COAG", 1, {"inr", "inr_uln", "pt_s", "pt_uln_s"}),
    ("INCL10", 1, {"childbearing_potential", "contraception_agreed"}),
    ("EXCL03.WASHOUT", 1, {"days_since_anticancer_therapy", "last_anticancer_half_life_days",
                           "prior_systemic_lines"}),
    ("EXCL03.TCM", 1, {"days_since_antitumor_tcm"}),
    ("EXCL11.LVEF", 1, {"lvef_drop_on_anti_her2_pct", "lvef_nadir_on_anti_her2_pct"}),
    ("EXCL11.QTCF", 2, {"qtcf_ms", "qt_ms", "heart_rate_bpm", "sex"}),
    ("EXCL17.SYPHILIS", 1, {"syphilis_positive"}),
]


@pytest.mark.parametrize("rule_id, stage, columns", COLUMNS, ids=[f"{r}-{s}" for r, s, _ in COLUMNS])
def test_rule_columns(rule_id, stage, columns):
    assert PROTOCOL.rule(rule_id).columns[stage] == columns


def test_every_dictionary_column_used_by_some_rule():
    used = set().union(*(cols for r in PROTOCOL.rules for cols in r.columns.values()))
    unused = {c.name for c in schema.COLUMNS} - used
    assert unused == {"patient_id", "site_id", "country", "screening_date", "stale_columns"}


# Dictionary section 5, `requires`: the alternative column sets, one of which must be present.
REQUIRES = [
    ("INCL01", 1, [{"age_years"}]),
    ("INCL02.HER2", 1, [{"her2_ihc"}]),
    ("INCL03.PROGRESSED", 1, [{"progressed_on_prior"}]),
    ("INCL03.ANTI_HER2", 2, [{"first_line_anti_her2"}]),
    ("INCL03.CHEMO", 1, [{"first_line_platinum"}, {"first_line_fluoropyrimidine"}]),
    ("INCL03.LINES", 2, [{"prior_systemic_lines"}]),
    ("INCL04", 1, [{"measurable_lesions"}]),
    ("INCL04", 2, [{"measurable_lesions"}, {"nonmeasurable_lesions"}]),
    ("INCL07.TBIL", 1, [{"bilirubin_total_umol_l"}]),
    ("INCL07.DBIL", 1, [{"bilirubin_direct_umol_l"}]),
    ("INCL07.AST", 1, [{"ast_u_l"}]),
    ("INCL07.ALT", 2, [{"alt_u_l"}]),
    ("INCL07.CRCL", 1, [{"creatinine_clearance_ml_min"}, {"age_years", "weight_kg", "creatinine_umol_l"}]),
    ("INCL07.APTT", 1, [{"aptt_s"}]),
    ("INCL07.COAG", 1, [{"inr"}, {"pt_s"}]),
    ("INCL10", 1, [{"childbearing_potential"}, {"contraception_agreed"}]),
    ("EXCL03.WASHOUT", 1, [{"days_since_anticancer_therapy"}]),
    ("EXCL03.TCM", 1, [{"days_since_antitumor_tcm"}]),
    ("EXCL04.RECENT", 1, [{"days_since_radiotherapy"}]),
    ("EXCL04.TOXICITY", 1, [{"radiotherapy_toxicity_unresolved"}]),
    ("EXCL05.RECENT", 1, [{"days_since_major_surgery"}]),
    ("EXCL05.PLANNED", 1, [{"major_surgery_planned"}]),
    ("EXCL09.AE", 1, [{"unresolved_ae_grade"}]),
    ("EXCL09.NEUROPATHY", 1, [{"peripheral_neuropathy_grade"}]),
    ("EXCL11.SBP", 1, [{"sbp_mmhg"}]),
    ("EXCL11.DBP", 1, [{"dbp_mmhg"}]),
    ("EXCL11.LVEF", 1, [{"lvef_drop_on_anti_her2_pct"}]),
    ("EXCL11.QTCF", 2, [{"qtcf_ms"}, {"qt_ms", "heart_rate_bpm"}]),
    ("EXCL17.SYPHILIS", 1, [{"syphilis_positive"}]),
]


@pytest.mark.parametrize("rule_id, stage, sets", REQUIRES, ids=[f"{r}-{s}" for r, s, _ in REQUIRES])
def test_rule_requires(rule_id, stage, sets):
    assert [set(s) for s in PROTOCOL.rule(rule_id).requires[stage]] == sets


def test_rules_reading_one_column_require_it():
    """Section 5 "-": every rule not listed above requires its own single column."""
    listed = {r for r, _, _ in REQUIRES}
    for rule in PROTOCOL.rules:
        for stage in rule.stages:
            if rule.id not in listed and len(rule.columns[stage]) == 1:
                assert rule.requires[stage] == (rule.columns[stage],), rule.id


def test_only_the_washout_reads_a_record_as_unknown():
    assert {r.id: set(r.null_is_unknown) for r in PROTOCOL.rules if r.null_is_unknown} == {
        "EXCL03.WASHOUT": {"days_since_anticancer_therapy"}}


@pytest.mark.parametrize("doc_rule, message", [
    ({"id": "X01", "sql": "inr <= 1 OR pt_s <= 2"}, "declare `requires:`"),
    ({"id": "X01", "sql": "inr <= 1", "requires": [["pt_s"]]}, "does not read"),
    ({"id": "X01", "sql": "inr <= 1", "requires": "inr"}, "must be a list"),
    ({"id": "X01", "sql": "inr <= 1", "requires": {1: ["inr"]}}, "no entry for stage 2"),
    ({"id": "X01", "sql": "inr <= 1", "null_is_unknown": ["inr"]}, "record-based"),
])
def test_bad_requires_refused(doc_rule, message):
    doc = {"protocol": "T", "stages": {1: "one", 2: "two"},
           "criteria": [{"id": "X01", "kind": "inclusion", "text": "t", "rules": [doc_rule]}]}
    with pytest.raises(CriteriaError, match=re.escape(message)):
        build_protocol(doc)


@pytest.mark.parametrize("old", ["INCL03", "EXCL03", "EXCL04", "EXCL05", "EXCL09", "EXCL11.BP"])
def test_split_rule_ids_name_their_successors(old):
    with pytest.raises(CriteriaError, match=f"{re.escape(old)} is no longer a rule") as info:
        PROTOCOL.rule(old)
    for new in PROTOCOL.split[old]:
        assert new in str(info.value)


@pytest.mark.parametrize("rule_id, stage, text", [
    ("INCL01", 1, "age ≥ 18 years"),
    ("INCL03.LINES", 1, "≥ 1 prior line(s) for advanced disease"),
    ("INCL03.LINES", 2, "exactly 1 prior line(s) for advanced disease"),
    ("INCL07.ANC", 1, "ANC ≥ 1.5 ×10⁹/L"),
    ("INCL07.DBIL", 1, "direct bilirubin ≤ 1 × ULN (default ULN 6.8 µmol/L)"),
    ("INCL07.COAG", 2, "INR or PT ≤ 1.5 × ULN (default ULNs INR 1.2, PT 13.5 s)"),
    ("EXCL03.WASHOUT", 1, "no anti-tumour therapy within the washout (5 half-lives, between 14 and 28 "
                          "days); no date on record is unknown after a prior line"),
    ("EXCL03.TCM", 1, "no anti-tumour Chinese medicine within 14 days"),
    ("EXCL11.QTCF", 1, "QTcF ≤ 450 ms (male) / ≤ 470 ms (female)"),
])
def test_readable_rule_with_defaults(rule_id, stage, text):
    assert PROTOCOL.rule(rule_id).readable(stage) == text


def test_readable_rule_with_scenario_values():
    rule = PROTOCOL.rule("INCL07.COAG")
    assert rule.readable(1, {"max_x_uln": Decimal("2"), "inr_default_uln": Decimal("1.15")}) == \
        "INR or PT ≤ 2 × ULN (default ULNs INR 1.15, PT 13.5 s)"
    assert PROTOCOL.rule("INCL07.CRCL").readable(1, {"min": Decimal("50")}) == \
        "creatinine clearance (Cockcroft-Gault) ≥ 50 mL/min"


@pytest.mark.parametrize("rule", PROTOCOL.rules, ids=lambda r: r.id)
def test_every_template_fills_in(rule):
    for stage in rule.stages:
        text = rule.readable(stage)
        assert "{" not in text and "}" not in text and "1.7999" not in text


def test_derived_values():
    assert set(PROTOCOL.derived) == {"crcl_if_female", "crcl_if_male", "qtcf", "washout_days"}
    cols, params = names_in(parse_predicate(PROTOCOL.derived["washout_days"].sql, "washout_days"))
    assert cols == {"last_anticancer_half_life_days"}
    assert params == {"washout_min_days", "washout_max_days", "washout_half_lives"}


def test_unknown_ids():
    with pytest.raises(CriteriaError, match="unknown rule ID 'INCL99'"):
        PROTOCOL.rule("INCL99")
    with pytest.raises(CriteriaError, match="unknown criterion ID 'INCL07.ANC'"):
        PROTOCOL.criterion("INCL07.ANC")
    assert PROTOCOL.criterion("EXCL17").rules[1].id == "EXCL17.HCV"


def test_protocol_file_round_trips_through_build_protocol():
    doc = yaml.safe_load(DEFAULT_PROTOCOL.read_text(encoding="utf-8"))
    assert build_protocol(doc, source=str(DEFAULT_PROTOCOL)) == PROTOCOL


# -- numbers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, text", [
    (18, "18"), (Decimal("18.0"), "18"), (1.5, "1.5"), (Decimal("1.50"), "1.5"), (0.85, "0.85"),
    (Decimal("1E+2"), "100"), (Decimal("0.0000001"), "0.0000001"), (-100, "-100"), ("6.8", "6.8"),
    (1.5 * 1.2, "1.7999999999999998"),  # format_number never hides a binary product
    (Decimal("1.5") * Decimal("1.2"), "1.8"),
])
def test_format_number(value, text):
    assert format_number(value) == text


@pytest.mark.parametrize("value, expected", [
    (0.1, Decimal("0.1")), (1.2, Decimal("1.2")), (18, Decimal(18)), ("13.5", Decimal("13.5")),
    (" 7 ", Decimal(7)), (Decimal("2.5"), Decimal("2.5")),
])
def test_to_decimal(value, expected):
    assert to_decimal(value, "x") == expected


@pytest.mark.parametrize("value", [True, False, None, "abc", "", [1], {"a": 1}, float("nan"),
                                   float("inf"), "Infinity", "NaN"])
def test_to_decimal_rejects(value):
    with pytest.raises(CriteriaError, match=r"^x\.y: expected a"):
        to_decimal(value, "x.y")


@pytest.mark.parametrize("value, ok", [
    ("0", True), ("150", True), ("30", True), ("-0.0001", False), ("150.0001", False), (150, True), (151, False),
])
def test_param_range_is_inclusive(value, ok):
    p = Param("min", Decimal(30), "mL/min", Decimal(0), Decimal(150))
    if ok:
        assert p.check(value, "INCL07.CRCL") == Decimal(str(value))
    else:
        with pytest.raises(CriteriaError, match=r"INCL07\.CRCL\.min = .* outside the allowed range 0\.\.150 mL/min"):
            p.check(value, "INCL07.CRCL")


# -- broken protocol documents ---------------------------------------------------------------------
BASE = {
    "format": "kn026-criteria",
    "version": 1,
    "protocol": "TEST-1",
    "title": "test",
    "stages": {1: "one", 2: "two"},
    "derived": {"bmi_like": {"sql": "weight_kg / :scale", "label": "weight over scale"}},
    "criteria": [
        {"id": "INCL01", "kind": "inclusion", "text": "Adults.", "rules": [
            {"id": "INCL01", "label": "Adult", "rule": "age ≥ {min_age}", "sql": "age_years >= :min_age",
             "params": {"min_age": {"default": 18, "unit": "years", "min": 0, "max": 120}}},
        ]},
        {"id": "INCL02", "kind": "inclusion", "text": "Labs.", "rules": [
            {"id": "INCL02.ANC", "rule": "ANC ≥ {min}", "sql": "anc_1e9_l >= :min",
             "params": {"min": {"default": 1.5, "min": 0, "max": 10}}},
            {"id": "INCL02.BMI", "rule": "weight/{scale} ≥ 1", "sql": "bmi_like >= 1",
             "params": {"scale": {"default": 1, "min": 1, "max": 100}}},
        ]},
        {"id": "EXCL01", "kind": "exclusion", "text": "Brain.", "rules": [
            {"id": "EXCL01", "rule": "no active brain metastases",
             "sql": {1: "brain_metastases <> 'active'", 2: "brain_metastases = 'none'"}},
        ]},
    ],
}


def mutated(path, value=None, delete=False):
    """BASE with the item at `path` (a tuple of keys / indexes) replaced or deleted."""
    doc = copy.deepcopy(BASE)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    elif callable(value):
        node[path[-1]] = value(node[path[-1]])
    else:
        node[path[-1]] = value
    return doc


R_INCL01 = ("criteria", 0, "rules", 0)
R_ANC = ("criteria", 1, "rules", 0)

BROKEN = [
    # (name, document, message regex)
    ("unknown column", mutated(R_INCL01 + ("sql",), "age_yrs >= :min_age"),
     r"INCL01: 'age_yrs' is neither a dictionary column nor a derived value"),
    ("column case", mutated(R_INCL01 + ("sql",), "AGE_YEARS >= :min_age"), r"'AGE_YEARS' is neither"),
    ("unknown column in one stage", mutated(("criteria", 2, "rules", 0, "sql", 2), "brain_mets = 'none'"),
     r"EXCL01: 'brain_mets' is neither"),
    ("unknown column in derived", mutated(("derived", "bmi_like", "sql"), "weight / :scale"),
     r"derived bmi_like: unknown column\(s\) \['weight'\]"),
    ("derived shadows a column", mutated(("derived",), {"ecog": "1"}), r"'ecog' shadows a dictionary column"),
    ("undeclared parameter", mutated(R_INCL01 + ("sql",), "age_years >= :min_years"),
     r"INCL01: parameter\(s\) \['min_years'\] are used but not declared"),
    ("undeclared parameter of a derived value", mutated(("criteria", 1, "rules", 1, "params"), None),
     r"INCL02\.BMI: parameter\(s\) \['scale'\] are used but not declared"),
    ("template names undeclared parameter", mutated(R_INCL01 + ("rule",), "age ≥ {minimum_age}"),
     r"INCL01: readable rule mentions undeclared \{minimum_age\}"),
    ("template per stage names undeclared", mutated(R_ANC + ("rule",), {1: "ANC ≥ {min}", 2: "ANC ≥ {max}"}),
     r"INCL02\.ANC: readable rule mentions undeclared \{max\}"),
    ("duplicate criterion ID", mutated(("criteria",), lambda cs: cs + [copy.deepcopy(cs[0])]),
     r"duplicate ID INCL01"),
    ("duplicate sub-rule ID", mutated(("criteria", 1, "rules"), lambda rs: rs + [copy.deepcopy(rs[0])]),
     r"duplicate ID INCL02\.ANC"),
    ("duplicate rule reusing the criterion ID", mutated(("criteria", 0, "rules"),
                                                        lambda rs: rs + [copy.deepcopy(rs[0])]),
     r"duplicate ID INCL01"),
    ("criterion ID equal to another's sub-rule", mutated(("criteria",), lambda cs: cs + [
        {"id": "INCL02.ANC", "kind": "inclusion", "rules": [{"id": "INCL02.ANC", "sql": "ecog <= 1"}]}]),
     r"duplicate ID INCL02\.ANC"),
    ("rule ID outside its criterion", mutated(R_ANC + ("id",), "INCL03.ANC"),
     r"rule ID 'INCL03\.ANC' must be INCL02 or INCL02\.NAME"),
    ("malformed criterion ID", mutated(("criteria", 0, "id"), "incl01"), r"criterion ID 'incl01' must be capital letters"),
    ("missing criterion ID", mutated(("criteria", 0, "id"), delete=True), r"criterion ID '' must be capital letters"),
    ("bad SQL", mutated(R_INCL01 + ("sql",), "age_years >= "), r"INCL01: the SQL does not parse"),
    ("bad SQL: unclosed quote", mutated(("criteria", 2, "rules", 0, "sql", 1), "brain_metastases <> 'active"),
     r"EXCL01: the SQL does not parse"),
    ("bad SQL: unbalanced parenthesis", mutated(R_INCL01 + ("sql",), "(age_years >= :min_age"),
     r"INCL01: the SQL does not parse"),
    ("empty SQL", mutated(R_INCL01 + ("sql",), ""), r"INCL01: the SQL does not parse"),
    ("missing SQL", mutated(R_INCL01 + ("sql",), delete=True), r"INCL01 sql: expected text or a mapping"),
    ("two statements", mutated(R_INCL01 + ("sql",), "age_years >= :min_age; ecog <= 1"),
     r"INCL01: the SQL holds several statements"),
    ("a query, not a predicate", mutated(R_INCL01 + ("sql",), "SELECT age_years >= :min_age"),
     r"INCL01: the SQL must be one expression over cohort columns"),
    ("subquery over another table", mutated(R_INCL01 + ("sql",), "(SELECT count(*) FROM cohort) > :min_age"),
     r"without queries, tables or statements"),
    ("EXISTS subquery", mutated(R_INCL01 + ("sql",), "EXISTS (SELECT 1) AND age_years >= :min_age"),
     r"without queries, tables or statements"),
    ("a statement", mutated(R_INCL01 + ("sql",), "DROP TABLE cohort"), r"without queries, tables or statements"),
    ("bad derived SQL", mutated(("derived", "bmi_like", "sql"), "weight_kg / "), r"derived bmi_like: the SQL does not parse"),
    ("bad kind", mutated(("criteria", 0, "kind"), "include"),
     r"INCL01: kind must be one of \('inclusion', 'exclusion'\), not 'include'"),
    ("missing kind", mutated(("criteria", 0, "kind"), delete=True), r"INCL01: kind must be one of"),
    ("default outside range", mutated(R_INCL01 + ("params", "min_age", "default"), 121),
     r"INCL01\.min_age = 121 is outside the allowed range 0\.\.120 years"),
    ("default below range", mutated(R_ANC + ("params", "min", "default"), -0.5),
     r"INCL02\.ANC\.min = -0\.5 is outside the allowed range 0\.\.10"),
    ("default missing", mutated(R_INCL01 + ("params", "min_age", "default"), delete=True),
     r"INCL01\.min_age: expected a number, got None"),
    ("default not a number", mutated(R_INCL01 + ("params", "min_age", "default"), "eighteen"),
     r"INCL01\.min_age: expected a number, got 'eighteen'"),
    ("default boolean", mutated(R_INCL01 + ("params", "min_age", "default"), True),
     r"INCL01\.min_age: expected a number, got True"),
    ("bound not a number", mutated(R_INCL01 + ("params", "min_age", "max"), "lots"),
     r"INCL01\.min_age: expected a number, got 'lots'"),
    ("stage not in protocol", mutated(("criteria", 2, "rules", 0, "sql"), {3: "brain_metastases <> 'active'"}),
     r"EXCL01 sql: stage 3 must be one of \[1, 2\]"),
    ("stage key not a number", mutated(("criteria", 2, "rules", 0, "sql"), {"one": "ecog <= 1"}),
     r"EXCL01 sql: stage key 'one' is not a stage number"),
    ("criterion without rules", mutated(("criteria", 0, "rules"), []), r"INCL01: a criterion needs at least one rule"),
    ("no criteria key", mutated(("criteria",), delete=True), r"needs 'protocol', 'stages' and 'criteria'"),
    ("criteria not a list", mutated(("criteria",), {"INCL01": {}}), r"'criteria' must be a list of criteria"),
    ("criteria empty value", mutated(("criteria",), None), r"'criteria' must be a list"),
    ("criterion not a mapping", mutated(("criteria", 0), "INCL01"), r"'criteria' must be a list of criteria"),
    ("rule not a mapping", mutated(R_INCL01, "age_years >= 18"), r"INCL01: 'rules' must be a list of rules"),
    ("params not a mapping", mutated(R_INCL01 + ("params",), ["min_age"]), r"INCL01: 'params' must map"),
    ("stages not numbers", mutated(("stages",), {"first": "x"}), r"'stages' must map stage numbers"),
    ("derived not a mapping", mutated(("derived",), ["x"]), r"'derived' must map names to SQL"),
]


def test_no_rule_ceiling():
    """Masks of any width (dictionary v2 has 67 rules): 200 rules load."""
    doc = yaml.safe_load(DEFAULT_PROTOCOL.read_text(encoding="utf-8"))
    doc["criteria"][1]["rules"] += [{"id": f"INCL02.X{i}", "sql": "ecog <= 1"} for i in range(133)]
    assert len(build_protocol(doc).rules) == 200


@pytest.mark.parametrize("doc, message", [(d, m) for _, d, m in BROKEN], ids=[n for n, _, _ in BROKEN])
def test_broken_protocol_rejected(doc, message):
    with pytest.raises(CriteriaError, match=message):
        build_protocol(doc)


@pytest.mark.parametrize("doc", [None, [], "criteria", 5])
def test_protocol_document_not_a_mapping(doc):
    with pytest.raises(CriteriaError, match="a protocol file needs"):
        build_protocol(doc)


def test_base_document_is_valid():
    p = build_protocol(copy.deepcopy(BASE))
    assert p.rule_ids() == ["INCL01", "INCL02.ANC", "INCL02.BMI", "EXCL01"]
    assert p.rule("INCL02.BMI").columns == {1: {"weight_kg"}, 2: {"weight_kg"}}
    assert p.rule("EXCL01").sql == {1: "brain_metastases <> 'active'", 2: "brain_metastases = 'none'"}
    assert p.rule("INCL01").template == {1: "age ≥ {min_age}", 2: "age ≥ {min_age}"}
    assert p.rule("INCL02.ANC").params["min"].default == Decimal("1.5")  # the float's shortest text


def _single_stage():
    doc = mutated(("stages",), delete=True)
    doc["criteria"][2]["rules"][0]["sql"] = "brain_metastases <> 'active'"
    return doc


VALID = [
    ("rule ID equal to its criterion with sub-rules", mutated(("criteria", 1, "rules"), lambda rs: rs + [
        {"id": "INCL02", "sql": "ecog <= 1"}])),
    ("stage-only rule", mutated(("criteria", 2, "rules", 0, "sql"), {2: "brain_metastases <> 'active'"})),
    ("parameter given as a bare default", mutated(R_INCL01 + ("params",), {"min_age": 18})),
    ("default equal to both bounds", mutated(R_INCL01 + ("params", "min_age"),
                                             {"default": 18, "min": 18, "max": 18})),
    ("no stages: a single stage", _single_stage()),
    ("flag predicate", mutated(R_INCL01, {"id": "INCL01", "sql": "consent_signed"})),
    ("IN list and CASE", mutated(R_INCL01, {
        "id": "INCL01", "sql": "CASE WHEN sex = 'F' THEN age_years >= :min_age ELSE ecog IN (0, 1) END",
        "requires": [["age_years", "ecog"]], "params": {"min_age": 18}})),
    ("exactly 64 rules", mutated(("criteria", 1, "rules"), lambda rs: rs + [
        {"id": f"INCL02.X{i}", "sql": "ecog <= 1"} for i in range(60)])),
    ("more than 64 rules (no ceiling)", mutated(("criteria", 1, "rules"), lambda rs: rs + [
        {"id": f"INCL02.X{i}", "sql": "ecog <= 1"} for i in range(200)])),
]


@pytest.mark.parametrize("doc", [d for _, d in VALID], ids=[n for n, _ in VALID])
def test_valid_variants_accepted(doc):
    build_protocol(doc)


def test_stage_only_rule_has_only_that_stage():
    doc = mutated(("criteria", 2, "rules", 0, "sql"), {2: "brain_metastases <> 'active'"})
    p = build_protocol(doc)
    assert p.rule("EXCL01").stages == (2,) and p.criterion("EXCL01").stages == (2,)


def test_load_protocol_errors(tmp_path):
    with pytest.raises(CriteriaError, match="cannot read protocol file .*nope.yaml"):
        load_protocol(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("criteria: [\n", encoding="utf-8")
    with pytest.raises(CriteriaError, match="bad.yaml is not valid YAML"):
        load_protocol(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(mutated(R_INCL01 + ("sql",), "agee >= 1")), encoding="utf-8")
    with pytest.raises(CriteriaError, match="'agee' is neither"):
        load_protocol(broken)


@pytest.mark.parametrize("head, message", [
    ({}, "is not a criteria file: it must start with `format: kn026-criteria`"),
    ({"format": "something-else", "version": 1}, "is not a criteria file"),
    ({"format": "kn026-criteria"}, "format version None is not one this program reads"),
    ({"format": "kn026-criteria", "version": 7}, "format version 7 is not one this program reads"),
])
def test_a_file_without_this_format_and_a_known_version_is_refused(tmp_path, head, message):
    doc = {k: v for k, v in copy.deepcopy(BASE).items() if k not in ("format", "version")} | head
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(CriteriaError, match=re.escape(message)):
        load_protocol(path)
    path.write_text(yaml.safe_dump(copy.deepcopy(BASE), allow_unicode=True), encoding="utf-8")
    assert load_protocol(path).version == 1


def test_shipped_file_declares_its_presentation():
    """Measures, category charts, labels, examples and the target come from the file."""
    assert PROTOCOL.version == 1
    assert {m.rule for m in PROTOCOL.measures} <= set(PROTOCOL.rule_ids())
    assert all(p in PROTOCOL.rule(m.rule).params for m in PROTOCOL.measures for p, _ in m.limits)
    assert [c.rule for c in PROTOCOL.categories] == ["INCL02.HER2"]
    assert PROTOCOL.param_label("max_ecog") == "Highest ECOG" and PROTOCOL.param_label("a_b") == "A b"
    assert PROTOCOL.examples.replace[0] == "INCL07.CRCL" and len(PROTOCOL.examples.filters) == 3
    e = PROTOCOL.enrollment
    assert (e.target, e.scope) == (286, "whole study")
    assert e.text() == "286 patients (whole study, KN026-001 estimated enrollment)"
    assert e.text(0.4) == "114 patients (40 % of 286, whole study, KN026-001 estimated enrollment)"


@pytest.mark.parametrize("section, value, message", [
    ("measures", [{"key": "age", "rule": "INCL09", "expression": "age_years", "passes": "ge"}], "unknown rule ID"),
    ("measures", [{"key": "age", "rule": "INCL01", "expression": "agee", "passes": "ge"}], "neither a dictionary"),
    ("measures", [{"key": "age", "rule": "INCL01", "expression": "age_years", "passes": "up"}], "`passes` must be"),
    ("measures", [{"key": "age", "rule": "INCL01", "expression": "age_years", "passes": "ge",
                   "limits": [{"param": "nope", "label": "≥ {v}"}]}], "each limit needs `param`"),
    ("measures", [{"key": "age", "rule": "INCL01", "expression": "age_years / :other", "passes": "ge"}],
     "parameter(s) other are not parameters of its rule"),
    ("categories", [{"rule": "INCL01", "groups": [{"label": "a", "when": "(SELECT 1)"}]}], "must be one expression"),
    ("categories", [{"rule": "INCL01", "groups": []}], "list the `groups`"),
    ("parameter_labels", {"min_ag": "x"}, "min_ag is no rule's parameter"),
    ("examples", {"filters": [{"status": "fails", "target": "INCL99"}]}, "examples.filters"),
    ("examples", {"replace": {"rule": "INCL01", "sql": "DROP TABLE x"}}, "must be one expression"),
    ("enrollment", {"target": "286"}, "`target` must be a whole number"),
    ("enrollment", {"target": 0}, "`target` must be a whole number"),
])
def test_bad_presentation_sections_refused(section, value, message):
    doc = copy.deepcopy(BASE)
    doc[section] = value
    with pytest.raises(CriteriaError, match=re.escape(message)):
        build_protocol(doc)


def test_parse_predicate_names():
    cols, params = names_in(parse_predicate("inr <= :x * COALESCE(inr_uln, :d) OR pt_s IS NULL", "r"))
    assert cols == {"inr", "inr_uln", "pt_s"} and params == {"x", "d"}


# -- time windows (kn026/core/windows.py; dictionary section 1) ---------------------------------------------------
SHIPPED = yaml.safe_load(DEFAULT_PROTOCOL.read_text(encoding="utf-8"))
INCL07_LABS = ["anc_1e9_l", "platelets_1e9_l", "hemoglobin_g_l", "bilirubin_total_umol_l",
               "bilirubin_direct_umol_l", "ast_u_l", "alt_u_l", "albumin_g_l", "creatinine_umol_l",
               "creatinine_clearance_ml_min", "aptt_s", "inr", "pt_s"]


def test_incl07_labs_count_within_7_days_both_ends():
    w = PROTOCOL.windows
    for col in INCL07_LABS:
        assert w.assessment_days(col) == 7 and w.assessment[col].basis == "INCL07", col
        assert [w.window(col).covers(d) for d in (-1, 0, 7, 8)] == [False, True, True, False], col
    # a ULN comes from its value's record: same window; weight feeds INCL07.CRCL's Cockcroft-Gault
    assert w.assessment_days("ast_uln_u_l") == 7 and w.assessment_days("inr_uln") == 7
    assert w.assessment_days("weight_kg") == 7


def test_every_assessed_column_a_rule_reads_has_a_window():
    read = {c for r in PROTOCOL.rules for cols in r.columns.values() for c in cols}
    assert read & schema.ASSESSED == set(PROTOCOL.windows.assessment)
    for col in ("ecog", "lvef_pct", "sbp_mmhg", "dbp_mmhg", "qt_ms", "qtcf_ms", "heart_rate_bpm"):
        assert PROTOCOL.windows.assessment_days(col) == 28
        assert PROTOCOL.windows.assessment[col].basis.startswith("default:"), col
    assert PROTOCOL.windows.assessment_days("measurable_lesions") == 28
    assert PROTOCOL.windows.assessment_days("age_years") is None  # not a measurement with a window


def test_event_lookbacks_never_shorter_than_any_window_a_scenario_can_set():
    w = PROTOCOL.windows
    assert set(w.events) == schema.EVENTS  # every record-based column, all read by KN026-001
    expected = {"days_since_transfusion": ("INCL07.TRANSFUSION", "window_days"),
                "days_since_growth_factor": ("INCL07.CYTOKINE", "window_days"),
                "days_since_investigational_drug": ("EXCL02", "window_days"),
                "days_since_antitumor_tcm": ("EXCL03.TCM", "tcm_days"),
                "days_since_radiotherapy": ("EXCL04.RECENT", "window_days"),
                "days_since_major_surgery": ("EXCL05.RECENT", "window_days"),
                "days_since_myocardial_infarction": ("EXCL11.MI", "window_days"),
                "days_since_angina": ("EXCL11.ANGINA", "window_days"),
                "days_since_arrhythmia_therapy": ("EXCL11.ARRHYTHMIA", "window_days")}
    for col, (rid, param) in expected.items():
        p = PROTOCOL.rule(rid).params[param]
        assert w.lookback_days(col) == int(p.high) >= int(p.default), col
        assert rid in w.events[col].basis
    assert (w.lookback_days("days_since_transfusion"), w.lookback_days("days_since_myocardial_infarction")) == (365, 3650)
    # EXCL03.WASHOUT reads a missing date as unknown: search the whole record
    assert w.lookback_days("days_since_anticancer_therapy") is None
    assert "EXCL03.WASHOUT" in w.events["days_since_anticancer_therapy"].basis
    assert w.lookback_days("anthracycline_doxorubicin_eq_mg_m2") is None  # cumulative
    assert w.lookback_days("corticosteroid_prednisone_eq_mg_day") == 14


def test_derived_lookback_follows_the_parameter_range():
    doc = copy.deepcopy(SHIPPED)
    rule = next(r for c in doc["criteria"] for r in c["rules"] if r["id"] == "EXCL11.MI")
    rule["params"]["window_days"]["max"] = 400
    assert build_protocol(doc).windows.lookback_days("days_since_myocardial_infarction") == 400


def test_lookback_override_changes_assessment_windows_only():
    w = PROTOCOL.windows.with_assessment_days(30)
    assert {x.days for x in w.assessment.values()} == {30} and set(w.assessment) == schema.ASSESSED
    assert w.events == PROTOCOL.windows.events
    assert PROTOCOL.windows.with_assessment_days(None) is PROTOCOL.windows
    with pytest.raises(ValueError, match="whole number of days >= 0"):
        PROTOCOL.windows.with_assessment_days(-1)


def test_no_windows_section_derives_event_lookbacks_only():
    p = build_protocol(copy.deepcopy(BASE))  # reads anc_1e9_l, weight_kg: no assessment window declared
    assert p.windows.assessment == {} and p.windows.assessment_days("anc_1e9_l") is None
    doc = copy.deepcopy(BASE)
    doc["criteria"][2]["rules"].append({"id": "EXCL01.MI", "sql": "NOT (days_since_myocardial_infarction < :d)",
                                        "params": {"d": {"default": 183, "unit": "days", "min": 0, "max": 999}}})
    assert build_protocol(doc).windows.lookback_days("days_since_myocardial_infarction") == 999


def _windows(change):
    doc = copy.deepcopy(SHIPPED)
    change(doc["windows"])
    return doc


def _group(doc_windows, days):
    return next(g for g in doc_windows["assessment"] if g["days"] == days)


def _move(col, days):
    def change(w):
        for g in w["assessment"]:
            if col in g["columns"]:
                g["columns"].remove(col)
        _group(w, days)["columns"].append(col)
    return change


BROKEN_WINDOWS = [
    ("assessed column without a window", _windows(lambda w: _group(w, 7)["columns"].remove("hemoglobin_g_l")),
     r"windows\.assessment: hemoglobin_g_l \(read by INCL07\.HGB\) has no assessment window; add it to a group"),
    ("lab outside its criterion's window", _windows(_move("creatinine_umol_l", 28)),
     r"creatinine_umol_l is read by INCL07\.CRCL, whose results count within 7 days \(INCL07\), but its window "
     r"is 28 days; move creatinine_umol_l to the 7-day group"),
    ("CrCl input outside the window", _windows(_move("weight_kg", 28)), r"weight_kg is read by INCL07\.CRCL"),
    ("ULN listed", _windows(lambda w: _group(w, 7)["columns"].append("ast_uln_u_l")),
     r"ast_uln_u_l comes from the same record as ast_u_l and shares its window; list ast_u_l instead"),
    ("event column as assessment", _windows(lambda w: _group(w, 7)["columns"].append("days_since_transfusion")),
     r"days_since_transfusion is an event column: give it a look-back under windows\.events"),
    ("static column as assessment", _windows(lambda w: _group(w, 7)["columns"].append("age_years")),
     r"age_years is not a measurement taken at screening"),
    ("unknown column", _windows(lambda w: _group(w, 7)["columns"].append("hb")), r"'hb' is not a dictionary column"),
    ("column twice", _windows(lambda w: w["assessment"][-1]["columns"].append("inr")),
     r"inr already has a window \(7 days\); list it once"),
    ("negative days", _windows(lambda w: _group(w, 7).update(days=-7)), r"days = -7: give a whole number of days"),
    ("days as text", _windows(lambda w: _group(w, 7).update(days="7d")), r"days = '7d': give a whole number"),
    ("days boolean", _windows(lambda w: _group(w, 7).update(days=True)), r"days = True: give a whole number"),
    ("no basis", _windows(lambda w: _group(w, 7).pop("basis")), r"say where the 7-day window comes from in `basis`"),
    ("group key typo", _windows(lambda w: _group(w, 7).update(colums=[])), r"give days, basis and columns"),
    ("windows key typo", _windows(lambda w: w.update(event={})), r"'windows' must be a mapping with 'assessment'"),
    ("look-back shorter than the window", _windows(lambda w: w["events"].update(days_since_transfusion=14)),
     r"windows\.events\.days_since_transfusion: a look-back of 14 days is shorter than the window the rules can "
     r"set \(.*INCL07\.TRANSFUSION window_days up to 365 days\); give at least 365 days, or derived"),
    ("washout look-back not the whole record",
     _windows(lambda w: w["events"].update(days_since_anticancer_therapy={"days": 5000, "basis": "x"})),
     r"days_since_anticancer_therapy: a look-back of 5000 days .*give the whole record \(all\)"),
    ("dose look-back not derivable", _windows(lambda w: w["events"].update(corticosteroid_prednisone_eq_mg_day="derived")),
     r"corticosteroid_prednisone_eq_mg_day: no look-back can be derived .*give the number of days, or all"),
    ("dose without look-back", _windows(lambda w: w["events"].pop("anthracycline_doxorubicin_eq_mg_m2")),
     r"windows\.events: anthracycline_doxorubicin_eq_mg_m2 \(read by EXCL06\) has no look-back and none can be "
     r"derived"),
    ("look-back in days without basis",
     _windows(lambda w: w["events"].update(corticosteroid_prednisone_eq_mg_day=14)),
     r"corticosteroid_prednisone_eq_mg_day: say where the 14-day look-back comes from"),
    ("look-back not a number", _windows(lambda w: w["events"].update(days_since_angina="6 months")),
     r"windows\.events\.days_since_angina = '6 months': give derived, all, or a whole number"),
    ("assessed column as event", _windows(lambda w: w["events"].update(hemoglobin_g_l="derived")),
     r"hemoglobin_g_l is not an event \(record-based\) column; give it an assessment window"),
]


@pytest.mark.parametrize("doc, message", [(d, m) for _, d, m in BROKEN_WINDOWS],
                         ids=[n for n, _, _ in BROKEN_WINDOWS])
def test_broken_windows_rejected(doc, message):
    with pytest.raises(CriteriaError, match=message):
        build_protocol(doc)


def test_explicit_lookbacks_at_least_the_derived_one_accepted():
    doc = _windows(lambda w: w["events"].update(days_since_transfusion={"days": 400, "basis": "site policy"},
                                                days_since_angina="all"))
    w = build_protocol(doc).windows
    assert w.lookback_days("days_since_transfusion") == 400 and w.lookback_days("days_since_angina") is None
