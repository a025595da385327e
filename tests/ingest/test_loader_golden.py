"""The one-reader loader against the outcomes captured from the loader it replaced.

`tests/loader_cases.py` builds tricky CSV, Parquet, Excel and in-memory inputs; the
golden file holds what the previous loader (a DuckDB view for command-line CSV, pyarrow
for uploads, openpyxl for Excel) made of each through each entry point. The current
loader must give the same table (column names, types, values in stored order) or the
same problems and messages, except for the differences below, each deliberate and
asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import loader_cases

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "loader_outcomes.json").read_text())

# Uploaded CSV is now read exactly as the command line read it before: an empty cell is
# NULL in every column (dictionary section 1; uploads used to keep "" in extra columns)
# and an empty header name becomes DuckDB's `column<i>` (uploads said `v<i>`).
AS_THE_COMMAND_LINE = ["bom", "crlf", "every_kind", "pipe", "semicolon", "tab", "wide_domains",
                       "quoted_empty", "empty_header_name"]
_CLI_FIX = "; save it as UTF-8 CSV with a header row, Parquet or Excel (.xlsx)"
_UPLOAD_FIX = ". Check that it is a CSV, Parquet or Excel (.xlsx) file"
# Reader errors: the command line's DuckDB read either guessed (single quotes as quote
# marks; a ragged file as one column, then "patient_id is missing") or said little; uploads
# echoed the offending line (patient data). Both now name the line and the field counts.
READER_ERRORS = {
    "cli/csv/latin1": "c.csv could not be read: the text is not utf-8 (byte 0xE9 at byte 26, line 2)" + _CLI_FIX,
    "cli/csv/ragged_long_row": "c.csv could not be read: line 3 has 3 field(s) where the header has 2" + _CLI_FIX,
    "cli/csv/ragged_short_row": "c.csv could not be read: line 3 has 2 field(s) where the header has 3" + _CLI_FIX,
    "cli/csv/single_quote_values": "c.csv could not be read: line 2 has 3 field(s) where the header has 2"
                                   + _CLI_FIX,
    "upload/csv/ragged_long_row": "c.csv could not be read: line 3 has 3 field(s) where the header has 2"
                                  + _UPLOAD_FIX,
    "upload/csv/ragged_short_row": "c.csv could not be read: line 3 has 2 field(s) where the header has 3"
                                   + _UPLOAD_FIX,
    "upload/csv/single_quote_values": "c.csv could not be read: line 2 has 3 field(s) where the header has 2"
                                      + _UPLOAD_FIX,
}


def expected(key: str) -> dict:
    if key in READER_ERRORS:
        message = READER_ERRORS[key]
        return {"error": f"file: {message}", "total": 1, "problems": [["file", message, None, None, None, 1]]}
    kind, _, case = key.rpartition("/")
    if kind == "upload/csv" and case in AS_THE_COMMAND_LINE:
        return GOLDEN[f"cli/csv/{case}"]
    return GOLDEN[key]


@pytest.fixture(scope="module")
def outcomes():
    return loader_cases.all_outcomes()


def test_every_golden_case_is_replayed(outcomes):
    assert sorted(outcomes) == sorted(GOLDEN)
    assert set(READER_ERRORS) <= set(GOLDEN)


def test_the_listed_differences_were_differences():
    """Each listed exception really differed before (a stale list would hide a regression)."""
    for case in AS_THE_COMMAND_LINE:
        assert GOLDEN[f"upload/csv/{case}"] != GOLDEN[f"cli/csv/{case}"], case
    for key in READER_ERRORS:
        assert GOLDEN[key] != expected(key), key


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_same_outcome_as_before(outcomes, key):
    assert outcomes[key] == expected(key)


def test_command_line_and_upload_now_agree(outcomes):
    """One reader: the same bytes give the same table or the same problems by either path."""
    for key in outcomes:
        if not key.startswith("cli/"):
            continue
        other = outcomes["upload/" + key[4:]]
        if key in READER_ERRORS or key == "cli/csv/latin1":
            continue  # same finding, each path's own wording of the fix
        assert outcomes[key] == other, key
