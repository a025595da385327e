"""Choices about bad cells, as data: fix a value, blank it, drop its row, declare a column's unit.

The loader reports each value it cannot accept (column, row, patient, value, fix).
Instead of editing the file outside the app, the analyst answers a problem, or every
problem of a column, with an `Edit`:

    fix row r of column c -> text            Edit("fix", c, r, text)
    blank cell (r, c) / every bad cell of c  Edit("blank", c[, r])       empty: unknown
    drop row r / every row where c is bad    Edit("drop", c[, r])
    declare the unit of column c             Edit("unit", c, text=unit)  g/dL -> g/L x 10

`kn026.ingest.cohort.load_cohort(..., edits=...)` applies them in its one pass over the source
(the file is never modified) and reports each as a `Change` (what changed, how many cells
or rows, which rows), so that an import report can list every change. Which cells are
bad is the loader's own predicate (unreadable, or outside the dictionary's range), never
re-implemented here. Order: cell fixes and blanks, then unit conversion, then the
column-wide blanks and drops of the cells still bad, then row drops.

Refused (`EditError`): a blank of a record-based column (days_since_*, the two dose
columns: there an empty cell means "none on record" and would pass the patient; drop the
row or fix the value instead) and of patient_id. A value outside the unit guard's
plausible range is answered by declaring the column's unit (or a fix, or dropping the
row), never by a blank: blanking a column given in the wrong unit would hide the mistake.
A row edit may carry `was`, the cell as read: when the file says otherwise (a saved
mapping reused on another export), the load stops instead of editing the wrong cell.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from kn026.base import schema

ACTIONS = ("fix", "blank", "drop", "unit")
ALL = "*"  # every column (blank / drop only: the command line's --on-bad-value)
INDEX = "index_column"  # a mapped file's own index date column (kn026.ingest.mapped): row edits only
ROWS_SHOWN = 8  # rows named in a change's description


class EditError(ValueError):
    """An edit that cannot be applied; the message names it and the fix."""


@dataclass(frozen=True)
class Edit:
    """One choice about bad cells (see the module docstring)."""

    action: str  # fix / blank / drop / unit
    column: str  # dictionary column (ALL: every column, for blank and drop)
    row: int | None = None  # 1-based data row; None: every bad cell of the column
    text: str | None = None  # fix: the corrected text; unit: the unit the file's values are in
    was: str | None = None  # row edits: the cell as read; refused when the file differs

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise EditError(f"edit action {self.action!r} is not one of {', '.join(ACTIONS)}")
        if self.action == "fix" and (self.row is None or self.text is None):
            raise EditError(f"fix of {self.column}: give the row and the corrected text")
        if self.action == "fix" and not str(self.text).strip():
            raise EditError(f"fix of {self.column} row {self.row}: the corrected text is empty; "
                            "to leave the cell empty, blank it")
        if self.action == "unit" and (not self.text or self.row is not None):
            raise EditError(f"unit of {self.column}: give the unit of the file's values, for the whole column")
        if self.row is not None and (isinstance(self.row, bool) or int(self.row) < 1):
            raise EditError(f"{self.action} of {self.column}: row {self.row!r} must be a data row number "
                            "(1 is the first row under the header)")
        if self.column == ALL and (self.action not in ("blank", "drop") or self.row is not None):
            raise EditError("'*' (every column) applies to blank and drop of every bad cell only")

    @property
    def whole_column(self) -> bool:
        return self.row is None

    def describe(self) -> str:
        """One line for reports: "fix hemoglobin_g_l row 4: '12,1x' -> '12.1'"."""
        col = "every column" if self.column == ALL else self.column
        if self.action == "unit":
            from kn026.ingest import units

            return f"declare the unit of {col}: {units.conversion_text(self.column, self.text)}"
        if self.action == "fix":
            was = f"{self.was!r} -> " if self.was is not None else "-> "
            return f"fix {col} row {self.row}: {was}{self.text!r}"
        if self.whole_column:
            return {"blank": f"blank every bad value of {col} (empty: unknown)",
                    "drop": f"drop every row where {col} is bad"}[self.action]
        was = f" ({self.was!r})" if self.was is not None else ""
        return {"blank": f"blank {col} row {self.row}{was} (empty: unknown)",
                "drop": f"drop row {self.row} (bad {col}{was})"}[self.action]

    def to_dict(self) -> dict:
        """{"fix": {"column": ..., "row": ..., "text": ..., "was": ...}} (a mapping YAML's `edits`)."""
        body = {"column": self.column}
        for key in ("row", "text", "was"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        return {self.action: body}

    @classmethod
    def from_dict(cls, doc, where: str = "edits") -> Edit:
        if not isinstance(doc, dict) or len(doc) != 1:
            raise EditError(f"{where}: each edit is one of fix / blank / drop / unit with its column, such as "
                            "{blank: {column: ast_u_l}}")
        (action, body), = doc.items()
        if isinstance(body, str):
            body = {"column": body}
        if not isinstance(body, dict) or "column" not in body:
            raise EditError(f"{where}: {action} needs a column, such as {{{action}: {{column: ast_u_l}}}}")
        bad = set(body) - {"column", "row", "text", "was"}
        if bad:
            raise EditError(f"{where}: {action} has unknown key(s) {', '.join(sorted(bad))}; allowed: column, row, "
                            "text, was")
        try:
            row = None if body.get("row") is None else int(body["row"])
        except (TypeError, ValueError):
            raise EditError(f"{where}: {action} row {body.get('row')!r} is not a row number") from None
        text = lambda k: None if body.get(k) is None else str(body[k])  # noqa: E731
        try:
            return cls(str(action), str(body["column"]), row, text("text"), text("was"))
        except EditError as err:
            raise EditError(f"{where}: {err}") from None


def fix(column: str, row: int, text: str, was: str | None = None) -> Edit:
    return Edit("fix", column, int(row), str(text), was)


def blank(column: str, row: int | None = None, was: str | None = None) -> Edit:
    return Edit("blank", column, row, None, was)


def drop(column: str, row: int | None = None, was: str | None = None) -> Edit:
    return Edit("drop", column, row, None, was)


def unit(column: str, name: str) -> Edit:
    return Edit("unit", column, None, name)


def to_list(edits: Iterable[Edit]) -> list[dict]:
    return [e.to_dict() for e in edits]


def from_list(doc, where: str = "edits") -> list[Edit]:
    if doc is None:
        return []
    if not isinstance(doc, list):
        raise EditError(f"{where}: a list of edits, such as [{{blank: {{column: ast_u_l}}}}]")
    out = [Edit.from_dict(d, f"{where} item {i + 1}") for i, d in enumerate(doc)]
    check(out, where=where)
    return out


def blank_refusal(column: str) -> str:
    """Why `column` cannot be blanked ("" when it can)."""
    if column == "patient_id":
        return "patient_id cannot be blank: every row needs one; type the ID or drop the row"
    spec = schema.BY_NAME.get(column)
    if spec is not None and spec.record_based:
        return (f"{column} cannot be blanked: it is record-based, an empty cell means "
                f"'{spec.null_meaning}' and would pass the patient; drop the row or fix the value instead")
    return ""


def check(edits: Iterable[Edit], present: Iterable[str] | None = None, where: str = "edits") -> None:
    """EditError for the first edit that cannot apply: unknown or (with `present`) absent column, a
    refused blank, an unknown unit, two column-wide choices for one column, two choices for one cell."""
    from kn026.ingest import units

    columns, cells = {}, {}
    present = None if present is None else set(present)
    for e in edits:
        row_label = e.row is not None and (e.action == "drop" or (e.column == INDEX and present is None))
        if e.column != ALL and e.column not in schema.BY_NAME and not row_label:
            raise EditError(f"{where}: {e.action} names {e.column!r}, which is not a dictionary column")
        if present is not None and e.column != ALL and e.column in schema.BY_NAME and e.column not in present:
            raise EditError(f"{where}: {e.action} names {e.column}, which is not in the file")
        if e.action == "blank" and e.column != ALL and blank_refusal(e.column):
            raise EditError(f"{where}: {blank_refusal(e.column)}")
        if e.action == "unit":
            if schema.BY_NAME[e.column].kind != schema.NUMBER:
                raise EditError(f"{where}: {e.column} is not a measurement; a unit applies to numbers only")
            try:
                factor = units.unit_factor(e.column, e.text, where)
            except ValueError as err:
                raise EditError(str(err)) from None
            if factor == 1.0:
                raise EditError(f"{where}: {e.text} is {e.column}'s own unit; nothing to convert")
        if e.whole_column:
            key = (e.column, e.action == "unit")  # a unit, and one of blank / drop, per column
            if key in columns:
                raise EditError(f"{where}: {e.column} has two choices for all its values "
                                f"({columns[key].action}, {e.action}); keep one")
            columns[key] = e
        elif (e.column, e.row) in cells:
            raise EditError(f"{where}: {e.column} row {e.row} has two choices ({cells[e.column, e.row].action}, "
                            f"{e.action}); keep one")
        else:
            cells[e.column, e.row] = e


# ----------------------------------------------------------------------------- offers (for the app)


def cell_actions(problem) -> list[str]:
    """What the analyst may do about one reported problem: fix / blank / drop ([] for column-level ones).

    A unit-guard problem (`problem.kind == "unit"`) is never blanked: declaring the
    column's unit (`column_edits`) is the choice offered instead.
    """
    if problem.row is None or problem.kind not in ("value", "unit", "missing_id", "date", "duplicate"):
        return []
    actions = ["fix"]
    if problem.kind in ("value", "date") and not blank_refusal(problem.column):
        actions.append("blank")
    return actions + ["drop"]


def cells(problems: Iterable) -> list:
    """The problems one per cell, as the app lists them: a duplicated patient_id once per row it is in."""
    out = []
    for p in problems:
        if p.kind == "duplicate" and p.row is None:
            out += [replace(p, row=r, value=p.patient_id) for r in p.rows]
        else:
            out.append(p)
    return out


def column_edits(column: str, problems: Iterable) -> list[Edit]:
    """The choices for every problem of `column` at once: blank all (not record-based), drop all, or
    declare a unit the unit guard names."""
    from kn026.ingest import units

    if column not in schema.BY_NAME:  # a mapped file's index date column: row by row only
        return []
    kinds = {p.kind for p in problems if p.column == column}
    out = []
    if kinds & {"value", "date", "missing_id"}:
        if not blank_refusal(column) and kinds & {"value", "date"}:
            out.append(blank(column))
        out.append(drop(column))
    if kinds & {"unit", "median"} and column in schema.BY_NAME:
        out += [unit(column, name) for name, _ in units.guard_units(column)]
    return out


def cell_edit(edits: Iterable[Edit], column: str, row: int) -> Edit | None:
    return next((e for e in edits if e.column == column and e.row == row), None)


def column_edit(edits: Iterable[Edit], column: str, units: bool = False) -> Edit | None:
    """The blank / drop of every bad value of `column` (`units`: its declared unit), if chosen."""
    return next((e for e in edits if e.column == column and e.whole_column and (e.action == "unit") == units),
                None)


def with_edit(edits: Iterable[Edit], column: str, row: int | None, edit: Edit | None,
              units: bool = False) -> list[Edit]:
    """`edits` with the choice for cell (column, row) replaced by `edit` (row None: the column's
    blank / drop, or with `units` its unit)."""
    out = [e for e in edits if not (e.column == column and e.row == row and (row is not None or
                                                                               (e.action == "unit") == units))]
    return out + ([edit] if edit is not None else [])


# ----------------------------------------------------------------------------- the report of changes


@dataclass(frozen=True)
class Change:
    """What one edit did: cells changed (fixed, blanked, converted) or rows dropped, and which rows."""

    edit: Edit
    count: int  # cells changed, or rows dropped (drop)
    rows: tuple[int, ...] = ()  # file rows affected (1-based); () for a unit (every value)

    @property
    def what(self) -> str:
        e = self.edit
        if e.action == "unit":
            return f"{self.count:,} value(s) converted"
        if e.action == "drop":
            return f"{self.count:,} row(s) dropped"
        return f"{self.count:,} cell(s) {'fixed' if e.action == 'fix' else 'blanked'}"

    def rows_text(self) -> str:
        if not self.rows:
            return ""
        shown = ", ".join(str(r) for r in self.rows[:ROWS_SHOWN])
        return shown + (f" and {len(self.rows) - ROWS_SHOWN:,} more" if len(self.rows) > ROWS_SHOWN else "")

    def __str__(self) -> str:
        rows = self.rows_text()
        return f"{self.edit.describe()}: {self.what}" + (f" (rows {rows})" if rows and self.edit.whole_column else "")


def changes_frame(changes: Iterable[Change]):
    """The changes as a table: column, change, rows affected, count (an import report's section)."""
    import pandas as pd

    rows = [{"column": c.edit.column, "change": c.edit.describe(), "result": c.what, "rows": c.rows_text()}
            for c in changes]
    return pd.DataFrame(rows, columns=["column", "change", "result", "rows"])


def dropped_rows(changes: Iterable[Change]) -> np.ndarray:
    """Every file row dropped by `changes`, sorted, once."""
    rows = [r for c in changes if c.edit.action == "drop" for r in c.rows]
    return np.unique(np.asarray(rows, dtype=np.int64))


# ----------------------------------------------------------------------------- the loader's pass


@dataclass
class Pass:
    """The edits of one load, arranged for the loader's chunk-by-chunk pass (kn026.ingest.cohort)."""

    cells: dict[str, dict[int, Edit]] = field(default_factory=dict)  # column -> row -> fix / blank
    drop_rows: dict[int, Edit] = field(default_factory=dict)  # row -> drop
    units: dict[str, Edit] = field(default_factory=dict)  # column -> unit
    blank: dict[str, Edit] = field(default_factory=dict)  # column -> blank every bad value
    drop: dict[str, Edit] = field(default_factory=dict)  # column -> drop every row where it is bad
    applied: dict[tuple[str, int], bool] = field(default_factory=dict)  # (column, row) of row edits seen

    @property
    def text_columns(self) -> set[str]:
        """Columns read as text for the edits: typed cells are fixed or converted as text."""
        return {c for c, rows in self.cells.items() if any(e.action == "fix" for e in rows.values())} | set(self.units)

    def __bool__(self) -> bool:
        return bool(self.cells or self.drop_rows or self.units or self.blank or self.drop)


def prepare(edits: Iterable[Edit], present: Iterable[str]) -> Pass:
    """Check `edits` against the file's dictionary columns and arrange them; EditError if one cannot apply.

    ALL expands to every column of the file: blank skips patient_id and the record-based
    columns (their bad values stay problems), drop takes them all. A choice named for one
    column wins over ALL.
    """
    present = [c for c in present]
    edits = list(edits)
    check(edits, present)
    named = {e.column for e in edits if e.whole_column and e.column != ALL}
    out = Pass()
    for e in edits:
        if e.column == ALL:
            for col in present:
                if col not in named and not (e.action == "blank" and blank_refusal(col)):
                    getattr(out, e.action)[col] = replace(e, column=col)
        elif e.action == "unit":
            out.units[e.column] = e
        elif e.whole_column:
            getattr(out, e.action)[e.column] = e
        elif e.action == "drop":
            out.drop_rows[e.row] = e
        else:
            out.cells.setdefault(e.column, {})[e.row] = e
    return out


def cell_changes(p: Pass) -> list[Change]:
    """The fixes and single blanks applied, one change each (rows never reached are refused before)."""
    return [Change(e, 1, (e.row,)) for rows in p.cells.values() for e in rows.values()]


def missing_rows(p: Pass, n: int) -> list[Edit]:
    """Row edits naming a row beyond the `n` rows read."""
    edits = [e for rows in p.cells.values() for e in rows.values()] + list(p.drop_rows.values())
    return [e for e in edits if e.row > n]


def same_cell(was: str | None, text) -> bool:
    """True when a row edit's `was` matches the cell as read (None: no check; empty and NULL agree)."""
    if was is None:
        return True
    return ("" if text is None else str(text)).strip() == str(was).strip()


# ----------------------------------------------------------------------------- mapped files


def patch_file(frame, edits: Iterable[Edit], sources: dict[str, str]):
    """A mapped file's frame with the row fixes and blanks applied to the FILE's cells (the frame
    passed in is not modified; only the touched columns are copied), and the other edits.

    `sources`: dictionary column -> file column. A fix is typed as the file writes the value
    (it then goes through the mapping: translations, unit), exactly as if the file had been
    edited by hand. Its `was` is checked against the file's cell.
    """
    rest, patched = [], {}
    for e in edits:
        if e.row is None or e.action not in ("fix", "blank") or e.column not in sources:
            if e.row is not None and e.column in sources:
                _check_was(frame, sources[e.column], e)
            rest.append(e)
            continue
        src = sources[e.column]
        _check_was(frame, src, e)
        if src not in patched:
            patched[src] = frame[src].astype(object).copy()
        patched[src].iloc[e.row - 1] = e.text if e.action == "fix" else None
    return (frame.assign(**patched) if patched else frame), rest


def _check_was(frame, source: str, e: Edit) -> None:
    if e.row > len(frame):
        raise EditError(f"edits: {e.action} of {e.column} names row {e.row}, but the file has {len(frame):,} rows; "
                        "these edits were made for another file")
    value = frame[source].iloc[e.row - 1]
    text = None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
    if not same_cell(e.was, text):
        raise EditError(f"edits: {e.action} of {e.column} row {e.row} was chosen for the value {e.was!r}, but the "
                        f"file has {text!r} there; these edits were made for another file: choose again")


def merge(changes: Iterable[Change]) -> list[Change]:
    """One change per edit (date cells settled by the mapping and cells by the loader add up)."""
    out: dict[Edit, Change] = {}
    for c in changes:
        old = out.get(c.edit)
        out[c.edit] = c if old is None else Change(c.edit, old.count + c.count, tuple(sorted({*old.rows, *c.rows})))
    return list(out.values())


def apply_to_frame(frame, changes: Iterable[Change]):
    """A mapped frame with the loader's blanks and drops applied (row numbers are 1-based positions)."""
    changes = list(changes)
    out = frame
    for c in changes:
        if c.edit.action == "blank" and c.rows and c.edit.column in frame.columns:
            if out is frame:
                out = frame.copy()
            out.iloc[np.asarray(c.rows) - 1, out.columns.get_loc(c.edit.column)] = None
    dropped = dropped_rows(changes)
    if len(dropped):
        out = out.drop(index=out.index[dropped - 1]).reset_index(drop=True)
    return out
