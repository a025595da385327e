"""Small-cell suppression: the app's entry points (one table at a time) over the one step.

Every function here declares its table to a `kn026.report.workbook.Workbook` (identities from
`kn026.report.published`) and runs the single suppression step of `kn026.report.protection`: primary
cells (0 < count < k) plus complementary cells until, for every hidden cell, the
smallest and largest value that the visible cells, the identities and non-negativity
allow differ by at least k (a linear programme per hidden group). See
docs/security.md for what is protected and the limits.

Tables suppressed one call at a time are protected within the table (and its public
totals). Tables published together (an export, the report) must be suppressed together
so that a quantity shown in two of them is hidden in both: build one `Workbook`
(`kn026.feasibility.report.release` does it for the report's tables).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kn026.report import published
from kn026.report.protection import (  # noqa: F401 - the step's API, re-exported
    CMS_THRESHOLD,
    DEFAULT_THRESHOLD,
    THRESHOLDS,
    Cells,
    Protection,
    determined,
    intervals,
    primary,
    protect_cells,
    suppress,
)
from kn026.report.workbook import HIDDEN_TEXT, Published, Table, Workbook, unsuppressed  # noqa: F401


def threshold(value: int | str | None) -> int:
    """A threshold from a number or a named rule ("default" 5, "cms" 11); 0 / None: off."""
    if value is None:
        return 0
    if isinstance(value, str):
        key = value.strip().lower()
        if key in THRESHOLDS:
            return THRESHOLDS[key]
        try:
            value = int(key)
        except ValueError:
            raise ValueError(f"unknown suppression threshold {value!r}; give a number (0 = off) or one of "
                             f"{', '.join(f'{k} ({v})' for k, v in THRESHOLDS.items())}") from None
    value = int(value)
    if value < 0:
        raise ValueError(f"the suppression threshold must be >= 0 (0 = off), not {value}")
    return value if value > 1 else 0


def suppress_margins(frame: pd.DataFrame, parts: Sequence[str], total: str, k: int,
                     sums: dict[str, Sequence[str]] | None = None,
                     totals_row: bool = True, also: dict[str, str] | None = None) -> Table:
    """A table whose `parts` columns add up to `total` in every row.

    `sums` adds further within-row identities (column -> the columns it is the sum of,
    e.g. optimistic = strict + unknown). With `totals_row`, every count column also
    adds up over the rows to a public grand total (not part of `frame`, never hidden).
    `also` hides a dependent column (a percentage) wherever its source is hidden.
    """
    cols = [*parts, total, *[c for c in (sums or {}) if c not in parts and c != total]]
    wb = Workbook(k)
    name = "table"
    wb.add(name, frame, cols, derived=also)
    for i in range(len(frame)):
        wb.equation([((name, i, c), 1) for c in parts] + [((name, i, total), -1)])
        for col, members in (sums or {}).items():
            wb.equation([((name, i, c), 1) for c in members] + [((name, i, col), -1)])
    if totals_row and len(frame):
        for col in cols:
            t = wb.constant(f"total.{col}", float(pd.to_numeric(frame[col]).sum()))
            wb.equation([((name, i, col), 1) for i in range(len(frame))] + [(t, -1)])
    return wb.suppress()[name]


def suppress_funnel(frame: pd.DataFrame, k: int) -> Table:
    """A funnel table (kn026.core.funnel.funnel columns): remaining, lost, unknown; row 0 public."""
    wb = Workbook(k)
    published.attrition(wb, frame, "funnel")
    return wb.suppress()["funnel"]


def suppress_attrition(frame: pd.DataFrame, k: int, restrictive: bool = False) -> Table:
    """The combined attrition table (kn026.report.export.attrition_frame): funnel and criterion stats."""
    wb = Workbook(k)
    published.attrition(wb, frame, "attrition", restrictive=restrictive)
    return wb.suppress()["attrition"]


def suppress_independent(frame: pd.DataFrame, columns: Sequence[str], k: int,
                         also: dict[str, str] | None = None) -> Table:
    """Counts with no published identity among them (a list of combinations, sorted or not)."""
    wb = Workbook(k)
    published.independent(wb, "table", frame, columns, also)
    f = frame.reset_index(drop=True)
    for col in columns:  # a list sorted by a count tells the order of its cells
        values = pd.to_numeric(f[col], errors="coerce").to_numpy(float)
        if len(values) > 1 and not np.isnan(values).any() and np.all(values[1:] <= values[:-1]):
            for i in range(len(f) - 1):
                wb.at_most([(("table", i + 1, col), 1), (("table", i, col), -1)])
    return wb.suppress()["table"]


def suppress_compare(frame: pd.DataFrame, k: int, pairs: Sequence[str]) -> Table:
    """Protocol vs scenario per criterion: `s_base`, `s_other`, `s_delta` = other - base for s in `pairs`."""
    stats = list(pairs)
    if "failed" in stats and "marginal_base" in frame.columns and "marginal" not in stats:
        stats.append("marginal")  # the same numbers as failed: hidden with them
    wb = Workbook(k)
    published.compare_deltas(wb, frame, "deltas", attrition_name=None, totals_name=None, stats=stats)
    return wb.suppress()["deltas"]


def suppress_totals(frame: pd.DataFrame, k: int, force: Sequence[tuple[str, str]] = ()) -> Table:
    """kn026.core.funnel.compare_totals: measure rows (screened, strict, optimistic, unknown).

    `force` lists (measure, column) cells already hidden elsewhere (the funnel's last row):
    they are hidden here whatever their value.
    """
    wb = Workbook(k)
    published.compare_totals(wb, frame, "totals", attrition_name=None)
    pos = {m: i for i, m in enumerate(frame["measure"])}
    for m, col in force:
        if m in pos and wb.has(("totals", pos[m], col)):
            wb.small[wb.cell(("totals", pos[m], col))] = True
    return wb.suppress()["totals"]


def suppress_parts(values: Sequence[int], total: int, k: int) -> np.ndarray:
    """Hidden mask for counts that add up to a public total (histogram bins + missing)."""
    if k <= 1:
        return np.zeros(len(values), bool)
    vals = np.asarray([int(v) for v in values] + [int(total)], dtype=np.int64)
    eq = (tuple((i, 1) for i in range(len(vals) - 1)) + ((len(vals) - 1, -1),),)
    protect = np.zeros(len(vals), bool)
    protect[-1] = True
    return suppress(Cells(vals, eq), k, protect)[:-1]


def suppress_sites(sites: pd.DataFrame, countries: pd.DataFrame, k: int,
                   columns: Sequence[str] = published.SITE_COUNTS) -> tuple[Table, Table]:
    """Per-site and per-country tables suppressed together (a country is the sum of its sites;
    screened = optimistic + excluded and optimistic = strict + unknown in every row; the
    grand totals are public)."""
    wb = Workbook(k)
    published.sites(wb, sites, countries, ("sites", "countries"), attrition_name=None, columns=columns)
    out = wb.suppress()
    return out["sites"], out["countries"]
