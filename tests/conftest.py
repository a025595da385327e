"""Fixtures shared by several test files (the browser tests: tests/browser_support.py)."""

from __future__ import annotations

import pytest

from tests import browser_support


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
def browser(server):
    """Headless Debian chromium (skipped, with the reason, like `server`, when it is absent)."""
    yield from browser_support.launch()
