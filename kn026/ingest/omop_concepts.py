"""The OMOP concepts file (kn026/ingest/concepts/omop_concepts.yaml): loading, checking, units.

The mapping wizard reads the unit tables too (`column_units`, `convert`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pandas as pd
import yaml

from kn026.base import schema

CONCEPTS_PATH = Path(__file__).with_name("concepts") / "omop_concepts.yaml"
EVENT_TABLES = ("condition", "procedure", "observation", "measurement")
KINDS = ("lab", "lab_category", "ish", "condition_flag", "condition_days", "condition_category",
         "procedure_days", "drug_days", "first_line", "lines", "progressed", "half_life",
         "dose_cumulative", "dose_daily", "lvef_drop", "lvef_nadir", "radiotherapy_toxicity")


def load_concepts(path: str | Path | None = None) -> dict:
    """Read and check the concepts file; ValueError names the bad entry and the fix."""
    path = Path(path) if path else CONCEPTS_PATH
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader
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
    defaults = doc["defaults"]
    for key in ("line_anchor_sets", "advanced_disease_sets"):
        for ref in defaults.get(key) or []:
            if ref not in sets:
                raise ValueError(f"{where}: defaults {key} names unknown concept set {ref!r}")
    for key in ("line_groups", "line_join_groups"):
        for ref in defaults.get(key) or []:
            if ref not in groups:
                raise ValueError(f"{where}: defaults {key} names unknown drug group {ref!r}")
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
        for part in _numeric_parts(spec):  # ish ratio / copy number, a condition flag's deciding lab
            sub = spec[part]
            if not isinstance(sub, dict) or not sub.get("sets"):
                raise ValueError(f"{where}: column {name!r} {part} needs sets (concept sets of the result)")
            for ref in sub["sets"]:
                if ref not in sets:
                    raise ValueError(f"{where}: column {name!r} {part} names unknown concept set {ref!r}")
            if sub.get("units") not in units:
                raise ValueError(f"{where}: column {name!r} {part} names unknown unit group {sub.get('units')!r}")
        premed = spec.get("premedication")
        if premed is not None:
            for ref in [] if premed.get("groups") in (None, "antineoplastic") else premed["groups"]:
                if ref not in groups:
                    raise ValueError(f"{where}: column {name!r} premedication names unknown drug group {ref!r}")
            known = {str(i["name"]).lower() for items in groups.values() for i in items}
            for ing in premed.get("ingredients") or []:
                if str(ing).lower() not in known:
                    raise ValueError(f"{where}: column {name!r} premedication ingredient {ing!r} is in no drug group")
        if spec.get("uln") and spec["uln"] not in schema.BY_NAME:
            raise ValueError(f"{where}: column {name!r} uln {spec['uln']!r} is not a dictionary column")
    for name in doc["not_derived"]:
        if name not in schema.BY_NAME:
            raise ValueError(f"{where}: not_derived column {name!r} is not a dictionary column")
    return doc


def _numeric_parts(spec: dict) -> list[str]:
    """The sub-entries of a column spec that are numeric results with units (see the file header)."""
    if spec.get("kind") == "ish":
        return [k for k in ("ratio", "copy_number") if k in spec]
    return ["lab"] if spec.get("kind") == "condition_flag" and "lab" in spec else []


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

