"""Recruitment forecast (kn026/forecast/model.py): closed forms against simulation, calibration of
prediction intervals against an independent event-level simulator, site-rate estimation,
edge cases, determinism, CLI."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kn026.cli import forecast as fcli
from kn026.forecast import charts as fcharts
from kn026.forecast import model as fc
from kn026.forecast import sites as fsites
from kn026.ingest import synth

START = dt.date(2025, 1, 1)
TARGET = 286  # KN026-001 estimated enrollment (the protocol file\'s `enrollment:`)


def _sites(k=30, mean=2.0, cv=0.7, stagger=4.0, ramp=2.0):
    return fsites.SiteInputs.from_inputs(k, mean, cv=cv, stagger_months=stagger, ramp_months=ramp)


def _history(rng, k=60, shape=1.5, mean=3.0, span_days=540, with_activation=False):
    """Own Poisson-Gamma site data: rates ~ Gamma, activation uniform over the first 2/3 of
    the window, counts Poisson over the open time, dates uniform over it."""
    rates = rng.gamma(shape, mean / shape, size=k)
    end = pd.Timestamp("2024-12-31")
    begin = end - pd.Timedelta(days=span_days - 1)
    act_day = rng.integers(0, int(span_days * 2 / 3), size=k)
    open_days = span_days - act_day  # activation day .. end inclusive
    counts = rng.poisson(rates * open_days / fsites.DAYS_PER_MONTH)
    site = np.repeat(np.arange(k), counts)
    offs = act_day[site] + np.floor(rng.random(site.size) * open_days[site]).astype(int)
    ids = np.array([f"S{i:03d}" for i in range(k)])
    rows = {"site_id": ids[site], "country": "XX",
            "screening_date": begin + pd.to_timedelta(offs, unit="D"),
            "activation_date": begin + pd.to_timedelta(act_day[site], unit="D")}
    frame = pd.DataFrame(rows)
    if not with_activation:
        frame = frame.drop(columns="activation_date")
    truth = pd.Series(rates, index=[f"S{i:03d}" for i in range(k)], name="true_rate")
    return frame, truth, end


# ---------------------------------------------------------------------------
# Closed forms vs Monte Carlo
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("screened", [None, 400])
def test_simulated_counts_match_closed_form_mean_and_variance(screened):
    sites = _sites()
    n = 20_000
    res = fc.forecast(sites, 0.35, 0.8, target=150, start=START, n_sims=n, seed=3,
                      horizon_months=14, keep_paths=True, fraction_screened=screened)
    grid = res.curve["month"].to_numpy()
    for j in np.linspace(4, len(grid) - 1, 6).astype(int):
        t = grid[j]
        x = res.paths[:, j].astype(float)
        mean = fc.expected_enrolled(sites, t, 0.35, 0.8, fraction_screened=screened)
        var = fc.variance_enrolled(sites, t, 0.35, 0.8, fraction_screened=screened)
        assert abs(x.mean() - mean) <= 5 * math.sqrt(var / n), (t, x.mean(), mean)
        m4 = np.mean((x - x.mean()) ** 4)
        se_var = math.sqrt(max(m4 - x.var() ** 2, 1e-12) / n)
        assert abs(x.var(ddof=1) - var) <= 5 * se_var, (t, x.var(), var)


def test_closed_form_single_site_is_negative_binomial():
    # One site, rate ~ Gamma(shape 2, mean 3), open from 0, no ramp: N(t) ~ NB with
    # mean c m t and variance c m t + (c m t)^2 / shape.
    s = fsites.SiteInputs(("A",), np.array([3.0]), np.array([2.0]), np.array([0.0]))
    c = 0.5 * 0.8
    t = np.array([0.0, 1.0, 6.0])
    np.testing.assert_allclose(fc.expected_enrolled(s, t, 0.5, 0.8), c * 3 * t)
    np.testing.assert_allclose(fc.variance_enrolled(s, t, 0.5, 0.8), c * 3 * t + (c * 3 * t) ** 2 / 2)
    np.testing.assert_allclose(fc.expected_enrolled(s, 2.0, 0.5, 0.8, enrolled=7), 7 + c * 6)


def test_ramp_integral_and_mean_curve_with_ramp():
    # Ramp 2 months: open time is u^2 / 4 while ramping, u - 1 after.
    np.testing.assert_allclose(fsites.ramp_integral([-1, 0, 1, 2, 5], 2.0), [0, 0, 0.25, 1.0, 4.0])
    np.testing.assert_allclose(fsites.ramp_integral([-1, 0, 3], 0.0), [0, 0, 3])
    np.testing.assert_allclose(fsites.ramp_level([-1, 1, 3], 2.0), [0, 0.5, 1])


def test_time_is_exact_inverse_of_cumulative_intensity():
    rng = np.random.default_rng(1)
    act = np.array([0.0, 0.5, 0.5, 3.0, 7.25])
    lam = rng.gamma(2.0, 1.0, size=(500, act.size))
    ev = rng.gamma(40, 1.0, size=500)
    for ramp in (0.0, 1.5, 4.0):
        t = fc.time_to_count(lam, act, ramp, ev)
        back = np.array([fc.cumulative_intensity(lam[i:i + 1], act, ramp, [t[i]])[0, 0] for i in range(500)])
        np.testing.assert_allclose(back, ev, rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(act=st.lists(st.floats(0, 24), min_size=1, max_size=8),
       ramp=st.sampled_from([0.0, 0.5, 3.0]), seed=st.integers(0, 2 ** 32 - 1),
       target=st.integers(1, 200))
def test_inverse_property(act, ramp, seed, target):
    rng = np.random.default_rng(seed)
    act = np.array(act)
    lam = rng.gamma(1.0, 2.0, size=(20, act.size))
    ev = rng.gamma(target, 1.0, size=20)
    t = fc.time_to_count(lam, act, ramp, ev)
    assert np.all(t >= act.min() - 1e-12)
    back = np.array([fc.cumulative_intensity(lam[i:i + 1], act, ramp, [t[i]])[0, 0] for i in range(20)])
    np.testing.assert_allclose(back, ev, rtol=1e-8, atol=1e-9)


def test_paths_cross_target_exactly_at_simulated_time():
    res = fc.forecast(_sites(), 0.3, target=120, start=START, n_sims=3000, seed=5, keep_paths=True)
    grid = res.curve["month"].to_numpy()
    reached = res.paths >= res.target
    before = res.times[:, None] <= grid[None, :]
    assert np.array_equal(reached, before)
    # and paths never decrease
    assert np.all(np.diff(res.paths, axis=1) >= 0)
    # the fan chart's median crosses the target where the median time lies
    first = grid[np.argmax(res.curve["q50"].to_numpy() >= res.target)]
    step = grid[1] - grid[0]
    assert first - step <= res.median <= first + 1e-9


# ---------------------------------------------------------------------------
# Calibration against an independent, event-level simulator
# ---------------------------------------------------------------------------
def _naive_trial(rng, sites: fsites.SiteInputs, p, u, target, horizon=80.0):
    """One trial patient by patient: Gamma rates, screenings at full-rate Poisson times kept
    with probability equal to the ramp level, each screened patient eligible with p and
    enrolling with u. Returns the time of the target-th enrolment."""
    times = []
    lam = rng.gamma(sites.shape, sites.mean / sites.shape)
    for i in range(sites.n_sites):
        a = sites.activation[i]
        n = rng.poisson(lam[i] * (horizon - a))
        t = a + rng.random(n) * (horizon - a)
        keep = rng.random(n) < fsites.ramp_level(t - a, sites.ramp_months)
        t = t[keep]
        enrol = (rng.random(t.size) < p) & (rng.random(t.size) < u)
        times.append(t[enrol])
    allt = np.sort(np.concatenate(times))
    return allt[target - 1] if allt.size >= target else np.inf


def test_prediction_intervals_cover_independent_simulated_trials():
    sites = _sites(k=20, mean=3.0, cv=0.7, stagger=4.0, ramp=2.0)
    p, u, target = 0.4, 0.85, 60
    res = fc.forecast(sites, p, u, target=target, start=START, n_sims=10_000, seed=11)
    rng = np.random.default_rng(2024)
    truth = np.array([_naive_trial(rng, sites, p, u, target) for _ in range(200)])
    lo80, hi80 = res.interval(0.8)
    lo95, hi95 = res.interval(0.95)
    cover80 = np.mean((truth >= lo80) & (truth <= hi80))
    cover95 = np.mean((truth >= lo95) & (truth <= hi95))
    # binomial sd over 200 trials: 0.028 (80 %), 0.015 (95 %)
    assert 0.70 <= cover80 <= 0.90, cover80
    assert cover95 >= 0.90, cover95
    assert 0.4 <= np.mean(truth <= res.median) <= 0.6


def test_intervals_calibrated_when_rates_are_estimated_from_history():
    """Whole pipeline: history from known rates -> estimate_sites -> forecast; the actual
    future trial (true rates, all sites open at the start) is Gamma(N, c * sum(rates))."""
    rng = np.random.default_rng(77)
    inside80 = inside95 = 0
    reps = 60
    p, u, target = 0.3, 0.85, 80
    for r in range(reps):
        frame, truth, end = _history(rng, k=15, mean=2.0, span_days=365)
        sites = fsites.estimate_sites(frame)
        # a short fan chart horizon: only the time-to-target quantiles are checked here
        res = fc.forecast(sites, p, u, target=target, start=START, n_sims=1000, seed=r, horizon_months=1)
        rate = p * u * truth.loc[list(sites.site_id)].sum()
        actual = rng.gamma(target, 1.0) / rate
        lo, hi = res.interval(0.8)
        inside80 += lo <= actual <= hi
        lo, hi = res.interval(0.95)
        inside95 += lo <= actual <= hi
    # 60 replicates: binomial sd 0.05 (80 %); measured 0.80-0.88 over five master seeds
    assert 0.65 <= inside80 / reps <= 0.95, inside80
    assert inside95 / reps >= 0.85, inside95


# ---------------------------------------------------------------------------
# Site rate estimation
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("with_activation", [False, True])
def test_estimated_site_rates_cover_known_rates(with_activation):
    rng = np.random.default_rng(42)
    hits80 = hits95 = total = 0
    for _ in range(5):
        frame, truth, end = _history(rng, k=60, with_activation=with_activation)
        s80 = fsites.estimate_sites(frame, as_of=end)
        s95 = fsites.estimate_sites(frame, as_of=end, level=0.95)
        t80 = s80.table.set_index("site_id").join(truth)
        t95 = s95.table.set_index("site_id").join(truth)
        hits80 += int(((t80.rate_lo <= t80.true_rate) & (t80.true_rate <= t80.rate_hi)).sum())
        hits95 += int(((t95.rate_lo <= t95.true_rate) & (t95.true_rate <= t95.rate_hi)).sum())
        total += len(t80)
        assert s80.source == "cohort" and s80.table.attrs["as_of"] == "2024-12-31"
        expected_events = t80.screened if with_activation else t80.screened - 1
        assert (t80.events == expected_events).all()
    assert 0.72 <= hits80 / total <= 0.88, hits80 / total  # ~300 sites: sd 0.023
    assert hits95 / total >= 0.90, hits95 / total


def test_prior_fit_recovers_known_gamma():
    rng = np.random.default_rng(9)
    shape, mean = 2.0, 4.0
    t = rng.uniform(3, 24, size=400)
    k = rng.poisson(rng.gamma(shape, mean / shape, size=400) * t)
    for method in ("ml", "mom"):
        alpha, beta, how = fsites.fit_gamma_prior(k, t, method)
        assert 1.4 <= alpha <= 2.9, (method, alpha)
        assert 3.5 <= alpha / beta <= 4.5, (method, alpha / beta)
        assert "empirical-Bayes" in how
    # identical sites: no detectable heterogeneity -> alpha capped at the total events
    k_same = rng.poisson(3.0 * t)
    alpha, beta, _ = fsites.fit_gamma_prior(k_same, t)
    assert alpha <= k_same.sum() + 1e-6 and alpha > 50


def test_estimate_from_synth_cohort_covers_true_site_rates():
    df, true = synth.generate(8000, 3, sites=40, return_sites=True)
    s = fsites.estimate_sites(df[["site_id", "country", "screening_date"]], level=0.95)
    tab = s.table.merge(true[["site_id", "rate_per_month"]], on="site_id")
    assert len(tab) == 40
    inside = (tab.rate_lo <= tab.rate_per_month) & (tab.rate_per_month <= tab.rate_hi)
    assert inside.mean() >= 0.85, tab[~inside]
    # countries carried over
    assert set(tab["country"]) <= set(true["country"])


def test_estimate_sites_input_checks_and_single_site():
    with pytest.raises(ValueError, match="needs columns site_id and screening_date; missing: screening_date"):
        fsites.estimate_sites(pd.DataFrame({"site_id": ["A"]}))
    with pytest.raises(ValueError, match="not dates"):
        fsites.estimate_sites(pd.DataFrame({"site_id": ["A"], "screening_date": ["soon"]}))
    with pytest.raises(ValueError, match="no screenings"):
        fsites.estimate_sites(pd.DataFrame({"site_id": [None], "screening_date": ["2024-01-01"]}))
    one = pd.DataFrame({"site_id": ["A"] * 13,
                        "screening_date": pd.date_range("2024-01-01", periods=13, freq="28D")})
    s = fsites.estimate_sites(one)
    assert s.n_sites == 1 and "reference prior" in s.note
    # 12 events after the first over 12 * 28 + 0.5 days
    assert s.table.loc[0, "events"] == 12
    assert s.mean[0] == pytest.approx(12.5 / ((12 * 28 + 0.5) / fsites.DAYS_PER_MONTH))
    res = fc.forecast(s, 0.5, target=20, start=START, n_sims=2000)
    assert np.isfinite(res.median) and res.median > 0
    # as_of cuts the history
    s_cut = fsites.estimate_sites(one, as_of="2024-03-01")
    assert s_cut.table.loc[0, "screened"] == 3
    # a known activation date: all 13 screenings count, exposure from that date
    s_act = fsites.estimate_sites(one, activation_dates={"A": "2023-12-01"})
    last = one["screening_date"].max()
    days = (last - pd.Timestamp("2023-12-01")).days + 1
    assert s_act.table.loc[0, "events"] == 13 and bool(s_act.table.loc[0, "activation_known"])
    assert s_act.table.loc[0, "exposure_months"] == pytest.approx(days / fsites.DAYS_PER_MONTH)
    with pytest.raises(ValueError, match="unknown site"):
        fsites.estimate_sites(one, activation_dates={"B": "2023-12-01"})


# ---------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------
def test_no_eligible_patients_is_unreachable():
    with pytest.raises(ValueError, match="target unreachable: no eligible patients"):
        fc.forecast(_sites(), 0.0, target=TARGET, start=START)
    with pytest.raises(ValueError, match="target unreachable: no eligible patients"):
        fc.sites_needed(_sites(), 0.0, "2026-01-01", target=TARGET, start=START)
    with pytest.raises(ValueError, match="target unreachable: uptake is 0"):
        fc.forecast(_sites(), 0.3, uptake=0.0, target=TARGET, start=START)


def test_zero_rate_is_unreachable():
    with pytest.raises(ValueError, match="target unreachable: every site's screening rate is 0"):
        fc.forecast(fsites.SiteInputs.from_inputs(5, 0.0), 0.4, target=TARGET, start=START)


def test_one_site_from_inputs():
    s = fsites.SiteInputs.from_inputs(1, 4.0, cv=0.5)
    res = fc.forecast(s, 0.5, 1.0, target=10, start=START, n_sims=5000, seed=1)
    # E[time] for rate ~ Gamma(4, 2 * 4 / 4 ...) is finite; median near 10 / 2 = 5 months
    assert 3.5 < res.median < 7
    assert res.site_contribution["expected_enrolled"].sum() == pytest.approx(10)


def test_known_rates_give_gamma_time():
    # cv 0: rate known, so the time of the N-th enrolment is Gamma(N, c * total rate).
    s = fsites.SiteInputs.from_inputs(10, 2.0, cv=0.0)
    res = fc.forecast(s, 0.5, 1.0, target=50, start=START, n_sims=20_000, seed=2)
    assert res.mean == pytest.approx(50 / 10, rel=0.01)
    assert np.std(res.times) == pytest.approx(math.sqrt(50) / 10, rel=0.03)


def test_target_already_met():
    res = fc.forecast(_sites(), 0.3, target=100, enrolled=100, start=START, n_sims=500)
    assert res.median == 0 and res.interval(0.95) == (0.0, 0.0)
    assert res.probability_by(START) == 1.0
    assert res.curve["q50"].iloc[0] == 100
    assert "already met" in res.readout()
    assert fc.sites_needed(_sites(), 0.3, "2025-02-01", target=100, enrolled=120, start=START).additional == 0
    assert fc.forecast(_sites(), 0.0, target=0, start=START, n_sims=10).median == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"eligible_fraction": 1.5}, "between 0 and 1"),
    ({"uptake": -0.1}, "uptake must be between 0 and 1"),
    ({"target": 10.5}, "target must be a whole number"),
    ({"n_sims": 0}, "n_sims must be >= 1"),
    ({"horizon_months": -1}, "horizon must be > 0"),
    ({"start": "2025-13-01"}, "not an ISO date"),
])
def test_bad_inputs_have_clear_messages(kwargs, message):
    args = {"eligible_fraction": 0.3, "target": TARGET, "start": START, "n_sims": 100} | kwargs
    with pytest.raises(ValueError, match=message):
        fc.forecast(_sites(), **args)


def test_site_inputs_validation():
    with pytest.raises(ValueError, match="whole number >= 1"):
        fsites.SiteInputs.from_inputs(0, 1.0)
    with pytest.raises(ValueError, match="not both"):
        fsites.SiteInputs.from_inputs(3, 1.0, cv=0.5, shape=4)
    with pytest.raises(ValueError, match="activation schedule has 2 entries for 3 sites"):
        fsites.SiteInputs.from_inputs(3, 1.0, activation=[0, 1])
    s = fsites.SiteInputs.from_inputs(4, 2.0, shape=4.0, stagger_months=8, ramp_months=1)
    np.testing.assert_allclose(s.activation, [0, 2, 4, 6])
    np.testing.assert_allclose(s.variance, [1.0] * 4)
    assert s.subset(["Site 2"]).n_sites == 1
    with pytest.raises(ValueError, match="unknown site id"):
        s.subset(["nope"])


# ---------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------
def test_same_seed_same_numbers_and_no_global_rng():
    state = np.random.get_state()[1].copy()
    a = fc.forecast(_sites(), 0.3, target=TARGET, start=START, n_sims=2000, seed=4)
    b = fc.forecast(_sites(), 0.3, target=TARGET, start=START, n_sims=2000, seed=4)
    c = fc.forecast(_sites(), 0.3, target=TARGET, start=START, n_sims=2000, seed=5)
    assert np.array_equal(a.times, b.times)
    pd.testing.assert_frame_equal(a.curve, b.curve)
    pd.testing.assert_frame_equal(a.site_contribution, b.site_contribution)
    assert not np.array_equal(a.times, c.times)
    n1 = fc.sites_needed(_sites(), 0.3, "2026-01-01", target=TARGET, start=START, n_sims=2000, seed=4)
    n2 = fc.sites_needed(_sites(), 0.3, "2026-01-01", target=TARGET, start=START, n_sims=2000, seed=4)
    pd.testing.assert_frame_equal(n1.table, n2.table)
    assert np.array_equal(np.random.get_state()[1], state)


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------
def test_result_outputs():
    res = fc.forecast(_sites(), 0.3, target=150, start=START, n_sims=4000, seed=1)
    lo80, hi80 = res.interval(0.8)
    lo95, hi95 = res.interval(0.95)
    assert lo95 <= lo80 <= res.median <= hi80 <= hi95
    assert res.probability_by(hi80) == pytest.approx(0.9, abs=0.01)
    assert res.probability_by(res.date_at(res.median)) == pytest.approx(0.5, abs=0.02)
    assert res.probability_by(START - dt.timedelta(days=1)) == 0.0
    cols = ["month", "date", "mean", "sd", *fsites.QUANTILE_COLUMNS]
    assert list(res.curve.columns) == cols
    q = res.curve[list(fsites.QUANTILE_COLUMNS)].to_numpy()
    assert np.all(np.diff(q, axis=1) >= 0) and np.all(np.diff(q, axis=0) >= 0)
    contrib = res.site_contribution
    assert contrib["expected_enrolled"].sum() == pytest.approx(150)
    assert contrib["share"].sum() == pytest.approx(1.0)
    # earlier-opening sites contribute more on average (same rate distribution)
    assert contrib["expected_enrolled"].iloc[:10].mean() > contrib["expected_enrolled"].iloc[-10:].mean()
    summary = res.summary("2026-06-01")
    json.dumps(summary)
    assert summary["median_date"] == res.date_at(res.median).isoformat()
    assert 0 <= summary["probability_by_deadline"] <= 1


def test_sites_needed_is_minimal_and_agrees_with_a_forecast():
    sites = _sites(k=10, mean=2.0, cv=0.6, stagger=2.0, ramp=1.0)
    deadline = dt.date(2026, 1, 1)
    need = fc.sites_needed(sites, 0.4, deadline, target=120, start=START, new_site_activation=1.0,
                           n_sims=4000, seed=8)
    assert need.additional > 0
    probs = need.table["probability"].to_numpy()
    assert np.all(np.diff(probs) >= 0)
    assert probs[-1] >= 0.8 > probs[-2]
    now = fc.forecast(sites, 0.4, target=120, start=START, n_sims=4000, seed=8)
    assert need.probability_now == pytest.approx(now.probability_by(deadline), abs=0.02)
    more = fc.forecast(sites.with_new_sites(need.additional, 1.0), 0.4, target=120, start=START,
                       n_sims=4000, seed=8)
    assert more.probability_by(deadline) == pytest.approx(need.probability, abs=0.03)
    assert "more site(s)" in need.sentence()
    json.dumps(need.to_dict())
    easy = fc.sites_needed(sites, 0.4, "2030-01-01", target=120, start=START, n_sims=2000)
    assert easy.additional == 0 and "no additional site" in easy.sentence()
    with pytest.raises(ValueError, match="before the start"):
        fc.sites_needed(sites, 0.4, "2024-06-01", target=TARGET, start=START)
    with pytest.raises(ValueError, match="open too late"):
        fc.sites_needed(sites, 0.4, "2025-03-01", target=500, start=START, new_site_activation="2025-04-01")


def test_compare_fractions_uses_common_random_numbers():
    cmp_ = fc.compare_fractions(_sites(), 0.30, 0.36, labels=("Protocol", "Platelets >= 75"),
                                target=150, start=START, n_sims=3000, seed=2)
    assert np.all(cmp_.b.times <= cmp_.a.times + 1e-12)
    assert cmp_.saved_weeks > 0
    mid, lo, hi = cmp_.paired()
    assert 0 <= lo <= mid <= hi
    assert "'Platelets >= 75' saves" in cmp_.sentence()
    table = cmp_.table("2026-01-01")
    assert list(table[""]) == ["Protocol", "Platelets >= 75"]
    json.dumps(cmp_.to_dict("2026-01-01"), default=str)


def test_figures_are_plain_plotly():
    res = fc.forecast(_sites(), 0.3, target=150, start=START, n_sims=1000, label="Protocol")
    other = fc.forecast(_sites(), 0.36, target=150, start=START, n_sims=1000, label="Scenario")
    fig = fcharts.fan_chart(res, other=other, deadline="2026-01-01")
    assert isinstance(fig, go.Figure)
    names = [t.name for t in fig.data]
    assert "Protocol: median" in names and "Scenario: median" in names
    assert "Protocol: 80 % band" in names
    bars = fcharts.site_contribution_chart(res)
    assert isinstance(bars, go.Figure)
    assert sum(len(t.y) for t in bars.data) == res.sites.n_sites
    source = Path(fc.__file__).read_text()
    assert "import streamlit" not in source and "from streamlit" not in source


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def _parser():
    parser = argparse.ArgumentParser(prog="kn026")
    fcli.add_cli(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.fixture(scope="module")
def synth_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("fc") / "cohort.csv"
    synth.write(path, 3000, 5, sites=12)
    return path


def test_cli_json_from_cohort_sites(synth_csv, capsys):
    args = _parser().parse_args(["forecast", "--cohort", str(synth_csv), "--stage", "2", "--target", "200",
                                 "--start", "2026-01-01", "--deadline", "2026-04-01", "--n-sims", "2000",
                                 "--scenario", "data/scenario_crcl50.yaml", "--json", "--ramp", "1"])
    assert fcli.main_forecast(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sites"]["source"] == "cohort" and doc["sites"]["n"] == 12
    for bound in ("strict", "optimistic"):
        entry = doc["bounds"][bound]
        assert entry["median_months"] > 0 and "sites_needed" in entry
        assert doc["scenario"]["bounds"][bound]["saved_weeks_median"] is not None
    assert doc["bounds"]["strict"]["median_months"] >= doc["bounds"]["optimistic"]["median_months"]


def test_cli_text_with_input_sites(synth_csv, capsys):
    args = _parser().parse_args(["forecast", "--cohort", str(synth_csv), "--stage", "1", "--sites", "8",
                                 "--mean-rate", "3", "--cv", "0.5", "--start", "2026-01-01",
                                 "--deadline", "2026-06-01", "--n-sims", "1000", "--seed", "3"])
    assert fcli.main_forecast(args) == 0
    out = capsys.readouterr().out
    assert "strict" in out and "optimistic" in out and "median" in out and "80 % interval" in out


def test_cli_approach_share_thins_the_estimated_rates(synth_csv, capsys):
    """--approach a: rates a x lambda_i, the same forecast as the eligible fraction times a."""
    base = ["forecast", "--cohort", str(synth_csv), "--stage", "1", "--start", "2026-01-01", "--n-sims", "1000",
            "--json"]
    docs = {}
    for a in ("1", "0.25"):
        assert fcli.main_forecast(_parser().parse_args([*base, "--approach", a])) == 0
        docs[a] = json.loads(capsys.readouterr().out)
    full, quarter = docs["1"], docs["0.25"]
    assert quarter["approach"] == 0.25
    assert quarter["sites"]["mean_rate_total"] == pytest.approx(0.25 * full["sites"]["mean_rate_total"])
    assert "25.0% of candidates approached" in quarter["sites"]["note"]
    f = full["bounds"]["strict"]["eligible_fraction"]
    frame = pd.read_csv(synth_csv, usecols=["site_id", "screening_date", "country"])
    direct = fc.forecast(fsites.estimate_sites(frame), 0.25 * f, target=TARGET, start="2026-01-01",
                         n_sims=1000, fraction_screened=full["screened"])
    assert quarter["bounds"]["strict"]["median_months"] == pytest.approx(direct.median, rel=0.02)
    assert quarter["bounds"]["strict"]["median_months"] > 3 * full["bounds"]["strict"]["median_months"]


@pytest.mark.parametrize("argv, message", [
    (["--mean-rate", "2"], "--mean-rate and --cv describe sites given with --sites K"),
    (["--sites", "3", "--mean-rate", "1", "--approach", "0.5"], "--approach thins rates estimated from the cohort"),
    (["--approach", "1.5"], "approach share must be between 0 and 100 %"),
    (["--sites", "3"], "--sites needs --mean-rate"),
    (["--deadline", "June"], "not an ISO date"),
])
def test_cli_bad_arguments(synth_csv, argv, message):
    args = _parser().parse_args(["forecast", "--cohort", str(synth_csv), "--stage", "2", *argv])
    with pytest.raises(ValueError, match=message):
        fcli.main_forecast(args)


def test_cli_cohort_without_sites_or_eligible_patients(tmp_path):
    path = tmp_path / "young.csv"
    pd.DataFrame({"patient_id": ["a", "b", "c"], "age_years": [15, 16, 17]}).to_csv(path, index=False)
    base = ["forecast", "--cohort", str(path), "--stage", "2", "--start", "2026-01-01"]
    with pytest.raises(ValueError, match="has no screening_date or site_id column"):
        fcli.main_forecast(_parser().parse_args(base))
    with pytest.raises(ValueError, match="target unreachable: no eligible patients"):
        fcli.main_forecast(_parser().parse_args([*base, "--sites", "5", "--mean-rate", "2"]))
