"""Load a screening cohort into a per-session DuckDB table, normalised and validated.

Input is CSV, Parquet, Excel or a DataFrame / Arrow table. Every dictionary column
is parsed by its kind (schema.py): boolean and sex spellings are normalised,
categories lower-cased with whitespace folded, numbers range-checked. A value that
cannot be read is an error naming the column, row, patient and value, never a
silent NULL. The source is read once (kn026.reader, shared by the command line and
the app's uploads); text columns are normalised once per distinct value, and each
chunk is checked in one SQL scan, so millions of rows load fast. The input file is
only read.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kn026 import edits as edits_mod
from kn026 import schema
from kn026.reader import Progress
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
    # value (unreadable or out of range), unit (unit guard), median (unit guard, whole column),
    # missing_id, duplicate, date (a mapped date its format does not read), edit (a refused edit),
    # "" (the file or its header): which choices kn026.edits offers for it
    kind: str = ""
    rows: tuple[int, ...] = ()  # a duplicated patient_id: the rows that share it (the first ten)

    @property
    def sentence(self) -> str:
        """The message ending with a full stop, to join with other sentences (its first word
        may be a file or column name, so its case is kept)."""
        text = self.message.strip()
        return text if text.endswith((".", "!", "?")) else text + "."

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
    changes: tuple = ()  # kn026.edits.Change: what each edit of the load did

    @property
    def absent(self) -> tuple[str, ...]:
        return tuple(c.name for c in schema.COLUMNS if c.name not in self.present)


COHORT_DB = "cohort_db"


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
    t = _trimmed(x)
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



_PREP = "__kn026_"  # prefix of the loader's own columns beside a chunk (normalised text, flags, row)


def _as_arrow(con, raw: str, chunk) -> pa.Table:
    """The chunk as an Arrow table: as given, or as DuckDB reads a pandas (or other) frame."""
    if isinstance(chunk, pa.Table):
        return chunk
    return con.sql(f"SELECT * FROM {q(raw)}").to_arrow_table()


_EDGE_BLANK = "^[" + _BLANKS + "]|[" + _BLANKS + "]$"


def _trimmed(x: str) -> str:
    """SQL of a value as text, blanks trimmed, empty as NULL (the `t` of `_expressions`).

    trim() with a set of characters costs about 0.6 us a value; a value with no blank at
    either end is its own trim, and testing the two ends with a regular expression is
    three times cheaper, so only the few values that need it are trimmed.
    """
    v = f"CAST({x} AS VARCHAR)"
    return (f"CASE WHEN regexp_matches({v}, {_lit(_EDGE_BLANK)}) THEN NULLIF(trim({v}, {_lit(_BLANKS)}), '') "
            f"ELSE NULLIF({v}, '') END")


def _normalise_text(con, arrays: list[pa.Array], exprs: list[tuple[str, str, str]],
                    factors: dict | None = None) -> list[tuple]:
    """(values, bad flags) of text columns, each expression evaluated once per distinct value.

    `exprs` holds (SQL type, value SQL, bad SQL) written over a column named "raw". Every
    column's distinct values (NULL included) go through one SQL statement, then each row
    takes its value's result: the same expressions as a row-by-row pass, so the same
    result, but a category or flag column of a million rows costs a handful of
    evaluations instead of a million trims, lowers and regular expressions. Columns with
    the same expressions (all flags, all day counts, ...) share one CASE branch, and the
    trimmed text is computed once per value: planning a statement of 90 distinct
    expressions cost more than running it. `factors`: position -> (column, factor) of
    the columns whose unit the analyst declared: their numbers are converted first.
    """
    if not arrays:
        return []

    def encode(arr):
        if not pa.types.is_large_string(arr.type):
            arr = arr.cast(pa.large_string())
        return pc.dictionary_encode(arr, null_encoding="encode")

    with ThreadPoolExecutor(2) as pool:  # Arrow releases the GIL: columns encode in parallel
        encoded = list(pool.map(encode, arrays))
    dicts, indices = [e.dictionary for e in encoded], [e.indices for e in encoded]
    for j, (col, factor) in (factors or {}).items():
        dicts[j] = _converted(con, col, dicts[j], factor)
    groups: dict[tuple[str, str, str], int] = {}
    for expr in exprs:
        groups.setdefault(expr, len(groups))
    sizes = np.array([len(d) for d in dicts])
    group_of = np.array([groups[e] for e in exprs], dtype=np.int32)
    lookup = pa.table({"i": pa.array(np.arange(int(sizes.sum()), dtype=np.int64)),
                       "g": pa.array(np.repeat(group_of, sizes)),
                       "raw": pa.concat_arrays(dicts)})
    t = _trimmed(q("raw"))
    types = sorted({sql_type for sql_type, _, _ in groups})
    cases = []
    for sql_type in types:
        branches = " ".join(f"WHEN {g} THEN CAST({v.replace(t, 't')} AS {sql_type})"
                            for (typ, v, _), g in groups.items() if typ == sql_type)
        cases.append(f"CASE g {branches} END AS {q(sql_type)}")
    bad = " ".join(f"WHEN {g} THEN COALESCE({b.replace(t, 't')}, FALSE)" for (_, _, b), g in groups.items())
    name = "_kn026_lookup"
    con.register(name, lookup)
    try:
        out = con.sql(f"SELECT {', '.join(cases)}, CASE g {bad} END AS bad FROM "
                      f"(SELECT i, g, raw, {t} AS t FROM {name}) ORDER BY i").to_arrow_table()
    finally:
        con.unregister(name)
    columns = {sql_type: out[sql_type].combine_chunks() for sql_type in types}
    flags = out["bad"].combine_chunks()
    result, start = [], 0
    for (sql_type, _, _), size, idx in zip(exprs, sizes, indices, strict=True):
        # each row points at its value's result: Arrow dictionary arrays, which DuckDB
        # scans as plain columns of the result's type, without copying a value per row
        result.append((pa.DictionaryArray.from_arrays(idx, columns[sql_type].slice(start, size)),
                       pa.DictionaryArray.from_arrays(idx, flags.slice(start, size))))
        start += size
    return result


def _rows_array(start: int, n: int) -> pa.Array:
    return pa.array(np.arange(start + 1, start + n + 1, dtype=np.int64))


def _duckdb_names(con, raw: str) -> dict[str, str]:
    return {name: str(typ) for name, typ, *_ in con.execute(f"DESCRIBE {q(raw)}").fetchall()}


def _check_header(header: list[str], src_types: dict[str, str]) -> list[Problem]:
    problems: list[Problem] = []
    for names in (header, list(src_types)):  # as written, and as DuckDB named them
        first: dict[str, str] = {}
        for name in names:
            norm = name.strip().lower()
            if norm in first and not any(p.column == norm for p in problems):
                problems.append(Problem(norm, f"appears twice in the header ({first[norm]!r}, {name!r}); "
                                              "keep one column"))
            first.setdefault(norm, name)
    if "patient_id" not in {name.strip().lower() for name in src_types}:
        problems.append(Problem("patient_id", "the column is missing; every cohort needs a unique "
                                              "patient_id column"))
    return problems


def _file_access(con) -> bool:
    """False on a locked-down connection (kn026.sandbox): the loader reads no file for it either."""
    return str(con.execute("SELECT current_setting('enable_external_access')").fetchall()[0][0]).lower() == "true"


def _report(progress: Progress, done: float, message: str) -> None:
    if progress is not None:
        progress(min(max(done, 0.0), 1.0), message)


def load_cohort(source, con: duckdb.DuckDBPyConnection | None = None, table: str = "cohort",
                max_examples: int = EXAMPLES_PER_COLUMN, progress: Progress = None,
                compress: bool | None = True, edits=()) -> Cohort:
    """Read, normalise and validate `source` into table `table`; raise CohortError listing problems.

    `source`: a path (CSV, Parquet, Excel), a `reader.Source` (uploads), or an in-memory
    table. The source is read once, chunk by chunk (kn026.reader); each chunk's text
    columns are normalised in one vectorised pass, checked in one SQL scan and appended
    to a staging table, renamed to `table` only when no problem was found (a failed load
    leaves an existing `table` as it was). `progress(fraction, message)` hears about each
    step: reading, normalising, checking (and the row counts). `compress`: store the
    table in the connection's compressed database (`connect`), as the app's sessions
    need; None: only when the cohort is larger than one chunk (the command line: a
    one-shot process gains the checkpoint's time and has the memory). `edits`: the
    analyst's choices about bad cells (kn026.edits: fix, blank, drop, declare a unit),
    applied in this pass and reported in `Cohort.changes`; the source is not modified.
    """
    from kn026 import reader

    con = con or connect()
    if isinstance(source, (str, Path)) and not _file_access(con):
        raise CohortError([Problem("file", f"{Path(source).name} could not be read: file access is disabled on "
                                           "this connection (locked down); read the file before the lockdown")])
    src = reader.open_source(source, progress)
    raw = f"_raw_{table}"
    chunks = iter(src.chunks)
    chunk = next(chunks)
    con.register(raw, chunk)
    try:
        return _load(con, src, chunk, chunks, raw, table, max_examples, progress, compress, list(edits))
    finally:
        try:
            con.unregister(raw)
        except (duckdb.Error, KeyError):
            pass


@dataclass
class _Findings:
    """What the checks found so far, over all chunks: counts, and the first examples in row order."""

    max_examples: int
    missing: int = 0
    missing_rows: list = field(default_factory=list)
    bad: dict = field(default_factory=dict)  # column -> [count, [(row, patient, value)]]
    unguarded: dict = field(default_factory=dict)  # column -> [count, [(row, patient, value, number)]]

    def room(self, examples: list) -> int:
        return self.max_examples - len(examples)


def _check_chunk(con, rel: str, pid: str, pid_src: str, sources: dict, errors: dict, values: dict,
                 guards: dict, found: _Findings) -> None:
    """One SQL scan of a chunk for empty IDs, bad values and implausible values; examples for new ones."""
    checks = [f"count_if({pid} IS NULL)"] + [f"count_if({e})" for e in errors.values()]
    checks += [f"count_if({g})" for g in guards.values()]
    counts = [int(c or 0) for c in con.execute(f"SELECT {', '.join(checks)} FROM {rel}").fetchall()[0]]
    numbered = f"(SELECT {q(_PREP + 'row')} AS _row, * FROM {rel})"
    found.missing += counts[0]
    if counts[0] and found.room(found.missing_rows) > 0:
        found.missing_rows += [r for (r,) in con.execute(
            f"SELECT _row FROM {numbered} WHERE {pid} IS NULL ORDER BY _row LIMIT ?",
            [found.room(found.missing_rows)]).fetchall()]
    kinds = [(found.bad, col, sql, "") for col, sql in errors.items()]
    kinds += [(found.unguarded, col, sql, f", {values[col]}") for col, sql in guards.items()]  # and the number
    for (store, col, sql, number), count in zip(kinds, counts[1:], strict=True):
        entry = store.setdefault(col, [0, []])
        entry[0] += count
        if count and found.room(entry[1]) > 0:
            entry[1] += con.execute(
                f"SELECT _row, CAST({pid_src} AS VARCHAR), CAST({q(sources[col])} AS VARCHAR){number} "
                f"FROM {numbered} WHERE {sql} ORDER BY _row LIMIT ?", [found.room(entry[1])]).fetchall()


@dataclass
class _Plan:
    """How each chunk is normalised, checked and stored (SQL over the chunk's one Arrow table)."""

    raw: str  # the chunk's registered name
    staging: str  # the table being filled
    compressed: bool
    present: list  # dictionary columns in the source
    sources: dict  # dictionary column -> source column name (as DuckDB names it)
    text_at: list  # positions of the text columns normalised per distinct value
    exprs: list  # their (SQL type, value SQL, bad SQL)
    values: dict  # dictionary column -> value SQL
    errors: dict  # dictionary column -> bad-value SQL
    guards: dict  # guarded column -> implausible-value SQL (unit guard)
    extra: list  # other columns, kept as read
    edits: edits_mod.Pass = field(default_factory=edits_mod.Pass)  # the analyst's choices (kn026.edits)
    position: dict = field(default_factory=dict)  # dictionary column -> position of its source column
    bad: dict = field(default_factory=dict)  # dictionary column -> bad SQL before any blank (the edits')
    converted: dict = field(default_factory=dict)  # unit-declared column -> its converted value SQL
    factors: dict = field(default_factory=dict)  # position in `exprs` -> (column, unit factor)
    keep: str = ""  # SQL: the row is kept ("" when no edit drops a row)
    tallies: dict = field(default_factory=dict)  # Edit -> [count, rows] over the chunks


def _plan(con, src, raw: str, table: str, compress: bool | None, edits: list) -> _Plan:
    """Read the header, refuse duplicate or missing columns, and write each column's SQL."""
    from kn026 import reader, units

    src_types = _duckdb_names(con, raw)
    problems = _check_header(_header_or_described(con, raw, src.header), src_types)
    if problems:
        raise CohortError(problems)
    by_norm = {name.strip().lower(): name for name in src_types}
    present = [c for c in schema.COLUMNS if c.name in by_norm]
    try:
        chosen = edits_mod.prepare(edits, [c.name for c in present])
    except edits_mod.EditError as err:
        raise CohortError([Problem("edits", str(err).removeprefix("edits: "), kind="edit")]) from None
    text = [c for c in present if src_types[by_norm[c.name]] == "VARCHAR" or c.name in chosen.text_columns]
    values, errors, exprs, factors = {}, {}, [], {}
    for col in present:
        src_name = by_norm[col.name]
        if col in text:
            j = len(exprs)
            exprs.append((col.sql_type, *_expressions(col, "raw", "VARCHAR")))
            values[col.name], errors[col.name] = q(f"{_PREP}v{j}"), q(f"{_PREP}b{j}")
            if col.name in chosen.units:
                factors[j] = (col, units.unit_factor(col.name, chosen.units[col.name].text))
        else:
            values[col.name], errors[col.name] = _expressions(col, src_name, src_types[src_name])
    bad = {**errors, "patient_id": f"({values['patient_id']} IS NULL)"}  # the checks' own predicates
    converted = {name: values[name] for name in chosen.units}
    for name in chosen.blank:  # a bad value becomes NULL (unknown); implausible ones stay (unit guard)
        values[name] = f"(CASE WHEN COALESCE({errors[name]}, FALSE) THEN NULL ELSE {values[name]} END)"
        errors[name] = "FALSE"
    dropped = [f"COALESCE({bad[name]}, FALSE)" for name in chosen.drop]
    dropped += [q(_PREP + "drop")] if chosen.drop_rows else []
    if compress is None:
        compress = src.rows is None or src.rows > reader.CHUNK_ROWS
    compressed = bool(compress) and con.execute(
        "SELECT count(*) FROM duckdb_databases() WHERE database_name = ?", [COHORT_DB]).fetchall()[0][0] > 0
    return _Plan(
        raw=raw, staging=f"{COHORT_DB + '.main.' if compressed else ''}{q('_load_' + table)}",
        compressed=compressed, present=present, sources=by_norm,
        text_at=[list(src_types).index(by_norm[c.name]) for c in text],  # positions: DuckDB may rename
        exprs=exprs, values=values, errors=errors,
        guards={c.name: _guard_sql(c, values[c.name], errors[c.name]) for c in present if c.guard},
        extra=[name for norm, name in by_norm.items() if norm not in schema.BY_NAME],
        edits=chosen, position={c.name: list(src_types).index(by_norm[c.name]) for c in present}, bad=bad,
        converted=converted, factors=factors, keep=f"NOT ({' OR '.join(dropped)})" if dropped else "")


def _store(con, plan: _Plan, chunk, chunks, found: _Findings, progress, total: int, what: str) -> tuple[int, int]:
    """Normalise, check and append every chunk to the staging table; return (rows read, rows kept)."""
    from kn026.reader import READING

    select = [f"{plan.values[c.name]} AS {q(c.name)}" for c in plan.present]
    select += [f"{q(name)} AS {q(name)}" for name in plan.extra]
    kept_rows = f"(SELECT * FROM {q(plan.raw)} WHERE {plan.keep})" if plan.keep else q(plan.raw)
    body = f"SELECT {', '.join(select)} FROM {kept_rows}"
    n = kept = 0
    while chunk is not None:
        rows = len(chunk)
        _report(progress, READING + (1 - READING) * 0.5 * n / max(total, 1), f"normalising {what}")
        chunk = _as_arrow(con, plan.raw, chunk)
        if plan.edits:
            chunk = _edit_cells(con, plan, chunk, n)
        arrays = [chunk.column(i).combine_chunks() for i in plan.text_at]
        columns = {f"{_PREP}row": _rows_array(n, rows)}
        if plan.edits.drop_rows:
            columns[f"{_PREP}drop"] = pa.array(np.isin(np.arange(n + 1, n + rows + 1),
                                                       np.fromiter(plan.edits.drop_rows, np.int64)))
        for j, (vals, bad) in enumerate(_normalise_text(con, arrays, plan.exprs, plan.factors)):
            columns[f"{_PREP}v{j}"], columns[f"{_PREP}b{j}"] = vals, bad
        for name, array in columns.items():  # one table, so that every scan reads one relation
            chunk = chunk.append_column(name, array)
        con.register(plan.raw, chunk)
        total = max(total, n + rows, 1)
        _report(progress, READING + (1 - READING) * 0.5 * (n + rows) / total, f"checking {what}")
        kept += rows - (_tally(con, plan, n, rows) if plan.edits else 0)
        _check_chunk(con, kept_rows, plan.values["patient_id"], q(plan.sources["patient_id"]), plan.sources,
                     plan.errors, plan.values, plan.guards, found)
        if n == 0:
            con.execute(f"CREATE OR REPLACE TABLE {plan.staging} AS {body}")
        else:
            if plan.compressed:  # compress what is stored so far: peak memory stays near one chunk
                con.execute(f"CHECKPOINT {COHORT_DB}")
            con.execute(f"INSERT INTO {plan.staging} {body}")
        n += rows
        chunk = next(chunks, None)
        if chunk is not None:
            con.register(plan.raw, chunk)
    return n, kept


def _load(con, src, chunk, chunks, raw: str, table: str, max_examples: int, progress,
          compress: bool | None, edits: list) -> Cohort:
    plan = _plan(con, src, raw, table, compress, edits)
    found = _Findings(max_examples)
    what = f"{'~' if src.estimated else ''}{src.rows:,} rows" if src.rows is not None else "rows"
    try:  # a failed load leaves no staging table, and the cohort it would replace as it was
        read, n = _store(con, plan, chunk, chunks, found, progress, src.rows or 0, what)
        changes = _changes(plan, read)
        _report(progress, 0.98, f"checking {n:,} patient IDs")
        problems, total_problems = _problems(con, plan.staging, n, found, plan.guards,
                                             edits_mod.dropped_rows(changes))
        if problems:
            raise CohortError(problems, total=total_problems)
    except BaseException:
        con.execute(f"DROP TABLE IF EXISTS {plan.staging}")
        raise
    _drop_named(con, table)
    con.execute(f"ALTER TABLE {plan.staging} RENAME TO {q(table)}")
    if plan.compressed:  # compress, and name it in the default catalog for every cursor
        con.execute(f"CHECKPOINT {COHORT_DB}")
        con.execute(f"CREATE OR REPLACE VIEW {q(table)} AS SELECT * FROM {COHORT_DB}.main.{q(table)}")
    _report(progress, 1.0, f"loaded {n:,} patients")
    return Cohort(con, table, n, frozenset(c.name for c in plan.present), tuple(plan.extra), source=src.label,
                  changes=tuple(changes))


# ----------------------------------------------------------------------------- the analyst's edits


def _text(con, array: pa.Array) -> pa.Array:
    """`array` as DuckDB writes it as text (the loader's problems show values so): typed cells fixed as text."""
    name = "_kn026_text"
    con.register(name, pa.table({"i": np.arange(len(array), dtype=np.int64), "v": array}))
    try:
        return con.sql(f"SELECT CAST(v AS VARCHAR) AS v FROM {name} ORDER BY i").to_arrow_table()["v"].combine_chunks()
    finally:
        con.unregister(name)


def _edit_cells(con, plan: _Plan, chunk: pa.Table, start: int) -> pa.Table:
    """The chunk with the row fixes and blanks applied (columns fixed or converted read as text);
    CohortError when a row edit's `was` is not the cell the file has (made for another file)."""
    ed = plan.edits
    for name in ed.text_columns:
        i = plan.position[name]
        if not pa.types.is_string(chunk.column(i).type) and not pa.types.is_large_string(chunk.column(i).type):
            chunk = chunk.set_column(i, chunk.schema.field(i).name, _text(con, chunk.column(i).combine_chunks()))
    end = start + len(chunk)
    checks = [(name, e) for name, by_row in ed.cells.items() for e in by_row.values() if start < e.row <= end]
    checks += [(e.column, e) for e in ed.drop_rows.values() if start < e.row <= end and e.column in plan.position]
    wrong = []
    for name, e in checks:
        if e.was is not None:
            cell = _text(con, chunk.column(plan.position[name]).combine_chunks().slice(e.row - start - 1, 1))[0]
            if not edits_mod.same_cell(e.was, cell.as_py()):
                wrong.append(Problem(name, f"this {e.action} was chosen for the value {e.was!r}, but the file has "
                                           "another value here; the choices were made for another file: choose again",
                                     row=e.row, value=cell.as_py(), kind="edit"))
        ed.applied[name, e.row] = True
    if wrong:
        raise CohortError(wrong)
    for name, by_row in ed.cells.items():
        here = sorted(r for r in by_row if start < r <= end)
        if not here:
            continue
        i = plan.position[name]
        arr = chunk.column(i).combine_chunks()
        mask = np.zeros(len(chunk), dtype=bool)
        mask[np.asarray(here) - start - 1] = True
        texts = [by_row[r].text if by_row[r].action == "fix" else None for r in here]
        arr = pc.replace_with_mask(arr, pa.array(mask), pa.array(texts, type=arr.type))
        chunk = chunk.set_column(i, chunk.schema.field(i).name, arr)
    return chunk


def _converted(con, col: schema.Column, texts: pa.Array, factor: float) -> pa.Array:
    """Distinct texts of a unit-declared column: each the loader reads as a finite number is
    replaced by that number times `factor` (omop_concepts.convert, as the mapping wizard's unit
    conversion); the others are kept, so the loader reports them as before."""
    from kn026.omop_concepts import convert

    name = "_kn026_units"
    con.register(name, pa.table({"i": np.arange(len(texts), dtype=np.int64), "raw": texts}))
    try:
        value = _expressions(col, "raw", "VARCHAR")[0]
        numbers = con.sql(f"SELECT {value} AS v FROM {name} ORDER BY i").to_arrow_table()["v"].to_pylist()
    finally:
        con.unregister(name)
    out = [repr(convert(v, factor)) if v is not None and np.isfinite(v) else t
           for v, t in zip(numbers, texts.to_pylist(), strict=True)]
    return pa.array(out, type=texts.type)


def _tally(con, plan: _Plan, start: int, rows: int) -> int:
    """Count (and list the rows of) what each edit changes in this chunk (rows start+1 .. start+rows);
    return the rows dropped. Bad cells are the loader's own predicates, evaluated before any blank."""
    ed, raw, row = plan.edits, q(plan.raw), q(_PREP + "row")
    for e in ed.drop_rows.values():
        if start < e.row <= start + rows:
            plan.tallies[e] = [1, [e.row]]
    wanted = [(e, f"COALESCE({plan.bad[name]}, FALSE)") for name, e in (*ed.blank.items(), *ed.drop.items())]
    counts = [f"count_if({sql})" for _, sql in wanted]
    counts += [f"count_if(isfinite({plan.converted[name]}))" for name in ed.units]
    counts.append(f"count_if(NOT ({plan.keep}))" if plan.keep else "0")
    got = con.execute(f"SELECT {', '.join(counts)} FROM {raw}").fetchall()[0]
    for (e, sql), count in zip(wanted, got, strict=False):
        entry = plan.tallies.setdefault(e, [0, []])
        entry[0] += int(count)
        if count:
            entry[1] += [r for (r,) in con.execute(f"SELECT {row} FROM {raw} WHERE {sql} ORDER BY {row}").fetchall()]
    for e, count in zip(ed.units.values(), got[len(wanted):-1], strict=True):
        plan.tallies.setdefault(e, [0, []])[0] += int(count)
    return int(got[-1])


def _changes(plan: _Plan, read: int) -> list:
    """What each edit did (kn026.edits.Change); CohortError for row edits beyond the rows read."""
    ed = plan.edits
    beyond = edits_mod.missing_rows(ed, read)
    if beyond:
        raise CohortError([Problem(e.column, f"this {e.action} names row {e.row}, but the file has {read:,} rows; "
                                             "choose again", row=e.row, kind="edit") for e in beyond])
    changes = edits_mod.cell_changes(ed)
    for e in (*ed.units.values(), *ed.blank.values(), *ed.drop.values(), *ed.drop_rows.values()):
        count, rows = plan.tallies.get(e, [0, []])
        changes.append(edits_mod.Change(e, count, tuple(rows)))
    return changes


def _problems(con, staging: str, n: int, found: _Findings, guards: dict,
              dropped: np.ndarray | None = None) -> tuple[list[Problem], int]:
    """Every problem in the loader's order (IDs, bad values, unit guard), and their total count.

    Column-wide facts are computed on the stored table, whose columns are the normalised
    values: distinct IDs, and each guarded column's count and median (unit guard).
    `dropped`: the file rows the edits dropped (sorted), so that stored rows name file rows.
    """
    problems = [Problem("patient_id", "is empty; every row needs a patient_id", row=row, count=found.missing,
                        kind="missing_id") for row in found.missing_rows]
    stats = [f"count(DISTINCT {q('patient_id')})"] + [f"count({q(c)}), median({q(c)})" for c in guards]
    row = con.execute(f"SELECT {', '.join(stats)} FROM {staging}").fetchall()[0]
    distinct, medians = row[0], row[1:]
    unlisted_dups = 0  # duplicated IDs beyond the examples, still counted in the total
    if distinct + (1 if found.missing else 0) < n:
        dups = con.execute(
            f"SELECT patient_id AS id, list(_row ORDER BY _row), count(*) OVER () FROM "
            f"(SELECT rowid + 1 AS _row, patient_id FROM {staging}) "
            f"WHERE patient_id IS NOT NULL GROUP BY id HAVING count(*) > 1 ORDER BY min(_row) LIMIT ?",
            [found.max_examples]).fetchall()
        unlisted_dups = dups[0][2] - len(dups) if dups else 0
        for pid_value, rows, _ in dups:
            rows = _file_rows(rows, dropped)
            problems.append(Problem("patient_id", f"is duplicated (rows {', '.join(map(str, rows[:10]))}); "
                                                  "patient_id must be unique", patient_id=pid_value, kind="duplicate",
                                    rows=tuple(rows[:10])))
    for col, (count, rows) in found.bad.items():
        spec = schema.BY_NAME[col]
        problems += [Problem(col, _fix_hint(spec), row=r, patient_id=p, value=v, count=count, kind="value")
                     for r, p, v in rows]
    for i, col in enumerate(guards):
        spec = schema.BY_NAME[col]
        count, rows = found.unguarded.get(col, [0, []])
        problems += [Problem(col, _guard_hint(spec, number), row=r, patient_id=p, value=v, count=count, kind="unit")
                     for r, p, v, number in rows]
        message = _median_hint(spec, medians[2 * i + 1], medians[2 * i])
        if message:
            problems.append(Problem(col, message, kind="median"))
    total = sum(p.count for p in {(p.column, p.message): p for p in problems}.values()) + unlisted_dups
    return problems, max(total, len(problems))


def _file_rows(stored: list[int], dropped: np.ndarray | None) -> list[int]:
    """File rows of 1-based stored rows, when the rows `dropped` (sorted) were left out."""
    if dropped is None or not len(dropped):
        return list(stored)
    before = dropped - np.arange(len(dropped))  # stored rows that come before each dropped row, + 1
    return [int(r) + int(np.searchsorted(before, r, side="right")) for r in stored]


def _drop_named(con, table: str) -> None:
    """Drop the cohort this load replaces: its table (default or compressed database) and view."""
    found = con.execute(
        "SELECT database_name, 'VIEW' FROM duckdb_views() WHERE view_name = $1 AND schema_name = 'main' "
        "AND NOT internal AND NOT temporary AND database_name IN (current_database(), $2) UNION ALL "
        "SELECT database_name, 'TABLE' FROM duckdb_tables() WHERE table_name = $1 AND schema_name = 'main' "
        "AND NOT temporary AND database_name IN (current_database(), $2) ORDER BY 2 DESC",
        [table, COHORT_DB]).fetchall()
    for database, kind in found:
        con.execute(f"DROP {kind} {q(database)}.main.{q(table)}")
