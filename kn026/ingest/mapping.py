"""Column-mapping wizard logic: any CSV / Excel / Parquet table -> the screening cohort.

A `Mapping` says, per dictionary column, which file column feeds it (or a constant),
the unit the file uses (converted to the dictionary unit with the factors of
`kn026/ingest/concepts/omop_concepts.yaml`), how categorical values translate ("Female" -> F,
"IHC 3+" -> 3, "Positive" -> positive), and optional date transforms (an event date
becomes days before the index date, a birth date becomes an age). Each date column is read
with ONE format, the mapping's `date_format` or one its values prove, never guessed per
value (kn026.ingest.date_formats). It is saved as YAML and reused for the next export of the same system.

    mapping = suggest_mapping(frame.columns, sample=frame)   # names, synonyms, units, values
    cohort = apply_mapping(frame, mapping)                   # dictionary columns only
    preview = mapped.preview(frame, mapping)                 # kn026.ingest.mapped: first rows + problems
    Path("site_a.yaml").write_text(mapping.to_yaml())

Header matching and value spellings live in `kn026/ingest/concepts/column_synonyms.yaml`, with
the headers that must never fill a column without the analyst's choice (a machine QTc is
not `qtcf_ms`, an eGFR is not a creatinine clearance): they end in `mapping.held`.
The command line's `import` is kn026.cli.importing. Nothing here imports streamlit.
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from kn026.base import schema
from kn026.ingest import date_formats, omop, units
from kn026.ingest import edits as edits_mod
from kn026.ingest.problems import CohortError, Problem

SYNONYMS_PATH = Path(__file__).with_name("concepts") / "column_synonyms.yaml"
SUGGEST_CUTOFF = 0.78  # similarity below which a header is left unmapped
TRANSFORMS = ("days_since", "age_from_birth_date")
Progress = Callable[[float, str], None] | None


# ----------------------------------------------------------------------------- data


@dataclass
class ColumnMap:
    """How one dictionary column is filled from the file."""

    target: str  # dictionary column
    source: str | None = None  # file column (None: `constant`)
    unit: str | None = None  # the file's unit for a lab (None: already the dictionary unit)
    factor: float | None = None  # explicit conversion factor; overrides `unit`
    values: dict[str, str] = field(default_factory=dict)  # file value -> dictionary value
    constant: str | None = None  # same value for every row (site_id, country, ...)
    transform: str | None = None  # "days_since" or "age_from_birth_date"
    date_format: str | None = None  # strptime format of a date column, e.g. %d/%m/%Y
    score: float = field(default=1.0, compare=False)  # suggestion confidence (1 = exact); not saved

    def to_dict(self) -> dict:
        out: dict = {}
        for key in ("source", "constant", "unit", "factor", "transform", "date_format"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.values:
            out["values"] = dict(self.values)
        return out


@dataclass(frozen=True)
class Held:
    """A header offered for a dictionary column but not mapped without the analyst's explicit choice."""

    header: str  # the file column
    target: str  # the dictionary column it looks like
    why: str  # why it is not mapped without asking (cohort-dictionary.md, section 4)


@dataclass
class Mapping:
    """A saved mapping of one file layout onto the dictionary."""

    columns: list[ColumnMap] = field(default_factory=list)
    name: str = ""
    decimal: str = "."  # decimal separator of numbers in the file
    sheet: str | None = None  # Excel sheet (None: the first)
    index_column: str | None = None  # file column with each row's index date (for transforms)
    index_date: str | None = None  # or one fixed index date (ISO)
    index_column_format: str | None = None  # strptime format of index_column (date_format: its dates)
    edits: list = field(default_factory=list)  # kn026.ingest.edits.Edit: choices about the file's bad cells
    unmatched: list[str] = field(default_factory=list, compare=False)  # file columns left out (not saved)
    held: list[Held] = field(default_factory=list, compare=False)  # offered, not mapped (not saved)

    def __post_init__(self) -> None:
        self._sort()

    def _sort(self) -> None:
        order = {c.name: i for i, c in enumerate(schema.COLUMNS)}
        self.columns.sort(key=lambda c: order.get(c.target, len(order)))

    def get(self, target: str) -> ColumnMap | None:
        return next((c for c in self.columns if c.target == target), None)

    def set(self, target: str, source: str | None = None, **kwargs) -> ColumnMap:
        """Map `target` (replacing an earlier entry) and return its ColumnMap."""
        _check_target(target)
        self.columns = [c for c in self.columns if c.target != target]
        cmap = ColumnMap(target, source, **kwargs)
        self.columns.append(cmap)
        self._sort()
        return cmap

    def to_dict(self) -> dict:
        doc: dict = {}
        if self.name:
            doc["name"] = self.name
        if self.decimal != ".":
            doc["decimal"] = self.decimal
        for key in ("sheet", "index_column", "index_date", "index_column_format"):
            if getattr(self, key) is not None:
                doc[key] = getattr(self, key)
        order = {c.name: i for i, c in enumerate(schema.COLUMNS)}
        doc["columns"] = {c.target: c.to_dict() for c in sorted(self.columns, key=lambda c: order[c.target])}
        if self.edits:
            doc["edits"] = edits_mod.to_list(self.edits)
        return doc

    def to_yaml(self) -> str:
        head = ("# Screening-cohort column mapping (kn026.ingest.mapping). Per dictionary column: the file\n"
                "# column (source) or a constant, the file's unit, value translations, transforms, date formats.\n")
        return head + yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, doc: dict, where: str = "mapping") -> Mapping:
        if not isinstance(doc, dict) or not isinstance(doc.get("columns"), dict):
            raise ValueError(f"{where}: needs a 'columns' mapping of dictionary column -> {{source: ...}}")
        unknown = set(doc) - {"name", "decimal", "sheet", "index_column", "index_date", "index_column_format",
                              "columns", "edits"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: name, decimal, "
                             f"sheet, index_column, index_date, index_column_format, columns, edits")
        columns = []
        for target, spec in doc["columns"].items():
            _check_target(str(target), where)
            if isinstance(spec, str):
                spec = {"source": spec}
            if not isinstance(spec, dict):
                raise ValueError(f"{where}: column {target!r} must be a mapping such as {{source: 'Hb'}}")
            bad = set(spec) - {"source", "constant", "unit", "factor", "values", "transform", "date_format"}
            if bad:
                raise ValueError(f"{where}: column {target!r} has unknown key(s) {', '.join(sorted(bad))}")
            values = {str(k): str(v) for k, v in (spec.get("values") or {}).items()}
            factor = spec.get("factor")
            columns.append(ColumnMap(
                str(target), _opt_str(spec.get("source")), _opt_str(spec.get("unit")),
                float(factor) if factor is not None else None, values, _opt_str(spec.get("constant")),
                _opt_str(spec.get("transform")), _opt_str(spec.get("date_format"))))
        m = cls(columns, str(doc.get("name") or ""), str(doc.get("decimal") or "."), _opt_str(doc.get("sheet")),
                _opt_str(doc.get("index_column")), _opt_str(doc.get("index_date")),
                _opt_str(doc.get("index_column_format")), edits_mod.from_list(doc.get("edits"), f"{where}: edits"))
        m.check()
        return m

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> Mapping:
        """Read a mapping from YAML text or a .yaml file path."""
        where = "mapping"
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or ("\n" not in text and text.lower().endswith((".yaml", ".yml"))):
            path = Path(text_or_path)
            where = f"mapping {path.name}"
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as err:
                raise ValueError(f"{where} cannot be read ({err.strerror}); check the path") from None
        try:
            doc = _yaml(text)
        except yaml.YAMLError as err:
            raise ValueError(f"{where} is not valid YAML: {str(err).splitlines()[0]}") from None
        return cls.from_dict(doc, where)

    def check(self) -> None:
        """ValueError naming the first inconsistent entry and the fix."""
        seen = set()
        for c in self.columns:
            if c.target in seen:
                raise ValueError(f"mapping: {c.target!r} is mapped twice; keep one entry")
            seen.add(c.target)
            if (c.source is None) == (c.constant is None):
                raise ValueError(f"mapping: {c.target!r} needs exactly one of source (a file column) or constant")
            if c.transform is not None and c.transform not in TRANSFORMS:
                raise ValueError(f"mapping: {c.target!r} transform {c.transform!r} is not one of "
                                 f"{', '.join(TRANSFORMS)}")
            if c.transform == "days_since" and not c.target.startswith("days_since_"):
                raise ValueError(f"mapping: transform days_since fills days_since_* columns, not {c.target!r}")
            if c.transform == "age_from_birth_date" and c.target != "age_years":
                raise ValueError(f"mapping: transform age_from_birth_date fills age_years, not {c.target!r}")
            if c.transform and self.index_column is None and self.index_date is None \
                    and not self.get("screening_date"):
                raise ValueError(f"mapping: {c.target!r} needs an index date; set index_column, index_date or "
                                 f"map screening_date")
            if c.unit is not None and c.factor is None:
                unit_factor(c.target, c.unit)  # raises with the known units
            if c.date_format is not None:
                if not c.transform and schema.BY_NAME[c.target].kind != schema.DATE:
                    raise ValueError(f"mapping: {c.target!r} is not a date; date_format applies to screening_date "
                                     f"and the date transforms")
                date_formats.check_format(c.date_format, f"mapping: {c.target!r} date_format")
        if self.index_column_format is not None:
            if self.index_column is None:
                raise ValueError("mapping: index_column_format needs index_column (the file column it reads)")
            date_formats.check_format(self.index_column_format, "mapping: index_column_format")
        edits_mod.check(self.edits, where="mapping: edits")
        if any(e.action == "unit" for e in self.edits):
            raise ValueError("mapping: edits: the unit of a mapped column is its `unit` setting, not an edit")
        if self.decimal not in (".", ","):
            raise ValueError(f"mapping: decimal {self.decimal!r} must be '.' or ','")
        if self.index_date is not None:
            try:
                dt.date.fromisoformat(self.index_date)
            except ValueError:
                raise ValueError(f"mapping: index_date {self.index_date!r} is not an ISO date (YYYY-MM-DD)") from None


def _opt_str(value) -> str | None:
    return None if value is None else str(value)


def _check_target(target: str, where: str = "mapping") -> None:
    if target not in schema.BY_NAME:
        close = difflib.get_close_matches(target, list(schema.BY_NAME), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{where}: {target!r} is not a dictionary column{hint}")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true / false. "Yes: M" or "no: none" stay text, as an analyst means."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


@cache
def _synonyms() -> dict:
    return load_synonyms(SYNONYMS_PATH)


def load_synonyms(path: str | Path) -> dict:
    """The synonyms file: columns, values, patterns, typical ranges (compiled)."""
    path = Path(path)
    try:
        doc = _yaml(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"synonyms file {path} cannot be read: {str(err).splitlines()[0]}") from None
    doc.setdefault("columns", {})
    doc.setdefault("values", {})
    doc.setdefault("typical", {})
    doc["patterns"] = {k: [re.compile(p, re.I) for p in v] for k, v in (doc.get("patterns") or {}).items()}
    rules = []
    for i, rule in enumerate(doc.get("ask_before") or []):
        if not isinstance(rule, dict) or not rule.get("headers") or not rule.get("targets"):
            raise ValueError(f"synonyms file {path.name}: ask_before entry {i + 1} needs headers and targets")
        for col in [*rule["targets"], rule.get("offer")]:
            if col is not None and col not in schema.BY_NAME:
                raise ValueError(f"synonyms file {path.name}: ask_before entry {i + 1} names {col!r}, which is "
                                 f"not a dictionary column")
        rules.append({"headers": [re.compile(x) for x in rule["headers"]],
                      "unless": [re.compile(x) for x in rule.get("unless") or []],
                      "targets": tuple(rule["targets"]), "offer": rule.get("offer"),
                      "why": " ".join(str(rule.get("why") or "").split())})
    doc["ask_before"] = rules
    return doc


def _ask_rule(header: str) -> dict | None:
    """The ask_before rule a header falls under ("QTc" for qtcf_ms, "eGFR" for the clearance), if any."""
    text = " " + re.sub(r"[^0-9a-z]+", " ", str(header).replace("µ", "u").lower()) + " "
    for rule in _synonyms()["ask_before"]:
        if any(x.search(text) for x in rule["headers"]) and not any(x.search(text) for x in rule["unless"]):
            return rule
    return None


def caution(target: str, header: str | None) -> str:
    """Why file column `header` should not fill `target` unless the analyst means it (empty if fine)."""
    rule = _ask_rule(header) if header else None
    return rule["why"] if rule and target in rule["targets"] else ""


# ----------------------------------------------------------------------------- units


def units_for(column: str) -> list[str]:
    """Units a dictionary column's values can be given in (dictionary unit first); [] if unitless."""
    return units.units_for(column)


def unit_factor(column: str, unit: str) -> float:
    """Factor from `unit` to the dictionary unit of `column`; ValueError lists the known units."""
    return units.unit_factor(column, unit)


def _unit_in_header(column: str, header: str) -> str | None:
    """A unit spelled in the header ("Hb (g/dL)", "creat_mgdl"), if one of the column's units."""
    table = omop.column_units(column)
    if not table:
        return None
    bracket = re.findall(r"[\(\[]([^\)\]]+)[\)\]]", header)
    candidates = [omop.normalise_unit(b) for b in bracket]
    tokens = re.split(r"[\s_\-]+", header.lower())
    candidates += [omop.normalise_unit(t) for t in tokens[1:]]
    squashed = {a.replace("/", "").replace("*", "").replace("^", ""): u for u in table for a in u["aliases"] if a}
    for cand in candidates:
        for u in table:
            if cand and cand in u["aliases"]:
                return u["unit"]
        key = cand.replace("/", "").replace("*", "")
        if len(key) >= 3 and key in squashed:
            return squashed[key]["unit"]
    return None


def guess_unit(column: str, values: Iterable, decimal: str = ".") -> str | None:
    """The unit under which 90 % of `values` are typical for `column` (synonyms file), if only one is; else None."""
    typical = _synonyms()["typical"].get(column)
    table = omop.column_units(column)
    if not typical or not table:
        return None
    nums = pd.to_numeric(pd.Series([_number_text(v, decimal) for v in values], dtype=object), errors="coerce")
    nums = nums.dropna()
    if nums.empty:
        return None
    fits = [u for u in table if ((nums * u["factor"]).between(typical[0], typical[1])).mean() >= 0.9]
    return fits[0]["unit"] if fits and len({u["factor"] for u in fits}) == 1 else None


# ----------------------------------------------------------------------------- suggestions


def _norm_header(text: str) -> str:
    t = re.sub(r"[\(\[][^\)\]]*[\)\]]", " ", str(text))  # units in brackets
    t = t.replace("µ", "u").lower()
    t = re.sub(r"[^0-9a-z]+", " ", t)
    return re.sub(r"\s+", " ", t).strip()


@cache
def _names() -> dict[str, list[str]]:
    syn = _synonyms()["columns"]
    out = {}
    for col in schema.COLUMNS:
        names = {_norm_header(col.name), _norm_header(col.name.replace("_", " "))}
        names |= {_norm_header(s) for s in syn.get(col.name) or []}
        out[col.name] = sorted(n for n in names if n)
    return out


def _score(header: str, column: str) -> float:
    """Similarity of a header to a dictionary column, 0..1; "AST/SGOT" scores each alternative."""
    outside = re.sub(r"[\(\[][^\)\]]*[\)\]]", " ", str(header))  # not the "/" of "(g/dL)"
    parts = [p for p in re.split(r"[/|;]", outside) if p.strip()]
    best = max((_score_one(p, column) for p in parts), default=0.0) if len(parts) > 1 else 0.0
    # "QTc (Fridericia)": text in brackets is usually a unit, but may be what names the column
    spelled = re.sub(r"[\(\)\[\]]", " ", str(header))
    return max(best, _score_one(str(header), column), _score_one(spelled, column) if spelled != header else 0.0)


def _score_one(header: str, column: str) -> float:
    norm = _norm_header(header)
    if not norm:
        return 0.0
    best = 0.0
    for name in _names()[column]:
        if norm == name:
            return 1.0
        if min(len(norm), len(name)) >= 4:  # "hb" vs "hbv" is not a near miss
            best = max(best, difflib.SequenceMatcher(None, norm, name).ratio())
        # "hb_gdl", "creat mgdl": the header starts with a name followed by a unit
        if norm.startswith(name + " ") and _unit_in_header(column, header[len(name):] or ""):
            best = max(best, 0.97)
        stripped = " ".join(w for w in norm.split() if w not in {"baseline", "screening", "value", "result",
                                                                 "latest", "last", "at", "level", "serum"})
        if stripped == name:
            best = max(best, 0.95)
    return best


def suggest_mapping(columns: Iterable[str], sample: pd.DataFrame | None = None,
                    cutoff: float = SUGGEST_CUTOFF) -> Mapping:
    """Suggest a Mapping for file headers `columns` (names, synonyms, similarity).

    Each dictionary column gets at most one header and vice versa, best matches first.
    A header the synonyms file's ask_before rules catch ("QTc", "eGFR") is never mapped to
    their columns; it is offered in `mapping.held` with the reason, for the analyst to choose.
    With `sample` (the file's rows) lab units are guessed from typical values when the
    header does not name one, and categorical value translations are pre-filled from
    the synonyms file for the spellings the sample contains.
    """
    headers = [str(c) for c in columns]
    scored = []
    for h in headers:
        rule = _ask_rule(h)
        for col in schema.COLUMNS:
            if rule and col.name in rule["targets"]:
                continue  # never without asking: offered below instead
            s = _score(h, col.name)
            if s >= cutoff:
                scored.append((s, h, col.name))
    scored.sort(key=lambda x: (-x[0], headers.index(x[1]), x[2]))
    used_h, used_c, mapping = set(), set(), Mapping()
    for s, h, col in scored:
        if h in used_h or col in used_c:
            continue
        used_h.add(h)
        used_c.add(col)
        cmap = ColumnMap(col, h, score=round(s, 3))
        unit = _unit_in_header(col, h)
        if unit is None and sample is not None and h in sample.columns:
            unit = guess_unit(col, sample[h].dropna().head(500))
        if unit is not None and unit_factor(col, unit) != 1.0:
            cmap.unit = unit
        if sample is not None and h in sample.columns:
            cmap.values = suggest_values(col, sample[h].dropna().unique()[:200])
        mapping.columns.append(cmap)
    mapping._sort()
    for h in headers:  # headers held back for the analyst's choice, one per dictionary column
        rule = _ask_rule(h)
        if rule and h not in used_h and rule["offer"] and rule["offer"] not in used_c:
            used_c.add(rule["offer"])
            mapping.held.append(Held(h, rule["offer"], rule["why"]))
    mapping.unmatched = [h for h in headers if h not in used_h]
    if sample is not None:
        numeric = [c.source for c in mapping.columns
                   if schema.BY_NAME[c.target].kind in (schema.NUMBER, schema.INTEGER) and c.source in sample.columns]
        mapping.decimal = guess_decimal(sample[numeric].head(500).to_numpy().ravel()) if numeric else "."
        if mapping.decimal == ",":  # the unit guess above assumed '.'
            for c in mapping.columns:
                if c.unit is not None and not _unit_in_header(c.target, c.source or ""):
                    c.unit = guess_unit(c.target, sample[c.source].dropna().head(500), ",")
        date_formats.fill(sample, mapping)  # formats the values prove; the others are asked
    return mapping


def suggest_column(target: str, header: str, sample: pd.DataFrame | None = None, decimal: str = ".") -> ColumnMap:
    """A ColumnMap for mapping file column `header` onto `target` by hand: the unit named in the
    header or typical of the sample's values, and translations of the sample's categorical values."""
    _check_target(target)
    cmap = ColumnMap(target, header)
    unit = _unit_in_header(target, header)
    if unit is None and sample is not None and header in sample.columns:
        unit = guess_unit(target, sample[header].dropna().head(500), decimal)
    if unit is not None and unit_factor(target, unit) != 1.0:
        cmap.unit = unit
    if sample is not None and header in sample.columns:
        cmap.values = suggest_values(target, sample[header].dropna().unique()[:200])
        if schema.BY_NAME[target].kind == schema.DATE:
            cmap.date_format = date_formats.infer(sample[header]).format  # proven, else None: asked
    return cmap


def guess_decimal(values: Iterable) -> str:
    """',' when numbers are written 12,5 (and none 12.5), else '.'."""
    comma = dot = 0
    for v in values:
        if not isinstance(v, str):
            continue
        text = v.strip()
        if re.fullmatch(r"[+-]?\d+,\d+", text) and not re.fullmatch(r"[+-]?\d{1,3},\d{3}", text):
            comma += 1
        elif re.fullmatch(r"[+-]?\d+\.\d+", text) and not re.fullmatch(r"[+-]?\d{1,3}\.\d{3}", text):
            dot += 1
    return "," if comma and not dot else "."


def _canon(value) -> str:
    return re.sub(r"\s+", " ", str(value).strip().lower())


def _value_table(column: str) -> dict[str, str]:
    """Spelling (canonical) -> dictionary value, from the synonyms file, for `column`."""
    syn = _synonyms()["values"]
    col = schema.BY_NAME[column]
    table = {}
    spec = syn.get("flag") if col.kind == schema.FLAG else syn.get(column)
    for value, spellings in (spec or {}).items():
        for s in spellings or []:
            table[_canon(s)] = str(value)
        table.setdefault(_canon(value), str(value))
    return table


def translate_value(column: str, value, user: dict[str, str] | None = None):
    """The dictionary value for one file value (user table, synonyms, patterns); unchanged if unknown."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value)
    if not text.strip():
        return None
    key = _canon(text)
    if user:
        for k, v in user.items():
            if _canon(k) == key:
                return v
    table = _value_table(column)
    if key in table:
        return table[key]
    for pattern in _synonyms()["patterns"].get(column, []):
        m = pattern.search(key)
        if m:
            return m.group(1)
    return value


def suggest_values(column: str, values: Iterable) -> dict[str, str]:
    """Translations for the file's distinct `values` that differ from what they map to."""
    col = schema.BY_NAME[column]
    if col.kind not in (schema.CATEGORY, schema.FLAG) and column not in _synonyms()["patterns"] \
            and column not in _synonyms()["values"]:
        return {}
    out = {}
    for v in values:
        if v is None or (isinstance(v, float) and pd.isna(v)) or not str(v).strip():
            continue
        mapped = translate_value(column, v)
        if mapped is not v and str(mapped) != str(v):
            out[str(v)] = str(mapped)
    return out


def dictionary_values(column: str) -> list[str]:
    """The values a categorical / flag / small-integer dictionary column takes, for a value picker
    (open categories such as primary_site list the spellings the synonyms file knows)."""
    col = schema.BY_NAME[column]
    if col.values:
        return list(col.values)
    if col.kind == schema.FLAG:
        return ["true", "false"]
    if col.kind == schema.INTEGER and col.low is not None and col.high is not None and col.high - col.low <= 10:
        return [str(v) for v in range(int(col.low), int(col.high) + 1)]
    known = dict.fromkeys(_value_table(column).values()) if col.kind == schema.CATEGORY else {}
    return list(known)


def value_report(frame: pd.DataFrame, mapping: Mapping) -> pd.DataFrame:
    """Per categorical mapped column: each distinct file value, what it becomes, and whether that is valid."""
    rows = []
    for c in mapping.columns:
        col = schema.BY_NAME[c.target]
        if c.source is None or c.source not in frame.columns or c.transform:
            continue
        if col.kind not in (schema.CATEGORY, schema.FLAG) and c.target not in _synonyms()["patterns"]:
            continue
        counts = frame[c.source].dropna().astype(str).value_counts()
        for value, n in counts.items():
            if not value.strip():
                continue
            mapped = translate_value(c.target, value, c.values)
            rows.append({"column": c.target, "source": c.source, "value": value, "count": int(n),
                         "maps_to": None if mapped is None else str(mapped),
                         "valid": _valid_value(col, mapped)})
    return pd.DataFrame(rows, columns=["column", "source", "value", "count", "maps_to", "valid"])


def _valid_value(col: schema.Column, value) -> bool:
    if value is None:
        return True
    text = _canon(value)
    if col.kind == schema.FLAG:
        return text in schema.TRUE_WORDS or text in schema.FALSE_WORDS
    if col.name == "sex":
        return text in schema.SEX_WORDS
    if col.values:
        return re.sub(r"[\s\-]+", "_", text) in col.values
    if col.kind == schema.INTEGER:
        try:
            f = float(text)
        except ValueError:
            return False
        return f == int(f) and (col.low is None or f >= col.low) and (col.high is None or f <= col.high)
    return True


# ----------------------------------------------------------------------------- apply


def _number_text(value, decimal: str = "."):
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = str(value).strip().replace("\u00a0", "").replace(" ", "").replace("'", "")
    if not text:
        return None
    if decimal == ",":
        if _GROUPED_DOT.match(text):  # 1.234,5: dots group thousands
            text = text.replace(".", "")
        return text.replace(",", ".")
    if _GROUPED_COMMA.match(text):  # 150,000 or 1,234.5
        text = text.replace(",", "")
    return text


_GROUPED_DOT = re.compile(r"^[+-]?\d{1,3}(\.\d{3})+(,\d+)?$")
_GROUPED_COMMA = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")


def _numbers(series: pd.Series, decimal: str) -> tuple[pd.Series, pd.Series]:
    """(parsed floats, mask of non-empty cells that are not numbers)."""
    texts = series.map(lambda v: _number_text(v, decimal))
    nums = pd.to_numeric(texts, errors="coerce")
    bad = texts.notna() & nums.isna()
    return nums, bad


def apply_mapping(frame: pd.DataFrame, mapping: Mapping, progress: Progress = None) -> pd.DataFrame:
    """The mapped cohort: dictionary columns only, units converted, values translated, dates read.

    Cells that cannot be read (a word in a number column, an unknown category) are
    passed through unchanged, so `load_cohort` (or `kn026.ingest.mapped.preview`) reports them with
    row and patient, instead of turning them silently into NULL. Each date column is read
    with one format (kn026.ingest.date_formats: given, or proven by its values; else
    DateFormatError, never a guess per value); a date cell it does not read raises
    CohortError listing the cells with the fix.
    """
    mapped, problems = _apply(frame, mapping, progress)
    if problems:
        raise CohortError(problems, total=_total(problems))
    return mapped


def _total(problems: list[Problem]) -> int:
    return sum({p.column: p.count for p in problems}.values())


def _apply(frame: pd.DataFrame, mapping: Mapping, progress: Progress = None,
           unread: dict | None = None) -> tuple[pd.DataFrame, list[Problem]]:
    """(The mapped cohort, with None for date cells their format does not read; those cells' problems).
    `unread`, when given, receives every such cell's row (1-based) per problem column (kn026.ingest.mapped)."""
    mapping.check()
    missing = [c.source for c in mapping.columns if c.source is not None and c.source not in frame.columns]
    if missing:
        close = difflib.get_close_matches(missing[0], [str(c) for c in frame.columns], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"mapping: column {missing[0]!r} is not in the file{hint}; fix the mapping's source names")
    formats = date_formats.resolve(frame, mapping)
    pid = mapping.get("patient_id")
    ids = frame[pid.source] if pid is not None and pid.source is not None else None
    out, problems, index = {}, [], None
    order = {c.name: i for i, c in enumerate(schema.COLUMNS)}
    columns = sorted(mapping.columns, key=lambda c: order[c.target])
    for i, c in enumerate(columns):
        col = schema.BY_NAME[c.target]
        if c.constant is not None:
            out[c.target] = pd.Series([c.constant] * len(frame), index=frame.index, dtype=object)
        elif c.transform or col.kind == schema.DATE:
            dates, bad = date_formats.read(frame[c.source], formats.get(c.source))
            problems += date_formats.bad_cells(frame, c.target, c.source, formats.get(c.source), bad, ids)
            _note(unread, c.target, bad)
            if c.transform and index is None:
                index, bad_index, source = date_formats.index_dates(frame, mapping, formats)
                if source not in {d.source for d in date_formats.date_columns(mapping) if d.key != "index_column"}:
                    problems += date_formats.bad_cells(frame, "index_column", source, formats.get(source),
                                                       bad_index, ids)  # else reported with that column
                    _note(unread, "index_column", bad_index)
            out[c.target] = date_formats.elapsed(c.transform, index, dates) if c.transform else \
                dates.dt.strftime("%Y-%m-%d").astype(object).where(dates.notna(), None)
        elif col.kind in (schema.NUMBER, schema.INTEGER) and c.target not in _synonyms()["patterns"] \
                and c.target not in _synonyms()["values"]:
            factor = c.factor if c.factor is not None else unit_factor(c.target, c.unit) if c.unit else 1.0
            nums, bad = _numbers(frame[c.source], mapping.decimal)
            if factor != 1.0:
                nums = nums.map(lambda v, f=factor: omop.convert(v, f) if pd.notna(v) else v)
            series = nums.astype(object).where(nums.notna(), None)
            out[c.target] = series.where(~bad, frame[c.source])
        elif col.kind in (schema.CATEGORY, schema.FLAG, schema.INTEGER):
            out[c.target] = frame[c.source].map(lambda v, c=c: translate_value(c.target, v, c.values))
        else:  # id, text
            out[c.target] = frame[c.source].map(
                lambda v: None if v is None or (isinstance(v, float) and pd.isna(v)) or not str(v).strip()
                else str(v).strip())
        if progress is not None:
            progress((i + 1) / max(len(columns), 1), f"mapped {c.target}")
    result = pd.DataFrame(out, index=frame.index).reset_index(drop=True)
    for name in result.columns:  # one missing-value spelling: None, in object columns
        result[name] = result[name].astype(object).where(result[name].notna(), None)
    return result, problems


def _note(unread: dict | None, column: str, bad: pd.Series) -> None:
    if unread is not None and bad.any():
        unread[column] = np.flatnonzero(bad.to_numpy()) + 1


# ----------------------------------------------------------------------------- files


def read_table(path: str | Path, sheet: str | None = None) -> pd.DataFrame:
    """A CSV (any delimiter), Excel or Parquet file as a frame of text cells (Parquet keeps its types)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--in {path}: the file does not exist; check the path")
    suffix = path.suffix.lower()
    try:
        if suffix in (".xlsx", ".xlsm", ".xls"):
            return pd.read_excel(path, sheet_name=sheet if sheet is not None else 0, dtype=str, keep_default_na=False,
                                 engine="openpyxl")
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt", ".tsv", ""):
            for encoding in ("utf-8-sig", "latin-1"):
                try:
                    with path.open(encoding=encoding, newline="") as fh:
                        head = fh.read(65536)
                    try:
                        sep = csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
                    except csv.Error:  # one column, or nothing to tell
                        sep = "\t" if suffix == ".tsv" else ","
                    return pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep, encoding=encoding)
                except UnicodeDecodeError:
                    continue
    except (ValueError, OSError, ImportError) as err:
        raise ValueError(f"--in {path.name} cannot be read ({str(err).splitlines()[0]}); save it as CSV, "
                         f"Excel (.xlsx) or Parquet") from None
    raise ValueError(f"--in {path.name}: unsupported file type {suffix!r}; use CSV, Excel (.xlsx) or Parquet")
