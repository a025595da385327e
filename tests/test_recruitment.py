"""kn026.forecast.recruitment: the Recruitment page's logic (approach share, site inputs, readout, tables)."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd
import pytest

from kn026.base.table import connect
from kn026.forecast import charts as fcharts
from kn026.forecast import model as fc
from kn026.forecast import recruitment as rc
from kn026.forecast import sites as fsites
from kn026.ingest import synth
from kn026.ingest.cohort import load_cohort

START = dt.date(2026, 1, 1)
DEADLINE = dt.date(2027, 6, 30)
SIMS = 2000


def _sites(k: int = 12, mean: float = 3.0, cv: float = 0.6) -> fsites.SiteInputs:
    return fsites.SiteInputs.from_inputs(k, mean, cv=cv)


def _plan(**kw) -> rc.Plan:
    base = dict(target=286, start=START, deadline=DEADLINE, n_sims=SIMS, source="inputs", n_sites=12, mean_rate=3.0, cv=0.6)
    return rc.Plan(**{**base, **kw})


@pytest.fixture(scope="module")
def synthetic():
    """A synthetic cohort (30 sites, 36 months) and its site estimate."""
    frame = synth.generate(6000, 4, sites=30)
    return frame, fsites.estimate_sites(frame[["site_id", "screening_date", "country"]])


# --------------------------------------------------------------------------- approach share


def test_approached_thins_rates_and_keeps_their_shapes():
    sites = _sites()
    half = rc.approached(sites, 0.5)
    assert np.allclose(half.mean, 0.5 * sites.mean) and half.prior_mean == pytest.approx(0.5 * sites.prior_mean)
    assert np.array_equal(half.shape, sites.shape) and half.prior_shape == sites.prior_shape
    # closed forms: thinning the sites by a is the same as multiplying the eligible fraction by a
    t = np.array([3.0, 12.0])
    assert np.allclose(fc.expected_enrolled(half, t, 0.4), fc.expected_enrolled(sites, t, 0.2))
    assert np.allclose(fc.variance_enrolled(half, t, 0.4), fc.variance_enrolled(sites, t, 0.2))
    assert rc.approached(sites, 1.0) is sites
    with pytest.raises(ValueError, match="approach share must be between 0 and 100 %"):
        rc.approached(sites, 1.5)


def test_thinning_the_sites_equals_thinning_the_fraction_in_simulation():
    sites = _sites()
    a = fc.forecast(rc.approached(sites, 0.25), 0.4, target=120, start=START, n_sims=SIMS)
    b = fc.forecast(sites, 0.1, target=120, start=START, n_sims=SIMS)
    assert np.allclose(a.times, b.times, rtol=1e-9)


def test_default_approach_brings_a_synthetic_cohort_back_to_the_generators_rate(synthetic):
    _, est = synthetic
    assert est.prior_mean > 3 * rc.SYNTHETIC_REFERRAL_RATE  # 6,000 patients crammed into 30 sites x 36 months
    share = rc.default_approach(est, synthetic=True)
    assert 0 < share < 1
    assert rc.approached(est, share).prior_mean == pytest.approx(rc.SYNTHETIC_REFERRAL_RATE, rel=0.01)
    assert rc.default_approach(est, synthetic=False) == 1.0  # a real screening log is taken as it is
    slow = fsites.SiteInputs.from_inputs(5, 0.8)
    assert rc.default_approach(slow, synthetic=True) == 1.0  # never scale a slow cohort up


def test_cohort_site_frame_reads_site_histories_or_says_none():
    df = synth.generate(400, 3, sites=8)
    con = connect()
    frame = rc.cohort_site_frame(load_cohort(df, con))
    assert list(frame.columns) == ["site_id", "screening_date", "country"] and len(frame) == 400
    assert frame["site_id"].nunique() == 8
    con2 = connect()
    assert rc.cohort_site_frame(load_cohort(df.drop(columns=["screening_date"]), con2)) is None


def test_build_sites_from_the_cohort_or_from_inputs(synthetic):
    _, est = synthetic
    plan = _plan(source="cohort", approach=0.1, stagger=6.0, ramp=2.0)
    sites = rc.build_sites(plan, est)
    assert sites.n_sites == est.n_sites and np.allclose(sites.mean, 0.1 * est.mean)
    assert sites.ramp_months == 2.0 and sites.activation.max() == pytest.approx(6.0 * 29 / 30)
    with pytest.raises(ValueError, match="no site_id and screening_date"):
        rc.build_sites(plan, None)
    own = rc.build_sites(_plan(n_sites=7, mean_rate=2.5, cv=0.0), None)
    assert own.n_sites == 7 and np.all(own.mean == 2.5) and np.all(np.isinf(own.shape))
    screened, enrolled = rc.implied_rates(own, 0.4, 0.85)
    assert screened == 2.5 and enrolled == pytest.approx(2.5 * 0.4 * 0.85)


def test_plan_check_names_the_problem():
    assert _plan().check() is None
    assert "must come after the start" in _plan(deadline=START).check()
    assert "unknown site source" in _plan(source="guess").check()


# --------------------------------------------------------------------------- forecasts and readout


def test_run_bound_agrees_with_the_model_called_directly():
    plan = _plan()
    sites = rc.build_sites(plan, None)
    out = rc.run_bound(plan, sites, "strict", 0.35, 5000)
    direct = fc.forecast(sites, 0.35, uptake=plan.uptake, target=plan.target, start=START, n_sims=SIMS,
                         fraction_screened=5000)
    assert out.ok and np.array_equal(out.result.times, direct.times)
    need = fc.sites_needed(sites, 0.35, DEADLINE, uptake=plan.uptake, target=plan.target, start=START,
                           n_sims=SIMS, fraction_screened=5000, new_site_activation=plan.new_site_month)
    assert out.need.additional == need.additional > 0


def test_sponsor_readout_reads_like_the_issue():
    plan = _plan()
    sites = rc.build_sites(plan, None)
    out = rc.run_bound(plan, sites, "strict", 0.35, 5000)
    text = rc.sponsor_readout(out, DEADLINE)
    m = re.fullmatch(r"median (\d+\.\d) months, 80 % interval (\d+\.\d)-(\d+\.\d) months, "
                     r"(\d+) more sites needed to finish by June 2027", text)
    assert m, text
    lo, hi = out.result.interval(0.8)
    assert float(m.group(1)) == round(out.result.median, 1)
    assert (float(m.group(2)), float(m.group(3))) == (round(lo, 1), round(hi, 1))
    assert int(m.group(4)) == out.need.additional
    # a generous deadline: no more sites
    late = rc.run_bound(_plan(deadline=dt.date(2031, 1, 1)), sites, "strict", 0.35, 5000)
    assert rc.sponsor_readout(late, dt.date(2031, 1, 1)).endswith("with the current sites)")
    assert "no more sites needed to finish by January 2031" in rc.sponsor_readout(late, dt.date(2031, 1, 1))


def test_edge_cases_give_messages_not_tracebacks():
    plan = _plan()
    sites = rc.build_sites(plan, None)
    none = rc.run_bound(plan, sites, "strict", 0.0, 5000)
    assert not none.ok and none.message.startswith("target unreachable: no eligible patients")
    assert rc.sponsor_readout(none) == none.message
    zero = rc.run_bound(_plan(mean_rate=0.0), rc.build_sites(_plan(mean_rate=0.0), None), "strict", 0.3, 5000)
    assert zero.message.startswith("target unreachable: every site's screening rate is 0")
    met = rc.run_bound(_plan(enrolled=300), sites, "strict", 0.3, 5000)
    assert met.ok and rc.sponsor_readout(met, DEADLINE).startswith("target 286 already met (300 enrolled)")
    hidden = rc.run_bound(plan, sites, "strict", None, 5000)
    assert not hidden.ok and "small-cell suppression" in hidden.message
    # a deadline before the extra sites could open: a forecast, and why no site count
    soon = rc.run_bound(_plan(deadline=dt.date(2026, 2, 15), new_site_month=3.0), sites, "strict", 0.3, 5000)
    assert soon.ok and soon.need is None and "open too late" in soon.need_message
    assert "open too late" in rc.sponsor_readout(soon, dt.date(2026, 2, 15))


def test_bound_fractions():
    assert rc.bound_fractions({"screened": 200, "strict": 50, "optimistic": 80}) == {"strict": 0.25,
                                                                                     "optimistic": 0.4}
    assert rc.bound_fractions({"screened": 200, "strict": None, "optimistic": 80})["strict"] is None
    with pytest.raises(ValueError, match="no screened patients"):
        rc.bound_fractions({"screened": 0, "strict": 0, "optimistic": 0})


# --------------------------------------------------------------------------- tables


def test_site_table_sums_to_the_target_and_hides_suppressed_sites(synthetic):
    _, est = synthetic
    plan = _plan(source="cohort", approach=0.1)
    sites = rc.build_sites(plan, est)
    out = rc.run_bound(plan, sites, "strict", 0.4, 6000, with_need=False)
    table = rc.site_table(out.result, est.table, hidden_sites=("S001", "S002"))
    frame = table.frame
    assert frame["expected"].sum() == pytest.approx(plan.target, rel=1e-6)
    assert list(frame["site"].iloc[-2:]) == ["S001", "S002"]  # hidden sites last: their rank would bound them
    assert frame["expected"].iloc[:-2].is_monotonic_decreasing
    assert rc.site_table(out.result, est.table).frame["expected"].is_monotonic_decreasing
    assert frame["screened"].sum() == 6000 and "opens_month" not in frame.columns
    masked = table.masked().set_index("site")
    for col in ("screened", "candidate_rate", "rate_mean", "rate_80", "expected", "share_pct"):
        assert masked.loc[["S001", "S002"], col].isna().all(), col
        assert masked.drop(index=["S001", "S002"])[col].notna().all(), col
    assert masked.loc["S001", "country"]  # the site itself is still listed
    staggered = rc.build_sites(_plan(source="cohort", approach=0.1, stagger=6.0), est)
    res = rc.run_bound(_plan(), staggered, "strict", 0.4, 6000, with_need=False).result
    assert "opens_month" in rc.site_table(res, est.table).frame.columns
    visible = rc.visible_contribution(out.result, ("S001",)).site_contribution
    assert "S001" not in set(visible["site_id"]) and len(visible) == est.n_sites - 1


def test_summary_and_comparison_tables():
    plan = _plan()
    sites = rc.build_sites(plan, None)
    a = rc.run_bound(plan, sites, "strict", 0.30, 5000)
    b = rc.run_bound(plan, sites, "strict", 0.36, 5000)
    summary = rc.summary_table({"strict": a, "optimistic": b}, DEADLINE)
    assert list(summary["bound"]) == ["Strict", "Optimistic"] and "note" not in summary.columns
    assert summary["median_months"].iloc[0] == pytest.approx(a.result.median)
    assert summary["p_deadline_pct"].iloc[0] == pytest.approx(100 * a.result.probability_by(DEADLINE))
    assert summary["sites_needed"].iloc[0] == a.need.additional
    table = rc.comparison_table({"strict": (a, b)}, ("Protocol", "Scenario"), DEADLINE)
    saved = fc.Comparison(a.result, b.result, ("Protocol", "Scenario")).saved_weeks
    assert saved > 0 and table["saved_weeks"].iloc[1] == pytest.approx(saved) and pd.isna(table["saved_weeks"].iloc[0])
    sentence = rc.saving_sentence(a, b, ("Protocol", "Platelets >= 75"), ["INCL07.PLT min: 90 -> 75"])
    assert sentence.startswith(f"“Platelets >= 75” (INCL07.PLT min: 90 -> 75) saves {saved:.1f} weeks")
    assert "costs" in rc.saving_sentence(b, a, ("Protocol", "Stricter"), [])
    none = rc.run_bound(plan, sites, "optimistic", 0.0, 5000)
    mixed = rc.summary_table({"strict": a, "optimistic": none}, DEADLINE)
    assert mixed["note"].iloc[1].startswith("target unreachable") and pd.isna(mixed["median_months"].iloc[1])


def test_site_contribution_chart_orders_bars_by_size():
    res = fc.forecast(_sites(), 0.3, target=100, start=START, n_sims=500)
    fig = fcharts.site_contribution_chart(res)
    assert fig.layout.yaxis.categoryorder == "total ascending"  # largest on top, whatever the country


def test_target_text_says_which_figure_the_page_uses():
    from kn026.core.criteria import Enrollment

    declared = Enrollment(286, "whole study", "KN026-001 estimated enrollment")
    assert rc.target_text(declared, 286) == ("286 patients (whole study, KN026-001 estimated enrollment); the "
                                             "protocol gives no split between stages, enter this stage's share")
    assert rc.target_text(declared, 143) == ("143 patients, 50.0 % of the protocol file's 286 patients (whole study, "
                                             "KN026-001 estimated enrollment)")
    assert rc.target_text(Enrollment(), 50) == "50 patients (the protocol file declares no enrolment target)"
    assert "give the enrolment target" in rc.Plan().check()
