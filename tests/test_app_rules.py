"""AppTest of the rule editor on the Criteria page (issue 6): custom criteria and rewritten rules.

Rules are typed into the real widgets of `app.py`; the funnel, per-criterion and overlap
numbers the app then shows are compared with kn026 run directly on the same built-in
cohort and scenario. Hostile text must be refused with a message naming the token and
leave the session exactly as it was.
"""

from __future__ import annotations

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from kn026.base.table import connect
from kn026.core import analysis, custom
from kn026.core.criteria import load_protocol
from kn026.core.engine import Engine
from kn026.core.scenario import Scenario, parse_scenario
from kn026.ingest.cohort import load_cohort
from tests import app_support
from tests.app_support import go, number, ok, open_expander, open_tab
from ui import session

TIMEOUT = 180
PROTOCOL = load_protocol()
NEW_RULE = dict(id="HB100", kind="inclusion", text="Haemoglobin at least 100 g/L",
                sql="hemoglobin_g_l >= :min_hb", params="min_hb = 100 g/L")


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def engine() -> Engine:
    """The built-in cohort screened by kn026 directly (the app loads the same file)."""
    return Engine(load_cohort(str(session.BUILTIN), connect()), PROTOCOL, 1)


def criteria_page() -> AppTest:
    return app_support.new_app("pages/criteria.py", "Criteria", timeout=TIMEOUT)


def click(at: AppTest, label: str) -> AppTest:
    matches = [b for b in at.button if b.label == label]
    assert len(matches) == 1, (label, [b.label for b in at.button])
    matches[0].click().run()
    ok(at)
    return at


def field(at: AppTest, form: str, name: str):
    key = session.W + f"rule.{form}.{name}@"
    for widgets in (at.text_input, at.text_area, at.selectbox, at.button_group):
        for w in widgets:
            if w.key and w.key.startswith(key):
                return w
    raise AssertionError(f"no field {form}.{name}")


def fill_new_rule(at: AppTest, rule: dict) -> AppTest:
    field(at, "add", "id").set_value(rule["id"])
    field(at, "add", "kind").set_value(rule["kind"])
    field(at, "add", "text").set_value(rule["text"])
    field(at, "add", "sql").set_value(rule["sql"])
    field(at, "add", "params").set_value(rule["params"])
    return click(at, "Add criterion")


def errors(at: AppTest) -> list[str]:
    """Error boxes as plain text (the page escapes markdown in rule text: min\\_hb)."""
    return [e.value.replace("\\", "") for e in at.error]


def metrics(at: AppTest) -> dict[str, int]:
    return {label: number(value) for label, value in app_support.metrics(at).items()}


def totals_of(at: AppTest) -> dict[str, int]:
    m = metrics(at)
    return {"strict": m["Eligible · strict"], "optimistic": m["Eligible · optimistic"]}


def expected_totals(engine: Engine, scenario: Scenario) -> dict[str, int]:
    t = analysis.run(engine, scenario).totals
    return {"strict": int(t["strict"]), "optimistic": int(t["optimistic"])}


def stored(at: AppTest) -> Scenario:
    """The active scenario as the session keeps it."""
    name = at.session_state[session.K_ACTIVE]
    return at.session_state[session.K_SCENARIOS][name] if name != session.PROTOCOL else Scenario()


def funnel_tab(at: AppTest, label: str) -> AppTest:
    return open_tab(at, "funnel", label)


def frame(at: AppTest, column: str) -> pd.DataFrame:
    """The (only) table on the page with `column` (tabs run lazily: only the open one's)."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(found) == 1, f"{len(found)} tables with a column {column!r}"
    return found[0]


def crcl50_scenario() -> Scenario:
    return Scenario("check", replace={PROTOCOL.examples.replace[0]: PROTOCOL.examples.replace[1]})


def new_rule(rule: dict) -> custom.CustomRule:
    return custom.CustomRule(rule["id"], rule["kind"], rule["text"], rule["sql"], custom.parse_params(rule["params"]))


# --------------------------------------------------------------------------- the two encodings of issue 6


def test_crcl50_rewrite_and_a_new_rule_match_kn026(engine):
    at = criteria_page()
    protocol_totals = totals_of(at)
    assert protocol_totals == expected_totals(engine, Scenario())

    # 1. the other registry version: CrCl >= 50 mL/min, as an expression, via the example button
    click(at, "Example: CrCl ≥ 50")
    assert field(at, "replace", "rule").value == "INCL07.CRCL"
    assert "crcl_if_female >= 50" in field(at, "replace", "sql").value
    click(at, "Rewrite rule")
    assert at.session_state[session.K_ACTIVE] == "My scenario"  # the protocol never changes
    assert stored(at).replace == {"INCL07.CRCL": PROTOCOL.examples.replace[1]}
    by_param = expected_totals(engine, Scenario("p", overrides={"INCL07.CRCL": {"min": 50}}))
    assert totals_of(at) == by_param == expected_totals(engine, crcl50_scenario())
    assert totals_of(at)["optimistic"] < protocol_totals["optimistic"]

    # 2. a brand-new criterion typed field by field, with a parameter
    fill_new_rule(at, NEW_RULE)
    assert not at.error, [e.value for e in at.error]
    scen = Scenario("check", replace=crcl50_scenario().replace, custom=(new_rule(NEW_RULE),))
    assert stored(at).custom == scen.custom
    assert totals_of(at) == expected_totals(engine, scen)
    table = at.data_editor[0].value.set_index("Criterion")
    low = engine.con.execute("SELECT count(*) FILTER (hemoglobin_g_l < 100), count(*) FILTER "
                             "(hemoglobin_g_l IS NULL) FROM cohort").fetchone()
    assert (table.loc["HB100", "Fail"], table.loc["HB100", "Unknown"]) == low
    assert table.loc["HB100", "Note"] == "custom" and low[0] > 0

    # 3. the worked example of a new rule (upper age limit), via its button
    click(at, "Example: age ≤ 75")
    assert field(at, "add", "id").value == "CUST01" and field(at, "add", "sql").value == "age_years <= :max_age"
    click(at, "Add criterion")
    scen = Scenario("check", replace=scen.replace, custom=(*scen.custom, custom.EXAMPLE_CUSTOM))
    assert stored(at).custom == scen.custom
    assert totals_of(at) == expected_totals(engine, scen)
    assert field(at, "add", "id").value == "CUST02" and field(at, "add", "sql").value == ""  # ready for the next

    # the Funnel page: cards, every step of the funnel and the per-criterion table, overlaps
    go(at, "pages/funnel.py", "Eligibility funnel")
    assert totals_of(at) == expected_totals(engine, scen)
    want = analysis.run(engine, scen)
    funnel_tab(at, "Per-criterion table")
    got = frame(at, "shapley_strict").set_index("criterion").drop(index="Screened")
    exp = want.stats.set_index("criterion").join(want.funnel.set_index("criterion")[["strict", "optimistic"]])
    assert list(got.index) == list(want.plan.ids) and {"HB100", "CUST01"} <= set(got.index)
    for col in ("strict", "optimistic", "failed", "unique", "unknown"):
        assert got[col].astype(int).tolist() == exp.loc[got.index, col].astype(int).tolist(), col
    over75 = engine.con.execute("SELECT count(*) FROM cohort WHERE age_years > 75").fetchone()[0]
    assert int(got.loc["CUST01", "failed"]) == over75
    funnel_tab(at, "Overlap")
    listing = frame(at, "Combination")
    combos = want.combinations(top=12, bound="optimistic")
    assert listing["Patients"].astype(int).tolist() == combos["count"].astype(int).tolist()
    assert any("CUST01" in label for label in listing["Combination"])
    funnel_tab(at, "Scenario vs protocol")
    deltas = frame(at, "failed_delta").set_index("criterion")
    assert {"HB100", "CUST01", "INCL07"} <= set(deltas.index)
    assert int(deltas.loc["CUST01", "failed_other"]) == over75

    # the Patients page filters on them and shows them in one patient's rule-by-rule verdicts
    go(at, "pages/patients.py", "Patients")
    targets = at.selectbox(key=session.W + "cond_target").options
    assert any(t.startswith("CUST01") for t in targets) and any(t.startswith("HB100") for t in targets)
    at.selectbox(key=session.W + "cond_status").set_value("fails only")
    at.selectbox(key=session.W + "cond_target").set_value("CUST01")
    click(at, "Add")
    heading = next(m.value for m in at.markdown if m.value.startswith("####"))
    assert int(heading.split()[1].replace(",", "")) == int(exp.loc["CUST01", "unique"]) > 0
    detail = next(t.value for t in at.table if "Verdict" in t.value.columns)
    row = detail[detail["Rule"] == "CUST01"].iloc[0]
    assert row["Verdict"] == "fail" and "age_years" in row["Patient's values"]
    go(at, "pages/cohort.py", "Cohort")  # completeness lists the new rules too
    go(at, "pages/sites.py", "Sites and countries")

    # the scenario YAML carries both rules: a fresh session that uploads it gets the same numbers
    text = stored(at).to_yaml(PROTOCOL)
    assert parse_scenario(text, PROTOCOL).custom == scen.custom
    again = criteria_page()
    uploader = next(u for u in again.file_uploader if u.key == session.W + "scenario_upload")
    uploader.set_value(("rules.yaml", text.encode(), "application/x-yaml")).run()
    ok(again)
    assert stored(again).custom == scen.custom and stored(again).replace == scen.replace
    assert totals_of(again) == expected_totals(engine, scen)


TWELVE = [  # analyst criteria typed one after another: 59 + 12 = 71 leaves, masks of two words
    dict(id=f"CUST{i + 1:02d}", kind=kind, text=f"{col} {op} {value}", sql=f"{col} {op} :limit",
         params=f"limit = {value}")
    for i, (col, op, value, kind) in enumerate([
        ("age_years", "<=", 75, "exclusion"), ("weight_kg", ">=", 45, "inclusion"),
        ("hemoglobin_g_l", ">=", 100, "inclusion"), ("anc_1e9_l", ">=", 2, "inclusion"),
        ("platelets_1e9_l", ">=", 120, "inclusion"), ("albumin_g_l", ">=", 32, "inclusion"),
        ("ecog", "<=", 0, "inclusion"), ("lvef_pct", ">=", 55, "inclusion"),
        ("sbp_mmhg", "<=", 140, "exclusion"), ("dbp_mmhg", "<=", 90, "exclusion"),
        ("creatinine_umol_l", "<=", 110, "exclusion"), ("inr", "<=", 1.3, "exclusion")])]


def test_twelve_custom_criteria_beyond_one_mask_word(engine):
    """Twelve analyst criteria beside the protocol's 59 rules (71 leaves): the funnel shows them
    all with kn026's numbers, and the Patients page filters on the last one (bit 70)."""
    at = criteria_page()
    for rule in TWELVE:
        fill_new_rule(at, rule)
        assert not at.error, [e.value for e in at.error]
    scen = Scenario("check", custom=tuple(new_rule(r) for r in TWELVE))
    assert stored(at).custom == scen.custom
    assert analysis.engine_for(engine, scen).width == 2
    assert totals_of(at) == expected_totals(engine, scen)
    assert {r["id"] for r in TWELVE} <= set(at.data_editor[0].value["Criterion"])

    go(at, "pages/funnel.py", "Eligibility funnel")
    assert totals_of(at) == expected_totals(engine, scen)
    want = analysis.run(engine, scen)
    funnel_tab(at, "Per-criterion table")
    got = frame(at, "shapley_strict").set_index("criterion").drop(index="Screened")
    exp = want.stats.set_index("criterion").join(want.funnel.set_index("criterion")[["strict", "optimistic"]])
    assert list(got.index) == list(want.plan.ids) and [r["id"] for r in TWELVE] == list(got.index)[-12:]
    for col in ("strict", "optimistic", "failed", "unique", "unknown"):
        assert got[col].astype(int).tolist() == exp.loc[got.index, col].astype(int).tolist(), col
    last = engine.con.execute("SELECT count(*) FILTER (inr > 1.3), count(*) FILTER (inr IS NULL) "
                              "FROM cohort").fetchone()
    assert (int(got.loc["CUST12", "failed"]), int(got.loc["CUST12", "unknown"])) == last and last[0] > 0

    go(at, "pages/patients.py", "Patients")
    at.selectbox(key=session.W + "cond_status").set_value("fails")
    at.selectbox(key=session.W + "cond_target").set_value("CUST12")
    click(at, "Add")
    heading = next(m.value for m in at.markdown if m.value.startswith("####"))
    assert int(heading.split()[1].replace(",", "")) == last[0]


def test_changing_a_rule_recomputes_and_removing_restores(engine):
    at = criteria_page()
    protocol_totals = totals_of(at)
    fill_new_rule(at, NEW_RULE)
    first = totals_of(at)
    assert first == expected_totals(engine, Scenario("x", custom=(new_rule(NEW_RULE),)))
    # its parameter is a threshold like any other: a number box in its expander
    open_expander(at, "HB100")
    box = next(n for n in at.number_input if n.key and n.key.startswith(session.W + "param.HB100.min_hb@"))
    box.set_value(110).run()
    ok(at)
    tuned = Scenario("x", overrides={"HB100": {"min_hb": 110}}, custom=(new_rule(NEW_RULE),))
    assert totals_of(at) == expected_totals(engine, tuned) != first
    # editing the expression (same ID) is picked up at once: the cache keys include the rule text
    click(at, "Edit")
    assert field(at, "add", "sql").value == NEW_RULE["sql"]
    field(at, "add", "sql").set_value("hemoglobin_g_l >= :min_hb AND ecog <= 0")
    click(at, "Add criterion")
    edited = dict(NEW_RULE, sql="hemoglobin_g_l >= :min_hb AND ecog <= 0")
    expected = Scenario("x", overrides={"HB100": {"min_hb": 110}}, custom=(new_rule(edited),))
    assert totals_of(at) == expected_totals(engine, expected)
    # custom criteria apply at every stage: stage 2 screens them too
    next(r for r in at.sidebar.radio if r.label == "Protocol stage").set_value(2).run()
    ok(at)
    stage2 = Engine(engine.cohort, PROTOCOL, 2)
    assert totals_of(at) == expected_totals(stage2, expected)
    assert "HB100" in set(at.data_editor[0].value["Criterion"])
    next(r for r in at.sidebar.radio if r.label == "Protocol stage").set_value(1).run()
    ok(at)
    # a rewrite, then both removed: back to the protocol's numbers
    click(at, "Example: CrCl ≥ 50")
    click(at, "Rewrite rule")
    assert totals_of(at) == expected_totals(engine, Scenario("x", overrides=expected.overrides,
                                                            custom=expected.custom,
                                                            replace=crcl50_scenario().replace))
    click(at, "Remove")
    assert stored(at).custom == () and "HB100" not in stored(at).overrides
    click(at, "Undo rewrite")
    assert stored(at).is_protocol and totals_of(at) == protocol_totals
    assert "HB100" not in set(at.data_editor[0].value["Criterion"])


def test_submitting_the_protocol_text_undoes_a_rewrite(engine):
    at = criteria_page()
    click(at, "Example: CrCl ≥ 50")
    click(at, "Rewrite rule")
    assert stored(at).replace
    field(at, "replace", "sql").set_value(PROTOCOL.rule("INCL07.CRCL").sql[1])
    click(at, "Rewrite rule")
    assert stored(at).replace == {} and totals_of(at) == expected_totals(engine, Scenario())
    # picking another rule prefills its expression as the protocol writes it
    field(at, "replace", "rule").set_value("INCL07.ANC").run()
    ok(at)
    assert field(at, "replace", "sql").value == PROTOCOL.rule("INCL07.ANC").sql[1]


# --------------------------------------------------------------------------- hostile and wrong text


HOSTILE = [  # (text, what the message names, the token underlined in the text)
    ("read_csv('/etc/passwd') IS NOT NULL", "read_csv", "read_csv"),
    ("age_years > (SELECT count(*) FROM cohort)", "subquer", "(SELECT count(*) FROM cohort)"),
    ("age_years > 18; DROP TABLE cohort", "';'", ";"),
    ("age_years > 18 -- hidden", "comment", "--"),
    ("ages_years > 18", "ages_years", "ages_years"),
    ("getenv('HOME') = 'x'", "getenv", "getenv"),
]


@pytest.mark.parametrize("text,named,token", HOSTILE, ids=[h[0][:24] for h in HOSTILE])
def test_hostile_text_is_refused_with_the_token_and_changes_nothing(engine, text, named, token):
    at = criteria_page()
    before = totals_of(at)
    fill_new_rule(at, dict(NEW_RULE, sql=text, params=""))
    shown = errors(at)
    assert len(shown) == 1 and "Not added; nothing changed." in shown[0] and named in shown[0], shown
    pointer = [c.value for c in at.code if "^" in c.value]
    line, marks = pointer[0].split("\n")  # the text as typed, carets under the offending token
    col = marks.index("^")
    assert line == text and marks.strip() == "^" * len(token) and text[col:col + len(token)] == token
    assert at.session_state[session.K_ACTIVE] == session.PROTOCOL  # no scenario was started
    assert "My scenario" not in at.session_state[session.K_SCENARIOS]
    assert totals_of(at) == before == expected_totals(engine, Scenario())
    assert field(at, "add", "sql").value == text  # kept for fixing
    # the same text as a rewrite is refused too, and the session still holds its cohort
    field(at, "replace", "sql").set_value(text)
    click(at, "Rewrite rule")
    assert any("Not rewritten; nothing changed." in e for e in errors(at))
    assert at.session_state[session.K_ACTIVE] == session.PROTOCOL and totals_of(at) == before
    bundle = at.session_state[session.K_DATA]
    assert bundle.con.execute("SELECT count(*) FROM cohort").fetchone()[0] == 20_000


def test_bad_definitions_are_explained(engine):
    at = criteria_page()
    fill_new_rule(at, dict(NEW_RULE, id="INCL01"))
    assert any("already a protocol ID" in e for e in errors(at))
    fill_new_rule(at, dict(NEW_RULE, params="min_hb = lots"))
    assert any("parameter line 1" in e for e in errors(at))
    fill_new_rule(at, dict(NEW_RULE, params=""))  # :min_hb is not declared
    assert any("min_hb" in e for e in errors(at))
    fill_new_rule(at, dict(NEW_RULE, sql="sex > 5", params=""))  # a type error, pointed at
    assert any("cannot compare" in e for e in errors(at))
    assert at.session_state[session.K_ACTIVE] == session.PROTOCOL
    # a scenario file with a hostile rule is refused as a whole, with the reason
    text = ("scenario: sneaky\ncustom:\n  - id: CUST01\n    kind: exclusion\n"
            "    sql: \"glob('/home/*') IS NULL\"\n")
    uploader = next(u for u in at.file_uploader if u.key == session.W + "scenario_upload")
    uploader.set_value(("sneaky.yaml", text.encode(), "application/x-yaml")).run()
    ok(at)
    assert any("glob is not an allowed function" in e for e in errors(at))
    assert "sneaky" not in at.session_state[session.K_SCENARIOS]
    # and a good rule afterwards clears the message
    fill_new_rule(at, NEW_RULE)
    assert not any("Not added" in e for e in errors(at)) and [c.id for c in stored(at).custom] == ["HB100"]


def test_a_rule_the_new_cohort_cannot_screen_is_left_out_with_a_warning(engine):
    at = criteria_page()
    rule = dict(NEW_RULE, id="WT", sql="weight_kg >= :min_kg", params="min_kg = 40 kg")
    fill_new_rule(at, rule)
    assert [c.id for c in stored(at).custom] == ["WT"]
    # a cohort without weight_kg: the rule cannot run; pages still work and say why
    frame_ = pd.read_parquet(session.BUILTIN).head(400).drop(columns=["weight_kg"])
    next(r for r in at.sidebar.radio if r.label == "Cohort").set_value("upload").run()
    ok(at)
    buf = frame_.to_csv(index=False).encode()
    at.sidebar.file_uploader[0].set_value(("noweight.csv", buf, "text/csv")).run()
    ok(at)
    assert any("WT" in w.value and "weight_kg" in w.value for w in at.warning), [w.value for w in at.warning]
    assert "WT" not in set(at.data_editor[0].value["Criterion"])
    assert [c.id for c in stored(at).custom] == ["WT"]  # kept in the scenario
    go(at, "pages/funnel.py", "Eligibility funnel")
