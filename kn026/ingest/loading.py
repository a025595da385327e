"""A session's cohort, from uploaded bytes to a locked-down DuckDB connection (no Streamlit).

The app (ui/sources.py) calls these for every data source. Each returns a new private
in-memory connection holding the validated cohort; the caller installs it in the
session and then calls `seal`, which locks the connection down (kn026.rules.sandbox):
memory and thread limits, no file or network access, no extensions, no spilling to
disk, configuration locked.

Uploads are checked by content before any parser sees them (kn026.ingest.sniff) against
`upload_limit()`; they are parsed from memory, never written to disk (an OMOP zip is
read member by member into Arrow tables, see kn026.ingest.omop).

Settings (environment variables, read on each call):

- ``KN026_MAX_UPLOAD_MB``: upload size limit (default 200 MB, what a Streamlit
  Community Cloud app can hold in memory while it parses and loads the file);
- ``KN026_SESSION_MEMORY_LIMIT``: DuckDB memory limit per session (default 1GB);
- ``KN026_SESSION_THREADS``: DuckDB threads per session (default 2).
"""

from __future__ import annotations

import os

import pandas as pd

from kn026.base.table import Cohort, connect
from kn026.ingest import reader
from kn026.ingest import sniff as upload
from kn026.ingest.cohort import load_cohort
from kn026.ingest.problems import CohortError
from kn026.ingest.reader import Progress
from kn026.rules import sandbox

ENV_UPLOAD_MB = "KN026_MAX_UPLOAD_MB"
ENV_MEMORY = "KN026_SESSION_MEMORY_LIMIT"
ENV_THREADS = "KN026_SESSION_THREADS"
DEFAULT_UPLOAD_MB = 200
DEFAULT_MEMORY = "1GB"
DEFAULT_THREADS = 2
ZIP_INFLATE_FACTOR = 5  # an uploaded OMOP zip may inflate to 5x the upload limit (1 GB by default)
__all__ = ["Progress"]  # progress(fraction 0..1, message): every long load reports through it


class LoadError(ValueError):
    """An upload or import that did not produce a cohort; the message says why and what to do."""


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise LoadError(f"{name}={text!r} is not a number; set it to a number of MB or leave it unset") from None
    if value <= 0:
        raise LoadError(f"{name}={text!r} must be positive")
    return value


def upload_limit() -> int:
    """The upload size limit in bytes (``KN026_MAX_UPLOAD_MB``, default 200 MB)."""
    return int(_env_number(ENV_UPLOAD_MB, DEFAULT_UPLOAD_MB) * 1024 * 1024)


def upload_limit_mb() -> int:
    """The limit in whole MB (at least 1), for Streamlit's file_uploader(max_upload_size=...)."""
    return max(1, int(upload_limit() // (1024 * 1024)))


def session_connection():
    """A new private in-memory connection with the settings that keep data off disk."""
    con = connect()
    sandbox.prepare(con)
    return con


def seal(con) -> sandbox.Lockdown:
    """Lock a session connection down once its cohort is loaded (idempotent)."""
    memory = os.environ.get(ENV_MEMORY, "").strip() or DEFAULT_MEMORY
    threads = int(_env_number(ENV_THREADS, DEFAULT_THREADS))
    return sandbox.lock_down(con, memory_limit=memory, threads=threads)


def _close(con) -> None:
    try:
        con.close()
    except Exception:  # noqa: BLE001 - closing a connection that failed half-way
        pass


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ----------------------------------------------------------------------------- plain cohort file


def load_upload(name: str, data: bytes, max_bytes: int | None = None,
                progress: Progress = None, edits=()) -> tuple[object, Cohort]:
    """A cohort file (CSV, Parquet, Excel) in dictionary shape -> (connection, cohort).

    The loader's reader (`kn026.ingest.reader.open_bytes`, the same as the command line's)
    sniffs the bytes (kn026.ingest.sniff.sniff) and parses them in memory; `load_cohort`
    validates every value. Raises CohortError with the problems. `edits`: the analyst's
    choices about bad cells (kn026.ingest.edits), applied as the file loads (the bytes are not
    modified); `cohort.changes` lists what each did.
    """
    source = reader.open_bytes(name, data, max_bytes or upload_limit(), progress)
    con = session_connection()
    try:
        return con, load_cohort(source, con, progress=progress, edits=list(edits))
    except BaseException:
        _close(con)
        raise


# ----------------------------------------------------------------------------- OMOP zip


def import_omop_upload(name: str, data: bytes, index_date="last", lookback_days: int | None = None,
                       closed_world: bool = True, progress: Progress = None,
                       max_bytes: int | None = None):
    """An uploaded OMOP CDM zip -> (connection, cohort, import report).

    The zip is checked (`upload.sniff_zip`: size, magic, zip bomb; at most
    ZIP_INFLATE_FACTOR x the limit inflated), then read in memory on the new session
    connection, which is locked down *before* the import runs: the import needs no file
    access. Raises LoadError (one line) or CohortError (problems).
    """
    from kn026.ingest import omop

    limit = max_bytes or upload_limit()
    try:  # members are parsed in memory: at most 5x the upload limit once inflated
        upload.sniff_zip(data, name, max_bytes=limit, max_uncompressed=ZIP_INFLATE_FACTOR * limit)
    except upload.UploadError as err:
        raise LoadError(str(err)) from None
    con = session_connection()
    try:
        seal(con)
        try:
            frame, report = omop.import_omop(data, index_date, lookback_days, con, closed_world=closed_world,
                                             progress=progress, name=upload._shown(name))
        except ValueError as err:
            raise LoadError(f"{upload._shown(name)}: {_first_line(err)}") from None
        except Exception as err:  # noqa: BLE001 - DuckDB / Arrow errors on a malformed CDM
            raise LoadError(f"{upload._shown(name)} could not be imported ({_first_line(err)}); check that "
                            "it holds OMOP CDM 5.3 / 5.4 tables as CSV or Parquet") from None
        if frame.empty:
            raise LoadError(f"{upload._shown(name)}: no person could be screened at index date "
                            f"{report.index_date} ({'; '.join(f'{n} {r}' for r, n in report.excluded.items()) or 'PERSON is empty'})")
        if progress is not None:
            progress(0.97, f"validating {len(frame):,} patients against the data dictionary")
        cohort = load_cohort(frame, con, progress=reader.part(progress, 0.97, 1.0))
    except BaseException:
        _close(con)
        raise
    return con, cohort, report


# ----------------------------------------------------------------------------- mapped CSV / Excel


def read_foreign(name: str, data: bytes, max_bytes: int | None = None) -> pd.DataFrame:
    """A CSV / Excel / Parquet export in any layout -> a frame (text cells; Parquet keeps its types).

    Sniffed and parsed in memory by `reader.read_cohort_bytes`. Raises LoadError.
    """
    try:
        table = reader.read_cohort_bytes(name, data, max_bytes=max_bytes or upload_limit())
    except CohortError as err:
        raise LoadError("; ".join(p.message for p in err.problems)) from None
    frame = table if isinstance(table, pd.DataFrame) else table.to_pandas()
    frame.columns = [str(c) for c in frame.columns]
    if frame.columns.duplicated().any():
        dup = frame.columns[frame.columns.duplicated()][0]
        raise LoadError(f"{upload._shown(name)}: the header names column {dup!r} twice; rename one of them")
    if frame.empty:
        raise LoadError(f"{upload._shown(name)}: the file has a header but no rows")
    return frame


def read_mapping_yaml(name: str, data: bytes, frame: pd.DataFrame | None = None):
    """An uploaded mapping YAML -> Mapping; its sources must be columns of `frame` when given."""
    from kn026.ingest.mapping import Mapping

    try:
        text = upload.sniff_text(data, name)
    except upload.UploadError as err:
        raise LoadError(str(err)) from None
    try:
        mapping = Mapping.from_yaml(text)
    except ValueError as err:
        raise LoadError(f"{upload._shown(name)}: {_first_line(err).removeprefix('mapping: ')}") from None
    if frame is not None:
        missing = [c.source for c in mapping.columns if c.source is not None and c.source not in frame.columns]
        if missing:
            raise LoadError(f"{upload._shown(name)}: column(s) {', '.join(map(repr, missing))} are not in the "
                            f"file; this mapping was made for another layout (its file columns: "
                            f"{', '.join(sorted({c.source for c in mapping.columns if c.source})[:8])} ...)")
    return mapping


def load_mapped(frame: pd.DataFrame, mapping, progress: Progress = None):
    """Apply `mapping` (with its edits, kn026.ingest.edits) to `frame` and load it -> (connection, cohort).

    `cohort.changes` lists what each edit did. LoadError / CohortError.
    """
    from kn026.ingest import mapped

    if not mapping.columns:
        raise LoadError("no dictionary column is mapped; choose the file column of patient_id at least")
    con = session_connection()
    try:
        cohort = mapped.load(frame, mapping, con, progress=progress)
    except CohortError:
        _close(con)
        raise  # date cells their column's format does not read, bad values: listed with the fix
    except ValueError as err:
        _close(con)
        raise LoadError(_first_line(err).removeprefix("mapping: ")) from None
    except BaseException:
        _close(con)
        raise
    return con, cohort


# ----------------------------------------------------------------------------- reports for display


def _hidden(n, k: int | None) -> bool:
    return k is not None and n is not None and 0 < int(n) < k


def count_text(n: int, k: int | None = None) -> str:
    """A count for display: "fewer than k" when small-cell suppression hides it."""
    return f"fewer than {k}" if _hidden(n, k) else f"{int(n):,}"


def omop_report_table(report, k: int | None = None) -> pd.DataFrame:
    """The OMOP import report, one row per dictionary column, for display.

    With small-cell suppression on (`k`), counts of patients below k (and above 0) are
    hidden: None in "with_value" / "pct", "suppressed" in "true" (text, empty for
    columns that are not flags), "fewer than k" inside the "concepts" and "units" texts.
    """
    rows = []
    n = max(int(report.n_persons), 1)
    for c in report.columns:
        value = None if _hidden(c.n_value, k) else c.n_value
        true = "" if c.n_true is None else "suppressed" if _hidden(c.n_true, k) else f"{c.n_true:,}"
        concepts = "; ".join(f"{cid} {name} ({f'fewer than {k}' if _hidden(cnt, k) else cnt})"
                             for cid, name, cnt in c.concepts)
        units = "; ".join(f"{u} ({f'fewer than {k}' if _hidden(cnt, k) else cnt})" for u, cnt in c.units.items())
        rows.append({"column": c.column, "status": c.status, "with_value": value,
                     "pct": None if value is None else 100 * value / n,
                     "true": true, "concepts": concepts, "units": units, "source": c.source, "note": c.note})
    return pd.DataFrame(rows, columns=["column", "status", "with_value", "pct", "true", "concepts", "units",
                                       "source", "note"])


def mapping_table(mapping) -> pd.DataFrame:
    """What a mapping does per dictionary column: file column or constant, unit conversion (empty:
    none), date transform, date format (empty: not a date), value translations."""
    from kn026.base import schema
    from kn026.ingest.date_formats import describe
    from kn026.ingest.mapping import unit_factor

    rows = []
    for c in mapping.columns:
        col = schema.BY_NAME[c.target]
        factor = c.factor if c.factor is not None else unit_factor(c.target, c.unit) if c.unit else None
        rows.append({"column": c.target, "from": c.source if c.source is not None else f"constant {c.constant!r}",
                     "unit": (f"{c.unit} × {factor:g} → {col.unit}" if c.unit and factor is not None
                              else f"× {factor:g} → {col.unit}" if factor is not None else ""),
                     "transform": c.transform or "",
                     "date_format": f"{describe(c.date_format)}: {c.date_format}" if c.date_format else "",
                     "values": "; ".join(f"{k} → {v if v != '' else '(empty)'}" for k, v in c.values.items())})
    if mapping.index_column_format:
        rows.append({"column": "(index date)", "from": mapping.index_column, "unit": "", "transform": "",
                     "date_format": f"{describe(mapping.index_column_format)}: {mapping.index_column_format}",
                     "values": ""})
    return pd.DataFrame(rows, columns=["column", "from", "unit", "transform", "date_format", "values"])


def value_table(values: pd.DataFrame, k: int | None = None) -> pd.DataFrame:
    """mapping.value_report for display; counts below k hidden."""
    out = values.copy()
    if k is not None and not out.empty:
        out["count"] = out["count"].astype("Int64").mask(out["count"].between(1, k - 1))
    return out
