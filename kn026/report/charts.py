"""Plotly figure builders: pure functions from tables to figures (no Streamlit).

One palette everywhere: strict (unknown counts as failing) is deep blue, optimistic
(unknown counts as passing) is teal, unknown is amber, excluded / failing is brick red,
screened is grey; the protocol is slate and a scenario purple. The same figures are
shown in the app and written to HTML exports.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

COLORS = {
    "strict": "#1d4e89",
    "optimistic": "#2a9d8f",
    "unknown": "#f4a52c",
    "excluded": "#c8553d",
    "screened": "#b9c2cc",
    "protocol": "#7a8699",
    "scenario": "#7b4fa6",
    "pass": "#2a9d8f",
    "fail": "#c8553d",
    "na": "#b9c2cc",
    "grid": "#e6e9ee",
    "text": "#1f2937",
    "muted": "#6b7280",
}
VERDICT_COLORS = {"pass": COLORS["pass"], "fail": COLORS["fail"], "unknown": COLORS["unknown"],
                  "n/a": COLORS["na"]}
FONT = "Source Sans Pro, Source Sans 3, Inter, Helvetica Neue, Arial, sans-serif"
POLICIES = ("both", "strict", "optimistic")
POLICY_LABELS = {"both": "Strict and optimistic", "strict": "Strict (unknown fails)",
                 "optimistic": "Optimistic (unknown passes)"}
HIDDEN = "suppressed"


def wrap(text: str, width: int = 70, max_lines: int = 8) -> str:
    """Wrap text for a hover label (<br> line breaks), cut after `max_lines`."""
    lines = textwrap.wrap(str(text), width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " …"
    return "<br>".join(lines)


def fmt_int(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return HIDDEN
    return f"{int(round(float(value))):,}"


def fmt_pct(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return HIDDEN
    return f"{float(value):.{digits}f}%"


def short(text: str, width: int = 40) -> str:
    """Cut a label to `width` characters on a word boundary, with an ellipsis."""
    text = str(text)
    if len(text) <= width:
        return text
    cut = text[: width - 1].rsplit(" ", 1)[0].rstrip(",;·- ")
    return cut + "…"


# Glyph widths as a share of the font size, a little wider than Arial / Helvetica so that the
# estimate also covers the browser's fallback fonts (DejaVu Sans is the widest common one).
_WIDTHS = {**dict.fromkeys("ijlI.,:;'|! ", 0.34), **dict.fromkeys("frt()[]-", 0.42),
           **dict.fromkeys("mwMW@%…", 1.0), **dict.fromkeys("+<>=≥≤&#~", 0.84)}


def text_width(text: str, size: float) -> float:
    """An upper estimate of `text`'s width in pixels at font `size` (no browser at hand)."""
    width = 0.0
    for ch in str(text):
        width += _WIDTHS.get(ch, 0.8 if ch.isupper() else 0.64)
    return width * size


def reserve_left(fig: go.Figure, labels: Sequence[str], size: float, floor: int = 10) -> go.Figure:
    """Left margin wide enough for the widest y tick label.

    Plotly's automargin measures labels before the web font is in and cut the first
    letters off the widest ones ("XCL11 · ...", "S049") in the app and in exported
    HTML / PNG: the margin is set from the label text instead (automargin may only add).
    """
    need = max((text_width(lab, size) for lab in labels), default=0.0)
    fig.update_layout(margin_l=max(floor, int(need) + 14))
    return fig


def _style(fig: go.Figure, title: str | None, height: int, legend: bool | str = True) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0, xanchor="left", font=dict(size=17, color=COLORS["text"])) if title else None,
        font=dict(family=FONT, size=13, color=COLORS["text"]),
        height=height,
        margin=dict(l=10, r=20, t=56 if title else 24, b=10),
        paper_bgcolor="white",
        plot_bgcolor="white",
        showlegend=bool(legend),
        legend=(dict(orientation="h", yanchor="top", y=-0.06, xanchor="left", x=0, font=dict(size=13))
                if legend == "bottom" else
                dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1, font=dict(size=13))),
        hoverlabel=dict(bgcolor="white", font=dict(family=FONT, size=13, color=COLORS["text"]),
                        bordercolor=COLORS["grid"], align="left"),
    )
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def _num(values) -> np.ndarray:
    """Float array with NaN for hidden / missing values."""
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=float)


def stub_length(values) -> float:
    """The length of a suppressed bar: 4 % of the largest shown value (never from a hidden one).

    A hidden count is drawn as a hatched, outlined stub labelled "suppressed": visibly not
    a zero, and of a length that says nothing about the count.
    """
    shown = np.abs(values[~np.isnan(values)]) if len(values) else np.array([])
    return max(float(shown.max()) * 0.04, 1.0) if len(shown) else 1.0


def hidden_marker(values: np.ndarray, color, stub: float | None = None) -> tuple[np.ndarray, dict, np.ndarray]:
    """Bar lengths, marker and hidden flags with suppressed values drawn as labelled hatched stubs.

    `values` has NaN where a count is hidden. Returns (lengths, marker dict for go.Bar,
    hidden mask); the caller labels hidden bars with `HIDDEN`.
    """
    hidden = np.isnan(values)
    if not hidden.any():
        return values, dict(color=color), hidden
    stub = stub_length(values) if stub is None else stub
    lengths = np.where(hidden, stub, values)
    colors = color if isinstance(color, (list, tuple, np.ndarray)) else [color] * len(values)
    marker = dict(color=[("white" if h else c) for h, c in zip(hidden, colors, strict=True)],
                  pattern=dict(shape=[("/" if h else "") for h in hidden], fgcolor=COLORS["muted"], size=6,
                               solidity=0.3),
                  line=dict(color=[(COLORS["muted"] if h else c) for h, c in zip(hidden, colors, strict=True)],
                            width=[(1.2 if h else 0) for h in hidden]))
    return lengths, marker, hidden


# --------------------------------------------------------------------------- funnel


def funnel_figure(funnel: pd.DataFrame, labels: Mapping[str, str], texts: Mapping[str, str] | None = None,
                  policy: str = "both", title: str | None = "Sequential attrition") -> go.Figure:
    """Funnel of remaining patients per step (kn026.core.funnel.funnel or export.attrition_frame columns).

    policy "both": strict count (blue) with the unknowns (amber) stacked on it, so the
    whole bar is the optimistic bound; "strict" or "optimistic": that bound alone.
    Hidden (suppressed) counts come as missing values. A step with a hidden bar is drawn
    as an outlined, unfilled bar labelled "suppressed", as long as the largest value the
    reader already knows it cannot exceed (that step's optimistic count when shown, else
    the nearest shown count above it): never as an empty bar that reads as zero.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}")
    texts = texts or {}
    ids = list(funnel["criterion"])
    ylab = [("Screened" if cid == "Screened" else f"{cid} · {short(labels.get(cid, ''), 34)}".rstrip(" ·"))
            for cid in ids]
    strict, optimistic = _num(funnel["strict"]), _num(funnel["optimistic"])
    # kn026.core.funnel.funnel calls it "unknown"; the attrition table "unknown_so_far" (its "unknown"
    # is the count unknown on that criterion alone).
    unknown = _num(funnel["unknown_so_far"] if "unknown_so_far" in funnel else funnel["unknown"])
    lost_s, lost_o = _num(funnel["lost_strict"]), _num(funnel["lost_optimistic"])
    pct_s, pct_o = _num(funnel["pct_strict"]), _num(funnel["pct_optimistic"])
    hover = []
    for i, cid in enumerate(ids):
        head = "<b>Screened</b>" if cid == "Screened" else f"<b>{cid}</b> · {labels.get(cid, '')}"
        lines = [head,
                 f"Remaining, strict: <b>{fmt_int(strict[i])}</b> ({fmt_pct(pct_s[i])})",
                 f"Remaining, optimistic: <b>{fmt_int(optimistic[i])}</b> ({fmt_pct(pct_o[i])})",
                 f"Unknown so far: {fmt_int(unknown[i])}"]
        if i:
            lines.append(f"Lost at this step: {fmt_int(lost_s[i])} strict / {fmt_int(lost_o[i])} optimistic")
        if texts.get(cid):
            lines.append(f"<span style='color:{COLORS['muted']}'>{wrap(texts[cid], 80, 5)}</span>")
        hover.append("<br>".join(lines))

    def bar_text(values, pct):
        return [("" if np.isnan(v) else f"{int(v):,}  ({p:.0f}%)" if not np.isnan(p) else f"{int(v):,}")
                for v, p in zip(values, pct, strict=True)]

    fig = go.Figure()
    common = dict(y=ylab, hovertext=hover, hoverinfo="text", constraintext="both",
                  connector=dict(line=dict(color=COLORS["grid"], width=1), fillcolor="#f3f5f8"))
    if policy in ("both", "strict"):
        fig.add_trace(go.Funnel(name="Eligible so far, strict", x=np.nan_to_num(strict), marker=dict(color=COLORS["strict"]),
                                text=bar_text(strict, pct_s), textinfo="text", textposition="inside",
                                insidetextfont=dict(color="white", size=12), **common))
    if policy == "both":
        fig.add_trace(go.Funnel(name="Unknown (optimistic bound)", x=np.nan_to_num(unknown),
                                marker=dict(color=COLORS["unknown"]),
                                text=[("" if np.isnan(u) or u == 0 else f"+{int(u):,}") for u in unknown],
                                textinfo="text", textposition="outside",
                                outsidetextfont=dict(color="#9a5b00", size=12), **common))
    if policy == "optimistic":
        fig.add_trace(go.Funnel(name="Eligible so far, optimistic", x=np.nan_to_num(optimistic),
                                marker=dict(color=COLORS["optimistic"]), text=bar_text(optimistic, pct_o),
                                textinfo="text", textposition="inside",
                                insidetextfont=dict(color="white", size=12), **common))
    hidden = {"both": np.isnan(strict) | np.isnan(unknown), "strict": np.isnan(strict),
              "optimistic": np.isnan(optimistic)}[policy]
    if hidden.any():
        reach = _known_bound(strict if policy == "strict" else optimistic, optimistic if policy == "strict" else None)
        if policy == "both":  # a shown strict bar stays; the outline covers what is not known
            reach = np.maximum(reach - np.nan_to_num(strict), 0.0)
        fig.add_trace(go.Funnel(name="Suppressed (outline: at most this many)", x=np.where(hidden, reach, 0.0),
                                marker=dict(color="rgba(255,255,255,0)", line=dict(color=COLORS["muted"], width=1.5)),
                                text=[HIDDEN if h else "" for h in hidden], textinfo="text", textposition="outside",
                                outsidetextfont=dict(color=COLORS["muted"], size=12), **common))
    fig.update_layout(funnelmode="stack", funnelgap=0.18)
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=12.5), ticklabelstandoff=6)
    fig = _style(fig, title, height=110 + 27 * len(ids))
    # Plotly's automargin under-measures funnel tick labels: the margin comes from the text.
    fig.update_yaxes(automargin=False)
    return reserve_left(fig, ylab, 12.5)


def _legend_entry(keys: list, name: str, color: str, hidden: np.ndarray) -> None:
    """A solid legend key for a trace whose first bar may be a hatched stub (plotly draws the
    key like the first bar); the caller adds `keys` after its data traces."""
    if hidden.any():
        keys.append(go.Bar(x=[None], y=[None], name=name, marker=dict(color=color), legendgroup=name,
                           hoverinfo="skip", orientation="h"))


def _known_bound(values: np.ndarray, cap: np.ndarray | None = None) -> np.ndarray:
    """Per step, the shown value, else the largest value a hidden one can have from shown ones.

    Remaining counts never increase along a funnel, so a hidden count is at most the
    nearest shown count above it; `cap` (the optimistic count for the strict bound) also
    bounds it where shown.
    """
    out = np.empty(len(values))
    last = np.nan
    for i, v in enumerate(values):
        if not np.isnan(v):
            last = v
            out[i] = v
            continue
        bound = last
        if cap is not None and not np.isnan(cap[i]):
            bound = cap[i] if np.isnan(bound) else min(bound, cap[i])
        out[i] = 0.0 if np.isnan(bound) else bound
    return out


# --------------------------------------------------------------------------- overlap


def combinations_figure(combos: pd.DataFrame, order: Sequence[str], labels: Mapping[str, str],
                        bound: str = "optimistic", title: str | None = None) -> go.Figure:
    """UpSet-style chart of the most frequent exact failure combinations.

    `combos` is kn026.core.funnel.combinations output (criteria tuple, label, count, pct);
    `order` fixes the row order of the criteria in the dot matrix (funnel order). Top:
    one bar per combination; below: a dot per criterion, dark and joined for the
    criteria in that combination. Three traces in all, so it stays quick to draw.
    """
    combos = combos.reset_index(drop=True)
    involved = [c for c in order if any(c in crit for crit in combos["criteria"])]
    color = COLORS["excluded"] if bound == "optimistic" else COLORS["strict"]
    xs = [f"#{i + 1}" for i in range(len(combos))]
    counts = _num(combos["count"])
    pct = _num(combos["pct"]) if "pct" in combos else np.full(len(combos), np.nan)
    hover = [f"<b>{lab}</b><br>{fmt_int(c)} patients ({fmt_pct(p)}) are excluded by exactly this combination"
             for lab, c, p in zip(combos["label"], counts, pct, strict=True)]
    ylab = [f"{c} · {short(labels.get(c, ''), 34)}" for c in involved]
    name_of = dict(zip(involved, ylab, strict=True))
    gx = [x for x in xs for _ in ylab]
    gy = [y for _ in xs for y in ylab]
    mx: list = []
    my: list = []
    for x, crit in zip(xs, combos["criteria"], strict=True):
        members = [name_of[c] for c in involved if c in crit]
        mx += [x] * len(members) + [None]
        my += members + [None]
    lengths, marker, _ = hidden_marker(counts, color)
    fig = go.Figure([
        go.Bar(x=xs, y=lengths, marker=marker, hovertext=hover, hoverinfo="text",
               text=[fmt_int(c) for c in counts], textposition="outside", cliponaxis=False, name="patients",
               showlegend=False, xaxis="x", yaxis="y"),
        go.Scatter(x=gx, y=gy, mode="markers", marker=dict(size=11, color="#e3e7ed"), hoverinfo="skip",
                   showlegend=False, xaxis="x2", yaxis="y2"),
        go.Scatter(x=mx, y=my, mode="lines+markers", line=dict(color=color, width=3),
                   marker=dict(size=13, color=color), hoverinfo="skip", showlegend=False, connectgaps=False,
                   xaxis="x2", yaxis="y2"),
    ])
    fig.update_layout(
        xaxis=dict(domain=[0, 1], anchor="y", matches="x2", showticklabels=False, showgrid=False),
        yaxis=dict(domain=[0.52, 1], title_text="patients", gridcolor=COLORS["grid"], rangemode="tozero"),
        xaxis2=dict(domain=[0, 1], anchor="y2", showgrid=False, tickfont=dict(size=12), categoryorder="array",
                    categoryarray=xs),
        yaxis2=dict(domain=[0, 0.48], autorange="reversed", categoryorder="array", categoryarray=ylab,
                    showgrid=False, tickfont=dict(size=12.5)),
    )
    what = "failing criteria" if bound == "optimistic" else "failing or unknown criteria"
    title = title if title is not None else f"Most frequent combinations of {what}"
    fig = _style(fig, title or None, height=max(380, 240 + 30 * len(involved)), legend=False)
    return reserve_left(fig, ylab, 12.5, floor=70)  # floor: the "patients" title and counts above


# --------------------------------------------------------------------------- comparison


def compare_figure(totals: pd.DataFrame, scenario_name: str, title: str | None = "Eligible patients") -> go.Figure:
    """Protocol vs scenario eligible counts (kn026.core.funnel.compare_totals)."""
    rows = totals.set_index("measure")
    measures = [m for m in ("strict", "optimistic", "unknown") if m in rows.index]
    names = {"strict": "Eligible, strict", "optimistic": "Eligible, optimistic", "unknown": "Unknown"}
    fig = go.Figure()
    both = _num([rows.loc[m, c] for m in measures for c in ("base", "other")])
    keys: list = []
    for col, name, color in (("base", "Protocol", COLORS["protocol"]), ("other", scenario_name, COLORS["scenario"])):
        vals = _num([rows.loc[m, col] for m in measures])
        lengths, marker, hidden = hidden_marker(vals, color, stub_length(both))
        _legend_entry(keys, wrap(name, 40), color, hidden)
        fig.add_trace(go.Bar(y=[names[m] for m in measures], x=lengths, orientation="h", name=wrap(name, 40),
                             showlegend=not hidden.any(), legendgroup=name,
                             marker=marker, text=[fmt_int(v) for v in vals], textposition="outside",
                             customdata=[fmt_int(v) for v in vals], cliponaxis=False,
                             hovertemplate="%{y}: %{customdata}<extra>" + name[:40] + "</extra>"))
    fig.add_traces(keys)
    fig.update_layout(barmode="group", bargap=0.3)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(gridcolor=COLORS["grid"], rangemode="tozero")
    return reserve_left(_style(fig, title, height=300), [names[m] for m in measures], 13)


def deltas_figure(deltas: pd.DataFrame, labels: Mapping[str, str], title: str | None = None) -> go.Figure:
    """Change (scenario - protocol) in patients failing each criterion, changed rows only."""
    d = deltas.copy()
    d = d[_num(d["failed_delta"]) != 0]
    vals = _num(d["failed_delta"])
    ylab = [f"{c} · {short(labels.get(c, ''), 34)}" for c in d["criterion"]]
    colors = [COLORS["excluded"] if v > 0 else COLORS["optimistic"] for v in np.nan_to_num(vals)]
    lengths, marker, hidden = hidden_marker(vals, colors)
    text = [HIDDEN if h else f"{int(v):+,}" for v, h in zip(vals, hidden, strict=True)]
    fig = go.Figure(go.Bar(y=ylab, x=lengths, orientation="h", marker=marker, text=text, textposition="outside",
                           customdata=text, cliponaxis=False,
                           hovertemplate="%{y}<br>failing: %{customdata} patients<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(gridcolor=COLORS["grid"], zerolinecolor=COLORS["muted"])
    fig = _style(fig, title or "Change in patients failing each criterion", height=max(220, 90 + 34 * len(d)),
                 legend=False)
    return reserve_left(fig, ylab, 13)


# --------------------------------------------------------------------------- sites


def sites_figure(frame: pd.DataFrame, key: str = "site", title: str | None = None, top: int | None = None) -> go.Figure:
    """Screened, eligible optimistic and eligible strict per site (or country), nested bars.

    `frame` has `key`, screened, strict, optimistic (hidden cells as missing values).
    """
    f = frame.head(top) if top else frame
    ylab = [str(s) if key != "site" or "country" not in f else f"{s} · {c}" for s, c in
            zip(f[key], f["country"] if "country" in f else f[key], strict=True)]
    stub = stub_length(_num(f["screened"]))
    keys: list = []
    fig = go.Figure()
    for col, name, color, width in (("screened", "Screened", COLORS["screened"], 0.8),
                                    ("optimistic", "Eligible, optimistic", COLORS["optimistic"], 0.55),
                                    ("strict", "Eligible, strict", COLORS["strict"], 0.3)):
        vals = _num(f[col])
        lengths, marker, hidden = hidden_marker(vals, color, stub)
        _legend_entry(keys, name, color, hidden)
        fig.add_trace(go.Bar(y=ylab, x=lengths, orientation="h", name=name, width=width, marker=marker,
                             showlegend=not hidden.any(), legendgroup=name,
                             customdata=[fmt_int(v) for v in vals],
                             hovertemplate="%{y}<br>" + name + ": %{customdata}<extra></extra>"))
    hidden = [(y, ", ".join(n for n, c in (("screened", "screened"), ("optimistic", "optimistic"),
                                           ("strict", "strict")) if np.isnan(_num(f[c])[i])))
              for i, y in enumerate(ylab)]
    hidden = [(y, what) for y, what in hidden if what]
    if hidden:
        fig.add_trace(go.Scatter(y=[y for y, _ in hidden], x=[stub] * len(hidden), mode="text",
                                 text=[f"  {what} {HIDDEN}" for _, what in hidden], textposition="middle right",
                                 textfont=dict(color=COLORS["muted"], size=11), hoverinfo="skip", showlegend=False))
    fig.add_traces(keys)
    fig.update_layout(barmode="overlay", bargap=0.25)
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(gridcolor=COLORS["grid"], rangemode="tozero")
    return reserve_left(_style(fig, title, height=max(260, 130 + 24 * len(f))), ylab, 13)


# --------------------------------------------------------------------------- distributions


def distribution_figure(bins: pd.DataFrame, title: str, unit: str, limits: Sequence[Mapping],
                        passes: str, discrete: bool = False, missing: int = 0, n: int = 0,
                        height: int = 260) -> go.Figure:
    """Histogram of a measure with its limit(s) drawn as vertical lines.

    Bins are coloured by whether their middle meets the scenario's first limit
    (`passes` "ge" or "le"); protocol limits that a scenario changed are dashed.
    """
    x0, x1 = _num(bins["x0"]), _num(bins["x1"])
    counts = _num(bins["count"])
    mid = x0 if discrete else (x0 + x1) / 2
    current = next((lim for lim in limits if not str(lim.get("label", "")).startswith("protocol")), None)
    if current is not None:
        v = float(current["value"])
        ok = mid >= v if passes == "ge" else mid <= v
        colors = [COLORS["pass"] if o else COLORS["fail"] for o in ok]
    else:
        colors = [COLORS["protocol"]] * len(mid)
    lengths, marker, hidden = hidden_marker(counts, colors)
    label = [HIDDEN if h else "" for h in hidden]
    shown = [fmt_int(c) for c in counts]
    if discrete:
        fig = go.Figure(go.Bar(x=x0, y=lengths, marker=marker, width=0.7, text=label, textposition="outside",
                               customdata=shown, hovertemplate="%{x}: %{customdata} patients<extra></extra>"))
    else:
        fig = go.Figure(go.Bar(x=mid, y=lengths, width=(x1 - x0) * 0.95, marker=marker, text=label,
                               textposition="outside",
                               customdata=[[float(a), float(b), t] for a, b, t in zip(x0, x1, shown, strict=True)],
                               hovertemplate="%{customdata[0]:.4g} – %{customdata[1]:.4g}: %{customdata[2]} patients"
                                             "<extra></extra>"))
    for i, lim in enumerate(limits):
        is_protocol_only = str(lim.get("label", "")).startswith("protocol")
        x = float(lim["value"])
        if discrete:  # between the bars: the limit's own bar passes
            x += 0.5 if passes == "le" else -0.5
        fig.add_vline(x=x, line=dict(color=COLORS["protocol"] if is_protocol_only else COLORS["text"],
                                                       width=2, dash="dash" if is_protocol_only else "solid"))
        fig.add_annotation(x=x, y=1 - 0.13 * i, yref="paper", text=str(lim["label"]),
                           showarrow=False, xanchor="left", xshift=4, font=dict(size=12, color=COLORS["text"]),
                           bgcolor="rgba(255,255,255,0.85)")
    sub = f"{unit}" if unit else ""
    if n:
        sub += f"{' · ' if sub else ''}{missing:,} missing ({100 * missing / n:.1f}%)" if missing else \
            f"{' · ' if sub else ''}no missing values"
    full = f"{title}<br><span style='font-size:12px;color:{COLORS['muted']}'>{sub}</span>"
    fig.update_xaxes(showgrid=False, dtick=1 if discrete else None)
    fig.update_yaxes(gridcolor=COLORS["grid"], title_text=None)
    fig = _style(fig, full, height=height, legend=False)
    fig.update_layout(margin=dict(l=10, r=10, t=62, b=10), bargap=0.02)
    return fig


def category_figure(frame: pd.DataFrame, title: str, subtitle: str = "", height: int = 260) -> go.Figure:
    """Horizontal bars of categories coloured by verdict (frame: category, count, verdict)."""
    colors = [VERDICT_COLORS.get(v, COLORS["protocol"]) for v in frame["verdict"]]
    counts = _num(frame["count"])
    lengths, marker, _ = hidden_marker(counts, colors)
    fig = go.Figure(go.Bar(y=list(frame["category"]), x=lengths, orientation="h",
                           marker=marker, text=[fmt_int(c) for c in counts], textposition="outside",
                           cliponaxis=False, customdata=[[fmt_int(c), v] for c, v in zip(counts, frame["verdict"], strict=True)],
                           hovertemplate="%{y}: %{customdata[0]} patients (%{customdata[1]})<extra></extra>"))
    full = title + (f"<br><span style='font-size:12px;color:{COLORS['muted']}'>{subtitle}</span>" if subtitle else "")
    fig.update_xaxes(gridcolor=COLORS["grid"], rangemode="tozero")
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=11.5))
    fig = _style(fig, full, height=height, legend=False)
    fig.update_layout(margin=dict(l=10, r=40, t=62, b=10), bargap=0.25)
    return reserve_left(fig, [str(c) for c in frame["category"]], 11.5)


def coverage_figure(coverage: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Share of patients unknown on each assessable rule (rules with any unknowns)."""
    c = coverage[coverage["status"] != "n/a"].copy()
    c = c[_num(c["unknown_pct"]) > 0].sort_values("unknown_pct", ascending=False)
    colors = [COLORS["excluded"] if s == "mostly unknown" else COLORS["unknown"] if s == "often unknown"
              else "#f7cf8d" for s in c["status"]]
    ylab = [f"{r} · {short(lab, 34)}" for r, lab in zip(c["rule"], c["label"], strict=True)]
    fig = go.Figure(go.Bar(y=ylab,
                           x=_num(c["unknown_pct"]), orientation="h", marker=dict(color=colors),
                           text=[f"{p:.1f}%" for p in _num(c["unknown_pct"])], textposition="outside",
                           cliponaxis=False, hovertemplate="%{y}: %{x:.1f}% unknown<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(gridcolor=COLORS["grid"], ticksuffix="%", rangemode="tozero")
    fig = _style(fig, title or "Patients unknown on each rule", height=max(220, 90 + 22 * len(c)), legend=False)
    return reserve_left(fig, ylab, 13)


def figure_spec(fig: go.Figure) -> dict:
    """The figure as a plain dict (for tests and exports)."""
    return fig.to_plotly_json()
