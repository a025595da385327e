"""Criteria files: the shipped ones, one named on the command line, and an uploaded one.

A protocol is data (`kn026/protocols/*.yaml`, docs/engine.md "Criteria file format"), so
every command and the app pick one by name or path, and take their stages from it.
An uploaded file is untrusted: every SQL expression in it (rules, derived values,
measures, category groups, the rewrite example) goes through the same allow-list as
an analyst's rule (kn026.rulecheck) before the file is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kn026 import rulecheck, schema
from kn026.criteria import (
    DEFAULT_PROTOCOL,
    PROTOCOL_DIR,
    CriteriaError,
    Protocol,
    build_protocol,
    load_protocol,
    parse_file,
    stage_share,
)

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


# -- the command line -------------------------------------------------------------------------


def add_options(p, stage: bool = True) -> None:
    """--protocol (and --stage, checked against that protocol's stages once it is loaded)."""
    p.add_argument("--protocol", metavar="NAME|PATH",
                   help="criteria file: a path, or a name in kn026/protocols (default kn026_001, KN026-001)")
    if stage:
        p.add_argument("--stage", type=int, required=True,
                       help="protocol stage: a stage number of the criteria file (KN026-001: 1 or 2)")


def for_args(args) -> Protocol:
    """The command's protocol, with `args.stage` (when the command has one) checked against it."""
    protocol = load(getattr(args, "protocol", None))
    if getattr(args, "stage", None) is not None:
        protocol.check_stage(args.stage)
    return protocol


def add_target_options(p) -> None:
    """--target / --share: the enrolment target of the stage forecast (see `target_for`)."""
    p.add_argument("--target", type=int, metavar="N",
                   help="patients to enrol in this stage (default: the protocol file's enrolment target)")
    p.add_argument("--share", type=float, metavar="PCT",
                   help="this stage's share of the protocol file's enrolment target, in %% (KN026-001: 286 "
                        "for the whole study, no split between stages is assumed; default 100)")


def target_for(args, protocol: Protocol, required: bool = True) -> tuple[int | None, str]:
    """The enrolment target a command uses and the sentence saying which figure it is
    (`(None, "")` when not `required`, the file declares none and none is given)."""
    target, share = getattr(args, "target", None), getattr(args, "share", None)
    declared = protocol.enrollment
    if target is not None and share is not None:
        raise ValueError("give --target (patients) or --share (percent of the protocol's target), not both")
    if target is not None:
        if target < 0:
            raise ValueError(f"--target must be a whole number of patients >= 0, not {target}")
        return target, f"{target} patients (given with --target)"
    if declared.target is None and not required and share is None:
        return None, ""
    if declared.target is None:
        raise ValueError(f"{protocol.name}'s criteria file declares no enrolment target (`enrollment:`); "
                         "give --target N")
    if share is None:
        return declared.target, declared.text()
    if not 0 < share <= 100:
        raise ValueError(f"--share must be a percentage above 0 and at most 100, not {share:g}")
    return stage_share(declared.target, share / 100), declared.text(share / 100)


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
    """Every SQL expression of the document through the analyst allow-list (kn026.rulecheck)."""
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
