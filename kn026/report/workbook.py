"""The published workbook: every aggregate table of one release, suppressed in one step.

A table that leaves the app (a page, a CSV, a sheet, a chart, a slide) declares itself
here with the identities a reader can use on it; `Workbook.suppress` then runs the one
suppression step (`kn026.report.protection`) over all declared tables together, so that the
same quantity shown in two tables (the funnel's last row, the scenario comparison's
"scenario" column and the sites' totals) is hidden in both or in neither, and the
identities that cross tables (a country is the sum of its sites; the sites add up to
the funnel's eligible counts) are taken into account.

A new table is published in three lines::

    wb = Workbook(k)
    wb.add("My table", frame, counts=["n_a", "n_b", "n_total"])
    wb.equation([(("My table", i, "n_a"), 1), (("My table", i, "n_b"), 1), (("My table", i, "n_total"), -1)])
    tables = wb.suppress()           # {"My table": Table, ...}

Cells are referred to as (table name, row position, column). `same(a, b)` says two
cells hold the same quantity (checked: their values must be equal). `public(...)`
marks cells anyone knows anyway (never hidden). The kinds of tables the app publishes
are declared by `kn026.report.published`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kn026.report import protection
from kn026.report.protection import DEFAULT_THRESHOLD, Cells, Protection

HIDDEN_TEXT = "suppressed"  # one label for primary and complementary cells alike (docs/security.md)

Ref = tuple[str, object, str]  # (table, row position, column)


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
        """The frame with hidden cells as missing values (nullable dtypes), for display and charts."""
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
        """The frame with hidden cells replaced by `text`, for CSV / Excel / HTML / slides."""
        out = self.frame.copy()
        for col in self.hidden.columns:
            if self.hidden[col].any():
                out[col] = out[col].astype(object).where(~self.hidden[col].to_numpy(), text)
        return out


def unsuppressed(frame: pd.DataFrame) -> Table:
    return Table(frame, pd.DataFrame(False, index=frame.index, columns=frame.columns), 0)


@dataclass
class _Sheet:
    name: str
    frame: pd.DataFrame
    counts: list[str]
    derived: dict[str, str | Sequence[str]]
    cells: dict[tuple[int, str], int] = field(default_factory=dict)


@dataclass
class Published:
    """The suppressed tables of one release, and how the step went."""

    tables: dict[str, Table]
    k: int
    protection: Protection | None
    n_cells: int = 0

    def __getitem__(self, name: str) -> Table:
        return self.tables[name]

    @property
    def n_hidden(self) -> int:
        return sum(t.n_hidden for t in self.tables.values())

    @property
    def seconds(self) -> float:
        return self.protection.seconds if self.protection else 0.0


class Workbook:
    """Tables to publish together and every identity a reader can use among their cells."""

    def __init__(self, k: int | None = DEFAULT_THRESHOLD):
        self.k = int(k or 0)
        self.sheets: dict[str, _Sheet] = {}
        self.values: list[float] = []
        self.lower: list[float] = []
        self.integer: list[bool] = []
        self.small: list[bool] = []
        self.is_public: list[bool] = []
        self.keep: list[bool] = []
        self.equations: list[list[tuple[int, float]]] = []
        self.inequalities: list[list[tuple[int, float]]] = []
        self.names: list[str] = []
        self._parent: list[int] = []  # cells of the same quantity: union-find
        self._constants: dict[str, int] = {}

    # ------------------------------------------------------------------ declaring
    def add(self, name: str, frame: pd.DataFrame, counts: Sequence[str], *, signed: Sequence[str] = (),
            real: Sequence[str] = (), derived: Mapping[str, str | Sequence[str]] | None = None) -> None:
        """Publish `frame` as table `name`.

        `counts`: columns of whole patient counts (>= 0). `signed`: counts that may be
        negative (changes, scenario - protocol: primary on |value|). `real`: non-integer
        patient quantities (Shapley shares, >= 0). `derived`: column -> the column (or
        columns) it is computed from (a percentage: its count and its denominator): hidden
        with any of them. Missing values are not
        cells (nothing is published there). Other columns are labels, never hidden.
        """
        if name in self.sheets:
            raise ValueError(f"table {name!r} is already in the workbook")
        frame = frame.reset_index(drop=True)
        sheet = _Sheet(name, frame, [*counts, *signed, *real], dict(derived or {}))
        for col in sheet.counts:
            if col not in frame.columns:
                raise ValueError(f"table {name!r} has no column {col!r}")
        kinds = {**dict.fromkeys(counts, "count"), **dict.fromkeys(signed, "signed"),
                 **dict.fromkeys(real, "real")}
        for i in range(len(frame)):
            for col in sheet.counts:
                v = frame[col].iloc[i]
                if v is None or pd.isna(v):
                    continue
                sheet.cells[(i, col)] = self._new(float(v), kinds[col], f"{name}[{i}].{col}")
        self.sheets[name] = sheet

    def constant(self, key: str, value: float) -> Ref:
        """A public quantity that no table shows as such (the number screened): never hidden."""
        if key not in self._constants:
            self._constants[key] = self._new(float(value), "count", key)
            self.is_public[self._constants[key]] = True
        elif abs(self.values[self._constants[key]] - float(value)) > 1e-6:
            raise ValueError(f"{key} is {self.values[self._constants[key]]:g} in one table and {value:g} in another")
        return ("", key, "")

    def has(self, ref: Ref) -> bool:
        name, row, col = ref
        if name == "":
            return row in self._constants
        sheet = self.sheets.get(name)
        return sheet is not None and (row, col) in sheet.cells

    def cell(self, ref: Ref) -> int:
        name, row, col = ref
        if name == "":
            return self._constants[row]
        try:
            return self.sheets[name].cells[(row, col)]
        except KeyError:
            raise KeyError(f"no published cell {name}[{row}].{col}") from None

    def value(self, ref: Ref) -> float:
        return self.values[self._find(self.cell(ref))]

    def same(self, a: Ref, b: Ref) -> None:
        """Cells `a` and `b` hold the same quantity (hidden together). Their values must agree."""
        i, j = self._find(self.cell(a)), self._find(self.cell(b))
        if i == j:
            return
        if abs(self.values[i] - self.values[j]) > 1e-6 * max(1.0, abs(self.values[i])):
            raise ValueError(f"{self.names[i]} = {self.values[i]:g} and {self.names[j]} = {self.values[j]:g} "
                             "were declared the same quantity")
        self._parent[j] = i
        self.is_public[i] = self.is_public[i] or self.is_public[j]
        self.small[i] = self.small[i] or self.small[j]

    def prefer_visible(self, *refs: Ref) -> None:
        """Cells a reader comes for (the eligible counts): hidden as complements only as a last resort."""
        for ref in refs:
            if self.has(ref):
                self.keep[self.cell(ref)] = True

    def public(self, *refs: Ref) -> None:
        for ref in refs:
            if self.has(ref):
                self.is_public[self.cell(ref)] = True

    def equation(self, terms: Iterable[tuple[Ref, float]]) -> None:
        """sum(coefficient x cell) = 0. Terms naming cells that are not published are an error."""
        self.equations.append([(self.cell(r), float(c)) for r, c in terms])

    def at_most(self, terms: Iterable[tuple[Ref, float]]) -> None:
        """sum(coefficient x cell) <= 0 (an inequality a reader knows)."""
        self.inequalities.append([(self.cell(r), float(c)) for r, c in terms])

    # ------------------------------------------------------------------ suppressing
    def suppress(self) -> Published:
        """Run the suppression step over every table; {name: Table} with hidden masks."""
        n = len(self.values)
        roots = np.array([self._find(i) for i in range(n)], dtype=np.intp)
        uniq, var = np.unique(roots, return_inverse=True)  # one variable per quantity
        values = np.array([self.values[r] for r in uniq])
        lower = np.array([self.lower[r] for r in uniq])
        integer = np.array([self.integer[r] for r in uniq])
        public = np.zeros(len(uniq), bool)
        small = np.zeros(len(uniq), bool)
        keep = np.zeros(len(uniq), bool)
        for i in range(n):
            public[var[i]] |= self.is_public[i]
            small[var[i]] |= self.small[i]
            keep[var[i]] |= self.keep[i]
        if self.k <= 1 or not n:
            hidden_var = np.zeros(len(uniq), bool)
            prot = None
        else:
            small &= ~public
            cells = Cells(values, _rows(self.equations, var), _rows(self.inequalities, var), lower, integer)
            prot = protection.protect_cells(cells, self.k, public, small=small, keep=keep)
            hidden_var = prot.hidden
        tables = {}
        for name, sheet in self.sheets.items():
            grid = np.zeros(sheet.frame.shape, bool)
            position = {col: j for j, col in enumerate(sheet.frame.columns)}
            for (i, col), cell in sheet.cells.items():
                grid[i, position[col]] = hidden_var[var[cell]]
            mask = pd.DataFrame(grid, index=sheet.frame.index, columns=sheet.frame.columns)
            for dependent, sources in sheet.derived.items():
                for source in ([sources] if isinstance(sources, str) else sources):
                    if dependent in mask.columns and source in mask.columns:
                        mask[dependent] = mask[dependent] | mask[source]
            tables[name] = Table(sheet.frame, mask, self.k if self.k > 1 else 0)
        return Published(tables, self.k if self.k > 1 else 0, prot, n)

    # ------------------------------------------------------------------ internals
    def _new(self, value: float, kind: str, label: str) -> int:
        k = self.k
        self.values.append(value)
        self.lower.append(-np.inf if kind == "signed" else 0.0)
        self.integer.append(kind != "real")
        size = abs(value) if kind == "signed" else value
        self.small.append(bool(k > 1 and 0 < size < k))
        self.is_public.append(False)
        self.keep.append(False)
        self.names.append(label)
        self._parent.append(len(self._parent))
        return len(self.values) - 1

    def _find(self, i: int) -> int:
        while self._parent[i] != i:
            self._parent[i] = self._parent[self._parent[i]]
            i = self._parent[i]
        return i


def _rows(rows: list[list[tuple[int, float]]], var: np.ndarray) -> tuple:
    out = []
    for row in rows:
        merged: dict[int, float] = {}
        for cell, coef in row:
            v = int(var[cell])
            merged[v] = merged.get(v, 0.0) + coef
        terms = tuple((v, c) for v, c in merged.items() if c)
        if terms:
            out.append(terms)
    return tuple(out)
