"""Eligibility criteria as data: load one protocol file and validate it.

A protocol file (YAML, `kn026/protocols/*.yaml`) lists criteria, each with one or
more rules ("leaves"). A rule's predicate is SQL over dictionary columns, derived
values and `:named` parameters. Everything is checked on load so a bad file fails
with the rule ID and the offending name, never later inside a query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import yaml
from sqlglot import exp

from kn026.base import schema, sqlpass
from kn026.base.sqlpass import names_in
from kn026.core.windows import Windows, build_windows

PROTOCOL_DIR = Path(__file__).parents[1] / "protocols"
DEFAULT_PROTOCOL = PROTOCOL_DIR / "kn026_001.yaml"
KINDS = ("inclusion", "exclusion")
_ID = re.compile(r"^[A-Z][A-Z0-9_]*[0-9]+(\.[A-Z0-9_]+)?$")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
# Nodes that make a "predicate" a query or a statement rather than an expression over columns.


class CriteriaError(ValueError):
    """A protocol or scenario file that cannot be used; the message names the fix."""


@dataclass(frozen=True)
class Param:
    """A named threshold of one rule, with its protocol default and allowed range."""

    name: str
    default: Decimal
    unit: str = ""
    low: Decimal | None = None
    high: Decimal | None = None

    def check(self, value, where: str) -> Decimal:
        """Return `value` as an exact Decimal, or raise naming the allowed range."""
        dec = to_decimal(value, f"{where}.{self.name}")
        if (self.low is not None and dec < self.low) or (self.high is not None and dec > self.high):
            raise CriteriaError(
                f"{where}.{self.name} = {value} is outside the allowed range "
                f"{self.low}..{self.high} {self.unit}".rstrip())
        return dec


@dataclass(frozen=True)
class Derived:
    """A value computed from columns (clearance, QTcF, washout), defined once."""

    name: str
    sql: str
    label: str = ""


@dataclass(frozen=True)
class Rule:
    """One leaf rule: a predicate per stage, its readable template and parameters."""

    id: str
    criterion: str
    kind: str
    label: str
    sql: dict[int, str]
    template: dict[int, str]
    params: dict[str, Param] = field(default_factory=dict)
    columns: dict[int, frozenset[str]] = field(default_factory=dict)  # base columns per stage
    # alternative sets of columns, one of which must be present for the rule to be
    # assessable (dictionary section 1 "Absent columns"); per stage
    requires: dict[int, tuple[frozenset[str], ...]] = field(default_factory=dict)
    # record-based columns whose NULL this rule reads as unknown, not "none on record"
    null_is_unknown: frozenset[str] = frozenset()

    @property
    def stages(self) -> tuple[int, ...]:
        return tuple(sorted(self.sql))

    def defaults(self) -> dict[str, Decimal]:
        return {name: p.default for name, p in self.params.items()}

    def readable(self, stage: int, values: dict[str, Decimal] | None = None) -> str:
        """The one-line rule with the parameters' current values filled in."""
        vals = {**self.defaults(), **(values or {})}
        return _PLACEHOLDER.sub(lambda m: format_number(vals[m.group(1)]), self.template[stage])


@dataclass(frozen=True)
class Criterion:
    """A protocol criterion: verbatim text and its rules (one, or several sub-rules)."""

    id: str
    kind: str
    text: str
    rules: tuple[Rule, ...]

    @property
    def stages(self) -> tuple[int, ...]:
        return tuple(sorted({s for r in self.rules for s in r.stages}))


@dataclass(frozen=True)
class Protocol:
    """A validated protocol file: criteria in protocol order, derived values, stages."""

    name: str
    title: str
    registry: str
    stages: dict[int, str]
    derived: dict[str, Derived]
    criteria: tuple[Criterion, ...]
    source: str = ""
    split: dict[str, tuple[str, ...]] = field(default_factory=dict)  # retired rule ID -> its successors
    windows: Windows = field(default_factory=Windows)  # assessment windows and event look-backs (kn026.core.windows)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(r for c in self.criteria for r in c.rules)

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        if rule_id in self.split:
            raise CriteriaError(self.split_message(rule_id))
        raise CriteriaError(f"unknown rule ID {rule_id!r}; known: {', '.join(self.rule_ids())}")

    def split_message(self, rule_id: str) -> str:
        """Why a retired rule ID is refused, naming the rules that replace it and their parameters."""
        parts = []
        for new in self.split[rule_id]:
            params = next((r.params for r in self.rules if r.id == new), {})
            parts.append(f"{new} ({', '.join(params)})" if params else new)
        return (f"{rule_id} is no longer a rule of {self.name}: it was split into {', '.join(parts)}; "
                f"name those IDs instead (parameters in brackets)")

    def criterion(self, criterion_id: str) -> Criterion:
        for c in self.criteria:
            if c.id == criterion_id:
                return c
        raise CriteriaError(
            f"unknown criterion ID {criterion_id!r}; known: {', '.join(c.id for c in self.criteria)}")

    def rule_ids(self) -> list[str]:
        return [r.id for r in self.rules]


def format_number(value) -> str:
    """Shortest exact text of a number: 18, 1.5, 0.85 (never 1.7999999999999998)."""
    dec = value if isinstance(value, Decimal) else to_decimal(value, "value")
    text = format(dec.normalize(), "f")
    return text


def to_decimal(value, where: str) -> Decimal:
    """An exact Decimal from a YAML/UI number; floats go through their shortest repr."""
    if isinstance(value, bool):
        raise CriteriaError(f"{where}: expected a number, got {value!r}")
    try:
        dec = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise CriteriaError(f"{where}: expected a number, got {value!r}") from None
    if not dec.is_finite():
        raise CriteriaError(f"{where}: expected a finite number, got {value!r}")
    return dec


def parse_predicate(sql: str, where: str) -> exp.Expression:
    """Parse one boolean SQL expression (DuckDB dialect) or raise CriteriaError naming the rule."""
    return sqlpass.parse_predicate(sql, where, CriteriaError)


def load_protocol(path: str | Path | None = None) -> Protocol:
    """Load and validate a protocol file (default: KN026-001)."""
    path = Path(path) if path else DEFAULT_PROTOCOL
    try:
        # libyaml's safe loader when built in: the same documents, a tenth of the pure-Python time
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except OSError as err:
        raise CriteriaError(f"cannot read protocol file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise CriteriaError(f"{path.name} is not valid YAML: {err}") from None
    return build_protocol(doc, source=str(path))


def _per_stage(value, stages: list[int], where: str) -> dict[int, str]:
    if isinstance(value, str):
        return {s: value for s in stages}
    if isinstance(value, dict):
        out = {}
        for key, text in value.items():
            try:
                stage = int(key)
            except (TypeError, ValueError):
                raise CriteriaError(f"{where}: stage key {key!r} is not a stage number") from None
            if stage not in stages or not isinstance(text, str):
                raise CriteriaError(f"{where}: stage {key!r} must be one of {stages} with text")
            out[stage] = text
        return out
    raise CriteriaError(f"{where}: expected text or a mapping of stage to text")


def build_protocol(doc: dict, source: str = "") -> Protocol:
    """Validate a parsed protocol document and build the Protocol."""
    if not isinstance(doc, dict) or "criteria" not in doc:
        raise CriteriaError("a protocol file needs 'protocol', 'stages' and 'criteria'")
    try:
        stages = {int(k): str(v) for k, v in (doc.get("stages") or {1: "all"}).items()}
    except (AttributeError, TypeError, ValueError):
        raise CriteriaError("'stages' must map stage numbers to names, e.g. {1: Stage 1}") from None
    stage_list = sorted(stages)
    if not isinstance(doc.get("derived") or {}, dict):
        raise CriteriaError("'derived' must map names to SQL expressions")
    if not isinstance(doc["criteria"], list) or not all(isinstance(c, dict) for c in doc["criteria"]):
        raise CriteriaError("'criteria' must be a list of criteria, each a mapping with id, kind, text, rules")
    derived = {}
    for name, spec in (doc.get("derived") or {}).items():
        if name in schema.BY_NAME:
            raise CriteriaError(f"derived value {name!r} shadows a dictionary column")
        spec = spec if isinstance(spec, dict) else {"sql": spec}
        tree = parse_predicate(str(spec.get("sql", "")), f"derived {name}")
        cols, _ = names_in(tree)
        unknown = cols - set(schema.BY_NAME)
        if unknown:
            raise CriteriaError(f"derived {name}: unknown column(s) {sorted(unknown)}")
        derived[name] = Derived(name, str(spec["sql"]), str(spec.get("label", "")))

    seen: set[str] = set()
    criteria = []
    for cdoc in doc["criteria"]:
        cid = str(cdoc.get("id", ""))
        kind = cdoc.get("kind")
        if not _ID.match(cid):
            raise CriteriaError(f"criterion ID {cid!r} must look like INCL01 or EXCL11")
        if kind not in KINDS:
            raise CriteriaError(f"{cid}: kind must be one of {KINDS}, not {kind!r}")
        if cid in seen:
            raise CriteriaError(f"duplicate ID {cid}")
        seen.add(cid)
        rules = []
        rdocs = cdoc.get("rules") or []
        if not isinstance(rdocs, list) or not all(isinstance(r, dict) for r in rdocs):
            raise CriteriaError(f"{cid}: 'rules' must be a list of rules, each a mapping with id and sql")
        for rdoc in rdocs:
            rule = _build_rule(rdoc, cid, kind, stage_list, derived, seen)
            if any(r.id == rule.id for r in rules):  # `seen` lets one rule reuse the criterion ID
                raise CriteriaError(f"duplicate ID {rule.id}")
            rules.append(rule)
        if not rules:
            raise CriteriaError(f"{cid}: a criterion needs at least one rule")
        criteria.append(Criterion(cid, kind, " ".join(str(cdoc.get("text", "")).split()), tuple(rules)))
    split = _split_ids(doc.get("split") or {}, {r.id for c in criteria for r in c.rules})
    windows = build_windows(doc.get("windows"), [r for c in criteria for r in c.rules], derived, CriteriaError)
    return Protocol(
        name=str(doc.get("protocol", "protocol")), title=str(doc.get("title", "")),
        registry=str(doc.get("registry", "")), stages=stages, derived=derived,
        criteria=tuple(criteria), source=source, split=split, windows=windows)


def _split_ids(doc, rule_ids: set[str]) -> dict[str, tuple[str, ...]]:
    """The file's `split:` map (retired rule ID -> current rule IDs), checked."""
    if not isinstance(doc, dict):
        raise CriteriaError("'split' must map a retired rule ID to the list of rules replacing it")
    out = {}
    for old, new in doc.items():
        new = [new] if isinstance(new, str) else new
        if not isinstance(new, list) or not new or any(n not in rule_ids for n in new):
            raise CriteriaError(f"split {old}: list the current rule IDs that replace it")
        if old in rule_ids:
            raise CriteriaError(f"split {old}: a retired ID cannot also be a current rule ID")
        out[str(old)] = tuple(str(n) for n in new)
    return out


def _requires(value, stage: int, cols: set[str], rid: str) -> tuple[frozenset[str], ...]:
    """A rule's alternative required column sets at one stage (dictionary section 5, `requires`).

    Each item is one alternative: a column, or a list of columns that must all be present.
    Without `requires`, a rule reading exactly one column requires that column; a rule
    reading several must say which (an absent column outside every set reads as unknown).
    """
    if value is None:
        if len(cols) != 1:
            raise CriteriaError(
                f"{rid}: the rule reads {len(cols)} columns ({', '.join(sorted(cols))}); "
                "declare `requires:` (the alternative sets of columns one of which must be present)")
        return (frozenset(cols),)
    if isinstance(value, dict):
        value = value.get(stage, value.get(str(stage)))
        if value is None:
            raise CriteriaError(f"{rid}: `requires` has no entry for stage {stage}")
    if not isinstance(value, list) or not value:
        raise CriteriaError(f"{rid}: `requires` must be a list of alternatives (a column or a list of columns)")
    sets = []
    for item in value:
        group = frozenset([item] if isinstance(item, str) else item if isinstance(item, list) else [None])
        bad = sorted(str(c) for c in group if c not in cols)
        if not group or bad:
            raise CriteriaError(f"{rid}: `requires` names {', '.join(bad) or 'nothing'}, "
                                "which the rule does not read at this stage")
        sets.append(group)
    return tuple(sets)


def _build_rule(rdoc: dict, cid: str, kind: str, stages: list[int],
                derived: dict[str, Derived], seen: set[str]) -> Rule:
    rid = str(rdoc.get("id", ""))
    if not _ID.match(rid) or not (rid == cid or rid.startswith(cid + ".")):
        raise CriteriaError(f"rule ID {rid!r} must be {cid} or {cid}.NAME")
    if rid in seen and rid != cid:
        raise CriteriaError(f"duplicate ID {rid}")
    seen.add(rid)
    params = {}
    if not isinstance(rdoc.get("params") or {}, dict):
        raise CriteriaError(f"{rid}: 'params' must map parameter names to {{default, unit, min, max}}")
    for name, spec in (rdoc.get("params") or {}).items():
        spec = spec if isinstance(spec, dict) else {"default": spec}
        where = f"{rid}.{name}"
        low = to_decimal(spec["min"], where) if "min" in spec else None
        high = to_decimal(spec["max"], where) if "max" in spec else None
        p = Param(name, to_decimal(spec.get("default"), where), str(spec.get("unit", "")), low, high)
        p.check(p.default, rid)
        params[name] = p
    sql = _per_stage(rdoc.get("sql"), stages, f"{rid} sql")
    template = _per_stage(rdoc.get("rule", rdoc.get("label", rid)), stages, f"{rid} rule")
    if set(template) != set(sql):
        template = {s: template.get(s, next(iter(template.values()))) for s in sql}
    columns = {}
    for stage, text in sql.items():
        tree = parse_predicate(text, rid)
        cols, used = names_in(tree)
        base = set()
        for name in cols:
            if name in derived:
                dcols, dparams = names_in(parse_predicate(derived[name].sql, name))
                base |= dcols
                used |= dparams
            elif name in schema.BY_NAME:
                base.add(name)
            else:
                raise CriteriaError(
                    f"{rid}: {name!r} is neither a dictionary column nor a derived value")
        missing = used - set(params)
        if missing:
            raise CriteriaError(f"{rid}: parameter(s) {sorted(missing)} are used but not declared")
        for name in _PLACEHOLDER.findall(template[stage]):
            if name not in params:
                raise CriteriaError(f"{rid}: readable rule mentions undeclared {{{name}}}")
        columns[stage] = frozenset(base)
    requires = {stage: _requires(rdoc.get("requires"), stage, set(columns[stage]), rid) for stage in sql}
    null_is_unknown = rdoc.get("null_is_unknown") or []
    if not isinstance(null_is_unknown, list) or any(
            c not in schema.BY_NAME or not schema.BY_NAME[c].record_based
            or not any(c in cols for cols in columns.values()) for c in null_is_unknown):
        raise CriteriaError(f"{rid}: `null_is_unknown` must list record-based columns the rule reads")
    return Rule(rid, cid, kind, str(rdoc.get("label", rid)), sql, template, params, columns,
                requires, frozenset(null_is_unknown))
