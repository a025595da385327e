"""Cell protection: which published counts to hide so that arithmetic cannot recover them.

The one suppression step behind every aggregate the app and the report publish
(tables, charts, CSV, Excel, HTML, slides, site histograms). The caller describes the
published cells (`Cells`): their values, the linear identities among them that a
reader can use (equations: a row adds up to its total, a funnel step is the previous
one minus its losses, the same quantity in two tables; inequalities: unique failures
never exceed failures), a lower bound per cell (0 for a count, none for a change) and
which cells are public (the number screened). `protect` then hides:

1. *primary* cells: counts with 0 < value < k (k = the threshold, 5 by default);
2. *complementary* cells, until every hidden cell is protected: with the visible
   cells fixed, the identities and the bounds as constraints, the smallest and the
   largest value the hidden cell can take (two linear programmes, HiGHS through
   `scipy.optimize.linprog`) differ by at least k.

Step 2 runs in two phases per round. A cheap exact phase first: a hidden cell that the
equations pin down exactly (an SVD of the hidden columns: its row in a null-space basis
is zero) gets a neighbour hidden with it, picked structurally (see `_complement`). Then
the LP phase computes the interval of every hidden cell, one connected group of hidden
cells at a time (cells that share no identity with another hidden cell are solved
alone, and a group that did not change is not solved again), and widens the narrowest
interval of each group with one more cell. Rounds repeat until nothing is too narrow.

Zero counts are never primary (an empty cell is not a small cell) but may be hidden as
complements. The guarantee holds for the identities declared and for the LP relaxation
(continuous values); integer intervals are rounded inwards before the width test. A
hidden cell that the public cells alone determine cannot be protected by hiding
anything; it is reported in `Protection.unprotected`, never silently left.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

DEFAULT_THRESHOLD = 5
CMS_THRESHOLD = 11  # the CMS / PCORnet cell-size rule: no count of 1-10 may be published
THRESHOLDS = {"default": DEFAULT_THRESHOLD, "cms": CMS_THRESHOLD}
_EPS = 1e-6

Row = tuple[tuple[int, float], ...]  # ((cell, coefficient), ...)


@dataclass(frozen=True)
class Cells:
    """Published cells and what a reader knows about them.

    `equations`: each sums to 0; `inequalities`: each sums to <= 0 (coefficients may be
    any real number). `lower`: per-cell lower bound (default 0: counts; -inf for a
    change that may be negative). `integer`: per-cell, whether the value is a whole
    count (default True; Shapley shares are not).
    """

    values: np.ndarray
    equations: tuple[Row, ...]
    inequalities: tuple[Row, ...] = ()
    lower: np.ndarray | None = None
    integer: np.ndarray | None = None

    def matrix(self) -> np.ndarray:
        a = np.zeros((len(self.equations), len(self.values)))
        for r, eq in enumerate(self.equations):
            for cell, coef in eq:
                a[r, cell] += coef
        return a

    def lower_bounds(self) -> np.ndarray:
        n = len(self.values)
        return np.zeros(n) if self.lower is None else np.asarray(self.lower, dtype=float)

    def integers(self) -> np.ndarray:
        n = len(self.values)
        return np.ones(n, bool) if self.integer is None else np.asarray(self.integer, bool)


@dataclass
class Protection:
    """The outcome of `protect_cells`: hidden mask, cells left unprotected, and timing.

    (The intervals themselves: `intervals(cells, hidden)`.)"""

    hidden: np.ndarray
    unprotected: list[int] = field(default_factory=list)  # hidden cells no hiding can protect
    seconds: float = 0.0
    rounds: int = 0
    lps: int = 0


def primary(values: np.ndarray, k: int) -> np.ndarray:
    """Cells to hide because they are small: 0 < value < k (use |value| for changes)."""
    values = np.asarray(values)
    return (values > 0) & (values < k)


def determined(a: np.ndarray, hidden: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Boolean per cell: hidden and exactly recoverable from the visible cells (equations only).

    x_j is determined exactly when every solution of the hidden part of the system has
    the same x_j, i.e. when row j of a null-space basis of the hidden columns is zero.
    The hidden columns split into independent blocks (cells linked by shared equations);
    each block's null space comes from the eigenvectors of H^T H with a zero eigenvalue.
    """
    out = np.zeros(len(hidden), bool)
    idx = np.flatnonzero(hidden)
    if not len(idx):
        return out
    h = a[:, idx]
    h = h[np.any(h != 0, axis=1)]
    if not len(h):
        return out  # no equation mentions a hidden cell: nothing to subtract from
    for cols in _blocks(h):
        block = h[:, cols]
        block = block[np.any(block != 0, axis=1)]
        gram = block.T @ block
        w, v = np.linalg.eigh(gram)
        null = v[:, w <= tol * max(1.0, float(w.max()))]
        if null.shape[1] == 0:
            out[idx[cols]] = True
            continue
        free = np.any(np.abs(null) > 1e-7, axis=1)
        out[idx[cols][~free]] = True
    return out


def _blocks(h: np.ndarray) -> list[np.ndarray]:
    """Column groups of `h` that share no row (connected components), as index arrays."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    b = csr_matrix(h != 0, dtype=np.int8)
    _, labels = connected_components(b.T @ b, directed=False)
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, cuts)


def suppress(cells: Cells, k: int, protect: np.ndarray | None = None, force: np.ndarray | None = None,
             small: np.ndarray | None = None) -> np.ndarray:
    """Hidden mask (see `protect`)."""
    return protect_cells(cells, k, protect, force, small).hidden


def protect_cells(cells: Cells, k: int, protect: np.ndarray | None = None, force: np.ndarray | None = None,
                  small: np.ndarray | None = None, keep: np.ndarray | None = None) -> Protection:
    """Primary cells plus complementary cells until every hidden cell's interval is >= k wide.

    `protect` marks public cells (never hidden, never chosen as complements); `force`
    cells to hide whatever their value; `small` overrides the primary rule
    (default: 0 < value < k); `keep` marks cells to hide as complements only when no
    other cell will do (the eligible counts a report is read for).

    Hiding a cell only frees a value that was fixed, so intervals never shrink as cells
    are added: a cell found protected stays protected, and each round re-checks only
    the cells that were not (one LP for the largest value, a second only when that
    alone does not reach k).
    """
    start = time.perf_counter()
    values = np.asarray(cells.values, dtype=float)
    n = len(values)
    protect = np.zeros(n, bool) if protect is None else np.asarray(protect, bool)
    small = primary(values, k) if small is None else np.asarray(small, bool)
    hidden = small & ~protect
    if force is not None:
        hidden |= np.asarray(force, bool) & ~protect
    if k <= 1 or not hidden.any():
        return Protection(hidden, seconds=time.perf_counter() - start)
    with _one_blas_thread():
        return _protect(cells, k, protect, hidden, start, keep)


def _protect(cells: Cells, k: int, protect: np.ndarray, hidden: np.ndarray, start: float,
             keep: np.ndarray | None) -> Protection:
    n = len(hidden)
    solver = _Solver(cells, protect, keep)
    stuck: set[int] = set()
    ok: set[int] = set()
    rounds = 0
    for rounds in range(1, n + 2):  # noqa: B007 - each round hides at least one cell or stops
        solver.close(hidden, k, stuck)
        todo = [int(j) for j in np.flatnonzero(hidden) if j not in ok and j not in stuck]
        width = solver.check(hidden, todo, k)
        ok.update(j for j in todo if width[j] >= k - 1e-9)
        bad = sorted((j for j in todo if width[j] < k - 1e-9), key=lambda j: (width[j], j))
        if not bad:
            break
        touched: set[int] = set()
        progressed = False
        for j in bad:
            if touched.intersection(solver.by_cell[j]):
                continue  # re-checked next round, after this round's complements
            pick = solver.widen(j, hidden, k - width[j])
            if pick is None:
                stuck.add(j)
                continue
            hidden[pick] = True
            touched.update(solver.by_cell[j])
            touched.update(solver.by_cell[pick])
            progressed = True
        if not progressed:
            break
    rest = [int(j) for j in np.flatnonzero(hidden) if j not in ok]  # stuck on the way, maybe freed since
    width = solver.check(hidden, rest, k) if rest else {}
    unprotected = sorted(j for j in rest if width[j] < k - 1e-9)
    return Protection(hidden, unprotected, time.perf_counter() - start, rounds, solver.lps)


def intervals(cells: Cells, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest value of every hidden cell given the visible ones (visible: their value)."""
    return _Solver(cells, np.zeros(len(cells.values), bool)).intervals(np.asarray(hidden, bool))


@contextmanager
def _one_blas_thread():
    """Run the many small eigen-decompositions on this thread's BLAS alone.

    OpenBLAS spreads even small matrices over its threads; on a shared two-core machine
    that made each call 10-30 times slower. `openblas_set_num_threads_local` changes
    the calling thread only (OpenBLAS >= 0.3.27, the one bundled with numpy); anything
    else leaves BLAS as it is.
    """
    setter = _blas_local_threads()
    previous = None
    if setter is not None:
        try:
            previous = setter(1)
        except Exception:  # noqa: BLE001 - never fail suppression over a speed setting
            setter = None
    try:
        yield
    finally:
        if setter is not None and previous is not None and previous > 0:
            setter(previous)


def _blas_local_threads():
    global _BLAS_SETTER
    if _BLAS_SETTER is False:
        import ctypes
        import glob
        import os

        _BLAS_SETTER = None
        libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs", "*openblas*")
        for path in glob.glob(libs):
            try:
                fn = ctypes.CDLL(path).openblas_set_num_threads_local
            except (OSError, AttributeError):
                continue
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            _BLAS_SETTER = fn
            break
    return _BLAS_SETTER


_BLAS_SETTER: object = False


class _Solver:
    """The constraint structure of `Cells`, with the hidden-group LPs cached per group."""

    def __init__(self, cells: Cells, protect: np.ndarray, keep: np.ndarray | None = None):
        self.cells = cells
        self.keep = np.zeros(len(cells.values), bool) if keep is None else np.asarray(keep, bool)
        self.values = np.asarray(cells.values, dtype=float)
        self.lower = cells.lower_bounds()
        self.integer = cells.integers()
        self.protect = protect
        self.rows: list[Row] = [tuple((c, float(a)) for c, a in r if a) for r in cells.equations]
        self.n_eq = len(self.rows)
        self.rows += [tuple((c, float(a)) for c, a in r if a) for r in cells.inequalities]
        n = len(self.values)
        self.by_cell: list[list[int]] = [[] for _ in range(n)]
        for r, row in enumerate(self.rows):
            for c, _ in row:
                self.by_cell[c].append(r)
        self.a = cells.matrix()
        self.lps = 0

    # ---------------------------------------------------------------- exact phase
    def close(self, hidden: np.ndarray, k: int, stuck: set[int]) -> None:
        """Hide complements until no hidden cell is exactly determined by the equations."""
        if not self.n_eq:
            return
        for _ in range(len(hidden) + 1):
            exposed = [j for j in np.flatnonzero(determined(self.a, hidden)) if j not in stuck]
            if not exposed:
                return
            touched: set[int] = set()
            for j in exposed:
                eqs = [r for r in self.by_cell[j] if r < self.n_eq]
                if touched.intersection(eqs):
                    continue  # re-examined next round, after this round's complements
                pick = self._complement(j, hidden, k, equations_only=True)
                if pick is None:
                    pick = self._wider(j, hidden)
                if pick is None:
                    stuck.add(j)  # nothing hideable protects it (it follows from public cells)
                    continue
                hidden[pick] = True
                touched.update(eqs)
                touched.update(r for r in self.by_cell[pick] if r < self.n_eq)

    def _complement(self, j: int, hidden: np.ndarray, need: float, equations_only: bool = False,
                    cells: Sequence[int] | None = None) -> int | None:
        """The cell to hide next to protect `j` (None if every neighbour is public or hidden).

        Preference: the candidate that opens the fewest new identities (one without any
        hidden cell, where the candidate would sit alone and be exposed in turn); then
        the one whose opened identity can be closed at once (a two-step look-ahead, so
        that suppression turns a corner and closes a rectangle instead of running along
        a row); then a count of at least `need`, the smallest; then a positive count,
        then a zero.
        """
        limit = self.n_eq if equations_only else len(self.rows)
        rows = {r for c in (cells if cells is not None else [j]) for r in self.by_cell[c] if r < limit}
        candidates = {c for r in rows for c, _ in self.rows[r] if not hidden[c] and not self.protect[c]}
        if not candidates:
            return None
        count: dict[int, int] = {}

        def n_hidden(r: int) -> int:
            if r not in count:
                count[r] = sum(1 for c, _ in self.rows[r] if hidden[c])
            return count[r]

        def opened(cell: int, extra: int | None = None) -> list[int]:
            extra_rows = set(self.by_cell[extra]) if extra is not None else set()
            return [r for r in self.by_cell[cell] if r < self.n_eq
                    and n_hidden(r) + (1 if r in extra_rows else 0) == 0]

        def next_cost(cell: int, opens: list[int]) -> int:
            if not opens:
                return 0
            best = 99
            for r in opens:
                for d, _ in self.rows[r]:
                    if d != cell and not hidden[d] and not self.protect[d]:
                        best = min(best, len(opened(d, extra=cell)))
                        if best == 0:
                            return 0
            return best

        def rank(cell: int):
            v = abs(self.values[cell])
            opens = opened(cell)
            return (bool(self.keep[cell]), len(opens), next_cost(cell, opens), 0 if v >= need else 1 if v > 0 else 2,
                    v, cell)

        return min(candidates, key=rank)

    def _wider(self, j: int, hidden: np.ndarray, tries: int = 40) -> int | None:
        """When every cell sharing an equation with `j` is hidden already, look further out:
        walk the equations through hidden cells and take the first visible cell met (smallest
        first) whose hiding leaves `j` undetermined."""
        seen_eq, seen_cell, frontier = set(), {j}, [j]
        candidates = []
        while frontier:
            cell = frontier.pop()
            for r in self.by_cell[cell]:
                if r >= self.n_eq or r in seen_eq:
                    continue
                seen_eq.add(r)
                for other, _ in self.rows[r]:
                    if other in seen_cell:
                        continue
                    seen_cell.add(other)
                    if hidden[other]:
                        frontier.append(other)
                    elif not self.protect[other]:
                        candidates.append(other)
        candidates.sort(key=lambda c: (bool(self.keep[c]), 0 if self.values[c] > 0 else 1, abs(self.values[c]), c))
        rows = sorted(seen_eq)
        near = np.zeros(len(hidden), bool)  # only the hidden cells of the chain matter for j
        near[[c for c in seen_cell if hidden[c]]] = True
        for c in candidates[:tries]:
            near[c] = True
            ok = not determined(self.a[rows], near)[j]
            near[c] = False
            if ok:
                return c
        return None

    # ---------------------------------------------------------------- LP phase
    def widen(self, j: int, hidden: np.ndarray, need: float) -> int | None:
        """One more cell to hide so that `j`'s interval can grow: a neighbour of `j`, else (or when
        that neighbour is a cell to keep) a neighbour of any cell of its group."""
        pick = self._complement(j, hidden, need)
        if pick is None or self.keep[pick]:
            members = next((g for g in self.groups(hidden) if j in g), (j,))
            alt = self._complement(j, hidden, need, cells=members)
            if alt is not None and (pick is None or not self.keep[alt]):
                pick = alt
        if pick is None:
            pick = self._wider(j, hidden)
        return pick

    def groups(self, hidden: np.ndarray) -> list[tuple[int, ...]]:
        """Hidden cells grouped by shared identities (connected components)."""
        idx = [int(c) for c in np.flatnonzero(hidden)]
        parent = {c: c for c in idx}

        def find(c: int) -> int:
            while parent[c] != c:
                parent[c] = parent[parent[c]]
                c = parent[c]
            return c

        seen_rows: set[int] = set()
        for c in idx:
            for r in self.by_cell[c]:
                if r in seen_rows:
                    continue
                seen_rows.add(r)
                members = [d for d, _ in self.rows[r] if hidden[d]]
                for d in members[1:]:
                    a, b = find(members[0]), find(d)
                    if a != b:
                        parent[b] = a
        out: dict[int, list[int]] = {}
        for c in idx:
            out.setdefault(find(c), []).append(c)
        return [tuple(sorted(g)) for g in out.values()]

    def check(self, hidden: np.ndarray, cells: list[int], k: int) -> np.ndarray:
        """Interval widths of `cells` (others: inf); stops at the largest value when that suffices."""
        width = np.full(len(self.values), np.inf)
        wanted = set(cells)
        for members in self.groups(hidden):
            todo = [c for c in members if c in wanted]
            if todo:
                for c, (a, b) in self._solve(members, todo, k).items():
                    width[c] = self._width1(c, a, b)
        return width

    def intervals(self, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.values.copy(), self.values.copy()
        for members in self.groups(hidden):
            for c, (a, b) in self._solve(members, list(members), None).items():
                lo[c], hi[c] = a, b
        return lo, hi

    def _width1(self, c: int, lo: float, hi: float) -> float:
        if self.integer[c]:
            return float(np.floor(hi + _EPS) - np.ceil(lo - _EPS))
        return hi - lo

    def width(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        lo_r = np.where(self.integer, np.ceil(lo - _EPS), lo)
        hi_r = np.where(self.integer, np.floor(hi + _EPS), hi)
        return hi_r - lo_r

    def _solve(self, members: tuple[int, ...], todo: list[int], k: int | None) -> dict[int, tuple[float, float]]:
        """Smallest and largest value of the `todo` cells of a hidden group, the rest fixed.

        With `k`, the smallest value is skipped when the largest is already k above the
        cell's value (then the interval is at least k wide whatever the smallest is).
        """
        pos = {c: i for i, c in enumerate(members)}
        rows = sorted({r for c in members for r in self.by_cell[c]})
        a, row_lo, row_hi = [], [], []
        for r in rows:
            line = np.zeros(len(members))
            const = 0.0
            for c, coef in self.rows[r]:
                if c in pos:
                    line[pos[c]] += coef
                else:
                    const += coef * self.values[c]
            a.append(line)
            row_hi.append(-const)
            row_lo.append(-const if r < self.n_eq else -np.inf)
        lows = np.array([self.lower[c] for c in members])
        if not rows:  # in no identity: anything from its lower bound up
            return {c: (min(self.lower[c], self.values[c]), np.inf) for c in todo}
        fast = _single_sum(members, a, row_lo, row_hi, rows, self.n_eq, lows)
        if fast is not None:
            return {c: fast[c] for c in todo}
        n_eq = sum(1 for r in rows if r < self.n_eq)
        if n_eq and len(todo) > 1:
            sub = np.zeros(len(self.values), bool)
            sub[list(members)] = True
            exact = determined(self.a, sub)
        else:
            exact = np.zeros(len(self.values), bool)
        lp = _LP(np.array(a), np.array(row_lo), np.array(row_hi), lows)
        out = {}
        for c in todo:
            v = self.values[c]
            if exact[c]:
                out[c] = (v, v)
                continue
            self.lps += 1
            hi = lp.extreme(pos[c], maximise=True, default=v)
            if k is not None and self._width1(c, v, hi) >= k:
                out[c] = (v, max(hi, v))
                continue
            self.lps += 1
            lo = lp.extreme(pos[c], maximise=False, default=v)
            out[c] = (min(lo, v), max(hi, v))
        return out


def _single_sum(members, a, row_lo, row_hi, rows, n_eq, lows) -> dict[int, tuple[float, float]] | None:
    """Closed form for the common case: one equation, coefficients of one sign, cells >= 0.

    x_1 + ... + x_m = S with x >= 0: each x_i lies in [0, S / a_i] when m >= 2.
    """
    if len(rows) != 1 or rows[0] >= n_eq or np.any(lows != 0) or len(members) < 2:
        return None
    line, s = np.asarray(a[0]), float(row_hi[0])
    if np.all(line < 0):
        line, s = -line, -s
    elif not np.all(line > 0):
        return None
    return {c: (0.0, s / line[i]) for i, c in enumerate(members)}


class _LP:
    """min / max of one variable over {row_lo <= A x <= row_hi, x >= lower}, many objectives.

    HiGHS (the solver behind scipy.optimize.linprog) is kept loaded between objectives
    so each solve warm-starts from the last basis: about 40 times faster than a fresh
    `linprog` per objective. Falls back to `linprog` if scipy's HiGHS core moves.
    """

    def __init__(self, a: np.ndarray, row_lo: np.ndarray, row_hi: np.ndarray, lower: np.ndarray):
        self.a, self.row_lo, self.row_hi, self.lower = a, row_lo, row_hi, lower
        self.h = None
        if _core() is not None:
            try:
                self.h = self._model()
            except Exception:  # noqa: BLE001 - any trouble with the private API: use linprog
                self.h = None

    def _model(self):
        import scipy.sparse as sparse

        _hc = _core()
        n = self.a.shape[1]
        h = _hc._Highs()
        h.setOptionValue("output_flag", False)
        lp = _hc.HighsLp()
        lp.num_col_, lp.num_row_ = n, self.a.shape[0]
        inf = _hc.kHighsInf
        lp.col_cost_ = np.zeros(n)
        lp.col_lower_ = np.where(np.isfinite(self.lower), self.lower, -inf)
        lp.col_upper_ = np.full(n, inf)
        lp.row_lower_ = np.where(np.isfinite(self.row_lo), self.row_lo, -inf)
        lp.row_upper_ = np.where(np.isfinite(self.row_hi), self.row_hi, inf)
        m = sparse.csc_matrix(self.a)
        lp.a_matrix_.format_ = _hc.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = m.indptr, m.indices, m.data
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n, self.a.shape[0]
        if h.passModel(lp) != _hc.HighsStatus.kOk:
            raise RuntimeError("HiGHS refused the model")
        return h

    def extreme(self, j: int, maximise: bool, default: float) -> float:
        if self.h is None:
            return self._linprog(j, maximise, default)
        h, _hc = self.h, _core()
        h.changeColCost(j, 1.0)
        h.changeObjectiveSense(_hc.ObjSense.kMaximize if maximise else _hc.ObjSense.kMinimize)
        h.run()
        status = h.getModelStatus()
        value = float(h.getInfo().objective_function_value)  # before any change to the model resets it
        h.changeColCost(j, 0.0)
        if status == _hc.HighsModelStatus.kOptimal:
            return value
        if status in (_hc.HighsModelStatus.kUnbounded, _hc.HighsModelStatus.kUnboundedOrInfeasible):
            return np.inf if maximise else -np.inf
        return self._linprog(j, maximise, default)

    def _linprog(self, j: int, maximise: bool, default: float) -> float:
        from scipy.optimize import linprog

        n = self.a.shape[1]
        eq = self.row_lo == self.row_hi
        c = np.zeros(n)
        c[j] = -1.0 if maximise else 1.0
        res = linprog(c, A_eq=self.a[eq] if eq.any() else None, b_eq=self.row_hi[eq] if eq.any() else None,
                      A_ub=self.a[~eq] if (~eq).any() else None, b_ub=self.row_hi[~eq] if (~eq).any() else None,
                      bounds=[(lv if np.isfinite(lv) else None, None) for lv in self.lower], method="highs")
        if res.status == 3:
            return np.inf if maximise else -np.inf
        if res.status == 0:
            return float(res.x[j])
        return default  # infeasible / numerical trouble: claim nothing (the cell counts as exact)


@functools.cache
def _core():
    """scipy's bundled HiGHS core (private; scipy is pinned in requirements.txt), or None (linprog only).

    Imported on the first solve, not with this module: scipy.optimize takes about a second
    to import, and the app's first page never suppresses (suppression is off for the built-in cohort).
    """
    try:
        from scipy.optimize._highspy import _core as hc
    except ImportError:  # pragma: no cover - another scipy layout: linprog only
        return None
    return hc
