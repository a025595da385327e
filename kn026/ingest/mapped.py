"""A mapped file validated and loaded with the analyst's edits (kn026.ingest.edits): preview, load, write.

The mapping wizard's preview and load, and `python -m kn026 import --mapping`, go through
here. A mapping's `edits` answer bad cells without editing the file:

- a fix (or a single blank) changes the FILE's cell, as the file writes it: it then goes
  through the mapping (value translations, the column's unit), exactly as if the file had
  been edited by hand; its `was` is checked against the file, so a saved mapping reused
  on the next export never edits the wrong cell;
- date cells a column's format does not read are settled here (they are empty in the
  mapped frame already): a blank accepts them as unknown, a drop leaves their rows out;
- every other choice goes to the loader (`load_cohort(..., edits=...)`), whose own
  predicates decide which mapped cells are bad.

A unit is not an edit of a mapping: it is the column's `unit` setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pandas as pd

from kn026.base import schema
from kn026.base.table import connect
from kn026.ingest import date_formats, edits
from kn026.ingest.cohort import load_cohort
from kn026.ingest.mapping import _apply, value_report
from kn026.ingest.problems import CohortError, Problem


@dataclass
class Preview:
    """First rows of the mapped cohort and what `load_cohort` says about the whole of it."""

    frame: pd.DataFrame  # first rows, dictionary columns
    n_rows: int
    problems: list[Problem]  # empty: the mapped file loads
    total_problems: int
    present: tuple[str, ...]  # dictionary columns the mapping fills
    absent: tuple[str, ...]  # the others: rules needing them are n/a
    values: pd.DataFrame  # value_report: categorical translations
    changes: list = field(default_factory=list)  # kn026.ingest.edits.Change of the mapping's edits (when it loads)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Mapped:
    """A file mapped with its edits, ready for the loader."""

    frame: pd.DataFrame  # the mapped cohort (dictionary columns; date cells not read are empty)
    problems: list[Problem]  # date cells not read and not settled by an edit
    total: int  # their count
    loader: list  # edits for load_cohort
    owner: dict  # loader edit -> the mapping's edit it stands for (a date column's drop, row by row)
    changes: list  # changes made before the loader (file cells fixed or blanked, date cells settled)


def _private_connection():
    """A scratch connection that never spills rows to disk (kn026.rules.sandbox.prepare)."""
    from kn026.rules import sandbox

    con = connect()
    sandbox.prepare(con)
    return con


def _refuse_index_blanks(mapping, chosen: list) -> None:
    """A blank of the date column the date transforms count from would empty every days_since_*
    cell of its rows: none on record, passing the patient. Refused (drop or fix instead)."""
    index = date_formats.index_source(mapping)
    if index is None or not any(c.transform for c in mapping.columns):
        return
    for e in chosen:
        c = mapping.get(e.column) if e.column in schema.BY_NAME else None
        if e.action == "blank" and (e.column == "index_column" or (c is not None and c.source == index)):
            raise edits.EditError(f"edits: {e.column} holds the index date of the days_since_* columns; a blank "
                                  "would empty them (none on record) and pass the patient: drop the row or fix the "
                                  "date instead")


def blankable(mapping, column: str) -> bool:
    """False when a blank of `column` would be refused: record-based, patient_id, or the index date."""
    if edits.blank_refusal(column):
        return False
    try:
        _refuse_index_blanks(mapping, [edits.blank(column)])
    except edits.EditError:
        return False
    return True


def prepare(frame: pd.DataFrame, mapping, extra=(), progress=None) -> Mapped:
    """Map `frame` with `mapping`, its edits and `extra` ones (the command line's --on-bad-value).

    Raises ValueError (EditError) for an edit that cannot apply, and the mapping's own errors.
    """

    chosen = [*mapping.edits, *extra]
    _refuse_index_blanks(mapping, chosen)
    sources = {c.target: c.source for c in mapping.columns if c.source is not None}
    if date_formats.index_source(mapping) is not None:  # its problems are named "index_column"
        sources.setdefault("index_column", date_formats.index_source(mapping))
    patched, rest = edits.patch_file(frame, chosen, sources)
    changes = [edits.Change(e, 1, (e.row,)) for e in chosen if e not in rest]
    unread: dict = {}
    mapped, dated = _apply(patched, mapping, progress, unread)
    left, owner, settled = [], {}, {}
    dropped_rows = {e.row for e in rest if e.action == "drop" and e.row is not None}
    for p in dated:
        whole = edits.column_edit(rest, p.column)
        if p.row in dropped_rows or (whole is not None and p.column in unread):
            settled.setdefault(p.column, whole)
        else:
            left.append(p)
    for column, whole in settled.items():  # every unread cell of the column, not only the examples listed
        if whole is None:
            continue
        rows = tuple(int(r) for r in unread[column])
        if whole.action == "drop":
            for r in rows:
                owner[edits.drop(column, r)] = whole
        else:
            changes.append(edits.Change(whole, len(rows), rows))
    loader = list(owner)
    for e in rest:  # `was` was checked against the file; the loader sees mapped cells
        if e.column in mapped.columns or e.column == edits.ALL or e.row is not None:
            loader.append(replace(e, was=None))
            owner.setdefault(loader[-1], e)
    total = sum({p.column: p.count for p in left}.values())
    return Mapped(mapped, left, total, loader, owner, changes)


def _merge(m: Mapped, loaded: list) -> list:
    return edits.merge([*m.changes, *(edits.Change(m.owner.get(c.edit, c.edit), c.count, c.rows) for c in loaded)])


def load(frame: pd.DataFrame, mapping, con, extra=(), progress=None):
    """Load the mapped file into `con` (a Cohort whose `changes` list every edit's effect);
    CohortError lists the date cells not read, or the loader's problems."""
    from kn026.ingest.reader import part

    m = prepare(frame, mapping, extra, part(progress, 0.0, 0.5))
    if m.problems:
        raise CohortError(m.problems, total=m.total)
    if not len(m.frame.columns):
        return None
    cohort = load_cohort(m.frame, con, progress=part(progress, 0.5, 1.0), edits=m.loader)
    cohort.changes = tuple(_merge(m, list(cohort.changes)))
    return cohort


def written(frame: pd.DataFrame, mapping, extra=()) -> tuple[pd.DataFrame, list]:
    """(The mapped cohort with every edit applied, as `import --mapping` writes it; the changes).
    It is loaded first: CohortError lists what is still wrong and nothing is written."""
    m = prepare(frame, mapping, extra)
    if m.problems:
        raise CohortError(m.problems, total=m.total)
    con = _private_connection()
    try:
        cohort = load_cohort(m.frame, con, edits=m.loader)
    finally:
        con.close()
    return edits.apply_to_frame(m.frame, cohort.changes), _merge(m, list(cohort.changes))


def validate(mapped: pd.DataFrame, loader=()) -> tuple[list[Problem], int, list]:
    """load_cohort's problems for a mapped frame ([] when it loads), their total count, its changes."""
    con = _private_connection()
    try:
        cohort = load_cohort(mapped, con, edits=loader)
    except CohortError as err:
        return list(err.problems), err.total, []
    finally:
        con.close()
    return [], 0, list(cohort.changes)


def preview(frame: pd.DataFrame, mapping, rows: int = 20, progress=None) -> Preview:
    """Map the whole file with its edits, validate it with load_cohort, return the first rows and problems
    (date cells their column's format does not read first: they are empty in the rows)."""

    try:
        m = prepare(frame, mapping, (), progress)
    except edits.EditError as err:
        problem = Problem("edits", str(err).removeprefix("edits: "), kind="edit")
        m = None
        problems, total, changes, mapped = [problem], 1, [], frame.iloc[:0]
    if m is not None:
        mapped = m.frame
        problems, total, loaded = validate(mapped, m.loader)
        problems, total = m.problems + problems, m.total + total
        changes = _merge(m, loaded) if not problems else []
        mapped = edits.apply_to_frame(mapped, loaded) if not problems else mapped  # the rows as they load
    present = tuple(c.name for c in schema.COLUMNS if c.name in mapped.columns)
    absent = tuple(c.name for c in schema.COLUMNS if c.name not in mapped.columns)
    return Preview(mapped.head(rows), len(frame), problems, total, present, absent, value_report(frame, mapping),
                   changes)
