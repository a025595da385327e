"""Read a cohort source once, as Arrow chunks: the one reader of the command line and the app.

A path (command line), uploaded bytes (app) or an in-memory frame becomes a `Source`:
the header as written, the row count (exact for Parquet and frames, estimated for CSV)
and an iterator of chunks in row order (Arrow tables, or pandas frames as given), each
at most `CHUNK_ROWS` rows, so that a cohort larger than memory loads in bounded memory.

Readers, chosen by measurement (README, Benchmark; 200k-row, 82 MB CSV): pyarrow's CSV
reader (0.4-0.6 s, all cells as text; DuckDB's read_csv 2-4 s, pandas' C reader with
text columns 1.9 s), pyarrow for Parquet, and python-calamine through pandas for Excel
(7x faster than openpyxl with the same cell-to-text rules). CSV and Excel cells are
read as text so that the loader, not a type guesser, decides what each value means. An
empty CSV cell is NULL (dictionary section 1). Nothing is written to disk: uploads are
parsed from memory, files are only read.
"""

from __future__ import annotations

import csv
import gzip
import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

Progress = Callable[[float, str], None] | None
CHUNK_ROWS = 1_000_000  # rows normalised and stored at a time (bounds peak memory)
_POLL_S = 0.1  # how often a CSV read in progress reports
_CSV_SAMPLE = 65536
CSV_STREAM_BYTES = 512 << 20  # larger CSV files are read chunk by chunk as they load (bounded memory)
CSV_BLOCK = 4 << 20  # pyarrow's CSV block: 4 MB read 200k rows in 0.7 s where 1 MB took 1.4 s (2 cores)
READING = 0.5  # share of the load's progress bar taken by reading


@dataclass
class Source:
    """A cohort source opened for one read: header as written, row count, chunks in row order."""

    name: str  # shown in messages
    header: list[str] | None  # as written; None: the chunks' own names
    rows: int | None  # exact row count, or an estimate (`estimated`)
    chunks: Iterator  # pyarrow.Table or pandas.DataFrame, each at most CHUNK_ROWS rows
    label: str = ""  # Cohort.source
    estimated: bool = False


def _problem(message: str):
    from kn026.ingest.problems import CohortError, Problem

    return CohortError([Problem("file", message)])


class _Reported:
    """Calls `progress` with the share of bytes read while a reader thread runs."""

    def __init__(self, progress: Progress, what: str, total_bytes: int, rows: int | None):
        self.progress, self.what, self.total, self.rows = progress, what, max(total_bytes, 1), rows

    def report(self, done: int) -> None:
        if self.progress is None:
            return
        share = min(done / self.total, 1.0)
        rows = f": ~{int(share * self.rows):,} of ~{self.rows:,} rows" if self.rows else ""
        self.progress(READING * share, f"reading {self.what}{rows}")


class _Counting(io.RawIOBase):
    """A read-only file object that counts the bytes read through it (for progress)."""

    def __init__(self, raw):
        self.raw, self.count = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        self.count += n or 0
        return n


def _in_thread(fn, counter: _Counting | None, reported: _Reported | None):
    """Run `fn` in a thread while this thread reports progress; return its result or raise its error."""
    if reported is None or reported.progress is None or counter is None:
        return fn()
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = err

    thread = threading.Thread(target=run, name="kn026-reader", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(_POLL_S)
        reported.report(counter.count)
    if "error" in out:
        raise out["error"]
    reported.report(reported.total)
    return out["value"]


# ----------------------------------------------------------------------------- CSV


def _sniff_csv(head: bytes) -> tuple[str, list[str]]:
    """(delimiter, header names) from the first line of the file."""
    text = head.decode("utf-8-sig", errors="replace")
    first = text.splitlines()[0] if text else ""
    try:
        delimiter = csv.Sniffer().sniff(first, delimiters=",;\t|").delimiter
    except csv.Error:
        delimiter = ","
    names = next(csv.reader([first], delimiter=delimiter), [])
    return delimiter, names


def _estimate_rows(head: bytes, total_bytes: int) -> int | None:
    """Data rows in a file of `total_bytes` whose first bytes are `head` (for progress only)."""
    start = head.find(b"\n") + 1
    end = head.rfind(b"\n") + 1
    lines = head.count(b"\n", start, end)
    if not start or lines < 1 or total_bytes <= 0:
        return None
    if len(head) >= total_bytes:
        return lines + (0 if head.endswith(b"\n") else 1)
    return max(int((total_bytes - start) * lines / (end - start)), 1)


def _named_like_duckdb(names: list[str]) -> list[str]:
    """Empty header names become DuckDB's `column<i>` (as the command line read them before)."""
    width = len(str(max(len(names) - 1, 0)))
    return [n if n != "" else f"column{i:0{width}d}" for i, n in enumerate(names)]


def _csv_options(names: list[str], delimiter: str, threads: bool, handler=None, empty_as_null: bool = True):
    return dict(
        read_options=pacsv.ReadOptions(encoding="utf8", use_threads=threads, block_size=CSV_BLOCK),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True,
                                         invalid_row_handler=handler),
        convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                             null_values=[""], strings_can_be_null=empty_as_null,
                                             quoted_strings_can_be_null=empty_as_null))


def _csv_error(err: Exception, reopen: Callable[[], object], delimiter: str, names: list[str]) -> str:
    """Why a CSV could not be read, without echoing the offending line (it may hold patient data)."""
    text = str(err)
    if "UTF8" in text or "UTF-8" in text:
        from kn026.ingest import sniff as upload

        data = reopen().read()
        try:
            upload._check_utf8(data, "the file")
        except upload.UploadError as bad:
            return str(bad).split(";")[0].replace("the file: the file is not UTF-8 text", "the text is not utf-8")
        return "the text is not utf-8"
    if "Expected" in text and "columns" in text:
        seen: list = []

        def handler(row):
            seen.append(row)
            return "error"

        try:
            pacsv.read_csv(reopen(), **_csv_options(names, delimiter, False, handler))
        except (pa.ArrowInvalid, OSError):
            pass
        if seen:
            row = seen[0]
            return (f"line {row.number} has {row.actual_columns} field(s) where the header has "
                    f"{row.expected_columns}") if row.number else (
                f"a row has {row.actual_columns} field(s) where the header has {row.expected_columns}")
    return text.split(":")[0] if ": " in text else text


def _read_csv(opener: Callable[[], object], size: int, name: str, progress: Progress,
              empty_as_null: bool = True) -> tuple[pa.Table, list[str]]:
    """The whole CSV as an Arrow table of text columns (read in a thread while progress is reported)."""
    with opener() as fh:
        head = fh.read(_CSV_SAMPLE)
    delimiter, names = _sniff_csv(head)
    if not names or not any(n.strip() for n in names):
        raise ValueError("the first line must be a header naming the columns")
    rows = _estimate_rows(head, size)
    counter = _Counting(opener())
    try:
        table = _in_thread(lambda: pacsv.read_csv(io.BufferedReader(counter, 1 << 20),
                                                  **_csv_options(names, delimiter, True,
                                                                 empty_as_null=empty_as_null)),
                           counter, _Reported(progress, name, size, rows))
    except pa.ArrowInvalid as err:
        raise ValueError(_csv_error(err, opener, delimiter, names)) from None
    finally:
        counter.raw.close()
    if progress is not None:
        progress(READING, f"read {name}: {table.num_rows:,} rows")
    header = list(table.column_names)
    return table.rename_columns(_named_like_duckdb(header)), header


def _stream_csv(opener: Callable[[], object], size: int, name: str, progress: Progress) -> Source:
    """A large CSV as chunks of CHUNK_ROWS rows, read as the loader asks for them."""
    with opener() as fh:
        head = fh.read(_CSV_SAMPLE)
    delimiter, names = _sniff_csv(head)
    if not names or not any(n.strip() for n in names):
        raise ValueError("the first line must be a header naming the columns")
    rows = _estimate_rows(head, size)
    counter = _Counting(opener())
    try:
        stream = pacsv.open_csv(io.BufferedReader(counter, 1 << 20), **_csv_options(names, delimiter, True))
    except pa.ArrowInvalid as err:
        counter.raw.close()
        raise ValueError(_csv_error(err, opener, delimiter, names)) from None
    header = list(stream.schema.names)
    renamed = _named_like_duckdb(header)
    reported = _Reported(progress, name, size, rows)

    def chunks():
        batches, n, yielded = [], 0, False
        try:
            for batch in stream:
                batches.append(batch)
                n += batch.num_rows
                reported.report(counter.count)
                if n >= CHUNK_ROWS:
                    yield pa.Table.from_batches(batches).rename_columns(renamed)
                    batches, n, yielded = [], 0, True
            if batches or not yielded:
                yield pa.Table.from_batches(batches, schema=stream.schema).rename_columns(renamed)
        except pa.ArrowInvalid as err:
            raise _problem(f"{name} could not be read: {_csv_error(err, opener, delimiter, names)}; "
                           f"{_HINT_PATH}") from None
        finally:
            counter.raw.close()

    return Source(name, header, rows, chunks(), estimated=True)


def _chunks(table, rows: int = CHUNK_ROWS) -> Iterator:
    n = len(table)
    if n <= rows:
        yield table
        return
    for start in range(0, n, rows):
        yield table.slice(start, rows) if isinstance(table, pa.Table) else table.iloc[start:start + rows]


# ----------------------------------------------------------------------------- Parquet and Excel


def _parquet(fh, name: str, progress: Progress) -> Source:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(fh)
    total = pf.metadata.num_rows

    def chunks():
        batches, rows, done = [], 0, 0
        for batch in pf.iter_batches(batch_size=65_536):
            batches.append(batch)
            rows += batch.num_rows
            done += batch.num_rows
            if progress is not None:
                progress(READING * done / max(total, 1), f"reading {name}: {done:,} of {total:,} rows")
            if rows >= CHUNK_ROWS:
                yield pa.Table.from_batches(batches)
                batches, rows = [], 0
        if batches or not done:
            yield pa.Table.from_batches(batches, schema=pf.schema_arrow)

    return Source(name, list(pf.schema_arrow.names), total, chunks())


def _excel(fh, name: str, progress: Progress):
    """The first sheet as a frame of text cells, and its header row as written."""
    import pandas as pd

    if progress is not None:
        progress(0.0, f"reading {name}")
    frame = pd.read_excel(fh, engine="calamine", dtype=str, keep_default_na=False, header=None)
    if frame.empty:
        return None, []
    # header=None: pandas would rename a repeated header to "age_years.1"
    header = [str(c) for c in frame.iloc[0]]
    frame = frame.iloc[1:].set_axis(header, axis=1).reset_index(drop=True)
    if progress is not None:
        progress(READING, f"read {name}: {len(frame):,} rows")
    return frame, header


# ----------------------------------------------------------------------------- entry points


_HINT_PATH = "save it as UTF-8 CSV with a header row, Parquet or Excel (.xlsx)"


def open_path(source, progress: Progress = None) -> Source:
    """A cohort file on disk (command line). Raises CohortError (column "file")."""
    path = Path(source)
    if not path.is_file():
        raise _problem(f"{path} does not exist or is not a file; check the path")
    suffix = path.suffix.lower()
    with path.open("rb") as fh:
        head = fh.read(8)
    label = str(source)
    if suffix == ".parquet" or head[:4] == b"PAR1":
        try:
            src = _parquet(str(path), path.name, progress)
        except (pa.ArrowException, OSError) as err:
            raise _problem(f"{path.name} could not be read: {_first(err)}; {_HINT_PATH}") from None
        src.label = label
        return src
    if suffix in (".xlsx", ".xlsm"):
        try:
            frame, header = _excel(path, path.name, progress)
        except Exception as err:  # noqa: BLE001 - the workbook readers raise many kinds
            raise _problem(f"{path.name} is not a readable Excel workbook: {err}") from None
        if frame is None:
            raise _problem(f"{path.name}: the first sheet is empty; put a header row with patient_id on the first sheet")
        return Source(path.name, header, len(frame), _chunks(frame), label)
    if suffix in (".csv", ".txt", ".tsv", ".gz") or not suffix:
        gz = suffix == ".gz" or head[:2] == b"\x1f\x8b"

        def opener():
            return gzip.open(path, "rb") if gz else path.open("rb", buffering=0)

        size = path.stat().st_size
        try:
            if size > CSV_STREAM_BYTES:  # a compressed file's size counts as is: it inflates several times
                src = _stream_csv(opener, -1 if gz else size, path.name, progress)
                src.label = label
                return src
            table, header = _read_csv(opener, -1 if gz else size, path.name, progress)
        except (ValueError, OSError, EOFError, gzip.BadGzipFile) as err:
            raise _problem(f"{path.name} could not be read: {_first(err)}; {_HINT_PATH}") from None
        return Source(path.name, header, len(table), _chunks(table), label)
    raise _problem(f"{path.name}: unsupported file type {suffix!r}; use CSV, Parquet or Excel (.xlsx)")


def open_bytes(name: str, data: bytes, max_bytes: int, progress: Progress = None,
               empty_as_null: bool = True) -> Source:
    """An uploaded cohort file, parsed from memory after `kn026.ingest.sniff.sniff` checked its bytes.

    `empty_as_null=False` keeps an empty CSV cell as "" (the mapping wizard's text cells,
    where "" is a value that a mapping may translate).
    """
    from kn026.ingest import sniff as upload

    if not data:
        raise _problem(f"{name} is empty; upload a file with a header row and one row per patient")
    try:
        kind = upload.sniff(data, name, max_bytes=max_bytes)  # the bytes must be what the name says
    except upload.UploadError as err:
        raise _problem(str(err)) from None
    shown = upload._shown(name)
    try:
        if kind == "parquet":
            return _parquet(pa.BufferReader(data), shown, progress)
        if kind == "xlsx":
            frame, header = _excel(io.BytesIO(data), shown, progress)
            if frame is None:
                raise _problem(f"{shown}: the first sheet is empty; put a header row with patient_id on the first sheet")
            return Source(shown, header, len(frame), _chunks(frame), shown)
        view = memoryview(data)
        table, header = _read_csv(lambda: io.BytesIO(view), len(data), shown, progress, empty_as_null)
        return Source(shown, header, len(table), _chunks(table), shown)
    except Exception as err:
        from kn026.ingest.problems import CohortError

        if isinstance(err, CohortError):
            raise
        raise _problem(f"{name} could not be read: {_first(err)}. Check that it is a "
                       "CSV, Parquet or Excel (.xlsx) file") from None


def open_frame(frame) -> Source:
    """An in-memory table (pandas, Arrow, or anything DuckDB can scan)."""
    header = getattr(frame, "column_names", None)  # Arrow
    if header is None:
        header = getattr(frame, "columns", None)  # pandas, polars
    rows = len(frame) if hasattr(frame, "__len__") else None
    chunks = _chunks(frame) if isinstance(frame, pa.Table) or hasattr(frame, "iloc") else iter([frame])
    return Source(type(frame).__name__, None if header is None else list(header), rows, chunks,
                  type(frame).__name__)


def open_source(source, progress: Progress = None) -> Source:
    """A path or an in-memory table (an already opened Source passes through)."""
    if isinstance(source, Source):
        return source
    if isinstance(source, (str, Path)):
        return open_path(source, progress)
    return open_frame(source)


def read_all(src: Source):
    """The whole source as one table (Arrow, or the pandas frame as read): for the mapping wizard."""
    parts = list(src.chunks)
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], pa.Table):
        return pa.concat_tables(parts)
    import pandas as pd

    return pd.concat(parts, ignore_index=True)


MAX_UPLOAD_BYTES = 1024 * 1024 * 1024  # as server.maxUploadSize in .streamlit/config.toml


def read_cohort_bytes(name: str, data: bytes, max_bytes: int = MAX_UPLOAD_BYTES):
    """An uploaded cohort file (CSV, Parquet or Excel) as an Arrow table or DataFrame.

    Read by `open_bytes`: `kn026.ingest.sniff.sniff`
    first checks that the bytes are what the name says (no renamed binaries, UTF-8 text,
    a real workbook); CSV and Excel cells are read as text so that the loader, not a
    type guesser, decides what each value means; an empty CSV cell is "" (text cells for
    the mapping wizard; `load_cohort` reads "" and NULL alike). Raises CohortError
    (column "file") for an unreadable, unsafe or unsupported file.
    """
    return read_all(open_bytes(name, data, max_bytes, empty_as_null=False))


def _first(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def part(progress: Progress, start: float, end: float) -> Progress:
    """`progress` for one step of a longer task: fractions 0..1 mapped onto start..end."""
    if progress is None:
        return None

    def report(fraction: float, message: str) -> None:
        progress(start + (end - start) * min(max(fraction, 0.0), 1.0), message)

    return report
