"""OMOP CDM 5.3 / 5.4 -> screening cohort, in DuckDB SQL.

`import_omop(path, index_date)` reads a folder or zip of CDM tables (CSV or Parquet)
or a DuckDB database file, and describes every person at an index date (one fixed
date, or each person's last observation) as one row of the screening cohort
(cohort-dictionary.md). What each column is made of lives in the data file
`kn026/concepts/omop_concepts.yaml` (concept sets, drug ingredients, units,
conversion factors, NULL policy); docs/importers.md explains each column.

How it works:
1. The source tables are exposed as read-only views and normalised (types, column
   names, 5.3 / 5.4 differences) into views `_omop_e_*`.
2. Concept sets are resolved against the concepts that occur in the data only
   (codes and names through CONCEPT, descendants through CONCEPT_ANCESTOR when it
   has rows, ICD-10 prefixes on source codes and source values), so a full
   vocabulary is never scanned more than once.
3. Matching events up to each person's index date are materialised once
   (`_omop_hits`, `_omop_drugs`); every column is then one SQL statement over them.
4. The import report counts, per dictionary column, the patients with a value and
   the concepts the values came from.

The source is only read. Work tables are temporary and dropped at the end.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import operator
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import duckdb
import pandas as pd
import yaml

from kn026 import schema
from kn026.cohort import connect, q

CONCEPTS_PATH = Path(__file__).with_name("concepts") / "omop_concepts.yaml"
Progress = Callable[[float, str], None] | None

# CDM tables the importer reads (lower case); everything else in the source is ignored.
TABLES = ("person", "observation_period", "death", "measurement", "condition_occurrence",
          "drug_exposure", "procedure_occurrence", "observation",
          "concept", "concept_ancestor", "drug_strength", "location", "cdm_source")
EVENT_TABLES = ("condition", "procedure", "observation", "measurement")
GENDER = {8532: "F", 8507: "M"}
MG, UG, GRAM = 8576, 9655, 8504  # UCUM unit concept IDs used by DRUG_STRENGTH
ICD10_VOCABS = ("ICD10", "ICD10CM", "ICD10CN", "ICD10GM", "CIM10", "KCD7", "ICD10CA")
_ICD_SHAPE = re.compile(r"^[A-Z][0-9][0-9A-Z]{0,5}$")
_LOINC_SHAPE = re.compile(r"^[0-9]{1,7}-[0-9]$")
BUILTIN = ("patient_id", "site_id", "country", "screening_date", "age_years", "sex")
KINDS = ("lab", "lab_category", "condition_flag", "condition_days", "condition_category",
         "procedure_days", "drug_days", "first_line", "lines", "progressed", "half_life",
         "dose_cumulative", "dose_daily", "lvef_drop", "lvef_nadir", "radiotherapy_toxicity")
# What a patient with no matching record gets, per kind, when the column does not say.
# Record-based kinds (days, doses) are always NULL: the dictionary's "none on record".
_DEFAULT_ABSENT = {"first_line": False, "lines": 0, "progressed": False, "lvef_drop": 0}
_RECORD_BASED = ("condition_days", "procedure_days", "drug_days", "dose_cumulative", "dose_daily")


# ----------------------------------------------------------------------------- report


@dataclass
class ColumnReport:
    """How one dictionary column was filled."""

    column: str
    status: str  # "derived" (present, from records), "absent" (left out), "index" (PERSON / index date)
    source: str  # OMOP table(s) and concept set(s)
    n_value: int = 0  # patients with a non-NULL value
    n_true: int | None = None  # flags: patients with TRUE
    concepts: list[tuple[int, str, int]] = field(default_factory=list)  # (concept_id, name, patients)
    units: dict[str, int] = field(default_factory=dict)  # unit -> patients whose value used it
    note: str = ""

    def to_dict(self) -> dict:
        return {"column": self.column, "status": self.status, "source": self.source,
                "n_value": self.n_value, "n_true": self.n_true,
                "concepts": "; ".join(f"{cid} {name} ({n})" for cid, name, n in self.concepts),
                "units": "; ".join(f"{u} ({n})" for u, n in self.units.items()), "note": self.note}


@dataclass
class ImportReport:
    """What the OMOP import did: persons, index dates, and one line per dictionary column."""

    source: str
    cdm_version: str
    index_date: str  # "last" or an ISO date
    lookback_days: int
    closed_world: bool
    n_persons: int = 0  # rows in the cohort
    n_source_persons: int = 0  # rows in PERSON
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> persons left out
    columns: list[ColumnReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)  # CDM table -> rows

    def column(self, name: str) -> ColumnReport:
        for c in self.columns:
            if c.column == name:
                return c
        raise KeyError(f"{name!r} is not in the import report")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([c.to_dict() for c in self.columns])

    def to_text(self) -> str:
        lines = [f"OMOP import from {self.source} (CDM {self.cdm_version}), index date "
                 f"{self.index_date}, look-back {self.lookback_days} days, "
                 f"{'closed' if self.closed_world else 'open'} world: {self.n_persons} of "
                 f"{self.n_source_persons} persons"]
        for reason, n in self.excluded.items():
            lines.append(f"  left out: {n} {reason}")
        for c in self.columns:
            if c.status == "absent":
                lines.append(f"  {c.column}: absent (n/a) - {c.note}")
                continue
            extra = f", {c.n_true} true" if c.n_true is not None else ""
            concepts = ", ".join(f"{cid} {name} ({n})" for cid, name, n in c.concepts[:5])
            more = f" +{len(c.concepts) - 5} more" if len(c.concepts) > 5 else ""
            lines.append(f"  {c.column}: {c.n_value}/{self.n_persons} with a value{extra} "
                         f"[{c.source}]" + (f" from {concepts}{more}" if concepts else "")
                         + (f"; units {', '.join(f'{u} ({n})' for u, n in c.units.items())}" if c.units else "")
                         + (f"; {c.note}" if c.note else ""))
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- concepts file


def load_concepts(path: str | Path | None = None) -> dict:
    """Read and check the concepts file; ValueError names the bad entry and the fix."""
    path = Path(path) if path else CONCEPTS_PATH
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except OSError as err:
        raise ValueError(f"concepts file {path} cannot be read ({err.strerror}); check the path") from None
    except yaml.YAMLError as err:
        raise ValueError(f"concepts file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(doc, dict) or "columns" not in doc or "concept_sets" not in doc:
        raise ValueError(f"concepts file {path} needs the sections concept_sets and columns")
    doc.setdefault("defaults", {})
    doc.setdefault("drug_groups", {})
    doc.setdefault("unit_groups", {})
    doc.setdefault("not_derived", {})
    sets, groups, units = doc["concept_sets"], doc["drug_groups"], doc["unit_groups"]
    where = f"concepts file {path.name}"
    for name, spec in sets.items():
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: concept set {name!r} must be a mapping")
        for key in ("include_sets", "exclude_sets"):
            for ref in spec.get(key) or []:
                if ref not in sets:
                    raise ValueError(f"{where}: concept set {name!r} {key} names unknown set {ref!r}")
        for t in spec.get("tables") or ["condition"]:
            if t not in EVENT_TABLES:
                raise ValueError(f"{where}: concept set {name!r} table {t!r} is not one of "
                                 f"{', '.join(EVENT_TABLES)}")
    for g in doc.get("antineoplastic_groups") or []:
        if g not in groups:
            raise ValueError(f"{where}: antineoplastic_groups names unknown drug group {g!r}")
    for name, spec in doc["columns"].items():
        if name not in schema.BY_NAME:
            raise ValueError(f"{where}: column {name!r} is not a dictionary column")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ValueError(f"{where}: column {name!r} kind {kind!r} is not one of {', '.join(KINDS)}")
        for key in ("sets", "unknown_sets", "procedure_sets"):
            for ref in spec.get(key) or []:
                if ref not in sets:
                    raise ValueError(f"{where}: column {name!r} names unknown concept set {ref!r}")
        for _, ref in spec.get("values") or [] if kind == "condition_category" else []:
            if ref not in sets:
                raise ValueError(f"{where}: column {name!r} names unknown concept set {ref!r}")
        grp = spec.get("groups")
        for ref in ([] if grp in (None, "antineoplastic") else grp):
            if ref not in groups:
                raise ValueError(f"{where}: column {name!r} names unknown drug group {ref!r}")
        if kind == "lab" and spec.get("units") not in units:
            raise ValueError(f"{where}: column {name!r} names unknown unit group {spec.get('units')!r}")
        if spec.get("uln") and spec["uln"] not in schema.BY_NAME:
            raise ValueError(f"{where}: column {name!r} uln {spec['uln']!r} is not a dictionary column")
    for name in doc["not_derived"]:
        if name not in schema.BY_NAME:
            raise ValueError(f"{where}: not_derived column {name!r} is not a dictionary column")
    return doc


@cache
def _default_concepts() -> dict:
    return load_concepts(CONCEPTS_PATH)


def normalise_unit(text) -> str:
    """Unit text for comparison: lower case, no spaces, brackets or {annotations}."""
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return ""
    t = str(text).strip().replace("µ", "u").replace("μ", "u").replace("^", "*")
    t = re.sub(r"\{[^}]*\}", "", t).replace("[", "").replace("]", "")
    t = re.sub(r"\s+", "", t).lower().replace("./", "/").strip(".")
    return t


def unit_table(group: str, concepts: dict | None = None) -> list[dict]:
    """The units of a unit group: [{unit, factor, aliases (normalised), ids, missing_unit}]."""
    doc = concepts or _default_concepts()
    out = []
    for u in doc["unit_groups"][group]:
        aliases = {normalise_unit(a) for a in (u.get("aliases") or [])} | {normalise_unit(u["unit"])}
        out.append({"unit": str(u["unit"]), "factor": float(u["factor"]), "aliases": aliases,
                    "ids": {int(i) for i in u.get("ids") or []}, "missing_unit": bool(u.get("missing_unit"))})
    return out


def column_units(column: str, concepts: dict | None = None) -> list[dict]:
    """Units a dictionary column can be given in (from its OMOP lab entry), dictionary unit first."""
    doc = concepts or _default_concepts()
    spec = doc["columns"].get(column) or {}
    uln_of = {s.get("uln"): c for c, s in doc["columns"].items() if s.get("uln")}
    if not spec.get("units") and column in uln_of:  # an ULN column uses its lab's units
        spec = doc["columns"][uln_of[column]]
    if not spec.get("units"):
        return []
    return unit_table(spec["units"], doc)


def convert(value: float, factor: float, decimals: int = 6) -> float:
    """`value` x `factor`, computed in decimal and rounded (13.2 g/dL -> 132 g/L, not 131.99999999999997)."""
    from decimal import Decimal

    return float(round(Decimal(repr(float(value))) * Decimal(repr(float(factor))), decimals))


# ----------------------------------------------------------------------------- source


def _like_to_regex(pattern: str) -> re.Pattern:
    parts = []
    for ch in pattern.lower():
        parts.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
    return re.compile("^" + "".join(parts) + "$", re.S)


def _any_like(patterns: Iterable[str]) -> re.Pattern | None:
    """One regex matching any of the SQL LIKE `patterns` (case-insensitive on lower-cased text)."""
    body = [_like_to_regex(p).pattern[1:-1] for p in patterns]
    return re.compile("^(?:" + "|".join(body) + ")$", re.S) if body else None


def _fmt(value) -> str:
    """A policy value as the docs write it: false, none, 0, NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _lit(text) -> str:
    return "'" + str(text).replace("'", "''") + "'"


class _Source:
    """The CDM tables of a folder, zip or DuckDB file as read-only DuckDB views."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: str | Path | bytes, name: str | None = None):
        self.con = con
        in_memory = isinstance(path, (bytes, bytearray, memoryview))
        self.path = Path(name or "upload.zip") if in_memory else Path(path)
        self.views: dict[str, str] = {}
        self.kinds: dict[str, str] = {}
        self.cols: dict[str, dict[str, tuple[str, str]]] = {}  # table -> lower col -> (actual, type)
        self._tmp: str | None = None
        self._attached: str | None = None
        if not in_memory and not self.path.exists():
            raise ValueError(f"OMOP source {self.path} does not exist; give a folder, a .zip or a "
                             f".duckdb file holding the CDM tables")
        try:
            if in_memory:
                self._open_zip_bytes(bytes(path))
            elif self.path.is_dir():
                self._open_folder(self.path)
            elif zipfile.is_zipfile(self.path):
                self._open_zip(self.path)
            elif self._is_duckdb(self.path):
                self._open_duckdb(self.path)
            else:
                raise ValueError(f"OMOP source {self.path.name} is not a folder, a zip or a DuckDB database; "
                                 f"give the folder or zip of CDM CSV / Parquet tables, or a .duckdb file")
        except BaseException:
            self.close()
            raise
        if "person" not in self.views:
            self.close()
            raise ValueError(f"OMOP source {self.path.name} has no PERSON table; point it at the "
                             f"folder, zip or DuckDB file that holds the CDM tables (PERSON.csv, ...)")
        for table, view in self.views.items():
            described = con.execute(f"DESCRIBE {q(view)}").fetchall()
            self.cols[table] = {str(n).lower(): (str(n), str(t)) for n, t, *_ in described}

    @staticmethod
    def _is_duckdb(path: Path) -> bool:
        try:
            with path.open("rb") as fh:
                head = fh.read(16)
        except OSError:
            return False
        return head[8:12] == b"DUCK" or path.suffix.lower() in (".duckdb", ".ddb")

    @staticmethod
    def _table_of(name: str) -> str | None:
        low = name.lower()
        for suffix in (".csv.gz", ".csv", ".tsv", ".txt", ".parquet"):
            if low.endswith(suffix):
                low = low[: -len(suffix)]
                break
        else:
            return None
        return low if low in TABLES else None

    def _open_folder(self, folder: Path) -> None:
        found: dict[str, list[Path]] = {}
        for p in sorted(folder.rglob("*")):
            if any(part.startswith((".", "__MACOSX")) for part in p.relative_to(folder).parts):
                continue
            if p.is_dir() and p.name.lower() in TABLES and any(p.glob("*.parquet")):
                found.setdefault(p.name.lower(), []).append(p)
            elif p.is_file() and (table := self._table_of(p.name)):
                found.setdefault(table, []).append(p)
        for table, paths in found.items():
            if len(paths) > 1:
                raise ValueError(f"OMOP source {folder.name} has {len(paths)} files for table "
                                 f"{table.upper()} ({', '.join(p.name for p in paths[:3])}); keep one")
            self._view(table, paths[0])

    def _open_zip(self, path: Path) -> None:
        self._tmp = tempfile.mkdtemp(prefix="kn026_omop_")
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = info.filename
                parts = Path(name).parts
                if info.is_dir() or any(p.startswith((".", "__MACOSX")) for p in parts):
                    continue
                table = self._table_of(parts[-1])
                if table is None or table in {self._table_of(p.name) for p in Path(self._tmp).iterdir()}:
                    continue
                target = Path(self._tmp) / parts[-1]
                with zf.open(info) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        self._open_folder(Path(self._tmp))

    def _open_zip_bytes(self, data: bytes) -> None:
        """A zip held in memory (an upload): each CDM table is parsed in Python into an Arrow
        table and registered with DuckDB. Nothing is extracted to disk, and DuckDB needs no
        file access, so this works on a locked-down connection (kn026.sandbox)."""
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as err:
            raise ValueError(f"OMOP source {self.path.name} is not a readable zip ({err}); zip the folder "
                             f"of CDM tables again") from None
        found: dict[str, list[zipfile.ZipInfo]] = {}
        with zf:
            for info in zf.infolist():
                parts = Path(info.filename).parts
                if info.is_dir() or not parts or any(p.startswith((".", "__MACOSX")) for p in parts):
                    continue
                table = self._table_of(parts[-1])
                if table is not None:
                    found.setdefault(table, []).append(info)
            for table, infos in found.items():
                if len(infos) > 1:
                    raise ValueError(f"OMOP source {self.path.name} has {len(infos)} files for table "
                                     f"{table.upper()} ({', '.join(Path(i.filename).name for i in infos[:3])}); "
                                     f"keep one")
                info = infos[0]
                if info.flag_bits & 0x1:
                    raise ValueError(f"OMOP source {self.path.name}: {info.filename} is encrypted; zip the "
                                     f"tables without a password")
                with zf.open(info) as fh:
                    raw = fh.read()
                self._register(table, Path(info.filename).name, raw)

    def _register(self, table: str, member: str, raw: bytes) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        low = member.lower()
        try:
            if low.endswith(".parquet"):
                arrow = pq.read_table(io.BytesIO(raw))
            else:
                if low.endswith(".gz"):
                    raw = gzip.decompress(raw)
                text = raw[:65536].decode("utf-8-sig", errors="replace")
                header = text.splitlines()[0] if text else ""
                tab = "\t" in header  # Athena vocabulary files: tab separated, no quoting
                delimiter = "\t" if tab else ","
                names = next(csv.reader([header], delimiter=delimiter), [])
                if not names or not any(n.strip() for n in names):
                    raise ValueError("the first line must be a header naming the columns")
                arrow = pacsv.read_csv(
                    io.BytesIO(raw),
                    read_options=pacsv.ReadOptions(encoding="utf8"),
                    parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False if tab else '"',
                                                     newlines_in_values=not tab),
                    convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                                         null_values=[""], strings_can_be_null=True))
        except (pa.ArrowException, ValueError, OSError, EOFError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"OMOP table {member} cannot be read ({first}); check that it is CSV (UTF-8) or "
                             f"Parquet") from None
        view = f"_omop_src_{table}"
        self.con.register(view, arrow)
        self.views[table] = view
        self.kinds[table] = "REGISTERED"

    def _view(self, table: str, path: Path) -> None:
        """Parquet stays a view; CSV (text, re-parsed on every scan) is read once into a temp table,
        except the vocabulary tables, which can be huge and are scanned once or twice."""
        view = f"_omop_src_{table}"
        if path.is_dir():
            reader = f"read_parquet({_lit(str(path / '*.parquet'))})"
        elif path.name.lower().endswith(".parquet"):
            reader = f"read_parquet({_lit(str(path))})"
        else:
            reader = f"read_csv({_lit(str(path))}, all_varchar = true, header = true)"
        kind = "VIEW" if "read_parquet" in reader or table in ("concept", "concept_ancestor") else "TABLE"
        try:
            self.con.execute(f"CREATE OR REPLACE TEMP {kind} {view} AS SELECT * FROM {reader}")
        except duckdb.Error:
            # Athena vocabulary files are tab separated without quoting.
            reader = (f"read_csv({_lit(str(path))}, all_varchar = true, header = true, "
                      f"delim = '\\t', quote = '', escape = '')")
            try:
                self.con.execute(f"CREATE OR REPLACE TEMP {kind} {view} AS SELECT * FROM {reader}")
                if kind == "VIEW":
                    self.con.execute(f"SELECT * FROM {view} LIMIT 1").fetchall()
            except duckdb.Error as err:
                raise ValueError(f"OMOP table {path.name} cannot be read "
                                 f"({str(err).splitlines()[0]}); check that it is CSV or Parquet") from None
        self.views[table] = view
        self.kinds[table] = kind

    def _open_duckdb(self, path: Path) -> None:
        alias = "_omop_src_db"
        try:
            self.con.execute(f"ATTACH {_lit(str(path))} AS {alias} (READ_ONLY)")
        except duckdb.Error as err:
            raise ValueError(f"OMOP DuckDB file {path.name} cannot be opened "
                             f"({str(err).splitlines()[0]}); close other programs using it") from None
        self._attached = alias
        rows = self.con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ? "
            "UNION ALL SELECT schema_name, view_name FROM duckdb_views() WHERE database_name = ?",
            [alias, alias]).fetchall()
        schemas: dict[str, list[str]] = {}
        for sch, name in rows:
            if name.lower() in TABLES:
                schemas.setdefault(name.lower(), []).append((sch, name))
        person_schema = schemas.get("person", [(None, None)])[0][0]
        for table, options in schemas.items():
            options.sort(key=lambda o: (o[0] != person_schema, o[0]))
            sch, name = options[0]
            view = f"_omop_src_{table}"
            self.con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM {alias}.{q(sch)}.{q(name)}")
            self.views[table] = view
            self.kinds[table] = "VIEW"

    def has(self, table: str) -> bool:
        return table in self.views

    def rows(self, table: str) -> int:
        return self.con.execute(f"SELECT count(*) FROM {self.views[table]}").fetchone()[0] if self.has(table) else 0

    def nonempty(self, table: str) -> bool:
        return self.has(table) and bool(self.con.execute(f"SELECT 1 FROM {self.views[table]} LIMIT 1").fetchall())

    def col(self, table: str, name: str, typ: str, alias: str = "") -> str:
        """SQL for column `name` of `table` as `typ` (NULL when the column is missing)."""
        alias = alias or name
        entry = self.cols.get(table, {}).get(name)
        if entry is None:
            return f"CAST(NULL AS {typ}) AS {q(alias)}"
        actual, src_type = entry
        x = q(actual)
        if src_type == typ or (typ == "BIGINT" and src_type in ("INTEGER", "SMALLINT", "TINYINT", "HUGEINT")):
            expr = f"CAST({x} AS {typ})"
        else:
            t = f"NULLIF(trim(CAST({x} AS VARCHAR)), '')"
            if typ == "DATE":
                expr = (f"COALESCE(TRY_CAST({t} AS DATE), CAST(TRY_CAST({t} AS TIMESTAMP) AS DATE), "
                        f"CAST(try_strptime({t}, '%Y%m%d') AS DATE))")
            elif typ == "BIGINT":
                expr = f"COALESCE(TRY_CAST({t} AS BIGINT), CAST(TRY_CAST({t} AS DOUBLE) AS BIGINT))"
            elif typ == "VARCHAR":
                expr = t
            else:
                expr = f"TRY_CAST({t} AS {typ})"
        return f"{expr} AS {q(alias)}"

    def close(self) -> None:
        for table, view in self.views.items():
            if self.kinds.get(table) == "REGISTERED":
                self.con.unregister(view)
                continue
            self.con.execute(f"DROP {self.kinds.get(table, 'VIEW')} IF EXISTS {view}")
        self.views = {}
        if self._attached:
            try:
                self.con.execute(f"DETACH {self._attached}")
            except duckdb.Error:  # pragma: no cover - already detached
                pass
            self._attached = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


# ----------------------------------------------------------------------------- importer


def _index_spec(index_date) -> dt.date | None:
    """None for "last", else the fixed date; ValueError names the fix."""
    if isinstance(index_date, str) and index_date.strip().lower() in ("last", "last_observation"):
        return None
    if isinstance(index_date, dt.datetime):
        return index_date.date()
    if isinstance(index_date, dt.date):
        return index_date
    try:
        return dt.date.fromisoformat(str(index_date).strip())
    except ValueError:
        raise ValueError(f"index date {index_date!r} is not an ISO date; give YYYY-MM-DD or 'last' "
                         f"(each person's last observation)") from None


def _lookback(value) -> int:
    if not isinstance(value, bool):
        try:
            days = operator.index(value)
        except TypeError:
            days = None
        if days is not None and days >= 0:
            return days
    raise ValueError(f"lookback_days {value!r} must be a whole number of days >= 0")


def import_omop(path: str | Path | bytes, index_date="last", lookback_days: int = 30,
                con: duckdb.DuckDBPyConnection | None = None, *, concepts: str | Path | dict | None = None,
                closed_world: bool = True, progress: Progress = None,
                name: str | None = None) -> tuple[pd.DataFrame, ImportReport]:
    """Build the screening cohort from an OMOP CDM at `index_date` ("last" or a date).

    `path` is a folder, a zip or a DuckDB file, or the bytes of a zip (an upload, read
    in memory: nothing is extracted to disk; `name` is its file name for messages and
    the report). Labs are the latest value within `lookback_days` up to the index date.
    `concepts` replaces the concepts file; `closed_world=False` makes a condition or
    drug that is not on record NULL (unknown) instead of false / none / 0. Returns the
    cohort (one row per person, dictionary columns only) and the import report.
    """
    lookback_days = _lookback(lookback_days)
    fixed = _index_spec(index_date)
    doc = concepts if isinstance(concepts, dict) else load_concepts(concepts) if concepts else _default_concepts()
    in_memory = isinstance(path, (bytes, bytearray, memoryview))
    shown = (name or "uploaded zip") if in_memory else str(path)
    own = con is None
    con = con or connect()
    report = ImportReport(shown, "?", fixed.isoformat() if fixed else "last", lookback_days, closed_world)
    step = _Stepper(progress)
    step(0.0, "opening the OMOP tables")
    try:
        src = _Source(con, path, name)
    except BaseException:
        if own:
            con.close()
        raise
    try:
        imp = _Importer(con, src, doc, fixed, lookback_days, closed_world, report, step)
        frame = imp.run()
    finally:
        _drop_work(con)
        src.close()
        if own:
            con.close()
    step(1.0, f"done: {len(frame)} patients")
    return frame, report


class _Stepper:
    def __init__(self, progress: Progress):
        self.progress = progress

    def __call__(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(min(max(float(fraction), 0.0), 1.0), message)


def _drop_work(con) -> None:
    rows = con.execute("SELECT table_name, table_type FROM information_schema.tables WHERE table_catalog = "
                       "'temp' AND table_name LIKE '\\_omop\\_%' ESCAPE '\\'").fetchall()
    for name, typ in rows:
        if name.startswith("_omop_src_"):
            continue
        kind = "VIEW" if "VIEW" in typ.upper() else "TABLE"
        con.execute(f"DROP {kind} IF EXISTS {q(name)}")


class _Importer:
    def __init__(self, con, src: _Source, doc: dict, fixed: dt.date | None, lookback: int,
                 closed_world: bool, report: ImportReport, step: _Stepper):
        self.con, self.src, self.doc = con, src, doc
        self.fixed, self.lookback, self.closed_world = fixed, lookback, closed_world
        self.report, self.step = report, step
        self.defaults = doc.get("defaults") or {}
        self.decimals = int(self.defaults.get("exact_decimals", 6))
        self.columns: dict[str, dict] = {}  # dictionary column -> {"table": value table, "absent": ...}
        self.has_concept = src.nonempty("concept")
        self.has_ancestor = src.nonempty("concept_ancestor")

    # -------------------------------------------------------------- helpers
    def sql(self, text: str, params=None):
        return self.con.execute(text, params or [])

    def fetch(self, text: str, params=None) -> list[tuple]:
        return self.con.execute(text, params or []).fetchall()

    def absent(self, spec: dict, kind: str):
        if kind in _RECORD_BASED:
            return None
        value = spec["absent"] if "absent" in spec else _DEFAULT_ABSENT.get(kind)
        return value if self.closed_world else None

    # -------------------------------------------------------------- run
    def run(self) -> pd.DataFrame:
        r = self.report
        for t in TABLES:
            if self.src.has(t) and t not in ("concept", "concept_ancestor", "drug_strength"):
                r.tables[t.upper()] = self.src.rows(t)
        r.cdm_version = self._cdm_version()
        self._stage()
        self.step(0.15, "choosing index dates")
        self._index()
        self.step(0.25, "resolving concept sets")
        self._vocabulary()
        self._members()
        self.step(0.45, "matching events up to the index date")
        self._hits()
        self._drug_members()
        self._drug_rows()
        self.step(0.6, "deriving columns")
        self._lab_values()
        specs = self.doc["columns"]
        for i, (name, spec) in enumerate(specs.items()):
            getattr(self, "_col_" + spec["kind"])(name, spec)
            self.step(0.6 + 0.3 * (i + 1) / len(specs), f"derived {name}")
        self.step(0.92, "assembling the cohort")
        frame = self._assemble()
        self._report(frame)
        return frame

    def _cdm_version(self) -> str:
        if self.src.has("cdm_source") and "cdm_version" in self.src.cols["cdm_source"]:
            actual = self.src.cols["cdm_source"]["cdm_version"][0]
            row = self.fetch(f"SELECT CAST({q(actual)} AS VARCHAR) FROM {self.src.views['cdm_source']} LIMIT 1")
            if row and row[0][0]:
                return str(row[0][0]).strip().lstrip("v")
        meas = self.src.cols.get("measurement", {})
        return "5.4" if "measurement_event_id" in meas or "unit_source_concept_id" in meas else "5.3"

    # -------------------------------------------------------------- staging views
    def _stage(self) -> None:
        s, c = self.src, self.src.col
        self.sql(f"""CREATE TEMP VIEW _omop_e_person AS SELECT
            {c('person', 'person_id', 'VARCHAR')}, {c('person', 'gender_concept_id', 'BIGINT')},
            {c('person', 'gender_source_value', 'VARCHAR')}, {c('person', 'year_of_birth', 'BIGINT')},
            {c('person', 'month_of_birth', 'BIGINT')}, {c('person', 'day_of_birth', 'BIGINT')},
            {c('person', 'birth_datetime', 'DATE', 'birth_date')}, {c('person', 'care_site_id', 'VARCHAR')},
            {c('person', 'location_id', 'VARCHAR')} FROM {s.views['person']}""")
        unions = []
        spec = {
            "condition": ("condition_occurrence", "condition", "condition_start_date", "condition_end_date",
                          "condition_start_datetime", "condition_occurrence_id"),
            "procedure": ("procedure_occurrence", "procedure", "procedure_date", "procedure_end_date",
                          "procedure_datetime", "procedure_occurrence_id"),
            "observation": ("observation", "observation", "observation_date", None, "observation_datetime",
                            "observation_id"),
            "measurement": ("measurement", "measurement", "measurement_date", None, "measurement_datetime",
                            "measurement_id"),
        }
        for tbl, (table, stem, start, end, ts, eid) in spec.items():
            if not s.has(table):
                continue
            value_text = "value_as_string" if tbl == "observation" else "value_source_value"
            self.sql(f"""CREATE TEMP VIEW _omop_e_{tbl} AS SELECT '{tbl}' AS tbl,
                {c(table, 'person_id', 'VARCHAR')}, {c(table, stem + '_concept_id', 'BIGINT', 'concept_id')},
                {c(table, stem + '_source_concept_id', 'BIGINT', 'source_concept_id')},
                {c(table, stem + '_source_value', 'VARCHAR', 'source_value')},
                {c(table, start, 'DATE', 'start_date')},
                {c(table, end, 'DATE', 'end_date') if end else 'CAST(NULL AS DATE) AS end_date'},
                {c(table, ts, 'TIMESTAMP', 'sort_ts')}, {c(table, eid, 'BIGINT', 'event_id')},
                {c(table, 'value_as_number', 'DOUBLE')}, {c(table, 'value_as_concept_id', 'BIGINT')},
                {c(table, value_text, 'VARCHAR', 'value_text')}, {c(table, 'unit_concept_id', 'BIGINT')},
                {c(table, 'unit_source_value', 'VARCHAR')}, {c(table, 'range_high', 'DOUBLE')}
                FROM {s.views[table]}""")
            unions.append(f"SELECT *, upper(replace(replace(source_value, '.', ''), ' ', '')) AS source_norm "
                          f"FROM _omop_e_{tbl}")
        if not unions:
            unions.append("SELECT NULL::VARCHAR AS tbl, NULL::VARCHAR AS person_id, NULL::BIGINT AS concept_id, "
                          "NULL::BIGINT AS source_concept_id, NULL::VARCHAR AS source_value, NULL::DATE AS start_date, "
                          "NULL::DATE AS end_date, NULL::TIMESTAMP AS sort_ts, NULL::BIGINT AS event_id, "
                          "NULL::DOUBLE AS value_as_number, NULL::BIGINT AS value_as_concept_id, "
                          "NULL::VARCHAR AS value_text, NULL::BIGINT AS unit_concept_id, "
                          "NULL::VARCHAR AS unit_source_value, NULL::DOUBLE AS range_high, "
                          "NULL::VARCHAR AS source_norm WHERE FALSE")
        self.sql("CREATE TEMP VIEW _omop_events AS " + " UNION ALL ".join(unions))
        d = "drug_exposure"
        if s.has(d):
            self.sql(f"""CREATE TEMP VIEW _omop_e_drug AS SELECT {c(d, 'person_id', 'VARCHAR')},
                {c(d, 'drug_concept_id', 'BIGINT')}, {c(d, 'drug_exposure_start_date', 'DATE', 'start_date')},
                {c(d, 'drug_exposure_end_date', 'DATE', 'end_date')}, {c(d, 'quantity', 'DOUBLE')},
                {c(d, 'days_supply', 'DOUBLE')}, {c(d, 'route_concept_id', 'BIGINT')},
                {c(d, 'dose_unit_source_value', 'VARCHAR')}, {c(d, 'drug_exposure_id', 'BIGINT', 'event_id')}
                FROM {s.views[d]}""")
        else:
            self.sql("CREATE TEMP VIEW _omop_e_drug AS SELECT NULL::VARCHAR AS person_id, NULL::BIGINT AS "
                     "drug_concept_id, NULL::DATE AS start_date, NULL::DATE AS end_date, NULL::DOUBLE AS quantity, "
                     "NULL::DOUBLE AS days_supply, NULL::BIGINT AS route_concept_id, NULL::VARCHAR AS "
                     "dose_unit_source_value, NULL::BIGINT AS event_id WHERE FALSE")

    # -------------------------------------------------------------- index dates
    def _index(self) -> None:
        s, c, r = self.src, self.src.col, self.report
        dup = self.fetch("SELECT person_id, count(*) FROM _omop_e_person GROUP BY 1 HAVING count(*) > 1 LIMIT 3")
        if dup:
            raise ValueError(f"PERSON has duplicate person_id {', '.join(str(d[0]) for d in dup)}; "
                             f"person_id must be unique in the CDM")
        if s.has("observation_period"):
            op = "observation_period"
            self.sql(f"""CREATE TEMP TABLE _omop_op AS SELECT person_id, min(s) AS op_start, max(e) AS op_end
                FROM (SELECT {c(op, 'person_id', 'VARCHAR')}, {c(op, 'observation_period_start_date', 'DATE', 's')},
                {c(op, 'observation_period_end_date', 'DATE', 'e')} FROM {s.views[op]}) GROUP BY person_id""")
        else:
            self.sql("CREATE TEMP TABLE _omop_op AS SELECT NULL::VARCHAR AS person_id, NULL::DATE AS op_start, "
                     "NULL::DATE AS op_end WHERE FALSE")
        if s.has("death"):
            self.sql(f"""CREATE TEMP TABLE _omop_death AS SELECT person_id, min(death_date) AS death_date FROM
                (SELECT {c('death', 'person_id', 'VARCHAR')}, {c('death', 'death_date', 'DATE')}
                 FROM {s.views['death']}) GROUP BY 1""")
        else:
            self.sql("CREATE TEMP TABLE _omop_death AS SELECT NULL::VARCHAR AS person_id, NULL::DATE AS death_date "
                     "WHERE FALSE")
        if self.fixed is None:
            missing = self.fetch("SELECT count(*) FROM _omop_e_person p LEFT JOIN _omop_op o USING (person_id) "
                                 "WHERE o.op_end IS NULL")[0][0]
            last_event = "NULL::DATE"
            if missing:
                self.sql("""CREATE TEMP TABLE _omop_lastev AS SELECT person_id, max(d) AS d FROM (
                    SELECT person_id, start_date AS d FROM _omop_events
                    UNION ALL SELECT person_id, start_date FROM _omop_e_drug) GROUP BY 1""")
                last_event = "(SELECT d FROM _omop_lastev l WHERE l.person_id = p.person_id)"
            index_sql = f"COALESCE(o.op_end, {last_event})"
        else:
            index_sql = f"DATE '{self.fixed.isoformat()}'"
        birth = ("COALESCE(p.birth_date, TRY_CAST(printf('%04d-%02d-%02d', p.year_of_birth, "
                 "COALESCE(p.month_of_birth, 7), COALESCE(p.day_of_birth, CASE WHEN p.month_of_birth IS NULL "
                 "THEN 1 ELSE 15 END)) AS DATE))")
        country = "CAST(NULL AS VARCHAR)"
        loc = s.cols.get("location", {})
        if "country_source_value" in loc and "location_id" in loc:
            country = (f"(SELECT NULLIF(trim(CAST(l.{q(loc['country_source_value'][0])} AS VARCHAR)), '') FROM "
                       f"{s.views['location']} l WHERE CAST(l.{q(loc['location_id'][0])} AS VARCHAR)"
                       f" = p.location_id LIMIT 1)")
        sex_words = " ".join(f"WHEN {_lit(k)} THEN {_lit(v)}" for k, v in schema.SEX_WORDS.items())
        self.sql(f"""CREATE TEMP TABLE _omop_all AS SELECT p.person_id, {index_sql} AS index_date, {birth} AS birth,
            d.death_date, o.op_start, o.op_end, p.care_site_id, {country} AS country,
            CASE p.gender_concept_id WHEN 8532 THEN 'F' WHEN 8507 THEN 'M'
                 ELSE CASE lower(trim(p.gender_source_value)) {sex_words} END END AS sex
            FROM _omop_e_person p LEFT JOIN _omop_op o USING (person_id) LEFT JOIN _omop_death d USING (person_id)
            WHERE p.person_id IS NOT NULL""")
        r.n_source_persons = self.fetch("SELECT count(*) FROM _omop_e_person")[0][0]
        reasons = {
            "without any dated record (no index date)": "index_date IS NULL",
            "born after the index date": "index_date IS NOT NULL AND birth > index_date",
            "who died before the index date": "index_date IS NOT NULL AND death_date < index_date",
        }
        for reason, cond in reasons.items():
            n = self.fetch(f"SELECT count(*) FROM _omop_all WHERE {cond}")[0][0]
            if n:
                r.excluded[reason] = n
        self.sql("""CREATE TEMP TABLE _omop_idx AS SELECT * FROM _omop_all WHERE index_date IS NOT NULL
            AND (birth IS NULL OR birth <= index_date) AND (death_date IS NULL OR death_date >= index_date)""")
        if self.fixed is not None:
            n = self.fetch("SELECT count(*) FROM _omop_idx WHERE op_end IS NOT NULL AND "
                           "NOT (index_date BETWEEN op_start AND op_end)")[0][0]
            if n:
                r.warnings.append(f"{n} persons are not under observation at the index date "
                                  f"{self.fixed.isoformat()}; their records may be incomplete")
        nobirth = self.fetch("SELECT count(*) FROM _omop_idx WHERE birth IS NULL")[0][0]
        if nobirth:
            r.warnings.append(f"{nobirth} persons have no usable year of birth; age_years is NULL for them")

    # -------------------------------------------------------------- vocabulary
    def _vocabulary(self) -> None:
        """Concepts used by the data, their ancestors, and the code / ingredient lookups."""
        self.used = {t: set() for t in EVENT_TABLES}
        self.used_src = {t: set() for t in EVENT_TABLES}
        self.used_vals = {t: set() for t in EVENT_TABLES}
        for tbl, cid, sid, norm in self.fetch(
                "SELECT DISTINCT e.tbl, e.concept_id, e.source_concept_id, "
                "CASE WHEN regexp_matches(e.source_norm, '^[A-Z][0-9][0-9A-Z]{0,5}$') "
                "OR regexp_matches(e.source_norm, '^[0-9]{1,7}-[0-9]$') THEN e.source_norm END "
                "FROM _omop_events e JOIN _omop_idx i USING (person_id) WHERE e.start_date <= i.index_date"):
            if cid:
                self.used[tbl].add(int(cid))
            if sid:
                self.used_src[tbl].add(int(sid))
            if norm:
                self.used_vals[tbl].add(norm)
        self.used_drugs = {int(r[0]) for r in self.fetch(
            "SELECT DISTINCT drug_concept_id FROM _omop_e_drug WHERE drug_concept_id IS NOT NULL")}
        aux = self.fetch("""SELECT DISTINCT x FROM (SELECT unit_concept_id AS x FROM _omop_events UNION ALL
            SELECT value_as_concept_id FROM _omop_events UNION ALL SELECT route_concept_id FROM _omop_e_drug)
            WHERE x IS NOT NULL AND x <> 0""")
        all_used = set().union(*self.used.values(), *self.used_src.values(), self.used_drugs, {r[0] for r in aux})
        self.con.register("_omop_used_frame", pd.DataFrame({"concept_id": sorted(all_used)}, dtype="int64"))
        self.sql("CREATE TEMP TABLE _omop_used AS SELECT concept_id FROM _omop_used_frame")
        self.con.unregister("_omop_used_frame")
        codes = set()
        for spec in self.doc["concept_sets"].values():
            for key in ("codes", "exclude_codes"):
                for vocab, values in (spec.get(key) or {}).items():
                    codes |= {(str(vocab), str(v)) for v in values}
        ing_names, ing_codes, ing_like = set(), set(), []
        for items in self.doc["drug_groups"].values():
            for item in items:
                ing_names.add(str(item["name"]).lower())
                ing_codes |= {str(x) for x in item.get("rxnorm") or []}
                ing_like += [str(x).lower() for x in item.get("patterns") or []]
        code_pairs = ", ".join(f"({_lit(v)}, {_lit(c)})" for v, c in sorted(codes)) or "(NULL, NULL)"
        ingredient = (f"concept_class_id = 'Ingredient' AND (lower(concept_name) IN "
                      f"({', '.join(_lit(n) for n in sorted(ing_names)) or 'NULL'}) OR concept_code IN "
                      f"({', '.join(_lit(x) for x in sorted(ing_codes)) or 'NULL'})"
                      + "".join(f" OR lower(concept_name) LIKE {_lit(x)}" for x in ing_like) + ")")
        self.concepts: dict[int, dict] = {}
        self.by_code: dict[tuple[str, str], list[int]] = {}
        self.ingredients: list[dict] = []
        if self.has_concept:
            c, v = self.src.col, self.src.views["concept"]
            self.sql(f"""CREATE TEMP TABLE _omop_concept AS SELECT * FROM (SELECT
                {c('concept', 'concept_id', 'BIGINT')}, {c('concept', 'concept_name', 'VARCHAR')},
                {c('concept', 'domain_id', 'VARCHAR')}, {c('concept', 'vocabulary_id', 'VARCHAR')},
                {c('concept', 'concept_class_id', 'VARCHAR')}, {c('concept', 'concept_code', 'VARCHAR')}
                FROM {v}) WHERE concept_id IN (SELECT concept_id FROM _omop_used) OR ({ingredient})
                OR (vocabulary_id, concept_code) IN (VALUES {code_pairs})""")
            for cid, name, domain, vocab, cls, code in self.fetch("SELECT * FROM _omop_concept"):
                info = {"name": name or "", "domain": domain, "vocab": vocab, "class": cls, "code": code or ""}
                self.concepts[int(cid)] = info
                self.by_code.setdefault((vocab, info["code"]), []).append(int(cid))
                if cls == "Ingredient":
                    self.ingredients.append({"id": int(cid), "name": (name or "").lower(), "code": info["code"],
                                             "vocab": vocab})
        self.ancestors: dict[int, set[int]] = {}
        if self.has_ancestor:
            c, v = self.src.col, self.src.views["concept_ancestor"]
            for anc, desc in self.fetch(f"""SELECT a, d FROM (SELECT
                    {c('concept_ancestor', 'ancestor_concept_id', 'BIGINT', 'a')},
                    {c('concept_ancestor', 'descendant_concept_id', 'BIGINT', 'd')} FROM {v})
                    WHERE d IN (SELECT concept_id FROM _omop_used) AND a <> d"""):
                self.ancestors.setdefault(int(desc), set()).add(int(anc))

    def _checked_ids(self, ids: dict | list | None, what: str) -> set[int]:
        """Concept IDs from the file, dropped (with a warning) when CONCEPT names them differently."""
        out = set()
        items = ids.items() if isinstance(ids, dict) else ((i, None) for i in ids or [])
        for cid, expected in items:
            cid = int(cid)
            info = self.concepts.get(cid)
            if self.has_concept and expected and info and info["name"].strip().lower() != str(expected).strip().lower():
                self.report.warnings.append(f"{what}: concept {cid} is {info['name']!r} in this CONCEPT "
                                            f"table, not {expected!r}; skipped (fix the ID in the concepts file)")
                continue
            out.add(cid)
        return out

    # -------------------------------------------------------------- concept sets
    def _members(self) -> None:
        self.sets: dict[str, dict] = {}
        for name in self.doc["concept_sets"]:
            self._resolve(name, ())
        rows = []
        for name, m in self.sets.items():
            for dim in ("c", "s", "v"):
                for tbl in m["tables"]:
                    rows += [(name, dim, tbl, str(k), True) for k in m[dim + "_in"].get(tbl, ())]
                    rows += [(name, dim, tbl, str(k), False) for k in m[dim + "_out"].get(tbl, ())]
        frame = pd.DataFrame(rows, columns=["set_name", "dim", "tbl", "key", "incl"])
        self.con.register("_omop_members_frame", frame)
        for dim, typ in (("c", "BIGINT"), ("s", "BIGINT"), ("v", "VARCHAR")):
            self.sql(f"""CREATE TEMP TABLE _omop_m{dim} AS SELECT set_name, tbl, CAST(key AS {typ}) AS key, incl
                FROM _omop_members_frame WHERE dim = '{dim}'""")
        self.con.unregister("_omop_members_frame")

    def _resolve(self, name: str, stack: tuple[str, ...]) -> dict:
        if name in self.sets:
            return self.sets[name]
        if name in stack:
            raise ValueError(f"concept set {name!r} includes itself through {' -> '.join(stack)}")
        spec = self.doc["concept_sets"][name]
        tables = tuple(spec.get("tables") or ["condition"])
        descendants = spec.get("descendants", True) and self.has_ancestor

        def roots(ids_key: str, codes_key: str) -> set[int]:
            out = self._checked_ids(spec.get(ids_key), f"concept set {name}")
            for vocab, values in (spec.get(codes_key) or {}).items():
                for code in values:
                    out |= set(self.by_code.get((str(vocab), str(code)), []))
            return out

        def matches(cid: int, root: set[int], pattern: re.Pattern | None) -> bool:
            if cid in root or (descendants and self.ancestors.get(cid, set()) & root):
                return True
            cname = self.concepts.get(cid, {}).get("name", "").lower()
            return bool(cname) and pattern is not None and bool(pattern.match(cname))

        inc_root, exc_root = roots("ids", "codes"), roots("exclude_ids", "exclude_codes")
        inc_pat = _any_like(spec.get("names") or [])
        exc_pat = _any_like(spec.get("exclude_names") or [])
        prefixes = [str(p).upper().replace(".", "") for p in spec.get("icd10") or []]
        exc_prefixes = [str(p).upper().replace(".", "") for p in spec.get("exclude_icd10") or []]
        loinc = {str(c) for c in (spec.get("codes") or {}).get("LOINC", [])} if spec.get("loinc_source") else set()
        m = {"tables": tables, "c_in": {}, "c_out": {}, "s_in": {}, "s_out": {}, "v_in": {}, "v_out": {}}
        for tbl in tables:
            used = self.used.get(tbl, set())
            m["c_in"][tbl] = {c for c in used if matches(c, inc_root, inc_pat)}
            m["c_out"][tbl] = {c for c in used if matches(c, exc_root, exc_pat)}
            s_in, s_out = set(), set()
            for sid in self.used_src.get(tbl, set()):
                info = self.concepts.get(sid)
                if sid in inc_root:
                    s_in.add(sid)
                if not info:
                    continue
                code = info["code"].upper().replace(".", "")
                if info["vocab"] in ICD10_VOCABS:
                    if any(code.startswith(p) for p in prefixes):
                        s_in.add(sid)
                    if any(code.startswith(p) for p in exc_prefixes):
                        s_out.add(sid)
                if info["vocab"] == "LOINC" and info["code"] in loinc:
                    s_in.add(sid)
            m["s_in"][tbl], m["s_out"][tbl] = s_in, s_out
            v_in, v_out = set(), set()
            for val in self.used_vals.get(tbl, set()):
                if _ICD_SHAPE.match(val):
                    if any(val.startswith(p) for p in prefixes):
                        v_in.add(val)
                    if any(val.startswith(p) for p in exc_prefixes):
                        v_out.add(val)
                elif _LOINC_SHAPE.match(val) and val in loinc:
                    v_in.add(val)
            m["v_in"][tbl], m["v_out"][tbl] = v_in, v_out
        for ref in spec.get("include_sets") or []:
            other = self._resolve(ref, stack + (name,))
            for key in ("c_in", "s_in", "v_in", "c_out", "s_out", "v_out"):
                for tbl in tables:
                    m[key].setdefault(tbl, set()).update(other[key].get(tbl, set()))
        for ref in spec.get("exclude_sets") or []:
            other = self._resolve(ref, stack + (name,))
            for dim in ("c", "s", "v"):
                for tbl in tables:
                    m[dim + "_out"].setdefault(tbl, set()).update(other[dim + "_in"].get(tbl, set()))
        self.sets[name] = m
        return m

    def _hits(self) -> None:
        """Events up to the index date that belong to a concept set, one row per (event, set)."""
        self.sql("""CREATE TEMP TABLE _omop_cand AS SELECT row_number() OVER () AS rid, e.*, i.index_date
            FROM _omop_events e JOIN _omop_idx i USING (person_id)
            WHERE e.start_date <= i.index_date AND (
                e.concept_id IN (SELECT key FROM _omop_mc WHERE incl)
                OR e.source_concept_id IN (SELECT key FROM _omop_ms WHERE incl)
                OR e.source_norm IN (SELECT key FROM _omop_mv WHERE incl))""")
        self.sql("""CREATE TEMP TABLE _omop_hits AS SELECT x.set_name, c.* FROM _omop_cand c JOIN (
            SELECT rid, set_name FROM (
                SELECT c.rid, m.set_name, m.incl FROM _omop_cand c JOIN _omop_mc m ON m.tbl = c.tbl AND m.key = c.concept_id
                UNION ALL SELECT c.rid, m.set_name, m.incl FROM _omop_cand c
                    JOIN _omop_ms m ON m.tbl = c.tbl AND m.key = c.source_concept_id
                UNION ALL SELECT c.rid, m.set_name, m.incl FROM _omop_cand c
                    JOIN _omop_mv m ON m.tbl = c.tbl AND m.key = c.source_norm)
            GROUP BY rid, set_name HAVING bool_or(incl) AND NOT bool_or(NOT incl)) x USING (rid)""")

    # -------------------------------------------------------------- drugs
    def _drug_members(self) -> None:
        """Drug concepts in DRUG_EXPOSURE -> (group, ingredient), by ancestry or by name."""
        fallback = str(self.defaults.get("drug_name_fallback", "auto")).lower()
        by_name = fallback == "always" or (fallback == "auto" and not self.has_ancestor)
        rows = []
        for group, items in self.doc["drug_groups"].items():
            for item in items:
                iname = str(item["name"]).lower()
                pats = [_like_to_regex(p) for p in item.get("patterns") or []]
                root = self._checked_ids(item.get("ids"), f"drug {iname}")
                codes = {str(x) for x in item.get("rxnorm") or []}
                for ing in self.ingredients:
                    if ing["vocab"] not in ("RxNorm", "RxNorm Extension"):
                        continue
                    named = ing["name"] == iname or any(p.match(ing["name"]) for p in pats)
                    if named:
                        root.add(ing["id"])
                    elif ing["code"] in codes and ing["vocab"] == "RxNorm":
                        self.report.warnings.append(
                            f"drug {iname}: RxNorm code {ing['code']} is {ing['name']!r} in this CONCEPT table; "
                            f"skipped (fix the rxnorm code in the concepts file)")
                words = [re.compile(r"(?<![\w-])" + re.escape(iname) + r"(?![\w-])")]
                words += [re.compile(r"(?<![\w-])" + p.pattern[1:-1] + r"(?![\w])") for p in pats]
                for did in self.used_drugs:
                    via = ({did} | self.ancestors.get(did, set())) & root
                    hit = bool(via)
                    if not hit and by_name:
                        dname = self.concepts.get(did, {}).get("name", "").lower()
                        hit = bool(dname) and any(w.search(dname) for w in words)
                    if hit:
                        rows.append((group, iname, did, float(item.get("factor", 1.0)),
                                     item.get("half_life_days"), min(via) if len(via) == 1 else None))
        frame = pd.DataFrame(rows, columns=["grp", "ingredient", "drug_concept_id", "factor", "half_life",
                                            "ingredient_concept_id"]).astype(
            {"drug_concept_id": "int64", "factor": "float64", "half_life": "float64",
             "ingredient_concept_id": "Int64"})
        self.con.register("_omop_dm_frame", frame)
        self.sql("CREATE TEMP TABLE _omop_dm AS SELECT * FROM _omop_dm_frame")
        self.con.unregister("_omop_dm_frame")

    def _drug_rows(self) -> None:
        self.sql("""CREATE TEMP TABLE _omop_drugs AS SELECT m.grp, m.ingredient, m.factor, m.half_life,
            m.ingredient_concept_id, d.*, i.index_date,
            LEAST(COALESCE(d.end_date, d.start_date), i.index_date) AS last_date
            FROM _omop_e_drug d JOIN _omop_dm m USING (drug_concept_id) JOIN _omop_idx i USING (person_id)
            WHERE d.start_date <= i.index_date""")

    def _groups(self, spec: dict) -> list[str]:
        g = spec.get("groups")
        if g == "antineoplastic" or g is None:
            return list(self.doc.get("antineoplastic_groups") or [])
        return list(g)

    # -------------------------------------------------------------- columns: infrastructure
    def _store(self, column: str, sql: str, absent=None, source: str = "", note: str = "") -> None:
        """Materialise `sql` (person_id, value[, concept_id]) as the value table of `column`."""
        table = f"_omop_c_{column}"
        self.sql(f"CREATE TEMP TABLE {q(table)} AS {sql}")
        self.columns[column] = {"table": table, "absent": absent, "source": source, "note": note}

    def _in(self, names: Iterable[str]) -> str:
        return ", ".join(_lit(n) for n in names) or "''"

    def _lab_values(self) -> None:
        """Every usable, converted measurement of the lab columns (and weight / height for BSA)."""
        labs = {n: s for n, s in self.doc["columns"].items() if s["kind"] in ("lab", "lvef_drop", "lvef_nadir")}
        labs["_bsa_weight"] = {"sets": ["body_weight"], "units": "kg"}
        labs["_bsa_height"] = {"sets": ["body_height"], "units": "cm"}
        lvef = next((s for n, s in self.doc["columns"].items() if s["kind"] == "lab" and "lvef" in s["sets"]), None)
        unit_rows, self.unit_notes = [], {}
        for name, spec in labs.items():
            group = spec.get("units") or (lvef or {}).get("units", "percent")
            if group not in self.doc["unit_groups"] or not all(s in self.doc["concept_sets"] for s in spec["sets"]):
                continue
            table = unit_table(group, self.doc)
            pairs = self.fetch(f"""SELECT unit_concept_id, unit_source_value, count(*) FROM _omop_hits
                WHERE set_name IN ({self._in(spec['sets'])}) AND value_as_number IS NOT NULL GROUP BY ALL""")
            skipped = {}
            for uid, usrc, n in pairs:
                found = self._unit(uid, usrc, table)
                if found is None:
                    label = self._unit_label(uid, usrc) or "(no unit)"
                    skipped[label] = skipped.get(label, 0) + n
                else:
                    unit_rows.append((name, uid, usrc, found["unit"], found["factor"]))
            if skipped:
                self.unit_notes[name] = "rows skipped for unknown units: " + ", ".join(
                    f"{u!r} ({n})" for u, n in sorted(skipped.items()))
        frame = pd.DataFrame(unit_rows, columns=["col", "unit_concept_id", "unit_source_value", "unit", "factor"])
        frame = frame.astype({"unit_concept_id": "Int64", "factor": "float64", "unit_source_value": "object"})
        self.con.register("_omop_units_frame", frame)
        self.sql("CREATE TEMP TABLE _omop_units AS SELECT * FROM _omop_units_frame")
        self.con.unregister("_omop_units_frame")
        dec = self.decimals
        conv = f"CAST(round(CAST({{x}} AS DECIMAL(38, 12)) * CAST(u.factor AS DECIMAL(38, 12)), {dec}) AS DOUBLE)"
        cases = []
        for name, spec in labs.items():
            cases.append(f"WHEN h.set_name IN ({self._in(spec['sets'])}) AND u.col = {_lit(name)} THEN TRUE")
        self.sql(f"""CREATE TEMP TABLE _omop_labs AS SELECT u.col, u.unit, h.person_id, h.index_date, h.start_date,
            h.sort_ts, h.event_id, h.concept_id, {conv.format(x='h.value_as_number')} AS value,
            CASE WHEN h.range_high > 0 THEN {conv.format(x='h.range_high')} END AS uln
            FROM _omop_hits h JOIN _omop_units u ON u.unit_concept_id IS NOT DISTINCT FROM h.unit_concept_id
                AND u.unit_source_value IS NOT DISTINCT FROM h.unit_source_value
            WHERE h.value_as_number IS NOT NULL AND CASE {' '.join(cases) or 'WHEN FALSE THEN TRUE'} ELSE FALSE END""")
        # drop values outside the dictionary's plausible range (counted in the report)
        self.implausible = {}
        for name in labs:
            col = schema.BY_NAME.get({"_bsa_weight": "weight_kg", "lvef_drop_on_anti_her2_pct": "lvef_pct",
                                      "lvef_nadir_on_anti_her2_pct": "lvef_pct"}.get(name, name))
            if col is None:
                continue
            bad = self._range_sql(col, "value")
            if bad:
                n = self.fetch(f"SELECT count(*) FROM _omop_labs WHERE col = ? AND ({bad})", [name])[0][0]
                if n:
                    self.implausible[name] = n
                    self.sql(f"DELETE FROM _omop_labs WHERE col = ? AND ({bad})", [name])

    @staticmethod
    def _range_sql(col: schema.Column, value: str) -> str:
        parts = []
        if col.low is not None:
            parts.append(f"{value} {'<=' if col.low_open else '<'} {col.low!r}")
        if col.high is not None:
            parts.append(f"{value} > {col.high!r}")
        return " OR ".join(parts)

    def _unit_label(self, uid, usrc) -> str:
        if uid and int(uid) in self.concepts:
            return self.concepts[int(uid)]["code"]
        return str(usrc) if usrc is not None else ""

    def _unit(self, uid, usrc, table: list[dict]) -> dict | None:
        uid = int(uid) if uid is not None and not pd.isna(uid) else 0
        if uid:
            for u in table:
                if uid in u["ids"]:
                    return u
            info = self.concepts.get(uid)
            if info:
                for label in (info["code"], info["name"]):
                    norm = normalise_unit(label)
                    for u in table:
                        if norm in u["aliases"]:
                            return u
        norm = normalise_unit(usrc)
        if norm:
            for u in table:
                if norm in u["aliases"]:
                    return u
            return None
        if not uid:
            for u in table:
                if u["missing_unit"]:
                    return u
        return None

    def _latest_lab(self, name: str, lookback) -> str:
        window = "" if lookback is None else f"AND start_date >= index_date - INTERVAL {int(lookback)} DAY"
        return f"""SELECT person_id, value, uln, concept_id, unit FROM (SELECT *, row_number() OVER (
            PARTITION BY person_id ORDER BY start_date DESC, sort_ts DESC NULLS LAST, event_id DESC NULLS LAST,
            value DESC) AS rn FROM _omop_labs WHERE col = {_lit(name)} {window}) WHERE rn = 1"""

    # -------------------------------------------------------------- columns: kinds
    def _col_lab(self, name: str, spec: dict) -> None:
        lookback = spec.get("lookback_days", self.lookback) if "lookback_days" in spec else self.lookback
        note = [f"latest value within {lookback} days" if lookback is not None else "latest value ever"]
        if name in self.implausible:
            note.append(f"{self.implausible[name]} implausible values dropped")
        if name in self.unit_notes:
            note.append(self.unit_notes[name])
        src = "MEASUREMENT " + ", ".join(spec["sets"])
        self._store(name, self._latest_lab(name, lookback), None, src, "; ".join(note))
        if spec.get("uln"):
            self._store(spec["uln"], f"SELECT person_id, uln AS value, concept_id, unit FROM {q('_omop_c_' + name)}",
                        None, f"MEASUREMENT range_high of {name}",
                        "the lab's reference range upper limit; NULL when not recorded (default ULN applies)")

    def _col_lab_category(self, name: str, spec: dict) -> None:
        values = spec.get("values") or {}
        num = spec.get("numeric")
        pairs = self.fetch(f"""SELECT DISTINCT value_as_concept_id, value_text FROM _omop_hits
            WHERE set_name IN ({self._in(spec['sets'])})""")
        rows = []
        for vid, text in pairs:
            hit = None
            vname = self.concepts.get(int(vid), {}).get("name", "").strip().lower() if vid else ""
            t = str(text).strip().lower() if text is not None else ""
            for value, rule in values.items():
                ids = {int(i) for i in (rule or {}).get("ids") or []}
                texts = {str(w).strip().lower() for w in (rule or {}).get("text") or []}
                if (vid and int(vid) in ids) or (vname and vname in texts) or (t and t in texts):
                    hit = str(value)
                    break
            if hit is not None:
                rows.append((vid, text, hit))
        frame = pd.DataFrame(rows, columns=["value_as_concept_id", "value_text", "value"]).astype(
            {"value_as_concept_id": "Int64", "value_text": "object", "value": "object"})
        vt = f"_omop_v_{name}"
        self.con.register(vt + "_frame", frame)
        self.sql(f"CREATE TEMP TABLE {q(vt)} AS SELECT * FROM {q(vt + '_frame')}")
        self.con.unregister(vt + "_frame")
        numeric = "NULL"
        if num:
            numeric = (f"CASE WHEN h.value_as_number = round(h.value_as_number) AND h.value_as_number BETWEEN "
                       f"{float(num['min'])} AND {float(num['max'])} THEN CAST(CAST(h.value_as_number AS BIGINT) "
                       f"AS VARCHAR) END")
        lookback = spec.get("lookback_days", self.lookback) if "lookback_days" in spec else self.lookback
        window = "" if lookback is None else f"AND h.start_date >= h.index_date - INTERVAL {int(lookback)} DAY"
        sql = f"""SELECT person_id, value, concept_id FROM (SELECT h.person_id, h.concept_id,
            COALESCE({numeric}, v.value) AS value, row_number() OVER (PARTITION BY h.person_id
                ORDER BY h.start_date DESC, h.sort_ts DESC NULLS LAST, h.event_id DESC NULLS LAST) AS rn
            FROM _omop_hits h LEFT JOIN {q(vt)} v ON v.value_as_concept_id IS NOT DISTINCT FROM h.value_as_concept_id
                AND v.value_text IS NOT DISTINCT FROM h.value_text
            WHERE h.set_name IN ({self._in(spec['sets'])}) {window} AND COALESCE({numeric}, v.value) IS NOT NULL)
            WHERE rn = 1"""
        when = "latest result ever" if lookback is None else f"latest result within {lookback} days"
        self._store(name, sql, None, "MEASUREMENT " + ", ".join(spec["sets"]), f"{when}; NULL when not tested")

    def _event_filter(self, spec: dict, alias: str = "h") -> str:
        parts = []
        if spec.get("window_days") is not None:
            parts.append(f"{alias}.start_date >= {alias}.index_date - INTERVAL {int(spec['window_days'])} DAY")
        if spec.get("ongoing"):
            parts.append(f"({alias}.end_date IS NULL OR {alias}.end_date >= {alias}.index_date)")
        return " AND ".join(parts) or "TRUE"

    def _col_condition_flag(self, name: str, spec: dict) -> None:
        f = self._event_filter(spec)
        unknown = spec.get("unknown_sets") or []
        sql = f"""SELECT person_id, CASE WHEN bool_or(present) THEN TRUE END AS value,
            min(CASE WHEN present THEN concept_id END) AS concept_id FROM (
            SELECT h.person_id, h.concept_id, h.set_name IN ({self._in(spec['sets'])}) AS present FROM _omop_hits h
            WHERE h.set_name IN ({self._in(list(spec['sets']) + list(unknown))}) AND {f}) GROUP BY person_id"""
        when = []
        if spec.get("window_days") is not None:
            when.append(f"within {spec['window_days']} days")
        if spec.get("ongoing"):
            when.append("not ended before the index date")
        absent = self.absent(spec, "condition_flag")
        note = f"true when on record{' ' + ', '.join(when) if when else ''}"
        if unknown:
            note += f"; NULL when only {', '.join(unknown)} is on record"
        note += f"; {_fmt(absent)} when none on record"
        self._store(name, sql, absent, "CONDITION_OCCURRENCE " + ", ".join(spec["sets"]), note)

    def _col_condition_days(self, name: str, spec: dict, table: str = "CONDITION_OCCURRENCE") -> None:
        date = "h.start_date" if table == "CONDITION_OCCURRENCE" else \
            "LEAST(COALESCE(h.end_date, h.start_date), h.index_date)"
        sql = f"""SELECT person_id, value, concept_id FROM (SELECT h.person_id,
            CAST(date_diff('day', {date}, h.index_date) AS INTEGER) AS value, h.concept_id,
            row_number() OVER (PARTITION BY h.person_id ORDER BY {date} DESC, h.concept_id) AS rn
            FROM _omop_hits h WHERE h.set_name IN ({self._in(spec['sets'])}) AND {self._event_filter(spec)})
            WHERE rn = 1"""
        self._store(name, sql, None, f"{table} " + ", ".join(spec["sets"]),
                    "days since the latest record; NULL when none on record")

    def _col_procedure_days(self, name: str, spec: dict) -> None:
        self._col_condition_days(name, spec, "PROCEDURE_OCCURRENCE")

    def _col_condition_category(self, name: str, spec: dict) -> None:
        values = [(str(v), s) for v, s in spec.get("values") or []]
        unknown = spec.get("unknown_sets") or []
        prio = " ".join(f"WHEN {_lit(s)} THEN {i}" for i, (_, s) in enumerate(values))
        value_of = " ".join(f"WHEN {_lit(s)} THEN {_lit(v)}" for v, s in values)
        order = ("value IS NULL, start_date DESC, prio" if spec.get("pick") == "latest" else
                 "prio, start_date DESC")
        sets = [s for _, s in values] + list(unknown)
        sql = f"""SELECT person_id, value, concept_id FROM (SELECT *, row_number() OVER (
            PARTITION BY person_id ORDER BY {order}, concept_id) AS rn FROM (
            SELECT h.person_id, h.start_date, h.concept_id,
                CASE h.set_name {value_of or "WHEN NULL THEN NULL"} END AS value,
                CASE h.set_name {prio or "WHEN NULL THEN NULL"} ELSE 1000000 END AS prio
            FROM _omop_hits h WHERE h.set_name IN ({self._in(sets)}) AND {self._event_filter(spec)})) WHERE rn = 1"""
        absent = self.absent(spec, "condition_category")
        note = ", ".join(f"{v} <- {s}" for v, s in values)
        if unknown:
            note += ("; " if note else "") + f"NULL when only {', '.join(unknown)} is on record"
        note += f"; {_fmt(absent)} when none on record"
        self._store(name, sql, absent, "CONDITION_OCCURRENCE " + ", ".join(sets), note)

    def _col_drug_days(self, name: str, spec: dict) -> None:
        groups = self._groups(spec)
        sql = f"""SELECT person_id, value, concept_id FROM (SELECT person_id,
            CAST(date_diff('day', last_date, index_date) AS INTEGER) AS value, drug_concept_id AS concept_id,
            row_number() OVER (PARTITION BY person_id ORDER BY last_date DESC, drug_concept_id) AS rn
            FROM _omop_drugs WHERE grp IN ({self._in(groups)})) WHERE rn = 1"""
        self._store(name, sql, None, "DRUG_EXPOSURE " + ", ".join(groups),
                    "days since the last exposure day (end date, or start date) up to the index date; "
                    "NULL when none on record")

    def _line1(self) -> str:
        if not hasattr(self, "_line1_done"):
            onco = self._in(self.doc.get("antineoplastic_groups") or [])
            anchor = self._in(self.defaults.get("line_anchor_sets") or ["stomach_cancer", "gej_cancer"])
            days = int(self.defaults.get("line_anchor_days", 30))
            window = int(self.defaults.get("regimen_window_days", 28))
            self.sql(f"""CREATE TEMP TABLE _omop_line AS
                WITH anc AS (SELECT person_id, min(start_date) AS dx FROM _omop_hits WHERE set_name IN ({anchor})
                             GROUP BY 1),
                onco AS (SELECT * FROM _omop_drugs WHERE grp IN ({onco})),
                st AS (SELECT o.person_id, min(o.start_date) AS line_start FROM onco o LEFT JOIN anc a USING (person_id)
                       WHERE a.dx IS NULL OR o.start_date >= a.dx - INTERVAL {days} DAY GROUP BY 1)
                SELECT o.*, st.line_start FROM onco o JOIN st USING (person_id)
                WHERE o.start_date BETWEEN st.line_start AND st.line_start + INTERVAL {window} DAY""")
            self.sql(f"CREATE TEMP TABLE _omop_onco AS SELECT DISTINCT person_id FROM _omop_drugs WHERE grp IN ({onco})")
            self._line1_done = True
        return "_omop_line"

    def _col_first_line(self, name: str, spec: dict) -> None:
        line = self._line1()
        groups = self._groups(spec)
        sql = f"""SELECT person_id, bool_or(grp IN ({self._in(groups)})) AS value,
            min(CASE WHEN grp IN ({self._in(groups)}) THEN drug_concept_id END) AS concept_id
            FROM {line} GROUP BY person_id"""
        window = int(self.defaults.get("regimen_window_days", 28))
        absent = self.absent(spec, "first_line")
        self._store(name, sql, absent, "DRUG_EXPOSURE " + ", ".join(groups),
                    f"line 1 = anti-tumour drugs started within {window} days of the first one (on or after the "
                    f"first gastric/GEJ cancer record); {_fmt(absent)} when no anti-tumour drug is on record")

    def _col_lines(self, name: str, spec: dict) -> None:
        self._line1()
        absent = self.absent(spec, "lines")
        self._store(name, "SELECT person_id, CAST(NULL AS INTEGER) AS value, NULL::BIGINT AS concept_id "
                          "FROM _omop_onco", absent, "DRUG_EXPOSURE antineoplastic",
                    f"{_fmt(absent)} when no anti-tumour drug is on record; NULL (unknown) otherwise: "
                    f"lines for advanced disease cannot be counted reliably from exposures")

    def _col_progressed(self, name: str, spec: dict) -> None:
        self._line1()
        absent = self.absent(spec, "progressed")
        self._store(name, "SELECT person_id, CAST(NULL AS BOOLEAN) AS value, NULL::BIGINT AS concept_id "
                          "FROM _omop_onco", absent, "DRUG_EXPOSURE antineoplastic",
                    f"{_fmt(absent)} when no anti-tumour drug is on record; NULL (unknown) otherwise: "
                    f"progression is not recorded in OMOP CDM")

    def _col_half_life(self, name: str, spec: dict) -> None:
        groups = self._groups(spec)
        sql = f"""WITH d AS (SELECT * FROM _omop_drugs WHERE grp IN ({self._in(groups)})),
            last AS (SELECT person_id, max(last_date) AS last_date FROM d GROUP BY 1)
            SELECT d.person_id, CASE WHEN bool_and(d.half_life IS NOT NULL) THEN max(d.half_life) END AS value,
                min(d.drug_concept_id) AS concept_id
            FROM d JOIN last USING (person_id, last_date) GROUP BY d.person_id"""
        self._store(name, sql, None, "DRUG_EXPOSURE " + ", ".join(groups) + " (half-lives from the concepts file)",
                    "longest half-life of the drugs given on the last exposure day; NULL when any of them has "
                    "no half-life in the concepts file (washout 28 days)")

    def _bsa(self) -> str:
        if not hasattr(self, "_bsa_done"):
            self.sql(f"""CREATE TEMP TABLE _omop_bsa AS SELECT w.person_id,
                sqrt(h.value * w.value / 3600.0) AS bsa FROM ({self._latest_lab('_bsa_weight', None)}) w
                JOIN ({self._latest_lab('_bsa_height', None)}) h USING (person_id)""")
            self._bsa_done = True
        return "_omop_bsa"

    def _mg_sql(self) -> str:
        """SQL for the mg in one exposure row `d` (DRUG_STRENGTH `s`), NULL when unknown."""
        return f"""CASE WHEN d.quantity IS NULL OR d.quantity <= 0 THEN NULL
            WHEN lower(trim(d.dose_unit_source_value)) IN ('mg', 'milligram', 'milligrams') THEN d.quantity
            WHEN s.amount_value IS NOT NULL THEN d.quantity * s.amount_value *
                CASE s.amount_unit_concept_id WHEN {MG} THEN 1 WHEN {UG} THEN 0.001 WHEN {GRAM} THEN 1000 END
            WHEN s.numerator_value IS NOT NULL THEN d.quantity * s.numerator_value *
                CASE s.numerator_unit_concept_id WHEN {MG} THEN 1 WHEN {UG} THEN 0.001 WHEN {GRAM} THEN 1000 END
            END"""

    def _strength(self) -> str:
        if not hasattr(self, "_strength_done"):
            t, c = "drug_strength", self.src.col
            if self.src.has(t):
                self.sql(f"""CREATE TEMP TABLE _omop_strength AS SELECT * FROM (SELECT
                    {c(t, 'drug_concept_id', 'BIGINT')}, {c(t, 'ingredient_concept_id', 'BIGINT')},
                    {c(t, 'amount_value', 'DOUBLE')}, {c(t, 'amount_unit_concept_id', 'BIGINT')},
                    {c(t, 'numerator_value', 'DOUBLE')}, {c(t, 'numerator_unit_concept_id', 'BIGINT')}
                    FROM {self.src.views[t]}) WHERE drug_concept_id IN (SELECT drug_concept_id FROM _omop_dm)""")
            else:
                self.sql("CREATE TEMP TABLE _omop_strength AS SELECT NULL::BIGINT AS drug_concept_id, NULL::BIGINT "
                         "AS ingredient_concept_id, NULL::DOUBLE AS amount_value, NULL::BIGINT AS "
                         "amount_unit_concept_id, NULL::DOUBLE AS numerator_value, NULL::BIGINT AS "
                         "numerator_unit_concept_id WHERE FALSE")
            self._strength_done = True
        return "_omop_strength"

    def _uncomputable(self, name: str, sql: str, what: str) -> None:
        rows = self.fetch(f"SELECT DISTINCT person_id FROM ({sql}) ORDER BY 1")
        if rows:
            ids = ", ".join(str(r[0]) for r in rows[:10]) + (" ..." if len(rows) > 10 else "")
            self.report.warnings.append(
                f"{name}: {len(rows)} patients have {what} whose dose cannot be computed (no quantity, "
                f"dose unit, DRUG_STRENGTH or body surface area); their value counts only the known doses and "
                f"is NULL (= none) when no dose is known: {ids}")

    def _col_dose_cumulative(self, name: str, spec: dict) -> None:
        groups = self._groups(spec)
        bsa, strength = self._bsa(), self._strength()
        unit = "lower(replace(trim(d.dose_unit_source_value), ' ', ''))"
        per = f"""CASE WHEN d.quantity > 0 AND {unit} IN ('mg/m2', 'mg/m^2', 'mg/m**2', 'mg/m²') THEN d.quantity
            ELSE ({self._mg_sql()}) / b.bsa END * d.factor"""
        base = f"""SELECT d.person_id, d.drug_concept_id, {per} AS dose FROM _omop_drugs d
            LEFT JOIN {strength} s ON s.drug_concept_id = d.drug_concept_id
                AND (s.ingredient_concept_id = d.ingredient_concept_id OR d.ingredient_concept_id IS NULL
                     AND s.drug_concept_id IN (SELECT drug_concept_id FROM {strength} GROUP BY 1 HAVING count(*) = 1))
            LEFT JOIN {bsa} b USING (person_id) WHERE d.grp IN ({self._in(groups)})"""
        self._uncomputable(name, f"SELECT * FROM ({base}) WHERE dose IS NULL", "an anthracycline exposure")
        dec = self.decimals
        sql = f"""SELECT person_id, CASE WHEN count(dose) > 0 THEN round(sum(dose), {dec}) END AS value,
            min(drug_concept_id) AS concept_id FROM ({base}) GROUP BY person_id HAVING count(dose) > 0"""
        self._store(name, sql, None, "DRUG_EXPOSURE " + ", ".join(groups),
                    "cumulative dose x equivalence factor; mg / body surface area (Mosteller, latest height and "
                    "weight); NULL when none on record")

    def _col_dose_daily(self, name: str, spec: dict) -> None:
        groups = self._groups(spec)
        window = int(spec.get("window_days", 14))
        strength = self._strength()
        local = [_like_to_regex(p) for p in self.doc.get("local_corticosteroid") or []]
        local_ids = []
        route_ids = {int(r[0]) for r in self.fetch("SELECT DISTINCT route_concept_id FROM _omop_drugs "
                                                   "WHERE route_concept_id IS NOT NULL AND route_concept_id <> 0")}
        for rid in route_ids:
            rname = self.concepts.get(rid, {}).get("name", "").lower()
            if rname and any(p.match(rname) for p in local):
                local_ids.append(rid)
        local_drugs = [did for did in self.used_drugs
                       if any(p.match(self.concepts.get(did, {}).get("name", "").lower()) for p in local)]
        unit = "lower(replace(trim(d.dose_unit_source_value), ' ', ''))"
        days = ("COALESCE(NULLIF(d.days_supply, 0), date_diff('day', d.start_date, d.end_date) + 1, 1)")
        daily = f"""CASE WHEN d.quantity > 0 AND {unit} IN ('mg/d', 'mg/day', 'mg/24h') THEN d.quantity
            ELSE ({self._mg_sql()}) / {days} END * d.factor"""
        end = "COALESCE(d.end_date, d.start_date + CAST(GREATEST(COALESCE(d.days_supply, 1), 1) - 1 AS INTEGER))"
        systemic = (f"(d.route_concept_id IS NULL OR d.route_concept_id NOT IN ({', '.join(map(str, local_ids)) or -1}))"
                    f" AND (d.route_concept_id IS NOT NULL AND d.route_concept_id <> 0 OR d.drug_concept_id NOT IN "
                    f"({', '.join(map(str, local_drugs)) or -1}))")
        base = f"""SELECT d.person_id, d.drug_concept_id, {daily} AS dose FROM _omop_drugs d
            LEFT JOIN {strength} s ON s.drug_concept_id = d.drug_concept_id
                AND (s.ingredient_concept_id = d.ingredient_concept_id OR d.ingredient_concept_id IS NULL
                     AND s.drug_concept_id IN (SELECT drug_concept_id FROM {strength} GROUP BY 1 HAVING count(*) = 1))
            WHERE d.grp IN ({self._in(groups)}) AND {systemic}
                AND {end} >= d.index_date - INTERVAL {window} DAY"""
        self._uncomputable(name, f"SELECT * FROM ({base}) WHERE dose IS NULL", "a systemic corticosteroid exposure")
        sql = f"""SELECT person_id, round(max(dose), {self.decimals}) AS value, min(drug_concept_id) AS concept_id
            FROM ({base}) WHERE dose IS NOT NULL GROUP BY person_id"""
        self._store(name, sql, None, "DRUG_EXPOSURE " + ", ".join(groups),
                    f"highest daily prednisone-equivalent dose of systemic exposures overlapping the {window} days "
                    f"before the index date (local and inhaled forms excluded); NULL when none on record")

    def _lvef(self, spec: dict) -> str:
        if not hasattr(self, "_lvef_done"):
            groups = self._in(self._groups(spec))
            self.sql(f"""CREATE TEMP TABLE _omop_lvef AS
                WITH her2 AS (SELECT person_id, min(start_date) AS first_dose FROM _omop_drugs WHERE grp IN ({groups})
                              GROUP BY 1),
                lv AS (SELECT l.person_id, l.start_date, l.value, l.concept_id FROM _omop_labs l
                       WHERE l.col = 'lvef_drop_on_anti_her2_pct'),
                base AS (SELECT person_id, arg_max(lv.value, lv.start_date) AS baseline FROM lv JOIN her2 USING (person_id)
                         WHERE lv.start_date <= her2.first_dose GROUP BY 1),
                post AS (SELECT person_id, min(lv.value) AS nadir, min(lv.concept_id) AS concept_id FROM lv
                         JOIN her2 USING (person_id) WHERE lv.start_date > her2.first_dose GROUP BY 1)
                SELECT her2.person_id, base.baseline, post.nadir, base.baseline - post.nadir AS drop,
                    post.concept_id FROM her2 LEFT JOIN base USING (person_id) LEFT JOIN post USING (person_id)""")
            self._lvef_done = True
        return "_omop_lvef"

    def _col_lvef_drop(self, name: str, spec: dict) -> None:
        t = self._lvef(spec)
        absent = self.absent(spec, "lvef_drop")
        self._store(name, f"SELECT person_id, round(drop, {self.decimals}) AS value, concept_id FROM {t}", absent,
                    "MEASUREMENT lvef, DRUG_EXPOSURE " + ", ".join(self._groups(spec)),
                    f"last LVEF up to the first anti-HER2 dose minus the lowest LVEF after it; {_fmt(absent)} when no "
                    f"anti-HER2 drug is on record; NULL when either LVEF is missing")

    def _col_lvef_nadir(self, name: str, spec: dict) -> None:
        t = self._lvef(spec)
        self._store(name, f"SELECT person_id, nadir AS value, concept_id FROM {t}", None,
                    "MEASUREMENT lvef, DRUG_EXPOSURE " + ", ".join(self._groups(spec)),
                    "lowest LVEF after the first anti-HER2 dose; NULL when none")

    def _col_radiotherapy_toxicity(self, name: str, spec: dict) -> None:
        rt = self._in(spec.get("procedure_sets") or ["radiotherapy"])
        inj = self._in(spec.get("sets") or ["radiation_injury"])
        sql = f"""SELECT person_id, CASE WHEN bool_or(injury) THEN TRUE END AS value,
            min(CASE WHEN injury THEN concept_id END) AS concept_id FROM (
            SELECT h.person_id, h.concept_id, h.set_name IN ({inj}) AS injury FROM _omop_hits h
            WHERE h.set_name IN ({rt}) OR (h.set_name IN ({inj}) AND (h.end_date IS NULL OR h.end_date >= h.index_date)))
            GROUP BY person_id"""
        absent = self.absent(spec, "radiotherapy_toxicity")
        self._store(name, sql, absent, "PROCEDURE_OCCURRENCE radiotherapy, CONDITION_OCCURRENCE radiation_injury",
                    f"true when a radiation injury is on record and not ended; NULL after radiotherapy without one; "
                    f"{_fmt(absent)} when no radiotherapy is on record")

    # -------------------------------------------------------------- assemble and report
    def _assemble(self) -> pd.DataFrame:
        """One row per person: the per-column value tables pivoted in one GROUP BY (no 60-way join)."""
        slot = {schema.NUMBER: "d", schema.INTEGER: "n", schema.FLAG: "b"}
        typed = {"d": "DOUBLE", "n": "BIGINT", "b": "BOOLEAN", "t": "VARCHAR"}
        parts, aggs, select = [], [], [
            "i.person_id AS patient_id", "i.care_site_id AS site_id", "i.country AS country",
            "i.index_date AS screening_date",
            "CAST(date_sub('year', i.birth, i.index_date) AS DOUBLE) AS age_years", "i.sex AS sex"]
        for k, col in enumerate(schema.COLUMNS):
            info = self.columns.get(col.name)
            if col.name in BUILTIN or info is None:
                continue
            s = slot.get(col.kind, "t")
            values = ", ".join(f"TRY_CAST(value AS {typed[x]})" if x == s else f"NULL::{typed[x]}" for x in "dnbt")
            parts.append(f"SELECT person_id, {k} AS k, {values} FROM {q(info['table'])}")
            aggs.append(f"bool_or(k = {k}) AS h{k}, any_value({s}) FILTER (WHERE k = {k}) AS v{k}")
            absent = info["absent"]
            value = f"CAST(w.v{k} AS {col.sql_type})"
            if absent is None:
                expr = value
            else:
                lit = _lit(absent) if isinstance(absent, str) else str(absent).upper() \
                    if isinstance(absent, bool) else repr(absent)
                expr = f"CASE WHEN w.h{k} THEN {value} ELSE CAST({lit} AS {col.sql_type}) END"
            select.append(f"{expr} AS {q(col.name)}")
        long = " UNION ALL ".join(parts) or ("SELECT NULL::VARCHAR AS person_id, 0 AS k, NULL::DOUBLE AS d, "
                                             "NULL::BIGINT AS n, NULL::BOOLEAN AS b, NULL::VARCHAR AS t WHERE FALSE")
        self.sql("CREATE TEMP TABLE _omop_long (person_id VARCHAR, k INTEGER, d DOUBLE, n BIGINT, b BOOLEAN, "
                 "t VARCHAR)")
        self.sql(f"INSERT INTO _omop_long {long}")
        self.sql(f"CREATE TEMP TABLE _omop_wide AS SELECT person_id, {', '.join(aggs) or 'NULL AS h'} "
                 f"FROM _omop_long GROUP BY person_id")
        sql = (f"SELECT {', '.join(select)} FROM _omop_idx i LEFT JOIN _omop_wide w USING (person_id) "
               f"ORDER BY TRY_CAST(i.person_id AS BIGINT) NULLS LAST, i.person_id")
        frame = self.con.execute(sql).df()
        for col in schema.COLUMNS:
            if col.name not in frame.columns:
                continue
            if col.kind == schema.INTEGER:
                frame[col.name] = frame[col.name].astype("Int64")
            elif col.kind == schema.FLAG:
                frame[col.name] = frame[col.name].astype("boolean")
            elif col.kind in (schema.ID, schema.TEXT, schema.CATEGORY):
                frame[col.name] = frame[col.name].astype(object).where(frame[col.name].notna(), None)
            elif col.kind == schema.DATE:
                frame[col.name] = pd.to_datetime(frame[col.name]).dt.date
        return frame

    def _report(self, frame: pd.DataFrame) -> None:
        r = self.report
        r.n_persons = len(frame)
        evidence = {}
        names = {cid: info["name"] for cid, info in self.concepts.items()}
        for spec in self.doc["concept_sets"].values():
            for cid, nm in (spec.get("ids") or {}).items() if isinstance(spec.get("ids"), dict) else []:
                names.setdefault(int(cid), str(nm))
        for column, info in self.columns.items():
            rows = self.fetch(f"SELECT concept_id, count(DISTINCT person_id) FROM {q(info['table'])} "
                              f"WHERE value IS NOT NULL AND concept_id IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1")
            evidence[column] = [(int(cid), names.get(int(cid), ""), int(n)) for cid, n in rows]
        units = {}
        for column, info in self.columns.items():
            cols = {d[0] for d in self.con.execute(f"DESCRIBE {q(info['table'])}").fetchall()}
            if "unit" in cols:
                units[column] = dict(self.fetch(f"SELECT unit, count(*) FROM {q(info['table'])} "
                                                f"WHERE value IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1"))
        not_derived = self.doc.get("not_derived") or {}
        builtin_src = {"patient_id": "PERSON.person_id", "site_id": "PERSON.care_site_id",
                       "country": "LOCATION.country_source_value", "screening_date": "index date",
                       "age_years": "PERSON birth date (year/month/day or birth_datetime)",
                       "sex": "PERSON.gender_concept_id (8532 F, 8507 M)"}
        for col in schema.COLUMNS:
            name = col.name
            if name in builtin_src:
                s = frame[name]
                note = "whole years at the index date; month / day missing: 1 July / 15th" if name == "age_years" \
                    else ("each person's last observation (OBSERVATION_PERIOD end, else last record)"
                          if name == "screening_date" and self.fixed is None else "")
                r.columns.append(ColumnReport(name, "index", builtin_src[name], int(s.notna().sum()), note=note))
            elif name in self.columns:
                info = self.columns[name]
                s = frame[name]
                n_true = int((s == True).sum()) if col.kind == schema.FLAG else None  # noqa: E712
                r.columns.append(ColumnReport(name, "derived", info["source"], int(s.notna().sum()), n_true,
                                              evidence.get(name, []), units.get(name, {}), info["note"]))
            else:
                reason = not_derived.get(name, "not derived from OMOP (no entry in the concepts file)")
                r.columns.append(ColumnReport(name, "absent", "", note=str(reason)))


def write_cohort(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write a cohort frame as CSV or Parquet, chosen by the file suffix."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".csv":
        frame.to_csv(out, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(out, index=False)
    else:
        raise ValueError(f"--out {out.name}: unsupported output type {suffix or '(none)'!r}; "
                         f"end the name in .csv or .parquet")
    return out
