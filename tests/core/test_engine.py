"""The DuckDB engine against hand-checked golden cohorts and the plain-Python reference."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kn026.base.table import connect
from kn026.core import analysis, custom
from kn026.core import engine as engine_module
from kn026.core.criteria import load_protocol
from kn026.core.engine import Engine, compile_rule
from kn026.core.scenario import Scenario
from kn026.ingest.cohort import load_cohort
from tests import cohorts, reference

GOLDEN = sorted((Path(__file__).parents[1] / "golden").glob("*.csv"))
PROTOCOL = load_protocol()


def screen(source, stage: int, scenario: Scenario | None = None):
    """Engine verdicts per patient: {patient_id: {rule or criterion ID or ELIGIBLE: status}}."""
    cohort = load_cohort(source, connect())
    engine = Engine(cohort, PROTOCOL, stage)
    frame = cohort.con.execute(analysis.screen_log_sql(engine, scenario)).df()
    frame = frame.rename(columns={"eligible": reference.ELIGIBLE}).set_index("patient_id")
    return engine, frame.to_dict(orient="index")


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
@pytest.mark.parametrize("stage", [1, 2])
def test_golden_files(path, stage):
    rows, _, expectations = reference.read_golden(path)
    _, verdicts = screen(path, stage)
    ids = list(verdicts)
    assert len(ids) == len(rows)
    checked = 0
    for pid, expected in zip(ids, expectations, strict=True):
        for (st_, rule_id), want in expected.items():
            if st_ != stage:
                continue
            assert verdicts[pid][rule_id] == want, f"{path.name} {pid} stage {stage} {rule_id}"
            checked += 1
    assert checked > 0


def test_golden_files_cover_every_rule():
    covered = set()
    for path in GOLDEN:
        for exp in reference.read_golden(path)[2]:
            covered |= {rule for _, rule in exp}
    assert set(PROTOCOL.rule_ids()) <= covered


def test_leaf_order_matches_reference():
    assert set(PROTOCOL.rule_ids()) == set(reference.LEAVES)
    assert [c.id for c in PROTOCOL.criteria] == reference.CRITERIA


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts.cohorts(), st.sampled_from([1, 2]))
def test_engine_matches_reference(tmp_path_factory, cohort, stage):
    patients, absent = cohort
    path = tmp_path_factory.mktemp("c") / "cohort.csv"
    path.write_text(cohorts.to_csv(patients, absent))
    engine, verdicts = screen(path, stage)
    present = set(cohorts.VALUES) - absent | {"patient_id"}
    for i, row in enumerate(patients, 1):
        row = {k: v for k, v in row.items() if k in present}
        leaves = reference.evaluate_leaves(row, stage, present)
        crits = reference.evaluate_criteria(leaves)
        got = verdicts[f"P{i}"]
        for rule_id, want in {**leaves, **crits}.items():
            assert got[rule_id] == want, f"P{i} stage {stage} {rule_id}: {row}"
        assert got[reference.ELIGIBLE] == reference.eligible(crits)


def test_absent_columns_make_exactly_their_rules_na():
    import pandas as pd

    frame = pd.DataFrame({"patient_id": ["A"], "age_years": [50.0], "inr": [1.0]})
    cohort = load_cohort(frame, connect())
    engine = Engine(cohort, PROTOCOL, 1)
    assert "INCL01" not in engine.not_assessable
    assert "INCL07.COAG" not in engine.not_assessable  # INR alone: PT reads unknown (v2)
    # neither alternative present: the absent columns of both are named
    assert engine.not_assessable["INCL07.CRCL"] == ["creatinine_clearance_ml_min", "creatinine_umol_l",
                                                    "weight_kg"]
    assert engine.not_assessable["EXCL03.WASHOUT"] == ["days_since_anticancer_therapy"]
    # ULNs, sex and other non-required columns never make a rule n/a
    assert all("uln" not in c and c != "sex" for cols in engine.not_assessable.values() for c in cols)


def test_ties_at_limits_are_exact():
    """INR 1.8 with ULN 1.2 is exactly 1.5 x ULN (1.5 * 1.2 = 1.7999999999999998 in binary)."""
    import pandas as pd

    frame = pd.DataFrame({
        "patient_id": ["tie", "over"], "inr": [1.8, 1.8000001], "inr_uln": [1.2, 1.2],
        "pt_s": [None, None], "bilirubin_total_umol_l": [31.5, 31.6],
        "bilirubin_total_uln_umol_l": [21.0, 21.0]})
    _, verdicts = screen(frame, 1)
    assert verdicts["tie"]["INCL07.COAG"] == "pass"
    assert verdicts["over"]["INCL07.COAG"] == "unknown"  # PT could still pass
    assert verdicts["tie"]["INCL07.TBIL"] == "pass"
    assert verdicts["over"]["INCL07.TBIL"] == "fail"


def test_compiled_sql_binds_exact_literals():
    rule = PROTOCOL.rule("INCL07.COAG")
    sql = compile_rule(rule, 1, rule.defaults(), frozenset({"inr", "pt_s", "inr_uln"}), PROTOCOL)
    assert "1.5 *" in sql and "1.2" in sql and "$" not in sql and ":" not in sql
    assert "CAST(NULL AS DOUBLE)" in sql  # absent pt_uln_s reads as NULL -> default ULN


@pytest.fixture(scope="module")
def random_engine():
    """A 3,000-patient random cohort with NULLs everywhere, stage 1."""
    rng = random.Random(7)
    patients = [{c: rng.choice(v) for c, v in cohorts.VALUES.items()} for _ in range(3000)]
    import pandas as pd

    frame = pd.read_csv(__import__("io").StringIO(cohorts.to_csv(patients)), dtype=str,
                        keep_default_na=False)
    cohort = load_cohort(frame, connect())
    return Engine(cohort, PROTOCOL, 1)


def _direct_counts(engine, ids, overrides=None):
    """Strict and optimistic survivors after each criterion, by direct SQL on verdicts."""
    log = analysis.screen_log_sql(engine)
    if overrides:
        log = analysis.screen_log_sql(engine, Scenario("s", overrides=overrides))
    out = []
    for k in range(len(ids) + 1):
        prefix = ids[:k]
        strict = " AND ".join(f"\"{c}\" = 'pass'" for c in prefix) or "TRUE"
        opt = " AND ".join(f"\"{c}\" <> 'fail'" for c in prefix) or "TRUE"
        out.append(engine.con.execute(
            f"SELECT count_if({strict}), count_if({opt}) FROM ({log})").fetchall()[0])
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_histogram_funnel_equals_direct_sql(random_engine, data):
    """For random orders and subsets, histogram-derived counts equal direct SQL counts."""
    all_ids = [c.id for c in PROTOCOL.criteria]
    ids = data.draw(st.lists(st.sampled_from(all_ids), unique=True, min_size=1, max_size=12))
    disabled = frozenset(set(all_ids) - set(ids))
    result = analysis.run(random_engine, Scenario("subset", disabled=disabled), order=ids)
    got = list(zip(result.funnel["strict"], result.funnel["optimistic"], strict=True))
    assert got == [tuple(r) for r in _direct_counts(random_engine, ids)]


@pytest.mark.parametrize("rule_id,values", [
    ("INCL07.PLT", {"min": 75}),
    ("INCL07.COAG", {"max_x_uln": 2}),
    ("EXCL03.WASHOUT", {"washout_max_days": 21}),
    ("EXCL03.TCM", {"tcm_days": 7}),
    ("EXCL11.SBP", {"max_sbp": 140}),
    ("EXCL11.QTCF", {"max_male": 470}),
    ("INCL07.CRCL", {"min": 50}),
])
def test_threshold_change_equals_full_reevaluation(random_engine, rule_id, values):
    """Re-evaluating one rule against stored masks equals evaluating every rule afresh."""
    fast = random_engine.histogram({rule_id: values})
    assert cohorts.as_counter(fast) == _verdict_counter(random_engine, {rule_id: values})


def _verdict_frame(engine, overrides=None):
    """Per-patient pass / fail / unknown / n/a of every rule, evaluated afresh (no masks)."""
    return engine.con.execute(engine.verdicts_sql(overrides)).df().set_index("patient_id")


def _verdict_counter(engine, overrides=None) -> Counter:
    """The histogram as {(fail, unknown): n}, built row by row from fresh verdicts."""
    frame = _verdict_frame(engine, overrides)
    out: Counter = Counter()
    for rec in frame.itertuples(index=False):
        f = u = 0
        for status, rule in zip(rec, engine.rules, strict=True):
            bit = 1 << engine.bit[rule.id]
            f |= bit if status == "fail" else 0
            u |= bit if status == "unknown" else 0
        out[(f, u)] += 1
    return out


def _verdict_funnel(engine, ids, overrides=None) -> list[tuple[int, int]]:
    """Strict and optimistic survivors after each criterion of `ids`, from fresh verdicts."""
    frame = _verdict_frame(engine, overrides)
    strict = optimistic = pd.Series(True, index=frame.index)
    out = [(len(frame), len(frame))]
    for cid in ids:
        leaves = [r.id for r in engine.protocol.criterion(cid).rules if r.id in engine.bit]
        fails = (frame[leaves] == "fail").any(axis=1)
        unknown = (frame[leaves] == "unknown").any(axis=1) & ~fails
        strict = strict & ~fails & ~unknown
        optimistic = optimistic & ~fails
        out.append((int(strict.sum()), int(optimistic.sum())))
    return out


@pytest.fixture(scope="module")
def wide(random_engine):
    """The protocol with 64 analyst criteria beside it (59 + 64 = 123 leaves, two mask words)."""
    protocol, changed = custom.extend(PROTOCOL, random_engine.cohort, cohorts.analyst_rules(64))
    return protocol, changed


def test_64_analyst_criteria_beside_the_protocol(random_engine, wide):
    protocol, changed = wide
    base = cohorts.as_counter(random_engine.histogram())
    ext = random_engine.with_protocol(protocol, changed, untrusted=changed)
    fresh = Engine(random_engine.cohort, protocol, 1, untrusted=changed)
    assert len(fresh.rules) == len(random_engine.rules) + 64
    assert fresh.width == ext.width == (len(fresh.rules) + 63) // 64 >= 2
    slow = _verdict_counter(fresh)
    assert max(f | u for f, u in slow).bit_length() > 64  # bits of the second word are used
    # folded into the reused pass, one full pass, and fresh per-patient verdicts agree
    assert cohorts.as_counter(ext.histogram()) == cohorts.as_counter(fresh.histogram()) == slow
    assert cohorts.as_counter(random_engine.histogram()) == base  # the base engine is untouched
    for overrides in ({"INCL07.PLT": {"min": 75}}, {"CUST64": {"limit": 1}},
                      {"CUST01": {"limit": 60}, "EXCL11.QTCF": {"max_male": 470}}):
        want = _verdict_counter(fresh, overrides)
        assert cohorts.as_counter(ext.histogram(overrides)) == want
        assert cohorts.as_counter(fresh.histogram(overrides)) == want
    by_site = analysis.by_site(ext)
    assert by_site["screened"].sum() == ext.cohort.n
    assert by_site["strict"].sum() == analysis.run(ext).totals["strict"]


def test_wide_funnel_equals_fresh_verdicts_and_mask_sql(random_engine, wide):
    protocol, changed = wide
    ext = random_engine.with_protocol(protocol, changed, untrusted=changed)
    rng = random.Random(5)
    ids = [c.id for c in protocol.criteria]
    rng.shuffle(ids)
    ids = ids[:70]  # more criteria than one word holds, custom and protocol mixed
    disabled = frozenset(c.id for c in protocol.criteria) - set(ids)
    overrides = {"CUST64": {"limit": 1}}
    scenario = Scenario("wide", overrides=overrides, disabled=disabled)
    result = analysis.run(ext, scenario, order=ids)
    assert result.histogram.width == 2 and list(result.plan.ids) == ids
    got = list(zip(result.funnel["strict"], result.funnel["optimistic"], strict=True))
    assert got == _verdict_funnel(ext, ids, overrides)
    assert got == [tuple(r) for r in _direct_counts(ext, ids, overrides)]  # screen log over mask words
    log = ext.con.execute(analysis.screen_log_sql(ext, scenario)).df().set_index("patient_id")
    fresh = _verdict_frame(ext, overrides)
    for rid in ("CUST64", "CUST33", "INCL07.PLT"):
        assert (log[rid] == fresh[rid]).all()


def test_evaluation_streams_record_batches(random_engine, wide, monkeypatch):
    """Packing per record batch (here 1,000 patients) gives the masks of one big batch."""
    protocol, changed = wide
    whole = Engine(random_engine.cohort, protocol, 1, untrusted=changed)
    whole.evaluate()
    monkeypatch.setattr(engine_module, "BATCH_ROWS", 1000)
    batched = Engine(random_engine.cohort, protocol, 1, untrusted=changed)
    batched.evaluate()
    assert np.array_equal(whole._f, batched._f) and np.array_equal(whole._u, batched._u)
    assert whole._f.shape == (3, random_engine.cohort.n) and whole._f[1].any() and whole._f[2].any()


def test_reorder_and_toggle_never_rescan(random_engine, monkeypatch):
    random_engine.histogram()  # warm

    class NoScan:
        def execute(self, *a, **k):
            raise AssertionError("the cohort was re-scanned")

    monkeypatch.setattr(random_engine, "con", NoScan())
    ids = [c.id for c in PROTOCOL.criteria]
    a = analysis.run(random_engine, order=list(reversed(ids)))
    b = analysis.run(random_engine, Scenario("t", disabled=frozenset({"INCL07", "EXCL09"})))
    assert a.totals["strict"] <= b.totals["strict"]


def test_final_count_independent_of_order(random_engine):
    ids = [c.id for c in PROTOCOL.criteria]
    rng = random.Random(3)
    finals = set()
    for _ in range(5):
        rng.shuffle(ids)
        r = analysis.run(random_engine, order=list(ids))
        finals.add((int(r.funnel["strict"].iloc[-1]), int(r.funnel["optimistic"].iloc[-1])))
    assert len(finals) == 1


def test_site_histogram_sums_to_total(random_engine):
    sites = analysis.by_site(random_engine)
    assert sites["screened"].sum() == random_engine.cohort.n
    total = analysis.run(random_engine).totals
    assert sites["strict"].sum() == total["strict"]
    assert sites["optimistic"].sum() == total["optimistic"]


def test_unknown_stage_is_refused(random_engine):
    with pytest.raises(ValueError, match="stage 3"):
        Engine(random_engine.cohort, PROTOCOL, 3)


def test_override_outside_range_is_refused(random_engine):
    with pytest.raises(ValueError, match="outside the allowed range"):
        random_engine.histogram({"INCL07.PLT": {"min": 5000}})
    with pytest.raises(ValueError, match="no parameter"):
        random_engine.histogram({"INCL07.PLT": {"nope": 1}})


def _same_histogram(a, b) -> None:
    for field in ("fail", "unknown", "count", "site"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=field)
    assert a.sites == b.sites


@pytest.mark.parametrize("stage", [1, 2])
def test_a_taken_pass_screens_like_an_evaluated_one(stage):
    """The app gives each session the built-in cohort's pass (Engine.take_pass) instead of
    evaluating it again: on another connection holding the same rows, every histogram
    (protocol, a changed threshold, by site) must be the one a fresh evaluation gives."""
    from kn026.ingest import synth

    table = synth.generate(2_000, 5, 12)
    source = load_cohort(table, connect())
    done = Engine(source, PROTOCOL, stage).evaluated_pass()
    for arr in (done.fail, done.unknown, done.gid, done.base.count):
        with pytest.raises(ValueError):
            arr[..., 0] = 0  # shared between sessions: read-only
    taker = Engine(load_cohort(table, connect()), PROTOCOL, stage)
    taker.take_pass(done)
    fresh = Engine(load_cohort(table, connect()), PROTOCOL, stage)

    def moves(overrides) -> bool:  # a threshold change that moves patients between groups
        h, base = fresh.histogram(overrides), fresh.histogram()
        return len(h.count) != len(base.count) or not np.array_equal(h.count, base.count)

    changed = next(o for r in fresh.rules if r.id not in fresh.not_assessable
                   for name, p in r.params.items() if p.low is not None and p.low != p.default
                   if moves(o := {r.id: {name: p.low}}))
    for overrides, by_site in (({}, False), (changed, False), ({}, True), (changed, True)):
        _same_histogram(taker.histogram(overrides, by_site), fresh.histogram(overrides, by_site))
    other = 2 if stage == 1 else 1
    with pytest.raises(ValueError, match="another cohort, protocol or stage"):
        Engine(load_cohort(table, connect()), PROTOCOL, other).take_pass(done)
