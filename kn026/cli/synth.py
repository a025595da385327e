"""`python -m kn026 synth`: write a synthetic screening cohort (CSV or Parquet)."""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time

from kn026.ingest.synth import DEFAULT_MONTHS, DEFAULT_SITES, DEFAULT_START, write
from kn026.ingest.synth_sites import generate_sites


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register `synth` on an argparse subparsers object; handler in `args.func`."""
    p = subparsers.add_parser(
        "synth", help="write a synthetic KN026-001 screening cohort (CSV or Parquet)",
        description="Write a synthetic KN026-001 screening cohort. Same n, seed, sites, "
                    "start and months always give the same file content.")
    p.add_argument("--n", type=int, required=True, help="number of patients")
    p.add_argument("--seed", type=int, required=True, help="random seed (>= 0)")
    p.add_argument("--sites", type=int, default=DEFAULT_SITES, help="number of sites (50)")
    p.add_argument("--start", type=_dt.date.fromisoformat, default=DEFAULT_START,
                   help="accrual start, ISO date (2022-09-01)")
    p.add_argument("--months", type=int, default=DEFAULT_MONTHS, help="accrual months (36)")
    p.add_argument("--chunk-size", type=int, default=500_000, help="rows per written chunk")
    p.add_argument("--sites-out", default=None,
                   help="also write the site table (true rates) to this CSV")
    p.add_argument("--out", required=True, help="output path ending in .csv or .parquet")
    p.set_defaults(func=main_synth)
    return p


def main_synth(args) -> int:
    """Run the `synth` subcommand; returns the process exit code."""
    try:
        t0 = time.perf_counter()
        path = write(args.out, args.n, args.seed, args.sites, args.start, args.months,
                     chunk_size=getattr(args, "chunk_size", 500_000))
        if getattr(args, "sites_out", None):
            generate_sites(args.sites, args.seed, args.start, args.months, n=args.n).to_csv(
                args.sites_out, index=False)
    except (ValueError, OSError) as exc:
        print(f"synth: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.n} patients ({args.sites} sites, seed {args.seed}) to {path} "
          f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0
