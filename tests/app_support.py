"""Shared helpers of the AppTest files (tests/test_app*.py).

They drive the real `app.py` headlessly through Streamlit's AppTest: start it (on a
page), switch pages and tabs, check that no exception was raised, and read metric
cards and plotly charts (plotly 7 encodes numeric arrays as {"dtype", "bdata"} base64).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from ui import session

ROOT = Path(__file__).resolve().parents[1]

APP = str(ROOT / "app.py")
TIMEOUT = 120


def ok(at: AppTest) -> None:
    """No exception and no unexpected error box on the page."""
    assert not at.exception, [e.value for e in at.exception]


def new_app(page: str | None = None, title: str | None = None, timeout: float = TIMEOUT) -> AppTest:
    """The app after its first run; on `page` (whose title must be `title`) when given."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    ok(at)
    if page is not None:
        go(at, page, title)
    return at


def go(at: AppTest, page: str, title: str | None = None) -> AppTest:
    """Switch to `page`; check its title when `title` is given."""
    at.switch_page(page).run()
    ok(at)
    if title is not None:
        assert at.title[0].value == title
    return at


def open_tab(at: AppTest, page: str, label: str) -> AppTest:
    """Select a tab (tabs run their content lazily, only when selected)."""
    at.session_state[session.tab_key(page)] = label
    at.run()
    ok(at)
    return at


def open_expander(at: AppTest, item: str) -> AppTest:
    """Open the expander of `item` (a criterion id or a page's expander name)."""
    at.session_state[session.expander_key(item)] = True
    at.run()
    ok(at)
    return at


def sidebar_radio(at: AppTest, label: str):
    return next(r for r in at.sidebar.radio if r.label == label)


def metrics(at: AppTest) -> dict[str, str]:
    """Metric cards by label (without any icon prefix), values as shown."""
    return {m.label.split("] ", 1)[-1]: m.value for m in at.metric}


def number(text: str) -> int:
    return int(text.replace(",", ""))


def decode(arr):
    """A plotly-7 array: a list, or {"dtype", "bdata"} base64."""
    if isinstance(arr, dict) and "bdata" in arr:
        return np.frombuffer(base64.b64decode(arr["bdata"]), dtype=np.dtype(arr["dtype"])).tolist()
    return list(arr)


def charts(at: AppTest) -> list[dict]:
    """Every plotly chart on the page, as its JSON spec."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]

