"""Small-cell suppression for aggregate tables, with complementary suppression.

A count c with 0 < c < k (k = the threshold, 5 by default) is *primary* suppressed.
Hiding it is not enough when totals and the other cells of the same row or column
are shown: the hidden count comes back by subtraction. So the published cells are
described by the linear equations that tie them together (a row sums to its total,
a funnel step's remaining count is the previous one minus the loss, ...), and further
*complementary* cells are hidden until no hidden cell is determined by the visible
ones through those equations.

A hidden cell x_j is determined exactly when column j of the equation matrix,
restricted to the hidden cells, is linearly independent of the other hidden columns
(equivalently: every solution of the hidden system has the same x_j). That is tested
with one SVD per round: the hidden cells whose row in a null-space basis is zero are
determined. For each such cell one more cell is hidden, picked among the visible cells
of an equation that contains it: preferably the smallest count >= k (so the hidden
pair sums to at least k and the interval for the small cell stays wide), else the
smallest positive count, else any. Zero counts are never primary suppressed (an
empty cell is not a small cell).

This protects against exact recovery by linear combination (subtraction, addition
across rows and columns). Interval bounds from non-negativity are not optimised,
which is the usual trade-off of heuristic cell suppression.

Pure numpy / pandas; the table builders below describe the app's tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

DEFAULT_THRESHOLD = 5
HIDDEN_TEXT = "suppressed"


@dataclass(frozen=True)
class Cells:
    """Published cells and the equations among them (each equation sums to 0)."""

    values: np.ndarray  # int64, one per cell
    equations: tuple[tuple[tuple[int, int], ...], ...]  # ((cell, coefficient), ...)

    def matrix(self) -> np.ndarray:
        a = np.zeros((len(self.equations), len(self.values)))
        for r, eq in enumerate(self.equations):
            for cell, coef in eq:
                a[r, cell] += coef
        return a


def primary(values: np.ndarray, k: int) -> np.ndarray:
    """Cells to hide because they are small: 0 < value < k."""
    values = np.asarray(values)
    return (values > 0) & (values < k)


def determined(a: np.ndarray, hidden: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Boolean per cell: hidden and exactly recoverable from the visible cells."""
    out = np.zeros(len(hidden), bool)
    idx = np.flatnonzero(hidden)
    if not len(idx):
        return out
    h = a[:, idx]
    h = h[np.any(h != 0, axis=1)]
    if not len(h):
        return out  # no equation mentions a hidden cell: nothing to subtract from
    # Null space of h: right singular vectors beyond its rank.
    _, s, vt = np.linalg.svd(h, full_matrices=True)
    rank = int(np.sum(s > tol * max(1.0, s.max() if len(s) else 1.0)))
    null = vt[rank:].T  # (hidden cells, nullity)
    if null.shape[1] == 0:
        out[idx] = True
        return out
    free = np.any(np.abs(null) > 1e-7, axis=1)
    out[idx[~free]] = True
    return out


def suppress(cells: Cells, k: int, protect: np.ndarray | None = None,
             force: np.ndarray | None = None) -> np.ndarray:
    """Hidden mask: primary cells plus complementary cells until none is recoverable.

    `protect` marks cells that must stay visible (for example the grand total, the
    number screened, which is public anyway); they are never chosen as complements.
    `force` marks cells to hide whatever their value (already hidden elsewhere).
    """
    values = np.asarray(cells.values, dtype=np.int64)
    n = len(values)
    protect = np.zeros(n, bool) if protect is None else np.asarray(protect, bool)
    hidden = primary(values, k) & ~protect
    if force is not None:
        hidden |= np.asarray(force, bool) & ~protect
    if k <= 1 or not hidden.any():
        return hidden
    a = cells.matrix()
    by_cell: list[list[int]] = [[] for _ in range(n)]
    for r, eq in enumerate(cells.equations):
        for cell, _ in eq:
            by_cell[cell].append(r)
    stuck: set[int] = set()
    for _ in range(n + 1):
        exposed = [j for j in np.flatnonzero(determined(a, hidden)) if j not in stuck]
        if not exposed:
            return hidden
        touched: set[int] = set()  # equations that got a complement in this round
        for j in exposed:
            if touched.intersection(by_cell[j]):
                continue  # re-examined next round, after this round's complements
            pick = _complement(j, cells, by_cell, values, hidden, protect, k)
            if pick is None:
                pick = _wider_complement(j, a, cells, by_cell, values, hidden, protect, k)
            if pick is None:
                stuck.add(j)  # nothing hideable protects it (it follows from protected cells)
                continue
            hidden[pick] = True
            touched.update(by_cell[j])
            touched.update(by_cell[pick])
    return hidden


def _wider_complement(j: int, a: np.ndarray, cells: Cells, by_cell, values, hidden, protect, k: int,
                      tries: int = 40) -> int | None:
    """When every cell sharing an equation with `j` is hidden already, look further out.

    Walk the equations through hidden cells (the chain that pins `j` down), collect the
    visible cells met on the way, and take the first (smallest first) whose hiding
    leaves `j` undetermined; checked with the exact rank test, a few tries at most.
    """
    seen_eq, seen_cell, frontier = set(), {j}, [j]
    candidates = []
    while frontier:
        cell = frontier.pop()
        for r in by_cell[cell]:
            if r in seen_eq:
                continue
            seen_eq.add(r)
            for other, coef in cells.equations[r]:
                if not coef or other in seen_cell:
                    continue
                seen_cell.add(other)
                if hidden[other]:
                    frontier.append(other)
                elif not protect[other]:
                    candidates.append(other)
    candidates.sort(key=lambda c: (0 if values[c] >= k else 1 if values[c] > 0 else 2, int(values[c]), c))
    for c in candidates[:tries]:
        hidden[c] = True
        ok = not determined(a, hidden)[j]
        hidden[c] = False
        if ok:
            return c
    return None


def _complement(j: int, cells: Cells, by_cell, values, hidden, protect, k: int) -> int | None:
    """The cell to hide next to protect exposed cell `j` (None if every neighbour is protected).

    Preference: the candidate that opens the fewest new equations (an equation without
    any hidden cell, where the candidate would sit alone and be exposed in turn); then
    the one whose opened equation can be closed at once (a two-step look-ahead, so that
    suppression turns a corner and closes a rectangle instead of running along a row);
    then a count >= k, the smallest; then a positive count, then a zero.
    """
    candidates = set()
    for r in by_cell[j]:
        for cell, coef in cells.equations[r]:
            if coef and not hidden[cell] and not protect[cell]:
                candidates.add(cell)
    if not candidates:
        return None
    count: dict[int, int] = {}

    def n_hidden(r: int) -> int:
        if r not in count:
            count[r] = sum(1 for c, coef in cells.equations[r] if coef and hidden[c])
        return count[r]

    def opened(cell: int, extra: int | None = None) -> list[int]:
        out = []
        for r in by_cell[cell]:
            n = n_hidden(r) + (1 if extra is not None and r in by_cell[extra] else 0)
            if n == 0:
                out.append(r)
        return out

    def next_cost(cell: int, opens: list[int]) -> int:
        if not opens:
            return 0
        best = 99
        for r in opens:
            for d, coef in cells.equations[r]:
                if coef and d != cell and not hidden[d] and not protect[d]:
                    best = min(best, len(opened(d, extra=cell)))
                    if best == 0:
                        return 0
        return best

    def rank(cell: int):
        v = int(values[cell])
        opens = opened(cell)
        return (len(opens), next_cost(cell, opens), 0 if v >= k else 1 if v > 0 else 2, v, cell)

    return min(candidates, key=rank)


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Table:
    """A suppressed table: the original frame and a same-shaped boolean `hidden` frame."""

    frame: pd.DataFrame
    hidden: pd.DataFrame
    threshold: int

    @property
    def n_hidden(self) -> int:
        return int(self.hidden.to_numpy().sum())

    def masked(self) -> pd.DataFrame:
        """The frame with hidden cells as missing values (nullable dtypes), for display."""
        out = self.frame.copy()
        for col in self.hidden.columns:
            if self.hidden[col].any():
                series = out[col]
                if pd.api.types.is_integer_dtype(series.dtype):
                    series = series.astype("Int64")
                elif pd.api.types.is_float_dtype(series.dtype):
                    series = series.astype("Float64")
                else:
                    series = series.astype(object)
                out[col] = series.mask(self.hidden[col].to_numpy())
        return out

    def labelled(self, text: str = HIDDEN_TEXT) -> pd.DataFrame:
        """The frame with hidden cells replaced by `text`, for CSV / Excel export."""
        out = self.frame.copy()
        for col in self.hidden.columns:
            if self.hidden[col].any():
                out[col] = out[col].astype(object).where(~self.hidden[col].to_numpy(), text)
        return out


def unsuppressed(frame: pd.DataFrame) -> Table:
    return Table(frame, pd.DataFrame(False, index=frame.index, columns=frame.columns), 0)


class _Builder:
    """Collects cells of a frame (by row position and column) and equations among them."""

    def __init__(self, frame: pd.DataFrame, columns: Sequence[str]):
        self.frame = frame
        self.columns = list(columns)
        self.index: dict[tuple[int, str], int] = {}
        self.values: list[int] = []
        for i in range(len(frame)):
            for col in self.columns:
                self.add((i, col), frame[col].iloc[i])
        self.equations: list[tuple[tuple[int, int], ...]] = []

    def add(self, key, value) -> int:
        self.index[key] = len(self.values)
        self.values.append(int(round(float(value))) if pd.notna(value) else 0)
        return self.index[key]

    def eq(self, terms: Iterable[tuple[object, int]]) -> None:
        eq = tuple((self.index[key], coef) for key, coef in terms)
        if eq:
            self.equations.append(eq)

    def run(self, k: int, protect_keys=(), force_keys=(), absolute: bool = False) -> tuple[np.ndarray, dict]:
        values = np.array(self.values, dtype=np.int64)
        cells = Cells(np.abs(values) if absolute else values, tuple(self.equations))
        protect = np.zeros(len(self.values), bool)
        for key in protect_keys:
            if key in self.index:
                protect[self.index[key]] = True
        force = np.zeros(len(self.values), bool)
        for key in force_keys:
            if key in self.index:
                force[self.index[key]] = True
        return suppress(cells, k, protect, force), self.index

    def table(self, hidden: np.ndarray, k: int, also: dict[str, str] | None = None) -> Table:
        grid = np.zeros(self.frame.shape, bool)
        position = {col: j for j, col in enumerate(self.frame.columns)}
        for (i, col), cell in self.index.items():
            if isinstance(i, int) and col in position and hidden[cell]:
                grid[i, position[col]] = True
        mask = pd.DataFrame(grid, index=self.frame.index, columns=self.frame.columns)
        for dependent, source in (also or {}).items():
            if dependent in mask.columns and source in mask.columns:
                mask[dependent] = mask[dependent] | mask[source]
        return Table(self.frame, mask, k)


def suppress_margins(frame: pd.DataFrame, parts: Sequence[str], total: str, k: int,
                     sums: dict[str, Sequence[str]] | None = None,
                     totals_row: bool = True, also: dict[str, str] | None = None) -> Table:
    """A table whose `parts` columns add up to `total` in every row.

    `sums` adds further within-row identities (column -> the columns it is the sum of,
    e.g. optimistic = strict + unknown). With `totals_row`, every count column also
    adds up over the rows to a published grand total (the totals row is not part of
    `frame`; its cells are treated as visible and public, and are never hidden).
    `also` hides a dependent column (a percentage) wherever its source is hidden.
    """
    cols = [*parts, total, *[c for c in (sums or {}) if c not in parts and c != total]]
    b = _Builder(frame, cols)
    for i in range(len(frame)):
        b.eq([((i, c), 1) for c in parts] + [((i, total), -1)])
        for col, members in (sums or {}).items():
            b.eq([((i, c), 1) for c in members] + [((i, col), -1)])
    protect = []
    if totals_row and len(frame):
        for col in cols:
            key = ("total", col)
            b.add(key, frame[col].sum())
            protect.append(key)
            b.eq([((i, col), 1) for i in range(len(frame))] + [(key, -1)])
    hidden, _ = b.run(k, protect)
    return b.table(hidden, k, also)


def suppress_funnel(frame: pd.DataFrame, k: int) -> Table:
    """A funnel table (kn026.funnel.funnel columns; `unknown` or `unknown_so_far`): remaining, lost, unknown.

    Identities: optimistic = strict + unknown in each step; remaining at a step =
    remaining at the previous step - lost at this step, for both bounds. Row 0
    (screened) is public. Percentages are hidden with their counts.
    """
    unk = "unknown_so_far" if "unknown_so_far" in frame.columns else "unknown"
    cols = ["strict", "optimistic", unk, "lost_strict", "lost_optimistic"]
    cols = [c for c in cols if c in frame.columns]
    b = _Builder(frame, cols)
    for i in range(len(frame)):
        if {"strict", "optimistic", unk} <= set(cols):
            b.eq([((i, "strict"), 1), ((i, unk), 1), ((i, "optimistic"), -1)])
        if i:
            for bound in ("strict", "optimistic"):
                lost = f"lost_{bound}"
                if bound in cols and lost in cols:
                    b.eq([((i - 1, bound), 1), ((i, lost), -1), ((i, bound), -1)])
    protect = [(0, c) for c in cols]
    hidden, _ = b.run(k, protect)
    return b.table(hidden, k, {"pct_strict": "strict", "pct_optimistic": "optimistic"})


def suppress_independent(frame: pd.DataFrame, columns: Sequence[str], k: int,
                         also: dict[str, str] | None = None) -> Table:
    """Counts with no published identity among them (e.g. the top failure combinations)."""
    b = _Builder(frame, columns)
    hidden, _ = b.run(k)
    return b.table(hidden, k, also)


def suppress_compare(frame: pd.DataFrame, k: int, pairs: Sequence[str]) -> Table:
    """Protocol vs scenario: for each stat s, `s_base`, `s_other` and `s_delta` = other - base.

    A negative delta is a count of patients too: |delta| is its size for primary suppression.
    """
    cols = []
    for s in pairs:
        cols += [f"{s}_base", f"{s}_other", f"{s}_delta"]
    cols = [c for c in cols if c in frame.columns]
    b = _Builder(frame, cols)
    for i in range(len(frame)):
        for s in pairs:
            if {f"{s}_base", f"{s}_other", f"{s}_delta"} <= set(cols):
                b.eq([((i, f"{s}_other"), 1), ((i, f"{s}_base"), -1), ((i, f"{s}_delta"), -1)])
    hidden, _ = b.run(k, absolute=True)
    return b.table(hidden, k)


def suppress_totals(frame: pd.DataFrame, k: int, force: Sequence[tuple[str, str]] = ()) -> Table:
    """kn026.funnel.compare_totals: measure rows (screened, strict, optimistic, unknown).

    Identities per column: optimistic = strict + unknown; per row: other - base = delta.
    `force` lists (measure, column) cells already hidden elsewhere (the funnel's last row).
    """
    rows = list(frame["measure"])
    b = _Builder(frame, ["base", "other", "delta"])
    pos = {m: i for i, m in enumerate(rows)}
    for i in range(len(frame)):
        b.eq([((i, "other"), 1), ((i, "base"), -1), ((i, "delta"), -1)])
    if {"strict", "unknown", "optimistic"} <= set(pos):
        for col in ("base", "other", "delta"):
            b.eq([((pos["strict"], col), 1), ((pos["unknown"], col), 1), ((pos["optimistic"], col), -1)])
    protect = [(pos["screened"], col) for col in ("base", "other") if "screened" in pos]
    forced = [(pos[m], col) for m, col in force if m in pos]
    hidden, _ = b.run(k, protect, forced, absolute=True)
    return b.table(hidden, k)


def suppress_attrition(frame: pd.DataFrame, k: int) -> Table:
    """The combined attrition table (kn026.export.attrition_frame): funnel and criterion stats.

    Identities: optimistic = strict + unknown_so_far per step; remaining(step) =
    remaining(step - 1) - lost(step) for both bounds; at the first criterion the
    optimistic loss equals its failures and the strict loss its failures plus unknowns.
    The screened row is public. Unique failures and unknowns on a criterion are small
    counts of their own; Shapley shares are hidden with their criterion's failures or
    when they round below k; percentages with their counts.
    """
    cols = [c for c in ("strict", "optimistic", "unknown_so_far", "lost_strict", "lost_optimistic",
                        "failed", "unique", "unknown") if c in frame.columns]
    b = _Builder(frame, cols)
    for i in range(len(frame)):
        b.eq([((i, "strict"), 1), ((i, "unknown_so_far"), 1), ((i, "optimistic"), -1)])
        if i:
            for bound in ("strict", "optimistic"):
                b.eq([((i - 1, bound), 1), ((i, f"lost_{bound}"), -1), ((i, bound), -1)])
    if len(frame) > 1 and {"failed", "unknown"} <= set(cols):
        b.eq([((1, "lost_optimistic"), 1), ((1, "failed"), -1)])
        b.eq([((1, "lost_strict"), 1), ((1, "failed"), -1), ((1, "unknown"), -1)])
    protect = [(0, c) for c in ("strict", "optimistic", "unknown_so_far", "lost_strict", "lost_optimistic")]
    hidden, _ = b.run(k, protect)
    table = b.table(hidden, k, {"pct_strict": "strict", "pct_optimistic": "optimistic"})
    mask = table.hidden
    for col in ("shapley_strict", "shapley_optimistic"):
        if col in frame.columns:
            vals = pd.to_numeric(frame[col], errors="coerce").fillna(0).to_numpy(dtype=float)
            mask[col] = primary(np.rint(vals).astype(np.int64), k) | (mask["failed"] if "failed" in mask else False)
    return Table(frame, mask, k)


def suppress_parts(values: Sequence[int], total: int, k: int) -> np.ndarray:
    """Hidden mask for counts that add up to a public total (histogram bins + missing)."""
    vals = np.asarray([int(v) for v in values] + [int(total)], dtype=np.int64)
    eq = tuple((i, 1) for i in range(len(vals) - 1)) + ((len(vals) - 1, -1),)
    protect = np.zeros(len(vals), bool)
    protect[-1] = True
    return suppress(Cells(vals, (eq,)), k, protect)[:-1]


def suppress_sites(sites: pd.DataFrame, countries: pd.DataFrame, k: int,
                   columns: Sequence[str] = ("screened", "strict", "optimistic", "unknown"),
                   identities: Sequence[tuple[str, Sequence[str]]] = (("optimistic", ("strict", "unknown")),),
                   also: dict[str, str] | None = None) -> tuple[Table, Table]:
    """Per-site and per-country tables suppressed together.

    A country's counts are the sums of its sites', so hiding a site's cell while the
    country row shows the same number (a one-site country) would give it away. Both
    tables go into one system: within-row identities (column = sum of members, by
    default optimistic = strict + unknown), each country = the sum of its sites, and
    the grand totals (public, never hidden) = the sum of the countries.
    """
    also = {"pct_strict": "strict", "pct_optimistic": "optimistic"} if also is None else also
    cols = list(columns)
    values: list[int] = []
    index: dict[tuple, int] = {}

    def add(key, value) -> None:
        index[key] = len(values)
        values.append(int(value) if pd.notna(value) else 0)

    frames = {"site": sites.reset_index(drop=True), "country": countries.reset_index(drop=True)}
    for name, frame in frames.items():
        for i in range(len(frame)):
            for c in cols:
                add((name, i, c), frame[c].iloc[i])
    for c in cols:
        add(("total", 0, c), frames["site"][c].sum())
    equations = []
    for name, frame in frames.items():
        for i in range(len(frame)):
            for col, members in identities:
                equations.append(tuple((index[(name, i, c)], 1) for c in members) + ((index[(name, i, col)], -1),))
    site_rows: dict[object, list[int]] = {}
    for i, country in enumerate(frames["site"]["country"]):
        site_rows.setdefault(country, []).append(i)
    for j, country in enumerate(frames["country"]["country"]):
        for c in cols:
            equations.append(tuple((index[("site", i, c)], 1) for i in site_rows.get(country, []))
                             + ((index[("country", j, c)], -1),))
    for c in cols:
        equations.append(tuple((index[("country", j, c)], 1) for j in range(len(frames["country"])))
                         + ((index[("total", 0, c)], -1),))
    protect = np.zeros(len(values), bool)
    for c in cols:
        protect[index[("total", 0, c)]] = True
    hidden = suppress(Cells(np.array(values, dtype=np.int64), tuple(equations)), k, protect)
    out = []
    for name, frame in frames.items():
        grid = np.zeros(frame.shape, bool)
        position = {col: j for j, col in enumerate(frame.columns)}
        for i in range(len(frame)):
            for c in cols:
                if c in position and hidden[index[(name, i, c)]]:
                    grid[i, position[c]] = True
        mask = pd.DataFrame(grid, index=frame.index, columns=frame.columns)
        for dependent, source in also.items():
            if dependent in mask.columns and source in mask.columns:
                mask[dependent] = mask[dependent] | mask[source]
        out.append(Table(frame, mask, k))
    return out[0], out[1]
