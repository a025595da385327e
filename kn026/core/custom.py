"""Analyst-written rules: custom criteria and replaced rule expressions, safely.

Text typed by an analyst is untrusted. It is allow-listed by kn026.rules.rulecheck (columns
of the loaded cohort, literals, declared parameters, a closed set of operators and
pure functions) before it becomes a Rule, and the engine compiles it with DOUBLE
arithmetic. The extended protocol keeps the original rules in their bit positions
and appends custom ones, so the engine reuses its pass over the patients and only
evaluates what changed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from kn026.base import schema
from kn026.core.criteria import (
    KINDS,
    CriteriaError,
    Criterion,
    Param,
    Protocol,
    Rule,
    format_number,
    to_decimal,
)
from kn026.rules import rulecheck

_CUSTOM_ID = re.compile(r"^[A-Z][A-Z0-9_]{1,15}$")
_BRACED = re.compile(r"\{(\w+)\}")
_DOLLAR = re.compile(r"\$([a-z_][a-z0-9_]*)")
_PARAM_LINE = re.compile(r"^(?P<name>[A-Za-z_]\w*)\s*[=:]\s*(?P<value>[-+]?(\d+(\.\d*)?|\.\d+))(\s+(?P<unit>.*))?$")


@dataclass(frozen=True)
class CustomRule:
    """An analyst's new criterion: ID, kind, text, SQL boolean expression, parameters."""

    id: str
    kind: str
    text: str
    sql: str
    params: dict[str, dict] = field(default_factory=dict)  # name -> {default, unit, min, max}

    def to_doc(self) -> dict:
        doc = {"id": self.id, "kind": self.kind, "text": self.text, "sql": self.sql}
        if self.params:
            doc["params"] = self.params
        return doc


def column_kinds(cohort, protocol: Protocol) -> dict[str, str]:
    """Names an analyst may use: present dictionary columns, derived values, extra columns."""
    kinds = rulecheck.dictionary_kinds(cohort.present, numbers=protocol.derived)
    if cohort.extra:
        types = dict(cohort.con.execute(
            f"SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = '{cohort.table}'"
        ).fetchall())
        for name in cohort.extra:
            if rulecheck.NAME.match(name) and name not in kinds:
                typ = str(types.get(name, "VARCHAR")).upper()
                kinds[name] = ("flag" if typ == "BOOLEAN" else
                               "text" if typ.startswith("VARCHAR") else
                               "date" if typ.startswith(("DATE", "TIMESTAMP")) else "number")
    return kinds


def custom_params(rule: CustomRule) -> dict[str, Param]:
    """The declared parameters of a custom criterion, validated."""
    return _params(rule.params, rule.id)


def _params(spec: dict, where: str) -> dict[str, Param]:
    out = {}
    for name, p in (spec or {}).items():
        p = p if isinstance(p, dict) else {"default": p}
        low = to_decimal(p["min"], f"{where}.{name}") if "min" in p else None
        high = to_decimal(p["max"], f"{where}.{name}") if "max" in p else None
        param = Param(str(name), to_decimal(p.get("default"), f"{where}.{name}"), str(p.get("unit", "")),
                      low, high)
        param.check(param.default, where)
        out[str(name)] = param
    return out


def _base_columns(checked, protocol: Protocol) -> frozenset[str]:
    cols = set()
    for name in checked.columns:
        if name in protocol.derived:
            from kn026.core.criteria import names_in, parse_predicate

            cols |= names_in(parse_predicate(protocol.derived[name].sql, name))[0]
        else:
            cols.add(name)
    return frozenset(c for c in cols if c in schema.BY_NAME)


def build_custom(custom: CustomRule, cohort, protocol: Protocol, stages) -> Rule:
    """Validate an analyst's criterion and make it a Rule (raises RuleError / CriteriaError)."""
    if not _CUSTOM_ID.match(custom.id):
        raise CriteriaError(f"custom criterion ID {custom.id!r}: use 2-16 capital letters, digits "
                            "or _, starting with a letter (for example CUST01)")
    if custom.id in {c.id for c in protocol.criteria} | set(protocol.rule_ids()):
        raise CriteriaError(f"custom criterion ID {custom.id!r} is already a protocol ID; pick another")
    if custom.kind not in KINDS:
        raise CriteriaError(f"{custom.id}: kind must be inclusion or exclusion, not {custom.kind!r}")
    params = _params(custom.params, custom.id)
    checked = rulecheck.check_expression(custom.sql, column_kinds(cohort, protocol),
                                         {n: p.default for n, p in params.items()})
    cols = _base_columns(checked, protocol)
    stages = tuple(stages)
    text = " ".join(custom.text.split()) or custom.id
    template = sql_template(checked.sql, params)
    # only present columns pass the allow-list, so a custom rule requires every column it reads
    return Rule(custom.id, custom.id, custom.kind, text, {s: checked.sql for s in stages},
                {s: template for s in stages}, params, {s: cols for s in stages},
                {s: (cols,) for s in stages})


def replace_rule(rule: Rule, sql: str, cohort, protocol: Protocol) -> Rule:
    """The rule with an analyst-written expression (same ID, parameters and stages).

    It keeps the protocol rule's `requires`: whether a rule is assessable depends on the
    cohort's columns alone, never on a scenario (dictionary section 1).
    """
    checked = rulecheck.check_expression(sql, column_kinds(cohort, protocol), rule.defaults())
    cols = _base_columns(checked, protocol)
    template = "rewritten: " + sql_template(checked.sql, rule.params)
    return dataclasses.replace(
        rule, sql={s: checked.sql for s in rule.stages}, template={s: template for s in rule.stages},
        columns={s: cols for s in rule.stages})


def sql_template(sql: str, params) -> str:
    """A readable template of checked SQL: `$name` becomes `{name}` so the rule reads with
    the current values; any other `{word}` (inside quoted text) loses its braces, since
    `Rule.readable` would take it for an undeclared parameter."""
    text = _BRACED.sub(lambda m: m.group(1), sql)
    return _DOLLAR.sub(lambda m: "{" + m.group(1) + "}" if m.group(1) in params else m.group(0), text)


def extend(protocol: Protocol, cohort, custom: list[CustomRule] = (),
           replaced: dict[str, str] | None = None) -> tuple[Protocol, frozenset[str]]:
    """The protocol with replaced expressions and custom criteria appended; and the changed IDs."""
    replaced = replaced or {}
    changed = set()
    criteria = []
    for crit in protocol.criteria:
        rules = []
        for rule in crit.rules:
            if rule.id in replaced:
                rule = replace_rule(rule, replaced[rule.id], cohort, protocol)
                changed.add(rule.id)
            rules.append(rule)
        criteria.append(dataclasses.replace(crit, rules=tuple(rules)))
    unknown = set(replaced) - set(protocol.rule_ids())
    if unknown:
        raise CriteriaError(f"cannot replace unknown rule(s) {sorted(unknown)}")
    seen = set()
    for c in custom:
        if c.id in seen:
            raise CriteriaError(f"custom criterion ID {c.id} is used twice")
        seen.add(c.id)
        rule = build_custom(c, cohort, protocol, protocol.stages)
        criteria.append(Criterion(c.id, c.kind, rule.label, (rule,)))
        changed.add(c.id)
    return dataclasses.replace(protocol, criteria=tuple(criteria)), frozenset(changed)


# -- helpers for editing rules in the app (pure; the app lays them out) -----------------------

MAX_PARAMS = 10

# A worked example the editor offers: a criterion the protocol does not have (an upper age
# limit). The rewrite example is the protocol file's (`examples: replace:`, Protocol.examples).
EXAMPLE_CUSTOM = CustomRule("CUST01", "exclusion", "Older than 75 years at screening (upper age limit)",
                            "age_years <= :max_age", {"max_age": {"default": 75, "unit": "years"}})


def parse_params(text: str) -> dict[str, dict]:
    """Parameters typed one per line as `name = value [unit]` -> `CustomRule.params`.

    A named threshold (`max_age = 75 years`, used as `:max_age`) can later be tuned with
    the same number box as a protocol threshold instead of by editing the SQL. Raises
    CriteriaError naming the line.
    """
    out: dict[str, dict] = {}
    for i, raw in enumerate(str(text or "").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        m = _PARAM_LINE.match(line)
        if not m:
            raise CriteriaError(f"parameter line {i} ({line[:40]!r}): write name = value [unit], "
                                "for example: max_age = 75 years")
        name = m["name"]
        if not rulecheck.NAME.match(name):
            raise CriteriaError(f"parameter line {i}: {name!r} must be lower case letters, digits or _")
        if name in out:
            raise CriteriaError(f"parameter line {i}: {name} is declared twice")
        unit = " ".join((m["unit"] or "").split())
        if len(unit) > 24 or any(not ch.isprintable() for ch in unit):
            raise CriteriaError(f"parameter line {i}: the unit {unit[:30]!r} is too long or not printable")
        value = to_decimal(m["value"], name)
        if abs(value) > rulecheck.MAX_PARAM_ABS:
            raise CriteriaError(f"parameter line {i}: {name} = {m['value']} is too large")
        plain = format_number(value)
        out[name] = {"default": int(plain) if "." not in plain else float(plain)}
        if unit:
            out[name]["unit"] = unit
    if len(out) > MAX_PARAMS:
        raise CriteriaError(f"{len(out)} parameters: at most {MAX_PARAMS} per criterion")
    return out


def format_params(params: dict[str, dict]) -> str:
    """`CustomRule.params` as the editor's lines (`name = value unit`), the inverse of parse_params."""
    lines = []
    for name, spec in (params or {}).items():
        spec = spec if isinstance(spec, dict) else {"default": spec}
        unit = str(spec.get("unit", "") or "")
        lines.append(f"{name} = {format_number(to_decimal(spec.get('default'), name))}" + (f" {unit}" if unit else ""))
    return "\n".join(lines)


def next_id(taken, prefix: str = "CUST") -> str:
    """The first free custom criterion ID (CUST01, CUST02, ...)."""
    taken = set(taken)
    i = 1
    while f"{prefix}{i:02d}" in taken:
        i += 1
    return f"{prefix}{i:02d}"


def expression_for_edit(protocol: Protocol, replaced: dict[str, str], rule_id: str, stage: int) -> str:
    """The expression to prefill when rewriting a rule: the scenario's rewrite, else the
    protocol's SQL at `stage` (parameters as `:name`, which the editor accepts)."""
    if rule_id in (replaced or {}):
        return replaced[rule_id]
    rule = protocol.rule(rule_id)
    return rule.sql.get(stage) or next(iter(rule.sql.values()))


def unused_params(rule: Rule, stage: int, protocol: Protocol) -> list[str]:
    """Parameters of `rule` its expression no longer mentions (a rewrite with literal
    limits): their number boxes would change nothing, so the app says so."""
    from kn026.core.criteria import names_in, parse_predicate

    sql = rule.sql.get(stage) or next(iter(rule.sql.values()))
    cols, used = names_in(parse_predicate(sql, rule.id))
    for name in cols & set(protocol.derived):
        used |= names_in(parse_predicate(protocol.derived[name].sql, name))[1]
    return [p for p in rule.params if p not in used]


def column_help(cohort, protocol: Protocol) -> list[dict]:
    """The names a rule may use on this cohort, with kind, unit and meaning (for the help)."""
    rows = []
    for name, kind in sorted(column_kinds(cohort, protocol).items()):
        col = schema.BY_NAME.get(name)
        if col is not None:
            meaning = col.description
            if col.values:
                meaning = (meaning + "; " if meaning else "") + "values " + ", ".join(f"'{v}'" for v in col.values)
            rows.append({"name": name, "kind": kind, "unit": col.unit, "meaning": meaning})
        elif name in protocol.derived:
            rows.append({"name": name, "kind": "number (derived)", "unit": "",
                         "meaning": protocol.derived[name].label})
        else:
            rows.append({"name": name, "kind": kind, "unit": "", "meaning": "extra column of the uploaded file"})
    return rows
