"""Command line: `python -m kn026 screen|funnel|report|synth|forecast|import|sql|histogram|merge ...`.

Every failure the user can fix (bad file, bad column, unknown criterion ID, bad
scenario) exits with status 2 and one short message naming the problem and the fix,
never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

from kn026 import analysis, protocol_files
from kn026.cohort import CohortError, connect, load_cohort
from kn026.criteria import CriteriaError
from kn026.engine import Engine
from kn026.scenario import Scenario, load_scenario
from kn026.spark import SparkUnavailable


def _ids(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cohort", required=True, help="cohort file: CSV, Parquet or Excel")
    protocol_files.add_options(p)
    p.add_argument("--scenario", help="scenario YAML (threshold overrides, disabled criteria)")


def _engine(args) -> tuple[Engine, Scenario]:
    protocol = protocol_files.for_args(args)  # --stage checked against its stages
    scenario = load_scenario(args.scenario, protocol) if args.scenario else Scenario()
    from kn026.spark import engine_from_args

    remote = engine_from_args(args, protocol)  # None unless --engine spark
    if remote is not None:
        return remote, scenario
    con = connect()
    con.execute("SET enable_progress_bar = false")
    progress = getattr(args, "progress", None)
    cohort = _load(args, con, None)
    if progress is not None:
        progress(1.0, f"screening {cohort.n:,} patients")
    return Engine(cohort, protocol, args.stage), scenario


def load_for(args, con, compress: bool | None = None):
    """`load_cohort(args.cohort)` for a command: progress on a terminal, erased once loaded; bad
    values answered as --on-bad-value says, each change listed on stderr."""
    cohort = _load(args, con, compress)
    _close(getattr(args, "progress", None))
    return cohort


ON_BAD_VALUE = ("error", "blank", "drop")


def add_bad_value_option(p: argparse.ArgumentParser) -> None:
    """--on-bad-value for a command that loads a cohort (kn026.edits, docs/importers.md)."""
    p.add_argument("--on-bad-value", choices=ON_BAD_VALUE, default="error",
                   help="values the loader cannot accept: error (default: stop and list them), blank (empty: "
                        "unknown; refused for record-based columns, where empty means none on record), drop "
                        "(leave their rows out). Each change is listed on stderr; the file is never modified")


def _check_bad_value(args) -> None:
    """--on-bad-value needs a cohort file loaded here: not the Spark engine, not a query's rows."""
    if not bad_value_edits(args):
        return
    if getattr(args, "engine", "duckdb") != "duckdb":
        raise ValueError("--on-bad-value applies to the DuckDB engine only; fix the file, or leave out --engine")
    if getattr(args, "rows", None):
        raise ValueError("--on-bad-value applies to --cohort; the rows of a query hold no cell values")


def bad_value_edits(args) -> list:
    """The edits --on-bad-value asks for: every bad value of every column blanked, or its row dropped."""
    from kn026 import edits

    policy = getattr(args, "on_bad_value", None) or "error"
    return [] if policy == "error" else [edits.Edit(policy, edits.ALL)]


def refused_blanks(err: CohortError, args) -> CohortError:
    """`err`, led by why --on-bad-value blank left the record-based columns' bad values as they were."""
    from kn026 import schema
    from kn026.cohort import Problem

    if (getattr(args, "on_bad_value", None) or "error") != "blank":
        return err
    cols = sorted({p.column for p in err.problems if p.column in schema.BY_NAME and p.kind == "value"
                   and (schema.BY_NAME[p.column].record_based)})
    if not cols:
        return err
    lead = Problem("--on-bad-value", f"blank does not blank record-based columns ({', '.join(cols)}): there an "
                                     "empty cell means 'none on record' and would pass the patient; use "
                                     "--on-bad-value drop to leave those rows out, or fix the file", kind="edit")
    return CohortError([lead, *err.problems], total=err.total + 1)


def print_changes(changes) -> None:
    """One stderr line per change an edit made (none for a choice that found nothing to change)."""
    for change in changes:
        if change.count:
            print(f"changed: {change}", file=sys.stderr)


def _load(args, con, compress: bool | None):
    progress = getattr(args, "progress", None)
    try:
        cohort = load_cohort(args.cohort, con, progress=progress, compress=compress, edits=bad_value_edits(args))
    except CohortError as err:
        raise refused_blanks(err, args) from None
    if any(c.count for c in cohort.changes):
        _close(progress)
        print_changes(cohort.changes)
    return cohort


class TerminalProgress:
    """progress(fraction, message) drawn as one self-erasing line on a terminal (stderr).

    `for_stream` gives one only when the stream is a terminal, so that pipes, files and
    captured output never see control characters.
    """

    def __init__(self, stream, interval: float = 0.1):
        self.stream, self.interval, self.last, self.shown = stream, interval, 0.0, False

    @classmethod
    def for_stream(cls, stream) -> TerminalProgress | None:
        isatty = getattr(stream, "isatty", None)
        return cls(stream) if isatty is not None and isatty() else None

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if self.shown and now - self.last < self.interval and fraction < 1.0:
            return
        self.last = now
        width = max(shutil.get_terminal_size((80, 24)).columns - 1, 20)
        done = int(20 * min(max(fraction, 0.0), 1.0))
        line = f"[{'#' * done}{'.' * (20 - done)}] {message}"
        self.stream.write("\r" + line[:width] + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        """Erase the line (the command's own output follows)."""
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def cmd_screen(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise ValueError(f"--out {out} must end in .csv")
    if out.resolve() == Path(args.cohort).resolve():
        raise ValueError(f"--out {out} is the cohort file itself; the input is never overwritten, "
                         "choose another path")
    engine, scenario = _engine(args)
    sql = analysis.screen_log_sql(engine, scenario)
    frame = engine.con.execute(sql).df()
    _close(getattr(args, "progress", None))
    frame.to_csv(out, index=False)
    counts = frame["eligible"].value_counts().to_dict()
    print(f"{len(frame)} patients screened for stage {args.stage}: "
          f"{counts.get('yes', 0)} eligible, {counts.get('unknown', 0)} unknown, "
          f"{counts.get('no', 0)} not eligible -> {out}", file=sys.stderr)
    return 0


def cmd_funnel(args) -> int:
    engine, scenario = _engine(args)
    disabled = _ids(args.disable)
    screened = analysis.engine_for(engine, scenario)  # the protocol with the scenario's custom criteria
    known = {c.id for c in screened.protocol.criteria} | set(screened.protocol.rule_ids())
    for cid in disabled:
        if cid not in known:
            raise ValueError(f"--disable: unknown criterion ID {cid!r}; known: "
                             f"{', '.join(c.id for c in engine.protocol.criteria)}")
    order = _ids(args.order)
    twice = sorted({cid for cid in order if order.count(cid) > 1})
    if twice:
        raise ValueError(f"--order lists {', '.join(twice)} more than once; name each criterion once")
    scenario = dataclasses.replace(scenario, disabled=scenario.disabled | set(disabled))
    result = analysis.run(engine, scenario, order or None)
    na_rules = analysis.not_assessable_rules(screened)
    warnings = _assessability_warnings(screened, scenario)
    _close(getattr(args, "progress", None))
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


def _assessability_warnings(engine, scenario) -> list[str]:
    """The sentences saying how little the cohort lets us assess ([] when it is enough)."""
    if not hasattr(engine.cohort, "con"):  # a Spark / warehouse engine: no rows to profile here
        return []
    from kn026 import patients

    report = patients.assessability(engine, scenario)
    return report.messages() if report.little else []


STATS_COLUMNS = ["criterion", "passed", "failed", "unknown", "unique", "unique_strict",
                 "shapley_strict", "shapley_optimistic"]


def print_tables(result) -> None:
    """The funnel and the per-criterion table as text (the `funnel` and `merge` commands)."""
    print()
    print(result.funnel.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print()
    print(result.stats[STATS_COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.1f}"))


def jsonable(value):
    """json.dumps default for numpy scalars and anything else printable."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# Commands registered by other modules; only the one asked for is imported (each costs
# 0.1 s or more at start-up, a fifth of a small `funnel` run).
COMMAND_MODULES = {"synth": "synth", "forecast": "forecast", "import": "mapping", "sql": "portable",
                   "histogram": "federated", "merge": "federated", "report": "report_cli"}


LOADING_COMMANDS = ("screen", "funnel", "histogram", "forecast", "report", "import")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command` (the word the user typed), other modules' commands are left out."""
    import importlib

    parser = argparse.ArgumentParser(prog="python -m kn026", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("screen", help="per-patient screening log (CSV)")
    _common(p)
    p.add_argument("--out", required=True, help="output CSV path")
    p.set_defaults(func=cmd_screen)
    p = sub.add_parser("funnel", help="screen-failure funnel and per-criterion table")
    _common(p)
    p.add_argument("--order", help="criterion IDs in funnel order, comma-separated")
    p.add_argument("--disable", help="criterion or sub-rule IDs to leave out, comma-separated")
    p.add_argument("--json", action="store_true", help="JSON output")
    from kn026 import spark

    spark.add_cli_engine_option(p)
    p.set_defaults(func=cmd_funnel)
    if command not in ("screen", "funnel"):
        wanted = [COMMAND_MODULES[command]] if command in COMMAND_MODULES else list(dict.fromkeys(
            COMMAND_MODULES.values()))
        for name in wanted:
            importlib.import_module(f"kn026.{name}").add_cli(sub)
    for name in LOADING_COMMANDS:  # every command that loads a cohort file
        if name in sub.choices:
            add_bad_value_option(sub.choices[name])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    args.progress = TerminalProgress.for_stream(sys.stderr)  # rows read and the step, on a terminal only
    try:
        _check_bad_value(args)
        return int(args.func(args) or 0)
    except CohortError as err:
        _close(args.progress)
        print(f"error: the cohort could not be loaded ({err.total} problem(s)):\n{err}", file=sys.stderr)
    except (CriteriaError, ValueError, OSError, SparkUnavailable) as err:
        _close(args.progress)
        print(f"error: {err}", file=sys.stderr)
    finally:
        _close(args.progress)
    return 2


def _close(progress) -> None:
    if progress is not None:
        progress.close()
