"""Figures of a recruitment forecast (pure plotly): the fan chart and each site's contribution."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kn026.forecast.model import ForecastResult
from kn026.forecast.sites import to_date

# ---------------------------------------------------------------------------
# Figures (pure plotly)
# ---------------------------------------------------------------------------
_BLUE, _ORANGE = "31,119,180", "255,127,14"


def fan_chart(result: ForecastResult, other: ForecastResult | None = None, deadline=None,
              title: str | None = None):
    """Cumulative enrolment over time: median line, 50 / 80 / 95 % bands, expected (mean)
    curve, the target and optionally a deadline; `other` overlays a second forecast."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for res, rgb in ((result, _BLUE), (other, _ORANGE)):
        if res is None:
            continue
        cv = res.curve
        x = pd.to_datetime(cv["date"])
        name = res.label or "Forecast"
        bands = ((("q025", "q975"), 0.12, "95 %"), (("q10", "q90"), 0.2, "80 %"), (("q25", "q75"), 0.3, "50 %"))
        if res is other:
            bands = bands[1:2]
        for (lo, hi), alpha, txt in bands:
            fig.add_trace(go.Scatter(x=x, y=cv[hi], mode="lines", line={"width": 0}, showlegend=False,
                                     hoverinfo="skip", legendgroup=name + txt))
            fig.add_trace(go.Scatter(x=x, y=cv[lo], mode="lines", line={"width": 0}, fill="tonexty",
                                     fillcolor=f"rgba({rgb},{alpha})", name=f"{name}: {txt} band",
                                     legendgroup=name + txt, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=x, y=cv["q50"], mode="lines", line={"color": f"rgb({rgb})", "width": 2},
                                 name=f"{name}: median", line_shape="hv"))
        fig.add_trace(go.Scatter(x=x, y=cv["mean"], mode="lines",
                                 line={"color": f"rgb({rgb})", "width": 1, "dash": "dot"},
                                 name=f"{name}: expected (closed form)"))
        if res.remaining > 0 and np.isfinite(res.median):
            md = res.date_at(res.median)
            fig.add_trace(go.Scatter(x=[md], y=[res.target], mode="markers",
                                     marker={"color": f"rgb({rgb})", "size": 9, "symbol": "diamond"},
                                     name=f"{name}: median {md}"))
    fig.add_hline(y=result.target, line={"color": "grey", "dash": "dash"},
                  annotation_text=f"target {result.target}", annotation_position="top left",
                  annotation_xshift=8)
    if deadline is not None:
        dl = to_date(deadline, "deadline")
        fig.add_vline(x=pd.Timestamp(dl).value / 1e6, line={"color": "firebrick", "dash": "dash"})
        fig.add_annotation(x=pd.Timestamp(dl), y=1, yref="paper", showarrow=False, yanchor="bottom",
                           text=f"deadline {dl}: P = {result.probability_by(dl):.2f}")
    fig.update_layout(title=title or f"Enrolment forecast ({result.n_sims} simulated trials)",
                      xaxis_title=None, yaxis_title="patients enrolled", hovermode="x unified",
                      legend={"orientation": "h", "y": -0.1, "yanchor": "top"}, margin={"t": 60})
    return fig


def site_contribution_chart(result: ForecastResult, top: int = 40, title: str | None = None):
    """Horizontal bars: expected patients each site contributes to the target (largest first)."""
    import plotly.express as px

    tab = result.site_contribution.sort_values("expected_enrolled", ascending=False).head(top)
    tab = tab.assign(country=tab["country"].fillna("unknown").astype(str),
                     share_pct=100 * tab["share"])
    fig = px.bar(tab.iloc[::-1], x="expected_enrolled", y="site_id", color="country", orientation="h",
                 hover_data={"rate_mean": ":.2f", "rate_lo": ":.2f", "rate_hi": ":.2f",
                             "activation_month": ":.1f", "share_pct": ":.1f"},
                 labels={"expected_enrolled": f"expected patients of the {result.remaining} to enrol",
                         "site_id": "site", "rate_mean": "screened / month",
                         "rate_lo": "rate 10 %", "rate_hi": "rate 90 %", "share_pct": "share %"})
    fig.update_layout(title=title or "Expected contribution per site", yaxis={"categoryorder": "total ascending"},
                      height=max(300, 22 * len(tab) + 120))
    return fig
