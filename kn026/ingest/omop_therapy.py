"""Drug-based columns of the OMOP importer: washouts, line 1, doses, LVEF on anti-HER2.

A mixin of kn026.ingest.omop._Importer, like kn026.ingest.omop_columns.
"""

from __future__ import annotations

from kn026.ingest.omop_concepts import _fmt, _like_to_regex

MG, UG, GRAM = 8576, 9655, 8504  # UCUM unit concept IDs used by DRUG_STRENGTH


class Therapy:
    """Value tables of the drug columns (see the module docstring)."""

    def _col_drug_days(self, name: str, spec: dict) -> None:
        groups = self._groups(spec)
        back, text = self._lookback_sql(name, "last_date")
        sql = f"""SELECT person_id, value, concept_id FROM (SELECT person_id,
            CAST(date_diff('day', last_date, index_date) AS INTEGER) AS value, drug_concept_id AS concept_id,
            row_number() OVER (PARTITION BY person_id ORDER BY last_date DESC, drug_concept_id) AS rn
            FROM _omop_drugs WHERE grp IN ({self._in(groups)}) AND {back}) WHERE rn = 1"""
        self._store(name, sql, None, "DRUG_EXPOSURE " + ", ".join(groups),
                    f"days since the last exposure day (end date, or start date) up to the index date, {text}; "
                    "NULL when none on record")

    def _line1(self) -> str:
        """Line 1 of therapy for advanced disease, per person with line drugs (`_omop_line_status`).

        Line 1 starts at the first line drug on or after the first advanced-disease record
        (minus line_anchor_days) that follows the tumour's first record; it holds the drugs
        started within regimen_window_days, plus anti-HER2 drugs added later (up to
        line_join_days, before any new line drug). Drugs before the advanced-disease record
        (perioperative / adjuvant) make no line 1 on their own; when they ended less than
        perioperative_counts_days before it, they may still count as line 1, so a first-line
        flag is known only when both readings agree.
        """
        if not hasattr(self, "_line1_done"):
            d = self.defaults
            lg = self._in(d.get("line_groups") or self.doc.get("antineoplastic_groups") or [])
            jg = self._in(d.get("line_join_groups") or [])
            anchor = self._in(d.get("line_anchor_sets") or ["stomach_cancer", "gej_cancer"])
            adv_sets = self._in(d.get("advanced_disease_sets") or ["metastatic_disease"])
            days = int(d.get("line_anchor_days", 30))
            window = int(d.get("regimen_window_days", 28))
            join = int(d.get("line_join_days", window))
            periop = int(d.get("perioperative_counts_days", 0))
            self.sql(f"""CREATE TEMP TABLE _omop_ld AS SELECT * FROM _omop_drugs WHERE grp IN ({lg})""")
            self.sql(f"""CREATE TEMP TABLE _omop_line_status AS
                WITH dx AS (SELECT person_id, min(start_date) AS dx FROM _omop_hits WHERE set_name IN ({anchor})
                            GROUP BY 1),
                adv AS (SELECT h.person_id, min(h.start_date) AS adv FROM _omop_hits h LEFT JOIN dx USING (person_id)
                        WHERE h.set_name IN ({adv_sets}) AND (dx.dx IS NULL OR h.start_date >= dx.dx - INTERVAL {days} DAY)
                        GROUP BY 1),
                st AS (SELECT l.person_id, min(l.start_date) AS line_start FROM _omop_ld l JOIN adv USING (person_id)
                       WHERE l.start_date >= adv.adv - INTERVAL {days} DAY GROUP BY 1),
                pre AS (SELECT l.person_id, max(l.last_date) AS pre_last FROM _omop_ld l JOIN adv USING (person_id)
                        LEFT JOIN dx USING (person_id) WHERE l.start_date < adv.adv - INTERVAL {days} DAY
                        AND (dx.dx IS NULL OR l.start_date >= dx.dx - INTERVAL {days} DAY) GROUP BY 1)
                SELECT p.person_id, dx.dx, adv.adv, st.line_start,
                    COALESCE({periop} > 0 AND pre.pre_last >= adv.adv - INTERVAL {periop} DAY, FALSE) AS ambiguous
                FROM (SELECT DISTINCT person_id FROM _omop_ld) p LEFT JOIN dx USING (person_id)
                LEFT JOIN adv USING (person_id) LEFT JOIN st USING (person_id) LEFT JOIN pre USING (person_id)""")
            self.sql(f"""CREATE TEMP TABLE _omop_line AS
                WITH core AS (SELECT l.* FROM _omop_ld l JOIN _omop_line_status s USING (person_id)
                              WHERE l.start_date BETWEEN s.line_start AND s.line_start + INTERVAL {window} DAY),
                nxt AS (SELECT l.person_id, min(l.start_date) AS next_start FROM _omop_ld l
                        JOIN _omop_line_status s USING (person_id)
                        WHERE l.start_date > s.line_start + INTERVAL {window} DAY AND l.grp NOT IN ({jg})
                        AND l.ingredient NOT IN (SELECT c.ingredient FROM core c WHERE c.person_id = l.person_id)
                        GROUP BY 1),
                joined AS (SELECT l.* FROM _omop_ld l JOIN _omop_line_status s USING (person_id)
                           LEFT JOIN nxt USING (person_id)
                           WHERE l.grp IN ({jg}) AND l.start_date > s.line_start + INTERVAL {window} DAY
                           AND l.start_date <= s.line_start + INTERVAL {join} DAY
                           AND (nxt.next_start IS NULL OR l.start_date < nxt.next_start))
                SELECT * FROM core UNION ALL SELECT * FROM joined""")
            # the other reading of line 1 (perioperative drugs), and every line drug since the tumour's record
            self.sql(f"""CREATE TEMP TABLE _omop_line_pre AS SELECT l.* FROM _omop_ld l
                JOIN _omop_line_status s USING (person_id)
                WHERE s.adv IS NOT NULL AND l.start_date < s.adv - INTERVAL {days} DAY
                AND (s.dx IS NULL OR l.start_date >= s.dx - INTERVAL {days} DAY)""")
            self.sql(f"""CREATE TEMP TABLE _omop_line_any AS SELECT l.* FROM _omop_ld l
                JOIN _omop_line_status s USING (person_id)
                WHERE s.dx IS NULL OR l.start_date >= s.dx - INTERVAL {days} DAY""")
            self._line1_done = True
        return "_omop_line"

    def _no_line(self) -> str:
        """SQL (over `s`, _omop_line_status): TRUE when the record shows no therapy for advanced disease."""
        return "(s.adv IS NOT NULL AND s.line_start IS NULL AND NOT s.ambiguous)"

    def _col_first_line(self, name: str, spec: dict) -> None:
        self._line1()
        g = self._in(self._groups(spec))
        closed = "FALSE" if self.closed_world else "NULL"

        def agg(table: str) -> str:
            return (f"(SELECT person_id, bool_or(grp IN ({g})) AS v, min(CASE WHEN grp IN ({g}) THEN "
                    f"drug_concept_id END) AS cid FROM {table} GROUP BY 1)")

        sql = f"""SELECT s.person_id,
            CASE WHEN s.line_start IS NOT NULL THEN
                     CASE WHEN NOT s.ambiguous OR l.v = COALESCE(p.v, FALSE) THEN l.v END
                 WHEN {self._no_line()} THEN {closed}
                 WHEN s.adv IS NOT NULL THEN CASE WHEN COALESCE(p.v, FALSE) THEN NULL ELSE {closed} END
                 ELSE CASE WHEN COALESCE(e.v, FALSE) THEN NULL ELSE {closed} END END AS value,
            COALESCE(l.cid, p.cid, e.cid) AS concept_id
            FROM _omop_line_status s LEFT JOIN {agg('_omop_line')} l USING (person_id)
            LEFT JOIN {agg('_omop_line_pre')} p USING (person_id) LEFT JOIN {agg('_omop_line_any')} e USING (person_id)"""
        d = self.defaults
        absent = self.absent(spec, "first_line")
        self._store(name, sql, absent, "DRUG_EXPOSURE " + ", ".join(self._groups(spec)) + ", CONDITION_OCCURRENCE "
                    + ", ".join(d.get("advanced_disease_sets") or []),
                    f"line 1 = line drugs started within {d.get('regimen_window_days', 28)} days of the first one on "
                    f"or after the first advanced-disease record (anti-HER2 added up to {d.get('line_join_days')} "
                    f"days later included); NULL when no advanced-disease record tells line 1 from perioperative "
                    f"therapy and the group was given, or when perioperative therapy that ended less than "
                    f"{d.get('perioperative_counts_days', 0)} days before it disagrees; {_fmt(absent)} when no line "
                    f"drug is on record")

    def _col_lines(self, name: str, spec: dict) -> None:
        self._line1()
        closed = "0" if self.closed_world else "NULL"
        absent = self.absent(spec, "lines")
        self._store(name, f"""SELECT s.person_id, CAST(CASE WHEN {self._no_line()} THEN {closed} END AS INTEGER)
                    AS value, NULL::BIGINT AS concept_id FROM _omop_line_status s""",
                    absent, "DRUG_EXPOSURE line drugs, CONDITION_OCCURRENCE advanced disease",
                    f"{_fmt(absent)} when no line drug is on record, or none after the first advanced-disease "
                    f"record (and no recent perioperative therapy); NULL (unknown) otherwise: lines for advanced "
                    f"disease cannot be counted reliably from exposures")

    def _col_progressed(self, name: str, spec: dict) -> None:
        self._line1()
        closed = "FALSE" if self.closed_world else "NULL"
        absent = self.absent(spec, "progressed")
        self._store(name, f"""SELECT s.person_id, CAST(CASE WHEN {self._no_line()} THEN {closed} END AS BOOLEAN)
                    AS value, NULL::BIGINT AS concept_id FROM _omop_line_status s""",
                    absent, "DRUG_EXPOSURE line drugs",
                    f"{_fmt(absent)} when no line of therapy is on record (as prior_systemic_lines = 0); NULL "
                    f"(unknown) otherwise: progression is not recorded in OMOP CDM")

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
            LEFT JOIN {bsa} b USING (person_id) WHERE d.grp IN ({self._in(groups)})
            AND {self._lookback_sql(name, 'd.last_date', 'd.index_date')[0]}"""
        self._uncomputable(name, f"SELECT * FROM ({base}) WHERE dose IS NULL", "an anthracycline exposure")
        dec = self.decimals
        sql = f"""SELECT person_id, CASE WHEN count(dose) > 0 THEN round(sum(dose), {dec}) END AS value,
            min(drug_concept_id) AS concept_id FROM ({base}) GROUP BY person_id HAVING count(dose) > 0"""
        self._store(name, sql, None, "DRUG_EXPOSURE " + ", ".join(groups),
                    "cumulative dose x equivalence factor; mg / body surface area (Mosteller, latest height and "
                    "weight); NULL when none on record")

    def _col_dose_daily(self, name: str, spec: dict) -> None:
        groups = self._groups(spec)
        declared = self.windows.window(name)  # the protocol's look-back, else the concepts file's
        window = int(declared.days) if declared and declared.days is not None else int(spec.get("window_days", 14))
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
        premed, premed_note = self._premedication(spec, end)
        base = f"""SELECT d.person_id, d.drug_concept_id, {daily} AS dose FROM _omop_drugs d
            LEFT JOIN {strength} s ON s.drug_concept_id = d.drug_concept_id
                AND (s.ingredient_concept_id = d.ingredient_concept_id OR d.ingredient_concept_id IS NULL
                     AND s.drug_concept_id IN (SELECT drug_concept_id FROM {strength} GROUP BY 1 HAVING count(*) = 1))
            WHERE d.grp IN ({self._in(groups)}) AND {systemic}
                AND {end} >= d.index_date - INTERVAL {window} DAY"""
        if premed != "FALSE":
            n = self.fetch(f"SELECT count(*) FROM ({base} AND {premed})")[0][0]
            premed_note += f" ({n} exposures in the window)"
        base += f" AND NOT ({premed})"
        self._uncomputable(name, f"SELECT * FROM ({base}) WHERE dose IS NULL", "a systemic corticosteroid exposure")
        sql = f"""SELECT person_id, round(max(dose), {self.decimals}) AS value, min(drug_concept_id) AS concept_id
            FROM ({base}) WHERE dose IS NOT NULL GROUP BY person_id"""
        self._store(name, sql, None, "DRUG_EXPOSURE " + ", ".join(groups),
                    f"highest daily prednisone-equivalent dose of systemic exposures overlapping the {window} days "
                    f"before the index date (local and inhaled forms excluded){premed_note}; NULL when none on record")

    def _premedication(self, spec: dict, end: str) -> tuple[str, str]:
        """(SQL over exposure `d` true for premedication around an infusion, report note); ("FALSE", "") if none.

        An exposure of a premedication ingredient counts as premedication when it starts no
        earlier than days_before before the start of an exposure of the listed groups (an
        infusion) and ends (`end`) no later than days_after after it.
        """
        pm = spec.get("premedication")
        if not pm:
            return "FALSE", ""
        groups = self._groups(pm)
        ings = [str(i).lower() for i in pm.get("ingredients") or []]
        before, after = int(pm.get("days_before", 1)), int(pm.get("days_after", 3))
        sql = f"""(d.ingredient IN ({self._in(ings)}) AND EXISTS (SELECT 1 FROM _omop_drugs c
            WHERE c.person_id = d.person_id AND c.grp IN ({self._in(groups)})
            AND d.start_date >= c.start_date - INTERVAL {before} DAY
            AND {end} <= c.start_date + INTERVAL {after} DAY))"""
        return sql, (f"; {', '.join(ings)} from {before} day(s) before to {after} day(s) after an anti-tumour "
                     f"infusion is premedication and not counted")

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

