"""Command line: `python -m kn026 screen|funnel|report|synth|forecast|import|sql|histogram|merge ...`.

Every failure the user can fix (bad file, bad column, unknown criterion ID, bad
scenario) exits with status 2 and one short message naming the problem and the fix,
never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kn026.cli.common import TerminalProgress, add_bad_value_option, check_bad_value, close_progress
from kn026.core.criteria import CriteriaError
from kn026.ingest.problems import CohortError
from kn026.scale.spark import SparkUnavailable

# One module per command (kn026/cli/<module>.py); only the one asked for is imported (each costs
# 0.1 s or more at start-up, a fifth of a small `funnel` run).
COMMAND_MODULES = {"screen": "screen", "funnel": "funnel", "report": "report", "synth": "synth",
                   "forecast": "forecast", "import": "importing", "sql": "sql", "histogram": "histogram",
                   "merge": "merge"}


LOADING_COMMANDS = ("screen", "funnel", "histogram", "forecast", "report", "import")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command` (the word the user typed), other commands' modules are not imported."""
    parser = argparse.ArgumentParser(prog="python -m kn026", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = [COMMAND_MODULES[command]] if command in COMMAND_MODULES else list(dict.fromkeys(COMMAND_MODULES.values()))
    for name in wanted:
        importlib.import_module(f"kn026.cli.{name}").add_cli(sub)
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
        check_bad_value(args)
        return int(args.func(args) or 0)
    except CohortError as err:
        close_progress(args.progress)
        print(f"error: the cohort could not be loaded ({err.total} problem(s)):\n{err}", file=sys.stderr)
    except (CriteriaError, ValueError, OSError, SparkUnavailable) as err:
        close_progress(args.progress)
        print(f"error: {err}", file=sys.stderr)
    finally:
        close_progress(args.progress)
    return 2
