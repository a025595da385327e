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
FORMAT = "kn026-criteria"  # every criteria file starts `format: kn026-criteria` and `version: N`
FORMAT_VERSIONS = (1,)  # the versions of that format this code reads
FILTER_STATUSES = ("fails", "fails only", "unknown on", "passes")  # patient filters (kn026.report.patients)
PASSES = ("ge", "le")  # which side of a measure's limit passes
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
class Measure:
    """A value to plot as a distribution with its rule's limit(s) (the file's `measures:`)."""

    key: str
    title: str
    unit: str
    expression: str  # SQL over columns, derived values and the rule's :params
    rule: str
    limits: tuple[tuple[str, str], ...]  # (parameter, label template with {v})
    passes: str  # "ge" or "le": which side of the limit passes
    discrete: bool = False


@dataclass(frozen=True)
class CategoryChart:
    """Patients per declared category of a rule's inputs, each coloured by the rule's own
    verdict on those patients (the file's `categories:`), so a rewritten rule colours right."""

    rule: str
    title: str
    subtitle: str
    groups: tuple[tuple[str, str], ...]  # (label, SQL condition), first match wins


@dataclass(frozen=True)
class Examples:
    """Worked examples the app offers for this protocol (the file's `examples:`)."""

    filters: tuple[tuple[str, str], ...] = ()  # (status, criterion or rule ID)
    replace: tuple[str, str] | None = None  # (rule ID, rewritten SQL)
    replace_label: str = ""  # the button's words, e.g. "CrCl ≥ 50"
    replace_why: str = ""  # one sentence: what the rewrite stands for


@dataclass(frozen=True)
class Enrollment:
    """The protocol's enrolment target and what it counts (the file's `enrollment:`).

    `scope` says which population the figure is for ("whole study"); no split between
    stages is assumed: a stage's share is asked of the user.
    """

    target: int | None = None
    scope: str = ""
    source: str = ""

    def text(self, share: float | None = None) -> str:
        """'286 patients (whole study, KN026-001 estimated enrollment)', or the share of it."""
        if self.target is None:
            return "no enrolment target declared in the protocol file"
        what = ", ".join(t for t in (self.scope, self.source) if t)
        if share is None or share == 1:
            return f"{self.target} patients ({what})" if what else f"{self.target} patients"
        pct = format_number(to_decimal(share, "share") * 100)
        return f"{stage_share(self.target, share)} patients ({pct} % of {self.target}, {what})"


def stage_share(target: int, share: float) -> int:
    """Patients in a stage's share of a target, rounded half up (40 % of 286 -> 114)."""
    return int((Decimal(target) * to_decimal(share, "share")).to_integral_value("ROUND_HALF_UP"))


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
    version: int = FORMAT_VERSIONS[-1]
    measures: tuple[Measure, ...] = ()
    categories: tuple[CategoryChart, ...] = ()
    param_labels: dict[str, str] = field(default_factory=dict)  # parameter name -> label in the app
    examples: Examples = field(default_factory=Examples)
    enrollment: Enrollment = field(default_factory=Enrollment)

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

    def stage_name(self, stage: int) -> str:
        """ "Stage 1 (open-label)" or "Stage 3 · Part C (expansion)": the stage's name, numbered
        once (a name that already starts with "Stage 1" is kept; never "Stage 1: Stage 1 ...")."""
        name = str(self.stages.get(stage, "") or "").strip()
        if not name:
            return f"Stage {stage}"
        return name if re.match(rf"stage\s*{stage}\b", name, re.IGNORECASE) else f"Stage {stage} · {name}"

    def check_stage(self, stage, where: str = "--stage") -> int:
        """`stage` as one of this protocol's stage numbers, or raise naming them."""
        try:
            value = int(stage)
        except (TypeError, ValueError):
            value = None
        if value not in self.stages:
            known = ", ".join(f"{s} ({n})" for s, n in sorted(self.stages.items()))
            raise CriteriaError(f"{where} {stage}: {self.name} has stage(s) {known}")
        return value

    def param_label(self, name: str) -> str:
        """A parameter's label in the app: the file's `parameter_labels`, else its name spelled out."""
        return self.param_labels.get(name) or name.replace("_", " ").capitalize()


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
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CriteriaError(f"cannot read protocol file {path}: {err.strerror}") from None
    return build_protocol(parse_file(text, path.name), source=str(path))


def parse_file(text: str, name: str) -> dict:
    """A criteria file's YAML, refused unless it declares this format and a version we read."""
    try:
        # libyaml's safe loader when built in: the same documents, a tenth of the pure-Python time
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader
    except yaml.YAMLError as err:
        raise CriteriaError(f"{name} is not valid YAML: {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CriteriaError(f"{name} is not a criteria file: it must start with `format: {FORMAT}` and "
                            f"`version: {FORMAT_VERSIONS[-1]}` (docs/engine.md, criteria file format)")
    if doc.get("version") not in FORMAT_VERSIONS:
        raise CriteriaError(f"{name}: criteria file format version {doc.get('version')!r} is not one this "
                            f"program reads ({', '.join(map(str, FORMAT_VERSIONS))}); convert the file or "
                            "update the program")
    return doc


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
            raise CriteriaError(f"criterion ID {cid!r} must be capital letters, then digits (e.g. CRIT01)")
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
    protocol = Protocol(
        name=str(doc.get("protocol", "protocol")), title=str(doc.get("title", "")),
        registry=str(doc.get("registry", "")), stages=stages, derived=derived,
        criteria=tuple(criteria), source=source, split=split, windows=windows)
    return _declared(doc, protocol)


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


# -- what a file declares beyond its rules: measures, charts, labels, examples, target ---------


def _declared(doc: dict, protocol: Protocol) -> Protocol:
    """The protocol with the file's presentation sections, each checked against its rules."""
    from dataclasses import replace

    return replace(
        protocol, version=doc.get("version", FORMAT_VERSIONS[-1]),
        measures=tuple(_measure(m, protocol) for m in _items(doc, "measures")),
        categories=tuple(_category(c, protocol) for c in _items(doc, "categories")),
        param_labels=_param_labels(doc.get("parameter_labels") or {}, protocol),
        examples=_examples(doc.get("examples") or {}, protocol),
        enrollment=_enrollment(doc.get("enrollment")))


def _items(doc: dict, key: str) -> list[dict]:
    items = doc.get(key) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise CriteriaError(f"'{key}' must be a list of mappings (docs/engine.md, criteria file format)")
    return items


def _expression(sql, where: str, protocol: Protocol, params=()) -> str:
    """An SQL expression of the file's extra sections: parses, and names only dictionary
    columns, derived values and `params`."""
    if not isinstance(sql, str) or not sql.strip():
        raise CriteriaError(f"{where}: give the SQL expression as text")
    cols, used = names_in(parse_predicate(sql, where))
    unknown = sorted(c for c in cols if c not in schema.BY_NAME and c not in protocol.derived)
    if unknown:
        raise CriteriaError(f"{where}: {', '.join(unknown)} is neither a dictionary column nor a derived value")
    undeclared = sorted(used - set(params))
    if undeclared:
        raise CriteriaError(f"{where}: parameter(s) {', '.join(undeclared)} are not parameters of its rule")
    return sql


def _known_rule(rule_id, where: str, protocol: Protocol) -> Rule:
    try:
        return protocol.rule(str(rule_id))
    except CriteriaError as err:
        raise CriteriaError(f"{where}: {err}") from None


def _measure(m: dict, protocol: Protocol) -> Measure:
    key = str(m.get("key", ""))
    where = f"measure {key or '?'}"
    if not re.match(r"^[a-z][a-z0-9_]*$", key):
        raise CriteriaError(f"{where}: `key` must be a short lower-case name (e.g. age)")
    rule = _known_rule(m.get("rule"), where, protocol)
    limits = []
    for lim in m.get("limits") or []:
        if not isinstance(lim, dict) or lim.get("param") not in rule.params or "{v}" not in str(lim.get("label", "")):
            raise CriteriaError(f"{where}: each limit needs `param` (one of {rule.id}'s: "
                                f"{', '.join(rule.params) or 'none'}) and a `label` with {{v}} for its value")
        limits.append((str(lim["param"]), str(lim["label"])))
    if m.get("passes") not in PASSES:
        raise CriteriaError(f"{where}: `passes` must be ge (values at or above the limit pass) or le")
    if not isinstance(m.get("discrete", False), bool):
        raise CriteriaError(f"{where}: `discrete` must be true or false")
    return Measure(key, str(m.get("title") or key), str(m.get("unit", "")),
                   _expression(m.get("expression"), where, protocol, rule.params), rule.id, tuple(limits),
                   m["passes"], bool(m.get("discrete", False)))


def _category(c: dict, protocol: Protocol) -> CategoryChart:
    rule = _known_rule(c.get("rule"), "categories", protocol)
    where = f"categories of {rule.id}"
    groups = c.get("groups") or []
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise CriteriaError(f"{where}: list the `groups`, each with a `label` and a `when` condition")
    out = []
    for g in groups:
        label = str(g.get("label", "")).strip()
        if not label or label in (x for x, _ in out):
            raise CriteriaError(f"{where}: each group needs its own `label`")
        out.append((label, _expression(g.get("when"), f"{where}, group {label}", protocol)))
    return CategoryChart(rule.id, str(c.get("title") or rule.label), str(c.get("subtitle", "")), tuple(out))


def _param_labels(doc, protocol: Protocol) -> dict[str, str]:
    if not isinstance(doc, dict):
        raise CriteriaError("'parameter_labels' must map parameter names to labels")
    names = {n for r in protocol.rules for n in r.params}
    unknown = sorted(str(n) for n in doc if n not in names)
    if unknown:
        raise CriteriaError(f"parameter_labels: {', '.join(unknown)} is no rule's parameter")
    return {str(k): str(v) for k, v in doc.items()}


def _examples(doc, protocol: Protocol) -> Examples:
    if not isinstance(doc, dict):
        raise CriteriaError("'examples' must be a mapping with `filters` and / or `replace`")
    known = {c.id for c in protocol.criteria} | set(protocol.rule_ids())
    filters = []
    for f in doc.get("filters") or []:
        if not isinstance(f, dict) or f.get("status") not in FILTER_STATUSES or f.get("target") not in known:
            raise CriteriaError(f"examples.filters: {f!r}: each needs `status` (one of {', '.join(FILTER_STATUSES)}) "
                                "and `target` (a criterion or rule ID of the file)")
        filters.append((f["status"], f["target"]))
    rep = doc.get("replace")
    if rep is None:
        return Examples(tuple(filters))
    if not isinstance(rep, dict):
        raise CriteriaError("examples.replace needs `rule`, `sql`, `label` and `why`")
    rule = _known_rule(rep.get("rule"), "examples.replace", protocol)
    sql = _expression(rep.get("sql"), f"examples.replace {rule.id}", protocol, rule.params)
    return Examples(tuple(filters), (rule.id, sql.strip()), str(rep.get("label") or f"rewrite {rule.id}"),
                    " ".join(str(rep.get("why", "")).split()))


def _enrollment(doc) -> Enrollment:
    if doc is None:
        return Enrollment()
    target = doc.get("target") if isinstance(doc, dict) else None
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise CriteriaError("enrollment: `target` must be a whole number of patients (with `scope`, e.g. "
                            "whole study, and `source`)")
    return Enrollment(target, str(doc.get("scope", "")), str(doc.get("source", "")))
