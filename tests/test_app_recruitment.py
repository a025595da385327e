"""AppTest of the Recruitment page (pages/recruitment.py) through the real app.py.

The numbers on the page are checked against kn026.forecast.model called directly with the
same inputs; plotly charts are read from their JSON spec (plotly 7 encodes numeric
arrays as {"dtype", "bdata"} base64).
"""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from streamlit.testing.v1 import AppTest

from kn026.base.table import connect
from kn026.core import analysis
from kn026.core.criteria import load_protocol
from kn026.core.engine import Engine
from kn026.core.scenario import Scenario
from kn026.forecast import model as fc
from kn026.forecast import recruitment as rc
from kn026.forecast import sites as fsites
from kn026.ingest import synth
from kn026.ingest.cohort import load_cohort
from tests import app_support
from tests.app_support import decode, ok
from ui import session, shell

PAGE = "pages/recruitment.py"
TIMEOUT = 180
W = session.W + "rec."
READOUT = re.compile(r"median (\d+\.\d) months, 80 % interval (\d+\.\d)-(\d+\.\d) months")


# --------------------------------------------------------------------------- helpers


def open_page() -> AppTest:
    return app_support.new_app(PAGE, "Recruitment forecast", timeout=TIMEOUT)


def set_input(at: AppTest, name: str, value) -> AppTest:
    at.number_input(key=W + name).set_value(value).run()
    ok(at)
    return at


def open_tab(at: AppTest, label: str) -> AppTest:
    return app_support.open_tab(at, "recruitment", label)


def readout(at: AppTest, bound: str) -> str:
    texts = [b.value for b in (*at.success, *at.error, *at.info) if b.value.startswith(f"**{bound.capitalize()}**")]
    assert len(texts) == 1, [b.value for b in (*at.success, *at.error, *at.info)]
    return texts[0]


def median(at: AppTest, bound: str = "strict") -> float:
    m = READOUT.search(readout(at, bound))
    assert m, readout(at, bound)
    return float(m.group(1))


def table(at: AppTest, *columns: str):
    for d in at.dataframe:
        if set(columns) <= set(d.value.columns):
            return d.value
    raise AssertionError(f"no table with columns {columns}")


@pytest.fixture(scope="module")
def builtin():
    """The built-in cohort's site estimate and stage-1 funnel totals, computed without the app."""
    con = connect()
    cohort = load_cohort(session.BUILTIN, con)
    totals = analysis.run(Engine(cohort, load_protocol(), 1), Scenario()).totals
    return fsites.estimate_sites(rc.cohort_site_frame(cohort)), totals


# --------------------------------------------------------------------------- tests


def test_the_page_is_registered_after_sites():
    paths = [p[0] for p in shell.PAGES]
    assert PAGE in paths and paths.index(PAGE) > paths.index("pages/sites.py")
    assert dict((p[0], p[3]) for p in shell.PAGES)[PAGE] == "recruitment"


def test_readout_agrees_with_the_model_called_directly(builtin):
    est, totals = builtin
    at = open_page()
    approach = at.number_input(key=W + f"approach.{at.session_state[session.K_DATA].token}").value
    share = rc.default_approach(est, synthetic=True)
    assert approach == pytest.approx(100 * share)  # 8.5 %: the generator's 1.2 referrals per site-month
    start, deadline = at.date_input(key=W + "start").value, at.date_input(key=W + "deadline").value
    assert at.number_input(key=W + "target").value == 286 and at.number_input(key=W + "uptake").value == 85.0
    sites = rc.approached(est, share)
    common = dict(uptake=0.85, target=286, start=start, n_sims=fsites.DEFAULT_SIMS, seed=0, fraction_screened=20_000)
    for bound in ("strict", "optimistic"):
        frac = totals[bound] / totals["screened"]
        res = fc.forecast(sites, frac, **common)
        need = fc.sites_needed(sites, frac, deadline, new_site_activation=3.0, **common)
        lo, hi = res.interval(0.8)
        expected = f"median {res.median:.1f} months, 80 % interval {lo:.1f}-{hi:.1f} months"
        text = readout(at, bound)
        assert expected in text and f"({100 * frac:.1f}% eligible)" in text
        assert 3 < res.median < 60  # a trial, not "one month" from the synthetic volume
        if need.additional:
            assert f"{need.additional} more site" in text
        else:
            assert "no more sites needed" in text
        row = table(at, "bound", "median_months").set_index("bound").loc[bound.capitalize()]
        assert row["median_months"] == pytest.approx(res.median)
        assert row["p_deadline_pct"] == pytest.approx(100 * res.probability_by(deadline))
        assert row["sites_needed"] == need.additional
    assert any("1.20 screened per site-month" in c.value for c in at.caption)


def test_fan_chart_shows_the_forecast():
    at = open_page()
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    spec = json.loads(charts[0].proto.spec)
    names = [t.get("name") for t in spec["data"]]
    assert "Strict: median" in names and "Optimistic: median" in names and "Strict: 80 % band" in names
    med = next(t for t in spec["data"] if t.get("name") == "Strict: median")
    y = decode(med["y"])
    assert y[0] == 0 and y[-1] >= 286 and all(b >= a for a, b in zip(y, y[1:], strict=False))
    diamond = next(t for t in spec["data"] if str(t.get("name", "")).startswith("Strict: median 20"))
    assert decode(diamond["y"]) == [286]
    assert any(s.get("y0") == 286 for s in spec["layout"]["shapes"])  # the target line


def test_target_and_uptake_move_the_median_the_right_way():
    at = open_page()
    base = median(at)
    set_input(at, "target", 400)
    longer = median(at)
    assert longer > base
    set_input(at, "uptake", 50.0)
    slower = median(at)
    assert slower > longer
    approach = f"approach.{at.session_state[session.K_DATA].token}"
    set_input(at, approach, 20.0)
    assert median(at) < slower  # more candidates approached: faster
    assert not at.warning  # 2.8 screened, 0.66 enrolled per site-month: plausible
    set_input(at, approach, 100.0)  # the raw synthetic volume: 14 screened per site-month
    assert any("more than 2 patients a month" in w.value and "0.4-0.8" in w.value for w in at.warning)
    set_input(at, approach, 20.0)
    # the inputs persist across a page switch
    at.switch_page("pages/sites.py").run()
    at.switch_page(PAGE).run()
    ok(at)
    assert at.number_input(key=W + "target").value == 400 and median(at) < slower


def test_edge_cases_have_clear_messages():
    at = open_page()
    set_input(at, "enrolled", 300)
    assert "target 286 already met (300 enrolled)" in readout(at, "strict")
    assert (table(at, "bound", "note")["note"] == "target 286 already met").all()
    set_input(at, "enrolled", 0)
    set_input(at, "uptake", 0.0)
    assert "target unreachable: uptake is 0" in readout(at, "strict")
    assert not at.get("plotly_chart")  # nothing to chart
    set_input(at, "uptake", 85.0)
    at.radio(key=W + "source").set_value("inputs").run()
    ok(at)
    assert at.number_input(key=W + "n_sites").value == 50  # the cohort's sites as the starting point
    set_input(at, "mean_rate", 0.0)
    assert "target unreachable: every site's screening rate is 0" in readout(at, "optimistic")
    set_input(at, "mean_rate", 1.5)
    assert median(at) > 0
    at.date_input(key=W + "deadline").set_value(at.date_input(key=W + "start").value - dt.timedelta(days=1)).run()
    ok(at)
    assert any("must come after the start" in e.value for e in at.error)


def test_no_eligible_patients_says_target_unreachable():
    at = open_page()
    df = synth.generate(200, 3, sites=6)
    df["ecog"] = 3  # everybody fails INCL05
    at.sidebar.radio(key=session.W + "source").set_value("upload").run()
    at.sidebar.file_uploader[0].set_value(("all_ecog3.csv", df.to_csv(index=False).encode(), "text/csv")).run()
    ok(at)
    assert at.session_state[session.K_DATA].kind == "upload"
    for bound in ("strict", "optimistic"):
        assert "target unreachable: no eligible patients" in readout(at, bound)


def test_uploaded_cohort_defaults_to_full_approach_and_suppresses_small_sites():
    at = open_page()
    df = synth.generate(300, 6, sites=12)  # one site has 3 patients
    at.sidebar.radio(key=session.W + "source").set_value("upload").run()
    at.sidebar.file_uploader[0].set_value(("small.csv", df.to_csv(index=False).encode(), "text/csv")).run()
    ok(at)
    token = at.session_state[session.K_DATA].token
    assert at.number_input(key=W + f"approach.{token}").value == 100.0  # a real log is taken as it is
    assert at.session_state[session.K_SUPPRESS] is True  # on by default for uploads
    open_tab(at, "Per site")
    sites = table(at, "site", "expected")
    counts = df["site_id"].value_counts()
    assert len(sites) == len(counts)
    hidden = set(sites.loc[sites["screened"].isna(), "site"])
    assert counts[counts < 5].index.isin(list(hidden)).all() and hidden
    shown = sites.dropna(subset=["screened"])
    assert (shown["screened"] >= 5).all()
    assert sites.loc[sites["site"].isin(hidden), ["expected", "rate_mean", "candidate_rate"]].isna().all().all()
    assert any("Small-cell suppression is on" in i.value for i in at.info)
    # the same sites as the Sites page hides
    at.switch_page("pages/sites.py").run()
    ok(at)
    site_page = next(d.value for d in at.dataframe if "site" in d.value.columns and "screened" in d.value.columns)
    assert set(site_page.loc[site_page["screened"].isna(), "site"]) == hidden


def test_protocol_vs_scenario():
    at = open_page()
    open_tab(at, "Protocol vs scenario")
    assert any("protocol as written is active" in i.value for i in at.info)
    protocol_median = median(at)
    names = at.sidebar.selectbox[0].options
    crcl = next(n for n in names if n.startswith("Creatinine clearance"))
    at.sidebar.selectbox[0].set_value(crcl).run()
    ok(at)
    assert median(at) > protocol_median  # CrCl >= 50 excludes more patients
    sentences = [m.value for m in at.markdown if m.value.startswith("**Strict:**")]
    assert sentences and " costs " in sentences[0] and "INCL07.CRCL min: 30" in sentences[0]
    cmp_ = table(at, "forecast", "saved_weeks")
    strict = cmp_[cmp_["bound"] == "Strict"].set_index("forecast")
    assert strict.loc["Protocol", "median_months"] == pytest.approx(protocol_median, abs=0.05)
    weeks = strict.loc["Scenario", "saved_weeks"]
    expected = (strict.loc["Protocol", "median_months"] - strict.loc["Scenario", "median_months"]) * 365.25 / 12 / 7
    assert weeks < 0 and weeks == pytest.approx(expected)
    assert f"costs {abs(weeks):.1f} weeks" in sentences[0]
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t.get("name") for t in spec["data"]]
    assert "Protocol: median" in names and "Scenario: median" in names


def test_strict_policy_forecasts_one_bound():
    at = open_page()
    next(r for r in at.sidebar.radio if r.label == "Unknown values").set_value("strict").run()
    ok(at)
    assert readout(at, "strict")
    assert not [b for b in at.success if b.value.startswith("**Optimistic**")]
    assert list(table(at, "bound", "median_months")["bound"]) == ["Strict"]


def test_cohort_without_site_columns_forecasts_from_inputs():
    at = open_page()
    df = synth.generate(300, 5, sites=12).drop(columns=["site_id", "screening_date"])
    at.sidebar.radio(key=session.W + "source").set_value("upload").run()
    at.sidebar.file_uploader[0].set_value(("nosites.csv", df.to_csv(index=False).encode(), "text/csv")).run()
    ok(at)
    assert any("Site rates from inputs: the cohort has no site_id and screening_date" in c.value for c in at.caption)
    assert not any(r.key == W + "source" for r in at.radio)  # nothing to estimate from: no choice offered
    set_input(at, "n_sites", 10)
    set_input(at, "mean_rate", 2.0)
    set_input(at, "cv", 0.0)
    totals = analysis.run(Engine(load_cohort(df, connect()), load_protocol(), 1), Scenario()).totals
    frac = totals["strict"] / totals["screened"]
    start = at.date_input(key=W + "start").value
    res = fc.forecast(fsites.SiteInputs.from_inputs(10, 2.0, cv=0.0), frac, target=286, start=start,
                      fraction_screened=300)
    assert median(at) == round(res.median, 1)
    open_tab(at, "Per site")
    sites = table(at, "site", "expected")
    assert len(sites) == 10 and "screened" not in sites.columns  # no patient data per site, nothing to hide
    assert sites["expected"].sum() == pytest.approx(286, rel=1e-6)
