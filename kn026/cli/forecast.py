"""`python -m kn026 forecast`: time to reach the enrolment target for a screened cohort."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys

import numpy as np
import pandas as pd

from kn026.cli import options
from kn026.forecast.model import compare_fractions, eligible_fractions, forecast, sites_needed
from kn026.forecast.sites import (
    DEFAULT_CV,
    DEFAULT_PROBABILITY,
    DEFAULT_SIMS,
    DEFAULT_UPTAKE,
    SiteInputs,
    estimate_sites,
    to_date,
)


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register `forecast` on an argparse subparsers object; handler `main_forecast` in args.func."""
    p = subparsers.add_parser(
        "forecast", help="time to reach the enrolment target (Poisson-Gamma recruitment model)",
        description="Forecast how long enrolling the target takes: eligible fraction from the cohort's "
                    "funnel (strict and optimistic), site screening rates from the cohort (site_id, "
                    "screening_date) or from --sites/--mean-rate/--cv.")
    p.add_argument("--cohort", required=True, help="cohort file: CSV, Parquet or Excel")
    options.add_options(p)
    options.add_target_options(p)
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
    from kn026.base.table import connect
    from kn026.core import analysis
    from kn026.core.engine import Engine
    from kn026.core.scenario import Scenario, load_scenario

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
    protocol = options.for_args(args)  # --stage checked against its stages
    target, target_text = options.target_for(args, protocol)
    scenario = load_scenario(args.scenario, protocol) if args.scenario else None
    con = connect()
    con.execute("SET enable_progress_bar = false")
    from kn026.cli.common import load_for

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
        from kn026.forecast.recruitment import approached

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
