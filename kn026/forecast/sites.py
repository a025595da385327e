"""Recruitment sites: dates and ramp-up, per-site rate inputs, and site rates estimated from a cohort (empirical Bayes).

The inputs of the Poisson-Gamma forecast (kn026.forecast.model; formulas in docs/forecast.md).
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

DAYS_PER_MONTH = 365.25 / 12
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
