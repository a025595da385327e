"""Tests for kn026.rules.sandbox: what the lockdown blocks in DuckDB 2.0.1 (each verified
against a control connection where the same statement works), what still works
(register, from_df), no spill to disk, and the statement timeout."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from kn026.base.table import connect
from kn026.ingest.cohort import load_cohort
from kn026.ingest.problems import CohortError
from kn026.rules import sandbox
from kn026.rules.sandbox import Lockdown, is_locked, lock_down, run_with_timeout

SLOW = "SELECT count(*) FROM range(100000000) a, range(100000000) b"
SECRET = "KN026-SENTINEL-SECRET"


@pytest.fixture
def files(tmp_path):
    """A directory with a secret, a CSV and a Parquet file, and an empty out/ directory."""
    (tmp_path / "secret.txt").write_text(SECRET + "\n")
    (tmp_path / "cohort.csv").write_text("patient_id,age_years\nx1,50\nx2,60\n")
    (tmp_path / "data.json").write_text('{"a": 1}\n')
    con = duckdb.connect()
    con.execute(f"COPY (SELECT 'x1' AS patient_id, 50 AS age_years) TO '{tmp_path / 'cohort.parquet'}'")
    con.close()
    (tmp_path / "out").mkdir()
    (tmp_path / "control").mkdir()
    return tmp_path


def session():
    """A private in-memory session holding a two-patient cohort (as cohort.connect() gives)."""
    con = duckdb.connect(":memory:")
    con.execute("CREATE TABLE cohort AS SELECT * FROM (VALUES ('p1', 45.0), ('p2', 70.0)) "
                "v(patient_id, age_years)")
    return con


# Statements that must fail after lockdown; each works on an unlocked control connection
# (except where noted), so the test proves the lockdown is what blocks it.
BLOCKED_READS = [
    "SELECT * FROM read_csv('{d}/cohort.csv')",
    "SELECT * FROM read_csv_auto('{d}/cohort.csv')",
    "SELECT * FROM '{d}/cohort.csv'",
    "SELECT * FROM read_parquet('{d}/cohort.parquet')",
    "SELECT * FROM '{d}/cohort.parquet'",
    "SELECT * FROM read_text('{d}/secret.txt')",
    "SELECT * FROM read_blob('{d}/secret.txt')",
    "SELECT * FROM read_json_objects('{d}/data.json')",
    "SELECT * FROM read_json('{d}/data.json')",
    "SELECT * FROM glob('{d}/*')",
    "SELECT * FROM sniff_csv('{d}/cohort.csv')",
    "SELECT * FROM parquet_metadata('{d}/cohort.parquet')",
    "CREATE TABLE stolen AS SELECT * FROM read_csv('{d}/cohort.csv')",
]
BLOCKED_WRITES = [
    "COPY cohort TO '{out}/leak.csv'",
    "COPY (SELECT * FROM cohort) TO '{out}/leak.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '{out}/dump'",
    "ATTACH '{out}/other.duckdb' AS other",
    "COPY cohort FROM '{d}/cohort.csv'",
]
BLOCKED_SETTINGS = [
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "RESET lock_configuration",
    "RESET enable_external_access",
    "SET memory_limit = '100GB'",
    "SET threads = 64",
    "SET GLOBAL threads = 64",
    "SET SESSION threads = 64",
    "SET temp_directory = '{d}/out/spill'",
    "SET allowed_paths = ['{d}']",
    "SET allowed_directories = ['{d}']",
    "SET autoinstall_known_extensions = true",
    "SET autoload_known_extensions = true",
    "SET allow_community_extensions = true",
    "SET allow_unsigned_extensions = true",
    "SET python_enable_replacements = true",
    "SET profiling_output = '{d}/out/profile.json'",
    "SET log_query_path = '{d}/out/queries.log'",
    "PRAGMA threads = 64",
    "PRAGMA enable_profiling",
    "CALL enable_logging()",
]


@pytest.mark.parametrize("template", BLOCKED_READS + BLOCKED_WRITES)
def test_lockdown_blocks_file_access(files, template):
    control = session()
    control.execute(template.format(d=files, out=files / "control"))  # works without the lockdown
    con = session()
    lock_down(con)
    with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
        con.execute(template.format(d=files, out=files / "out")).fetchall()
    assert list((files / "out").iterdir()) == []


def test_nothing_is_written_when_writes_are_blocked(files):
    con = session()
    lock_down(con)
    for template in BLOCKED_WRITES:
        with pytest.raises(duckdb.Error):
            con.execute(template.format(d=files, out=files / "out"))
    assert list((files / "out").iterdir()) == []


@pytest.mark.parametrize("sql", [
    "INSTALL httpfs",
    "LOAD httpfs",
    "LOAD '/tmp/evil.duckdb_extension'",
    "SELECT * FROM read_csv('https://example.invalid/x.csv')",
    "SELECT * FROM read_parquet('s3://bucket/x.parquet')",
    "CREATE PERSISTENT SECRET (TYPE s3, KEY_ID 'k', SECRET 's')",
    "SELECT * FROM read_xlsx('/tmp/x.xlsx')",
])
def test_lockdown_blocks_extensions_network_and_secrets(sql):
    con = session()
    lock_down(con)
    with pytest.raises(duckdb.Error):
        con.execute(sql).fetchall()


def test_no_persistent_secrets_are_visible():
    con = session()
    lock_down(con)
    assert con.execute("SELECT count(*) FROM duckdb_secrets()").fetchone()[0] == 0


@pytest.mark.parametrize("template", BLOCKED_SETTINGS)
def test_lockdown_blocks_every_later_setting(files, template):
    sql = template.format(d=files)
    con = session()
    lock_down(con)
    before = con.execute("SELECT name, value FROM duckdb_settings() ORDER BY name").fetchall()
    with pytest.raises(duckdb.Error, match="the configuration has been locked"):
        con.execute(sql)
    assert con.execute("SELECT name, value FROM duckdb_settings() ORDER BY name").fetchall() == before


def test_lockdown_settings_are_applied():
    con = session()
    handle = lock_down(con, memory_limit="512MB", threads=2, timeout=5)
    assert isinstance(handle, Lockdown) and handle.timeout == 5 and handle.threads == 2
    want = {"enable_external_access": "false", "lock_configuration": "true", "temp_directory": "",
            "autoinstall_known_extensions": "false", "autoload_known_extensions": "false",
            "allow_community_extensions": "false", "allow_persistent_secrets": "false",
            "python_enable_replacements": "false", "threads": "2"}
    for name, value in want.items():
        assert sandbox.setting(con, name).lower() == value, name
    assert "MiB" in handle.memory_limit or "MB" in handle.memory_limit
    assert is_locked(con)
    assert lock_down(con).con is con  # idempotent on a locked connection


def test_lock_down_refuses_a_connection_locked_open():
    con = duckdb.connect()
    con.execute("SET lock_configuration = true")
    with pytest.raises(sandbox.SandboxError, match="external access on"):
        lock_down(con)


def test_queries_on_the_session_still_work():
    con = session()
    lock_down(con)
    assert con.execute("SELECT count(*), max(age_years) FROM cohort").fetchone() == (2, 70)
    con.execute("CREATE TEMP TABLE masks AS SELECT patient_id, age_years >= 18 AS ok FROM cohort")
    assert con.execute("SELECT count_if(ok) FROM masks").fetchone()[0] == 2


def test_register_still_works_after_lockdown():
    """The engine can still hand DataFrames / Arrow tables to the locked connection."""
    con = session()
    lock_down(con)
    con.register("frame_view", pd.DataFrame({"x": [1, 2, 3]}))
    assert con.execute("SELECT sum(x) FROM frame_view").fetchall() == [(6,)]
    con.register("arrow_view", pa.table({"y": [4, 5]}))
    assert con.execute("SELECT sum(y) FROM arrow_view").fetchall() == [(9,)]
    con.execute("CREATE TABLE copied AS SELECT * FROM frame_view")
    con.unregister("frame_view")
    assert con.execute("SELECT count(*) FROM copied").fetchall() == [(3,)]
    assert len(con.from_df(pd.DataFrame({"z": [1]})).fetchall()) == 1
    # the cohort loader itself works on a locked connection when given a DataFrame
    cohort = load_cohort(pd.DataFrame({"patient_id": ["q1"], "age_years": [33]}), con, table="second")
    assert cohort.n == 1


def test_unfinished_results_block_register_in_duckdb_2():
    """DuckDB 2.0 Python: after fetchone() the result is unfinished, and register(),
    unregister() and from_df() raise until it is fetched to the end. Not a lockdown
    effect; kn026.rules.sandbox always fetches results completely."""
    con = duckdb.connect()
    con.execute("SELECT 1").fetchone()
    with pytest.raises(duckdb.Error, match="unfinished result"):
        con.register("frame_view", pd.DataFrame({"x": [1]}))
    con.execute("SELECT 1").fetchall()
    con.register("frame_view", pd.DataFrame({"x": [1]}))
    lock_down(con)  # reads settings, leaves nothing unfinished
    run_with_timeout(con, "SELECT 1 FROM range(5)", seconds=5, fetch="one")
    con.register("after", pd.DataFrame({"x": [1]}))


def test_loading_a_file_after_lockdown_is_blocked(files):
    """Files must be read (or parsed into a frame) before lock_down."""
    con = connect()
    lock_down(con)
    with pytest.raises(CohortError, match="could not be read"):
        load_cohort(files / "cohort.csv", con)


def test_python_replacement_scans_are_blocked():
    secret_frame = pd.DataFrame({"secret": [SECRET]})  # noqa: F841 - looked up by name
    control = duckdb.connect()
    assert control.execute("SELECT secret FROM secret_frame").fetchone()[0] == SECRET
    con = session()
    lock_down(con)
    with pytest.raises(duckdb.CatalogException):
        con.execute("SELECT secret FROM secret_frame").fetchall()


def test_sessions_cannot_see_each_other():
    one, two = session(), session()
    one.execute("CREATE TABLE private_one AS SELECT 'one' AS v")
    lock_down(one)
    lock_down(two)
    with pytest.raises(duckdb.CatalogException):
        two.execute("SELECT * FROM private_one").fetchall()
    names = [r[0] for r in two.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
    assert "private_one" not in names


def test_no_spill_to_disk(tmp_path, monkeypatch):
    """By default an in-memory database spills to ./.tmp; after lockdown it cannot."""
    monkeypatch.chdir(tmp_path)
    big = "CREATE TABLE big AS SELECT i, md5(i::VARCHAR) AS s FROM range(1000000) t(i) ORDER BY s"
    control = duckdb.connect()
    control.execute("SET memory_limit = '48MB'")
    control.execute("SET threads = 2")
    control.execute("SET enable_external_access = false")
    control.execute(big)
    spilled = list((tmp_path / ".tmp").iterdir())  # patient rows would be on disk here
    assert spilled
    control.close()
    spill_free = tmp_path / "locked"
    spill_free.mkdir()
    monkeypatch.chdir(spill_free)
    con = duckdb.connect()
    lock_down(con, memory_limit="48MB", threads=2)
    with pytest.raises(duckdb.OutOfMemoryException):
        con.execute(big)
    assert list(spill_free.iterdir()) == []


# -- timeout -------------------------------------------------------------------------------

def test_run_with_timeout_stops_a_slow_query():
    con = session()
    lock_down(con)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="longer than 0.5 s"):
        run_with_timeout(con, SLOW, seconds=0.5)
    assert time.monotonic() - start < 5
    assert con.execute("SELECT count(*) FROM cohort").fetchone()[0] == 2  # still usable


def test_run_with_timeout_returns_results_and_takes_params():
    con = session()
    lock_down(con)
    assert run_with_timeout(con, "SELECT count(*) FROM cohort WHERE age_years > ?", [50], 5) == [(1,)]
    assert run_with_timeout(con, "SELECT $x + 1", {"x": 41}, 5, fetch="one") == (42,)
    frame = run_with_timeout(con, "SELECT * FROM cohort ORDER BY patient_id", seconds=5, fetch="df")
    assert list(frame["patient_id"]) == ["p1", "p2"]
    assert run_with_timeout(con, "SELECT 1", seconds=5, fetch="none") is None
    assert run_with_timeout(con, "SELECT 7 AS v", seconds=5, fetch="numpy")["v"][0] == 7
    with pytest.raises(ValueError):
        run_with_timeout(con, "SELECT 1", seconds=0)


def test_timer_does_not_leak_into_the_next_query():
    con = session()
    for _ in range(20):
        assert run_with_timeout(con, "SELECT 1", seconds=0.01) == [(1,)]
    time.sleep(0.05)
    assert con.execute("SELECT count(*) FROM range(1000000)").fetchone()[0] == 1_000_000
    con.interrupt()  # an interrupt while idle does not stop the next query either
    assert con.execute("SELECT 42").fetchone()[0] == 42


def test_other_interrupts_are_not_reported_as_timeouts():
    con = session()
    threading.Timer(0.3, con.interrupt).start()
    with pytest.raises(duckdb.InterruptException):
        run_with_timeout(con, SLOW, seconds=30)


def test_lockdown_handle_runs_with_its_timeout():
    con = session()
    handle = lock_down(con, timeout=0.3)
    with pytest.raises(TimeoutError):
        handle.run(SLOW)
    assert handle.run("SELECT count(*) FROM cohort", fetch="one") == (2,)
    assert Lockdown(con, "1GB", 1, None).run("SELECT 1") == [(1,)]


# -- the hostile corpus straight against the lockdown (validator bypassed) ---------------------

def test_corpus_run_raw_cannot_reach_files_or_settings(files):
    """Defence in depth: even unvalidated, no corpus text reads the secret, writes a file or
    changes a setting of a locked-down session. (Table damage such as DROP TABLE is what the
    validator prevents; this runs on a sacrificial copy.)"""
    import yaml

    corpus = yaml.safe_load((Path(__file__).with_name("hostile") / "corpus.yaml").read_text("utf-8"))
    con = session()
    lock_down(con, memory_limit="256MB", threads=1)
    before = con.execute("SELECT name, value FROM duckdb_settings() ORDER BY name").fetchall()
    from kn026.rules.rulecheck import _STATEMENT_WORDS

    ran = 0
    for case in corpus["cases"]:
        if "text" not in case or not case["text"].strip():
            continue
        text = case["text"].replace("{tmp}", str(files))
        first = text.split()[0].upper()
        sql = text if first in _STATEMENT_WORDS or ";" in text else f"SELECT ({text}) FROM cohort"
        try:
            result = run_with_timeout(con, sql, seconds=2)
        except (duckdb.Error, TimeoutError):
            result = None
        ran += 1
        assert SECRET not in repr(result), case["id"]
    assert ran >= 60
    assert list((files / "out").iterdir()) == []
    assert sorted(p.name for p in files.iterdir()) == ["cohort.csv", "cohort.parquet", "control", "data.json",
                                                        "out", "secret.txt"]
    assert con.execute("SELECT name, value FROM duckdb_settings() ORDER BY name").fetchall() == before
    assert os.path.exists(files / "secret.txt")
