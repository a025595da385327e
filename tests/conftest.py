"""Fixtures shared by several test files (browser tests: tests/browser_support.py; PostgreSQL:
tests/pg_support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import browser_support, pg_support

BUILTIN = Path(__file__).resolve().parents[1] / "data" / "builtin_cohort.parquet"  # tracked in git


@pytest.fixture(scope="module")
def builtin_engine():
    """The built-in cohort screened for stage 1 under the default protocol (one per test module:
    tests may extend it with analyst rules)."""
    from kn026.base.table import connect
    from kn026.core.criteria import load_protocol
    from kn026.core.engine import Engine
    from kn026.ingest.cohort import load_cohort

    return Engine(load_cohort(BUILTIN, connect()), load_protocol(), 1)


@pytest.fixture(scope="session")
def server():
    """One `streamlit run app.py` for every browser test that does not need a fresh server.

    Each browser page opens its own Streamlit session, so tests share no session state;
    the server holds only read-only caches (protocol, built-in cohort).
    """
    yield from browser_support.serve()


@pytest.fixture
def fresh_server():
    """A server whose very first request comes from the test (Streamlit's legacy first run)."""
    yield from browser_support.serve()


@pytest.fixture(scope="session")
def chromium():
    """Headless Debian chromium, one per test session (Playwright's sync API allows one at a time)."""
    yield from browser_support.launch()


@pytest.fixture(scope="session")
def browser(server, chromium):
    """The browser of the app's tests (skipped, with the reason, like `server`, when it is absent)."""
    return chromium


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL server (Unix socket only) for every test that runs emitted SQL."""
    yield from pg_support.serve()
