"""The SDTM terms file (kn026/ingest/concepts/sdtm_terms.yaml), ISO 8601 dates, units and term matching.

Everything the SDTM importer knows about test codes, units and MedDRA / WHO-DD terms is
data: this module reads it, checks it (errors name the entry and the fix) and answers
the importer's questions: which dictionary unit factor a --STRESU has, what an ISO 8601
--DTC means (a partial date is a range of days), and whether a term belongs to one of
the OMOP importer's concept sets or drug groups (kn026/ingest/concepts/omop_concepts.yaml), so
both importers call the same conditions and drugs by the same names.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import yaml

from kn026.base import schema
from kn026.ingest.omop_concepts import _any_like, _default_concepts, normalise_unit

TERMS_PATH = Path(__file__).with_name("concepts") / "sdtm_terms.yaml"
_DTC = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(?:T(\d{2}(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?))?")


def load_terms(path: str | Path | None = None) -> dict:
    """Read and check the SDTM terms file; ValueError names the bad entry and the fix."""
    path = Path(path) if path else TERMS_PATH
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader
    except OSError as err:
        raise ValueError(f"SDTM terms file {path} cannot be read ({err.strerror}); check the path") from None
    except yaml.YAMLError as err:
        raise ValueError(f"SDTM terms file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    check_terms(doc)
    return doc


def check_terms(doc: dict) -> None:
    """Every column is a dictionary column, every unit group and concept set exists."""
    if not isinstance(doc, dict) or not {"unit_groups", "findings", "events"} <= set(doc):
        raise ValueError("the SDTM terms file needs unit_groups, findings and events")
    groups = doc["unit_groups"]
    for name, units in groups.items():
        for u in units:
            if "unit" not in u or "factor" not in u:
                raise ValueError(f"unit_groups.{name}: each unit needs unit and factor")
    for col, sources in doc["findings"].items():
        if col not in schema.BY_NAME:
            raise ValueError(f"findings.{col}: not a dictionary column")
        for s in sources:
            parts = s.get("derive", {}).get("product", []) if "derive" in s else [s]
            for p in parts:
                if p.get("units") not in groups:
                    raise ValueError(f"findings.{col}: unit group {p.get('units')!r} is not in unit_groups")
                if not p.get("testcd"):
                    raise ValueError(f"findings.{col}: a source needs testcd")
            if s.get("uln") and s["uln"] not in schema.ULN_OF:
                raise ValueError(f"findings.{col}: uln {s['uln']!r} is not a ULN column")
    omop = _default_concepts()
    for col, spec in doc["events"].items():
        if col not in schema.BY_NAME:
            raise ValueError(f"events.{col}: not a dictionary column")
        for s in spec.get("sources") or [spec]:
            for name in [*(s.get("sets") or []), *(s.get("unknown_sets") or [])]:
                if name not in omop["concept_sets"]:
                    raise ValueError(f"events.{col}: concept set {name!r} is not in omop_concepts.yaml")
            g = s.get("groups")
            for name in ([] if g in (None, "antineoplastic") else g):
                if name not in omop["drug_groups"]:
                    raise ValueError(f"events.{col}: drug group {name!r} is not in omop_concepts.yaml")


# ------------------------------------------------------------------------------------ dates


@dataclass(frozen=True)
class Dtc:
    """An ISO 8601 --DTC: the first and last day it can mean, and its time for ordering within a day."""

    first: dt.date
    last: dt.date
    time: str = ""

    @property
    def full(self) -> bool:
        return self.first == self.last


@functools.lru_cache(maxsize=65536)
def _parse_dtc(text: str) -> Dtc | None:
    m = _DTC.match(text)
    if not m:
        return None
    y, mo, d, t = m.groups()
    try:
        year = int(y)
        if mo is None:
            return Dtc(dt.date(year, 1, 1), dt.date(year, 12, 31))
        month = int(mo)
        if d is None:
            nxt = dt.date(year + (month == 12), month % 12 + 1, 1)
            return Dtc(dt.date(year, month, 1), nxt - dt.timedelta(days=1))
        day = dt.date(year, month, int(d))
    except ValueError:
        return None
    return Dtc(day, day, t or "")


def parse_dtc(text) -> Dtc | None:
    """'2024-06-25', '2024-06-25T08:30', '2024-06' (June), '2024' (the year); None when empty or unreadable."""
    return None if text is None else _parse_dtc(str(text).strip())


# ------------------------------------------------------------------------------------ units


def unit_factor(group: str, unit, doc: dict, memo: dict | None = None) -> tuple[str, Decimal] | None:
    """(the unit's name, its factor into the dictionary unit) for a result's unit text; None if unknown.
    `memo` ({}) remembers the answers: a study repeats a few units many times."""
    memo = {} if memo is None else memo
    key = (group, unit)
    if key not in memo:
        memo[key] = _unit_factor(group, unit, doc)
    return memo[key]


def _unit_factor(group: str, unit, doc: dict) -> tuple[str, Decimal] | None:
    norm = normalise_unit(unit)
    for u in doc["unit_groups"][group]:
        aliases = {normalise_unit(a) for a in (u.get("aliases") or [])} | {normalise_unit(u["unit"])}
        if (norm and norm in aliases) or (not norm and u.get("missing_unit")):
            return str(u["unit"]), Decimal(str(u["factor"]))
    return None


def convert(value: str, factor: Decimal, decimals: int) -> float | None:
    """A result in text times its factor, exact, rounded to `decimals`; None if not a number."""
    try:
        dec = Decimal(str(value).strip())
    except ArithmeticError:
        return None
    if not dec.is_finite():
        return None
    return float(round(dec * factor, decimals))


# ------------------------------------------------------------------------------------ terms


class Matcher:
    """Terms (MedDRA / WHO-DD names, lower case) -> membership of the OMOP file's concept sets and drug groups."""

    def __init__(self, terms: dict):
        self.omop = _default_concepts()
        self.meddra = {k: {str(t).strip().lower() for t in v} for k, v in (terms.get("meddra") or {}).items()}
        self._sets: dict[str, tuple] = {}
        self._words: dict[str, list] = {}
        self._memo: dict = {}

    def _set(self, name: str, stack: tuple = ()) -> tuple:
        if name in self._sets:
            return self._sets[name]
        spec = self.omop["concept_sets"][name]
        inc = _any_like(spec.get("names") or [])
        exc = _any_like(spec.get("exclude_names") or [])
        parts = (inc, exc, [s for s in spec.get("include_sets") or [] if s not in stack],
                 [s for s in spec.get("exclude_sets") or [] if s not in stack], self.meddra.get(name, set()))
        self._sets[name] = parts
        return parts

    def in_set(self, term: str, name: str, stack: tuple = ()) -> bool:
        """The OMOP rule on names: included by a pattern (or an included set, or a listed MedDRA term)
        and not excluded by a pattern or an excluded set."""
        key = (term, name, stack)
        if key not in self._memo:
            self._memo[key] = self._in_set(term, name, stack)
        return self._memo[key]

    def _in_set(self, term: str, name: str, stack: tuple) -> bool:
        t = term.strip().lower()
        inc, exc, inc_sets, exc_sets, exact = self._set(name, stack)
        if any(self.in_set(t, s, stack + (name,)) for s in exc_sets):
            return False
        if t in exact:
            return True
        hit = bool(inc and inc.match(t)) or any(self.in_set(t, s, stack + (name,)) for s in inc_sets)
        return hit and not (exc and exc.match(t))

    def drug(self, term: str, groups) -> dict | None:
        """The ingredient entry ({name, factor, half_life_days, group}) whose name is a word of `term`."""
        key = (term, groups if isinstance(groups, str) or groups is None else tuple(groups))
        if key not in self._memo:
            self._memo[key] = self._drug(term, groups)
        return self._memo[key]

    def _drug(self, term: str, groups) -> dict | None:
        t = term.strip().lower()
        names = self.drug_groups(groups)
        for g in names:
            for item, words in self._group_words(g):
                if any(w.search(t) for w in words):
                    return {**item, "group": g}
        return None

    def drug_groups(self, groups) -> list[str]:
        if groups in (None, "antineoplastic"):
            return list(self.omop.get("antineoplastic_groups") or [])
        return list(groups)

    def _group_words(self, group: str) -> list:
        if group not in self._words:
            out = []
            for item in self.omop["drug_groups"][group]:
                name = str(item["name"]).lower()
                words = [re.compile(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])")]
                words += [re.compile(r"(?<![\w-])" + re.escape(p.lower()).replace("%", r"[\w-]*") + r"(?![\w])")
                          for p in item.get("patterns") or []]
                out.append((item, words))
            self._words[group] = out
        return self._words[group]


def like(patterns) -> re.Pattern | None:
    """One case-insensitive matcher for SQL LIKE patterns (of lower-cased text)."""
    return _any_like([str(p).lower() for p in patterns or []])
