"""State of the Recruitment page (pages/recruitment.py).

Persistent input values under `kn026.rec.*` (session.page_input), and per-session memos of the
site estimate, the forecasts and the figures. The computations are in kn026.forecast.recruitment.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui.results import compare_tables, site_tables, totals
from ui.session import K_DATA, PROTOCOL, Ctx, K, memo, page_input

# --- recruitment
# State of the Recruitment page (pages/recruitment.py): persistent input values under
# `kn026.rec.*` (widgets `kn026.w.rec.*`, seeded on every run like the sidebar, so the
# inputs survive page switches), and per-session memos of the site estimate, the
# forecasts and the figures. The computations themselves are in kn026.forecast.recruitment.

K_REC = K + "rec."


def rec_state(name: str, default) -> dict:
    """Keyword arguments (key, on_change, args) for Recruitment input `name` (session.page_input)."""
    return page_input("rec", name, default)


def rec_token() -> int:
    """Identity of the loaded cohort (memo keys, per-cohort defaults such as the approach share)."""
    return st.session_state[K_DATA].token


def rec_estimated_sites(ctx: Ctx):
    """(SiteInputs estimated from the cohort's site_id / screening_date, or None; why not)."""
    def build():
        from kn026.forecast import recruitment
        from kn026.forecast import sites as fsites

        frame = recruitment.cohort_site_frame(ctx.data.cohort)
        if frame is None:
            return None, "the cohort has no site_id and screening_date columns"
        try:
            return fsites.estimate_sites(frame), ""
        except ValueError as err:
            return None, str(err)

    return memo(("rec_sites", rec_token()), build)


def rec_totals(ctx: Ctx) -> dict[str, dict[str, int | None]]:
    """Funnel totals of the protocol and, when one is active, of the scenario, keyed by name;
    counts hidden by small-cell suppression are None (as on the Funnel page)."""
    active = totals(ctx)
    if ctx.is_protocol:
        return {PROTOCOL: active}
    tot = compare_tables(ctx)[0].masked().set_index("measure")
    base = {m: (None if pd.isna(tot.loc[m, "base"]) else int(tot.loc[m, "base"]))
            for m in ("strict", "optimistic", "unknown")}
    return {PROTOCOL: {"screened": active["screened"], **base}, ctx.scenario_name: active}


def rec_hidden_sites(ctx: Ctx) -> tuple[str, ...]:
    """Sites whose screened count the Sites page hides under small-cell suppression."""
    if not ctx.k:
        return ()
    tables = site_tables(ctx)
    if tables is None:
        return ()
    sites = tables[0]
    return tuple(sites.frame.loc[sites.hidden["screened"].to_numpy(), "site"].astype(str))


def rec_outcome(ctx: Ctx, plan, sites, bound: str, fraction: float | None, label: str, with_need: bool = True):
    """One bound's forecast for `plan` (memoised per cohort, plan, bound, fraction and label)."""
    from kn026.forecast import recruitment

    key = ("rec_run", rec_token(), plan, bound, fraction, label, with_need)
    return memo(key, lambda: recruitment.run_bound(plan, sites, bound, fraction, ctx.data.cohort.n,
                                                   label=label, with_need=with_need))


def rec_figure(name: str, key: tuple, build):
    """A Recruitment figure, built once per cohort and `key`."""
    return memo(("rec_fig", name, rec_token(), *key), build)
