"""What every command shares: the cohort, stage, scenario and protocol options, loading with
--on-bad-value, terminal progress, and the text and JSON forms of a funnel."""

from __future__ import annotations

import argparse
import shutil
import sys
import time

from kn026.base.table import connect
from kn026.cli import engines, options
from kn026.core.engine import Engine
from kn026.core.scenario import Scenario, load_scenario
from kn026.ingest.cohort import load_cohort
from kn026.ingest.problems import CohortError


def ids(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cohort", required=True, help="cohort file: CSV, Parquet or Excel")
    options.add_options(p)
    p.add_argument("--scenario", help="scenario YAML (threshold overrides, disabled criteria)")


def engine_and_scenario(args) -> tuple[Engine, Scenario]:
    protocol = options.for_args(args)  # --stage checked against its stages
    scenario = load_scenario(args.scenario, protocol) if args.scenario else Scenario()
    remote = engines.engine_from_args(args, protocol)  # None unless --engine spark
    if remote is not None:
        return remote, scenario
    con = connect()
    con.execute("SET enable_progress_bar = false")
    progress = getattr(args, "progress", None)
    cohort = load(args, con, None)
    if progress is not None:
        progress(1.0, f"screening {cohort.n:,} patients")
    return Engine(cohort, protocol, args.stage), scenario


def load_for(args, con, compress: bool | None = None):
    """`load_cohort(args.cohort)` for a command: progress on a terminal, erased once loaded; bad
    values answered as --on-bad-value says, each change listed on stderr."""
    cohort = load(args, con, compress)
    close_progress(getattr(args, "progress", None))
    return cohort


ON_BAD_VALUE = ("error", "blank", "drop")


def add_bad_value_option(p: argparse.ArgumentParser) -> None:
    """--on-bad-value for a command that loads a cohort (kn026.ingest.edits, docs/importers.md)."""
    p.add_argument("--on-bad-value", choices=ON_BAD_VALUE, default="error",
                   help="values the loader cannot accept: error (default: stop and list them), blank (empty: "
                        "unknown; refused for record-based columns, where empty means none on record), drop "
                        "(leave their rows out). Each change is listed on stderr; the file is never modified")


def check_bad_value(args) -> None:
    """--on-bad-value needs a cohort file loaded here: not the Spark engine, not a query's rows."""
    if not bad_value_edits(args):
        return
    if getattr(args, "engine", "duckdb") != "duckdb":
        raise ValueError("--on-bad-value applies to the DuckDB engine only; fix the file, or leave out --engine")
    if getattr(args, "rows", None):
        raise ValueError("--on-bad-value applies to --cohort; the rows of a query hold no cell values")


def bad_value_edits(args) -> list:
    """The edits --on-bad-value asks for: every bad value of every column blanked, or its row dropped."""
    from kn026.ingest import edits

    policy = getattr(args, "on_bad_value", None) or "error"
    return [] if policy == "error" else [edits.Edit(policy, edits.ALL)]


def refused_blanks(err: CohortError, args) -> CohortError:
    """`err`, led by why --on-bad-value blank left the record-based columns' bad values as they were."""
    from kn026.base import schema
    from kn026.ingest.problems import Problem

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


def load(args, con, compress: bool | None):
    progress = getattr(args, "progress", None)
    try:
        cohort = load_cohort(args.cohort, con, progress=progress, compress=compress, edits=bad_value_edits(args))
    except CohortError as err:
        raise refused_blanks(err, args) from None
    if any(c.count for c in cohort.changes):
        close_progress(progress)
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


def assessability_warnings(engine, scenario) -> list[str]:
    """The sentences saying how little the cohort lets us assess ([] when it is enough)."""
    if not hasattr(engine.cohort, "con"):  # a Spark / warehouse engine: no rows to profile here
        return []
    from kn026.report import patients

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


def close_progress(progress) -> None:
    """Erase the terminal progress line, if one is shown (the command's own output follows)."""
    if progress is not None:
        progress.close()
