"""Recruitment forecast: the Poisson-Gamma model of Anisimov and Fedorov (2007).

How long to enrol N patients, with which sites, and what a relaxed criterion buys.

Model (docs/forecast.md has the formulas and assumptions):

* Site i screens patients as a Poisson process with rate lambda_i per month, from its
  activation a_i (months after the forecast start), optionally rising linearly from 0
  to full speed over `ramp_months`. Rates differ across sites: lambda_i ~ Gamma(shape_i,
  rate_i). From a cohort with site_id and screening_date the Gamma is each site's
  empirical-Bayes posterior (prior fitted across sites by maximum likelihood of the
  negative binomial, shape alpha + k_i, rate beta + T_i); from inputs it is the same
  Gamma(shape, shape / mean) for every site.
* A screened patient is eligible with probability p (the funnel's strict or optimistic
  fraction) and then enrols with probability u (uptake: consent, willingness,
  investigator judgement). Thinning a Poisson process keeps it Poisson, so enrolment
  at site i is Poisson with rate c * lambda_i, c = p * u.
* Given the rates, all enrolments form one Poisson process with cumulative intensity
  Lambda(t) = c * sum_i lambda_i * g(t - a_i), piecewise linear (quadratic while sites
  ramp up). The time of the N-th enrolment is exactly Lambda^{-1}(Gamma(N, 1)), found
  per simulated trial in O(sites) with cumulative sums, vectorised over trials.

Closed forms (`expected_enrolled`, `variance_enrolled`) give the mean and variance of
the count at any time, including the rate (posterior) uncertainty; Monte Carlo gives
what has no closed form (time-to-target quantiles, fan chart bands, sites needed).
Randomness only from `numpy.random.default_rng(seed)`; same inputs and seed, same
numbers. Figures are pure plotly; this module never imports streamlit.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kn026.forecast.sites import (
    _CHUNK,
    DAYS_PER_MONTH,
    DEFAULT_PROBABILITY,
    DEFAULT_SIMS,
    DEFAULT_UPTAKE,
    MAX_HORIZON,
    QUANTILE_COLUMNS,
    QUANTILES,
    SiteInputs,
    _fraction,
    _months,
    date_after,
    months_between,
    ramp_integral,
    ramp_level,
    to_date,
)


# ---------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------
def _fraction_moments(eligible_fraction: float, fraction_screened: int | None) -> tuple[float, float]:
    """E[p] and E[p^2]: p fixed, or Beta(f n + 1/2, (1 - f) n + 1/2) estimated from n screened."""
    f = _fraction(eligible_fraction)
    if fraction_screened is None:
        return f, f * f
    a, b = _beta_params(f, fraction_screened)
    return a / (a + b), a * (a + 1) / ((a + b) * (a + b + 1))


def _beta_params(f: float, n) -> tuple[float, float]:
    n = float(n)
    if not n > 0:
        raise ValueError(f"fraction_screened must be > 0 patients, got {n}")
    return f * n + 0.5, (1 - f) * n + 0.5


def expected_enrolled(sites: SiteInputs, t, eligible_fraction: float, uptake: float = DEFAULT_UPTAKE,
                      *, enrolled: int = 0, fraction_screened: int | None = None) -> np.ndarray:
    """E[N(t)] = enrolled + u E[p] sum_i m_i g_i(t), m_i the mean rate, g_i the opened time."""
    ep, _ = _fraction_moments(eligible_fraction, fraction_screened)
    g = _opened_time(sites, t)  # (..., K)
    return enrolled + _fraction(uptake, "uptake") * ep * (g @ sites.mean)


def variance_enrolled(sites: SiteInputs, t, eligible_fraction: float, uptake: float = DEFAULT_UPTAKE,
                      *, fraction_screened: int | None = None) -> np.ndarray:
    """Var N(t) = u E[p] M + u^2 (E[p^2] (M^2 + W) - E[p]^2 M^2),
    M = sum_i m_i g_i(t), W = sum_i Var(lambda_i) g_i(t)^2 (m_i^2 / shape_i for a Gamma).

    With a fixed fraction this is the sum of the sites' negative binomial variances,
    c M + c^2 W (Poisson noise plus rate uncertainty)."""
    u = _fraction(uptake, "uptake")
    ep, ep2 = _fraction_moments(eligible_fraction, fraction_screened)
    g = _opened_time(sites, t)
    m = g @ sites.mean
    w = (g * g) @ sites.variance
    return u * ep * m + u * u * (ep2 * (m * m + w) - ep * ep * m * m)


def _opened_time(sites: SiteInputs, t) -> np.ndarray:
    """g_i(t): full-speed months site i has been open by t (shape t.shape + (K,))."""
    t = np.asarray(t, dtype=float)
    return ramp_integral(t[..., None] - sites.activation, sites.ramp_months)


# ---------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------
def _draw_rates(sites: SiteInputs, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, K) monthly screening rates, one row per simulated trial."""
    lam = np.empty((n, sites.n_sites))
    lam[:] = sites.mean
    rand = np.isfinite(sites.shape) & (sites.mean > 0)
    if rand.any():
        s = sites.shape[rand]
        lam[:, rand] = rng.gamma(s, sites.mean[rand] / s, size=(n, int(rand.sum())))
    return lam


def _knots(activation: np.ndarray, ramp: float):
    """Breakpoints of Lambda(t) and, per breakpoint, the change of the coefficients (P, Q, R)
    of Lambda(t) = P t^2 + Q t + R per unit rate of the site concerned."""
    a = np.asarray(activation, dtype=float)
    k = a.size
    sites = np.arange(k)
    if ramp > 0:
        r = float(ramp)
        times = np.concatenate([a, a + r])
        site = np.concatenate([sites, sites])
        dp = np.concatenate([np.full(k, 1 / (2 * r)), np.full(k, -1 / (2 * r))])
        dq = np.concatenate([-a / r, a / r + 1])
        dr = np.concatenate([a * a / (2 * r), -a * a / (2 * r) - (a + r / 2)])
    else:
        times, site, dp, dq, dr = a, sites, np.zeros(k), np.ones(k), -a
    order = np.argsort(times, kind="stable")
    return times[order], site[order], dp[order], dq[order], dr[order]


def time_to_count(intensity: np.ndarray, activation: np.ndarray, ramp: float, events: np.ndarray) -> np.ndarray:
    """Months until the cumulative intensity reaches `events`: Lambda^{-1}(events) per row.

    intensity: (n, K) enrolment rates per month at full speed; events: (n,) (for the
    N-th event of a Poisson process, a Gamma(N, 1) draw). Exact: Lambda is piecewise
    quadratic between the sorted knots (activations, ends of ramp-up), with
    coefficients from cumulative sums, so each row costs O(K). inf where never reached.
    """
    tau, site, dp, dq, dr = _knots(activation, ramp)
    n = intensity.shape[0]
    out = np.empty(n)
    quad = bool(np.any(dp))
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        lam = intensity[lo:hi][:, site]
        q = np.cumsum(lam * dq, axis=1)
        r = np.cumsum(lam * dr, axis=1)
        p = np.cumsum(lam * dp, axis=1) if quad else None
        v = (q * tau + r) if p is None else ((p * tau + q) * tau + r)
        g = events[lo:hi]
        idx = np.clip(np.count_nonzero(v <= g[:, None], axis=1) - 1, 0, tau.size - 1)
        rows = np.arange(hi - lo)
        t0 = tau[idx]
        qq, vv = q[rows, idx], v[rows, idx]
        pp = p[rows, idx] if p is not None else 0.0
        slope = 2 * pp * t0 + qq
        d = np.maximum(g - vv, 0.0)
        den = slope + np.sqrt(np.maximum(slope * slope + 4 * pp * d, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(den > 0, 2 * d / den, np.where(d > 0, np.inf, 0.0))
        out[lo:hi] = t0 + step
    return out


def cumulative_intensity(intensity: np.ndarray, activation: np.ndarray, ramp: float, t) -> np.ndarray:
    """Lambda(t) per row of `intensity` (n, K) at times t (J,): (n, J)."""
    g = ramp_integral(np.asarray(t, dtype=float)[None, :] - np.asarray(activation)[:, None], ramp)
    return intensity @ g


def _paths(x: np.ndarray, gam: np.ndarray | None, remaining: int, rng: np.random.Generator) -> np.ndarray:
    """Enrolment counts at grid times, consistent with the time to target in every trial.

    x: (n, J) cumulative intensities at the grid, gam: the Gamma(N, 1) draws that fixed
    the N-th event. Given that the N-th event of the unit-rate process sits at gam, the
    first N - 1 are uniform on [0, gam] (sequential binomials over grid intervals) and the
    later ones a unit Poisson process beyond it. So count >= N exactly when t >= time.
    """
    n, cols = x.shape
    counts = np.empty((n, cols), dtype=np.int64)
    if gam is None:  # target already met: plain Poisson increments
        prev = np.zeros(n)
        total = np.zeros(n, dtype=np.int64)
        for j in range(cols):
            total = total + rng.poisson(np.maximum(x[:, j] - prev, 0.0))
            prev = np.maximum(prev, x[:, j])
            counts[:, j] = total
        return counts
    below = np.zeros(n, dtype=np.int64)
    above = np.zeros(n, dtype=np.int64)
    y_prev = np.zeros(n)
    over_prev = gam.copy()
    for j in range(cols):
        xj = x[:, j]
        y = np.maximum(np.minimum(xj, gam), y_prev)
        left = remaining - 1 - below
        # Only trials still before their N-th event, with points left and time elapsed, draw.
        todo = np.flatnonzero((left > 0) & (y > y_prev))
        if todo.size:
            room = gam[todo] - y_prev[todo]
            p = np.clip((y[todo] - y_prev[todo]) / room, 0.0, 1.0)
            below[todo] += rng.binomial(left[todo], p)
        over = np.maximum(np.maximum(xj, gam), over_prev)
        todo = np.flatnonzero(over > over_prev)
        if todo.size:
            above[todo] += rng.poisson(over[todo] - over_prev[todo])
        counts[:, j] = below + (xj >= gam) + above
        y_prev, over_prev = y, over
    return counts


def _grid(horizon: float) -> np.ndarray:
    for step in (0.25, 0.5, 1.0, 2.0, 3.0, 6.0, 12.0, 24.0, 60.0, 120.0, 600.0):
        if horizon / step <= 120:
            break
    cols = int(math.ceil(horizon / step - 1e-9))
    return np.arange(cols + 1) * step


# ---------------------------------------------------------------------------
# Forecast
# ---------------------------------------------------------------------------
@dataclass(eq=False)
class ForecastResult:
    """A simulated forecast of the time to reach `target` enrolled patients.

    times: months from `start` to the target in each simulated trial (0 if already met).
    curve: month, date, mean and sd (closed form), quantiles q025..q975 of enrolled
    patients (fan chart data). site_contribution: per site expected enrolled patients.
    """

    sites: SiteInputs
    eligible_fraction: float
    uptake: float
    target: int
    enrolled: int
    start: _dt.date
    n_sims: int
    seed: int
    times: np.ndarray
    curve: pd.DataFrame
    site_contribution: pd.DataFrame
    fraction_screened: int | None = None
    paths: np.ndarray | None = None  # (n_sims, len(curve)) counts, when keep_paths=True
    label: str = ""

    @property
    def remaining(self) -> int:
        return max(self.target - self.enrolled, 0)

    @property
    def enrolment_rate(self) -> float:
        """Expected enrolments per month once every site is at full speed."""
        ep, _ = _fraction_moments(self.eligible_fraction, self.fraction_screened)
        return float(self.uptake * ep * self.sites.mean.sum())

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.times, q))

    @property
    def median(self) -> float:
        return self.quantile(0.5)

    @property
    def mean(self) -> float:
        return float(np.mean(self.times))

    def interval(self, level: float = 0.8) -> tuple[float, float]:
        """Central prediction interval of the months to target (e.g. 0.8 -> q10..q90)."""
        if not 0 < level < 1:
            raise ValueError("interval level must be between 0 and 1")
        return self.quantile((1 - level) / 2), self.quantile((1 + level) / 2)

    def probability_by(self, when) -> float:
        """P(target reached by `when`: a date or a number of months after the start)."""
        return float(np.mean(self.times <= _months(self.start, when) + 1e-12))

    def date_at(self, months: float) -> _dt.date | None:
        return date_after(self.start, months)

    def summary(self, deadline=None) -> dict:
        """Plain-JSON summary (months, ISO dates, probabilities)."""
        lo80, hi80 = self.interval(0.8)
        lo95, hi95 = self.interval(0.95)

        def d(m):
            x = self.date_at(m)
            return x.isoformat() if x else None

        out = {
            "label": self.label, "target": self.target, "enrolled": self.enrolled,
            "eligible_fraction": self.eligible_fraction, "uptake": self.uptake,
            "start": self.start.isoformat(), "n_sims": self.n_sims, "seed": self.seed,
            "sites": self.sites.n_sites, "enrolment_rate_per_month": self.enrolment_rate,
            "median_months": _num(self.median), "mean_months": _num(self.mean),
            "pi80_months": [_num(lo80), _num(hi80)], "pi95_months": [_num(lo95), _num(hi95)],
            "median_date": d(self.median), "pi80_dates": [d(lo80), d(hi80)],
            "pi95_dates": [d(lo95), d(hi95)],
        }
        if deadline is not None:
            out["deadline"] = to_date(deadline).isoformat() if not isinstance(deadline, (int, float)) else deadline
            out["probability_by_deadline"] = self.probability_by(deadline)
        return out

    def readout(self) -> str:
        """One line: median and 80 % / 95 % intervals in months and dates."""
        if self.remaining == 0:
            return f"target {self.target} already met ({self.enrolled} enrolled): 0 months"
        lo80, hi80 = self.interval(0.8)
        lo95, hi95 = self.interval(0.95)
        return (f"median {_m(self.median)} months ({_d(self.date_at(self.median))}); "
                f"80 % interval {_m(lo80)}-{_m(hi80)} months; 95 % interval {_m(lo95)}-{_m(hi95)} months")


def _num(x: float):
    return float(x) if np.isfinite(x) else None


def _m(x: float) -> str:
    return f"{x:.1f}" if np.isfinite(x) else "never"


def _d(x) -> str:
    return x.isoformat() if x else "not before year 9999"


def _check_common(eligible_fraction, uptake, target, enrolled, n_sims) -> tuple[float, float, int, int, int]:
    f = _fraction(eligible_fraction)
    u = _fraction(uptake, "uptake")
    if target is None:
        raise ValueError("give the enrolment target (patients to enrol); a protocol file declares its own "
                         "under `enrollment:`")
    for name, v in (("target", target), ("enrolled", enrolled), ("n_sims", n_sims)):
        if isinstance(v, bool) or not float(v).is_integer():
            raise ValueError(f"{name} must be a whole number, got {v!r}")
    target, enrolled, n_sims = int(target), int(enrolled), int(n_sims)
    if target < 0 or enrolled < 0:
        raise ValueError("target and enrolled must be >= 0")
    if n_sims < 1:
        raise ValueError("n_sims must be >= 1")
    if target > enrolled:
        if f == 0:
            raise ValueError("target unreachable: no eligible patients (the eligible fraction is 0); "
                             "relax a criterion or check the cohort")
        if u == 0:
            raise ValueError("target unreachable: uptake is 0, so no eligible patient enrols")
    return f, u, target, enrolled, n_sims


def _check_rates(sites: SiteInputs, remaining: int) -> None:
    if remaining > 0 and not np.any(sites.mean > 0):
        raise ValueError("target unreachable: every site's screening rate is 0 patients per month; "
                         "give a positive mean rate or add sites")


def forecast(sites: SiteInputs, eligible_fraction: float, uptake: float = DEFAULT_UPTAKE,
             target: int | None = None, start=None, horizon_months: float | None = None,
             n_sims: int = DEFAULT_SIMS, seed: int = 0, *, enrolled: int = 0,
             fraction_screened: int | None = None, keep_paths: bool = False,
             label: str = "") -> ForecastResult:
    """Simulate `n_sims` trials: months to `target` enrolled, fan chart, site contributions.

    eligible_fraction: share of screened patients who are eligible (strict or optimistic
    funnel bound); uptake: share of eligible patients who enrol. `enrolled` patients are
    in already at `start` (default today). With `fraction_screened=n` the fraction is
    taken as estimated from n screened patients: each trial draws it from
    Beta(f n + 1/2, (1 - f) n + 1/2). `horizon_months` is the fan chart's span (default:
    1.2 x the 97.5 % quantile of the time to target, at most MAX_HORIZON).
    """
    f, u, target, enrolled, n_sims = _check_common(eligible_fraction, uptake, target, enrolled, n_sims)
    start = to_date(start, "start date") if start is not None else _dt.date.today()
    remaining = max(target - enrolled, 0)
    _check_rates(sites, remaining)
    rng = np.random.default_rng(seed)
    lam = _draw_rates(sites, n_sims, rng)
    gam = rng.gamma(remaining, 1.0, size=n_sims) if remaining > 0 else None
    c = _draw_c(f, u, fraction_screened, n_sims, rng)
    intensity = lam * c[:, None] if np.ndim(c) else lam * c
    if gam is not None:
        times = time_to_count(intensity, sites.activation, sites.ramp_months, gam)
    else:
        times = np.zeros(n_sims)
    if horizon_months is None:
        finite = times[np.isfinite(times)]
        q = float(np.quantile(finite, 0.975)) if finite.size else 120.0
        horizon_months = min(max(1.2 * q, 1.0), MAX_HORIZON)
    elif not (isinstance(horizon_months, (int, float)) and np.isfinite(horizon_months) and horizon_months > 0):
        raise ValueError(f"horizon must be > 0 months, got {horizon_months!r}")
    grid = _grid(float(horizon_months))
    x = cumulative_intensity(intensity, sites.activation, sites.ramp_months, grid)
    counts = _paths(x, gam, remaining, rng) + enrolled
    qs = np.quantile(counts, QUANTILES, axis=0, method="inverted_cdf")
    curve = pd.DataFrame({"month": grid, "date": [date_after(start, m) for m in grid]})
    curve["mean"] = expected_enrolled(sites, grid, f, u, enrolled=enrolled, fraction_screened=fraction_screened)
    curve["sd"] = np.sqrt(variance_enrolled(sites, grid, f, u, fraction_screened=fraction_screened))
    for name, row in zip(QUANTILE_COLUMNS, qs, strict=True):
        curve[name] = row
    result = ForecastResult(sites, f, u, target, enrolled, start, n_sims, int(seed), times, curve,
                            pd.DataFrame(), fraction_screened, counts if keep_paths else None, label)
    result.site_contribution = _contribution(result, intensity, remaining)
    return result


def _draw_c(f: float, u: float, fraction_screened, n: int, rng):
    if fraction_screened is None:
        return f * u
    a, b = _beta_params(f, fraction_screened)
    return rng.beta(a, b, size=n) * u


def _contribution(res: ForecastResult, intensity: np.ndarray, remaining: int) -> pd.DataFrame:
    """Expected patients each site contributes to the remaining target.

    Given the rates and the time T of the N-th enrolment, the first N - 1 enrolments fall
    at site i with probability Lambda_i(T) / Lambda(T) and the N-th with probability
    lambda_i(T) / lambda(T) (current intensities); averaged over trials these sum to N.
    """
    sites = res.sites
    tab = sites.describe()
    ep, _ = _fraction_moments(res.eligible_fraction, res.fraction_screened)
    tab["enrolment_rate"] = sites.mean * ep * res.uptake
    expected = np.zeros(sites.n_sites)
    if remaining > 0:
        times = res.times
        ok = np.isfinite(times)
        for lo in range(0, times.size, _CHUNK):
            sl = slice(lo, min(lo + _CHUNK, times.size))
            t, keep = times[sl], ok[sl]
            lam = intensity[sl][keep]
            u = t[keep][:, None] - sites.activation
            cum = lam * ramp_integral(u, sites.ramp_months)
            now = lam * ramp_level(u, sites.ramp_months)
            with np.errstate(divide="ignore", invalid="ignore"):
                a = cum / cum.sum(axis=1, keepdims=True)
                b = now / now.sum(axis=1, keepdims=True)
            expected += (remaining - 1) * np.nansum(a, axis=0) + np.nansum(b, axis=0)
        expected /= max(int(ok.sum()), 1)
    tab["expected_enrolled"] = expected
    tab["share"] = expected / remaining if remaining > 0 else 0.0
    med = res.median if np.isfinite(res.median) else 0.0
    tab["expected_by_median"] = res.uptake * ep * sites.mean * ramp_integral(med - sites.activation,
                                                                            sites.ramp_months)
    return tab


def eligible_fractions(totals: Mapping[str, int]) -> dict[str, float]:
    """{"strict": strict / screened, "optimistic": optimistic / screened} from funnel totals."""
    screened = int(totals.get("screened", 0))
    if screened <= 0:
        raise ValueError("the cohort has no screened patients; cannot estimate an eligible fraction")
    return {"strict": totals["strict"] / screened, "optimistic": totals["optimistic"] / screened}


# ---------------------------------------------------------------------------
# Sites needed for a deadline
# ---------------------------------------------------------------------------
@dataclass(eq=False)
class SitesNeeded:
    """How many additional sites (at the across-site mean rate) meet the deadline with `level` probability."""

    additional: int
    probability: float  # P(on time) with `additional` more sites
    probability_now: float  # with the current sites only
    level: float
    deadline: _dt.date
    target: int
    new_site_mean: float
    new_site_shape: float
    new_site_activation: float  # months after the start
    table: pd.DataFrame  # additional, probability

    def sentence(self) -> str:
        if self.additional == 0:
            return (f"no additional site needed: P(reaching {self.target} by {self.deadline}) = "
                    f"{self.probability_now:.2f} >= {self.level:.2f} with the current sites")
        return (f"{self.additional} more site(s) at the mean rate ({self.new_site_mean:.2f} screened per "
                f"month, opening at month {self.new_site_activation:g}) needed to reach {self.target} by "
                f"{self.deadline} with probability {self.level:.0%} (now {self.probability_now:.2f}, "
                f"then {self.probability:.2f})")

    def to_dict(self) -> dict:
        return {"additional_sites": self.additional, "probability": self.probability,
                "probability_now": self.probability_now, "level": self.level,
                "deadline": self.deadline.isoformat(), "target": self.target,
                "new_site_mean_rate": self.new_site_mean,
                "new_site_cv": None if not np.isfinite(self.new_site_shape) else 1 / math.sqrt(self.new_site_shape),
                "new_site_activation_months": self.new_site_activation}


def sites_needed(sites: SiteInputs, eligible_fraction: float, deadline, *, uptake: float = DEFAULT_UPTAKE,
                 target: int | None = None, start=None, probability: float = DEFAULT_PROBABILITY,
                 new_site_activation=0.0, exact_mean: bool = False, n_sims: int = DEFAULT_SIMS,
                 seed: int = 0, enrolled: int = 0, fraction_screened: int | None = None,
                 max_additional: int = 2000) -> SitesNeeded:
    """Smallest number of additional sites with P(target reached by deadline) >= `probability`.

    New sites screen at rates from the across-site Gamma (mean `sites.prior_mean`, shape
    `sites.prior_shape`; exactly the mean with `exact_mean=True`), open at
    `new_site_activation` (months after the start, or a date) and ramp up like the others.
    P(on time | rates) = P(Gamma(N, 1) <= Lambda(deadline)), the regularised incomplete
    gamma function, averaged over simulated rates (the same draws for every number of
    added sites, so the probability rises monotonically with it).
    """
    from scipy.special import gammainc

    f, u, target, enrolled, n_sims = _check_common(eligible_fraction, uptake, target, enrolled, n_sims)
    level = _fraction(probability, "probability")
    if not 0 < level < 1:
        raise ValueError("probability must be strictly between 0 and 1")
    start = to_date(start, "start date") if start is not None else _dt.date.today()
    deadline = to_date(deadline, "deadline")
    d = months_between(start, deadline)
    if d < 0:
        raise ValueError(f"deadline {deadline} is before the start {start}")
    a_new = _months(start, new_site_activation)
    if a_new < 0:
        raise ValueError("new sites cannot open before the start")
    remaining = max(target - enrolled, 0)
    new_shape = np.inf if exact_mean else sites.prior_shape
    common = dict(level=level, deadline=deadline, target=target, new_site_mean=sites.prior_mean,
                  new_site_shape=new_shape, new_site_activation=a_new)
    if remaining == 0:
        return SitesNeeded(0, 1.0, 1.0, table=pd.DataFrame({"additional": [0], "probability": [1.0]}), **common)
    rng = np.random.default_rng(seed)
    lam = _draw_rates(sites, n_sims, rng)  # same streams as forecast(): same rates for the same seed
    rng.gamma(remaining, 1.0, size=n_sims)
    c = np.broadcast_to(_draw_c(f, u, fraction_screened, n_sims, rng), (n_sims,))
    g_now = ramp_integral(d - sites.activation, sites.ramp_months)
    x = c * (lam @ g_now)
    probs = [float(np.mean(gammainc(remaining, x)))]
    if probs[0] >= level:
        return SitesNeeded(0, probs[0], probs[0],
                           table=pd.DataFrame({"additional": [0], "probability": probs}), **common)
    g_new = float(ramp_integral(d - a_new, sites.ramp_months))
    if g_new <= 0 or sites.prior_mean <= 0:
        why = ("new sites would open too late to enrol before it" if g_new <= 0
               else "the mean screening rate for new sites is 0")
        raise ValueError(f"cannot reach {target} by {deadline} with probability {level:.0%}: "
                         f"P = {probs[0]:.2f} with the current sites, and {why}")
    rng_new = np.random.default_rng([int(seed), 1])
    found, m, block = None, 0, 16
    while m < max_additional:
        k = min(block, max_additional - m)
        if np.isfinite(new_shape):
            new = rng_new.gamma(new_shape, sites.prior_mean / new_shape, size=(n_sims, k))
        else:
            new = np.full((n_sims, k), sites.prior_mean)
        cum = x[:, None] + np.cumsum(new * (c * g_new)[:, None], axis=1)
        pk = gammainc(remaining, cum).mean(axis=0)
        hit = np.flatnonzero(pk >= level)
        if hit.size:
            probs.extend(pk[: hit[0] + 1].tolist())
            found = m + int(hit[0]) + 1
            break
        probs.extend(pk.tolist())
        x = cum[:, -1]
        m += k
        block = min(block * 2, 256)
    if found is None:
        raise ValueError(f"cannot reach {target} by {deadline} with probability {level:.0%} even with "
                         f"{max_additional} additional sites (P = {probs[-1]:.2f})")
    table = pd.DataFrame({"additional": np.arange(len(probs)), "probability": probs})
    return SitesNeeded(found, probs[-1], probs[0], table=table, **common)


# ---------------------------------------------------------------------------
# Protocol vs scenario
# ---------------------------------------------------------------------------
@dataclass(eq=False)
class Comparison:
    """Two forecasts on the same sites and random numbers, differing in the eligible fraction."""

    a: ForecastResult
    b: ForecastResult
    labels: tuple[str, str]

    @property
    def saved_months(self) -> float:
        """Median months saved by b (negative: b takes longer)."""
        return self.a.median - self.b.median

    @property
    def saved_weeks(self) -> float:
        return self.saved_months * DAYS_PER_MONTH / 7

    def paired(self, level: float = 0.8) -> tuple[float, float, float]:
        """Median and `level` interval of the per-trial saving in weeks (same random numbers)."""
        diff = (self.a.times - self.b.times) * DAYS_PER_MONTH / 7
        diff = diff[np.isfinite(diff)]
        if diff.size == 0:
            return (math.nan,) * 3
        lo, mid, hi = np.quantile(diff, [(1 - level) / 2, 0.5, (1 + level) / 2])
        return float(mid), float(lo), float(hi)

    def sentence(self) -> str:
        la, lb = self.labels
        w = self.saved_weeks
        if not np.isfinite(w):
            return f"{lb}: median {_m(self.b.median)} months vs {la}: {_m(self.a.median)} months"
        verb = "saves" if w >= 0 else "costs"
        return (f"{lb!r} {verb} {abs(w):.1f} weeks on the median time to {self.a.target} patients "
                f"vs {la!r} ({_m(self.a.median)} -> {_m(self.b.median)} months; eligible "
                f"{self.a.eligible_fraction:.1%} -> {self.b.eligible_fraction:.1%})")

    def table(self, deadline=None) -> pd.DataFrame:
        rows = []
        for label, r in zip(self.labels, (self.a, self.b), strict=True):
            lo80, hi80 = r.interval(0.8)
            lo95, hi95 = r.interval(0.95)
            row = {"": label, "eligible_fraction": r.eligible_fraction, "median_months": r.median,
                   "pi80_lo": lo80, "pi80_hi": hi80, "pi95_lo": lo95, "pi95_hi": hi95,
                   "median_date": r.date_at(r.median)}
            if deadline is not None:
                row["p_by_deadline"] = r.probability_by(deadline)
            rows.append(row)
        return pd.DataFrame(rows)

    def to_dict(self, deadline=None) -> dict:
        mid, lo, hi = self.paired()
        return {"labels": list(self.labels), "a": self.a.summary(deadline), "b": self.b.summary(deadline),
                "saved_weeks_median": _num(self.saved_weeks),
                "saved_weeks_paired": {"median": _num(mid), "pi80": [_num(lo), _num(hi)]},
                "sentence": self.sentence()}


def compare_fractions(sites: SiteInputs, fraction_a: float, fraction_b: float, *,
                      labels: tuple[str, str] = ("Protocol", "Scenario"), **kwargs) -> Comparison:
    """Forecasts for two eligible fractions (e.g. protocol vs relaxed platelets) and their difference.

    Both use the same seed, hence the same site rates and Gamma draws (common random
    numbers), so the difference is not blurred by simulation noise. kwargs go to forecast().
    """
    a = forecast(sites, fraction_a, label=labels[0], **kwargs)
    b = forecast(sites, fraction_b, label=labels[1], **kwargs)
    return Comparison(a, b, tuple(labels))
