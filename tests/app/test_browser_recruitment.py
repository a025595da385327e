"""Browser test of the Recruitment page: `streamlit run app.py` driven by Debian chromium.

Opens the page by its deep link on the built-in cohort, checks the readout, the metric
cards and the fan chart, changes the target, visits every tab (the per-site table, the
protocol-vs-scenario comparison with the example scenario), switches to sites from
inputs, and saves screenshots under tests/artifacts/ (gitignored) for a human to look
at. Skipped when /usr/bin/chromium or Playwright is absent.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.browser_support import ARTIFACTS, TIMEOUT_MS, choose, main_text, no_exception, settle

pytestmark = pytest.mark.browser

READOUT = re.compile(r"Strict \(\d+\.\d% eligible\): median (\d+\.\d) months, 80 % interval (\d+\.\d)-(\d+\.\d) months")


def _readout(page) -> tuple[float, float, float]:
    m = READOUT.search(main_text(page))
    assert m, main_text(page)[:3000]
    return float(m.group(1)), float(m.group(2)), float(m.group(3))


def _changed_median(page, old: float) -> float:
    """The strict median once the page shows a new one (the rerun has finished)."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        settle(page)
        value = _readout(page)[0]
        if value != old:
            return value
        page.wait_for_timeout(500)
    raise AssertionError(f"the median stayed at {old} months")


def test_recruitment_page_in_the_browser(server, browser):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server + "/recruitment", timeout=TIMEOUT_MS)
    page.wait_for_selector("h1:has-text('Recruitment forecast')", timeout=TIMEOUT_MS)
    page.wait_for_selector(".js-plotly-plot", timeout=TIMEOUT_MS)
    settle(page)
    main = page.locator('[data-testid="stMain"]')
    nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
    assert "Recruitment" in nav and "Sites" in nav
    body = main_text(page)
    for text in ("Readout", "Optimistic (51.9% eligible)", "Target enrolment", "Share approached (%)",
                 "1.20 screened per site-month", "Fan chart", "Per site", "Protocol vs scenario", "Method"):
        assert text in body, text
    median, lo, hi = _readout(page)
    assert lo <= median <= hi and 3 < median < 60  # months, not the "1 month" of the raw synthetic volume
    no_exception(page, "recruitment")
    assert page.locator(".js-plotly-plot").count() == 1
    page.screenshot(path=str(ARTIFACTS / "recruitment_page.png"))
    main.get_by_text("Share approached (%)").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "recruitment_inputs.png"))
    page.locator(".js-plotly-plot").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "recruitment_fan.png"))

    # a larger target takes longer
    target = main.get_by_role("spinbutton", name="Target enrolment")
    target.fill("400")
    target.press("Enter")
    bigger = _changed_median(page, median)
    assert bigger > median

    page.get_by_role("tab", name="Per site").click()
    page.wait_for_selector("text=Expected patients each site contributes", timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "per site")
    main.get_by_text("Expected patients each site contributes").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "recruitment_sites.png"))
    main.locator('[data-testid="stDataFrame"]').last.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "recruitment_sites_table.png"))

    # the example scenario side by side with the protocol
    sidebar = page.locator('[data-testid="stSidebar"]')
    choose(page, sidebar, "Scenario", "Creatinine clearance")
    settle(page)
    page.get_by_role("tab", name="Protocol vs scenario").click()
    expect(main.get_by_text("weeks on the median time to 400 patients").first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    assert "costs" in main_text(page)  # CrCl >= 50 excludes more patients: it takes longer
    no_exception(page, "scenario comparison")
    main.get_by_text("weeks on the median time").first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "recruitment_compare.png"))
    page.locator(".js-plotly-plot").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "recruitment_compare_chart.png"))

    # sites from inputs, with a zero rate: a clear message, no traceback
    main.get_by_text("From inputs", exact=True).click()
    settle(page)
    rate = main.get_by_role("spinbutton", name="Screened / site-month")
    rate.fill("0")
    rate.press("Enter")
    expect(main.get_by_text("target unreachable").first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "zero rate")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "recruitment_zero_rate.png"))
    page.close()


def test_uploaded_cohort_with_suppressed_sites(server, browser, tmp_path):
    """An upload (suppression on by default): full approach share, small sites hidden in the per-site table."""

    from playwright.sync_api import expect

    from kn026.ingest import synth

    synth.generate(300, 6, sites=12).to_csv(tmp_path / "small_sites.csv", index=False)  # one site has 3
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server + "/recruitment", timeout=TIMEOUT_MS)
    page.wait_for_selector("h1:has-text('Recruitment forecast')", timeout=TIMEOUT_MS)
    settle(page)
    sidebar = page.locator('[data-testid="stSidebar"]')
    main = page.locator('[data-testid="stMain"]')
    sidebar.get_by_text("Upload a file", exact=True).click()
    settle(page)
    sidebar.locator('input[type="file"]').set_input_files(str(tmp_path / "small_sites.csv"))
    expect(sidebar.get_by_text("small_sites.csv (300 patients)").first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    assert main.get_by_role("spinbutton", name="Share approached (%)").input_value() == "100.0"
    assert "counts below 5 hidden" in main_text(page)
    page.get_by_role("tab", name="Per site").click()
    expect(main.get_by_text("Small-cell suppression is on").first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "suppressed sites")
    main.get_by_text("Small-cell suppression is on").first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "recruitment_suppressed_sites.png"))
    page.close()
