"""What the Recruitment page computes, as plain functions (no Streamlit).

The page turns its inputs into a `Plan`, the plan and the cohort into `SiteInputs`,
and each funnel bound into a forecast (`kn026.forecast.model`). This module holds the steps
that are not the model itself: reading site histories from the loaded cohort, the
*approach share*, the sponsor readout sentence, the per-site table (with small-cell
suppression) and the protocol-vs-scenario table.

Approach share. A cohort row is a patient *seen* at a site, so a site's rate from
`estimate_sites` is candidates per month. Only part of them are approached for this
trial (competing trials, referral habits, investigators' choice; consent comes later,
in the uptake). The trial's screening rate is share x candidate rate: thinning a
Poisson process keeps it Poisson, and scaling a Gamma rate keeps its shape, so the
between-site variability and posterior uncertainty carry over unchanged. For real
screening logs the share defaults to 1. Synthetic cohorts (built-in, generated) have
their site rates scaled so that n patients fill the window (20,000 in 36 months is
14 per site-month, for stable funnel statistics, not for speed), so there the default
share brings sites back to the generator's own unscaled referral rate.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from kn026.forecast import model as fc
from kn026.forecast import sites as fsites
from kn026.ingest.synth_params import DEFAULT_MEAN_RATE as SYNTHETIC_REFERRAL_RATE
from kn026.report import suppression

BOUNDS = ("strict", "optimistic")
FAST_ENROLMENT = 2.0  # enrolled per site-month above which the page warns
BENCHMARK = ("industry-sponsored phase III drug trials completed 2008-2019 enrolled a median 0.4-0.8 patients "
             "per site-month (PLoS ONE 2022;17:e0271819)")
SYNTHETIC_KINDS = ("builtin", "generated")  # data kinds whose volume is synthetic, not a rate
SOURCES = {"cohort": "Estimate from the cohort", "inputs": "From inputs"}


@dataclass(frozen=True)
class Plan:
    """Every input of one forecast run; frozen and hashable, so it can key a cache.

    Percentages are fractions here (uptake 0.85, approach 0.085). `source` is
    "cohort" (site rates estimated from site_id / screening_date, thinned by
    `approach`) or "inputs" (`n_sites` sites at `mean_rate` screened per month, `cv`).
    """

    target: int | None = None  # patients to enrol: the protocol file's `enrollment:` or the user's figure
    target_source: str = ""  # which figure `target` is ("286 patients (whole study, ...)")
    enrolled: int = 0
    uptake: float = fsites.DEFAULT_UPTAKE
    start: _dt.date = _dt.date(2027, 1, 1)
    deadline: _dt.date | None = None
    source: str = "cohort"
    approach: float = 1.0
    n_sites: int = 20
    mean_rate: float = SYNTHETIC_REFERRAL_RATE
    cv: float = fsites.DEFAULT_CV
    stagger: float = 0.0
    ramp: float = 0.0
    new_site_month: float = 3.0
    probability: float = fsites.DEFAULT_PROBABILITY
    n_sims: int = fsites.DEFAULT_SIMS
    seed: int = 0

    def check(self) -> str | None:
        """The first problem with the inputs, as a sentence for the page, or None."""
        if self.target is None:
            return "give the enrolment target (patients to enrol in this stage)"
        if self.source not in SOURCES:
            return f"unknown site source {self.source!r}"
        if self.deadline is not None and self.deadline <= self.start:
            return f"the deadline ({self.deadline}) must come after the start of enrolment ({self.start})"
        if self.source == "inputs" and self.n_sites < 1:
            return "give at least one site"
        return None


def target_text(declared, target: int) -> str:
    """Which figure a target is, for the page: the protocol's whole figure, a share of it, or the user's own."""
    if declared.target is not None and target == declared.target:
        return declared.text() + "; the protocol gives no split between stages, enter this stage's share"
    if declared.target:
        pct = 100 * target / declared.target
        return f"{target} patients, {pct:.1f} % of the protocol file's {declared.text()}"
    return f"{target} patients (the protocol file declares no enrolment target)"


# --------------------------------------------------------------------------- sites


def cohort_site_frame(cohort) -> pd.DataFrame | None:
    """site_id, screening_date (and country) of every patient, or None when the cohort lacks them."""
    if not {"site_id", "screening_date"} <= set(cohort.present):
        return None
    cols = ["site_id", "screening_date"] + (["country"] if "country" in cohort.present else [])
    return cohort.con.execute(f"SELECT {', '.join(cols)} FROM {cohort.table}").df()


def approached(sites: fsites.SiteInputs, share: float) -> fsites.SiteInputs:
    """Sites whose screening rates are `share` x their candidate rates (a thinned Poisson process).

    Means (and the mean of new sites) scale by `share`; Gamma shapes stay, so the CV of
    each rate and the between-site CV are unchanged.
    """
    share = float(share)
    if not 0.0 <= share <= 1.0 or math.isnan(share):
        raise ValueError(f"approach share must be between 0 and 100 %, got {share:.1%}")
    if share == 1.0:
        return sites
    note = f"{sites.note}; {share:.1%} of candidates approached" if sites.note else ""
    return replace(sites, mean=sites.mean * share, prior_mean=sites.prior_mean * share, note=note)


def default_approach(sites: fsites.SiteInputs, synthetic: bool) -> float:
    """1 for real screening data; for a synthetic cohort, the share that brings the mean site
    back to the generator's unscaled referral rate (`synth_params.DEFAULT_MEAN_RATE` per month),
    rounded to 0.1 %."""
    if not synthetic or sites.prior_mean <= SYNTHETIC_REFERRAL_RATE:
        return 1.0
    return max(round(SYNTHETIC_REFERRAL_RATE / sites.prior_mean, 3), 0.001)


def build_sites(plan: Plan, estimated: fsites.SiteInputs | None) -> fsites.SiteInputs:
    """The plan's sites: estimated ones thinned by the approach share, or sites from inputs;
    either way with the plan's activation stagger and ramp-up."""
    if plan.source == "cohort":
        if estimated is None:
            raise ValueError("this cohort has no site_id and screening_date to estimate site rates from; "
                             "give the sites as inputs")
        return approached(estimated, plan.approach).with_activation(stagger_months=plan.stagger,
                                                                      ramp_months=plan.ramp)
    return fsites.SiteInputs.from_inputs(plan.n_sites, plan.mean_rate, cv=plan.cv, stagger_months=plan.stagger,
                                     ramp_months=plan.ramp)


def implied_rates(sites: fsites.SiteInputs, fraction: float, uptake: float) -> tuple[float, float]:
    """(screened, enrolled) per site-month for the average site at full speed."""
    screened = float(np.mean(sites.mean))
    return screened, screened * fraction * uptake


# --------------------------------------------------------------------------- forecasts


@dataclass(eq=False)
class Outcome:
    """One bound's forecast, or the one-line reason there is none (e.g. "target unreachable")."""

    bound: str
    fraction: float | None
    result: fc.ForecastResult | None = None
    need: fc.SitesNeeded | None = None
    message: str = ""  # why there is no result
    need_message: str = ""  # why there is no sites-needed answer

    @property
    def ok(self) -> bool:
        return self.result is not None


def run_bound(plan: Plan, sites: fsites.SiteInputs, bound: str, fraction: float | None, screened: int,
              label: str = "", with_need: bool = True) -> Outcome:
    """Forecast one funnel bound (and the sites needed for the deadline); bad input becomes a message."""
    if fraction is None:
        return Outcome(bound, None, message="the eligible count is hidden by small-cell suppression, so it is "
                                             "not forecast (it would reveal the count)")
    common = dict(uptake=plan.uptake, target=plan.target, start=plan.start, n_sims=plan.n_sims, seed=plan.seed,
                  enrolled=plan.enrolled, fraction_screened=screened)
    try:
        res = fc.forecast(sites, fraction, label=label, **common)
    except ValueError as err:
        return Outcome(bound, fraction, message=str(err))
    out = Outcome(bound, fraction, res)
    if with_need and plan.deadline is not None:
        try:
            out.need = fc.sites_needed(sites, fraction, plan.deadline, probability=plan.probability,
                                       new_site_activation=plan.new_site_month, **common)
        except ValueError as err:
            out.need_message = str(err)
    return out


def bound_fractions(totals: dict) -> dict[str, float | None]:
    """{"strict": f, "optimistic": f} from funnel totals; None where a count is hidden (None)."""
    screened = totals.get("screened") or 0
    if screened <= 0:
        raise ValueError("the cohort has no screened patients; cannot estimate an eligible fraction")
    return {b: (None if totals.get(b) is None else totals[b] / screened) for b in BOUNDS}


def _months(x: float) -> str:
    return f"{x:.1f}" if np.isfinite(x) else "never"


def _month_year(d: _dt.date) -> str:
    return d.strftime("%B %Y")


def need_text(out: Outcome, deadline: _dt.date | None) -> str:
    """'12 more sites needed to finish by June 2027' (or why not / none needed)."""
    if deadline is None:
        return ""
    if out.need is None:
        return out.need_message
    n = out.need
    if n.additional == 0:
        return (f"no more sites needed to finish by {_month_year(deadline)} "
                f"(P = {n.probability_now:.2f} with the current sites)")
    return f"{n.additional} more site{'s' if n.additional != 1 else ''} needed to finish by {_month_year(deadline)}"


def sponsor_readout(out: Outcome, deadline: _dt.date | None = None) -> str:
    """'median 14.2 months, 80 % interval 11.3-17.9 months, 12 more sites needed to finish by June 2027'."""
    if not out.ok:
        return out.message
    r = out.result
    if r.remaining == 0:
        return f"target {r.target} already met ({r.enrolled} enrolled): nothing left to recruit"
    lo, hi = r.interval(0.8)
    text = f"median {_months(r.median)} months, 80 % interval {_months(lo)}-{_months(hi)} months"
    extra = need_text(out, deadline)
    return text + (f", {extra}" if extra else "")


# --------------------------------------------------------------------------- tables


def site_table(result: fc.ForecastResult, estimated: pd.DataFrame | None = None,
               hidden_sites=()) -> suppression.Table:
    """One row per site, largest expected contribution first (hidden sites last, by id):
    expected patients and share of the remaining target, enrolled and screened per month for
    this trial (with the 80 % interval of the screening rate), from a cohort also the
    patients screened there and the candidate rate, and the opening month when sites open
    at different times.

    `hidden_sites`: sites whose screened count is suppressed (as on the Sites page); every
    number of theirs that comes from patient data is hidden too, since the rate, its
    interval and the expected patients give the count back.
    """
    sc = result.site_contribution
    tab = pd.DataFrame({
        "site": sc["site_id"].astype(str).to_numpy(),
        "country": sc["country"].fillna("").astype(str).to_numpy(),
        "expected": sc["expected_enrolled"].to_numpy(float),
        "share_pct": 100 * np.asarray(sc["share"], dtype=float),
        "enrol_rate": sc["enrolment_rate"].to_numpy(float),
        "rate_mean": sc["rate_mean"].to_numpy(float),
        "rate_80": [f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(sc["rate_lo"], sc["rate_hi"], strict=True)],
    })
    derived = ["expected", "share_pct", "enrol_rate", "rate_mean", "rate_80"]
    if estimated is not None:
        est = estimated.set_index(estimated["site_id"].astype(str))
        tab["screened"] = est.loc[tab["site"], "screened"].to_numpy(np.int64)
        tab["candidate_rate"] = est.loc[tab["site"], "rate_mean"].to_numpy(float)
        derived += ["screened", "candidate_rate"]
    activation = sc["activation_month"].to_numpy(float)
    if np.any(activation > 0):
        tab["opens_month"] = activation
    # visible sites largest first, hidden ones after them by id: their rank would bound their counts
    hide = {str(x) for x in hidden_sites} if estimated is not None else set()
    rows = tab["site"].isin(hide)
    tab = pd.concat([tab[~rows].sort_values("expected", ascending=False, kind="stable"),
                     tab[rows].sort_values("site", kind="stable")]).reset_index(drop=True)
    hidden = pd.DataFrame(False, index=tab.index, columns=tab.columns)
    for col in derived:
        hidden[col] = tab["site"].isin(hide).to_numpy()
    return suppression.Table(tab, hidden, 0 if not hide else 1)


def visible_contribution(result: fc.ForecastResult, hidden_sites=()) -> fc.ForecastResult:
    """The result with hidden sites left out of its per-site contributions (for the chart)."""
    hide = {str(s) for s in hidden_sites}
    if not hide:
        return result
    sc = result.site_contribution
    return replace(result, site_contribution=sc[~sc["site_id"].astype(str).isin(hide)])


def _row(out: Outcome, deadline: _dt.date | None) -> dict:
    row = {"eligible_pct": None if out.fraction is None else 100 * out.fraction}
    r = out.result
    if r is None:
        row["note"] = out.message
        return row
    lo80, hi80 = r.interval(0.8)
    lo95, hi95 = r.interval(0.95)
    row.update(median_months=r.median, median_date=r.date_at(r.median),
               pi80=f"{_months(lo80)}-{_months(hi80)}", pi95=f"{_months(lo95)}-{_months(hi95)}")
    if deadline is not None:
        row["p_deadline_pct"] = 100 * r.probability_by(deadline)
        row["sites_needed"] = out.need.additional if out.need is not None else None
        if out.need is None and out.need_message:
            row["note"] = out.need_message
    if r.remaining == 0:
        row["note"] = f"target {r.target} already met"
    return row


def _frame(rows: list[dict], first: list[str], deadline: _dt.date | None, last: list[str]) -> pd.DataFrame:
    """Rows to a frame with fixed columns and display-friendly blanks (NaN / NaT / "")."""
    cols = [*first, "eligible_pct", "median_months", "median_date", "pi80", "pi95"]
    if deadline is not None:
        cols += ["p_deadline_pct", "sites_needed"]
    cols += [*last, "note"]
    frame = pd.DataFrame(rows)
    for c in cols:
        if c not in frame.columns:
            frame[c] = None
    if frame["note"].isna().all():
        cols.remove("note")
    for c in ("eligible_pct", "median_months", "p_deadline_pct", "saved_weeks"):
        if c in frame.columns:
            frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float)  # missing: NaN, shown empty
    if "sites_needed" in frame.columns:
        frame["sites_needed"] = frame["sites_needed"].astype("Int64")
    frame["median_date"] = pd.to_datetime(frame["median_date"])
    for c in ("pi80", "pi95", "note"):
        frame[c] = frame[c].fillna("")
    return frame[cols]


def summary_table(outcomes: dict[str, Outcome], deadline: _dt.date | None) -> pd.DataFrame:
    """One row per bound: eligible %, median (months, date), 80 % / 95 % intervals (months),
    P(target by the deadline) in %, more sites needed, and a note when a number is missing."""
    rows = [{"bound": b.capitalize(), **_row(out, deadline)} for b, out in outcomes.items()]
    return _frame(rows, ["bound"], deadline, [])


def comparison_table(pairs: dict[str, tuple[Outcome, Outcome]], labels: tuple[str, str],
                     deadline: _dt.date | None) -> pd.DataFrame:
    """Protocol and scenario side by side, one row per (bound, forecast), 95 % intervals left
    to the summary table; the scenario row carries the median weeks saved (negative: it
    costs time)."""
    rows = []
    for bound, (a, b) in pairs.items():
        for label, out in zip(labels, (a, b), strict=True):
            rows.append({"bound": bound.capitalize(), "forecast": label, **_row(out, deadline)})
        if a.ok and b.ok:
            rows[-1]["saved_weeks"] = fc.Comparison(a.result, b.result, labels).saved_weeks
    frame = _frame(rows, ["bound", "forecast"], deadline, ["saved_weeks"])
    cols = [c for c in frame.columns if c != "pi95"]  # the summary table has it; keep this one narrow
    cols.insert(cols.index("median_months") + 1, cols.pop(cols.index("saved_weeks")))  # next to the medians
    return frame[cols]


def saving_sentence(a: Outcome, b: Outcome, labels: tuple[str, str], changes: list[str]) -> str:
    """'Relaxing CrCl to >= 50 costs 5.5 weeks ...' from two outcomes on the same random numbers."""
    if not (a.ok and b.ok):
        return b.message or a.message
    cmp_ = fc.Comparison(a.result, b.result, labels)
    w = cmp_.saved_weeks
    what = f"“{labels[1]}”" + (f" ({'; '.join(changes)})" if changes else "")
    if not np.isfinite(w):
        return cmp_.sentence()
    facts = (f"({_months(a.result.median)} -> {_months(b.result.median)} months; eligible "
             f"{a.fraction:.1%} -> {b.fraction:.1%})")
    if w == 0:
        return f"{what} changes nothing on the median time to {a.result.target} patients {facts}"
    verb = "saves" if w > 0 else "costs"
    sign = 1.0 if w > 0 else -1.0  # report the paired saving in the direction of the verb
    mid, lo, hi = (sign * v for v in cmp_.paired())
    lo, hi = min(lo, hi), max(lo, hi)
    return (f"{what} {verb} {abs(w):.1f} weeks on the median time to {a.result.target} patients {facts}; "
            f"per simulated trial it {verb} {mid:.1f} weeks (80 % interval {lo:.1f} to {hi:.1f})")
