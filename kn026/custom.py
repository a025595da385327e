"""Analyst-written rules: custom criteria and replaced rule expressions, safely.

Text typed by an analyst is untrusted. It is allow-listed by kn026.rulecheck (columns
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

from kn026 import rulecheck, schema
from kn026.criteria import KINDS, CriteriaError, Criterion, Param, Protocol, Rule, to_decimal

_CUSTOM_ID = re.compile(r"^[A-Z][A-Z0-9_]{1,15}$")


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
            from kn026.criteria import names_in, parse_predicate

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
    return Rule(custom.id, custom.id, custom.kind, text, {s: checked.sql for s in stages},
                {s: text for s in stages}, params, {s: cols for s in stages})


def replace_rule(rule: Rule, sql: str, cohort, protocol: Protocol) -> Rule:
    """The rule with an analyst-written expression (same ID, parameters and stages)."""
    checked = rulecheck.check_expression(sql, column_kinds(cohort, protocol), rule.defaults())
    cols = _base_columns(checked, protocol)
    return dataclasses.replace(
        rule, sql={s: checked.sql for s in rule.stages},
        template={s: f"{rule.readable(s)} (rewritten: {checked.sql})" for s in rule.stages},
        columns={s: cols for s in rule.stages})


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
    total = sum(len(c.rules) for c in criteria)
    if total > 64:
        raise CriteriaError(f"{total} rules: at most 64 fit the engine's masks "
                            f"({64 - len(protocol.rules)} custom rules for this protocol)")
    return dataclasses.replace(protocol, criteria=tuple(criteria)), frozenset(changed)
