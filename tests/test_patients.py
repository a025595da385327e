"""Patient filters, drill-down and cohort profile agree with the funnel maths and the data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kn026.base.table import connect
from kn026.core import analysis
from kn026.core.criteria import load_protocol
from kn026.core.engine import Engine
from kn026.core.scenario import Scenario
from kn026.ingest import synth
from kn026.ingest.cohort import load_cohort
from kn026.report import patients as P

N = 3_000


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synth.generate(N, 11, sites=15)


@pytest.fixture(scope="module")
def protocol():
    return load_protocol()


@pytest.fixture(scope="module")
def engine(frame, protocol) -> Engine:
    cohort = load_cohort(frame, connect())
    return Engine(cohort, protocol, 1)


SCENARIO = Scenario("test", overrides={"INCL07.CRCL": {"min": 50}}, disabled=frozenset({"EXCL20", "INCL07.HGB"}))


@pytest.mark.parametrize("scenario", [Scenario(), SCENARIO], ids=["protocol", "scenario"])
def test_status_filters_match_the_criterion_statistics(engine, scenario):
    res = analysis.run(engine, scenario)
    stats = res.stats.set_index("criterion")
    for cid in res.plan.ids:
        count = {status: P.find(engine, scenario, [P.Condition(status, cid)], limit=0).total
                 for status in P.STATUSES}
        assert count["fails"] == stats.loc[cid, "failed"], cid
        assert count["fails only"] == stats.loc[cid, "unique"], cid
        assert count["unknown on"] == stats.loc[cid, "unknown"], cid
        assert count["passes"] == stats.loc[cid, "passed"], cid


def test_filters_with_64_analyst_criteria_beside_the_protocol(engine):
    """Masks of two words (123 leaves): every filter still equals the criterion statistics."""
    from tests import cohorts

    wide = Scenario("wide", overrides={"CUST64": {"limit": 1}}, disabled=frozenset({"EXCL20", "CUST02"}),
                    custom=tuple(cohorts.analyst_rules(64)))
    ext = analysis.engine_for(engine, wide)
    assert ext.width == 3  # 67 protocol rules + 64 analyst criteria
    res = analysis.run(ext, wide)
    stats = res.stats.set_index("criterion")
    for cid in [c for c in res.plan.ids if c.startswith("CUST")][-20:] + ["INCL07", "EXCL11"]:
        count = {status: P.find(ext, wide, [P.Condition(status, cid)], limit=0).total
                 for status in P.STATUSES}
        assert count["fails"] == stats.loc[cid, "failed"], cid
        assert count["fails only"] == stats.loc[cid, "unique"], cid
        assert count["unknown on"] == stats.loc[cid, "unknown"], cid
        assert count["passes"] == stats.loc[cid, "passed"], cid
    totals = res.totals
    counts = {v: P.find(ext, wide, eligible=v, limit=0).total for v in P.ELIGIBLE}
    assert counts == {"yes": totals["strict"], "no": totals["excluded_optimistic"], "unknown": totals["unknown"]}
    failing = P.find(ext, wide, [P.Condition("fails", "CUST64")], limit=5)
    assert failing.total > 0 and all("CUST64" in f for f in failing.frame["fails"])
    pid = failing.frame["patient_id"].iloc[0]
    assert "CUST64" in P.patient_summary(ext, wide, pid)["fails"]
    detail = P.patient_detail(ext, wide, pid).set_index("rule")
    assert detail.loc["CUST64", "verdict"] == "fail"


def test_eligibility_filter_matches_the_totals(engine):
    totals = analysis.run(engine, SCENARIO).totals
    counts = {v: P.find(engine, SCENARIO, eligible=v, limit=0).total for v in P.ELIGIBLE}
    assert counts == {"yes": totals["strict"], "no": totals["excluded_optimistic"], "unknown": totals["unknown"]}


def test_conditions_combine_with_and(engine):
    a = P.find(engine, Scenario(), [P.Condition("fails", "INCL05")], limit=0).total
    b = P.find(engine, Scenario(), [P.Condition("fails", "INCL02")], limit=0).total
    both = P.find(engine, Scenario(), [P.Condition("fails", "INCL05"), P.Condition("fails", "INCL02")], limit=0)
    assert 0 < both.total < min(a, b)
    rows = P.find(engine, Scenario(), [P.Condition("fails", "INCL05"), P.Condition("fails", "INCL02")], limit=50)
    assert all("INCL05" in f and "INCL02" in f for f in rows.frame["fails"])
    assert (rows.frame["eligible"] == "no").all()


def test_sub_rule_targets_and_site_filter(engine, frame):
    her2 = P.find(engine, Scenario(), [P.Condition("unknown on", "INCL02.HER2")], limit=1000)
    assert her2.total > 0
    sub = frame.set_index("patient_id").loc[her2.frame["patient_id"]]
    ihc, ish = sub["her2_ihc"], sub["her2_ish"]
    assert (ihc.isna() | ((ihc == 2) & ish.isna())).all()  # unknown only when IHC or a needed ISH is missing
    site = frame["site_id"].iloc[0]
    at_site = P.find(engine, Scenario(), site=site, limit=0).total
    assert at_site == int((frame["site_id"] == site).sum())


def test_disabled_sub_rule_is_not_a_target(engine):
    assert P.target_mask(engine, SCENARIO, "INCL07.HGB") != 0  # its own bit, for "unknown on" etc.
    crit = P.target_mask(engine, SCENARIO, "INCL07")
    assert not crit & P.target_mask(engine, SCENARIO, "INCL07.HGB")


def test_unknown_status_is_rejected(engine):
    with pytest.raises(ValueError, match="unknown status"):
        P.condition_sql(engine, Scenario(), P.Condition("maybe", "INCL01"))


def test_patient_detail_agrees_with_per_rule_verdicts(engine):
    sql = engine.verdicts_sql(SCENARIO.overrides)
    verdicts = engine.con.execute(sql).df().set_index("patient_id")
    for pid in verdicts.index[:25]:
        detail = P.patient_detail(engine, SCENARIO, pid).set_index("rule")
        for rule_id, verdict in verdicts.loc[pid].items():
            assert detail.loc[rule_id, "verdict"] == verdict, (pid, rule_id)
    detail = P.patient_detail(engine, SCENARIO, verdicts.index[0]).set_index("rule")
    assert "50" in detail.loc["INCL07.CRCL", "requirement"]
    assert "protocol 30 → 50" in detail.loc["INCL07.CRCL", "note"]
    assert detail.loc["EXCL20", "note"] == "disabled in this scenario"
    with pytest.raises(KeyError):
        P.patient_detail(engine, SCENARIO, "no such patient")


def test_derived_values_are_shown(engine, frame):
    row = frame.dropna(subset=["age_years", "weight_kg", "creatinine_umol_l", "sex"])
    row = row[row["creatinine_clearance_ml_min"].isna()].iloc[0]
    detail = P.patient_detail(engine, Scenario(), row["patient_id"]).set_index("rule")
    factor = 0.85 if row["sex"] == "F" else 1.0
    crcl = (140 - row["age_years"]) * row["weight_kg"] * factor / (72 * row["creatinine_umol_l"] / 88.4)
    shown = detail.loc["INCL07.CRCL", "values"].split("Creatinine clearance if ")[1]
    value = float(shown.split("= ")[1])
    assert math.isclose(value, round(crcl, 4), rel_tol=1e-6)
    assert ("female" if row["sex"] == "F" else "male") in shown


def test_summary(engine):
    pid = P.find(engine, Scenario(), [P.Condition("fails only", "INCL05")], limit=1).frame["patient_id"].iloc[0]
    s = P.patient_summary(engine, Scenario(), pid)
    assert s["eligible"] == "no" and s["fails"] == ["INCL05"]


def test_format_value():
    assert P.format_value(None, "days_since_transfusion") == "none on record"
    assert P.format_value(None, "inr_uln") == "not recorded (default ULN used)"
    assert P.format_value(float("nan"), "age_years") == "missing"
    assert P.format_value(True) == "yes" and P.format_value(np.int16(3)) == "3"
    assert P.format_value(1.5000000001) == "1.5"


def test_completeness_and_coverage(frame, protocol):
    partial = frame.drop(columns=["her2_ish", "lvef_pct"])
    engine = Engine(load_cohort(partial, connect()), protocol, 1)
    cols = P.completeness(engine).set_index("column")
    assert not cols.loc["her2_ish", "present"] and cols.loc["her2_ish", "missing"] == N
    assert cols.loc["age_years", "missing"] == int(frame["age_years"].isna().sum())
    assert cols.loc["days_since_transfusion", "empty_means"] == "none on record"
    assert "INCL02.HER2" in cols.loc["her2_ihc", "used_by"]
    cov = P.rule_coverage(engine, Scenario(), cols.reset_index()).set_index("rule")
    # dictionary v2: an absent her2_ish reads as unknown (IHC 2+ patients), it does not make HER2 n/a
    assert cov.loc["INCL02.HER2", "status"] != "n/a" and "no her2_ish column" in cov.loc["INCL02.HER2", "reason"]
    assert cov.loc["INCL08", "status"] == "n/a"
    assert cov.loc["INCL05", "status"] in ("ok", "often unknown")
    res = analysis.run(engine)
    assert cov.loc["INCL05", "failed"] == res.stats.set_index("criterion").loc["INCL05", "failed"]


def test_distributions(engine, frame):
    measures = P.measures(engine.protocol)
    assert len(measures) == 16 and len({m.key for m in measures}) == 16
    for m in measures:
        d = P.distribution(engine, m, SCENARIO)
        assert d.available, m.key
        assert int(d.bins["count"].sum()) + d.missing == N, m.key
    age = P.distribution(engine, next(m for m in measures if m.key == "age"))
    assert age.missing == int(frame["age_years"].isna().sum())
    assert [lim["value"] for lim in age.limits] == [18.0]
    crcl = P.distribution(engine, next(m for m in measures if m.key == "crcl"), SCENARIO)
    assert sorted(lim["value"] for lim in crcl.limits) == [30.0, 50.0]  # scenario and protocol
    ecog = P.distribution(engine, next(m for m in measures if m.key == "ecog"))
    assert ecog.bins["x0"].tolist() == sorted(frame["ecog"].dropna().unique().astype(float).tolist())
    her2 = P.category_counts(engine, engine.protocol.categories[0])
    assert her2["count"].sum() == N
    assert her2.set_index("category").loc["IHC 3+", "count"] == int((frame["her2_ihc"] == 3).sum())


def test_category_colours_follow_the_rule_as_rewritten(engine, frame):
    """The HER2 chart's verdicts come from the rule's masks: rewrite the rule and they follow."""
    chart = engine.protocol.categories[0]
    base = P.category_counts(engine, chart).set_index("category")
    assert base.loc["IHC 3+", "verdict"] == "pass" and base.loc["IHC 1+", "verdict"] == "fail"
    assert base.loc["IHC 2+ ISH −", "verdict"] in ("fail", "")
    wider = P.category_counts(engine, chart, Scenario("wider", replace={chart.rule: "her2_ihc >= 2"}))
    wider = wider.set_index("category")
    n2neg = int((frame["her2_ihc"].eq(2).fillna(False) & frame["her2_ish"].eq("negative").fillna(False)).sum())
    assert n2neg > 0  # the synthetic cohort has IHC 2+ ISH-negative patients
    assert wider.loc["IHC 2+ ISH −", "verdict"] == "pass" and wider.loc["IHC 2+ ISH −", "count"] == n2neg
    assert wider.loc["IHC 1+", "verdict"] in ("fail", "")
    # a rule that splits a category gives one bar per verdict, counts still adding up
    split = P.category_counts(engine, chart, Scenario("split", replace={chart.rule: "her2_ihc = 3 AND ecog <= 0"}))
    assert split["count"].sum() == N
    assert {"IHC 3+ · pass", "IHC 3+ · fail"} <= set(split["category"])


def test_site_and_country_tables(engine, frame):
    sites = P.site_table(engine, SCENARIO)
    totals = analysis.run(engine, SCENARIO).totals
    assert sites["screened"].sum() == N and sites["strict"].sum() == totals["strict"]
    assert sites["optimistic"].sum() == totals["optimistic"]
    assert (sites["excluded"] == sites["screened"] - sites["optimistic"]).all()
    countries = P.country_table(sites)
    assert countries["screened"].sum() == N and countries["sites"].sum() == len(sites)
    by_country = frame.groupby("country")["patient_id"].count()
    for c, n in by_country.items():
        assert countries.set_index("country").loc[c, "screened"] == n
    rated = P.with_rates(sites)
    assert np.allclose(rated["pct_strict"], 100 * sites["strict"] / sites["screened"])
    facts = P.cohort_facts(engine)
    assert facts["sites"] == frame["site_id"].nunique() and facts["countries"] == frame["country"].nunique()


def test_labels_and_targets(engine, protocol):
    labels = {c.id: P.criterion_label(c, 1) for c in protocol.criteria}
    assert labels["INCL05"] == "ECOG 0-1"
    assert labels["INCL07"].startswith("Neutrophils, platelets") and len(labels["INCL07"]) <= 60
    assert "AST" in P.criterion_label(protocol.criterion("INCL07"), 1, width=200)  # acronyms keep their case
    ids = [t for t, _ in P.targets(engine)]
    assert "INCL02" in ids and "INCL02.HER2" in ids and "INCL01.X" not in ids
    assert P.stage_params(protocol.rule("INCL03.LINES"), 1) == ["min_prior_lines"]
    assert P.stage_params(protocol.rule("INCL03.LINES"), 2) == ["stage2_prior_lines"]
