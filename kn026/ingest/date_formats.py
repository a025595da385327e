"""Date formats of a mapped file: each date column is read with ONE format, never guessed per value.

pandas' `to_datetime(format="mixed")` guesses every value on its own: in one dd/mm/yyyy
column it read 05/09/2022 as 9 May and 14/09/2022 as 14 September (issue 13). Here a
column's format is the mapping's `date_format` (a strptime format), or one the column's
values prove:

- year first (2022-09-05, ISO 8601; also 2022/09/05, 20220905: no export writes year-day-month),
- a month written as a name (05-Sep-2022),
- day first when some value has a first number above 12 (14/09/2022) and every date reads
  day first; month first likewise.

A column where every value reads in two orders (05/09/2022 only) is *ambiguous*, and one
whose values need different formats (13/01/2022 and 01/13/2022) is *mixed*: both are asked
(the wizard's selector, the CLI's refusal naming `date_format`), never guessed. A cell that
does not match the column's format is a bad cell (row, column, value, fix), never NULL.

    inference = infer(frame["Visit"])        # .format (proven or None), .status, .why
    dates, bad = read(frame["Visit"], "%d/%m/%Y")

The mapping side (which columns are dates, filling proven formats, the problems of bad
cells) is at the end; it takes a `kn026.ingest.mapping.Mapping` by duck typing (no import cycle).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pandas as pd

from kn026.base import schema
from kn026.ingest.problems import Problem

EXAMPLES_PER_COLUMN = 5  # bad cells listed per column (the loader's convention); all are counted
HEAD = 200  # distinct values that select the candidate formats before all values are read

# The common formats, offered by the wizard and tried by `infer`. Year-first formats are read
# year-month-day; day-first and month-first come in pairs, so one never wins by omission.
CATALOGUE: tuple[str, ...] = (
    "%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y/%m/%d", "%Y%m%d",
    "%d/%m/%Y", "%d/%m/%Y %H:%M", "%d/%m/%Y %H:%M:%S", "%d.%m.%Y", "%d-%m-%Y", "%d/%m/%y", "%d.%m.%y", "%d-%m-%y",
    "%m/%d/%Y", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%m.%d.%Y", "%m-%d-%Y", "%m/%d/%y", "%m.%d.%y", "%m-%d-%y",
    "%y/%m/%d", "%y-%m-%d",
    "%d %b %Y", "%d-%b-%Y", "%d-%b-%y", "%d%b%Y", "%d %B %Y", "%b %d, %Y", "%B %d, %Y",
)
_DIRECTIVES = {  # strptime directive -> (Excel-style pattern, regex of its text, field)
    "d": ("dd", r"\d{1,2}", "day"), "m": ("mm", r"\d{1,2}", "month"), "b": ("mmm", "[A-Za-z]{3}", "month"),
    "B": ("mmmm", "[A-Za-z]{3,9}", "month"), "Y": ("yyyy", r"\d{4}", "year"), "y": ("yy", r"\d{2}", "year"),
    "H": ("hh", r"\d{1,2}", ""), "I": ("hh", r"\d{1,2}", ""), "M": ("mm", r"\d{2}", ""), "S": ("ss", r"\d{2}", ""),
    "f": ("ffffff", r"\d{1,6}", ""), "p": ("AM/PM", "[AaPp][Mm]", ""), "a": ("ddd", "[A-Za-z]{3}", ""),
    "A": ("dddd", "[A-Za-z]{6,9}", ""), "%": ("%", "%", ""),
}
ORDERS = {"ymd": "year first", "dmy": "day first", "mdy": "month first", "name": "month as a name"}


class DateFormatError(ValueError):
    """A date column whose format is neither given nor proven by its values (message: which, and the fix)."""


# ----------------------------------------------------------------------------- formats


def _tokens(code: str) -> list[tuple[str, str]]:
    """[("d", ...) for a directive, ("", text) for literal text]; ValueError on an unknown directive."""
    out, i = [], 0
    while i < len(code):
        if code[i] == "%":
            if i + 1 >= len(code) or code[i + 1] not in _DIRECTIVES:
                bad = code[i:i + 2]
                raise ValueError(f"date_format {code!r}: {bad!r} is not a supported directive; use %d %m %b %B "
                                 f"%Y %y (and %H %M %S %I %p %f %a %A for a time or weekday)")
            out.append((code[i + 1], ""))
            i += 2
        else:
            out.append(("", code[i]))
            i += 1
    return out


def check_format(code: str, where: str = "date_format") -> None:
    """ValueError unless `code` is a strptime format with one day, one month and one year."""
    if not isinstance(code, str) or not code.strip():
        raise ValueError(f"{where}: give a strptime format such as '%d/%m/%Y'")
    fields = [_DIRECTIVES[d][2] for d, _ in _tokens(code) if d]
    for name in ("day", "month", "year"):
        if fields.count(name) != 1:
            raise ValueError(f"{where} {code!r} needs exactly one {name} directive "
                             f"({'%d' if name == 'day' else '%m, %b or %B' if name == 'month' else '%Y or %y'}); "
                             f"a date is never completed by a guess")


@cache
def _shape(code: str) -> str:
    """The regex a value must match before strptime reads it: 4-digit %Y, and zero-padded fields where
    two numbers touch (20220905), so 2022115 is not read as either 15 January or 5 November."""
    tokens = _tokens(code)
    parts = []
    for i, (d, lit) in enumerate(tokens):
        if not d:
            parts.append(re.escape(lit))
            continue
        rx = _DIRECTIVES[d][1]
        near = [tokens[j][0] for j in (i - 1, i + 1) if 0 <= j < len(tokens)]
        if rx == r"\d{1,2}" and any(n and _DIRECTIVES[n][1].startswith(r"\d") for n in near):
            rx = r"\d{2}"
        parts.append(rx)
    return "".join(parts)


def order(code: str) -> str:
    """"ymd", "dmy", "mdy" (by where day, month and year stand), or "name" when the month is a word."""
    directives = [d for d, _ in _tokens(code) if d and d in "dmbByY"]
    if any(d in "bB" for d in directives):
        return "name"
    key = "".join({"Y": "y"}.get(d, d) for d in directives)
    return key if key in ORDERS else "ymd"


def pattern(code: str) -> str:
    """The format as people write it: %d/%m/%Y -> dd/mm/yyyy, %d-%b-%y -> dd-mmm-yy."""
    return "".join(_DIRECTIVES[d][0] if d else lit for d, lit in _tokens(code))


def describe(code: str | None) -> str:
    """"dd/mm/yyyy (day first)", "yyyy-mm-dd (ISO 8601)", for labels and messages."""
    if not code:
        return "typed dates (no format needed)"
    kind = order(code)
    name = "ISO 8601" if kind == "ymd" and code.startswith("%Y-%m-%d") else ORDERS[kind]
    return f"{pattern(code)} ({name})"


def example(code: str, when: dt.datetime = dt.datetime(2022, 9, 5, 14, 30)) -> str:
    """5 September 2022 written in `code` (05/09/2022 for %d/%m/%Y)."""
    return when.strftime(code)


def human(value) -> str:
    """A date people cannot misread: 5 Sep 2022."""
    if value is None or pd.isna(value):
        return "—"
    return f"{value.day} {value:%b %Y}"


# ----------------------------------------------------------------------------- reading


def _naive(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize(None) if ts.tzinfo is not None else ts


def _texts(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(stripped non-empty text cells, typed date cells as naive Timestamps), both indexed like `values`."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        typed = values.dropna()
        typed = typed.dt.tz_localize(None) if typed.dt.tz is not None else typed
        return pd.Series([], dtype=object), typed.astype("datetime64[us]")
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):  # text cells only: vectorised
        text = values.astype(object).where(values.notna(), None).str.strip()
        return text[text.notna() & (text != "")].astype(object), pd.Series([], dtype="datetime64[us]")
    is_date = values.map(lambda v: isinstance(v, (dt.date, np.datetime64)) and not pd.isna(v)).astype(bool)
    text = values[~is_date].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v))
                                else str(v).strip())
    text = text[text.notna() & (text != "")].astype(object)
    typed = pd.to_datetime(values[is_date].map(_naive)) if is_date.any() else pd.Series([], dtype="datetime64[us]")
    return text, typed.astype("datetime64[us]")


def _parse(texts: pd.Series, code: str) -> pd.Series:
    """Each text read with `code` (NaT where it does not match the format exactly)."""
    if texts.empty:
        return pd.Series(pd.NaT, index=texts.index, dtype="datetime64[s]")
    fits = texts.str.fullmatch(_shape(code)).fillna(False).astype(bool)
    return pd.to_datetime(texts.where(fits), format=code, errors="coerce")


def read(values: pd.Series, code: str | None) -> tuple[pd.Series, pd.Series]:
    """(dates as Timestamps, NaT when empty or unreadable; mask of non-empty cells `code` does not read).

    Typed cells (a Parquet date, an Excel date object) are taken as they are. Text cells
    are read with `code` only: no cell is guessed, and one that does not match is bad.
    """
    texts, typed = _texts(values)
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us]")
    bad = pd.Series(False, index=values.index)
    if not typed.empty:
        out.loc[typed.index] = typed
    if texts.empty:
        return out, bad
    if code is None:
        raise DateFormatError("a date column with text values needs a date_format")
    uniques = pd.Series(texts.unique(), dtype=object)
    parsed = pd.Series(_parse(uniques, code).to_numpy(), index=uniques.to_numpy())
    got = texts.map(parsed)
    out.loc[texts.index] = pd.to_datetime(got).astype("datetime64[us]")
    bad.loc[texts.index] = got.isna().to_numpy()
    return out, bad


# ----------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class Inference:
    """What a column's values say about its format."""

    status: str  # proven | ambiguous | mixed | unreadable | empty (no text value) | typed (date cells only)
    format: str | None = None  # the proven format
    why: str = ""  # one sentence for people
    candidates: tuple[str, ...] = ()  # ambiguous: the formats that read every date; else by rows read
    rows: dict[str, int] = field(default_factory=dict)  # format -> non-empty rows it reads
    n: int = 0  # non-empty text rows
    unreadable: tuple[tuple[str, int], ...] = ()  # (value, row) that no common format reads, first few

    @property
    def settled(self) -> bool:
        """No choice is needed (a proven format, or nothing to read)."""
        return self.status in ("proven", "empty", "typed")


def _rel_rows(values: pd.Series, texts: pd.Series) -> dict[str, int]:
    """Text -> 1-based row (position in `values`) of its first occurrence."""
    where = pd.Series(np.arange(1, len(values) + 1), index=values.index)
    rows = where.loc[texts.index]
    first = pd.Series(rows.to_numpy(), index=texts.to_numpy())
    return first[~first.index.duplicated()].to_dict()


def infer(values: pd.Series, catalogue: tuple[str, ...] = CATALOGUE) -> Inference:
    """The format `values` prove, or why they do not (see the module docstring)."""
    texts, typed = _texts(values)
    if texts.empty:
        return Inference("typed" if not typed.empty else "empty",
                         why="the cells are dates already" if not typed.empty else "the column is empty")
    counts = texts.value_counts(sort=False)
    uniques = pd.Series(counts.index.astype(object), dtype=object)
    weights = counts.to_numpy()
    head = uniques.iloc[:HEAD]
    reads: dict[str, np.ndarray] = {}
    for code in catalogue:  # formats that read the first values, then the rest for what they leave
        if _parse(head, code).notna().any():
            reads[code] = _parse(uniques, code).notna().to_numpy()
    left = ~np.logical_or.reduce(list(reads.values())) if reads else np.ones(len(uniques), bool)
    if left.any():
        for code in catalogue:
            if code not in reads:
                got = _parse(uniques[left], code).notna().to_numpy()
                if got.any():
                    mask = np.zeros(len(uniques), bool)
                    mask[np.flatnonzero(left)[got]] = True
                    reads[code] = mask
    readable = np.logical_or.reduce(list(reads.values())) if reads else np.zeros(len(uniques), bool)
    rows = {c: int(weights[m].sum()) for c, m in reads.items()}
    n = int(weights.sum())
    first = _rel_rows(values, texts)
    unread = tuple((v, first[v]) for v in uniques[~readable].iloc[:3])
    if not readable.any():
        return Inference("unreadable", n=n, unreadable=unread,
                         why=f"no common date format reads its values (e.g. {_cite(unread[0])})")
    fits = [c for c in catalogue if c in reads and (reads[c] | ~readable).all()]
    ranked = tuple(sorted(reads, key=lambda c: (-rows[c], catalogue.index(c))))
    if len({order(c) for c in fits}) == 1:
        code = fits[0]
        return Inference("proven", code, _proof(code, uniques[readable], weights[readable], first), (code,),
                         rows, n, unread)
    if fits:
        options = " or ".join(describe(c) for c in fits)
        sample = uniques[readable].iloc[0]
        return Inference("ambiguous", None, f"every date reads as {options} (e.g. {_cite((sample, first[sample]))}"
                         f" is {_readings(sample, fits)})", tuple(fits), rows, n, unread)
    best = ranked[0]
    one = uniques[reads[best]].iloc[0]
    other = next(c for c in ranked if (reads[c] & ~reads[best]).any())
    two = uniques[reads[other] & ~reads[best]].iloc[0]
    return Inference("mixed", None, f"it mixes date formats: {_cite((one, first[one]))} reads as "
                     f"{describe(best)}, {_cite((two, first[two]))} only as {describe(other)}",
                     ranked, rows, n, unread)


def _cite(item: tuple[str, int]) -> str:
    return f"{item[0]!r} in row {item[1]}"


def _readings(value: str, codes) -> str:
    one = pd.Series([value], dtype=object)
    return " or ".join(human(_parse(one, c).iloc[0]) for c in codes)


def _proof(code: str, uniques: pd.Series, weights: np.ndarray, first: dict[str, int]) -> str:
    kind = order(code)
    if kind in ("ymd", "name"):
        why = "the year comes first" if kind == "ymd" else "the month is written as a name"
        return f"{why}, so the order is never in doubt"
    big = (_parse(uniques, code).dt.day > 12).to_numpy()  # day first: the first number; month first: the second
    n = int(weights[big].sum())
    sample = uniques[big].iloc[0] if big.any() else uniques.iloc[0]
    place = "first" if kind == "dmy" else "second"
    return (f"{n:,} date(s) have a {place} number above 12 (e.g. {_cite((sample, first[sample]))}) and every "
            f"date reads {ORDERS[kind]}")


# ----------------------------------------------------------------------------- a mapping's date columns


@dataclass(frozen=True)
class DateColumn:
    """One file column a mapping reads as dates."""

    key: str  # the dictionary column it fills, or "index_column"
    source: str  # the file column
    given: str | None  # the mapping's date_format (None: from the values)


def date_columns(mapping) -> list[DateColumn]:
    """The mapping's date columns, in dictionary order: screening_date, the date transforms, and the
    index date column when transforms need one that no other entry reads."""
    out = []
    for c in mapping.columns:
        if c.source is not None and (c.transform or schema.BY_NAME[c.target].kind == schema.DATE):
            out.append(DateColumn(c.target, c.source, c.date_format))
    index = index_source(mapping) if any(c.transform for c in mapping.columns) else None
    if index is not None and (mapping.index_column_format or all(d.source != index for d in out)):
        out.append(DateColumn("index_column", index, mapping.index_column_format))
    return out


def index_source(mapping) -> str | None:
    """The file column holding each row's index date (index_column, else screening_date's), or None."""
    if mapping.index_date is not None:
        return None
    if mapping.index_column is not None:
        return mapping.index_column
    c = mapping.get("screening_date")
    return c.source if c is not None else None


def set_format(mapping, key: str, code: str | None) -> None:
    """Give date column `key` (a dictionary column or "index_column") its format."""
    if key == "index_column":
        mapping.index_column_format = code
    else:
        mapping.get(key).date_format = code


def resolve(frame: pd.DataFrame, mapping, infer_fn=None) -> dict[str, str | None]:
    """File column -> its one format (None: typed or empty); DateFormatError naming every column
    whose format is neither given nor proven, with the date_format to give."""
    infer_fn = infer_fn or (lambda source: infer(frame[source]))
    out: dict[str, str | None] = {}
    columns = [d for d in date_columns(mapping) if d.source in frame.columns]  # else apply_mapping names it
    for d in columns:
        if d.given:
            if out.get(d.source, d.given) != d.given:
                raise DateFormatError(f"mapping: file column {d.source!r} is read with two date formats, "
                                      f"{out[d.source]!r} and {d.given!r}; one column takes one format")
            out[d.source] = d.given
    asks, asked = [], set()
    for d in columns:
        if d.source in out or d.source in asked:
            continue
        asked.add(d.source)
        inf = infer_fn(d.source)
        if inf.settled:
            out[d.source] = inf.format
        else:
            asks.append(ask(d, inf))
    if asks:
        raise DateFormatError("; ".join(asks))
    return out


def ask(d: DateColumn, inf: Inference) -> str:
    """The one-line refusal for a date column whose format must be given."""
    where = (f"mapping: {d.key} (file column {d.source!r})" if d.key != "index_column"
             else f"mapping: index_column {d.source!r}")
    key = "index_column_format" if d.key == "index_column" else "date_format"
    if inf.status == "ambiguous":
        give = " or ".join(f"{c!r} for {describe(c)}" for c in inf.candidates)
        return f"{where}: {inf.why}; dates are never guessed, give its {key}: {give}"
    if inf.status == "mixed":
        return (f"{where}: {inf.why}; one column takes one format: correct the file, or give its {key} "
                f"(e.g. {inf.candidates[0]!r}) and the other cells are reported as bad cells")
    return f"{where}: {inf.why}; give its {key} (a strptime format such as '%d/%m/%Y')"


def fill(frame: pd.DataFrame, mapping, infer_fn=None) -> list[tuple[DateColumn, Inference]]:
    """Write each proven format into the mapping (so a saved YAML carries it); return the columns
    that still need one, with what their values say."""
    infer_fn = infer_fn or (lambda source: infer(frame[source]))
    open_ = []
    for d in date_columns(mapping):
        if d.given or d.source not in frame.columns:
            continue
        inf = infer_fn(d.source)
        if inf.status == "proven":
            set_format(mapping, d.key, inf.format)
        elif not inf.settled:
            open_.append((d, inf))
    return open_


def bad_cells(frame: pd.DataFrame, column: str, source: str, code: str | None, bad: pd.Series,
              patient_ids: pd.Series | None) -> list[Problem]:
    """Problems (the loader's format) for the cells of file column `source` that `code` does not read."""
    n = int(bad.sum())
    if not n:
        return []
    fix = (f"is not a date in the format {describe(code)} ({code}) of file column {source!r}; correct the cell "
           f"(empty if unknown), or give the format the file uses ({'index_column_format' if column == 'index_column' else 'date_format'})")
    rows = np.flatnonzero(bad.to_numpy())[:EXAMPLES_PER_COLUMN]
    out = []
    for i in rows:
        pid = None if patient_ids is None else patient_ids.iloc[i]
        pid = None if pid is None or (isinstance(pid, float) and np.isnan(pid)) else str(pid).strip()
        out.append(Problem(column, fix, row=int(i) + 1, patient_id=pid, value=str(frame[source].iloc[i]), count=n,
                           kind="date"))
    return out


def index_dates(frame: pd.DataFrame, mapping, formats: dict[str, str | None]) -> tuple[pd.Series, pd.Series, str | None]:
    """(each row's index date, mask of index cells its format does not read, the file column or None)."""
    if mapping.index_date is not None:
        return pd.Series(pd.Timestamp(mapping.index_date), index=frame.index), pd.Series(False, index=frame.index), None
    source = index_source(mapping)
    if source is None or source not in frame.columns:
        raise ValueError(f"mapping: the index date column {source!r} is not in the file; set index_column "
                         f"or index_date")
    dates, bad = read(frame[source], formats.get(source))
    return dates, bad, source


def elapsed(transform: str, index: pd.Series, dates: pd.Series) -> pd.Series:
    """days_since: whole days from the event to the index date (NULL for an event after it);
    age_from_birth_date: whole years of age at the index date. Object cells, None when unknown."""
    if transform == "days_since":
        days = (index - dates).dt.days
        days = days.where(days >= 0)  # an event after the index date is not "before"
    else:
        days = index.dt.year - dates.dt.year - (
            (index.dt.month < dates.dt.month)
            | ((index.dt.month == dates.dt.month) & (index.dt.day < dates.dt.day))).astype(int)
        days = days.where(index.notna() & dates.notna())
    return days.astype("Int64").astype(object).where(days.notna(), None)


def date_report(frame: pd.DataFrame, mapping, infer_fn=None) -> pd.DataFrame:
    """Per date column: file column, format, how it was settled, earliest and latest date read, dates
    read and cells not read. For the wizard's preview and the import report (an analyst sees at once
    dates that fall in the wrong years or months)."""
    infer_fn = infer_fn or (lambda source: infer(frame[source]))
    rows = []
    for d in date_columns(mapping):
        if d.source not in frame.columns:
            continue
        inf = infer_fn(d.source)
        code = d.given or inf.format
        if d.given:
            how = "proven" if inf.status == "proven" and inf.format == d.given else "chosen"
        else:
            how = inf.status
        row = {"column": d.key, "source": d.source, "format": code or "", "shown": describe(code) if code or
               inf.status == "typed" else "", "how": how, "why": inf.why, "earliest": None, "latest": None,
               "dates": 0, "not_read": 0}
        if code is not None or inf.status in ("typed", "empty"):
            dates, bad = read(frame[d.source], code)
            row.update(earliest=dates.min() if dates.notna().any() else None,
                       latest=dates.max() if dates.notna().any() else None,
                       dates=int(dates.notna().sum()), not_read=int(bad.sum()))
        rows.append(row)
    return pd.DataFrame(rows, columns=["column", "source", "format", "shown", "how", "why", "earliest", "latest",
                                       "dates", "not_read"])
