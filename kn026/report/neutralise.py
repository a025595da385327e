"""Make exported text safe to open in a spreadsheet (OWASP CSV injection advice).

A cell an analyst downloads may hold patient-supplied or analyst-written text; a
spreadsheet would run "=HYPERLINK(...)" as a formula. Every export (CSV, Excel, the
feasibility report) passes its text through here.
"""

from __future__ import annotations

import re

import pandas as pd

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def neutralise_text(value):
    """`value` with a leading ' if a spreadsheet would read it as a formula; others unchanged.

    Only text is touched. Text that is a plain number ("-5", "+1.5e3") is left alone:
    a spreadsheet reads it as that number, never as a formula.
    """
    if not isinstance(value, str) or not value.startswith(FORMULA_PREFIXES):
        return value
    if _PLAIN_NUMBER.match(value):
        return value
    return "'" + value


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` safe to export as CSV or Excel (OWASP CSV injection advice).

    Text cells (and text column labels) starting with = + - @ tab or carriage return
    get a leading single quote. Numbers, booleans, dates and NULLs are untouched, so
    a negative number stays a number.
    """
    out = frame.copy()
    for i in range(out.shape[1]):  # by position: labels may repeat
        series = out.iloc[:, i]
        if isinstance(series.dtype, pd.CategoricalDtype):
            cats = series.cat.categories
            fixed = [neutralise_text(c) for c in cats]
            if fixed != list(cats):
                if len(set(fixed)) == len(fixed):
                    out.isetitem(i, series.cat.rename_categories(fixed))
                else:
                    out.isetitem(i, series.astype(object).map(neutralise_text, na_action="ignore"))
        elif series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
            out.isetitem(i, series.map(neutralise_text, na_action="ignore"))
    labels = [neutralise_text(c) for c in out.columns]
    if labels != list(out.columns):
        out.columns = labels
    return out
