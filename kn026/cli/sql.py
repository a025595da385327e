"""`python -m kn026 sql`: print the screening histogram query for another SQL engine."""

from __future__ import annotations

import argparse

from kn026.cli import options
from kn026.core.scenario import Scenario, load_scenario
from kn026.scale.portable import DIALECTS, _present, screening


def _columns_arg(text: str | None) -> frozenset[str] | None:
    if text is None:
        return None
    return _present(t for t in text.split(","))


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register ``sql``: print the histogram query for a dialect."""
    p = subparsers.add_parser(
        "sql", help="print the screening histogram query for Spark, PostgreSQL, BigQuery, ...",
        description="Print the screening query (rules -> per-patient masks -> histogram) for a SQL "
                    "engine, so it runs where the data lives and only the histogram comes back.")
    options.add_options(p)
    p.add_argument("--dialect", choices=DIALECTS, required=True, help="target SQL dialect")
    p.add_argument("--scenario", help="scenario YAML (threshold overrides)")
    p.add_argument("--table", default="cohort", help="table or view holding the cohort (default: cohort)")
    p.add_argument("--by-site", action="store_true", help="group by site_id too")
    p.add_argument("--columns", help="the table's dictionary columns, comma-separated (default: all)")
    p.add_argument("--pretty", action="store_true", help="indent the SQL")
    p.add_argument("--no-header", action="store_true", help="omit the comment header")
    p.set_defaults(func=main_sql)
    return p


def main_sql(args) -> int:
    protocol = options.for_args(args)  # --stage checked against its stages
    scenario = load_scenario(args.scenario, protocol) if args.scenario else Scenario()
    scr = screening(protocol, args.stage, scenario, _columns_arg(args.columns))
    text = scr.sql(args.dialect, args.table, args.by_site, args.pretty)
    if not args.no_header:
        text = scr.header(args.dialect) + "\n" + text
    print(text.rstrip() + ";")
    return 0
