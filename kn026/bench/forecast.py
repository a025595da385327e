"""Time the recruitment forecast's simulation (for docs/forecast.md)."""

from __future__ import annotations

import datetime as _dt
import math

import numpy as np

from kn026.forecast.model import _draw_rates, forecast, sites_needed, time_to_count
from kn026.forecast.sites import DEFAULT_SIMS, SiteInputs

BENCH_TARGET = 200  # patients to enrol in the timing benchmark only (a protocol's target is in its file)


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
