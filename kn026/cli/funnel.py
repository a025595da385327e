"""`python -m kn026 funnel`: the screen-failure funnel and the per-criterion table (text or JSON)."""

from __future__ import annotations

import dataclasses
import json

from kn026.cli import engines
from kn026.cli.common import (
    add_common,
    assessability_warnings,
    close_progress,
    engine_and_scenario,
    ids,
    jsonable,
    print_tables,
)
from kn026.core import analysis


def add_cli(subparsers) -> None:
    """Register ``funnel``."""
    p = subparsers.add_parser("funnel", help="screen-failure funnel and per-criterion table")
    add_common(p)
    p.add_argument("--order", help="criterion IDs in funnel order, comma-separated")
    p.add_argument("--disable", help="criterion or sub-rule IDs to leave out, comma-separated")
    p.add_argument("--json", action="store_true", help="JSON output")
    engines.add_cli_engine_option(p)
    p.set_defaults(func=cmd_funnel)


def cmd_funnel(args) -> int:
    engine, scenario = engine_and_scenario(args)
    disabled = ids(args.disable)
    screened = analysis.engine_for(engine, scenario)  # the protocol with the scenario's custom criteria
    known = {c.id for c in screened.protocol.criteria} | set(screened.protocol.rule_ids())
    for cid in disabled:
        if cid not in known:
            raise ValueError(f"--disable: unknown criterion ID {cid!r}; known: "
                             f"{', '.join(c.id for c in engine.protocol.criteria)}")
    order = ids(args.order)
    twice = sorted({cid for cid in order if order.count(cid) > 1})
    if twice:
        raise ValueError(f"--order lists {', '.join(twice)} more than once; name each criterion once")
    scenario = dataclasses.replace(scenario, disabled=scenario.disabled | set(disabled))
    result = analysis.run(screened, scenario, order or None)
    na_rules = analysis.not_assessable_rules(screened)
    warnings = assessability_warnings(screened, scenario)
    close_progress(getattr(args, "progress", None))
    if args.json:
        doc = {
            "protocol": engine.protocol.name, "stage": args.stage, "scenario": scenario.name,
            "changes": scenario.changes(engine.protocol),
            "edits": [str(c) for c in getattr(engine.cohort, "changes", ()) if c.count],  # --on-bad-value
            "totals": result.totals,
            # rule ID -> absent columns (dictionary section 1: n/a only when no required set is present)
            "not_assessable": na_rules,
            "not_assessable_criteria": result.plan.not_assessable,
            "warnings": warnings,
            "disabled": list(result.plan.disabled),
            "funnel": result.funnel.to_dict(orient="records"),
            "criteria": result.stats.to_dict(orient="records"),
        }
        print(json.dumps(doc, indent=2, default=jsonable))
        return 0
    t = result.totals
    print(f"{engine.protocol.name} stage {args.stage}, scenario {scenario.name!r}: "
          f"{t['screened']} screened, {t['strict']} eligible (strict), "
          f"{t['optimistic']} eligible (optimistic), {t['unknown']} unknown")
    for rid in na_rules:
        needs = analysis.missing_text(screened.protocol.rule(rid), screened.stage, screened.cohort.present)
        print(f"  {rid}: n/a, left out (missing {needs})")
    for line in warnings:
        print(f"  warning: {line}")
    print_tables(result)
    return 0
