"""Scenarios: named what-if changes to a protocol, saved as a small YAML file.

A scenario holds parameter overrides (rule ID -> {parameter: value}), disabled
criteria or sub-rules, optionally a funnel order, and analyst-written rules: custom
criteria and replaced rule expressions (validated by kn026.core.custom against the loaded
cohort when the scenario is screened). It never changes the
protocol file; comparing it with the protocol defaults is what the app shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import yaml

from kn026.core.criteria import CriteriaError, Param, Protocol, format_number
from kn026.core.custom import CustomRule, custom_params


@dataclass(frozen=True)
class Scenario:
    """A named set of threshold overrides and disabled criteria (empty = the protocol)."""

    name: str = "Protocol"
    description: str = ""
    overrides: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    disabled: frozenset[str] = frozenset()
    order: tuple[str, ...] = ()
    custom: tuple[CustomRule, ...] = ()
    replace: dict[str, str] = field(default_factory=dict)

    @property
    def is_protocol(self) -> bool:
        return not self.overrides and not self.disabled and not self.custom and not self.replace

    def rule_params(self, protocol: Protocol, rid: str) -> dict[str, Param]:
        """The parameters of a protocol rule or of one of this scenario's custom criteria."""
        for c in self.custom:
            if c.id == rid:
                return custom_params(c)
        return protocol.rule(rid).params

    def validate(self, protocol: Protocol) -> Scenario:
        """Check every ID and value against the protocol; return the scenario with exact values."""
        custom_ids = [c.id for c in self.custom]
        if len(set(custom_ids)) != len(custom_ids):
            raise CriteriaError(f"scenario {self.name!r}: a custom criterion ID is used twice")
        for rid in self.replace:
            protocol.rule(rid)
        overrides = {}
        for rid, values in self.overrides.items():
            params = self.rule_params(protocol, rid)
            if not isinstance(values, dict):
                raise CriteriaError(f"scenario {self.name!r}: {rid} needs a mapping of parameter: value")
            checked = {}
            for pname, value in values.items():
                if pname not in params:
                    raise CriteriaError(
                        f"scenario {self.name!r}: {rid} has no parameter {pname!r}; "
                        f"its parameters: {', '.join(params) or 'none'}")
                checked[pname] = params[pname].check(value, rid)
            overrides[rid] = checked
        criteria = {c.id for c in protocol.criteria} | set(custom_ids)
        known = criteria | set(protocol.rule_ids())
        for cid in self.disabled | set(self.order):
            if cid in protocol.split and cid not in known:
                raise CriteriaError(f"scenario {self.name!r}: {protocol.split_message(cid)}")
            if cid not in known:
                raise CriteriaError(f"scenario {self.name!r}: unknown criterion ID {cid!r}")
        for cid in self.order:  # the funnel orders whole criteria, each once
            if cid not in criteria:
                raise CriteriaError(f"scenario {self.name!r}: 'order' lists criteria, not sub-rules; "
                                    f"use {cid.split('.')[0]} instead of {cid}")
        if len(set(self.order)) != len(self.order):
            twice = sorted({cid for cid in self.order if self.order.count(cid) > 1})
            raise CriteriaError(f"scenario {self.name!r}: 'order' lists {', '.join(twice)} more than once")
        return Scenario(self.name, self.description, overrides, frozenset(self.disabled), tuple(self.order),
                        tuple(self.custom), dict(self.replace))

    def changes(self, protocol: Protocol) -> list[str]:
        """Readable list of what differs from the protocol."""
        out = []
        for rid, values in sorted(self.overrides.items()):
            params = self.rule_params(protocol, rid)
            for pname, value in values.items():
                default = params[pname].default
                if value != default:
                    out.append(f"{rid} {pname}: {format_number(default)} -> {format_number(value)} "
                               f"{params[pname].unit}".rstrip())
        out += [f"{rid} rewritten: {' '.join(sql.split())}" for rid, sql in sorted(self.replace.items())]
        out += [f"{c.id} added ({c.kind}): {' '.join(c.sql.split())}" for c in self.custom]
        out += [f"{cid} disabled" for cid in sorted(self.disabled)]
        return out

    def to_yaml(self, protocol: Protocol | None = None) -> str:
        doc = {"scenario": self.name}
        if protocol is not None:
            doc["protocol"] = protocol.name
        if self.description:
            doc["description"] = self.description
        doc["parameters"] = {rid: {p: _plain(v) for p, v in vals.items()}
                             for rid, vals in sorted(self.overrides.items())}
        doc["disabled"] = sorted(self.disabled)
        if self.order:
            doc["order"] = list(self.order)
        if self.replace:
            doc["replace"] = dict(sorted(self.replace.items()))
        if self.custom:
            doc["custom"] = [c.to_doc() for c in self.custom]
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        if yaml.safe_load(text) != doc:  # e.g. U+0085 or U+2028 in a name read back as a line break
            text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=False)
        return text


def _plain(value: Decimal):
    """A YAML-friendly exact number: int when whole, else float from its shortest text."""
    text = format_number(value)
    return int(text) if "." not in text else float(text)


def parse_scenario(text: str, protocol: Protocol, source: str = "scenario") -> Scenario:
    """Parse and validate scenario YAML text."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CriteriaError(f"{source} is not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise CriteriaError(f"{source}: expected a mapping with 'scenario', 'parameters', 'disabled'")
    allowed = {"scenario", "protocol", "description", "parameters", "disabled", "order", "custom", "replace"}
    extra = set(doc) - allowed
    if extra:
        raise CriteriaError(f"{source}: unknown key(s) {sorted(extra)}; allowed: {sorted(allowed)}")
    if doc.get("protocol") not in (None, protocol.name):
        raise CriteriaError(f"{source} is for protocol {doc['protocol']!r}, not {protocol.name!r}")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise CriteriaError(f"{source}: 'parameters' must map rule IDs to parameter values")
    disabled = doc.get("disabled") or []
    order = doc.get("order") or []
    if not isinstance(disabled, list) or not isinstance(order, list):
        raise CriteriaError(f"{source}: 'disabled' and 'order' must be lists of criterion IDs")
    replace = doc.get("replace") or {}
    if not isinstance(replace, dict) or not all(isinstance(v, str) for v in replace.values()):
        raise CriteriaError(f"{source}: 'replace' must map rule IDs to SQL expressions")
    customs = doc.get("custom") or []
    if not isinstance(customs, list) or not all(isinstance(c, dict) for c in customs):
        raise CriteriaError(f"{source}: 'custom' must be a list of criteria with id, kind, text, sql")
    custom = []
    for c in customs:
        unknown = set(c) - {"id", "kind", "text", "sql", "params"}
        if unknown or not {"id", "kind", "sql"} <= set(c):
            raise CriteriaError(f"{source}: each custom criterion needs id, kind and sql "
                                f"(and may have text, params); got {sorted(c)}")
        custom.append(CustomRule(str(c["id"]), str(c["kind"]), str(c.get("text", "")), str(c["sql"]),
                                 dict(c.get("params") or {})))
    scen = Scenario(str(doc.get("scenario") or Path(source).stem), str(doc.get("description") or ""),
                    {str(k): v for k, v in params.items()}, frozenset(map(str, disabled)),
                    tuple(map(str, order)), tuple(custom), {str(k): v for k, v in replace.items()})
    return scen.validate(protocol)


def load_scenario(path: str | Path, protocol: Protocol) -> Scenario:
    """Read a scenario YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CriteriaError(f"cannot read scenario file {path}: {err.strerror}") from None
    return parse_scenario(text, protocol, source=path.name)
