"""`python -m kn026 histogram`: screen one site's cohort (or read its `sql` result) and write the shareable histogram."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

from kn026.cli import options
from kn026.core import analysis
from kn026.core.scenario import Scenario, load_scenario
from kn026.scale.federated import FederatedError, export_histogram, write_histogram
from kn026.scale.portable import ROWS_VERSION, histogram_from_rows, mask_columns


def add_cli(subparsers) -> None:
    """Register ``histogram``: export one site's histogram."""
    p = subparsers.add_parser(
        "histogram", help="screen a cohort and write the shareable histogram (JSON, no patient rows)",
        description="Screen this site's cohort and write only the histogram of fail/unknown masks, "
                    "for a network feasibility merge. Either --cohort (screened here) or --rows (the "
                    "f,u,n result of `python -m kn026 sql` run in your own database).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cohort", help="cohort file: CSV, Parquet or Excel")
    src.add_argument("--rows", help="CSV with columns f0,..,u0,..,n: the result of the `sql` query")
    options.add_options(p)
    p.add_argument("--scenario", help="scenario YAML")
    p.add_argument("--site", required=True, help="this site's name as shown in the network funnel")
    p.add_argument("--out", required=True, help="output .json path")
    p.add_argument("--suppress-below", type=int, default=None, metavar="K",
                   help="drop rows with fewer than K patients, report their total only")
    p.add_argument("--columns", help="with --rows: the dictionary columns the query was made for "
                                     "(same as `sql --columns`; default all)")
    p.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb",
                   help="with --cohort: where to screen (spark needs a Parquet cohort)")
    p.add_argument("--spark-master", default="local[*]", help="Spark master URL for --engine spark")
    p.set_defaults(func=main_histogram)


def _read_rows_csv(path: str, words: int) -> list[tuple[int, ...]]:
    """Rows ``(f0, .., u0, .., n)`` of the exported query's result saved as CSV.

    The header names the result version: ``f0, .., u0, .., n`` is version 2 (this one);
    ``f, u, n`` was version 1 (one word) and is refused with what to do.
    """
    want = mask_columns(words) + ["n"]
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
            if {"f", "u", "n"} <= set(fields):
                raise FederatedError(
                    f"{path}: columns f, u, n are the result of the query of an older kn026 (rows version 1). "
                    f"Print the query again with `python -m kn026 sql` of this version (rows version "
                    f"{ROWS_VERSION}, columns {', '.join(want)}), run it and save its result.")
            missing = [c for c in want if c not in fields]
            if missing:
                raise FederatedError(
                    f"{path}: expected a header with columns {', '.join(want)} (the result of "
                    f"`python -m kn026 sql` for this protocol, stage, scenario and --columns); "
                    f"{', '.join(missing)} missing. Was the query made for other criteria?")
            extra = sorted(f for f in fields if re.fullmatch(r"[fu]\d+", f) and f not in want)
            if extra:
                raise FederatedError(f"{path}: columns {', '.join(extra)} are more mask words than this "
                                     f"protocol and scenario have ({', '.join(want)}); was the query made "
                                     "for other criteria?")
            return [tuple(int(r[fields[c]]) for c in want) for r in reader]
    except FederatedError:
        raise
    except OSError as err:
        raise FederatedError(f"cannot read {path}: {err.strerror}") from None
    except (TypeError, ValueError) as err:
        raise FederatedError(f"{path}: {', '.join(want)} must be whole numbers ({err})") from None


def main_histogram(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise ValueError(f"--out {out} must end in .json")
    protocol = options.for_args(args)  # --stage checked against its stages
    scenario = load_scenario(args.scenario, protocol) if args.scenario else Scenario()
    if args.rows:
        from kn026.scale.portable import screening

        scr = screening(protocol, args.stage, scenario,
                        None if args.columns is None else args.columns.split(","))
        try:
            hist = histogram_from_rows(_read_rows_csv(args.rows, scr.words))
        except ValueError as err:
            if isinstance(err, FederatedError):
                raise
            raise FederatedError(f"{args.rows}: {err}") from None
        meta = {"protocol": scr.protocol, "stage": args.stage, "not_assessable": scr.not_assessable,
                "engine": "sql"}
        doc = export_histogram(hist, meta, scenario, args.site, args.suppress_below)
    else:
        engine = None
        if args.engine == "spark":
            from kn026.cli.engines import engine_from_args

            engine = engine_from_args(args, protocol)
        if engine is None:
            from kn026.base.table import connect
            from kn026.core.engine import Engine

            con = connect()
            con.execute("SET enable_progress_bar = false")
            from kn026.cli.common import load_for

            engine = Engine(load_for(args, con), protocol, args.stage)  # progress on a terminal
        engine = analysis.engine_for(engine, scenario)  # with the scenario's custom criteria
        hist = engine.histogram(scenario.overrides)
        doc = export_histogram(hist, engine, scenario, args.site, args.suppress_below)
    write_histogram(out, doc)
    supp = doc["suppression"]
    note = f", {supp['suppressed']} patients in rows below {supp['below']} suppressed" if supp else ""
    print(f"site {doc['site']!r}: {doc['total']} patients screened for {doc['protocol']} stage "
          f"{doc['stage']} -> {len(doc['rows'])} histogram rows{note} -> {out}", file=sys.stderr)
    return 0
