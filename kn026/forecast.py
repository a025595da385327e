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

import argparse
import datetime as _dt
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

DAYS_PER_MONTH = 365.25 / 12
BENCH_TARGET = 200  # patients to enrol in the timing benchmark only (a protocol's target is in its file)
DEFAULT_UPTAKE = 0.85
DEFAULT_CV = 0.8  # between-site coefficient of variation of rates when none is given
DEFAULT_SIMS = 10_000
DEFAULT_PROBABILITY = 0.8  # confidence asked of "finish by the deadline"
QUANTILES = (0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975)
QUANTILE_COLUMNS = ("q025", "q10", "q25", "q50", "q75", "q90", "q975")
MIN_PRIOR_SHAPE = 0.05
MAX_HORIZON = 1200.0  # months: the automatic fan chart span never exceeds 100 years
_CHUNK = 4096  # simulated trials per block (bounds memory: block x knots floats)


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------
def to_date(value, what: str = "date") -> _dt.date:
    """A date from a date, datetime, ISO text, pandas / numpy timestamp."""
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    if isinstance(value, str):
        try:
            return _dt.date.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{what} {value!r} is not an ISO date (YYYY-MM-DD)") from None
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is not a date") from None
    if pd.isna(ts):
        raise ValueError(f"{what} is missing")
    return ts.date()


def months_between(start, when) -> float:
    """Months (of 365.25 / 12 days) from `start` to `when`."""
    return (to_date(when) - to_date(start)).days / DAYS_PER_MONTH


def date_after(start, months: float) -> _dt.date | None:
    """The date `months` after `start` (None when months is not finite)."""
    if months is None or not np.isfinite(months):
        return None
    try:
        return to_date(start) + _dt.timedelta(days=round(float(months) * DAYS_PER_MONTH))
    except OverflowError:  # beyond year 9999
        return None


def _months(start: _dt.date, when) -> float:
    """`when` as months after start: a number is taken as months already."""
    if isinstance(when, (int, float, np.integer, np.floating)) and not isinstance(when, bool):
        return float(when)
    return months_between(start, when)


def ramp_integral(u, ramp):
    """Integral over [0, u] of a site's activity level (0 before opening, linear up to 1
    over `ramp` months, then 1): u^2 / (2 ramp) while ramping, u - ramp / 2 after."""
    u = np.maximum(np.asarray(u, dtype=float), 0.0)
    r = np.asarray(ramp, dtype=float)
    if not np.any(r > 0):
        return u
    safe = np.where(r > 0, r, 1.0)
    return np.where(u < r, u * u / (2.0 * safe), u - r / 2.0)


def ramp_level(u, ramp):
    """A site's activity level at time u after opening (0..1)."""
    u = np.asarray(u, dtype=float)
    r = np.asarray(ramp, dtype=float)
    safe = np.where(r > 0, r, 1.0)
    return np.where(u <= 0, 0.0, np.where(r > 0, np.minimum(u / safe, 1.0), 1.0))


def _fraction(value, name: str = "eligible fraction") -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= f <= 1.0 or math.isnan(f):
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    return f


def _gamma_quantile(shape, mean, q):
    """Quantile q of Gamma(shape, shape / mean); the mean itself where shape is infinite."""
    from scipy.special import gammaincinv

    shape = np.asarray(shape, dtype=float)
    mean = np.asarray(mean, dtype=float)
    finite = np.isfinite(shape) & (mean > 0)
    safe = np.where(finite, shape, 1.0)
    return np.where(finite, gammaincinv(safe, q) * mean / safe, mean)


# ---------------------------------------------------------------------------
# Sites
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SiteInputs:
    """Per-site screening rates (Gamma distributed), activation and ramp-up.

    mean[i]       expected patients *screened* per month at site i at full speed
    shape[i]      Gamma shape of that rate (np.inf: rate known exactly); rate = shape / mean
    activation[i] months after the forecast start when site i opens
    ramp_months   months over which a newly opened site rises linearly to full speed
    prior_shape, prior_mean: the across-site Gamma, used for additional (new) sites
    table         the estimation table when the rates come from a cohort
    """

    site_id: tuple[str, ...]
    mean: np.ndarray
    shape: np.ndarray
    activation: np.ndarray
    ramp_months: float = 0.0
    country: tuple[str | None, ...] | None = None
    prior_shape: float = 1.0 / DEFAULT_CV ** 2
    prior_mean: float = 1.0
    source: str = "inputs"
    note: str = ""
    table: pd.DataFrame | None = None

    def __post_init__(self):
        k = len(self.site_id)
        mean = np.asarray(self.mean, dtype=float).reshape(-1)
        shape = np.broadcast_to(np.asarray(self.shape, dtype=float), (k,)).copy()
        act = np.broadcast_to(np.asarray(self.activation, dtype=float), (k,)).copy()
        if k < 1:
            raise ValueError("at least one site is needed")
        if mean.size != k:
            raise ValueError(f"{k} site ids but {mean.size} rates")
        if len(set(self.site_id)) != k:
            raise ValueError("site ids must be unique")
        if np.any(~np.isfinite(mean)) or np.any(mean < 0):
            raise ValueError("site screening rates must be finite and >= 0 per month")
        if np.any(np.isnan(shape)) or np.any(shape <= 0):
            raise ValueError("Gamma shapes of site rates must be > 0 (np.inf for a known rate)")
        if np.any(~np.isfinite(act)) or np.any(act < 0):
            raise ValueError("site activation must be a finite number of months >= 0 after the start")
        if not np.isfinite(self.ramp_months) or self.ramp_months < 0:
            raise ValueError(f"ramp-up must be >= 0 months, got {self.ramp_months}")
        if not (self.prior_shape > 0) or not (self.prior_mean >= 0) or not np.isfinite(self.prior_mean):
            raise ValueError("the across-site Gamma needs shape > 0 and a finite mean >= 0")
        if self.country is not None and len(self.country) != k:
            raise ValueError(f"{k} site ids but {len(self.country)} countries")
        for name, arr in (("mean", mean), ("shape", shape), ("activation", act)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "site_id", tuple(str(s) for s in self.site_id))
        object.__setattr__(self, "ramp_months", float(self.ramp_months))

    # -- construction ------------------------------------------------------------
    @classmethod
    def from_inputs(cls, n_sites: int, mean_rate: float, cv: float | None = None,
                    shape: float | None = None, *, activation: float | Sequence[float] = 0.0,
                    stagger_months: float = 0.0, ramp_months: float = 0.0,
                    site_prefix: str = "Site ") -> SiteInputs:
        """`n_sites` sites with screening rates ~ Gamma(mean `mean_rate` per month, CV `cv`).

        Give the variability as `cv` (between-site coefficient of variation, 0 = all
        sites exactly `mean_rate`) or as the Gamma `shape` (= 1 / cv^2); default CV 0.8.
        Sites open at `activation` months (a number or one per site), or evenly over the
        first `stagger_months` months (site j at j * stagger / n_sites).
        """
        if isinstance(n_sites, bool) or int(n_sites) != n_sites or n_sites < 1:
            raise ValueError(f"number of sites must be a whole number >= 1, got {n_sites!r}")
        n_sites = int(n_sites)
        mean_rate = float(mean_rate)
        if not np.isfinite(mean_rate) or mean_rate < 0:
            raise ValueError(f"mean screening rate must be >= 0 patients per site-month, got {mean_rate}")
        if cv is not None and shape is not None:
            raise ValueError("give the rate variability as cv or as Gamma shape, not both")
        if shape is None:
            cv = DEFAULT_CV if cv is None else float(cv)
            if not np.isfinite(cv) or cv < 0:
                raise ValueError(f"coefficient of variation must be >= 0, got {cv}")
            shape = np.inf if cv == 0 else 1.0 / cv ** 2
        else:
            shape = float(shape)
            if not shape > 0:
                raise ValueError(f"Gamma shape must be > 0, got {shape}")
        act = _activation(n_sites, activation, stagger_months)
        width = len(str(n_sites))
        ids = tuple(f"{site_prefix}{i + 1:0{width}d}" for i in range(n_sites))
        return cls(ids, np.full(n_sites, mean_rate), np.full(n_sites, shape), act,
                   ramp_months=ramp_months, prior_shape=shape, prior_mean=mean_rate,
                   source="inputs", note=f"{n_sites} sites, mean {mean_rate:g} screened per site-month, "
                                         f"CV {_cv_text(shape)}")

    def with_activation(self, activation: float | Sequence[float] | None = None,
                        stagger_months: float | None = None,
                        ramp_months: float | None = None) -> SiteInputs:
        """A copy with a new activation schedule and / or ramp-up."""
        act = self.activation
        if activation is not None or stagger_months is not None:
            act = _activation(self.n_sites, 0.0 if activation is None else activation, stagger_months or 0.0)
        return replace(self, activation=act,
                       ramp_months=self.ramp_months if ramp_months is None else ramp_months)

    def with_new_sites(self, m: int, activation_month: float = 0.0, exact_mean: bool = False) -> SiteInputs:
        """A copy with `m` additional sites drawn from the across-site Gamma (mean prior_mean)."""
        if m < 0:
            raise ValueError("number of additional sites must be >= 0")
        if m == 0:
            return self
        shape = np.inf if exact_mean else self.prior_shape
        ids = tuple(f"New {j + 1}" for j in range(m))
        country = None if self.country is None else self.country + (None,) * m
        return replace(self, site_id=self.site_id + ids,
                       mean=np.concatenate([self.mean, np.full(m, self.prior_mean)]),
                       shape=np.concatenate([self.shape, np.full(m, shape)]),
                       activation=np.concatenate([self.activation, np.full(m, float(activation_month))]),
                       country=country, table=None)

    def subset(self, site_ids: Sequence[str]) -> SiteInputs:
        """A copy with only the listed sites (e.g. the ones a sponsor selects)."""
        pos = {s: i for i, s in enumerate(self.site_id)}
        unknown = [s for s in site_ids if s not in pos]
        if unknown:
            raise ValueError(f"unknown site id(s): {', '.join(map(str, unknown[:5]))}")
        idx = np.array([pos[s] for s in site_ids], dtype=int)
        if idx.size == 0:
            raise ValueError("select at least one site")
        table = None
        if self.table is not None:
            table = self.table.set_index("site_id").loc[list(site_ids)].reset_index()
        note = f"{idx.size} of {self.note}" if self.note else ""
        return replace(self, site_id=tuple(self.site_id[i] for i in idx), mean=self.mean[idx],
                       shape=self.shape[idx], activation=self.activation[idx],
                       country=None if self.country is None else tuple(self.country[i] for i in idx),
                       table=table, note=note)

    # -- derived -----------------------------------------------------------------
    @property
    def n_sites(self) -> int:
        return len(self.site_id)

    @property
    def rate(self) -> np.ndarray:
        """Gamma rate parameters (shape / mean); inf where the mean is 0."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(np.isfinite(self.shape), self.shape / self.mean, np.inf)

    @property
    def variance(self) -> np.ndarray:
        """Variance of each site's monthly rate (mean^2 / shape; 0 for a known rate)."""
        return np.where(np.isfinite(self.shape), self.mean ** 2 / np.where(np.isfinite(self.shape),
                                                                         self.shape, 1.0), 0.0)

    def describe(self, level: float = 0.8) -> pd.DataFrame:
        """One row per site: rate mean and `level` interval, shape, activation."""
        lo, hi = (1 - level) / 2, (1 + level) / 2
        return pd.DataFrame({
            "site_id": list(self.site_id),
            "country": list(self.country) if self.country is not None else [None] * self.n_sites,
            "activation_month": self.activation,
            "rate_mean": self.mean,
            "rate_lo": _gamma_quantile(self.shape, self.mean, lo),
            "rate_hi": _gamma_quantile(self.shape, self.mean, hi),
            "shape": self.shape,
        })


def _cv_text(shape: float) -> str:
    return "0" if not np.isfinite(shape) else f"{1 / math.sqrt(shape):.2f}"


def _activation(k: int, activation, stagger_months: float) -> np.ndarray:
    stagger = float(stagger_months or 0.0)
    if not np.isfinite(stagger) or stagger < 0:
        raise ValueError(f"stagger must be >= 0 months, got {stagger_months}")
    if np.ndim(activation) == 0:
        base = np.full(k, float(activation))
    else:
        base = np.asarray(activation, dtype=float)
        if base.size != k:
            raise ValueError(f"activation schedule has {base.size} entries for {k} sites")
    if np.any(~np.isfinite(base)) or np.any(base < 0):
        raise ValueError("activation must be >= 0 months after the start")
    return base + stagger * np.arange(k) / k


# ---------------------------------------------------------------------------
# Estimating site rates from a cohort (empirical Bayes)
# ---------------------------------------------------------------------------
def fit_gamma_prior(events, exposure, method: str = "ml") -> tuple[float, float, str]:
    """Across-site Gamma(alpha, beta) of monthly rates from counts `events` over `exposure` months.

    Marginally each count is negative binomial: k_i ~ NB(alpha, beta / (beta + T_i)).
    `method="mom"`: weighted method of moments; `"ml"` (default): maximum likelihood,
    started from the moments. alpha is kept in [0.05, max(total events, 1)], so the
    prior never weighs more than the screenings observed (this bounds the pooling when
    sites look identical). Fewer than 3 sites with follow-up, or no events at all: the
    reference prior Gamma(0.5, 0) (each site on its own data; returned beta is 0).
    Returns (alpha, beta, description).
    """
    e = np.asarray(events, dtype=float)
    t = np.asarray(exposure, dtype=float)
    use = t > 0
    e, t = e[use], t[use]
    if method not in ("ml", "mom"):
        raise ValueError(f"method must be 'ml' or 'mom', got {method!r}")
    if e.size < 3 or e.sum() == 0:
        return 0.5, 0.0, ("reference prior Gamma(0.5, 0): too few sites with follow-up (< 3) or no "
                          "repeat screenings for an empirical-Bayes fit")
    total_e, total_t = e.sum(), t.sum()
    mu = total_e / total_t
    r = e / t
    spread = float(np.sum(t * (r - mu) ** 2))
    denom = total_t - np.sum(t ** 2) / total_t
    var = (spread - (e.size - 1) * mu) / denom if denom > 0 else 0.0
    cap = max(total_e, 1.0)
    alpha = float(np.clip(mu * mu / var, MIN_PRIOR_SHAPE, cap)) if var > 0 else cap
    how = "method of moments"
    if method == "ml":
        from scipy.optimize import minimize
        from scipy.special import digamma, gammaln

        def nll(theta):
            a, m = math.exp(theta[0]), math.exp(theta[1])
            b = a / m
            ll = np.sum(gammaln(a + e) - gammaln(a) + a * math.log(b) - (a + e) * np.log(b + t))
            d_a = np.sum(digamma(a + e) - digamma(a) + math.log(b) - np.log(b + t))
            d_b = np.sum(a / b - (a + e) / (b + t))
            return -ll, -np.array([a * d_a + b * d_b, -b * d_b])

        x0 = np.array([math.log(alpha), math.log(mu)])
        bounds = [(math.log(MIN_PRIOR_SHAPE), math.log(cap)), (x0[1] - 12, x0[1] + 12)]
        res = minimize(nll, x0, jac=True, method="L-BFGS-B", bounds=bounds)
        if res.success or np.isfinite(res.fun):
            alpha, mu = float(math.exp(res.x[0])), float(math.exp(res.x[1]))
            how = "maximum likelihood (negative binomial)"
    return alpha, alpha / mu, f"empirical-Bayes Gamma prior by {how}"


def estimate_sites(frame: pd.DataFrame, as_of=None, *, method: str = "ml",
                   activation_dates: Mapping[str, object] | None = None,
                   level: float = 0.8) -> SiteInputs:
    """Per-site screening rates from a cohort with site_id and screening_date (country optional).

    For site i: k_i screenings up to `as_of` (default: the last screening date). Its
    exposure T_i runs to the end of `as_of`, from its activation date when known
    (`activation_dates`, or an `activation_date` column; all k_i count) or else from its
    first screening (that screening only marks the opening, so k_i - 1 events count and
    exposure starts mid-day). The across-site Gamma(alpha, beta) is fitted by
    `fit_gamma_prior`; each site's rate is then Gamma(alpha + events_i, beta + T_i).

    Returns SiteInputs (all sites open at the forecast start; change with
    `.with_activation`) whose `.table` has per site: screened (k_i), first_screening,
    events, exposure_months, raw_rate, post_shape, post_rate, rate_mean, rate_lo,
    rate_hi (`level` posterior interval, per month).
    """
    missing = [c for c in ("site_id", "screening_date") if c not in frame.columns]
    if missing:
        raise ValueError("estimating site rates needs columns site_id and screening_date; "
                         f"missing: {', '.join(missing)}")
    raw_dates = frame["screening_date"]
    dates = pd.to_datetime(raw_dates, errors="coerce")
    bad = dates.isna() & raw_dates.notna()
    if bad.any():
        example = raw_dates[bad].iloc[0]
        raise ValueError(f"screening_date: {int(bad.sum())} value(s) are not dates, e.g. {example!r}")
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_localize(None)
    day = _day_numbers(dates)  # whole days since 1970-01-01, NaN where missing
    site = frame["site_id"]
    keep = site.notna().to_numpy() & ~np.isnan(day)
    dropped = int(len(frame) - keep.sum())
    if not keep.any():
        raise ValueError("no screenings with both site_id and screening_date; cannot estimate site rates")
    if as_of is None:
        as_of = _dt.date(1970, 1, 1) + _dt.timedelta(days=int(np.nanmax(day[keep])))
    as_of = to_date(as_of, "as-of date")
    end_day = (as_of - _dt.date(1970, 1, 1)).days + 1  # exposure runs to the end of the as_of day
    keep &= day < end_day
    if not keep.any():
        raise ValueError(f"no screenings with both site_id and screening_date up to {as_of}; "
                         "cannot estimate site rates")
    codes, ids = pd.factorize(site[keep].astype(str), sort=True)
    k = len(ids)
    d = day[keep]
    screened = np.bincount(codes, minlength=k)
    first = np.full(k, np.inf)
    np.minimum.at(first, codes, d)
    country = [None] * k
    if "country" in frame.columns:
        cty = frame["country"][keep]
        ok = cty.notna().to_numpy()
        firsts = pd.Series(cty[ok].astype(str).to_numpy()).groupby(codes[ok]).agg(lambda v: v.mode().iloc[0])
        for c, v in firsts.items():
            country[int(c)] = v
    opened = np.full(k, np.nan)
    if "activation_date" in frame.columns:
        act_day = _day_numbers(pd.to_datetime(frame["activation_date"], errors="coerce"))[keep]
        ok = ~np.isnan(act_day)
        if ok.any():
            tmp = np.full(k, np.inf)
            np.minimum.at(tmp, codes[ok], act_day[ok])
            opened = np.where(np.isfinite(tmp), tmp, np.nan)
    if activation_dates:
        pos = {s: i for i, s in enumerate(ids)}
        unknown = sorted(str(s) for s in activation_dates if str(s) not in pos)
        if unknown:
            raise ValueError(f"activation dates given for unknown site(s): {', '.join(unknown[:5])}")
        for s_id, when in activation_dates.items():
            opened[pos[str(s_id)]] = (to_date(when, f"activation date of site {s_id}") - _dt.date(1970, 1, 1)).days
    known = ~np.isnan(opened)
    opened = np.where(known, np.fmin(opened, first), first)
    days = np.where(known, end_day - opened, end_day - first - 0.5)
    epoch = np.datetime64("1970-01-01", "D")
    table = pd.DataFrame({
        "site_id": list(ids), "country": country, "screened": screened,
        "first_screening": (epoch + first.astype(np.int64)).astype("datetime64[s]"),
        "opened": (epoch + opened.astype(np.int64)).astype("datetime64[s]"),
        "activation_known": known,
        "events": np.where(known, screened, screened - 1).astype(int),
        "exposure_months": days / DAYS_PER_MONTH,
    })
    alpha, beta, how = fit_gamma_prior(table["events"], table["exposure_months"], method)
    shape = alpha + table["events"].to_numpy(float)
    rate = beta + table["exposure_months"].to_numpy()
    mean = shape / rate
    table["raw_rate"] = table["events"] / table["exposure_months"]
    table["post_shape"] = shape
    table["post_rate"] = rate
    table["rate_mean"] = mean
    table["rate_lo"] = _gamma_quantile(shape, mean, (1 - level) / 2)
    table["rate_hi"] = _gamma_quantile(shape, mean, (1 + level) / 2)
    table.attrs.update({"as_of": as_of.isoformat(), "alpha": alpha, "beta": beta, "method": how,
                        "dropped_rows": int(dropped), "level": level})
    prior_mean = alpha / beta if beta > 0 else float(table["events"].sum() / table["exposure_months"].sum())
    prior_shape = alpha if beta > 0 else 1.0
    note = (f"{len(table)} sites estimated from {int(table['screened'].sum())} screenings up to {as_of} "
            f"({how}: mean {prior_mean:.2f} screened per site-month, CV {_cv_text(prior_shape)})")
    return SiteInputs(tuple(table["site_id"]), mean, shape, np.zeros(len(table)), 0.0, tuple(country),
                      prior_shape=float(prior_shape), prior_mean=float(prior_mean),
                      source="cohort", note=note, table=table)


def _day_numbers(dates: pd.Series) -> np.ndarray:
    """Whole days since 1970-01-01 as float (NaN for missing), whatever the datetime unit."""
    values = dates.to_numpy(dtype="datetime64[ns]")
    out = values.astype("datetime64[D]").astype(np.int64).astype(float)
    out[np.isnat(values)] = np.nan
    return out


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


# ---------------------------------------------------------------------------
# Figures (pure plotly)
# ---------------------------------------------------------------------------
_BLUE, _ORANGE = "31,119,180", "255,127,14"


def fan_chart(result: ForecastResult, other: ForecastResult | None = None, deadline=None,
              title: str | None = None):
    """Cumulative enrolment over time: median line, 50 / 80 / 95 % bands, expected (mean)
    curve, the target and optionally a deadline; `other` overlays a second forecast."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for res, rgb in ((result, _BLUE), (other, _ORANGE)):
        if res is None:
            continue
        cv = res.curve
        x = pd.to_datetime(cv["date"])
        name = res.label or "Forecast"
        bands = ((("q025", "q975"), 0.12, "95 %"), (("q10", "q90"), 0.2, "80 %"), (("q25", "q75"), 0.3, "50 %"))
        if res is other:
            bands = bands[1:2]
        for (lo, hi), alpha, txt in bands:
            fig.add_trace(go.Scatter(x=x, y=cv[hi], mode="lines", line={"width": 0}, showlegend=False,
                                     hoverinfo="skip", legendgroup=name + txt))
            fig.add_trace(go.Scatter(x=x, y=cv[lo], mode="lines", line={"width": 0}, fill="tonexty",
                                     fillcolor=f"rgba({rgb},{alpha})", name=f"{name}: {txt} band",
                                     legendgroup=name + txt, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=x, y=cv["q50"], mode="lines", line={"color": f"rgb({rgb})", "width": 2},
                                 name=f"{name}: median", line_shape="hv"))
        fig.add_trace(go.Scatter(x=x, y=cv["mean"], mode="lines",
                                 line={"color": f"rgb({rgb})", "width": 1, "dash": "dot"},
                                 name=f"{name}: expected (closed form)"))
        if res.remaining > 0 and np.isfinite(res.median):
            md = res.date_at(res.median)
            fig.add_trace(go.Scatter(x=[md], y=[res.target], mode="markers",
                                     marker={"color": f"rgb({rgb})", "size": 9, "symbol": "diamond"},
                                     name=f"{name}: median {md}"))
    fig.add_hline(y=result.target, line={"color": "grey", "dash": "dash"},
                  annotation_text=f"target {result.target}", annotation_position="top left",
                  annotation_xshift=8)
    if deadline is not None:
        dl = to_date(deadline, "deadline")
        fig.add_vline(x=pd.Timestamp(dl).value / 1e6, line={"color": "firebrick", "dash": "dash"})
        fig.add_annotation(x=pd.Timestamp(dl), y=1, yref="paper", showarrow=False, yanchor="bottom",
                           text=f"deadline {dl}: P = {result.probability_by(dl):.2f}")
    fig.update_layout(title=title or f"Enrolment forecast ({result.n_sims} simulated trials)",
                      xaxis_title=None, yaxis_title="patients enrolled", hovermode="x unified",
                      legend={"orientation": "h", "y": -0.1, "yanchor": "top"}, margin={"t": 60})
    return fig


def site_contribution_chart(result: ForecastResult, top: int = 40, title: str | None = None):
    """Horizontal bars: expected patients each site contributes to the target (largest first)."""
    import plotly.express as px

    tab = result.site_contribution.sort_values("expected_enrolled", ascending=False).head(top)
    tab = tab.assign(country=tab["country"].fillna("unknown").astype(str),
                     share_pct=100 * tab["share"])
    fig = px.bar(tab.iloc[::-1], x="expected_enrolled", y="site_id", color="country", orientation="h",
                 hover_data={"rate_mean": ":.2f", "rate_lo": ":.2f", "rate_hi": ":.2f",
                             "activation_month": ":.1f", "share_pct": ":.1f"},
                 labels={"expected_enrolled": f"expected patients of the {result.remaining} to enrol",
                         "site_id": "site", "rate_mean": "screened / month",
                         "rate_lo": "rate 10 %", "rate_hi": "rate 90 %", "share_pct": "share %"})
    fig.update_layout(title=title or "Expected contribution per site", yaxis={"categoryorder": "total ascending"},
                      height=max(300, 22 * len(tab) + 120))
    return fig


def bench_forecast(n_sims: int = DEFAULT_SIMS, n_sites: int = 100, repeat: int = 5, seed: int = 0) -> dict:
    """Best-of-`repeat` seconds for `n_sims` trials x `n_sites` sites (for the docs).

    time_to_target: rate draws + Gamma draws + exact inversion; forecast: the whole
    forecast() (also fan chart paths, closed-form curve, site contributions);
    forecast_ramp: the same with sites opening over 6 months and a 3-month ramp-up;
    sites_needed: a deadline needing extra sites.
    """
    import time

    flat = SiteInputs.from_inputs(n_sites, 1.0, cv=0.8)
    ramp = flat.with_activation(stagger_months=6.0, ramp_months=3.0)
    start = _dt.date(2025, 1, 1)

    def ttt():
        rng = np.random.default_rng(seed)
        lam = _draw_rates(flat, n_sims, rng) * 0.3
        time_to_count(lam, flat.activation, 0.0, rng.gamma(BENCH_TARGET, 1.0, size=n_sims))

    jobs = {
        "time_to_target": ttt,
        "forecast": lambda: forecast(flat, 0.3, target=BENCH_TARGET, start=start, n_sims=n_sims, seed=seed),
        "forecast_ramp": lambda: forecast(ramp, 0.3, target=BENCH_TARGET, start=start, n_sims=n_sims, seed=seed),
        "sites_needed": lambda: sites_needed(ramp, 0.3, "2025-10-01", target=BENCH_TARGET, start=start,
                                             n_sims=n_sims, seed=seed),
    }
    out = {"n_sims": n_sims, "n_sites": n_sites}
    jobs["forecast"]()  # warm up (scipy import, caches)
    for name, job in jobs.items():
        best = math.inf
        for _ in range(repeat):
            t0 = time.perf_counter()
            job()
            best = min(best, time.perf_counter() - t0)
        out[name] = round(best, 3)
    return out


# ---------------------------------------------------------------------------
# Command line: `python -m kn026 forecast ...`
# ---------------------------------------------------------------------------
def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register `forecast` on an argparse subparsers object; handler `main_forecast` in args.func."""
    p = subparsers.add_parser(
        "forecast", help="time to reach the enrolment target (Poisson-Gamma recruitment model)",
        description="Forecast how long enrolling the target takes: eligible fraction from the cohort's "
                    "funnel (strict and optimistic), site screening rates from the cohort (site_id, "
                    "screening_date) or from --sites/--mean-rate/--cv.")
    p.add_argument("--cohort", required=True, help="cohort file: CSV, Parquet or Excel")
    from kn026 import protocol_files

    protocol_files.add_options(p)
    protocol_files.add_target_options(p)
    p.add_argument("--enrolled", type=int, default=0, help="patients already enrolled at the start (0)")
    p.add_argument("--sites", type=int, help="number of sites (instead of estimating them from the cohort)")
    p.add_argument("--mean-rate", type=float, help="with --sites: mean patients screened per site-month")
    p.add_argument("--cv", type=float, help=f"with --sites: between-site CV of rates (default {DEFAULT_CV})")
    p.add_argument("--only-sites", help="comma-separated site_id values to keep (the sites a sponsor selects)")
    p.add_argument("--stagger", type=float, default=0.0, help="sites open evenly over this many months (0)")
    p.add_argument("--ramp", type=float, default=0.0, help="months for a new site to reach full speed (0)")
    p.add_argument("--approach", type=float, default=1.0,
                   help="share (0-1) of each site's patients in the cohort approached for this trial: thins "
                        "the estimated rates (1 = as observed; docs/forecast.md section 9)")
    p.add_argument("--uptake", type=float, default=DEFAULT_UPTAKE,
                   help=f"share of eligible patients who enrol (default {DEFAULT_UPTAKE})")
    p.add_argument("--start", help="first day of enrolment, ISO date (default today)")
    p.add_argument("--deadline", help="ISO date: probability of finishing by then and sites needed")
    p.add_argument("--probability", type=float, default=DEFAULT_PROBABILITY,
                   help="confidence asked of finishing by the deadline (0.8)")
    p.add_argument("--new-site-month", type=float, default=0.0,
                   help="months after the start at which additional sites would open (0)")
    p.add_argument("--as-of", help="estimate site rates from screenings up to this date (default: last)")
    p.add_argument("--scenario", help="scenario YAML: forecast it side by side with the protocol")
    p.add_argument("--n-sims", type=int, default=DEFAULT_SIMS, help=f"simulated trials ({DEFAULT_SIMS})")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=main_forecast)
    return p


def main_forecast(args) -> int:
    """Run the forecast command; a ValueError carries the one-line message for bad input."""
    from kn026 import analysis, protocol_files
    from kn026.cohort import connect
    from kn026.engine import Engine
    from kn026.scenario import Scenario, load_scenario

    if args.sites is None and (args.mean_rate is not None or args.cv is not None):
        raise ValueError("--mean-rate and --cv describe sites given with --sites K")
    if args.sites is not None and args.only_sites:
        raise ValueError("--only-sites selects sites estimated from the cohort; it cannot be used with --sites")
    if args.sites is not None and args.approach != 1.0:
        raise ValueError("--approach thins rates estimated from the cohort; with --sites give the mean rate "
                         "the sites screen for this trial")
    if args.sites is not None and args.mean_rate is None:
        raise ValueError("--sites needs --mean-rate (patients screened per site-month)")
    start = to_date(args.start, "--start") if args.start else _dt.date.today()
    deadline = to_date(args.deadline, "--deadline") if args.deadline else None
    protocol = protocol_files.for_args(args)  # --stage checked against its stages
    target, target_text = protocol_files.target_for(args, protocol)
    scenario = load_scenario(args.scenario, protocol) if args.scenario else None
    con = connect()
    con.execute("SET enable_progress_bar = false")
    from kn026.cli import load_for

    cohort = load_for(args, con)  # progress on a terminal
    engine = Engine(cohort, protocol, args.stage)
    base = analysis.run(engine, Scenario()).totals
    fractions = eligible_fractions(base)
    scen_totals = analysis.run(engine, scenario).totals if scenario else None

    if args.sites is not None:
        sites = SiteInputs.from_inputs(args.sites, args.mean_rate, cv=args.cv,
                                       stagger_months=args.stagger, ramp_months=args.ramp)
    else:
        need = {"site_id", "screening_date"} - set(cohort.present)
        if need:
            raise ValueError(f"the cohort has no {' or '.join(sorted(need))} column; give the sites as "
                             "--sites K --mean-rate R [--cv C]")
        cols = ["site_id", "screening_date"] + (["country"] if "country" in cohort.present else [])
        frame = con.execute(f"SELECT {', '.join(cols)} FROM {cohort.table}").df()
        sites = estimate_sites(frame, as_of=args.as_of)
        keep = [t.strip() for t in (args.only_sites or "").split(",") if t.strip()]
        if keep:
            sites = sites.subset(keep)
        from kn026.recruitment import approached

        sites = approached(sites, args.approach).with_activation(stagger_months=args.stagger,
                                                                 ramp_months=args.ramp)

    common = dict(uptake=args.uptake, target=target, start=start, n_sims=args.n_sims, seed=args.seed,
                  enrolled=args.enrolled, fraction_screened=base["screened"])
    doc = {"protocol": protocol.name, "stage": args.stage, "cohort": str(args.cohort),
           "screened": base["screened"], "target": target, "target_source": target_text,
           "enrolled": args.enrolled,
           "uptake": args.uptake, "approach": args.approach, "start": start.isoformat(),
           "deadline": deadline.isoformat() if deadline else None,
           "sites": {"source": sites.source, "n": sites.n_sites, "note": sites.note,
                     "mean_rate_total": float(sites.mean.sum()), "prior_mean": sites.prior_mean,
                     "prior_cv": None if not np.isfinite(sites.prior_shape) else 1 / math.sqrt(sites.prior_shape),
                     "stagger_months": args.stagger, "ramp_months": args.ramp},
           "bounds": {}}
    results, errors = {}, {}
    for bound, frac in fractions.items():
        try:
            res = forecast(sites, frac, label=bound, **common)
        except ValueError as err:
            if not str(err).startswith("target unreachable"):
                raise
            errors[bound] = str(err)
            doc["bounds"][bound] = {"eligible_fraction": frac, "error": str(err)}
            continue
        results[bound] = res
        entry = {"eligible_fraction": frac, **res.summary(deadline)}
        if deadline is not None:
            entry["sites_needed"] = sites_needed(
                sites, frac, deadline, probability=args.probability,
                new_site_activation=args.new_site_month, **common).to_dict()
        entry["curve"] = _records(res.curve)
        entry["site_contribution"] = _records(res.site_contribution)
        doc["bounds"][bound] = entry
    if not results:
        raise ValueError(next(iter(errors.values())))
    comparisons = {}
    if scenario is not None:
        scen_frac = eligible_fractions(scen_totals)
        doc["scenario"] = {"name": scenario.name, "changes": scenario.changes(protocol), "bounds": {}}
        for bound in results:
            if scen_frac[bound] == 0:
                doc["scenario"]["bounds"][bound] = {"error": "target unreachable: no eligible patients"}
                continue
            cmp_ = compare_fractions(sites, fractions[bound], scen_frac[bound],
                                     labels=("Protocol", scenario.name), **common)
            comparisons[bound] = cmp_
            doc["scenario"]["bounds"][bound] = cmp_.to_dict(deadline)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return 0
    _print_text(doc, results, errors, comparisons, base, args)
    return 0


def _records(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready rows: dates as ISO text, numpy scalars as Python numbers, NaN as null."""
    out = frame.copy()
    for col in out.columns:
        if col == "date":
            out[col] = [d.isoformat() if d else None for d in out[col]]
    rows = out.to_dict(orient="records")
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows]


def _print_text(doc, results, errors, comparisons, base, args) -> None:
    out = sys.stdout
    s = doc["sites"]
    b = doc["bounds"]
    fr = ", ".join(f"{v['eligible_fraction']:.1%} {k}" for k, v in b.items())
    print(f"{doc['protocol']} stage {doc['stage']}: {base['screened']} screened, eligible {fr}; "
          f"uptake {doc['uptake']:.0%}.", file=out)
    print(f"Sites: {s['note']}; open from {doc['start']}"
          + (f" over {s['stagger_months']:g} months" if s["stagger_months"] else "")
          + (f", ramp-up {s['ramp_months']:g} months" if s["ramp_months"] else "") + ".", file=out)
    print(f"target: {doc['target_source']}", file=out)
    any_res = next(iter(results.values()))
    print(f"Target {doc['target']} enrolled ({doc['enrolled']} already), {any_res.n_sims} simulated trials, "
          f"seed {any_res.seed}:", file=out)
    for bound in b:
        if bound in errors:
            print(f"  {bound:<11} {errors[bound]}", file=out)
            continue
        r = results[bound]
        line = f"  {bound:<11} {r.readout()}"
        if doc["deadline"]:
            line += f"; P(by {doc['deadline']}) = {r.probability_by(doc['deadline']):.2f}"
        print(line, file=out)
    if doc["deadline"]:
        for bound, entry in b.items():
            if "sites_needed" in entry:
                sn = entry["sites_needed"]
                n = sn["additional_sites"]
                what = ("no more sites needed" if n == 0 else
                        f"{n} more site(s) at the mean rate ({sn['new_site_mean_rate']:.2f} screened/month)")
                print(f"  {bound:<11} {what} to finish by {doc['deadline']} with probability "
                      f"{sn['level']:.0%} (P now {sn['probability_now']:.2f}, then {sn['probability']:.2f})",
                      file=out)
    if "scenario" in doc:
        sc = doc["scenario"]
        print(f"Scenario {sc['name']!r} ({'; '.join(sc['changes']) or 'no changes'}):", file=out)
        for bound, entry in sc["bounds"].items():
            if bound in comparisons:
                print(f"  {bound:<11} {comparisons[bound].sentence()}", file=out)
            else:
                print(f"  {bound:<11} {entry['error']}", file=out)
