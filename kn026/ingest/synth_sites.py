"""Synthetic sites (country mix, sizes, activation, referral profiles) and patient arrivals over the accrual window."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kn026.ingest.synth_params import (
    _RECORDING,
    _S_ARRIVALS,
    _S_PROFILES,
    _S_SITES,
    _ULN,
    ACTIVATION_SPAN,
    COUNTRY_MIX,
    DAYS_PER_MONTH,
    DEFAULT_MEAN_RATE,
    DEFAULT_MONTHS,
    DEFAULT_SITES,
    DEFAULT_START,
    RATE_SHAPE,
    REGIONS,
    SITE_CRCL_RECORDED,
    SITE_NO_ULN_EXPORT,
    SITE_QTCF_REPORTED,
    SITE_SELECTIVITY_SD,
)


# ---------------------------------------------------------------------------
# Sites and arrivals
# ---------------------------------------------------------------------------
def _as_date(value) -> _dt.date:
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    if isinstance(value, str):
        return _dt.date.fromisoformat(value)
    return pd.Timestamp(value).date()


def _add_months(d: _dt.date, months: int) -> _dt.date:
    y, m = divmod(d.month - 1 + months, 12)
    y += d.year
    m += 1
    last = (_dt.date(y + (m == 12), m % 12 + 1, 1) - _dt.timedelta(days=1)).day
    return _dt.date(y, m, min(d.day, last))


def _window_days(start: _dt.date, months: int) -> int:
    if months < 1:
        raise ValueError("months must be >= 1")
    return (_add_months(start, months) - start).days


def _rng(seed: int, *key: int) -> np.random.Generator:
    if int(seed) < 0:
        raise ValueError("seed must be >= 0")
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))


def _quota(k: int) -> list[int]:
    """Largest-remainder allocation of k sites to COUNTRY_MIX (at least one Chinese site)."""
    shares = np.array([s for _, s, _ in COUNTRY_MIX]) * k
    counts = np.floor(shares).astype(int)
    order = np.argsort(-(shares - counts), kind="stable")
    counts[order[: k - counts.sum()]] += 1
    if counts[0] == 0:
        counts[int(np.argmax(counts))] -= 1
        counts[0] += 1
    return counts.tolist()


def generate_sites(k: int = DEFAULT_SITES, seed: int = 0, start=DEFAULT_START,
                   months: int = DEFAULT_MONTHS, *, n: int | None = None,
                   mean_rate: float = DEFAULT_MEAN_RATE) -> pd.DataFrame:
    """The site table: one row per site with its *true* monthly referral rate.

    Columns: site_id, country, region, activation_date, active_months (activation to the
    end of the window), rate_per_month (the Poisson rate drawn from a Gamma distribution,
    shape RATE_SHAPE) and expected_patients (rate x active months).

    Rates are Gamma(RATE_SHAPE) with mean `mean_rate`; when `n` is given they are scaled so
    that the expected total equals n, which makes them the true rates behind
    `generate(n, seed, k, start, months)` (that call uses exactly this table).
    """
    if k < 1:
        raise ValueError("sites must be >= 1")
    start = _as_date(start)
    total = _window_days(start, months)
    rng = _rng(seed, _S_SITES)
    countries = np.repeat(np.arange(len(COUNTRY_MIX)), _quota(k))
    countries = countries[rng.permutation(k)]
    first_cn = int(np.flatnonzero(countries == 0)[0])
    countries[[0, first_cn]] = countries[[first_cn, 0]]  # the lead site is Chinese
    span = min(int(ACTIVATION_SPAN * total), total - 1)
    act = np.sort(rng.integers(0, span + 1, size=k))
    act[0] = 0
    gamma = rng.gamma(RATE_SHAPE, 1.0 / RATE_SHAPE, size=k)
    active_months = (total - act) / DAYS_PER_MONTH
    if n is not None:
        scale = n / float(np.sum(gamma * active_months)) if n > 0 else 0.0
    else:
        scale = mean_rate
    rate = gamma * scale
    width = max(3, len(str(k)))
    df = pd.DataFrame({
        "site_id": pd.array([f"S{i + 1:0{width}d}" for i in range(k)], dtype=pd.StringDtype("pyarrow")),
        "country": pd.array([COUNTRY_MIX[c][0] for c in countries], dtype=pd.StringDtype("pyarrow")),
        "region": pd.array([COUNTRY_MIX[c][2] for c in countries], dtype=pd.StringDtype("pyarrow")),
        "activation_date": (np.datetime64(start, "D") + act).astype("datetime64[ms]"),
        "active_months": active_months,
        "rate_per_month": rate,
        "expected_patients": rate * active_months,
    })
    return df


@dataclass
class _Profiles:
    """Site-level lab reference ranges and recording habits (arrays indexed by site)."""

    region: np.ndarray       # 0 china, 1 east_asia, 2 west
    uln: dict                # name -> float array (true reference limits)
    uln_f: dict              # sex-specific (female) AST / ALT limits
    exports_uln: np.ndarray  # bool
    record: dict             # group -> per-patient recording probability
    qtcf_reported: np.ndarray
    crcl_recorded: np.ndarray
    pt_normal: np.ndarray    # mean normal PT (s)
    isi: np.ndarray
    selectivity: np.ndarray  # referral laxity, N(0, SITE_SELECTIVITY_SD): > 0 refers less-selected patients


def _site_profiles(k: int, seed: int, regions: np.ndarray, size: np.ndarray) -> _Profiles:
    """Per-site reference ranges, recording habits and referral laxity.

    `size` is each site's expected number of patients (only its proportions matter).
    """
    rng = _rng(seed, _S_PROFILES)
    west = regions == 2

    def pick(name: str) -> np.ndarray:
        out = np.empty(k)
        for reg, mask in (("china", ~west), ("west", west)):
            vals, w = _ULN[name][reg]
            w = np.asarray(w) / np.sum(w)
            out[mask] = np.asarray(vals)[rng.choice(len(vals), size=int(mask.sum()), p=w)]
        return out

    uln = {name: pick(name) for name in ("tbil", "dbil", "ast_m", "alt_m", "aptt", "inr", "pt")}
    # About half of Chinese labs use sex-specific transaminase ranges (AST 40/35, ALT 50/40).
    sex_specific = (~west) & (rng.random(k) < 0.5)
    uln_f = {"ast": np.where(sex_specific, np.minimum(uln["ast_m"], 35.0), uln["ast_m"]),
             "alt": np.where(sex_specific, 40.0, uln["alt_m"])}
    uln["alt_m"] = np.where(sex_specific, 50.0, uln["alt_m"])
    # Sites that never record a test: a fixed share, drawn among the smallest third of
    # sites (large centres record everything), so no seed loses a test for many patients.
    small = np.argsort(size, kind="stable")[: max(1, k // 3)]
    record = {}
    for group, (never, miss) in _RECORDING.items():
        site_miss = np.clip(miss * rng.gamma(2.0, 0.5, size=k), 0.0, 0.5)
        p = 1.0 - site_miss
        n_never = int(round(never * k))
        pool = np.arange(k) if group == "pt" else small
        p[rng.choice(pool, size=min(n_never, pool.size), replace=False)] = 0.0
        record[group] = p
    # A site that never records PT records INR, and vice versa (COAG is "INR or PT").
    both = (record["pt"] == 0) & (record["inr"] == 0)
    record["inr"][both] = 1.0 - _RECORDING["inr"][1]
    return _Profiles(
        region=regions, uln=uln, uln_f=uln_f,
        exports_uln=rng.random(k) >= SITE_NO_ULN_EXPORT,
        record=record,
        qtcf_reported=rng.random(k) < SITE_QTCF_REPORTED,
        crcl_recorded=rng.random(k) < SITE_CRCL_RECORDED,
        pt_normal=uln["pt"] / rng.uniform(1.10, 1.16, size=k),
        isi=rng.uniform(0.95, 1.3, size=k),
        selectivity=_standardise(rng.standard_normal(k), size) * SITE_SELECTIVITY_SD,
    )


def _standardise(z: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """z centred and scaled to weighted mean 0 and SD 1 (patients, not sites, count)."""
    w = np.asarray(weight, float)
    if z.size < 2 or w.sum() <= 0:
        return np.zeros_like(z)
    w = w / w.sum()
    z = z - np.sum(w * z)
    sd = np.sqrt(np.sum(w * z * z))
    return z / sd if sd > 0 else z


def _arrivals(n: int, seed: int, sites: pd.DataFrame, total: int, start: _dt.date):
    """Site index and day offset per patient, in screening-date order.

    Given the total n, a Poisson process per site (rate r_i from activation a_i) has
    multinomial counts over sites with p_i ~ r_i * (T - a_i) and i.i.d. uniform
    arrival days over each site's active window; that is what is drawn here.
    """
    rng = _rng(seed, _S_ARRIVALS)
    k = len(sites)
    act = ((sites["activation_date"].to_numpy().astype("datetime64[D]")
            - np.datetime64(start, "D")).astype(np.int64))
    weight = sites["rate_per_month"].to_numpy() * (total - act)
    p = weight / weight.sum() if weight.sum() > 0 else np.full(k, 1.0 / k)
    counts = rng.multinomial(n, p)
    grid = np.zeros((total, k), dtype=np.int64)  # day x site
    for s in range(k):
        days = total - act[s]
        grid[act[s]:, s] = rng.multinomial(counts[s], np.full(days, 1.0 / days))
    flat = grid.ravel()
    site_idx = np.repeat(np.tile(np.arange(k, dtype=np.int16), total), flat)
    day = np.repeat(np.repeat(np.arange(total, dtype=np.int32), k), flat)
    return site_idx, day


@dataclass
class _Plan:
    n: int
    seed: int
    start: _dt.date
    total_days: int
    sites: pd.DataFrame
    prof: _Profiles
    site_idx: np.ndarray
    day: np.ndarray
    id_width: int


def _plan(n: int, seed: int, sites: int, start, months: int) -> _Plan:
    if n < 0:
        raise ValueError("n must be >= 0")
    start = _as_date(start)
    total = _window_days(start, months)
    site_tab = generate_sites(sites, seed, start, months, n=n)
    regions = np.array([REGIONS.index(r) for r in site_tab["region"]], dtype=np.int8)
    prof = _site_profiles(sites, seed, regions, site_tab["expected_patients"].to_numpy())
    site_idx, day = _arrivals(n, seed, site_tab, total, start)
    return _Plan(n, int(seed), start, total, site_tab, prof, site_idx, day,
                 max(7, len(str(n))))
