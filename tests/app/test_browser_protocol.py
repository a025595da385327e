"""Browser test of the protocol picker: `streamlit run app.py` in Debian chromium (Playwright).

Uploads the second criteria file (tests/fixtures/protocols/mini.yaml) in the sidebar and
sees the Funnel change: the context line names MINI-01, the stage choice is the file's
(stage 3, no stage 2) and the counts are those of `analysis.run` with that file. Saves
tests/artifacts/protocol_mini_funnel.png for a human to look at.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser_support import ARTIFACTS, TIMEOUT_MS, main_text, metric, no_exception, settle

MINI = Path(__file__).parents[1] / "fixtures" / "protocols" / "mini.yaml"

pytestmark = pytest.mark.browser


def _mini_totals() -> dict:
    from kn026.base.table import connect
    from kn026.core import analysis
    from kn026.core import protocol_files as pf
    from kn026.core.engine import Engine
    from kn026.core.scenario import Scenario
    from kn026.ingest.cohort import load_cohort
    from ui import session

    proto = pf.from_upload(MINI.read_bytes(), "mini.yaml")
    cohort = load_cohort(session.BUILTIN, connect())
    return analysis.run(Engine(cohort, proto, 1, untrusted=pf.untrusted_rules(proto)), Scenario()).totals


def test_upload_a_criteria_file_and_the_funnel_changes(server, browser):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server + "/", timeout=TIMEOUT_MS)
    page.wait_for_selector(".js-plotly-plot", timeout=TIMEOUT_MS)
    settle(page)
    sidebar = page.locator('[data-testid="stSidebar"]')
    main = page.locator('[data-testid="stMain"]')
    assert "KN026-001 · Stage 1 (open-label)" in main_text(page)
    before = metric(page, "Eligible · strict")

    sidebar.locator('[data-testid="stSelectbox"]').first.click()
    page.get_by_role("option", name="Upload a criteria file (YAML)…").click()
    settle(page)
    sidebar.locator('input[type="file"]').set_input_files(str(MINI))
    expect(main.get_by_text("MINI-01 · Part A (dose finding)").first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "after the upload")
    expected = _mini_totals()
    assert metric(page, "Screened") == expected["screened"]
    assert metric(page, "Eligible · strict") == expected["strict"] != before
    assert metric(page, "Eligible · optimistic") == expected["optimistic"]
    side = sidebar.inner_text()
    assert "uploaded: mini.yaml" in side
    assert "Stage 3 · Part C (expansion)" in side and "Stage 2" not in side
    page.screenshot(path=str(ARTIFACTS / "protocol_mini_funnel.png"))

    sidebar.get_by_text("Stage 3 · Part C (expansion)", exact=True).click()
    expect(main.get_by_text("MINI-01 · Part C (expansion)").first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "stage 3")
    page.screenshot(path=str(ARTIFACTS / "protocol_mini_stage3.png"))
