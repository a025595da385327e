"""The one reader (kn026/ingest/reader.py) and the chunked loader: progress, chunks, replacing a cohort.

The loader's values and messages are compared with the previous loader in
test_loader_golden.py; here: what is new. Progress reports every step in order and
ends at 1; a cohort cut into many chunks loads exactly as in one piece (row numbers,
counts and examples of bad values, duplicated IDs across chunks); a failed load leaves
the cohort it would have replaced; uploads touch no file.
"""

from __future__ import annotations

import io
import tempfile

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from kn026.base.table import COHORT_DB, connect
from kn026.cli import common
from kn026.cli import main as cli
from kn026.ingest import loading, reader
from kn026.ingest.cohort import load_cohort
from kn026.ingest.problems import CohortError
from tests import loader_cases


def _csv(rows: int, bad: bool) -> bytes:
    header, data = loader_cases._every_kind_rows(rows, bad=bad)
    return loader_cases._csv(header, data)


def _recorder():
    seen: list[tuple[float, str]] = []
    return seen, lambda fraction, message: seen.append((fraction, message))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_progress_reports_each_step_in_order(tmp_path, suffix):
    data = _csv(300, bad=False)
    path = tmp_path / f"c{suffix}"
    if suffix == ".csv":
        path.write_bytes(data)
    else:
        pq.write_table(pacsv.read_csv(io.BytesIO(data)), path)
    seen, progress = _recorder()
    cohort = load_cohort(path, progress=progress)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] == 1.0
    steps = [m.split()[0] for _, m in seen]
    assert steps.index("normalising") < steps.index("checking") < steps.index("loaded")
    assert all(s in ("reading", "read", "normalising", "checking", "loaded") for s in steps)
    assert any("300 rows" in m for _, m in seen) and seen[-1][1] == f"loaded {cohort.n:,} patients"
    if suffix == ".parquet":  # exact counts while reading
        assert ("reading c.parquet: 300 of 300 rows") in [m for _, m in seen]


def test_upload_progress_and_no_file_written(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a temporary file or directory was created")

    for name in ("mkdtemp", "mkstemp", "NamedTemporaryFile", "TemporaryDirectory", "TemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)
    seen, progress = _recorder()
    con, cohort = loading.load_upload("c.csv", _csv(50, bad=False), progress=progress)
    assert cohort.n == 50 and seen[-1] == (1.0, "loaded 50 patients")
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)


def test_part_maps_a_step_onto_a_range():
    seen, progress = _recorder()
    step = reader.part(progress, 0.5, 0.9)
    step(0.0, "a")
    step(0.5, "b")
    step(2.0, "c")
    assert seen == [(0.5, "a"), (0.7, "b"), (0.9, "c")]
    assert reader.part(None, 0, 1) is None


@pytest.mark.parametrize("bad", [False, True])
@pytest.mark.parametrize("kind", ["csv", "parquet", "arrow"])
def test_many_chunks_load_like_one(tmp_path, monkeypatch, bad, kind):
    """Row numbers, counts, examples and duplicate IDs are whole-file facts, not per chunk."""
    header, rows = loader_cases._every_kind_rows(40, bad=bad)
    if bad:
        rows[30][0] = rows[3][0]  # a duplicate ID across chunks
        rows[35][0] = ""  # an empty ID in a later chunk
    data = loader_cases._csv(header, rows)
    path = tmp_path / "c.csv"
    path.write_bytes(data)
    if kind == "parquet":
        table = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string())))
        path = tmp_path / "c.parquet"
        pq.write_table(table, path, row_group_size=9)

    def load():
        source = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()))) if kind == "arrow" else path
        return load_cohort(source)

    whole = loader_cases.outcome(load)
    monkeypatch.setattr(reader, "CHUNK_ROWS", 7)
    chunked = loader_cases.outcome(load)
    assert chunked == whole
    assert ("error" in whole) == bad


def test_chunks_are_compressed_and_small_command_line_loads_are_not(tmp_path, monkeypatch):
    path = tmp_path / "c.csv"
    path.write_bytes(_csv(20, bad=False))
    con = connect()
    load_cohort(path, con, compress=None)  # one chunk: a plain table
    assert con.execute("SELECT database_name FROM duckdb_tables() WHERE table_name = 'cohort'").fetchall() \
        == [(con.execute("SELECT current_database()").fetchall()[0][0],)]
    monkeypatch.setattr(reader, "CHUNK_ROWS", 6)
    load_cohort(path, con, compress=None)  # several chunks: compressed, the plain table replaced
    assert con.execute("SELECT database_name FROM duckdb_tables() WHERE table_name = 'cohort'").fetchall() \
        == [(COHORT_DB,)]
    assert con.execute("SELECT count(*) FROM cohort").fetchall() == [(20,)]


def test_failed_load_keeps_the_cohort_it_would_replace(tmp_path):
    con = connect()
    load_cohort(loader_cases.frame_cases()["pandas_mixed"], con)
    before = con.execute("SELECT * FROM cohort ORDER BY patient_id").fetchall()
    path = tmp_path / "bad.csv"
    path.write_bytes(b"patient_id,ecog\nP1,9\n")
    with pytest.raises(CohortError):
        load_cohort(path, con)
    assert con.execute("SELECT * FROM cohort ORDER BY patient_id").fetchall() == before
    tables = con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
    assert tables == [("cohort",)]  # no staging table left behind


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_command_line_progress_on_a_terminal_only(monkeypatch, capsys):
    fixture = "tests/fixtures/cli_cohort.csv"
    assert cli.main(["funnel", "--json", "--cohort", fixture, "--stage", "1"]) == 0
    assert capsys.readouterr().err == ""  # not a terminal: nothing on stderr
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert cli.main(["funnel", "--json", "--cohort", fixture, "--stage", "1"]) == 0
    shown = terminal.getvalue()
    assert shown.startswith("\r[") and "reading cli_cohort.csv" in shown and "screening 5 patients" in shown
    assert shown.endswith("\r\x1b[K")  # erased before the output
    assert capsys.readouterr().out.startswith("{")


def test_terminal_progress_draws_one_line_and_throttles():
    out = _Terminal()
    bar = common.TerminalProgress(out, interval=60)
    bar(0.25, "reading x")
    bar(0.3, "reading y")  # within the interval: skipped
    bar(1.0, "done")  # the end is always shown
    bar.close()
    assert out.getvalue() == ("\r[#####...............] reading x\x1b[K\r[####################] done\x1b[K\r\x1b[K")
    assert common.TerminalProgress.for_stream(io.StringIO()) is None


@pytest.mark.parametrize("case", ["every_kind", "every_kind_bad", "wide_domains", "guard_values", "guard_hb_gdl",
                                  "guard_medians_only", "duplicate_ids", "many_duplicate_ids", "empty_ids"])
def test_golden_cases_in_chunks_of_three_rows(tmp_path, monkeypatch, case):
    """Medians, duplicate IDs and first examples span chunks: three-row chunks change nothing."""
    from tests.ingest.test_loader_golden import expected

    path = tmp_path / "c.csv"
    path.write_bytes(loader_cases.csv_cases()[case])
    monkeypatch.setattr(reader, "CHUNK_ROWS", 3)
    assert loader_cases.outcome(lambda: load_cohort(path)) == expected(f"cli/csv/{case}")


def _streamed(src):
    assert src.estimated  # the row count of a streamed file is an estimate
    return src


@pytest.mark.parametrize("case", sorted(loader_cases.csv_cases()))
def test_large_csv_files_stream_in_chunks_with_the_same_outcome(tmp_path, monkeypatch, case):
    """Files over CSV_STREAM_BYTES are read batch by batch as they load: same tables, same messages."""
    from tests.ingest.test_loader_golden import expected

    path = tmp_path / "c.csv"
    path.write_bytes(loader_cases.csv_cases()[case])
    monkeypatch.setattr(reader, "CSV_STREAM_BYTES", 0)
    monkeypatch.setattr(reader, "CHUNK_ROWS", 4)
    opened = reader.open_path  # every file takes the streaming path
    monkeypatch.setattr(reader, "open_path", lambda *a, **k: _streamed(opened(*a, **k)))
    assert loader_cases.outcome(lambda: load_cohort(path)) == expected(f"cli/csv/{case}")
    assert [p.name for p in tmp_path.iterdir()] == ["c.csv"]
