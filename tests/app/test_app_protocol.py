"""The protocol picker (issue 14, item 3, the app side), through Streamlit's AppTest.

A second, different, small criteria file (tests/fixtures/protocols/mini.yaml: IDs ADULT1,
LABS2, PS3, BRAIN4, QTC5; stages 1 and 3) is uploaded in the sidebar, then every page is
visited and a fact of that page is checked against a value computed without the app
(funnel totals from `analysis.run` with the same file, the file's IDs, labels, examples
and enrolment target). A refused upload shows its reason and keeps the protocol in use;
switching back to the shipped file brings its scenarios back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kn026.base.table import connect
from kn026.core import analysis
from kn026.core import protocol_files as pf
from kn026.core.criteria import load_protocol
from kn026.core.engine import Engine
from kn026.core.scenario import Scenario
from kn026.ingest.cohort import load_cohort
from tests.app_support import charts, go, metrics, new_app, number, ok, open_expander, open_tab, sidebar_radio
from ui import session

MINI = Path(__file__).parents[1] / "fixtures" / "protocols" / "mini.yaml"
MINI_IDS = ["ADULT1", "LABS2", "PS3", "BRAIN4", "QTC5"]
TIMEOUT = 300  # the machine is shared: first runs build the built-in cohort's engines


@pytest.fixture(scope="module")
def expected():
    """Funnel totals of the built-in cohort under mini.yaml (as uploaded) per stage, without the app."""
    proto = pf.from_upload(MINI.read_bytes(), "mini.yaml")
    cohort = load_cohort(session.BUILTIN, connect())
    out = {}
    for stage in (1, 3):
        eng = Engine(cohort, proto, stage, untrusted=pf.untrusted_rules(proto))
        out[stage] = analysis.run(eng, Scenario()).totals
    out["kn026"] = analysis.run(Engine(cohort, load_protocol(), 1), Scenario()).totals
    return out


def picker(at):
    return at.sidebar.selectbox(key=session.W + "protocol_choice")


def upload(at, name: str, data: bytes):
    """Choose "Upload a criteria file" and upload `data` as `name`."""
    if picker(at).value != session.UPLOADED:
        picker(at).set_value(session.UPLOADED).run()
        ok(at)
    up = next(u for u in at.file_uploader if u.key == session.W + "protocol_file")
    up.set_value((name, data, "application/x-yaml")).run()
    ok(at)
    return at


def stage_radio(at):
    return sidebar_radio(at, "Protocol stage")


def assert_totals(at, totals) -> None:
    m = metrics(at)
    assert number(m["Screened"]) == totals["screened"]
    assert number(m["Eligible · strict"]) == totals["strict"]
    assert number(m["Eligible · optimistic"]) == totals["optimistic"]


@pytest.fixture(scope="module")
def mini_app():
    at = new_app(timeout=TIMEOUT)
    return upload(at, "mini.yaml", MINI.read_bytes())


def test_picker_lists_the_shipped_files_and_an_upload():
    at = new_app(timeout=TIMEOUT)
    shipped = pf.shipped()
    box = picker(at)
    assert box.options == [f"{f.protocol} · {f.title}" for f in shipped] + ["Upload a criteria file (YAML)…"]
    assert box.value == session.DEFAULT_FILE == shipped[0].name
    assert stage_radio(at).options == ["Stage 1 (open-label)", "Stage 2 (randomised)"]
    assert at.session_state[session.K_PROTOCOL] == session.DEFAULT_FILE


def test_uploaded_mini_screens_on_the_funnel(mini_app, expected):
    at = mini_app
    assert at.session_state[session.K_PROTOCOL] == session.UPLOADED
    # stages and names from the file: stage 3 selectable, stage 2 not
    assert stage_radio(at).options == ["Stage 1 · Part A (dose finding)", "Stage 3 · Part C (expansion)"]
    assert at.title[0].value == "Eligibility funnel"
    assert at.caption[0].value.startswith("MINI-01 · Part A (dose finding) · Built-in synthetic cohort")
    assert_totals(at, expected[1])
    assert expected[1] != expected["kn026"]  # the check would see a protocol that was not switched
    # the engine runs every uploaded rule as untrusted (hardened arithmetic)
    eng = at.session_state[session.K_DATA].engines[1]
    assert eng.protocol.name == "MINI-01" and eng.untrusted == frozenset(
        r.id for r in eng.protocol.rules)
    stage_radio(at).set_value(3).run()
    ok(at)
    assert at.caption[0].value.startswith("MINI-01 · Part C (expansion)")
    assert_totals(at, expected[3])
    assert expected[3] != expected[1]


def test_every_page_on_mini(mini_app, expected):
    at = mini_app
    stage_radio(at).set_value(3).run()
    # Cohort: its distributions are the file's measures and category chart
    go(at, "pages/cohort.py", "Cohort")
    open_tab(at, "cohort", "Distributions")
    titles = {c["layout"]["title"]["text"].split("<")[0].strip() for c in charts(at)}
    for title in ("Performance status (PS3)", "Age (ADULT1)", "Neutrophils (LABS2.ANC)", "QTcF (QTC5)"):
        assert any(t.startswith(title) for t in titles), (title, titles)
    assert not any("INCL" in t or "EXCL" in t for t in titles)
    # Criteria: the file's criteria of stage 3, its parameter labels and its rewrite example
    go(at, "pages/criteria.py", "Criteria")
    assert at.data_editor[0].value["Criterion"].tolist() == MINI_IDS
    open_expander(at, "ADULT1")
    labels = [n.label for n in at.number_input]
    assert "Youngest age (years)" in labels
    assert "Example: ECOG 0-1" in [b.label for b in at.button]
    # Patients: the example filters of the file
    go(at, "pages/patients.py", "Patients")
    assert at.pills(key=session.W + "examples").options == ["fails ADULT1", "unknown on QTC5"]
    # Sites: per-site counts add up to the funnel's totals under mini.yaml
    go(at, "pages/sites.py")
    sites = next(d.value for d in at.dataframe if "site" in d.value.columns)
    assert int(sites["screened"].sum()) == expected[3]["screened"]
    assert int(sites["strict"].sum()) == expected[3]["strict"]
    # Recruitment: the target is the file's enrolment target
    go(at, "pages/recruitment.py")
    assert at.number_input(key=session.W + "rec.target").value == 40
    # Network: the shared histogram is of MINI-01, stage 3
    go(at, "pages/network.py")
    assert any("MINI-01 stage 3" in m.value for m in at.markdown)
    # back on the Funnel: the same protocol and stage
    go(at, "pages/funnel.py", "Eligibility funnel")
    assert_totals(at, expected[3])


def test_a_refused_upload_keeps_the_protocol_in_use(expected):
    at = new_app(timeout=TIMEOUT)
    doc = yaml.safe_load(MINI.read_text(encoding="utf-8"))
    doc["criteria"][0]["rules"][0]["sql"] = "age_years >= (SELECT 18)"
    upload(at, "sneaky.yaml", yaml.safe_dump(doc, allow_unicode=True).encode())
    errors = [e.value for e in at.sidebar.error]
    assert any("sneaky.yaml was not accepted" in e and "rule ADULT1" in e for e in errors), errors
    assert any("keeps screening with KN026-001" in e for e in errors)
    assert at.session_state[session.K_PROTOCOL] == session.DEFAULT_FILE
    assert_totals(at, expected["kn026"])
    # an accepted file, then a refused one (a file-reading function): the accepted one stays
    upload(at, "mini.yaml", MINI.read_bytes())
    assert_totals(at, expected[1])
    doc = yaml.safe_load(MINI.read_text(encoding="utf-8"))
    doc["measures"][0]["expression"] = "(SELECT count(*) FROM read_csv('/etc/passwd'))"
    upload(at, "reader.yaml", yaml.safe_dump(doc, allow_unicode=True).encode())
    errors = [e.value for e in at.sidebar.error]
    assert any("reader.yaml was not accepted" in e and "measure age" in e for e in errors), errors
    assert at.session_state[session.K_PROTOCOL_UPLOAD]["name"] == "mini.yaml"
    assert_totals(at, expected[1])
    assert not at.exception


def test_switching_back_to_the_shipped_file_restores_its_scenarios(expected):
    at = new_app(timeout=TIMEOUT)
    kn_scenarios = set(at.session_state[session.K_SCENARIOS])
    assert kn_scenarios  # the example scenarios of data/ fit KN026-001
    scenario_box = at.sidebar.selectbox(key=session.W + "active")
    scenario_box.set_value(sorted(kn_scenarios)[0]).run()
    stage_radio(at).set_value(2).run()
    upload(at, "mini.yaml", MINI.read_bytes())
    # the KN026 scenarios do not apply to MINI-01; stage 2 does not exist there
    assert set(at.session_state[session.K_SCENARIOS]) == set()
    assert at.sidebar.selectbox(key=session.W + "active").options == ["Protocol (as written)"]
    assert at.session_state[session.K_STAGE] == 1
    assert_totals(at, expected[1])
    # the shipped file again, by the selectbox: its scenarios and active scenario come back
    picker(at).set_value(session.DEFAULT_FILE).run()
    ok(at)
    assert at.session_state[session.K_PROTOCOL] == session.DEFAULT_FILE
    assert set(at.session_state[session.K_SCENARIOS]) == kn_scenarios
    assert at.sidebar.selectbox(key=session.W + "active").value == sorted(kn_scenarios)[0]
    stage_radio(at).set_value(1).run()
    at.sidebar.selectbox(key=session.W + "active").set_value(session.PROTOCOL).run()
    assert_totals(at, expected["kn026"])
    # "Upload a criteria file" again uses the file accepted earlier in this session
    picker(at).set_value(session.UPLOADED).run()
    ok(at)
    assert at.session_state[session.K_PROTOCOL] == session.UPLOADED
    assert any("uploaded: mini.yaml" in c.value for c in at.sidebar.caption)
    assert_totals(at, expected[1])
