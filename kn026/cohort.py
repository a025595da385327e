"""Load a screening cohort into a per-session DuckDB table, normalised and validated.

Input is CSV, Parquet, Excel or a DataFrame / Arrow table. Every dictionary column
is parsed by its kind (schema.py): boolean and sex spellings are normalised,
categories lower-cased with whitespace folded, numbers range-checked. A value that
cannot be read is an error naming the column, row, patient and value, never a
silent NULL. Validation runs as a few SQL scans, so millions of rows load fast.
The input file is only read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from kn026 import schema
from kn026.schema import CATEGORY, DATE, FLAG, ID, INTEGER, NUMBER, TEXT

EXAMPLES_PER_COLUMN = 5
# Blanks trimmed from every value: one-argument trim() removes spaces only, so a tab or a
# no-break space (common in spreadsheet exports) would otherwise turn " GEJ\t" into "gej_".
_BLANKS = " \t\n\r\f\v\u00a0"
_NUMERIC = re.compile(r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|"
                      r"UBIGINT|UHUGEINT|FLOAT|DOUBLE|DECIMAL.*)$")
_INTEGRAL = re.compile(r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|"
                       r"UBIGINT|UHUGEINT)$")


@dataclass(frozen=True)
class Problem:
    """One bad value (or a file-level problem when `row` is None)."""

    column: str
    message: str
    row: int | None = None  # 1-based data row (header excluded)
    patient_id: str | None = None
    value: str | None = None
    count: int = 1  # how many rows share this problem in this column

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else ""
        if self.patient_id is not None:
            where += f" (patient_id {self.patient_id})"
        value = f" value {self.value!r}:" if self.value is not None else ""
        return f"{self.column}: {where}{value} {self.message}".replace("  ", " ").strip()


class CohortError(ValueError):
    """The cohort cannot be loaded; `problems` lists every issue found."""

    def __init__(self, problems: list[Problem], total: int | None = None):
        self.problems = problems
        self.total = total if total is not None else len(problems)
        lines = [str(p) for p in problems[:20]]
        more = self.total - len(lines)
        super().__init__("\n".join(lines) + (f"\n... and {more} more" if more > 0 else ""))


@dataclass
class Cohort:
    """A loaded cohort: the DuckDB connection and table, and which columns it has."""

    con: duckdb.DuckDBPyConnection
    table: str
    n: int
    present: frozenset[str]  # dictionary columns in the table
    extra: tuple[str, ...] = ()  # other columns, kept as read
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def absent(self) -> tuple[str, ...]:
        return tuple(c.name for c in schema.COLUMNS if c.name not in self.present)


COHORT_DB = "cohort_db"
LOAD_CHUNK = 2_000_000  # rows per insert when loading large cohorts (bounds peak memory)


def connect(threads: int | None = None, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """A private in-memory DuckDB connection (one per session, nothing on disk).

    Cohort tables live in a compressed in-memory database (`cohort_db`, named by a view
    in the default catalog): after a checkpoint a cohort takes about a tenth of its
    plain in-memory size (52 MB instead of 583 MB per million patients of the full
    dictionary), and scans get faster, not slower.
    """
    con = duckdb.connect(":memory:")
    con.execute("SET enable_progress_bar = false")
    con.execute(f"ATTACH ':memory:' AS {COHORT_DB} (COMPRESS)")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if memory_limit:
        con.execute("SET memory_limit = ?", [memory_limit])
    return con


def cursor(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A cursor on the same database: its own results, so nobody's unfinished one blocks it."""
    return con.cursor()


def q(name: str) -> str:
    """Quote an identifier for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _raw_relation(con, source, name: str) -> list[str]:
    """Expose the input to DuckDB as view `name`, reading only; return the header as written.

    DuckDB renames repeated column names (`age_years`, `Age_Years` -> `Age_Years_1`), so
    the header is read separately to let the loader report duplicates.
    """
    if not isinstance(source, (str, Path)):
        con.register(name + "_frame", source)
        con.execute(f"CREATE OR REPLACE TEMP VIEW {q(name)} AS SELECT * FROM {q(name + '_frame')}")
        header = getattr(source, "column_names", None)  # Arrow
        if header is None:
            header = getattr(source, "columns", None)  # pandas, polars
        return _header_or_described(con, name, header)
    path = Path(source)
    if not path.is_file():
        raise CohortError([Problem("file", f"{path} does not exist or is not a file; check the path")])
    suffix = path.suffix.lower()
    with path.open("rb") as fh:
        head = fh.read(8)
    if suffix == ".parquet" or head[:4] == b"PAR1":
        reader = f"read_parquet({_lit(str(path))})"
    elif suffix in (".xlsx", ".xlsm"):
        import pandas as pd

        try:
            frame = pd.read_excel(path, dtype=str, keep_default_na=False, header=None)
        except Exception as err:  # openpyxl raises many kinds
            raise CohortError([Problem("file", f"{path.name} is not a readable Excel workbook: {err}")]) from None
        if frame.empty:
            raise CohortError([Problem("file", f"{path.name}: the first sheet is empty; "
                                               "put a header row with patient_id on the first sheet")])
        # header=None: pandas would rename a repeated header to "age_years.1"
        frame = frame.iloc[1:].set_axis([str(c) for c in frame.iloc[0]], axis=1).reset_index(drop=True)
        return _raw_relation(con, frame, name)
    elif suffix in (".csv", ".txt", ".tsv", ".gz") or not suffix:
        reader = (f"read_csv({_lit(str(path))}, all_varchar = true, header = true, "
                  f"auto_detect = true, sample_size = -1)")
    else:
        raise CohortError([Problem("file", f"{path.name}: unsupported file type {suffix!r}; "
                                           "use CSV, Parquet or Excel (.xlsx)")])
    try:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {q(name)} AS SELECT * FROM {reader}")
        con.execute(f"SELECT * FROM {q(name)} LIMIT 0")
    except duckdb.Error as err:
        # DuckDB's first line ("CSV Error on Line: 2") rarely says why; keep the reason that
        # follows it, but not the offending line itself (it may hold patient data).
        lines = str(err).split("\n\n")[0].split("\n")
        msg = "; ".join([ln.strip() for ln in lines if ln.strip() and not ln.startswith("Original Line")][:2])
        raise CohortError([Problem("file", f"{path.name} could not be read: {msg.rstrip('.')}; save it as "
                                           "UTF-8 CSV with a header row, Parquet or Excel (.xlsx)")]) from None
    try:
        if reader.startswith("read_parquet"):
            header = [r[0] for r in con.execute(
                f"SELECT name FROM parquet_schema({_lit(str(path))})").fetchall()[1:]]
        else:
            header = con.execute(f"SELECT * FROM read_csv({_lit(str(path))}, all_varchar = true, "
                                 f"header = false, auto_detect = true) LIMIT 1").fetchone()
    except duckdb.Error:
        header = None
    return _header_or_described(con, name, header)


def _header_or_described(con, name: str, header) -> list[str]:
    """`header` as text when it matches the view's columns one to one, else the view's names."""
    described = [row[0] for row in con.execute(f"DESCRIBE {q(name)}").fetchall()]
    if header is None:
        return described
    header = ["" if h is None else str(h) for h in header]
    return header if len(header) == len(described) else described


def _expressions(col: schema.Column, src: str, src_type: str) -> tuple[str, str]:
    """SQL (value, error) for one column: the normalised value and a flag for bad input."""
    x = q(src)
    t = f"NULLIF(trim(CAST({x} AS VARCHAR), {_lit(_BLANKS)}), '')"
    kind = col.kind
    if kind == NUMBER and _NUMERIC.match(src_type):
        value, bad = f"CAST({x} AS DOUBLE)", f"NOT isfinite(CAST({x} AS DOUBLE))"
    elif kind == NUMBER:
        value = f"TRY_CAST({t} AS DOUBLE)"
        bad = f"({t} IS NOT NULL AND ({value} IS NULL OR NOT isfinite({value})))"
    elif kind == INTEGER and _INTEGRAL.match(src_type):
        value = f"TRY_CAST({x} AS INTEGER)"
        bad = f"({x} IS NOT NULL AND {value} IS NULL)"
    elif kind == INTEGER:
        num = f"TRY_CAST({t} AS DOUBLE)" if not _NUMERIC.match(src_type) else f"CAST({x} AS DOUBLE)"
        value = f"TRY_CAST({num} AS INTEGER)"  # NaN, inf, huge: NULL here, flagged below
        bad = (f"({x} IS NOT NULL AND {t} IS NOT NULL AND ({num} IS NULL OR NOT isfinite({num}) "
               f"OR {num} <> round({num}) OR abs({num}) > 2000000000))")
    elif kind == FLAG and src_type == "BOOLEAN":
        value, bad = x, "FALSE"
    elif kind == FLAG:
        low = f"lower({t})"
        trues = ", ".join(_lit(w) for w in schema.TRUE_WORDS)
        falses = ", ".join(_lit(w) for w in schema.FALSE_WORDS)
        value = f"CASE WHEN {low} IN ({trues}) THEN TRUE WHEN {low} IN ({falses}) THEN FALSE END"
        bad = f"({t} IS NOT NULL AND {value} IS NULL)"
    elif kind == DATE and src_type == "DATE":
        value, bad = x, "FALSE"
    elif kind == DATE:
        value = f"COALESCE(TRY_CAST({t} AS DATE), CAST(TRY_CAST({t} AS TIMESTAMP) AS DATE))"
        bad = f"({t} IS NOT NULL AND {value} IS NULL)"
    elif kind == CATEGORY:
        norm = f"regexp_replace(lower({t}), '[\\s\\x{{00a0}}\\-]+', '_', 'g')"
        if col.name == "sex":
            cases = " ".join(f"WHEN {_lit(k)} THEN {_lit(v)}" for k, v in schema.SEX_WORDS.items())
            value = f"CASE {norm} {cases} END"
            bad = f"({t} IS NOT NULL AND {value} IS NULL)"
        elif col.values:
            allowed = ", ".join(_lit(v) for v in col.values)
            value = f"CASE WHEN {norm} IN ({allowed}) THEN {norm} END"
            bad = f"({t} IS NOT NULL AND {value} IS NULL)"
        else:
            value, bad = norm, "FALSE"
    elif kind in (ID, TEXT):
        value, bad = t, "FALSE"
    else:  # pragma: no cover - schema kinds are closed
        raise AssertionError(kind)
    rng = _range_check(col, value)
    if rng:
        bad = f"({bad} OR COALESCE({rng}, FALSE))"
    return value, bad


SMALL_DOMAIN = 64


def _use_lookups(con, raw: str, present, by_norm, src_types, values: dict, errors: dict) -> None:
    """Normalise low-cardinality text columns once per distinct value, not once per row.

    Category, flag and text columns read as text usually hold a handful of spellings;
    their normalising expressions (trim, lower, regexp) cost most of the load time. The
    same expressions run on the distinct values only, and the row-level SQL becomes a
    CASE lookup, so the result is identical by construction.
    """
    cols = [c for c in present if c.kind in (CATEGORY, FLAG, TEXT)
            and src_types[by_norm[c.name]] == "VARCHAR"]
    if not cols:
        return
    approx = con.execute("SELECT " + ", ".join(f"approx_count_distinct({q(by_norm[c.name])})" for c in cols)
                         + f" FROM {q(raw)}").fetchall()[0]
    for col, est in zip(cols, approx, strict=True):
        if est > 2 * SMALL_DOMAIN:
            continue
        src = q(by_norm[col.name])
        rows = con.execute(f"SELECT {src}, {values[col.name]}, {errors[col.name]} FROM "
                           f"(SELECT DISTINCT {src} FROM {q(raw)} LIMIT {SMALL_DOMAIN + 1}) "
                           f"WHERE {src} IS NOT NULL").fetchall()
        if len(rows) > SMALL_DOMAIN:
            continue
        cases = " ".join(f"WHEN {_lit(r)} THEN {_sql_value(v)}" for r, v, _ in rows if v is not None)
        values[col.name] = f"CASE {src} {cases} END" if cases else f"CAST(NULL AS {col.sql_type})"
        bad = [_lit(r) for r, _, b in rows if b]
        errors[col.name] = f"{src} IN ({', '.join(bad)})" if bad else "FALSE"


def _sql_value(value) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return _lit(str(value))


def _range_check(col: schema.Column, value: str) -> str:
    parts = []
    if col.low is not None:
        parts.append(f"{value} {'<=' if col.low_open else '<'} {col.low!r}")
    if col.high is not None:
        parts.append(f"{value} > {col.high!r}")
    return " OR ".join(parts)


MEDIAN_MIN_VALUES = 10  # a median of fewer values says little about a column's unit


def _guard_sql(col: schema.Column, value: str, bad: str) -> str:
    """True for a readable value outside the column's plausible range (unit guard)."""
    g = col.guard
    return f"(({value} < {g.low!r} OR {value} > {g.high!r}) AND NOT COALESCE({bad}, FALSE))"


def _guard_hint(col: schema.Column, number: float) -> str:
    g = col.guard
    likely = g.below if number < g.low else g.above
    return f"outside the plausible range {g.low:g}-{g.high:g} {col.unit}: {likely}"


def _median_hint(col: schema.Column, median, filled: int) -> str:
    """The unit-guard message for a column whose median is typical of another unit ('' if fine)."""
    g = col.guard
    if median is None or filled < MEDIAN_MIN_VALUES:
        return ""
    if g.median_low is not None and median < g.median_low:
        return f"the median, {median:g} {col.unit} over {filled} values, {g.median_below}"
    if g.median_high is not None and median > g.median_high:
        return f"the median, {median:g} {col.unit} over {filled} values, {g.median_above}"
    return ""


def _fix_hint(col: schema.Column) -> str:
    if col.kind == FLAG:
        return "expected true/false (or 1/0, yes/no, y/n, t/f); leave empty if unknown"
    if col.kind == DATE:
        return "expected an ISO 8601 date such as 2024-03-31"
    if col.name == "sex":
        return "expected F or M (female/male accepted); leave empty if unknown"
    if col.kind == CATEGORY:
        return f"expected {col.range_text()}; leave empty if unknown"
    what = "a whole number" if col.kind == INTEGER else "a number"
    rng = col.range_text()
    unit = f" {col.unit}" if col.unit else ""
    return f"expected {what}{' ' + rng if rng else ''}{unit}; leave empty if unknown"


def load_cohort(source, con: duckdb.DuckDBPyConnection | None = None, table: str = "cohort",
                max_examples: int = EXAMPLES_PER_COLUMN) -> Cohort:
    """Read, normalise and validate `source` into table `table`; raise CohortError listing problems."""
    con = con or connect()
    raw = f"_raw_{table}"
    header = _raw_relation(con, source, raw)
    described = con.execute(f"DESCRIBE {q(raw)}").fetchall()
    src_types = {name: str(typ) for name, typ, *_ in described}
    by_norm: dict[str, str] = {}
    problems: list[Problem] = []
    for names in (header, list(src_types)):  # as written, and as DuckDB named them
        first: dict[str, str] = {}
        for name in names:
            norm = name.strip().lower()
            if norm in first and not any(p.column == norm for p in problems):
                problems.append(Problem(norm, f"appears twice in the header ({first[norm]!r}, {name!r}); "
                                              "keep one column"))
            first.setdefault(norm, name)
    for name in src_types:
        by_norm[name.strip().lower()] = name
    if "patient_id" not in by_norm:
        problems.append(Problem("patient_id", "the column is missing; every cohort needs a unique "
                                              "patient_id column"))
    if problems:
        _drop(con, raw)
        raise CohortError(problems)

    present = [c for c in schema.COLUMNS if c.name in by_norm]
    values, errors = {}, {}
    for col in present:
        values[col.name], errors[col.name] = _expressions(col, by_norm[col.name], src_types[by_norm[col.name]])
    _use_lookups(con, raw, present, by_norm, src_types, values, errors)
    pid_src = q(by_norm["patient_id"])
    pid = values["patient_id"]
    guards = {c.name: _guard_sql(c, values[c.name], errors[c.name]) for c in present if c.guard}
    checks = [f"count_if({e})" for e in errors.values()]
    checks += [f"count_if({g}), count({values[c]}), median({values[c]})" for c, g in guards.items()]
    counts = con.execute(
        f"SELECT count(*), count_if({pid} IS NULL), count(DISTINCT {pid}), {', '.join(checks)} "
        f"FROM {q(raw)}").fetchone()
    n, missing_ids, distinct_ids = counts[0], counts[1], counts[2]
    guard_counts = counts[3 + len(errors):]
    counts = counts[:3 + len(errors)]
    numbered = f"(SELECT row_number() OVER () AS _row, * FROM {q(raw)})"
    if missing_ids:
        rows = con.execute(f"SELECT _row FROM {numbered} WHERE {pid} IS NULL ORDER BY _row LIMIT ?",
                           [max_examples]).fetchall()
        for (row,) in rows:
            problems.append(Problem("patient_id", "is empty; every row needs a patient_id",
                                    row=row, count=missing_ids))
    unlisted_dups = 0  # duplicated IDs beyond the examples, still counted in the total
    if distinct_ids + (1 if missing_ids else 0) < n:
        dups = con.execute(
            f"SELECT {pid} AS id, list(_row ORDER BY _row), count(*) OVER () FROM {numbered} "
            f"WHERE {pid} IS NOT NULL GROUP BY id HAVING count(*) > 1 ORDER BY min(_row) LIMIT ?",
            [max_examples]).fetchall()
        unlisted_dups = dups[0][2] - len(dups) if dups else 0
        for pid_value, rows, _ in dups:
            problems.append(Problem("patient_id", f"is duplicated (rows {', '.join(map(str, rows[:10]))}); "
                                                  "patient_id must be unique", patient_id=pid_value))
    for (col, bad_sql), bad_count in zip(errors.items(), counts[3:], strict=True):
        if not bad_count:
            continue
        spec = schema.BY_NAME[col]
        rows = con.execute(
            f"SELECT _row, CAST({pid_src} AS VARCHAR), CAST({q(by_norm[col])} AS VARCHAR) FROM {numbered} "
            f"WHERE {bad_sql} ORDER BY _row LIMIT ?", [max_examples]).fetchall()
        for row, patient, value in rows:
            problems.append(Problem(col, _fix_hint(spec), row=row, patient_id=patient,
                                    value=value, count=bad_count))
    for i, (col, guard_sql) in enumerate(guards.items()):
        bad_count, filled, median = guard_counts[3 * i: 3 * i + 3]
        spec = schema.BY_NAME[col]
        if bad_count:
            rows = con.execute(
                f"SELECT _row, CAST({pid_src} AS VARCHAR), CAST({q(by_norm[col])} AS VARCHAR), {values[col]} "
                f"FROM {numbered} WHERE {guard_sql} ORDER BY _row LIMIT ?", [max_examples]).fetchall()
            for row, patient, value, number in rows:
                problems.append(Problem(col, _guard_hint(spec, number), row=row, patient_id=patient,
                                        value=value, count=bad_count))
        message = _median_hint(spec, median, filled)
        if message:
            problems.append(Problem(col, message))
    if problems:
        total = sum(p.count for p in {(p.column, p.message): p for p in problems}.values()) + unlisted_dups
        _drop(con, raw)
        raise CohortError(problems, total=max(total, len(problems)))

    extra = [name for norm, name in by_norm.items() if norm not in schema.BY_NAME]
    select = [f"{values[c.name]} AS {q(c.name)}" for c in present]
    select += [f"{q(name)} AS {q(name)}" for name in extra]
    body = f"SELECT {', '.join(select)} FROM {q(raw)}"
    compressed = con.execute("SELECT count(*) FROM duckdb_databases() WHERE database_name = ?",
                             [COHORT_DB]).fetchall()[0][0]
    target = f"{COHORT_DB}.main.{q(table)}" if compressed else q(table)
    if compressed:
        con.execute(f"DROP VIEW IF EXISTS {q(table)}")
    if n <= LOAD_CHUNK:
        con.execute(f"CREATE OR REPLACE TABLE {target} AS {body}")
    else:  # insert in chunks, compressing each, so peak memory stays near one chunk
        parquet = _parquet_path(source)
        for start in range(0, n, LOAD_CHUNK):
            if parquet:  # row ranges push down to row groups: each chunk reads only its rows
                chunk = (f"SELECT {', '.join(select)} FROM read_parquet({_lit(parquet)}, file_row_number = true) "
                         f"WHERE file_row_number >= {start} AND file_row_number < {start + LOAD_CHUNK}")
            else:
                chunk = f"{body} LIMIT {LOAD_CHUNK} OFFSET {start}"
            if start == 0:
                con.execute(f"CREATE OR REPLACE TABLE {target} AS {chunk}")
                continue
            if compressed:
                con.execute(f"CHECKPOINT {COHORT_DB}")
            con.execute(f"INSERT INTO {target} {chunk}")
    if compressed:  # compress, and name it in the default catalog for every cursor
        con.execute(f"CHECKPOINT {COHORT_DB}")
        con.execute(f"CREATE OR REPLACE VIEW {q(table)} AS SELECT * FROM {target}")
    _drop(con, raw)
    return Cohort(con, table, n, frozenset(c.name for c in present), tuple(extra),
                  source=str(source) if isinstance(source, (str, Path)) else type(source).__name__)


def _parquet_path(source) -> str | None:
    """The path of a Parquet source (for row-range chunked loading), else None."""
    if not isinstance(source, (str, Path)):
        return None
    path = Path(source)
    with path.open("rb") as fh:
        magic = fh.read(4)
    return str(path) if magic == b"PAR1" else None


def _drop(con, raw: str) -> None:
    con.execute(f"DROP VIEW IF EXISTS {q(raw)}")
    try:
        con.unregister(raw + "_frame")
    except (duckdb.Error, KeyError):
        pass
