"""Time the recruitment forecast's simulation (for docs/forecast.md)."""

from __future__ import annotations

import datetime as _dt
import math

import numpy as np

from kn026.forecast.model import _draw_rates, forecast, sites_needed, time_to_count
from kn026.forecast.sites import SiteInputs

DAYS_PER_MONTH = 365.25 / 12
DEFAULT_TARGET = 286  # NCT05427383 registry estimate of the enrolment target
DEFAULT_UPTAKE = 0.85
DEFAULT_CV = 0.8  # between-site coefficient of variation of rates when none is given
DEFAULT_SIMS = 10_000
DEFAULT_PROBABILITY = 0.8  # confidence asked of "finish by the deadline"
QUANTILES = (0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975)
QUANTILE_COLUMNS = ("q025", "q10", "q25", "q50", "q75", "q90", "q975")
MIN_PRIOR_SHAPE = 0.05
MAX_HORIZON = 1200.0  # months: the automatic fan chart span never exceeds 100 years
_CHUNK = 4096  # simulated trials per block (bounds memory: block x knots floats)



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
        time_to_count(lam, flat.activation, 0.0, rng.gamma(DEFAULT_TARGET, 1.0, size=n_sims))

    jobs = {
        "time_to_target": ttt,
        "forecast": lambda: forecast(flat, 0.3, start=start, n_sims=n_sims, seed=seed),
        "forecast_ramp": lambda: forecast(ramp, 0.3, start=start, n_sims=n_sims, seed=seed),
        "sites_needed": lambda: sites_needed(ramp, 0.3, "2025-10-01", start=start, n_sims=n_sims, seed=seed),
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
