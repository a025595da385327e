"""Small-cell suppression: hand-made tables, then properties against an independent check.

The property tests rebuild the published equations from the tables' meaning (written
here again, not taken from the module) and decide with least squares, not with the
module's SVD null space, whether a hidden cell can be recovered exactly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kn026.report import suppression as sp


def recoverable(a: np.ndarray, hidden: np.ndarray) -> list[int]:
    """Hidden cells whose value follows from the visible ones (independent check).

    x_j is determined iff e_j lies in the row space of A restricted to the hidden
    columns: solve A_h^T y = e_j in the least-squares sense and look at the residual.
    """
    idx = np.flatnonzero(hidden)
    if not len(idx):
        return []
    h = a[:, idx]
    out = []
    for pos, j in enumerate(idx):
        e = np.zeros(len(idx))
        e[pos] = 1.0
        y, *_ = np.linalg.lstsq(h.T, e, rcond=None)
        if np.linalg.norm(h.T @ y - e) < 1e-6:
            out.append(int(j))
    return out


# --------------------------------------------------------------------------- core


def test_primary_hides_only_small_positive_counts():
    assert sp.primary(np.array([0, 1, 4, 5, 100]), 5).tolist() == [False, True, True, False, False]
    assert not sp.primary(np.array([0, 1, 2]), 1).any()


def test_a_row_with_one_small_cell_gets_a_complement():
    # a + b + c = total (public): hiding only a lets anyone compute it
    cells = sp.Cells(np.array([3, 40, 57, 100]), (((0, 1), (1, 1), (2, 1), (3, -1)),))
    hidden = sp.suppress(cells, 5, protect=np.array([False, False, False, True]))
    assert hidden.tolist() == [True, True, False, False]  # the smallest count >= 5 goes with it
    assert not sp.determined(cells.matrix(), hidden).any()


def test_two_small_cells_in_a_row_protect_each_other():
    cells = sp.Cells(np.array([3, 2, 95, 100]), (((0, 1), (1, 1), (2, 1), (3, -1)),))
    hidden = sp.suppress(cells, 5, protect=np.array([False, False, False, True]))
    assert hidden.tolist() == [True, True, False, False]


def test_a_cell_in_no_equation_needs_no_complement():
    cells = sp.Cells(np.array([2, 50]), ())
    assert sp.suppress(cells, 5).tolist() == [True, False]


def test_forced_and_protected_cells():
    cells = sp.Cells(np.array([30, 40, 70]), (((0, 1), (1, 1), (2, -1)),))
    hidden = sp.suppress(cells, 5, protect=np.array([False, False, True]), force=np.array([True, False, False]))
    assert hidden.tolist() == [True, True, False]


def test_suppress_parts_of_a_public_total():
    hidden = sp.suppress_parts([2, 30, 60, 8], 100, 5)
    assert hidden[0] and hidden.sum() == 2 and hidden[3]  # the complement is the smallest count >= 5


# --------------------------------------------------------------------------- tables


def site_tables(strict, unknown, screened_extra, countries):
    sites = pd.DataFrame({"site": [f"S{i}" for i in range(len(strict))], "country": countries,
                          "strict": strict, "unknown": unknown})
    sites["optimistic"] = sites["strict"] + sites["unknown"]
    sites["screened"] = sites["optimistic"] + np.asarray(screened_extra)
    sites["pct_strict"] = 100 * sites["strict"] / sites["screened"].where(sites["screened"] > 0)
    sites["pct_optimistic"] = 100 * sites["optimistic"] / sites["screened"].where(sites["screened"] > 0)
    cols = ["screened", "strict", "optimistic", "unknown"]
    countries_t = sites.groupby("country")[cols].sum().reset_index()
    countries_t.insert(1, "sites", sites.groupby("country")["site"].count().to_numpy())
    return sites, countries_t


def site_system(sites, countries, cols=("screened", "strict", "optimistic", "unknown")):
    """Cells and equations of the published site + country tables, rebuilt independently."""
    index = {}
    for name, frame in (("site", sites), ("country", countries)):
        for i in range(len(frame)):
            for c in cols:
                index[(name, i, c)] = len(index)
    for c in cols:
        index[("total", c)] = len(index)
    rows = []

    def eq(terms):
        row = np.zeros(len(index))
        for key, coef in terms:
            row[index[key]] += coef
        rows.append(row)

    for name, frame in (("site", sites), ("country", countries)):
        for i in range(len(frame)):
            eq([((name, i, "strict"), 1), ((name, i, "unknown"), 1), ((name, i, "optimistic"), -1)])
    for j, country in enumerate(countries["country"]):
        members = [i for i, c in enumerate(sites["country"]) if c == country]
        for c in cols:
            eq([(("site", i, c), 1) for i in members] + [(("country", j, c), -1)])
    for c in cols:
        eq([(("site", i, c), 1) for i in range(len(sites))] + [(("total", c), -1)])
    return index, np.array(rows)


def test_site_and_country_tables_hand_example():
    sites, countries = site_tables([30, 3, 50, 20], [5, 1, 6, 4], [60, 10, 70, 40], ["A", "A", "B", "B"])
    s, c = sp.suppress_sites(sites, countries, 5)
    m = s.masked()
    assert pd.isna(m.loc[1, "strict"]) and pd.isna(m.loc[1, "unknown"]) and pd.isna(m.loc[1, "optimistic"])
    assert pd.isna(m.loc[1, "pct_strict"])  # percentages go with their counts
    assert m.loc[0, "screened"] == 95  # untouched cells keep their value
    labelled = s.labelled()
    assert labelled.loc[1, "strict"] == "suppressed"
    assert s.n_hidden == int(s.hidden[["screened", "strict", "optimistic", "unknown"]].to_numpy().sum()) + \
        int(s.hidden[["pct_strict", "pct_optimistic"]].to_numpy().sum())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_no_hidden_site_cell_can_be_recovered(data):
    n = data.draw(st.integers(2, 9))
    k = data.draw(st.integers(2, 10))
    strict = data.draw(st.lists(st.integers(0, 40), min_size=n, max_size=n))
    unknown = data.draw(st.lists(st.integers(0, 12), min_size=n, max_size=n))
    extra = data.draw(st.lists(st.integers(0, 60), min_size=n, max_size=n))
    countries = data.draw(st.lists(st.sampled_from(["A", "B", "C"]), min_size=n, max_size=n))
    sites, country_t = site_tables(strict, unknown, extra, countries)
    s, c = sp.suppress_sites(sites, country_t, k)
    index, a = site_system(sites, country_t)
    hidden = np.zeros(len(index), bool)
    values = np.zeros(len(index))
    for (name, *rest), pos in index.items():
        if name == "total":
            values[pos] = sites[rest[0]].sum()
            continue
        i, col = rest
        table = s if name == "site" else c
        hidden[pos] = bool(table.hidden[col].iloc[i])
        values[pos] = table.frame[col].iloc[i]
    # Cells that the public totals alone determine (a one-country cohort's country row)
    # cannot be protected by anything; leave them out of the checks.
    everything = np.array([name != "total" for (name, *_rest) in index])
    public = set(recoverable(a, everything))
    # every small positive count is hidden, totals never are
    for (name, *rest), pos in index.items():
        if name != "total" and 0 < values[pos] < k and pos not in public:
            assert hidden[pos], (name, rest, values[pos])
        if name == "total":
            assert not hidden[pos]
    # and nothing hidden follows from what is shown
    assert set(recoverable(a, hidden)) <= public
    # shown cells are the true values
    shown = s.masked()
    for col in ("screened", "strict", "optimistic", "unknown"):
        ok = ~s.hidden[col]
        assert (shown.loc[ok, col].astype(int) == sites.loc[ok, col]).all()


def funnel_frame(strict, unknown_so_far):
    strict = np.asarray(strict)
    optimistic = strict + np.asarray(unknown_so_far)
    f = pd.DataFrame({"step": range(len(strict)), "criterion": ["Screened"] + [f"C{i}" for i in range(1, len(strict))],
                      "strict": strict, "optimistic": optimistic, "unknown_so_far": unknown_so_far})
    f["lost_strict"] = np.concatenate(([0], -np.diff(strict)))
    f["lost_optimistic"] = np.concatenate(([0], -np.diff(optimistic)))
    f["pct_strict"] = 100 * f["strict"] / strict[0]
    f["pct_optimistic"] = 100 * f["optimistic"] / strict[0]
    return f


def funnel_system(f):
    cols = ["strict", "optimistic", "unknown_so_far", "lost_strict", "lost_optimistic"]
    index = {}
    for i in range(len(f)):
        for c in cols:
            index[(i, c)] = len(index)
    rows = []
    for i in range(len(f)):
        r = np.zeros(len(index))
        r[index[(i, "strict")]], r[index[(i, "unknown_so_far")]], r[index[(i, "optimistic")]] = 1, 1, -1
        rows.append(r)
        if i:
            for b in ("strict", "optimistic"):
                r = np.zeros(len(index))
                r[index[(i - 1, b)]], r[index[(i, f"lost_{b}")]], r[index[(i, b)]] = 1, -1, -1
                rows.append(r)
    return index, np.array(rows)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_funnel_losses_cannot_be_recovered_by_subtraction(data):
    steps = data.draw(st.integers(2, 8))
    losses = data.draw(st.lists(st.integers(0, 30), min_size=steps, max_size=steps))
    strict = [200]
    for lost in losses:
        strict.append(max(strict[-1] - lost, 0))
    unknown = [0] + data.draw(st.lists(st.integers(0, 15), min_size=steps, max_size=steps))
    unknown = [min(u, 200 - s) for u, s in zip(unknown, strict, strict=True)]
    # optimistic must not increase along the funnel
    opt = [s + u for s, u in zip(strict, unknown, strict=True)]
    for i in range(1, len(opt)):
        if opt[i] > opt[i - 1]:
            unknown[i] -= opt[i] - opt[i - 1]
            opt[i] = opt[i - 1]
    f = funnel_frame(strict, unknown)
    t = sp.suppress_funnel(f, 5)
    index, a = funnel_system(f)
    hidden = np.zeros(len(index), bool)
    for (i, c), pos in index.items():
        hidden[pos] = bool(t.hidden[c].iloc[i])
        v = f[c].iloc[i]
        if i and 0 < v < 5:
            assert hidden[pos], (i, c, v)
    assert not t.hidden.iloc[0].any()  # the screened row is public
    assert recoverable(a, hidden) == []


def test_attrition_table_links_first_step_to_its_failures():
    f = funnel_frame([100, 97, 60], [0, 0, 10])
    f["failed"] = [None, 3, 30]
    f["unique"] = [None, 3, 20]
    f["unknown"] = [None, 0, 10]
    f["shapley_strict"] = [None, 3.0, 33.5]
    f["shapley_optimistic"] = [None, 3.0, 30.0]
    t = sp.suppress_attrition(f, 5)
    h = t.hidden
    assert h.loc[1, "failed"] and h.loc[1, "lost_optimistic"] and h.loc[1, "lost_strict"]
    assert h.loc[1, "shapley_strict"] and h.loc[1, "unique"]
    assert not h.loc[0].any()


def test_compare_and_totals_tables():
    deltas = pd.DataFrame({"criterion": ["A", "B"], "failed_base": [100, 50], "failed_other": [103, 50],
                           "failed_delta": [3, 0]})
    t = sp.suppress_compare(deltas, 5, ("failed",))
    assert t.hidden.loc[0, "failed_delta"] and (t.hidden.loc[0, ["failed_base", "failed_other"]].any())
    totals = pd.DataFrame({"measure": ["screened", "strict", "optimistic", "unknown"],
                           "base": [1000, 400, 450, 50], "other": [1000, 398, 450, 52], "delta": [0, -2, 0, 2]})
    t = sp.suppress_totals(totals, 5)
    assert t.hidden.loc[1, "delta"] and t.hidden.loc[3, "delta"]
    assert not t.hidden.loc[0, ["base", "other"]].any()


def test_independent_counts_and_unsuppressed():
    combos = pd.DataFrame({"label": ["A", "B"], "count": [50, 2], "pct": [5.0, 0.2]})
    t = sp.suppress_independent(combos, ["count"], 5, also={"pct": "count"})
    assert t.hidden["count"].tolist() == [False, True] and t.hidden["pct"].tolist() == [False, True]
    u = sp.unsuppressed(combos)
    assert u.n_hidden == 0 and u.masked().equals(combos)


@pytest.mark.parametrize("k", [2, 5, 11])
def test_builtin_like_site_table_is_fast_and_moderate(k):
    rng = np.random.default_rng(k)
    n = 50
    sizes = rng.gamma(1.5, 250, n).astype(int) + 1
    strict = (sizes * rng.uniform(0.2, 0.7, n)).astype(int)
    unknown = (sizes * rng.uniform(0, 0.08, n)).astype(int)
    extra = sizes - strict - unknown
    countries = rng.choice(["A", "B", "C", "D", "E"], n, p=[0.8, 0.05, 0.05, 0.05, 0.05])
    sites, country_t = site_tables(strict, unknown, np.maximum(extra, 0), countries)
    s, c = sp.suppress_sites(sites, country_t, k)
    n_primary = int(sp.primary(sites[["screened", "strict", "optimistic", "unknown"]].to_numpy(), k).sum())
    hidden = int(s.hidden[["screened", "strict", "optimistic", "unknown"]].to_numpy().sum())
    assert hidden >= n_primary
    assert hidden <= max(4 * n_primary + 8, 12)  # complements stay proportionate


def test_a_cell_whose_neighbours_are_all_hidden_still_gets_protected():
    """Found by a random search: row 3's unknown was pinned down through a chain of hidden
    cells while every cell of its own equations was hidden already."""
    f = funnel_frame([200, 199, 181, 175, 145, 142, 128, 116, 105], [0, 1, 1, 3, 13, 13, 5, 15, 5])
    t = sp.suppress_funnel(f, 5)
    index, a = funnel_system(f)
    hidden = np.zeros(len(index), bool)
    for (i, c), pos in index.items():
        hidden[pos] = bool(t.hidden[c].iloc[i])
    assert recoverable(a, hidden) == []


# --------------------------------------------------------------------------- the LP guarantee


def test_lp_rejects_a_pair_that_only_the_rank_test_accepts():
    """a + b = t with a = 3, b = 1: hiding a and b defeats subtraction (the rank test is happy)
    but a + b = 4 < 5 leaves a in [0, 4]. The step must hide more, until every hidden cell
    can move by at least k."""
    # cells: a, b, t (a row and its total), c, d, u (a second row), and column totals
    #   a + b = t, c + d = u, a + c = p (public), b + d = q (public)
    values = np.array([3, 1, 4, 40, 56, 96, 43, 57])
    eqs = (((0, 1), (1, 1), (2, -1)), ((3, 1), (4, 1), (5, -1)), ((0, 1), (3, 1), (6, -1)),
           ((1, 1), (4, 1), (7, -1)))
    cells = sp.Cells(values, eqs)
    public = np.array([False] * 6 + [True, True])
    rank_only = np.array([True, True, False, True, True, False, False, False])  # a rectangle: no cell determined
    assert not sp.determined(cells.matrix(), rank_only).any()
    lo, hi = sp.intervals(cells, rank_only)
    assert hi[0] - lo[0] == 4  # a + b = t = 4 visible: a is in [0, 4]
    p = sp.protect_cells(cells, 5, public)
    assert not p.unprotected and p.hidden[0] and p.hidden[1] and not p.hidden[6:].any()
    lo, hi = sp.intervals(cells, p.hidden)
    assert np.all((hi - lo)[p.hidden] >= 5)


def test_inequalities_bound_a_hidden_cell():
    """unique <= failed: a unique count of 3 under a visible failed count of 3 lies in [0, 3]."""
    values = np.array([3, 3, 200])  # unique, failed, failed of another criterion (unrelated)
    cells = sp.Cells(values, (), inequalities=(((0, 1), (1, -1)),))
    lo, hi = sp.intervals(cells, np.array([True, False, False]))
    assert (lo[0], hi[0]) == (0, 3)
    p = sp.protect_cells(cells, 5)
    assert p.hidden[:2].all() and not p.hidden[2] and not p.unprotected


def test_a_cell_fixed_by_public_cells_is_reported_not_hidden_silently():
    cells = sp.Cells(np.array([2, 2, 4]), (((0, 1), (1, 1), (2, -1)),))
    p = sp.protect_cells(cells, 5, np.array([False, False, True]))
    assert p.hidden[:2].all() and p.unprotected == [0, 1]  # 2 + 2 = 4 public: nothing protects them


def test_changes_may_be_negative():
    """A change (scenario - protocol) of -3 is a small count too, and its lower bound is not 0."""
    values = np.array([100, 97, -3])  # base, other, delta = other - base
    cells = sp.Cells(values, (((1, 1), (0, -1), (2, -1)),), lower=np.array([0, 0, -np.inf]))
    p = sp.protect_cells(cells, 5, small=np.abs(values) < 5)
    assert p.hidden[2] and p.hidden[:2].any() and not p.unprotected


def test_threshold_names_and_bounds():
    assert sp.threshold("cms") == sp.CMS_THRESHOLD == 11 and sp.threshold("5") == 5 and sp.threshold(0) == 0
    assert sp.threshold(1) == 0  # hiding nothing below 1
    with pytest.raises(ValueError, match=">= 0"):
        sp.threshold(-1)
    with pytest.raises(ValueError, match="cms"):
        sp.threshold("strict")


def test_workbook_same_quantity_is_hidden_in_both_tables():
    from kn026.report.workbook import Workbook

    wb = Workbook(5)
    wb.add("A", pd.DataFrame({"x": [3, 97], "t": [100, 100]}), ["x"])
    wb.add("B", pd.DataFrame({"y": [3]}), ["y"])
    total = wb.constant("total", 100)
    wb.equation([(("A", 0, "x"), 1), (("A", 1, "x"), 1), (total, -1)])
    wb.same(("A", 0, "x"), ("B", 0, "y"))
    out = wb.suppress()
    assert out["A"].hidden["x"].tolist() == [True, True] and out["B"].hidden["y"].tolist() == [True]
    with pytest.raises(ValueError, match="same quantity"):
        wb.same(("A", 1, "x"), ("B", 0, "y"))


def test_site_percentages_go_with_their_denominator():
    sites, countries = site_tables([30, 3, 50, 2], [5, 1, 6, 0], [60, 0, 70, 1], ["A", "A", "B", "B"])
    s, _ = sp.suppress_sites(sites, countries, 5)
    for i in range(len(sites)):
        if s.hidden.loc[i, "screened"]:
            assert s.hidden.loc[i, ["pct_strict", "pct_optimistic"]].all()


def test_recruitment_sites_hide_what_gives_a_hidden_count_back():
    from kn026.report import published
    from kn026.report.workbook import Workbook

    sites, countries = site_tables([30, 3, 50, 20], [5, 1, 6, 4], [60, 0, 70, 40], ["A", "A", "B", "B"])
    sites["excluded"] = sites["screened"] - sites["optimistic"]
    countries["excluded"] = countries["screened"] - countries["optimistic"]
    rec = pd.DataFrame({"site": sites["site"], "screened": sites["screened"], "expected": [9.0, 0.5, 12.0, 6.0],
                        "rate_mean": [3.0, 0.2, 4.0, 2.0]})
    wb = Workbook(5)
    published.sites(wb, sites, countries, attrition_name=None)
    published.recruitment_sites(wb, rec)
    out = wb.suppress()
    hidden_sites = out["Sites"].hidden["screened"].to_numpy()
    assert hidden_sites.any()
    assert (out["Recruitment sites"].hidden["screened"].to_numpy() == hidden_sites).all()
    assert (out["Recruitment sites"].hidden["expected"].to_numpy() == hidden_sites).all()
