"""Contain a session's DuckDB connection once its cohort is loaded.

Each session has its own in-memory DuckDB database (`cohort.connect`), so one
session's SQL cannot name another session's tables. After the cohort is loaded,
`lock_down` removes everything else a query could reach:

- ``SET temp_directory = ''``: no spilling to disk. By default an in-memory database
  spills to ``./.tmp`` when it runs out of memory, even with external access off,
  which would write patient rows to disk; without a temp directory the query fails
  with an out-of-memory error instead.
- ``SET autoinstall_known_extensions / autoload_known_extensions = false``,
  ``allow_community_extensions = false``, ``allow_persistent_secrets = false``,
  ``python_enable_replacements = false`` (no Python variable is readable by name).
- ``SET memory_limit``, ``SET threads``: one session cannot starve the server.
- ``SET enable_external_access = false``: no file or network access (read_csv,
  read_parquet, read_text, read_blob, read_json, glob, 'file.csv' as a table, COPY,
  EXPORT/IMPORT DATABASE, ATTACH of a file, INSTALL, LOAD of external extensions,
  secrets, http(s) URLs).
- ``SET lock_configuration = true``: no later SET / RESET / PRAGMA can undo any of it.

`con.register()` of a pandas DataFrame or Arrow table still works after lockdown
(it is the application handing over data, not SQL reaching out), as does
`con.from_df`. Note (DuckDB 2.0 Python): while a result is unfinished (after
`fetchone()` on a result with more to read), `register`, `unregister` and `from_df`
raise ResourceInUseException; fetch results completely (`fetchall`). DuckDB has no statement timeout, so `run_with_timeout` interrupts a
query from a timer thread. Verified against DuckDB 2.0.1 by tests/rules/test_sandbox.py.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import duckdb

DEFAULT_TIMEOUT_S = 20.0

# Applied before data is loaded is fine too: none of these stop the loader.
_PREPARE = (
    ("temp_directory", ""),
    ("autoinstall_known_extensions", False),
    ("autoload_known_extensions", False),
    ("allow_community_extensions", False),
    ("allow_persistent_secrets", False),
    ("python_enable_replacements", False),
)


class SandboxError(RuntimeError):
    """The connection could not be locked down as required."""


@dataclass(frozen=True)
class Lockdown:
    """A locked-down connection and its default statement timeout."""

    con: duckdb.DuckDBPyConnection
    memory_limit: str
    threads: int
    timeout: float | None = DEFAULT_TIMEOUT_S

    def run(self, sql: str, params=None, seconds: float | None = None, fetch: str = "all"):
        """Run `sql` with the lockdown's timeout (or `seconds`); see `run_with_timeout`."""
        limit = seconds if seconds is not None else self.timeout
        if limit is None:
            return _fetch(self.con.execute(sql, params), fetch)
        return run_with_timeout(self.con, sql, params, limit, fetch=fetch)


def setting(con: duckdb.DuckDBPyConnection, name: str) -> str:
    """Current value of a DuckDB setting, as text."""
    # fetchall, not fetchone: in DuckDB 2.0 an unfinished result blocks register()/unregister()
    return str(con.execute("SELECT current_setting(?)", [name]).fetchall()[0][0])


def is_locked(con: duckdb.DuckDBPyConnection) -> bool:
    return setting(con, "lock_configuration").lower() == "true"


def prepare(con: duckdb.DuckDBPyConnection) -> None:
    """Settings that keep data off disk and extensions out; safe before loading data."""
    for name, value in _PREPARE:
        con.execute(f"SET {name} = ?", [value])


def lock_down(con: duckdb.DuckDBPyConnection, memory_limit: str = "1GB", threads: int = 2,
              timeout: float | None = DEFAULT_TIMEOUT_S) -> Lockdown:
    """Lock `con` down after its data is loaded; return a `Lockdown` handle.

    Idempotent: a connection that is already locked is checked, not changed (a locked
    connection without external access off raises SandboxError).
    """
    threads = int(threads)
    if threads < 1:
        raise ValueError("threads must be at least 1")
    if is_locked(con):
        if setting(con, "enable_external_access").lower() != "false":
            raise SandboxError("the connection's configuration is locked with external access on; "
                               "open a new connection")
        return Lockdown(con, setting(con, "memory_limit"), int(setting(con, "threads")), timeout)
    try:
        prepare(con)
        con.execute("SET memory_limit = ?", [str(memory_limit)])
        con.execute("SET threads = ?", [threads])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except duckdb.Error as err:
        raise SandboxError(f"could not lock the connection down: {err}") from None
    expected = {"enable_external_access": "false", "lock_configuration": "true",
                "temp_directory": "", "autoload_known_extensions": "false",
                "autoinstall_known_extensions": "false", "python_enable_replacements": "false",
                "threads": str(threads)}
    for name, value in expected.items():
        if setting(con, name).lower() != value:
            raise SandboxError(f"lockdown check failed: {name} is {setting(con, name)!r}, "
                               f"expected {value!r}")
    return Lockdown(con, setting(con, "memory_limit"), threads, timeout)


def run_with_timeout(con: duckdb.DuckDBPyConnection, sql: str, params=None,
                     seconds: float = DEFAULT_TIMEOUT_S, fetch: str = "all"):
    """Execute `sql` (with `params`) and fetch its result, interrupting it after `seconds`.

    `fetch`: "all" (list of tuples), "one", "numpy", "df", or "none". Raises
    TimeoutError when the timer stopped the query; the connection stays usable.
    DuckDB releases the GIL while executing, so the timer thread runs on time.
    """
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    guard = threading.Lock()
    state = {"done": False, "fired": False}

    def fire():
        with guard:
            if not state["done"]:
                state["fired"] = True
                con.interrupt()

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        return _fetch(con.execute(sql, params), fetch)
    except duckdb.InterruptException:
        if state["fired"]:
            raise TimeoutError(
                f"the rule took longer than {seconds:g} s and was stopped; simplify it or "
                "screen a smaller cohort") from None
        raise
    finally:
        with guard:
            state["done"] = True
        timer.cancel()


def _fetch(result, fetch: str):
    if fetch == "all":
        return result.fetchall()
    if fetch == "one":  # the whole result is fetched: see `setting`
        rows = result.fetchall()
        return rows[0] if rows else None
    if fetch == "numpy":
        return result.fetchnumpy()
    if fetch == "df":
        return result.fetchdf()
    if fetch == "none":
        return None
    raise ValueError(f"fetch must be all, one, numpy, df or none, not {fetch!r}")
