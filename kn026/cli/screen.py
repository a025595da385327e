"""`python -m kn026 screen`: the per-patient screening log as CSV."""

from __future__ import annotations

import sys
from pathlib import Path

from kn026.cli.common import add_common, close_progress, engine_and_scenario
from kn026.core import analysis


def add_cli(subparsers) -> None:
    """Register ``screen``."""
    p = subparsers.add_parser("screen", help="per-patient screening log (CSV)")
    add_common(p)
    p.add_argument("--out", required=True, help="output CSV path")
    p.set_defaults(func=cmd_screen)


def cmd_screen(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise ValueError(f"--out {out} must end in .csv")
    if out.resolve() == Path(args.cohort).resolve():
        raise ValueError(f"--out {out} is the cohort file itself; the input is never overwritten, "
                         "choose another path")
    engine, scenario = engine_and_scenario(args)
    sql = analysis.screen_log_sql(engine, scenario)
    frame = engine.con.execute(sql).df()
    close_progress(getattr(args, "progress", None))
    frame.to_csv(out, index=False)
    counts = frame["eligible"].value_counts().to_dict()
    print(f"{len(frame)} patients screened for stage {args.stage}: "
          f"{counts.get('yes', 0)} eligible, {counts.get('unknown', 0)} unknown, "
          f"{counts.get('no', 0)} not eligible -> {out}", file=sys.stderr)
    return 0
