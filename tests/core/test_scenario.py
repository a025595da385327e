"""Scenarios (kn026/core/scenario.py): YAML round trip, validation, the shipped CrCl-50 file."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kn026.core import analysis
from kn026.core.criteria import CriteriaError, load_protocol
from kn026.core.engine import Engine
from kn026.core.scenario import Scenario, load_scenario, parse_scenario
from kn026.ingest.cohort import load_cohort

PROTOCOL = load_protocol()
ROOT = Path(__file__).resolve().parents[2]
CRCL50 = ROOT / "data" / "scenario_crcl50.yaml"
FIXTURE = Path(__file__).parents[1] / "fixtures" / "cli_cohort.csv"


# -- the shipped scenario ---------------------------------------------------------------------------
def test_crcl50_file_loads():
    s = load_scenario(CRCL50, PROTOCOL)
    assert s.name == "Creatinine clearance >= 50 mL/min (other registry version)"
    assert s.overrides == {"INCL07.CRCL": {"min": Decimal(50)}}
    assert s.disabled == frozenset() and s.order == () and not s.is_protocol
    assert s.changes(PROTOCOL) == ["INCL07.CRCL min: 30 -> 50 mL/min"]
    assert PROTOCOL.rule("INCL07.CRCL").readable(1, s.overrides["INCL07.CRCL"]) == \
        "creatinine clearance (Cockcroft-Gault) ≥ 50 mL/min"


def test_crcl50_changes_the_screening():
    s = load_scenario(CRCL50, PROTOCOL)
    engine = Engine(load_cohort(FIXTURE), PROTOCOL, 1)
    log = engine.con.execute(analysis.screen_log_sql(engine, s)).df().set_index("patient_id")
    base = engine.con.execute(analysis.screen_log_sql(engine)).df().set_index("patient_id")
    assert base.loc["P03", "INCL07.CRCL"] == "pass" and base.loc["P03", "eligible"] == "yes"  # CrCl 40
    assert log.loc["P03", "INCL07.CRCL"] == "fail" and log.loc["P03", "INCL07"] == "fail"
    assert log.loc["P03", "eligible"] == "no"
    changed = (log != base).any(axis=1)
    assert list(changed[changed].index) == ["P03"]  # nobody else moves (P01: CrCl 81.8)


# -- round trip ------------------------------------------------------------------------------------
EXAMPLES = [
    Scenario(),
    Scenario("CrCl 50", overrides={"INCL07.CRCL": {"min": Decimal(50)}}),
    Scenario("Looser labs", "ANC 1.0, INR ULN 1.15: a what-if",
             {"INCL07.ANC": {"min": Decimal("1.0")},
              "INCL07.COAG": {"max_x_uln": Decimal("2"), "inr_default_uln": Decimal("1.15")}}),
    Scenario("Off", disabled=frozenset({"EXCL22", "INCL07.ANC", "EXCL17.HIV"})),
    Scenario("Reordered", order=("EXCL01", "INCL05", "INCL01")),
    Scenario("Unicode: ≥ µmol/L — ok", "line one\nline two: with colon", {"EXCL11.QTCF": {"max_male": Decimal(460)}},
             frozenset({"INCL12"}), ("INCL12", "INCL11")),
    Scenario("Edges", overrides={"INCL01": {"min_age": Decimal(0)}, "INCL07.DBIL": {"max_x_uln": Decimal(10)},
                                 "EXCL11.LVEF": {"low_nadir": Decimal("49.5")}}),
]


@pytest.mark.parametrize("scenario", EXAMPLES, ids=lambda s: s.name)
def test_yaml_round_trip(scenario):
    text = scenario.to_yaml(PROTOCOL)
    back = parse_scenario(text, PROTOCOL)
    assert back == scenario.validate(PROTOCOL)
    assert back.to_yaml(PROTOCOL) == text
    doc = yaml.safe_load(text)
    assert doc["protocol"] == "KN026-001" and doc["scenario"] == scenario.name


def test_yaml_layout():
    s = Scenario("Looser labs", "what if", {"INCL07.COAG": {"inr_default_uln": Decimal("1.15")}},
                 frozenset({"EXCL22", "EXCL01"}), ("EXCL01",))
    assert s.to_yaml(PROTOCOL) == (
        "scenario: Looser labs\n"
        "protocol: KN026-001\n"
        "description: what if\n"
        "parameters:\n"
        "  INCL07.COAG:\n"
        "    inr_default_uln: 1.15\n"
        "disabled:\n"
        "- EXCL01\n"
        "- EXCL22\n"
        "order:\n"
        "- EXCL01\n")


@pytest.mark.parametrize("name", ["0\x850", "a\u2028b", "c\u2029d", "tab\there", "≥ 50 µmol/L"])
def test_round_trip_of_awkward_names(name):
    s = Scenario(name, name)
    assert parse_scenario(s.to_yaml(PROTOCOL), PROTOCOL) == s


def test_yaml_without_protocol_name():
    text = Scenario("x").to_yaml()
    assert "protocol" not in yaml.safe_load(text)
    assert parse_scenario(text, PROTOCOL) == Scenario("x")


def test_save_and_load_file(tmp_path):
    s = EXAMPLES[2]
    path = tmp_path / "looser.yaml"
    path.write_text(s.to_yaml(PROTOCOL), encoding="utf-8")
    assert load_scenario(path, PROTOCOL) == s


def _param_values(rule_id):
    """A strategy of {param: Decimal in range, up to 3 decimals} for one rule."""
    rule = PROTOCOL.rule(rule_id)
    items = {}
    for name, p in rule.params.items():
        items[name] = st.decimals(min_value=p.low, max_value=p.high, places=3, allow_nan=False,
                                  allow_infinity=False)
    return st.fixed_dictionaries({}, optional=items)


RULES_WITH_PARAMS = [r.id for r in PROTOCOL.rules if r.params]
ALL_IDS = [c.id for c in PROTOCOL.criteria] + PROTOCOL.rule_ids()


@st.composite
def scenarios(draw):
    chosen = draw(st.lists(st.sampled_from(RULES_WITH_PARAMS), unique=True, max_size=6))
    overrides = {rid: draw(_param_values(rid)) for rid in chosen}
    disabled = draw(st.frozensets(st.sampled_from(sorted(set(ALL_IDS)))))
    order = tuple(draw(st.permutations([c.id for c in PROTOCOL.criteria]))[:draw(st.integers(0, 34))])
    name = draw(st.text(min_size=1, max_size=30).filter(lambda t: t.strip() == t and t))
    return Scenario(name, draw(st.text(max_size=40)), overrides, disabled, order)


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_round_trip_property(scenario):
    scenario = scenario.validate(PROTOCOL)
    back = parse_scenario(scenario.to_yaml(PROTOCOL), PROTOCOL)
    assert back.overrides == scenario.overrides  # exact decimals, not floats
    assert back == Scenario(back.name, back.description, scenario.overrides, scenario.disabled, scenario.order)
    assert back.name == scenario.name


@pytest.mark.parametrize("value, exact", [
    (50, Decimal(50)), ("50", Decimal(50)), (50.0, Decimal(50)), (1.15, Decimal("1.15")), ("1.15", Decimal("1.15")),
    (0.1, Decimal("0.1")), ("0", Decimal(0)),
])
def test_values_become_exact_decimals(value, exact):
    s = Scenario("x", overrides={"INCL07.CRCL": {"min": value}}).validate(PROTOCOL)
    assert s.overrides["INCL07.CRCL"]["min"] == exact and isinstance(s.overrides["INCL07.CRCL"]["min"], Decimal)


def test_changes_lists_only_real_differences():
    s = Scenario("x", overrides={"INCL07.CRCL": {"min": 30}, "INCL01": {"min_age": 21}},
                 disabled=frozenset({"EXCL22"})).validate(PROTOCOL)
    assert s.changes(PROTOCOL) == ["INCL01 min_age: 18 -> 21 years", "EXCL22 disabled"]
    assert Scenario().is_protocol and Scenario().changes(PROTOCOL) == []


# -- validation ------------------------------------------------------------------------------------
INVALID = [
    # (name, YAML text, message regex)
    ("unknown rule ID", "parameters:\n  INCL99:\n    min: 1\n", r"unknown rule ID 'INCL99'"),
    ("criterion ID where a rule is needed", "parameters:\n  INCL07:\n    min: 50\n", r"unknown rule ID 'INCL07'"),
    ("lower-case rule ID", "parameters:\n  incl07.crcl:\n    min: 50\n", r"unknown rule ID 'incl07.crcl'"),
    ("unknown parameter", "parameters:\n  INCL07.CRCL:\n    minimum: 50\n",
     r"INCL07\.CRCL has no parameter 'minimum'; its parameters: min"),
    ("parameter of a rule without any", "parameters:\n  EXCL22:\n    x: 1\n", r"EXCL22 has no parameter 'x'; its parameters: none"),
    ("value above range", "parameters:\n  INCL07.CRCL:\n    min: 151\n",
     r"INCL07\.CRCL\.min = 151 is outside the allowed range 0\.\.150 mL/min"),
    ("value below range", "parameters:\n  EXCL11.SBP:\n    max_sbp: 79\n", r"EXCL11\.SBP\.max_sbp = 79 is outside .*80\.\.250"),
    ("value just above range", "parameters:\n  INCL07.ANC:\n    min: 10.001\n", r"INCL07\.ANC\.min = 10\.001 is outside"),
    ("value not a number", "parameters:\n  INCL07.CRCL:\n    min: fifty\n", r"INCL07\.CRCL\.min: expected a number, got 'fifty'"),
    ("value boolean", "parameters:\n  INCL07.CRCL:\n    min: yes\n", r"expected a number, got True"),
    ("value empty", "parameters:\n  INCL07.CRCL:\n    min:\n", r"expected a number, got None"),
    ("value NaN", "parameters:\n  INCL07.CRCL:\n    min: .nan\n", r"expected a finite number"),
    ("value a list", "parameters:\n  INCL07.CRCL:\n    min: [50]\n", r"expected a number, got \[50\]"),
    ("rule values not a mapping", "parameters:\n  INCL07.CRCL: 50\n", r"INCL07\.CRCL needs a mapping of parameter: value"),
    ("parameters not a mapping", "parameters: [INCL07.CRCL]\n", r"'parameters' must map rule IDs"),
    ("wrong protocol", "protocol: KN099-002\n", r"is for protocol 'KN099-002', not 'KN026-001'"),
    ("unknown key", "scenario: x\nparams:\n  INCL07.CRCL: {min: 50}\n",
     r"unknown key\(s\) \['params'\]; allowed: \['custom', 'description', 'disabled', 'order', 'parameters', 'protocol', 'replace', 'scenario'\]"),
    ("several unknown keys", "scenario: x\nfoo: 1\nbar: 2\n", r"unknown key\(s\) \['bar', 'foo'\]"),
    ("unknown disabled ID", "disabled: [EXCL23]\n", r"unknown criterion ID 'EXCL23'"),
    ("disabled not a list", "disabled: EXCL22\n", r"'disabled' and 'order' must be lists"),
    ("unknown order ID", "order: [INCL01, INCL13]\n", r"unknown criterion ID 'INCL13'"),
    ("order lists a sub-rule", "order: [INCL07.ANC]\n", r"'order' lists criteria, not sub-rules; use INCL07"),
    ("order repeats an ID", "order: [INCL05, INCL01, INCL05]\n", r"'order' lists INCL05 more than once"),
    ("order not a list", "order: INCL01\n", r"'disabled' and 'order' must be lists"),
    ("not YAML", "parameters: [\n", r"is not valid YAML"),
    ("not a mapping", "- INCL01\n", r"expected a mapping with 'scenario', 'parameters', 'disabled'"),
    ("empty document", "", r"expected a mapping"),
    # rule IDs split by dictionary version 2: refused naming the new IDs and their parameters
    ("split INCL03 override", "parameters:\n  INCL03:\n    min_prior_lines: 2\n",
     r"INCL03 is no longer a rule of KN026-001: it was split into INCL03\.PROGRESSED, INCL03\.ANTI_HER2, "
     r"INCL03\.CHEMO, INCL03\.LINES \(min_prior_lines, stage2_prior_lines\)"),
    ("split EXCL03 override", "parameters:\n  EXCL03:\n    tcm_days: 7\n",
     r"EXCL03\.WASHOUT \(washout_min_days, washout_max_days, washout_half_lives\), EXCL03\.TCM \(tcm_days\)"),
    ("split EXCL04 override", "parameters:\n  EXCL04:\n    window_days: 7\n", r"EXCL04\.RECENT \(window_days\), EXCL04\.TOXICITY"),
    ("split EXCL05 override", "parameters:\n  EXCL05:\n    window_days: 7\n", r"EXCL05\.RECENT \(window_days\), EXCL05\.PLANNED"),
    ("split EXCL09 override", "parameters:\n  EXCL09:\n    max_grade: 2\n",
     r"EXCL09\.AE \(max_grade\), EXCL09\.NEUROPATHY \(max_grade\)"),
    ("split EXCL11.BP override", "parameters:\n  EXCL11.BP:\n    max_sbp: 160\n",
     r"EXCL11\.BP is no longer a rule .* EXCL11\.SBP \(max_sbp\), EXCL11\.DBP \(max_dbp\)"),
    ("split EXCL11.BP disabled", "disabled: [EXCL11.BP]\n", r"EXCL11\.BP is no longer a rule .* EXCL11\.SBP"),
]


def test_disabling_a_split_criterion_disables_all_its_parts():
    """A criterion ID (EXCL03) is still a criterion: disabling it keeps its old meaning."""
    s = parse_scenario("disabled: [INCL03, EXCL03, EXCL04, EXCL05, EXCL09]\n", PROTOCOL)
    assert s.disabled == {"INCL03", "EXCL03", "EXCL04", "EXCL05", "EXCL09"}


@pytest.mark.parametrize("text, message", [(t, m) for _, t, m in INVALID], ids=[n for n, _, _ in INVALID])
def test_invalid_scenarios_rejected(text, message):
    with pytest.raises(CriteriaError, match=message):
        parse_scenario(text, PROTOCOL)


@pytest.mark.parametrize("text", [
    "scenario: x\n",
    "scenario: x\nprotocol: KN026-001\nparameters: {}\ndisabled: []\norder: []\n",
    "parameters:\n  INCL07.CRCL:\n    min: 150\n",  # upper bound itself
    "parameters:\n  INCL07.CRCL:\n    min: 0\n",
    "disabled: [INCL07, INCL07.ANC]\n",  # a criterion and a sub-rule
    "order: [EXCL22]\n",  # a partial order keeps the rest
])
def test_valid_scenarios_accepted(text):
    parse_scenario(text, PROTOCOL)


def test_scenario_name_defaults_to_file_stem(tmp_path):
    path = tmp_path / "my_what_if.yaml"
    path.write_text("parameters:\n  INCL01:\n    min_age: 20\n", encoding="utf-8")
    assert load_scenario(path, PROTOCOL).name == "my_what_if"


def test_load_scenario_missing_file(tmp_path):
    with pytest.raises(CriteriaError, match="cannot read scenario file .*nope.yaml"):
        load_scenario(tmp_path / "nope.yaml", PROTOCOL)


def test_error_names_the_scenario():
    with pytest.raises(CriteriaError, match="scenario 'Mine': unknown criterion ID 'X1'"):
        Scenario("Mine", disabled=frozenset({"X1"})).validate(PROTOCOL)


def test_validate_does_not_mutate():
    raw = {"INCL07.CRCL": {"min": "50"}}
    s = Scenario("x", overrides=raw)
    v = s.validate(PROTOCOL)
    assert raw == {"INCL07.CRCL": {"min": "50"}} and s.overrides is raw
    assert v.overrides == {"INCL07.CRCL": {"min": Decimal(50)}}


@pytest.mark.parametrize("order", [("INCL05", "INCL01"), ("EXCL22",)])
def test_order_is_used_by_the_funnel(order):
    engine = Engine(load_cohort(FIXTURE), PROTOCOL, 1)
    s = Scenario("o", order=order).validate(PROTOCOL)
    ids = analysis.run(engine, s).plan.ids
    assert ids[:len(order)] == order and sorted(ids) == sorted(c.id for c in PROTOCOL.criteria)
