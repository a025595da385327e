"""Criteria files: the shipped ones, one named on the command line, and an uploaded one.

A protocol is data (`kn026/protocols/*.yaml`, docs/engine.md "Criteria file format"), so
every command and the app pick one by name or path, and take their stages from it.
An uploaded file is untrusted: every SQL expression in it (rules, derived values,
measures, category groups, the rewrite example) goes through the same allow-list as
an analyst's rule (kn026.rules.rulecheck) before the file is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kn026.base import schema
from kn026.core.criteria import (
    DEFAULT_PROTOCOL,
    PROTOCOL_DIR,
    CriteriaError,
    Protocol,
    build_protocol,
    load_protocol,
    parse_file,
)
from kn026.rules import rulecheck

MAX_UPLOAD_BYTES = 1_000_000  # a criteria file is a few tens of kilobytes


@dataclass(frozen=True)
class Shipped:
    """A criteria file in kn026/protocols: its name (file stem), protocol ID and title."""

    name: str
    protocol: str
    title: str
    path: Path


def shipped() -> list[Shipped]:
    """The criteria files shipped in kn026/protocols, the default first (for a picker)."""
    out = []
    for path in sorted(PROTOCOL_DIR.glob("*.yaml"), key=lambda p: (p != DEFAULT_PROTOCOL, p.name)):
        p = load_protocol(path)
        out.append(Shipped(path.stem, p.name, p.title, path))
    return out


def resolve(name_or_path: str | Path | None) -> Path:
    """The file a --protocol value names: a path, or a name in kn026/protocols (default: KN026-001)."""
    if not name_or_path:
        return DEFAULT_PROTOCOL
    path = Path(name_or_path)
    if path.suffix.lower() in (".yaml", ".yml") or path.exists():
        return path
    candidate = PROTOCOL_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    names = ", ".join(p.stem for p in sorted(PROTOCOL_DIR.glob("*.yaml")))
    raise CriteriaError(f"--protocol {name_or_path}: no such file, and no criteria file of that name in "
                        f"kn026/protocols ({names}); give a path to a .yaml file or one of those names")


def load(name_or_path: str | Path | None) -> Protocol:
    """The protocol a --protocol value names (see `resolve`)."""
    return load_protocol(resolve(name_or_path))


# -- an uploaded file -----------------------------------------------------------------------


def from_upload(data: bytes | str, name: str = "uploaded file") -> Protocol:
    """A protocol from an uploaded YAML file, every SQL expression allow-listed first.

    Raises CriteriaError naming the file, the rule (or section) and the problem.
    """
    if isinstance(data, bytes):
        if len(data) > MAX_UPLOAD_BYTES:
            raise CriteriaError(f"{name}: {len(data):,} bytes is too large for a criteria file "
                                f"(at most {MAX_UPLOAD_BYTES:,})")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CriteriaError(f"{name}: not UTF-8 text; save the criteria file as UTF-8") from None
    doc = parse_file(data, name)
    if not isinstance(doc.get("criteria"), list):
        raise CriteriaError(f"{name}: a criteria file needs a `criteria:` list")
    _check_sql(doc, name)
    protocol = build_protocol(doc, source=f"upload:{name}")
    return protocol


def untrusted_rules(protocol: Protocol) -> frozenset[str]:
    """Rule IDs an engine must run as untrusted (`Engine(..., untrusted=...)`: arithmetic in
    DOUBLE, as for analyst rules): every rule of an uploaded protocol, none of a shipped one."""
    return frozenset(protocol.rule_ids()) if protocol.source.startswith("upload:") else frozenset()


def _check_sql(doc: dict, name: str) -> None:
    """Every SQL expression of the document through the analyst allow-list (kn026.rules.rulecheck)."""
    derived = doc.get("derived") or {}
    if not isinstance(derived, dict):
        raise CriteriaError(f"{name}: 'derived' must map names to SQL expressions")
    kinds = rulecheck.dictionary_kinds(schema.BY_NAME, numbers=[str(n) for n in derived])
    params = set()
    for c in doc["criteria"]:
        for r in (c.get("rules") or []) if isinstance(c, dict) else []:
            if isinstance(r, dict) and isinstance(r.get("params"), dict):
                params |= {str(p) for p in r["params"]}
    for dname, spec in derived.items():
        sql = spec.get("sql") if isinstance(spec, dict) else spec
        _allowed(sql, f"derived {dname}", kinds, params, name, value=True)
    for c in doc["criteria"]:
        for r in (c.get("rules") or []) if isinstance(c, dict) else []:
            if not isinstance(r, dict):
                continue
            rid = r.get("id", c.get("id"))
            own = set(r["params"]) if isinstance(r.get("params"), dict) else set()
            sqls = r.get("sql")
            for stage, sql in (sqls.items() if isinstance(sqls, dict) else [(None, sqls)]):
                _allowed(sql, f"rule {rid}" + (f" (stage {stage})" if stage is not None else ""), kinds, own, name)
    for m in doc.get("measures") or []:
        if isinstance(m, dict):
            _allowed(m.get("expression"), f"measure {m.get('key')}", kinds, params, name, value=True)
    for chart in doc.get("categories") or []:
        for g in (chart.get("groups") or []) if isinstance(chart, dict) else []:
            if isinstance(g, dict):
                _allowed(g.get("when"), f"categories of {chart.get('rule')}, group {g.get('label')}", kinds, (), name)
    rep = (doc.get("examples") or {}).get("replace") if isinstance(doc.get("examples"), dict) else None
    if isinstance(rep, dict):
        _allowed(rep.get("sql"), f"examples.replace {rep.get('rule')}", kinds, params, name)


def _allowed(sql, where: str, kinds: dict, params, name: str, value: bool = False) -> None:
    """Raise unless `sql` passes the allow-list; a `value` (derived value, measure) is checked
    as the condition `(sql) IS NULL`, so the same grammar applies to a number."""
    if not isinstance(sql, str):
        raise CriteriaError(f"{name}, {where}: the SQL must be text")
    try:
        rulecheck.check_expression(f"({sql}) IS NULL" if value else sql, kinds, params)
    except rulecheck.RuleError as err:
        message = err.message
        if value:  # positions in the file's text, not in the wrapped condition
            message = re.sub(r"\(position (\d+)\)", lambda m: f"(position {int(m.group(1)) - 1})", message)
        raise CriteriaError(f"{name}, {where}: {message}") from None
