"""Plotly figure builders: traces, values, hover text, colours, hidden (suppressed) values."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from kn026.core import funnel as fm
from kn026.report import charts as C

# Three criteria on bits 0..2 (see tests/test_funnel.py for the worked example).
HIST = fm.Histogram.from_counts({(0, 0): 10, (1, 0): 5, (0, 2): 3, (3, 0): 2, (4, 1): 4, (0, 5): 1, (2, 4): 2})
NAMES = ["A", "B", "C"]
LABELS = {"A": "Adult", "B": "Biopsy", "C": "A very long criterion name that will certainly need cutting"}


def funnel_df():
    return fm.funnel(HIST, NAMES)


def test_funnel_both_bounds():
    f = funnel_df()
    fig = C.funnel_figure(f, LABELS, {"A": "Age 18 or older."}, "both")
    strict, unknown = fig.data
    assert strict.type == "funnel" and list(strict.x) == list(f["strict"])
    assert list(unknown.x) == list(f["optimistic"] - f["strict"])
    assert strict.marker.color == C.COLORS["strict"] and unknown.marker.color == C.COLORS["unknown"]
    assert fig.layout.funnelmode == "stack"
    assert strict.y[0] == "Screened" and strict.y[1] == "A · Adult"
    assert strict.y[3].startswith("C · A very long") and strict.y[3].endswith("…") and len(strict.y[3]) < 45
    hover = strict.hovertext[1]
    for part in ("<b>A</b>", "Adult", f"{f['strict'][1]:,}", "%", "Lost at this step", "Age 18 or older."):
        assert part in hover
    assert "Lost at this step" not in strict.hovertext[0]
    assert fig.layout.yaxis.autorange == "reversed"


@pytest.mark.parametrize("policy, color", [("strict", "strict"), ("optimistic", "optimistic")])
def test_funnel_single_bound(policy, color):
    f = funnel_df()
    fig = C.funnel_figure(f, LABELS, policy=policy)
    assert len(fig.data) == 1 and fig.data[0].marker.color == C.COLORS[color]
    assert list(fig.data[0].x) == list(f[policy])


def test_funnel_with_hidden_values_and_attrition_columns():
    f = funnel_df().rename(columns={"unknown": "unknown_so_far"})
    f["unknown"] = 99  # the attrition table's per-criterion unknowns must not be used
    f = f.astype({"strict": "Int64", "pct_strict": "Float64"})
    f.loc[2, ["strict", "pct_strict"]] = pd.NA
    fig = C.funnel_figure(f, LABELS)
    assert fig.data[0].x[2] == 0 and fig.data[0].text[2] == ""
    assert "suppressed" in fig.data[0].hovertext[2]
    assert list(fig.data[1].x) == list(f["unknown_so_far"])
    with pytest.raises(ValueError):
        C.funnel_figure(f, LABELS, policy="maybe")


def test_combinations_upset():
    combos = fm.combinations(HIST, NAMES, top=None)
    fig = C.combinations_figure(combos, NAMES, LABELS, "optimistic")
    bars = fig.data[0]
    assert bars.type == "bar" and list(bars.y) == list(combos["count"])
    assert len(fig.data) == 3  # bars, background dots, member dots joined per combination
    members = fig.data[2]
    groups, current = [], []
    for x, y in zip(members.x, members.y, strict=True):
        if x is None:
            groups.append(current)
            current = []
        else:
            current.append((x, y))
    assert len(groups) == len(combos)
    for i, (group, crit) in enumerate(zip(groups, combos["criteria"], strict=True)):
        assert {x for x, _ in group} == {f"#{i + 1}"}
        assert sorted(y.split(" · ")[0] for _, y in group) == sorted(crit)  # one dark dot per criterion
    assert len(fig.data[1].x) == len(combos) * len({c for crit in combos["criteria"] for c in crit})
    assert "excluded by exactly this combination" in bars.hovertext[0]
    spec = json.loads(fig.to_json())
    assert spec["layout"]["yaxis2"]["autorange"] == "reversed"


def test_compare_and_deltas():
    totals = fm.compare_totals(HIST, fm.Histogram.from_counts({(0, 0): 12, (1, 0): 15}))
    fig = C.compare_figure(totals, "Scenario X")
    assert [t.name for t in fig.data] == ["Protocol", "Scenario X"]
    assert fig.data[0].marker.color == C.COLORS["protocol"] and fig.data[1].marker.color == C.COLORS["scenario"]
    deltas = pd.DataFrame({"criterion": ["A", "B", "C"], "failed_delta": [3, 0, -2]})
    fig = C.deltas_figure(deltas, LABELS)
    assert list(fig.data[0].x) == [3, -2] and fig.data[0].text == ("+3", "-2")


def test_sites_figure_nests_bounds_and_marks_hidden():
    sites = pd.DataFrame({"site": ["S1", "S2"], "country": ["X", "Y"], "screened": [100, 20],
                          "strict": pd.array([40, pd.NA], dtype="Int64"), "optimistic": [50, 12]})
    fig = C.sites_figure(sites, title="t")
    names = [t.name for t in fig.data[:3]]
    assert names == ["Screened", "Eligible, optimistic", "Eligible, strict"]
    assert fig.data[0].width > fig.data[1].width > fig.data[2].width
    assert fig.data[0].y == ("S1 · X", "S2 · Y")
    assert fig.data[3].y == ("S2 · Y",) and "suppressed" in fig.data[3].text[0]
    assert fig.layout.barmode == "overlay"
    countries = C.sites_figure(sites.rename(columns={"site": "country_name"}).assign(
        country=["X", "Y"]), key="country")
    assert countries.data[0].y == ("X", "Y")


def test_distribution_colours_bins_by_the_limit():
    bins = pd.DataFrame({"x0": [0.0, 1.0, 2.0, 3.0], "x1": [1.0, 2.0, 3.0, 4.0], "count": [5, 10, 7, 1]})
    limits = [{"value": 2.0, "label": "≥ 2"}, {"value": 1.5, "label": "protocol ≥ 1.5"}]
    fig = C.distribution_figure(bins, "ANC", "10⁹/L", limits, "ge", missing=3, n=26)
    colors = fig.data[0].marker.color
    assert colors == (C.COLORS["fail"], C.COLORS["fail"], C.COLORS["pass"], C.COLORS["pass"])
    shapes = fig.layout.shapes
    assert [s.x0 for s in shapes] == [2.0, 1.5] and shapes[1].line.dash == "dash"
    assert "3 missing (11.5%)" in fig.layout.title.text
    disc = C.distribution_figure(pd.DataFrame({"x0": [0.0, 1.0, 2.0], "x1": [0.0, 1.0, 2.0], "count": [3, 4, 5]}),
                                 "ECOG", "", [{"value": 1.0, "label": "≤ 1"}], "le", discrete=True)
    assert disc.data[0].marker.color == (C.COLORS["pass"], C.COLORS["pass"], C.COLORS["fail"])


def test_category_and_coverage_figures():
    frame = pd.DataFrame({"category": ["IHC 0", "IHC 3+", "IHC not recorded"], "count": [10, 30, 2],
                          "verdict": ["fail", "pass", "unknown"]})
    fig = C.category_figure(frame, "HER2", "passes: IHC 3+")
    assert fig.data[0].marker.color == (C.COLORS["fail"], C.COLORS["pass"], C.COLORS["unknown"])
    assert fig.data[0].orientation == "h" and list(fig.data[0].x) == [10, 30, 2]
    cov = pd.DataFrame({"rule": ["R1", "R2", "R3"], "label": ["a", "b", "c"], "status": ["ok", "mostly unknown", "n/a"],
                        "unknown_pct": [0.5, 60.0, None]})
    fig = C.coverage_figure(cov)
    assert fig.data[0].y == ("R2 · b", "R1 · a")


def test_helpers_and_serialisation():
    assert C.short("short") == "short"
    assert C.short("one two three four five", 12) == "one two…"
    assert C.wrap("a " * 100, 20, 2).count("<br>") == 1 and C.wrap("x").endswith("x")
    assert C.fmt_int(1234.0) == "1,234" and C.fmt_int(np.nan) == "suppressed" and C.fmt_pct(pd.NA) == "suppressed"
    fig = C.funnel_figure(funnel_df(), LABELS)
    assert isinstance(fig, go.Figure)
    html = fig.to_html(include_plotlyjs="cdn", full_html=False)
    assert "plotly" in html
    assert C.figure_spec(fig)["layout"]["font"]["family"] == C.FONT


# --------------------------------------------------------------------------- suppressed values drawn


def _trace_numbers(trace) -> set[float]:
    """Every number a trace carries (positions, lengths, custom data), as floats."""
    out = set()
    for attr in ("x", "y", "customdata"):
        values = getattr(trace, attr, None)
        if values is None:
            continue
        for v in np.ravel(np.asarray(values, dtype=object)):
            try:
                out.add(float(str(v).replace(",", "")))
            except (TypeError, ValueError):
                pass
    return out


def test_funnel_draws_a_hidden_step_as_a_labelled_outline_at_a_known_bound():
    f = funnel_df().rename(columns={"unknown": "unknown_so_far"}).astype({"strict": "Int64", "optimistic": "Int64",
                                                                         "unknown_so_far": "Int64"})
    hidden_values = (int(f.loc[2, "strict"]), int(f.loc[2, "optimistic"]))
    f.loc[2, ["strict", "optimistic", "unknown_so_far", "pct_strict", "pct_optimistic"]] = pd.NA
    fig = C.funnel_figure(f, LABELS)
    outline = fig.data[-1]
    assert outline.name.startswith("Suppressed") and outline.text[2] == C.HIDDEN
    assert outline.x[2] == f.loc[1, "optimistic"]  # the nearest shown count above: public, not the hidden one
    assert outline.x[1] == 0 and outline.marker.line.width > 0
    assert fig.data[0].x[2] == 0 and fig.data[1].x[2] == 0
    assert not set(hidden_values) - {f.loc[1, "optimistic"]} & {fig.data[0].x[2], fig.data[1].x[2], outline.x[2]}


def test_bars_draw_hidden_counts_as_hatched_labelled_stubs():
    sites = pd.DataFrame({"site": ["S1", "S2", "S3"], "country": ["X", "Y", "Y"], "screened": [100, 20, 7],
                          "strict": pd.array([40, pd.NA, pd.NA], dtype="Int64"),
                          "optimistic": pd.array([50, 12, pd.NA], dtype="Int64")})
    fig = C.sites_figure(sites)
    strict = fig.data[2]
    assert list(strict.marker.pattern.shape) == ["", "/", "/"]
    assert strict.x[1] == strict.x[2] == C.stub_length(np.array([100.0, 20.0, 7.0]))  # 4 % of the largest shown
    assert strict.customdata[1] == C.HIDDEN
    notes = next(t for t in fig.data if t.type == "scatter")
    assert [t.name for t in fig.data if t.type == "bar" and len(t.x) == 1 and t.x[0] is None] == ["Eligible, optimistic",
                                                                                  "Eligible, strict"]  # solid keys
    assert "strict suppressed" in notes.text[0] and "optimistic, strict suppressed" in notes.text[1]
    combos = pd.DataFrame({"criteria": [("A",), ("B",)], "label": ["A", "B"], "size": [1, 1],
                           "count": pd.array([50, pd.NA], dtype="Int64"), "pct": [5.0, np.nan]})
    fig = C.combinations_figure(combos, NAMES, LABELS)
    assert fig.data[0].text[1] == C.HIDDEN and fig.data[0].marker.pattern.shape[1] == "/"
    deltas = pd.DataFrame({"criterion": ["A", "B"], "failed_delta": pd.array([pd.NA, 30], dtype="Int64")})
    fig = C.deltas_figure(deltas, LABELS)
    assert fig.data[0].text[0] == C.HIDDEN and fig.data[0].x[0] > 0
    totals = pd.DataFrame({"measure": ["screened", "strict", "optimistic", "unknown"],
                           "base": pd.array([100, 3, 60, pd.NA], dtype="Int64"),
                           "other": [100, 40, 60, 20], "delta": [0, 37, 0, 20]})
    fig = C.compare_figure(totals, "S")
    assert fig.data[0].text[2] == C.HIDDEN and 57 not in _trace_numbers(fig.data[0])
    bins = pd.DataFrame({"x0": [0.0, 1.0], "x1": [1.0, 2.0], "count": pd.array([pd.NA, 40], dtype="Int64")})
    fig = C.distribution_figure(bins, "t", "u", [], "ge")
    assert fig.data[0].text[0] == C.HIDDEN and fig.data[0].y[0] > 0
    cats = pd.DataFrame({"category": ["a", "b"], "count": pd.array([3, pd.NA], dtype="Int64"),
                         "verdict": ["pass", "fail"]})
    fig = C.category_figure(cats, "t")
    assert fig.data[0].text[1] == C.HIDDEN and fig.data[0].marker.pattern.shape[1] == "/"
