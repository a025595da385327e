"""Drug-based columns of the OMOP importer: washouts, line 1, doses, LVEF on anti-HER2.

A mixin of kn026.omop._Importer, like kn026.omop_columns.
"""

from __future__ import annotations

from kn026.omop_concepts import _fmt, _like_to_regex

MG, UG, GRAM = 8576, 9655, 8504  # UCUM unit concept IDs used by DRUG_STRENGTH


class Therapy:
    """Value tables of the drug columns (see the module docstring)."""

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

