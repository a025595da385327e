"""Per-column derivations of the OMOP importer: labs, conditions and procedures.

A mixin of kn026.ingest.omop._Importer: each `_col_<kind>` stores one value table per
dictionary column (`_store`), assembled into the cohort by the importer.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from kn026.base import schema
from kn026.base.table import q
from kn026.ingest.omop_concepts import _fmt, _lit, _numeric_parts, normalise_unit, unit_table

# OMOP operator concepts (MEASUREMENT.operator_concept_id): "<20" is value 20 with operator <.
_LT, _LE, _GT, _GE = 4171756, 4171754, 4172704, 4171755


def at_least(value: str, op: str, limit: float) -> str:
    """SQL: TRUE when the result `value` (with operator `op`) is >= `limit`, FALSE when below,
    NULL when its operator leaves it open ("<1000" against 500). Compared in DECIMAL."""
    v, lim = f"CAST({value} AS DECIMAL(38, 6))", f"CAST({float(limit)!r} AS DECIMAL(38, 6))"
    return (f"(CASE WHEN {value} IS NULL THEN NULL WHEN {op} = {_LT} THEN CASE WHEN {v} <= {lim} THEN FALSE END "
            f"WHEN {op} = {_LE} THEN CASE WHEN {v} < {lim} THEN FALSE END "
            f"WHEN {op} IN ({_GT}, {_GE}) THEN CASE WHEN {v} >= {lim} THEN TRUE END ELSE {v} >= {lim} END)")


class Columns:
    """Value tables of the lab, condition and procedure columns (see the module docstring)."""

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
        for n, s in self.doc["columns"].items():  # numeric results deciding a category or flag
            labs |= {f"{n}.{part}": s[part] for part in _numeric_parts(s)}
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
            h.sort_ts, h.event_id, h.concept_id, h.operator_concept_id AS op,
            {conv.format(x='h.value_as_number')} AS value,
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
        """True for a value the loader would refuse: outside the column's range or its unit guard."""
        parts = []
        if col.low is not None:
            parts.append(f"{value} {'<=' if col.low_open else '<'} {col.low!r}")
        if col.high is not None:
            parts.append(f"{value} > {col.high!r}")
        guard = getattr(col, "guard", None)
        if guard is not None:
            parts.append(f"{value} < {guard.low!r} OR {value} > {guard.high!r}")
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
        return f"""SELECT person_id, value, uln, concept_id, unit, op, start_date, index_date FROM (
            SELECT *, row_number() OVER (
            PARTITION BY person_id ORDER BY start_date DESC, sort_ts DESC NULLS LAST, event_id DESC NULLS LAST,
            value DESC) AS rn FROM _omop_labs WHERE col = {_lit(name)} {window}) WHERE rn = 1"""

    def _window(self, name: str, spec: dict) -> tuple[int | None, bool]:
        """(days, assessed): an assessed column's assessment window (the protocol's, or the
        --lookback-days override); any other column's look-back from the concepts file."""
        days = self.windows.assessment_days(name) if name in schema.ASSESSED else None
        if days is not None:
            return days, True
        if "lookback_days" in spec:
            return spec["lookback_days"], False
        return int(self.defaults.get("lookback_days", 30)), False

    def _stale(self) -> None:
        """stale_columns: per patient, the assessed columns whose only value up to the index date is
        dated before the assessment window (left NULL): a retest would decide them."""
        parts, names = [], []
        for k, col in enumerate(schema.COLUMNS):
            older = self.older.get(col.name)
            if older is None or col.name not in self.columns:
                continue
            names.append(col.name)
            parts.append(f"SELECT person_id, {k} AS k, {_lit(col.name)} AS col FROM ({older}) "
                         f"WHERE person_id NOT IN (SELECT person_id FROM {q(self.columns[col.name]['table'])} "
                         f"WHERE value IS NOT NULL)")
        if not parts:
            self.unsearched["stale_columns"] = ("not searched: MEASUREMENT is missing or empty in this CDM, or "
                                                "the protocol gives no assessment window")
            return
        self._store("stale_columns", f"SELECT person_id, string_agg(col, ',' ORDER BY k) AS value, "
                                     f"NULL::BIGINT AS concept_id FROM ({' UNION ALL '.join(parts)}) GROUP BY 1",
                    None, "MEASUREMENT (dates of the assessed values)",
                    f"assessed columns whose only value is dated before the protocol's assessment window "
                    f"({', '.join(names)}): left NULL; NULL when none is")

    # -------------------------------------------------------------- columns: kinds
    def _col_lab(self, name: str, spec: dict) -> None:
        lookback, assessed = self._window(name, spec)
        note = [f"latest value within {lookback} days" if lookback is not None else "latest value ever"]
        if assessed:
            note[0] = (f"latest value dated 0-{lookback} days before the index date ({self._basis(name)}); "
                       f"an older one only: NULL, listed in stale_columns")
            self.older[name] = f"SELECT DISTINCT person_id FROM _omop_labs WHERE col = {_lit(name)}"
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
        lookback, assessed = self._window(name, spec)
        when = "latest result ever" if lookback is None else f"latest result within {lookback} days"
        if assessed:
            when = (f"latest result dated 0-{lookback} days before the index date ({self._basis(name)}); an "
                    f"older one only: NULL, listed in stale_columns")
            self.older[name] = f"SELECT DISTINCT person_id FROM ({self._category_sql(name, spec, None)})"
        self._store(name, self._category_sql(name, spec, lookback), None, "MEASUREMENT " + ", ".join(spec["sets"]),
                    f"{when}; NULL when not tested")

    def _basis(self, name: str) -> str:
        w = self.windows.window(name)
        return w.basis if w else "the concepts file"

    def _category_sql(self, name: str, spec: dict, lookback) -> str:
        """SQL (person_id, value, concept_id): the latest result of `spec['sets']` that `values` translate."""
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
        self.sql(f"CREATE OR REPLACE TEMP TABLE {q(vt)} AS SELECT * FROM {q(vt + '_frame')}")
        self.con.unregister(vt + "_frame")
        numeric = "NULL"
        if num:
            numeric = (f"CASE WHEN h.value_as_number = round(h.value_as_number) AND h.value_as_number BETWEEN "
                       f"{float(num['min'])} AND {float(num['max'])} THEN CAST(CAST(h.value_as_number AS BIGINT) "
                       f"AS VARCHAR) END")
        window = "" if lookback is None else f"AND h.start_date >= h.index_date - INTERVAL {int(lookback)} DAY"
        sql = f"""SELECT person_id, value, concept_id FROM (SELECT h.person_id, h.concept_id,
            COALESCE({numeric}, v.value) AS value, row_number() OVER (PARTITION BY h.person_id
                ORDER BY h.start_date DESC, h.sort_ts DESC NULLS LAST, h.event_id DESC NULLS LAST) AS rn
            FROM _omop_hits h LEFT JOIN {q(vt)} v ON v.value_as_concept_id IS NOT DISTINCT FROM h.value_as_concept_id
                AND v.value_text IS NOT DISTINCT FROM h.value_text
            WHERE h.set_name IN ({self._in(spec['sets'])}) {window} AND COALESCE({numeric}, v.value) IS NOT NULL)
            WHERE rn = 1"""
        return sql

    def _col_ish(self, name: str, spec: dict) -> None:
        """HER2 ISH: the HER2/CEP17 ratio decides; else the laboratory's interpretation; else the copy number."""
        lookback, _ = self._window(name, spec)
        ratio, copies = spec.get("ratio") or {}, spec.get("copy_number") or {}
        none = "SELECT NULL::VARCHAR AS person_id, NULL::DOUBLE AS value, NULL::BIGINT AS concept_id, " \
               "NULL::BIGINT AS op WHERE FALSE"
        r_sql = self._latest_lab(f"{name}.ratio", lookback) if ratio else none
        c_sql = self._latest_lab(f"{name}.copy_number", lookback) if copies else none
        r_pos = at_least("r.value", "r.op", ratio.get("positive_at", 2.0))
        c_pos = at_least("c.value", "c.op", copies.get("positive_at", 6.0))
        c_mid = at_least("c.value", "c.op", copies.get("negative_below", 4.0))
        sql = f"""WITH r AS ({r_sql}), i AS ({self._category_sql(name, spec, lookback)}), c AS ({c_sql}),
            p AS (SELECT person_id FROM r UNION SELECT person_id FROM i UNION SELECT person_id FROM c)
            SELECT p.person_id,
                CASE WHEN {r_pos} THEN 'positive' WHEN NOT {r_pos} THEN 'negative' WHEN i.value IS NOT NULL THEN i.value
                     WHEN {c_pos} THEN 'positive' WHEN NOT {c_mid} THEN 'negative' END AS value,
                CASE WHEN {r_pos} IS NOT NULL THEN r.concept_id WHEN i.value IS NOT NULL THEN i.concept_id
                     ELSE c.concept_id END AS concept_id
            FROM p LEFT JOIN r USING (person_id) LEFT JOIN i USING (person_id) LEFT JOIN c USING (person_id)"""
        when = "latest result ever" if lookback is None else f"latest result within {lookback} days"
        note = [f"{when} of each: HER2/CEP17 ratio >= {ratio.get('positive_at')} positive, below negative; "
                f"without a ratio the laboratory's interpretation; without both, copy number >= "
                f"{copies.get('positive_at')} positive, < {copies.get('negative_below')} negative, between NULL"]
        note += [self.unit_notes[k] for k in (f"{name}.ratio", f"{name}.copy_number") if k in self.unit_notes]
        sets = list(spec["sets"]) + list(ratio.get("sets") or []) + list(copies.get("sets") or [])
        self._store(name, sql, None, "MEASUREMENT " + ", ".join(sets), "; ".join(note))

    def _event_filter(self, spec: dict, alias: str = "h") -> str:
        parts = []
        if spec.get("window_days") is not None:
            parts.append(f"{alias}.start_date >= {alias}.index_date - INTERVAL {int(spec['window_days'])} DAY")
        if spec.get("ongoing"):
            parts.append(f"({alias}.end_date IS NULL OR {alias}.end_date >= {alias}.index_date)")
        return " AND ".join(parts) or "TRUE"

    def _col_condition_flag(self, name: str, spec: dict) -> None:
        """True when a `sets` record passes the window / ongoing filter; NULL when only `unknown_sets`
        records are on record (filtered too, unless unknown_any_time); a deciding `lab` (the latest
        result within its look-back, >= true_at true, below false) overrides NULL and absence."""
        f = self._event_filter(spec)
        unknown = spec.get("unknown_sets") or []
        uf = "TRUE" if spec.get("unknown_any_time") else f
        present = f"(h.set_name IN ({self._in(spec['sets'])}) AND {f})"
        codes = f"""SELECT person_id, CASE WHEN bool_or(present) THEN TRUE END AS value,
            min(CASE WHEN present THEN concept_id END) AS concept_id FROM (
            SELECT h.person_id, h.concept_id, {present} AS present FROM _omop_hits h
            WHERE {present} OR (h.set_name IN ({self._in(unknown)}) AND {uf})) GROUP BY person_id"""
        when = []
        if spec.get("window_days") is not None:
            when.append(f"within {spec['window_days']} days")
        if spec.get("ongoing"):
            when.append("not ended before the index date")
        absent = self.absent(spec, "condition_flag")
        note = f"true when on record{' ' + ', '.join(when) if when else ''}"
        if unknown:
            note += f"; NULL when only {', '.join(unknown)} is on record" + (" (any time)" if uf == "TRUE" else "")
        sql, source = codes, "CONDITION_OCCURRENCE " + ", ".join(spec["sets"])
        lab = spec.get("lab")
        if lab:
            sql = f"""WITH k AS ({codes}), d AS ({self._deciding_lab(name, lab)})
                SELECT person_id, CASE WHEN k.value THEN TRUE ELSE d.value END AS value,
                    CASE WHEN k.value THEN k.concept_id ELSE d.concept_id END AS concept_id
                FROM k FULL OUTER JOIN d USING (person_id)"""
            source += ", MEASUREMENT " + ", ".join(lab["sets"])
            unit = self.doc["unit_groups"][lab["units"]][0]["unit"]
            note += (f"; the latest {', '.join(lab['sets'])} within {lab.get('lookback_days')} days decides "
                     f"otherwise: >= {lab['true_at']} {unit} true, below (or not detected) false")
            if f"{name}.lab" in self.unit_notes:
                note += f"; {self.unit_notes[name + '.lab']}"
        note += f"; {_fmt(absent)} when none on record"
        self._store(name, sql, absent, source, note)

    def _deciding_lab(self, name: str, lab: dict) -> str:
        """SQL (person_id, value TRUE / FALSE / NULL, concept_id) of the latest result of a deciding lab:
        numeric results in a known unit, and results reported as not detected (below any limit)."""
        lookback = lab.get("lookback_days")
        window = "" if lookback is None else f"AND start_date >= index_date - INTERVAL {int(lookback)} DAY"
        ids = ", ".join(str(int(i)) for i in lab.get("below_ids") or []) or "NULL"
        texts = self._in(str(x).strip().lower() for x in lab.get("below_text") or [])
        return f"""SELECT person_id, {at_least('value', 'op', lab['true_at'])} AS value, concept_id FROM (
            SELECT *, row_number() OVER (PARTITION BY person_id ORDER BY start_date DESC, sort_ts DESC NULLS LAST,
                event_id DESC NULLS LAST, value DESC) AS rn FROM (
                SELECT person_id, index_date, start_date, sort_ts, event_id, concept_id, value, op FROM _omop_labs
                WHERE col = {_lit(name + '.lab')}
                UNION ALL SELECT person_id, index_date, start_date, sort_ts, event_id, concept_id, 0.0, NULL
                FROM _omop_hits WHERE set_name IN ({self._in(lab['sets'])}) AND value_as_number IS NULL
                AND (value_as_concept_id IN ({ids}) OR lower(trim(value_text)) IN ({texts})))
            WHERE TRUE {window}) WHERE rn = 1"""

    def _lookback_sql(self, name: str, date: str, index: str = "index_date") -> tuple[str, str]:
        """(SQL condition on `date` and `index`, report text) of an event column's look-back."""
        days = self.windows.lookback_days(name)
        w = self.windows.window(name)
        if days is None:
            return "TRUE", "searched over the whole record" + (f" ({w.basis})" if w else "")
        return (f"{date} >= {index} - INTERVAL {int(days)} DAY",
                f"searched {days} days back ({w.basis if w else 'the concepts file'})")

    def _col_condition_days(self, name: str, spec: dict, table: str = "CONDITION_OCCURRENCE") -> None:
        date = "h.start_date" if table == "CONDITION_OCCURRENCE" else \
            "LEAST(COALESCE(h.end_date, h.start_date), h.index_date)"
        back, text = self._lookback_sql(name, date, "h.index_date")
        sql = f"""SELECT person_id, value, concept_id FROM (SELECT h.person_id,
            CAST(date_diff('day', {date}, h.index_date) AS INTEGER) AS value, h.concept_id,
            row_number() OVER (PARTITION BY h.person_id ORDER BY {date} DESC, h.concept_id) AS rn
            FROM _omop_hits h WHERE h.set_name IN ({self._in(spec['sets'])}) AND {self._event_filter(spec)}
            AND {back})
            WHERE rn = 1"""
        self._store(name, sql, None, f"{table} " + ", ".join(spec["sets"]),
                    f"days since the latest record, {text}; NULL when none on record")

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

