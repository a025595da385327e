"""A throwaway PostgreSQL server for the tests that run the emitted SQL for real.

`serve()` runs `initdb` and `pg_ctl` of the installed server binaries (Debian package
`postgresql`, /usr/lib/postgresql/N/bin) as the `postgres` OS user when the tests run
as root (initdb refuses root), with the data directory and the Unix socket in a fresh
temporary folder and no TCP listener (`listen_addresses=''`); the server is stopped
and the folder removed at the end. tests/conftest.py turns it into the session-scoped
`postgres` fixture. Tests are skipped, with the reason, when the binaries are absent,
unless KN026_REQUIRE_POSTGRES=1 (set by .ci/run), where that is a failure instead.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from kn026.base import schema

REQUIRE = "KN026_REQUIRE_POSTGRES"
PORT = "5432"  # names the socket file only: there is no TCP listener
USER = "kn026"  # the bootstrap superuser initdb creates (trust authentication, socket only)
TYPES = {"VARCHAR": "TEXT", "DOUBLE": "DOUBLE PRECISION", "INTEGER": "INTEGER",
         "BOOLEAN": "BOOLEAN", "DATE": "DATE"}  # dictionary kinds (schema.Column.sql_type)


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin holding initdb, pg_ctl and psql."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bindir = Path(initdb).parent
        version = bindir.parent.name
        if version.isdigit() and all((bindir / b).exists() for b in ("pg_ctl", "psql")):
            found.append((int(version), bindir))
    return max(found)[1] if found else None


class Server:
    """A running throwaway server; `psql(...)` runs the client against it over the socket."""

    def __init__(self, bindir: Path, base: Path):
        self.bindir, self.base = bindir, base

    def psql(self, *args: str, stdin: Path | None = None) -> str:
        """Run psql (no psqlrc, stop at the first error) and return its standard output.

        A failure raises AssertionError with psql's own message, so a test shows the
        SQL error PostgreSQL reported.
        """
        cmd = [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.base),
               "-p", PORT, "-U", USER, "-d", "postgres", *args]
        with open(stdin, "rb") if stdin else open(os.devnull, "rb") as fh:
            out = subprocess.run(cmd, stdin=fh, capture_output=True, text=True)
        if out.returncode != 0:
            raise AssertionError(f"psql {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
        return out.stdout

    def __call__(self, *args: str) -> str:
        """psql with unaligned, comma-separated rows and no header (tests/scale/test_portable.py)."""
        return self.psql("-At", "-F", ",", *args)

    def load_csv(self, table: str, path: Path) -> list[str]:
        """(Re)create `table` with the dictionary types of the CSV's columns and COPY it in.

        Numbers become DOUBLE PRECISION, whole numbers INTEGER, flags BOOLEAN, dates
        DATE and text TEXT; an empty CSV field is NULL. Returns the column names.
        """
        header = path.read_text(encoding="utf-8").split("\n", 1)[0].strip()
        names = header.split(",")
        for name in names:
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                raise ValueError(f"{path}: column {name!r} is not a lower snake case name")
        cols = ", ".join(f'"{n}" {TYPES[schema.BY_NAME[n].sql_type]}' for n in names)
        quoted = ", ".join(f'"{n}"' for n in names)
        self.psql("-c", f'DROP TABLE IF EXISTS "{table}"; CREATE TABLE "{table}" ({cols})')
        self.psql("-c", f'COPY "{table}" ({quoted}) FROM STDIN WITH (FORMAT csv, HEADER true)', stdin=path)
        return names

    def query_to_csv(self, sql_file: Path, out: Path) -> Path:
        """Run a SQL file and write its result as CSV with a header (psql --csv)."""
        self.psql("--csv", "-f", str(sql_file), "-o", str(out))
        return out


def serve():
    """Start a server in a temporary folder, yield a :class:`Server`, then stop and remove it."""
    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL server binaries are not installed (Debian package postgresql)"
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{message}, and {REQUIRE}=1 asks for the PostgreSQL tests to run")
        pytest.skip(message)
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="kn026-pg-"))
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        runuser = shutil.which("runuser")
        if runuser is None:
            shutil.rmtree(base, ignore_errors=True)
            pytest.fail("the tests run as root but runuser is missing: cannot start PostgreSQL as postgres")
        shutil.chown(base, "postgres", "postgres")
        as_user = [runuser, "-u", "postgres", "--"]
    data = base / "data"
    pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", USER,
                        "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"],
                       check=True, capture_output=True, text=True)
        options = f"-c listen_addresses='' -k {base} -p {PORT} -F -c max_connections=10"
        subprocess.run([*pg_ctl, "-w", "-t", "120", "-l", str(base / "server.log"), "-o", options, "start"],
                       check=True, capture_output=True, text=True)
        started = True
        yield Server(bindir, base)
    except subprocess.CalledProcessError as err:
        log = base / "server.log"
        detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise AssertionError(f"{' '.join(err.cmd)} failed:\n{err.stderr}\n{detail}") from None
    finally:
        if started:
            subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
