"""The CDM tables of a folder, zip (path or bytes) or DuckDB file as read-only DuckDB views."""

from __future__ import annotations

import csv
import gzip
import io
import shutil
import tempfile
import zipfile
from pathlib import Path

import duckdb

from kn026.base.table import q
from kn026.ingest.omop_concepts import _lit

# CDM tables the importer reads (lower case); everything else in the source is ignored.
TABLES = ("person", "observation_period", "death", "measurement", "condition_occurrence",
          "drug_exposure", "procedure_occurrence", "observation",
          "concept", "concept_ancestor", "drug_strength", "location", "cdm_source")


class Source:
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
        file access, so this works on a locked-down connection (kn026.rules.sandbox)."""
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

