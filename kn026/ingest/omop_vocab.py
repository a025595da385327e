"""Concept sets and drug groups resolved against the concepts that occur in the data.

A mixin of the OMOP importer (kn026.ingest.omop._Importer): it reads `self.con`, `self.src`,
`self.doc` and fills `self.concepts`, `self.sets`, `_omop_hits` and `_omop_drugs`.
"""

from __future__ import annotations

import fnmatch
import re

import pandas as pd

from kn026.ingest.omop_concepts import EVENT_TABLES, _any_like, _like_to_regex, _lit

ICD10_VOCABS = ("ICD10", "ICD10CM", "ICD10CN", "ICD10GM", "CIM10", "KCD7", "ICD10CA")
_ICD_SHAPE = re.compile(r"^[A-Z][0-9][0-9A-Z]{0,5}$")
_LOINC_SHAPE = re.compile(r"^[0-9]{1,7}-[0-9]$")
# ICD-O-3 morphology with behaviour, optionally with a topography: "8490/3", "8490/3-C16.9"
# (OMOP's ICDO3 histology and histology-topography codes), dots and spaces removed.
_ICDO_SHAPE = re.compile(r"^M?([0-9]{4}/[0-9])(?:-(C[0-9]{2,3}))?$")


def icdo_parts(code: str) -> tuple[str, str | None] | None:
    """(morphology with behaviour, topography without dot or None) of an ICD-O-3 code, else None."""
    m = _ICDO_SHAPE.match(str(code).upper().replace(".", "").replace(" ", ""))
    return (m.group(1), m.group(2)) if m else None


class Vocabulary:
    """Concept-set membership of events and drug exposures (see the module docstring)."""

    # -------------------------------------------------------------- vocabulary
    def _vocabulary(self) -> None:
        """Concepts used by the data, their ancestors, and the code / ingredient lookups."""
        self.used = {t: set() for t in EVENT_TABLES}
        self.used_src = {t: set() for t in EVENT_TABLES}
        self.used_vals = {t: set() for t in EVENT_TABLES}
        for tbl, cid, sid, norm in self.fetch(
                "SELECT DISTINCT e.tbl, e.concept_id, e.source_concept_id, "
                "CASE WHEN regexp_matches(e.source_norm, '^[A-Z][0-9][0-9A-Z]{0,5}$') "
                "OR regexp_matches(e.source_norm, '^[0-9]{1,7}-[0-9]$') "
                "OR regexp_matches(e.source_norm, '^M?[0-9]{4}/[0-9](-C[0-9]{2,3})?$') THEN e.source_norm END "
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
        morphs = [str(x).upper() for x in spec.get("icdo3") or []]
        sites = [str(x).upper().replace(".", "") for x in spec.get("icdo3_sites") or []]

        def icdo(code: str) -> tuple[bool, bool]:
            """(included, excluded) for an ICD-O-3 code: morphology (with site) or malignant topography."""
            parts = icdo_parts(code)
            if parts is None:
                return False, False
            morph, topo = parts
            site_ok = topo is None or not sites or any(topo.startswith(s) for s in sites)
            inc = site_ok and any(fnmatch.fnmatchcase(morph, pat) for pat in morphs)
            primary = topo is not None and morph.endswith("/3")
            inc = inc or (primary and any(topo.startswith(p) for p in prefixes))
            return inc, primary and any(topo.startswith(p) for p in exc_prefixes)

        def icdo_concept(cid: int) -> tuple[bool, bool]:
            info = self.concepts.get(cid)
            return icdo(info["code"]) if info and info["vocab"] == "ICDO3" else (False, False)
        m = {"tables": tables, "c_in": {}, "c_out": {}, "s_in": {}, "s_out": {}, "v_in": {}, "v_out": {}}
        for tbl in tables:
            used = self.used.get(tbl, set())
            m["c_in"][tbl] = {c for c in used if matches(c, inc_root, inc_pat) or icdo_concept(c)[0]}
            m["c_out"][tbl] = {c for c in used if matches(c, exc_root, exc_pat) or icdo_concept(c)[1]}
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
                inc, exc = icdo_concept(sid)
                if inc:
                    s_in.add(sid)
                if exc:
                    s_out.add(sid)
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
                else:
                    inc, exc = icdo(val)
                    if inc:
                        v_in.add(val)
                    if exc:
                        v_out.add(val)
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

