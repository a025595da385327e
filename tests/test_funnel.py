"""Tests for kn026.core.funnel: hand-computed examples, then properties against a brute force.

The brute force expands a histogram into one record per patient and evaluates everything
with plain Python (sets, loops, Fractions), so it shares no code with the module.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kn026.base import masks as mw
from kn026.core import funnel as fn
from kn026.core.funnel import Histogram

A, B, C = 0b001, 0b010, 0b100
NAMES = ["A", "B", "C"]

# The worked example. (fail, unknown) -> patients, with criteria A, B, C on bits 0, 1, 2.
#   row 1: passes all                 10
#   row 2: fails A                     5
#   row 3: unknown on B                3
#   row 4: fails A and B               2
#   row 5: fails C, unknown on A       4
#   row 6: unknown on A and C          1
#   row 7: fails B, unknown on C       2      -> 27 screened
EXAMPLE = {
    (0, 0): 10,
    (A, 0): 5,
    (0, B): 3,
    (A | B, 0): 2,
    (C, A): 4,
    (0, A | C): 1,
    (B, C): 2,
}


@pytest.fixture
def example() -> Histogram:
    return Histogram.from_counts(EXAMPLE)


def as_records(df: pd.DataFrame) -> list[dict]:
    return df.to_dict("records")


# --------------------------------------------------------------------------- hand-made


def test_eligible_counts_example(example):
    assert fn.eligible_counts(example) == {
        "screened": 27,
        "strict": 10,  # row 1
        "optimistic": 14,  # rows 1, 3, 6
        "unknown": 4,
        "excluded_strict": 17,
        "excluded_optimistic": 13,
    }


def test_funnel_example_order_abc(example):
    df = fn.funnel(example, NAMES)
    assert list(df.columns) == [
        "step", "criterion", "strict", "optimistic", "unknown",
        "lost_strict", "lost_optimistic", "pct_strict", "pct_optimistic",
    ]  # fmt: skip
    assert df["criterion"].tolist() == ["Screened", "A", "B", "C"]
    assert df["step"].tolist() == [0, 1, 2, 3]
    # A: strict keeps rows 1, 3, 7 (10+3+2); optimistic drops rows 2, 4 (fail A)
    # B: strict keeps row 1; optimistic also drops row 7 (fail B)
    # C: strict unchanged; optimistic drops row 5 (fail C)
    assert df["strict"].tolist() == [27, 15, 10, 10]
    assert df["optimistic"].tolist() == [27, 20, 18, 14]
    assert df["unknown"].tolist() == [0, 5, 8, 4]
    assert df["lost_strict"].tolist() == [0, 12, 5, 0]
    assert df["lost_optimistic"].tolist() == [0, 7, 2, 4]
    assert df["pct_strict"].tolist() == pytest.approx([100, 1500 / 27, 1000 / 27, 1000 / 27])
    assert df["pct_optimistic"].tolist() == pytest.approx([100, 2000 / 27, 1800 / 27, 1400 / 27])
    for col in (
        "step",
        "strict",
        "optimistic",
        "unknown",
        "lost_strict",
        "lost_optimistic",
    ):
        assert df[col].dtype == np.int64


def test_funnel_example_reordered_via_collapse(example):
    # order C, A, B: C drops rows 5, 6, 7 strictly (7), only row 5 optimistically (4);
    # A then drops rows 2, 4 (both bounds); B drops row 3 strictly and row 7 optimistically.
    collapsed = fn.collapse(example, [C, A, B])
    df = fn.funnel(collapsed, ["C", "A", "B"])
    assert df["strict"].tolist() == [27, 20, 13, 10]
    assert df["optimistic"].tolist() == [27, 23, 16, 14]
    assert df["lost_strict"].tolist() == [0, 7, 7, 3]
    assert df["lost_optimistic"].tolist() == [0, 4, 7, 2]
    # the fast path gives the same table without collapsing
    pd.testing.assert_frame_equal(fn.funnel(example, ["C", "A", "B"], units=[C, A, B]), df)


def test_funnel_example_toggle_off(example):
    # B disabled: order A, C
    df = fn.funnel(fn.collapse(example, [A, C]), ["A", "C"])
    # A: as before 15 / 20; C: strict drops row 7 (unknown C) -> 13; optimistic drops row 5 -> 16
    assert df["strict"].tolist() == [27, 15, 13]
    assert df["optimistic"].tolist() == [27, 20, 16]


def test_criterion_stats_example(example):
    df = fn.criterion_stats(example, NAMES)
    got = {r["criterion"]: r for r in as_records(df)}
    expected = {
        # failed: rows 2, 4; unknown: rows 5, 6; unique: row 2; unique_strict: row 2
        "A": {
            "passed": 15,
            "failed": 7,
            "unknown": 5,
            "marginal": 7,
            "unique": 5,
            "unique_strict": 5,
        },
        # failed: rows 4, 7; unknown: row 3; unique: row 7 (its unknown C does not matter);
        # unique_strict: row 3 (only unknown on B)
        "B": {
            "passed": 20,
            "failed": 4,
            "unknown": 3,
            "marginal": 4,
            "unique": 2,
            "unique_strict": 3,
        },
        # failed: row 5; unknown: rows 6, 7; unique: row 5 (unknown A does not matter);
        # unique_strict: nobody has fail|unknown == C
        "C": {
            "passed": 20,
            "failed": 4,
            "unknown": 3,
            "marginal": 4,
            "unique": 4,
            "unique_strict": 0,
        },
    }
    for name, exp in expected.items():
        for key, value in exp.items():
            assert got[name][key] == value, (name, key)
    # optimistic: row 2 -> A 5; row 4 -> A 1, B 1; row 5 -> C 4; row 7 -> B 2
    assert df["shapley_optimistic"].tolist() == pytest.approx([6.0, 3.0, 4.0])
    # strict: row 2 A 5; row 3 B 3; row 4 A 1 B 1; row 5 A 2 C 2; row 6 A .5 C .5; row 7 B 1 C 1
    assert df["shapley_strict"].tolist() == pytest.approx([8.5, 5.0, 3.5])
    assert "lost_strict" not in df.columns


def test_shapley_example(example):
    opt = fn.shapley(example, "optimistic")
    assert opt.shape == (64,)
    assert opt[:3].tolist() == pytest.approx([6.0, 3.0, 4.0])
    assert not opt[3:].any()
    assert fn.shapley(example, "strict", 3).tolist() == pytest.approx([8.5, 5.0, 3.5])
    with pytest.raises(ValueError):
        fn.shapley(example, "pessimistic")


def test_combinations_example(example):
    df = fn.combinations(example, NAMES)
    assert list(df.columns) == ["criteria", "label", "size", "count", "pct"]
    # fail masks: A 5, C 4, A+B 2, B 2 (ties sorted by label)
    assert df[["label", "size", "count"]].values.tolist() == [
        ["A", 1, 5], ["C", 1, 4], ["A + B", 2, 2], ["B", 1, 2],
    ]  # fmt: skip
    assert df["criteria"].tolist() == [("A",), ("C",), ("A", "B"), ("B",)]
    assert df["pct"].tolist() == pytest.approx([500 / 27, 400 / 27, 200 / 27, 200 / 27])

    strict = fn.combinations(example, NAMES, bound="strict")
    # fail|unknown masks: A 5, A+C 4+1, B 3, A+B 2, B+C 2
    assert strict[["label", "count"]].values.tolist() == [
        ["A", 5], ["A + C", 5], ["B", 3], ["A + B", 2], ["B + C", 2],
    ]  # fmt: skip
    assert fn.combinations(example, NAMES, top=2, bound="strict")["label"].tolist() == [
        "A",
        "A + C",
    ]
    assert fn.combinations(example, NAMES, top=0).empty


def test_by_site_example():
    sites = ("north", "south", "east")
    h = Histogram.from_counts(
        {
            (0, 0, 0): 4,  # north: 4 eligible
            (A, 0, 0): 1,  # north: 1 excluded
            (0, B, 1): 2,  # south: 2 unknown
            (0, 0, 1): 3,  # south: 3 eligible
            (C, A, 1): 5,  # south: 5 excluded
        },
        sites=sites,
    )
    df = fn.by_site(h)
    assert as_records(df) == [
        {"site": "north", "screened": 5, "strict": 4, "optimistic": 4, "unknown": 0},
        {"site": "south", "screened": 10, "strict": 3, "optimistic": 5, "unknown": 2},
        {"site": "east", "screened": 0, "strict": 0, "optimistic": 0, "unknown": 0},
    ]
    with pytest.raises(ValueError):
        fn.by_site(Histogram.from_counts(EXAMPLE))
    north = fn.for_site(h, "north")
    assert fn.eligible_counts(north)["screened"] == 5


def test_collapse_leaves_into_criteria():
    # leaves 0..4; X = leaves {0, 1}, Y = leaf {2}, Z = leaves {3, 4}; leaf 5 belongs to no unit
    X, Y, Z = 0b00011, 0b00100, 0b11000
    h = Histogram.from_counts(
        {
            # fails leaf 1, unknown leaves 0 and 3: X fails (fail wins), Y passes, Z unknown
            (0b00010, 0b01001): 4,
            # unknown leaf 0 only: X unknown
            (0, 0b00001): 2,
            # unknown leaf 1 only: also X unknown -> merges with the row above
            (0, 0b00010): 3,
            # fails leaf 4 and the orphan leaf 5, unknown leaf 2: Z fails, Y unknown
            (0b110000, 0b00100): 1,
            # fails only the orphan leaf: passes every unit
            (0b100000, 0): 6,
        }
    )
    got = fn.collapse(h, [X, Y, Z])
    as_dict = {(f, u): c for f, u, c in got.records()}
    assert as_dict == {
        (0b001, 0b100): 4,
        (0, 0b001): 5,
        (0b100, 0b010): 1,
        (0, 0): 6,
    }
    # order Z, X (Y disabled)
    got = fn.collapse(h, [Z, X])
    as_dict = {(f, u): c for f, u, c in got.records()}
    assert as_dict == {(0b10, 0b01): 4, (0, 0b10): 5, (0b01, 0): 1, (0, 0): 6}
    # unmerged keeps one row per input row
    assert len(fn.collapse(h, [Z, X], merge=False)) == 5


def test_collapse_high_bits():
    # leaves at bits 60..63 and 0 (chunk boundaries of the lookup tables)
    hi = 1 << 63
    h = Histogram.from_counts({(hi, 1 << 60): 2, (1 << 48, 1): 3, (0, hi | 1): 1})
    got = fn.collapse(h, [hi | 1, 1 << 60, 1 << 48])
    as_dict = {(f, u): c for f, u, c in got.records()}
    assert as_dict == {(0b001, 0b010): 2, (0b100, 0b001): 3, (0, 0b001): 1}


def test_merge_example():
    h = Histogram(
        fail=np.array([A, A, 0, A, 0], np.uint64),
        unknown=np.array([0, 0, B, 0, B], np.uint64),
        count=np.array([1, 2, 3, 0, 4]),
    )
    m = fn.merge(h)
    assert sorted(m.records()) == [
        (0, B, 7),
        (A, 0, 3),
    ]
    assert m.total == h.total == 10


def test_compare_example(example):
    # scenario: B dropped, new criterion D (bit 2) failing row 1's 10 patients, C now bit 1
    other = Histogram.from_counts({(0b100, 0): 10, (A, 0): 7, (0b010, A): 4, (0, 0b010): 6})
    df = fn.compare(example, other, NAMES, ["A", "C", "D"])
    assert df["criterion"].tolist() == ["A", "B", "C", "D"]
    assert df["in_base"].tolist() == [True, True, True, False]
    assert df["in_other"].tolist() == [True, False, True, True]
    assert df["failed_base"].tolist() == [7, 4, 4, 0]
    assert df["failed_other"].tolist() == [7, 0, 4, 10]
    assert df["failed_delta"].tolist() == [0, -4, 0, 10]
    assert df["unknown_other"].tolist() == [4, 0, 6, 0]
    assert df["unique_delta"].tolist() == [7 - 5, 0 - 2, 4 - 4, 10 - 0]
    assert df["marginal_other"].tolist() == df["failed_other"].tolist()

    totals = fn.compare_totals(example, other)
    assert as_records(totals) == [
        {"measure": "screened", "base": 27, "other": 27, "delta": 0},
        {"measure": "strict", "base": 10, "other": 0, "delta": -10},
        {"measure": "optimistic", "base": 14, "other": 6, "delta": -8},
        {"measure": "unknown", "base": 4, "other": 6, "delta": 2},
    ]


def test_empty_histogram():
    h = Histogram(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64))
    assert fn.eligible_counts(h)["screened"] == 0
    df = fn.funnel(fn.collapse(h, [A, B]), ["A", "B"])
    assert df["strict"].tolist() == [0, 0, 0]
    assert df["pct_strict"].tolist() == [0.0, 0.0, 0.0]
    assert fn.criterion_stats(h, ["A"])["passed"].tolist() == [0]
    assert fn.combinations(h, ["A"]).empty
    assert len(fn.merge(h)) == 0


def test_validation():
    with pytest.raises(ValueError, match="both failed and unknown"):
        Histogram.from_counts({(A, A): 1})
    with pytest.raises(ValueError, match=">= 0"):
        Histogram.from_counts({(A, 0): -1})
    with pytest.raises(ValueError, match="site codes"):
        Histogram.from_counts({(A, 0, 2): 1}, sites=("x", "y"))
    h = Histogram.from_counts({(A | C, 0): 1})
    with pytest.raises(ValueError, match="beyond"):
        fn.funnel(h, ["A", "B"])
    with pytest.raises(ValueError, match="unique"):
        fn.funnel(h, ["A", "A", "C"])
    with pytest.raises(ValueError, match="negative"):
        fn.collapse(h, [1, -2])
    with pytest.raises(ValueError):
        fn.funnel(h, ["A"], units=[A, C])


def test_full_64_bits():
    names = [f"C{i}" for i in range(64)]
    top = 1 << 63
    h = Histogram.from_counts({(top, 0): 2, (0, top | 1): 3, (0, 0): 5})
    df = fn.funnel(h, names)
    assert df["strict"].iloc[-1] == 5
    assert df["optimistic"].iloc[-1] == 8
    assert df["lost_strict"].iloc[1] == 3  # unknown on bit 0
    assert df["lost_optimistic"].iloc[64] == 2  # fails only bit 63
    assert fn.shapley(h, "strict")[63] == pytest.approx(2 + 1.5)
    assert len(fn.merge(h)) == 3


# --------------------------------------------------------------------------- brute force


def expand(h: Histogram) -> list[tuple[int, int, int]]:
    """One (fail, unknown, site) record per patient."""
    patients = []
    for f, u, c, *s in h.records():
        patients.extend([(f, u, s[0] if s else 0)] * c)
    return patients


def verdicts(patient, units) -> list[str]:
    """'F', 'U' or 'P' per unit, per the dictionary: any failing leaf fails, else any unknown."""
    f, u, _ = patient
    return ["F" if f & m else "U" if u & m else "P" for m in units]


def naive_funnel(patients, units):
    strict, optimistic = [len(patients)], [len(patients)]
    vs = [verdicts(p, units) for p in patients]
    for i in range(len(units)):
        strict.append(sum(all(x == "P" for x in v[: i + 1]) for v in vs))
        optimistic.append(sum(all(x != "F" for x in v[: i + 1]) for v in vs))
    return strict, optimistic


def excluded_by(patient, units, subset, bound) -> bool:
    bad = {"F"} if bound == "optimistic" else {"F", "U"}
    v = verdicts(patient, units)
    return any(v[i] in bad for i in subset)


def shapley_by_definition(patients, units, bound) -> list[Fraction]:
    """Average marginal contribution over all orders of the criteria (small k only)."""
    k = len(units)
    shares = [Fraction(0)] * k
    perms = list(itertools.permutations(range(k)))
    for perm in perms:
        chosen = []
        before = 0
        for i in perm:
            chosen.append(i)
            after = sum(excluded_by(p, units, chosen, bound) for p in patients)
            shares[i] += after - before
            before = after
    return [s / len(perms) for s in shares]


SITES = ("s0", "s1", "s2")


def spread(mask: int, positions) -> int:
    """Move bit i of a compact mask to bit positions[i]."""
    return sum(1 << p for i, p in enumerate(positions) if mask >> i & 1)


@st.composite
def leaf_positions(draw, n_leaves, wide):
    """Bit positions of the leaves: 0..n-1, or (wide) spread over 0..199 with one at 64 or above,
    so the masks need two to four words and cross word and 16-bit chunk boundaries."""
    if not wide:
        return list(range(n_leaves))
    top = draw(st.integers(64, 199))
    rest = draw(st.lists(st.integers(0, 199).filter(lambda p: p != top), min_size=n_leaves - 1,
                         max_size=n_leaves - 1, unique=True))
    return sorted([top, *rest])


@st.composite
def placed_histograms(draw, max_leaves=8, max_rows=12, max_count=4, wide=False):
    """(histogram, number of leaves, bit position of each leaf)."""
    n_leaves = draw(st.integers(1, max_leaves))
    positions = draw(leaf_positions(n_leaves, wide))
    top = (1 << n_leaves) - 1
    rows = draw(st.integers(0, max_rows))
    with_site = draw(st.booleans())
    fail, unknown, count, site = [], [], [], []
    for _ in range(rows):
        f = draw(st.integers(0, top))
        u = draw(st.integers(0, top)) & ~f
        fail.append(spread(f, positions))
        unknown.append(spread(u, positions))
        count.append(draw(st.integers(0, max_count)))
        site.append(draw(st.integers(0, len(SITES) - 1)))
    # rows may repeat (unmerged), counts may be zero; Python ints of any size
    width = mw.width_for(positions[-1] + 1)  # top words may be zero in every row
    h = Histogram(
        mw.words_of(fail, width) if wide else np.array(fail, np.uint64),
        mw.words_of(unknown, width) if wide else np.array(unknown, np.uint64),
        np.array(count, np.int64),
        np.array(site, np.int32) if with_site else None,
        SITES if with_site else (),
    )
    assert h.width >= 2 or not wide
    return h, n_leaves, positions


@st.composite
def histograms(draw, wide=False):
    h, n_leaves, _ = draw(placed_histograms(wide=wide))
    return h, n_leaves


@st.composite
def hist_and_units(draw, max_units=5, wide=False, min_units=0):
    h, n_leaves, positions = draw(placed_histograms(wide=wide))
    top = (1 << n_leaves) - 1
    units = draw(st.lists(st.integers(0, top), min_size=min_units, max_size=max_units))
    return h, [spread(u, positions) for u in units]


@settings(deadline=None, max_examples=150)
@given(hist_and_units(), st.booleans())
def test_collapse_and_funnel_match_brute_force(case, merged):
    check_collapse_and_funnel_match_brute_force(case, merged)


@settings(deadline=None, max_examples=100)
@given(hist_and_units(wide=True), st.booleans())
def test_collapse_and_funnel_match_brute_force_multiword(case, merged):
    """The same with leaves spread over 0..199: masks of two to four words."""
    check_collapse_and_funnel_match_brute_force(case, merged)


def check_collapse_and_funnel_match_brute_force(case, merged):
    h, units = case
    names = [f"K{i}" for i in range(len(units))]
    patients = expand(h)
    collapsed = fn.collapse(h, units, merge=merged)

    # the collapsed histogram, expanded, has each patient's verdicts as bits
    expected = Counter()
    for p in patients:
        v = verdicts(p, units)
        f = sum(1 << i for i, x in enumerate(v) if x == "F")
        u = sum(1 << i for i, x in enumerate(v) if x == "U")
        expected[(f, u, p[2] if h.site is not None else 0)] += 1
    got = Counter(expand(collapsed))
    if h.site is None:
        got = Counter({(f, u, 0): n for (f, u, _), n in got.items()})
    assert got == expected
    if merged:
        keys = [(r[0], r[1], *r[3:]) for r in collapsed.records()]
        assert len(keys) == len(set(keys))
        assert (collapsed.count > 0).all()

    strict, optimistic = naive_funnel(patients, units)
    df = fn.funnel(collapsed, names)
    assert df["strict"].tolist() == strict
    assert df["optimistic"].tolist() == optimistic
    assert df["unknown"].tolist() == [o - s for o, s in zip(optimistic, strict, strict=True)]
    assert df["lost_strict"].tolist() == [0] + [a - b for a, b in itertools.pairwise(strict)]
    assert df["lost_optimistic"].tolist() == [0] + [a - b for a, b in itertools.pairwise(optimistic)]
    pd.testing.assert_frame_equal(fn.funnel(h, names, units=units), df)

    # final row == eligible counts of the collapsed histogram
    e = fn.eligible_counts(collapsed)
    assert (e["strict"], e["optimistic"]) == (strict[-1], optimistic[-1])
    assert e["screened"] == len(patients)

    # per-criterion statistics
    stats = fn.criterion_stats(collapsed, names)
    for i, row in enumerate(as_records(stats)):
        vs = [verdicts(p, units) for p in patients]
        failed = sum(v[i] == "F" for v in vs)
        unknown = sum(v[i] == "U" for v in vs)
        unique = sum(v[i] == "F" and v.count("F") == 1 for v in vs)
        unique_strict = sum(v[i] != "P" and sum(x != "P" for x in v) == 1 for v in vs)
        assert (row["failed"], row["unknown"], row["passed"]) == (
            failed,
            unknown,
            len(patients) - failed - unknown,
        )
        assert (row["marginal"], row["unique"], row["unique_strict"]) == (
            failed,
            unique,
            unique_strict,
        )

    # combinations, all of them
    for bound in fn.BOUNDS:
        bad = {"F"} if bound == "optimistic" else {"F", "U"}
        combos = Counter()
        for p in patients:
            v = verdicts(p, units)
            key = tuple(names[i] for i, x in enumerate(v) if x in bad)
            if key:
                combos[key] += 1
        df = fn.combinations(collapsed, names, top=None, bound=bound)
        assert dict(zip(df["criteria"], df["count"], strict=True)) == dict(combos)
        assert df["label"].tolist() == [" + ".join(c) for c in df["criteria"]]
        assert df["size"].tolist() == [len(c) for c in df["criteria"]]
        ordered = sorted(zip((-df["count"]).tolist(), df["label"].tolist(), strict=True))
        assert ordered == list(zip((-df["count"]).tolist(), df["label"].tolist(), strict=True))


@settings(deadline=None, max_examples=60)
@given(hist_and_units(max_units=4))
def test_shapley_is_the_shapley_value(case):
    h, units = case
    collapsed = fn.collapse(h, units)
    patients = expand(h)
    for bound in fn.BOUNDS:
        exact = shapley_by_definition(patients, units, bound)
        got = fn.shapley(collapsed, bound, len(units))
        assert got.tolist() == pytest.approx([float(x) for x in exact], abs=1e-9)


@settings(deadline=None, max_examples=150)
@given(hist_and_units(), st.randoms(use_true_random=False))
def test_funnel_properties(case, rnd):
    check_funnel_properties(case, rnd)


@settings(deadline=None, max_examples=100)
@given(hist_and_units(wide=True), st.randoms(use_true_random=False))
def test_funnel_properties_multiword(case, rnd):
    """The same with leaves spread over 0..199: masks of two to four words."""
    check_funnel_properties(case, rnd)


def check_funnel_properties(case, rnd):
    h, units = case
    names = [f"K{i}" for i in range(len(units))]
    collapsed = fn.collapse(h, units, merge=False)
    df = fn.funnel(collapsed, names)
    strict, optimistic = df["strict"].to_numpy(), df["optimistic"].to_numpy()
    assert (np.diff(strict) <= 0).all() and (np.diff(optimistic) <= 0).all()
    assert (strict <= optimistic).all() and (strict >= 0).all()
    assert strict[0] == optimistic[0] == h.total

    # final counts do not depend on the order
    order = list(range(len(units)))
    rnd.shuffle(order)
    shuffled = fn.funnel(fn.collapse(h, [units[i] for i in order]), [names[i] for i in order])
    assert shuffled["strict"].iloc[-1] == strict[-1]
    assert shuffled["optimistic"].iloc[-1] == optimistic[-1]

    # order-independent statistics are only permuted
    s1 = fn.criterion_stats(collapsed, names).set_index("criterion")
    s2 = fn.criterion_stats(fn.collapse(h, [units[i] for i in order]), [names[i] for i in order])
    pd.testing.assert_frame_equal(s1, s2.set_index("criterion").loc[names])


@settings(deadline=None, max_examples=150)
@given(hist_and_units())
def test_stats_properties(case):
    check_stats_properties(case)


@settings(deadline=None, max_examples=100)
@given(hist_and_units(wide=True))
def test_stats_properties_multiword(case):
    """The same with leaves spread over 0..199: masks of two to four words."""
    check_stats_properties(case)


def check_stats_properties(case):
    h, units = case
    names = [f"K{i}" for i in range(len(units))]
    collapsed = fn.collapse(h, units)
    e = fn.eligible_counts(collapsed)
    stats = fn.criterion_stats(collapsed, names)
    assert (stats["marginal"] >= stats["unique"]).all()
    assert (stats["unique"] >= 0).all()
    assert (stats["unique_strict"] <= stats["failed"] + stats["unknown"]).all()
    assert (stats[["passed", "failed", "unknown"]].sum(axis=1) == e["screened"]).all()
    for bound, excluded in (
        ("strict", e["excluded_strict"]),
        ("optimistic", e["excluded_optimistic"]),
    ):
        shares = stats[f"shapley_{bound}"].to_numpy()
        assert (shares >= 0).all()
        assert math.isclose(shares.sum(), excluded, abs_tol=1e-9)
        assert math.isclose(fn.shapley(collapsed, bound).sum(), excluded, abs_tol=1e-9)
        combos = fn.combinations(collapsed, names, top=1000, bound=bound)
        assert combos["count"].sum() == excluded
        top3 = fn.combinations(collapsed, names, top=3, bound=bound)
        pd.testing.assert_frame_equal(top3, combos.head(3))


@settings(deadline=None, max_examples=150)
@given(histograms())
def test_merge_properties(case):
    check_merge_properties(case)


@settings(deadline=None, max_examples=100)
@given(histograms(wide=True))
def test_merge_properties_multiword(case):
    """The same with leaves spread over 0..199: masks of two to four words."""
    check_merge_properties(case)


def check_merge_properties(case):
    h, _ = case
    m = fn.merge(h)
    assert m.total == h.total
    assert Counter(expand(m)) == Counter(expand(h))
    assert (m.count > 0).all()
    assert m.sites == h.sites and (m.site is None) == (h.site is None)
    mm = fn.merge(m)
    assert Counter(expand(mm)) == Counter(expand(m)) and len(mm) == len(m)
    # every analysis is the same on merged and unmerged histograms
    bits = h.used_bits.bit_length()
    names = [f"L{i}" for i in range(bits)]
    pd.testing.assert_frame_equal(fn.funnel(m, names), fn.funnel(h, names))
    assert fn.eligible_counts(m) == fn.eligible_counts(h)
    if h.site is not None:
        sites = fn.by_site(h)
        assert sites["screened"].sum() == h.total
        e = fn.eligible_counts(h)
        for col in ("strict", "optimistic", "unknown"):
            assert sites[col].sum() == e[col]
        pd.testing.assert_frame_equal(fn.by_site(m), sites)
        for code, name in enumerate(SITES):
            assert fn.for_site(h, name).total == sites["screened"].iloc[code]


@st.composite
def wide_histograms(draw):
    """Masks over up to 64 leaves (all merge packings, all lookup-table chunks)."""
    n_bits = draw(st.sampled_from([8, 20, 31, 33, 36, 40, 41, 50, 64]))
    top = (1 << n_bits) - 1
    rows = draw(st.integers(1, 30))
    fail = [draw(st.integers(0, top)) for _ in range(rows)]
    unknown = [draw(st.integers(0, top)) & ~f for f in fail]
    # duplicate some rows so that merging has work to do
    dup = draw(st.lists(st.integers(0, rows - 1), max_size=10))
    fail += [fail[i] for i in dup]
    unknown += [unknown[i] for i in dup]
    count = [draw(st.integers(0, 1 << 40)) for _ in fail]
    with_site = draw(st.booleans())
    site = [draw(st.integers(0, 2)) for _ in fail]
    h = Histogram(
        np.array(fail, np.uint64), np.array(unknown, np.uint64), np.array(count, np.int64),
        np.array(site, np.int32) if with_site else None, SITES if with_site else (),
    )  # fmt: skip
    return h, n_bits


@settings(deadline=None, max_examples=150)
@given(wide_histograms(), st.data())
def test_wide_masks(case, data):
    h, n_bits = case
    m = fn.merge(h)
    assert m.total == h.total
    key = (lambda f, u, s: (f, u, s)) if h.site is not None else (lambda f, u, s: (f, u))
    expected = Counter()
    for f, u, c, *s in h.records():
        if c:
            expected[key(f, u, s[0] if s else 0)] += c
    got = {key(f, u, s[0] if s else 0): c for f, u, c, *s in m.records()}
    assert got == dict(expected)

    # random units over the wide leaves, collapse vs a direct per-row evaluation
    units = data.draw(st.lists(st.integers(0, (1 << n_bits) - 1), max_size=8))
    c = fn.collapse(h, units, merge=False)
    for (f, u, *_), (got_f, got_u, *_) in zip(h.records(), c.records(), strict=True):
        cf = sum(1 << j for j, m_ in enumerate(units) if f & m_)
        cu = sum(1 << j for j, m_ in enumerate(units) if not f & m_ and u & m_)
        assert (got_f, got_u) == (cf, cu)
    names = [f"K{j}" for j in range(len(units))]
    pd.testing.assert_frame_equal(fn.funnel(h, names, units=units), fn.funnel(c, names))


# --------------------------------------------------------------------------- more than 64 bits


@settings(deadline=None, max_examples=40)
@given(hist_and_units(wide=True, min_units=65, max_units=80), st.booleans())
def test_more_than_64_criteria_match_brute_force(case, merged):
    """More units than one word holds: the collapsed histogram has two words."""
    h, units = case
    assert fn.collapse(h, units, merge=merged).width == 2
    check_collapse_and_funnel_match_brute_force(case, merged)


def test_from_counts_and_records_with_wide_masks():
    big = 1 << 130
    h = Histogram.from_counts({(big | 1, 1 << 64): 3, (0, big): 2, (0, 0): 4})
    assert h.width == 3 and h.fail.shape == (3, 3) and h.fail.dtype == np.uint64
    assert sorted(h.records()) == sorted([(big | 1, 1 << 64, 3), (0, big, 2), (0, 0, 4)])
    assert h.used_bits == big | (1 << 64) | 1
    names = [f"C{i}" for i in range(131)]
    df = fn.funnel(h, names)
    assert df["lost_strict"].iloc[1] == 3  # fails bit 0
    assert df["lost_strict"].iloc[131] == 2  # unknown only on bit 130
    assert df["optimistic"].iloc[-1] == 6 and df["strict"].iloc[-1] == 4
    shares = fn.shapley(h, "strict")
    assert shares.shape == (192,) and shares[130] == pytest.approx(1 + 2) and shares[64] == pytest.approx(1)
    assert fn.unit_mask([0, 64, 130]) == big | (1 << 64) | 1
    narrow = Histogram(np.array([1], np.uint64), [big], np.array([1]))  # widths differ: padded
    assert narrow.width == 3 and narrow.records() == [(1, big, 1)]
    with pytest.raises(ValueError, match=">= 0"):
        Histogram([-1], [0], [1])
    with pytest.raises(ValueError, match="both failed and unknown"):
        Histogram.from_counts({(big, big): 1})


def test_collapse_across_words_example():
    # leaves 0, 63 (word 0) and 64, 127, 128 (words 1, 2); units X = {63, 64}, Y = {128}, Z = {0, 127}
    X, Y, Z = (1 << 63) | (1 << 64), 1 << 128, 1 | (1 << 127)
    h = Histogram.from_counts({
        (1 << 64, 1 << 128): 2,  # X fails, Y unknown
        (0, (1 << 63) | 1): 3,  # X unknown, Z unknown
        (1 << 127, 1 << 63): 1,  # Z fails, X unknown
    })
    got = fn.collapse(h, [X, Y, Z])
    assert got.width == 1
    assert Counter({(f, u): c for f, u, c in got.records()}) == Counter(
        {(0b001, 0b010): 2, (0, 0b101): 3, (0b100, 0b001): 1})
    pd.testing.assert_frame_equal(fn.funnel(h, ["X", "Y", "Z"], units=[X, Y, Z]), fn.funnel(got, ["X", "Y", "Z"]))


def counted(h: Histogram) -> Counter:
    """{(fail, unknown, site): patients} without expanding (counts here reach 2**40)."""
    out: Counter = Counter()
    for f, u, c, *s in h.records():
        out[(f, u, s[0] if s else 0)] += c
    return +out


@settings(deadline=None, max_examples=120)
@given(wide_histograms(), st.data(), st.integers(1, 2))
def test_multiword_equals_one_word(case, data, shift):
    """Differential: the word-by-word paths give the one-word results, whether the same masks
    sit in wider arrays (zero top words) or are moved up by 64 * shift bits."""
    h, n_bits = case
    assert h.width == 1
    units = data.draw(st.lists(st.integers(0, (1 << n_bits) - 1), max_size=8))
    names = [f"K{j}" for j in range(len(units))]
    up = 64 * shift
    padded = Histogram(mw.widen(h.fail, 1 + shift), mw.widen(h.unknown, 1 + shift), h.count, h.site, h.sites)
    moved = Histogram(mw.words_of([f << up for f in mw.ints_of(h.fail)], 1 + shift),
                      mw.words_of([u << up for u in mw.ints_of(h.unknown)], 1 + shift), h.count, h.site, h.sites)
    assert padded.width == moved.width == 1 + shift
    leaf_names = [f"L{j}" for j in range(n_bits)]
    pd.testing.assert_frame_equal(fn.funnel(padded, leaf_names), fn.funnel(h, leaf_names))
    assert fn.eligible_counts(padded) == fn.eligible_counts(moved) == fn.eligible_counts(h)
    assert counted(fn.merge(padded)) == counted(fn.merge(h))
    assert counted(fn.merge(moved)) == Counter({(f << up, u << up, s): c for (f, u, s), c in counted(h).items()})
    np.testing.assert_allclose(fn.shapley(moved, "strict")[up:up + 64], fn.shapley(h, "strict"))
    want = fn.collapse(h, units)
    for wide, wide_units in ((padded, units), (moved, [u << up for u in units])):
        pd.testing.assert_frame_equal(fn.funnel(wide, names, units=wide_units), fn.funnel(h, names, units=units))
        for merged in (True, False):
            got = fn.collapse(wide, wide_units, merge=merged)
            assert got.width == want.width
            assert counted(got) == counted(want)
            pd.testing.assert_frame_equal(fn.funnel(got, names), fn.funnel(want, names))
            pd.testing.assert_frame_equal(fn.criterion_stats(got, names), fn.criterion_stats(want, names))
            for bound in fn.BOUNDS:
                pd.testing.assert_frame_equal(fn.combinations(got, names, top=None, bound=bound),
                                              fn.combinations(want, names, top=None, bound=bound))
            if h.site is not None:
                pd.testing.assert_frame_equal(fn.by_site(got), fn.by_site(want))
