"""Browser test: `streamlit run app.py` driven by Debian chromium through Playwright.

Starts the server on a free port, waits for its health check, visits every page,
checks its key text and that no exception box appears, checks that a sidebar setting
survives page switches, and saves a 1400x900 screenshot of every page under
tests/artifacts/ (gitignored) for a human to look at. Skipped when /usr/bin/chromium
or Playwright is absent.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.browser_support import ARTIFACTS, TIMEOUT_MS, choose, cut_labels, main_text, no_exception, settle

PAGES = [
    # (nav label, url path, key texts)
    ("Funnel", "", ["Eligibility funnel", "Eligible · strict", "Eligible · optimistic", "Unknown"]),
    ("Cohort", "cohort", ["Cohort", "Can every rule be assessed?", "Completeness"]),
    ("Criteria", "criteria", ["Criteria", "Funnel order and criteria in use", "Criteria, rules and thresholds"]),
    ("Patients", "patients", ["Patients", "Filter patients"]),
    ("Sites", "sites", ["Sites and countries", "By site", "By country"]),
    ("Recruitment", "recruitment", ["Recruitment forecast", "Readout"]),
    ("Network", "network", ["Network feasibility"]),
]

pytestmark = pytest.mark.browser


def test_every_page_renders_and_sidebar_state_persists(server, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    t0 = time.perf_counter()
    page.goto(server + "/?timing=1", timeout=TIMEOUT_MS)
    page.wait_for_selector(".js-plotly-plot", timeout=TIMEOUT_MS)
    first_funnel = time.perf_counter() - t0
    settle(page)
    (ARTIFACTS / "first_funnel_seconds.txt").write_text(f"{first_funnel:.2f}\n")

    for label, _url, texts in PAGES:
        if label != "Funnel":
            page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=label).click()
            page.wait_for_selector(f"h1:has-text('{texts[0]}')", timeout=TIMEOUT_MS)
            settle(page)
        body = main_text(page)
        for text in texts:
            assert text in body, f"{label}: {text!r} not on the page"
        no_exception(page, label)
        page.screenshot(path=str(ARTIFACTS / f"page_{label.lower()}.png"))

    # A sidebar setting survives page switches: choose stage 2, visit two pages, come back.
    from playwright.sync_api import expect

    main = page.locator('[data-testid="stMain"]')
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Stage 2 (randomised)", exact=True).click()
    expect(main.get_by_text("Stage 2 (randomised)").first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Funnel").click()
    page.wait_for_selector("h1:has-text('Eligibility funnel')", timeout=TIMEOUT_MS)
    settle(page)
    assert "Stage 2 (randomised)" in main_text(page), "stage 2 was lost on the way to the Funnel page"
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Cohort").click()
    page.wait_for_selector("h1:has-text('Cohort')", timeout=TIMEOUT_MS)
    settle(page)
    assert "Stage 2 (randomised)" in main_text(page), "stage 2 was lost on the way to the Cohort page"
    checked = sidebar.locator("label:has-text('Stage 2') input")
    assert checked.is_checked(), "the Stage radio no longer shows stage 2"
    no_exception(page, "after stage switch")
    page.close()


def test_scenario_funnel_and_compare(server, browser):
    """Select the example scenario and open the comparison tab; screenshot the funnel tabs."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server + "/", timeout=TIMEOUT_MS)
    page.wait_for_selector(".js-plotly-plot", timeout=TIMEOUT_MS)
    settle(page)
    sidebar = page.locator('[data-testid="stSidebar"]')
    choose(page, sidebar, "Scenario", "Creatinine clearance")
    from playwright.sync_api import expect

    expect(page.locator('[data-testid="stMain"]').get_by_text("vs protocol").first).to_be_visible(
        timeout=TIMEOUT_MS)
    settle(page)
    page.get_by_role("tab", name="Scenario vs protocol").click()
    page.wait_for_timeout(800)
    assert "vs the protocol" in main_text(page)
    no_exception(page, "scenario comparison")
    page.screenshot(path=str(ARTIFACTS / "funnel_compare.png"), full_page=False)
    assert not cut_labels(page), "scenario vs protocol: y labels cut on the left"
    for tab in ("Per-criterion table", "Overlap"):
        page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(800)
        no_exception(page, tab)
        assert not cut_labels(page), f"{tab}: y labels cut on the left"
        page.screenshot(path=str(ARTIFACTS / f"funnel_{tab.split()[0].lower().replace('-', '_')}.png"))
    page.close()


def test_deep_link_first_request(server, browser):
    """Opening a page's URL directly shows that page with the app's own navigation."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server + "/sites", timeout=TIMEOUT_MS)
    page.wait_for_selector("h1:has-text('Sites and countries')", timeout=TIMEOUT_MS)
    settle(page)
    nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
    for label, _, _ in PAGES:
        assert label in nav
    assert "app" not in nav.split()
    no_exception(page, "deep link")
    page.wait_for_selector(".js-plotly-plot", timeout=TIMEOUT_MS)
    assert not cut_labels(page), "sites chart: site labels (S049 · ...) cut on the left"
    page.close()


def test_edit_a_threshold_and_inspect_details(fresh_server, browser):
    """Change a threshold on the Criteria page, then look at distributions, a patient and countries.

    The page is a deep link and the server's first request: Streamlit runs that first
    request in its legacy multipage mode, where a widget used to lose its first change.
    """
    from playwright.sync_api import expect

    server = fresh_server
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server + "/criteria", timeout=TIMEOUT_MS)
    page.wait_for_selector("h1:has-text('Criteria')", timeout=TIMEOUT_MS)
    settle(page)
    main = page.locator('[data-testid="stMain"]')
    main.get_by_text("INCL07 · Neutrophils", exact=False).first.click()
    crcl = main.get_by_label(re.compile(r"^Minimum \(mL/min\)"))
    crcl.wait_for(timeout=TIMEOUT_MS)
    crcl.fill("50")
    crcl.press("Enter")
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("1 change(s)")).to_be_visible(
        timeout=TIMEOUT_MS)
    settle(page)
    assert "INCL07.CRCL min: 30 -> 50" in main_text(page).replace("→", "->")
    no_exception(page, "threshold change")
    crcl.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "criteria_edit.png"))

    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Cohort").click()
    page.wait_for_selector("h1:has-text('Cohort')", timeout=TIMEOUT_MS)
    settle(page)
    page.get_by_role("tab", name="Distributions").click()
    page.wait_for_selector("text=Key distributions", timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "distributions")
    page.get_by_text("Key distributions").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "cohort_distributions.png"))

    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Patients").click()
    page.wait_for_selector("h1:has-text('Patients')", timeout=TIMEOUT_MS)
    settle(page)
    main.get_by_text("fails only EXCL09", exact=True).click()
    settle(page)
    assert "fails only EXCL09" in main_text(page)
    page.get_by_text("One patient, rule by rule").scroll_into_view_if_needed()
    no_exception(page, "patient detail")
    page.screenshot(path=str(ARTIFACTS / "patients_detail.png"))

    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Sites").click()
    page.wait_for_selector("h1:has-text('Sites and countries')", timeout=TIMEOUT_MS)
    settle(page)
    page.get_by_role("tab", name="By country").click()
    settle(page)
    no_exception(page, "countries")
    page.screenshot(path=str(ARTIFACTS / "sites_countries.png"))

    # small-cell suppression from the sidebar: hidden cells read "suppressed"
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Small-cell suppression").click()
    sidebar.get_by_text("Hide small counts").click()
    expect(main.get_by_text("Small-cell suppression is on").first).to_be_visible(timeout=TIMEOUT_MS)
    page.get_by_role("tab", name="By site").click()
    settle(page)
    no_exception(page, "suppression")
    page.screenshot(path=str(ARTIFACTS / "sites_suppressed.png"))
    page.close()


def test_upload_report_and_suppressed_funnel(server, browser, tmp_path):
    """A bad upload shows the problem table; a good small upload turns suppression on."""
    from playwright.sync_api import expect

    from kn026.ingest import synth

    good = synth.generate(400, 3, sites=10)
    bad = good.head(60).astype(object)
    bad.loc[4, "age_years"] = "forty"
    bad.loc[9, "ecog"] = "7"
    (tmp_path / "bad_cohort.csv").write_text(bad.to_csv(index=False))
    (tmp_path / "small_cohort.csv").write_text(good.to_csv(index=False))

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server + "/", timeout=TIMEOUT_MS)
    page.wait_for_selector(".js-plotly-plot", timeout=TIMEOUT_MS)
    settle(page)
    sidebar = page.locator('[data-testid="stSidebar"]')
    main = page.locator('[data-testid="stMain"]')
    sidebar.get_by_text("Upload a file", exact=True).click()
    settle(page)
    sidebar.locator('input[type="file"]').set_input_files(str(tmp_path / "bad_cohort.csv"))
    expect(main.get_by_text("bad_cohort.csv could not be loaded").first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "bad upload")
    assert "Row numbers count data rows" in main_text(page)
    page.screenshot(path=str(ARTIFACTS / "upload_report.png"))

    sidebar.locator('input[type="file"]').set_input_files(str(tmp_path / "small_cohort.csv"))
    expect(sidebar.get_by_text("small_cohort.csv (400 patients)").first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "good upload")
    assert "counts below 5 hidden" in main_text(page)
    page.get_by_role("tab", name="Per-criterion table").click()
    settle(page)
    page.screenshot(path=str(ARTIFACTS / "funnel_suppressed.png"))
    page.close()
