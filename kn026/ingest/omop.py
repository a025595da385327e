"""OMOP CDM 5.3 / 5.4 -> screening cohort, in DuckDB SQL.

`import_omop(path, index_date)` reads a folder or zip of CDM tables (CSV or Parquet)
or a DuckDB database file, and describes every person at an index date (one fixed
date, or each person's last observation) as one row of the screening cohort
(cohort-dictionary.md). What each column is made of lives in the data file
`kn026/ingest/concepts/omop_concepts.yaml` (concept sets, drug ingredients, units,
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
   the concepts the values came from. A column whose CDM tables are missing or empty is
   left out (never searched: it must not read as "none on record"), with the reason.

The source is only read. Work tables are temporary and dropped at the end.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable
from pathlib import Path

import duckdb
import pandas as pd

from kn026.base import schema
from kn026.base.table import connect, q
from kn026.core.windows import Windows
from kn026.ingest.omop_columns import Columns
from kn026.ingest.omop_concepts import (  # noqa: F401
    CONCEPTS_PATH,
    EVENT_TABLES,
    KINDS,
    _default_concepts,
    _lit,
    column_units,
    convert,
    load_concepts,
    normalise_unit,
    unit_table,
)
from kn026.ingest.omop_report import ColumnReport, ImportReport
from kn026.ingest.omop_source import TABLES, Source
from kn026.ingest.omop_therapy import Therapy
from kn026.ingest.omop_vocab import Vocabulary

Progress = Callable[[float, str], None] | None

BUILTIN = ("patient_id", "site_id", "country", "screening_date", "age_years", "sex")
DERIVED_EXTRA = ("stale_columns",)  # filled from the other columns, not from a concepts-file entry
# What a patient with no matching record gets, per kind, when the column does not say.
# Record-based kinds (days, doses) are always NULL: the dictionary's "none on record".
_DEFAULT_ABSENT = {"first_line": False, "lines": 0, "progressed": False, "lvef_drop": 0}
_RECORD_BASED = ("condition_days", "procedure_days", "drug_days", "dose_cumulative", "dose_daily")
_DRUG_KINDS = ("drug_days", "first_line", "lines", "progressed", "half_life", "dose_cumulative", "dose_daily",
               "lvef_drop", "lvef_nadir")
_SET_TABLE = {"condition": "condition_occurrence", "procedure": "procedure_occurrence",
              "observation": "observation", "measurement": "measurement"}


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


def _lookback(value) -> int | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        try:
            days = operator.index(value)
        except TypeError:
            days = None
        if days is not None and days >= 0:
            return days
    raise ValueError(f"lookback_days {value!r} must be a whole number of days >= 0")


def import_omop(path: str | Path | bytes, index_date="last", lookback_days: int | None = None,
                con: duckdb.DuckDBPyConnection | None = None, *, concepts: str | Path | dict | None = None,
                closed_world: bool = True, progress: Progress = None,
                name: str | None = None, protocol=None) -> tuple[pd.DataFrame, ImportReport]:
    """Build the screening cohort from an OMOP CDM at `index_date` ("last" or a date).

    `path` is a folder, a zip or a DuckDB file, or the bytes of a zip (an upload, read
    in memory: nothing is extracted to disk; `name` is its file name for messages and
    the report). Assessed columns (labs, vitals, ECG, LVEF, ECOG) are the latest value inside
    the protocol's assessment window (`protocol.windows`, default KN026-001); an older one is
    left NULL and the column listed in `stale_columns`. `lookback_days` replaces every
    assessment window (never the event look-backs, which the protocol derives from its rules).
    `concepts` replaces the concepts file; `closed_world=False` makes a condition or
    drug that is not on record NULL (unknown) instead of false / none / 0. Returns the
    cohort (one row per person, dictionary columns only) and the import report.
    """
    lookback_days = _lookback(lookback_days)
    if protocol is None:
        from kn026.core.criteria import load_protocol

        protocol = load_protocol()
    windows = protocol.windows.with_assessment_days(lookback_days)
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
        src = Source(con, path, name)
    except BaseException:
        if own:
            con.close()
        raise
    try:
        imp = _Importer(con, src, doc, fixed, windows, closed_world, report, step)
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


class _Importer(Vocabulary, Columns, Therapy):
    def __init__(self, con, src: Source, doc: dict, fixed: dt.date | None, windows: Windows,
                 closed_world: bool, report: ImportReport, step: _Stepper):
        self.con, self.src, self.doc = con, src, doc
        self.fixed, self.windows, self.closed_world = fixed, windows, closed_world
        self.report, self.step = report, step
        self.defaults = doc.get("defaults") or {}
        self.decimals = int(self.defaults.get("exact_decimals", 6))
        self.columns: dict[str, dict] = {}  # dictionary column -> {"table": value table, "absent": ...}
        self.older: dict[str, str] = {}  # assessed column -> SQL of the persons with a value at any date
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
        self.unsearched: dict[str, str] = {}
        for i, (name, spec) in enumerate(specs.items()):
            why = self._unsearched(spec)
            if why:  # left out: a column never searched must not read as "none on record" or unknown
                self.unsearched[name] = why
                if spec.get("uln"):
                    self.unsearched[spec["uln"]] = why
            else:
                getattr(self, "_col_" + spec["kind"])(name, spec)
            self.step(0.6 + 0.3 * (i + 1) / len(specs), f"derived {name}")
        self._stale()
        self.step(0.92, "assembling the cohort")
        frame = self._assemble()
        self._report(frame)
        return frame

    def _unsearched(self, spec: dict) -> str | None:
        """Why a column cannot be searched in this CDM (a table it is searched in is missing or
        empty; drugs without a CONCEPT table to recognise them), else None."""
        def filled(table: str) -> bool:
            return self.report.tables.get(table.upper(), 0) > 0

        sets = [*(spec.get("sets") or []), *(spec.get("unknown_sets") or []), *(spec.get("procedure_sets") or [])]
        if spec["kind"] == "condition_category":
            sets += [s for _, s in spec.get("values") or []]
        for s in dict.fromkeys(sets):
            tables = [_SET_TABLE[t] for t in self.doc["concept_sets"][s].get("tables") or ["condition"]]
            if not any(filled(t) for t in tables):
                return (f"not searched: {' and '.join(t.upper() for t in tables)} "
                        f"{'is' if len(tables) == 1 else 'are'} missing or empty in this CDM ({s})")
        if spec["kind"] in _DRUG_KINDS:
            if not filled("drug_exposure"):
                return "not searched: DRUG_EXPOSURE is missing or empty in this CDM"
            if not (self.has_concept or self.has_ancestor):
                return "not searched: without a CONCEPT table drug exposures cannot be told apart by ingredient"
        return None

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
                {c(table, 'unit_source_value', 'VARCHAR')}, {c(table, 'range_high', 'DOUBLE')},
                {c(table, 'operator_concept_id', 'BIGINT')}
                FROM {s.views[table]}""")
            unions.append(f"SELECT *, upper(replace(replace(source_value, '.', ''), ' ', '')) AS source_norm "
                          f"FROM _omop_e_{tbl}")
        if not unions:
            unions.append("SELECT NULL::VARCHAR AS tbl, NULL::VARCHAR AS person_id, NULL::BIGINT AS concept_id, "
                          "NULL::BIGINT AS source_concept_id, NULL::VARCHAR AS source_value, NULL::DATE AS start_date, "
                          "NULL::DATE AS end_date, NULL::TIMESTAMP AS sort_ts, NULL::BIGINT AS event_id, "
                          "NULL::DOUBLE AS value_as_number, NULL::BIGINT AS value_as_concept_id, "
                          "NULL::VARCHAR AS value_text, NULL::BIGINT AS unit_concept_id, "
                          "NULL::VARCHAR AS unit_source_value, NULL::DOUBLE AS range_high, NULL::BIGINT AS operator_concept_id, "
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
                reason = self.unsearched.get(name) or not_derived.get(
                    name, "not derived from OMOP (no entry in the concepts file)")
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
