"""`python -m kn026 report`: the feasibility report as Excel, HTML or PowerPoint.

    python -m kn026 report --cohort data/builtin_cohort.parquet --stage 1 \\
        [--protocol FILE] [--scenario FILE] [--order IDS] [--disable IDS] \\
        [--suppress-below 5|11|cms|0] [--approach 8.5] --out report.xlsx|.html|.pptx

Bad arguments exit with status 2 and a one-line message (kn026.cli.main.main).
"""

from __future__ import annotations

import sys
from pathlib import Path

from kn026.cli import options
from kn026.feasibility import report
from kn026.report import suppression


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("report", help="feasibility report (Excel, HTML or PowerPoint) with small-cell "
                                             "suppression")
    p.add_argument("--cohort", required=True, help="cohort file: CSV, Parquet or Excel")
    options.add_options(p)
    p.add_argument("--scenario", help="scenario YAML (threshold overrides, disabled criteria)")
    p.add_argument("--order", help="criterion IDs in funnel order, comma-separated")
    p.add_argument("--disable", help="criterion or sub-rule IDs to leave out, comma-separated")
    p.add_argument("--suppress-below", default=str(suppression.DEFAULT_THRESHOLD), metavar="N",
                   help="hide counts below N and the counts that would reveal them (default 5; 11 or 'cms' for "
                        "the CMS / PCORnet rule; 0 turns suppression off)")
    options.add_target_options(p)
    p.add_argument("--approach", type=float, default=100.0, metavar="PCT",
                   help="share of each site's candidates approached for this trial, in %% (recruitment "
                        "forecast; default 100)")
    p.add_argument("--out", required=True, help="output file: .xlsx, .html or .pptx")
    p.set_defaults(func=main_report)


def main_report(args) -> int:
    from kn026.cli.common import close_progress, engine_and_scenario, ids
    from kn026.core import analysis

    out = Path(args.out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in report.FORMATS:
        raise ValueError(f"--out {out} must end in .xlsx, .html or .pptx")
    if out.exists() and out.resolve() == Path(args.cohort).resolve():
        raise ValueError(f"--out {out} is the cohort file itself; the input is never overwritten")
    if not out.parent.exists():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist")
    k = suppression.threshold(args.suppress_below)
    if not 0 < args.approach <= 100:
        raise ValueError(f"--approach must be a percentage above 0 and at most 100, not {args.approach:g}")
    order = ids(args.order)
    twice = sorted({cid for cid in order if order.count(cid) > 1})
    if twice:
        raise ValueError(f"--order lists {', '.join(twice)} more than once; name each criterion once")
    engine, scenario = engine_and_scenario(args)
    target, target_text = options.target_for(args, engine.protocol, required=False)  # None: no forecast
    disabled = ids(args.disable)
    screened = analysis.engine_for(engine, scenario)
    known = {c.id for c in screened.protocol.criteria} | set(screened.protocol.rule_ids())
    for cid in disabled:
        if cid not in known:
            raise ValueError(f"--disable: unknown criterion ID {cid!r}; known: "
                             f"{', '.join(c.id for c in engine.protocol.criteria)}")
    if disabled:
        scenario = report.with_disabled(scenario, disabled)
    from kn026.forecast.recruitment import Plan

    settings = report.Settings(k=k, order=tuple(order), order_label="as given" if order else "",
                               recruitment=Plan(target=target, target_source=target_text,
                                                approach=args.approach / 100))
    rep = report.build(engine, scenario, settings, Path(args.cohort).name)
    data = report.render(rep, fmt)
    close_progress(getattr(args, "progress", None))
    out.write_bytes(data)
    hidden = rep.published.n_hidden
    print(f"{rep.title}: {len(rep.sections)} tables, "
          + (f"{hidden} cells suppressed (threshold {k}, {rep.published.seconds:.2f} s)" if k else "suppression off")
          + f" -> {out}", file=sys.stderr)
    return 0
