"""`python -m kn026 import`: a mapped CSV / Excel / Parquet file, an OMOP CDM or an SDTM study, to a cohort file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kn026.cli import options
from kn026.ingest import date_formats, mapped, omop, sdtm
from kn026.ingest.cohort import load_cohort
from kn026.ingest.mapping import Mapping, read_table, suggest_mapping, value_report
from kn026.ingest.problems import CohortError


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register `import` on an argparse subparsers object (python -m kn026 import ...)."""
    p = subparsers.add_parser(
        "import", help="import a cohort: a CSV / Excel file through a mapping, an OMOP CDM or an SDTM study",
        description="Write a screening cohort (CSV or Parquet, by --out suffix) from a file and a column "
                    "mapping (--mapping FILE --in PATH), from an OMOP CDM folder / zip / DuckDB file "
                    "(--omop PATH --index-date DATE|last), from a CDISC SDTM study (--sdtm DIR "
                    "[--index-date first-dose|screening|DATE]), or write a suggested mapping for a file "
                    "(--suggest FILE --in PATH).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--mapping", help="mapping YAML (see docs/importers.md)")
    src.add_argument("--omop", help="OMOP CDM 5.3 / 5.4: folder or zip of CSV / Parquet tables, or a DuckDB file")
    src.add_argument("--sdtm", metavar="DIR", help="CDISC SDTM study: folder or zip of domains (DM, LB, VS, EG, MH, "
                     "CM, EX, PR, TU, RS, QS, FA, CV) as CSV, SAS transport (.xpt) or Dataset-JSON")
    src.add_argument("--suggest", metavar="MAPPING_OUT", help="write a suggested mapping YAML for --in and stop")
    p.add_argument("--in", dest="input", help="the file to map (CSV, Excel or Parquet)")
    p.add_argument("--sheet", help="Excel sheet name (default: the first)")
    p.add_argument("--out", help="output cohort: .csv or .parquet")
    p.add_argument("--index-date", help="with --omop: YYYY-MM-DD, or 'last' for each person's last observation; "
                                        "with --sdtm: first-dose (default), screening, or YYYY-MM-DD")
    p.add_argument("--lookback-days", type=int, default=None,
                   help="with --omop / --sdtm: replace every assessment window of the protocol (labs, vitals, ECG: "
                        "latest value 0-N days before the index date); the event look-backs never change "
                        "(default: the protocol's windows)")
    options.add_options(p, stage=False)  # with --omop / --sdtm: whose time windows
    p.add_argument("--open-world", action="store_true",
                   help="with --omop / --sdtm: a condition or drug not on record is unknown (NULL) instead of false")
    p.add_argument("--concepts", help="with --omop: concepts file replacing kn026/ingest/concepts/omop_concepts.yaml")
    p.add_argument("--report", help="write the import report here (CSV; with --sdtm also <name>_subjects.csv, "
                                    "the index date of each subject; any other suffix: the report as text)")
    p.set_defaults(func=cmd_import)
    return p


def _check_loads(frame) -> None:
    """The OMOP import's cohort must load (CohortError lists every bad cell; nothing is written)."""
    con = mapped._private_connection()
    try:
        load_cohort(frame, con)
    finally:
        con.close()


def cmd_import(args) -> int:
    from kn026.cli import common as cli

    if (getattr(args, "on_bad_value", None) or "error") != "error" and not args.mapping:
        raise ValueError("--on-bad-value applies to --mapping; the OMOP and SDTM importers write no bad value")
    if args.suggest:
        if not args.input:
            raise ValueError("--suggest needs --in PATH: the file whose headers to map")
        frame = read_table(args.input, args.sheet)
        mapping = suggest_mapping(frame.columns, sample=frame)
        mapping.sheet = args.sheet
        Path(args.suggest).write_text(mapping.to_yaml(), encoding="utf-8")
        print(f"suggested {len(mapping.columns)} of {len(frame.columns)} columns -> {args.suggest}"
              + (f"; not mapped: {', '.join(mapping.unmatched)}" if mapping.unmatched else ""), file=sys.stderr)
        for h in mapping.held:
            print(f"not mapped without your choice: {h.header!r} -> {h.target}: {h.why} To use it, add "
                  f"'{h.target}: {{source: {h.header}}}' to the mapping.", file=sys.stderr)
        for d, inf in date_formats.fill(frame, mapping):
            print(f"date format needed: {date_formats.ask(d, inf).removeprefix('mapping: ')}", file=sys.stderr)
        _print_dates(frame, mapping)
        return 0
    if not args.out:
        raise ValueError("import needs --out PATH ending in .csv or .parquet")
    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise ValueError(f"--out {out.name}: end the name in .csv or .parquet")
    if args.mapping:
        if not args.input:
            raise ValueError("--mapping needs --in PATH: the CSV / Excel / Parquet file to map")
        for flag, value in (("--index-date", args.index_date), ("--concepts", args.concepts)):
            if value:
                raise ValueError(f"{flag} applies to --omop only; a mapping sets index_date itself")
        mapping = Mapping.from_yaml(Path(args.mapping))
        frame = read_table(args.input, args.sheet or mapping.sheet)
        try:  # DateFormatError: a date column's format must be given; CohortError: every bad cell
            cohort, changes = mapped.written(frame, mapping, cli.bad_value_edits(args))
        except CohortError as err:
            raise cli.refused_blanks(err, args) from None  # nothing is written
        omop.write_cohort(cohort, out)
        if args.report:
            value_report(frame, mapping).to_csv(args.report, index=False)
        cli.print_changes(changes)  # the mapping's edits and --on-bad-value, one line each
        print(f"{len(cohort)} patients, {len(cohort.columns)} dictionary columns -> {out}", file=sys.stderr)
        _print_dates(frame, mapping)
        return 0
    if args.sdtm:
        return _import_sdtm(args, out)
    if not args.index_date:
        raise ValueError("--omop needs --index-date YYYY-MM-DD or --index-date last")
    if args.input:
        raise ValueError("--in applies to --mapping; give the OMOP folder, zip or DuckDB file to --omop")
    frame, report = omop.import_omop(args.omop, args.index_date, args.lookback_days, concepts=args.concepts,
                                     closed_world=not args.open_world, protocol=_windows_protocol(args))
    _check_loads(frame)
    omop.write_cohort(frame, out)
    if args.report:
        report.to_frame().to_csv(args.report, index=False)
    print(report.to_text().splitlines()[0] + f" -> {out}", file=sys.stderr)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def _windows_protocol(args):
    """The protocol whose assessment windows and event look-backs an OMOP / SDTM import uses."""
    return options.for_args(args)


def _print_dates(frame, mapping) -> None:
    """One line per date column: the format it is read with, why, and its earliest and latest date."""
    for r in date_formats.date_report(frame, mapping).itertuples():
        if not r.shown:
            continue
        how = {"chosen": "given in the mapping", "proven": f"proven by its values: {r.why}"}.get(r.how, r.why)
        span = (f"; {r.dates:,} dates from {r.earliest:%Y-%m-%d} to {r.latest:%Y-%m-%d}" if r.dates else "")
        fmt = f" with date_format {r.format!r}" if r.format else ""
        print(f"dates: {r.column} (file column {r.source!r}) read as {r.shown}{fmt}, {how}{span}", file=sys.stderr)


def _import_sdtm(args, out: Path) -> int:
    if args.input:
        raise ValueError("--in applies to --mapping; give the SDTM folder or zip to --sdtm")
    if args.concepts:
        raise ValueError("--concepts applies to --omop; SDTM test codes and terms are in kn026/ingest/concepts/sdtm_terms.yaml")
    frame, report = sdtm.import_sdtm(args.sdtm, args.index_date or "first-dose", args.lookback_days,
                                     closed_world=not args.open_world, protocol=_windows_protocol(args))
    if frame.empty:
        raise ValueError(f"{args.sdtm}: no subject could be described at an index date ("
                         + "; ".join(f"{len(ids)} {why}" for why, ids in report.excluded.items()) + ")")
    _check_loads(frame)  # CohortError lists every bad cell (the unit guard included); nothing is written
    omop.write_cohort(frame, out)
    if args.report:
        path = Path(args.report)
        if path.suffix.lower() == ".csv":
            report.to_frame().to_csv(path, index=False)
            report.subjects_frame().to_csv(path.with_name(path.stem + "_subjects.csv"), index=False)
        else:
            path.write_text(report.to_text() + "\n", encoding="utf-8")
    sources = ", ".join(f"{n} {s}" for s, n in report.index_sources().items())
    present = sum(c.status == "derived" for c in report.columns)
    print(f"{len(frame)} subjects ({sources}), {present} columns from SDTM -> {out}", file=sys.stderr)
    if report.not_found:
        print(f"domains not found: {', '.join(report.not_found)}", file=sys.stderr)
    for why, ids in report.excluded.items():
        print(f"left out: {len(ids)} {why}", file=sys.stderr)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0
