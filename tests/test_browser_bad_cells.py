"""Browser test: bad cells answered without leaving the app, and the honest data badge.

`streamlit run app.py` driven by Debian chromium: a CSV with bad cells uploaded in the
sidebar; each kind of choice made with the real widgets (fix a value, blank a value,
blank every bad value of a column, drop a row, declare the unit of a column); *Load with
these choices*; the Import report. Then the mapping wizard (a cell blanked in the
preview unblocks *Load this cohort*) and a two-column, one-patient CSV, whose badge says
how little it can assess. Screenshots go to tests/artifacts/ for a human to look at.
"""

from __future__ import annotations

import pytest

from tests.browser_support import ARTIFACTS, TIMEOUT_MS, main_text, no_exception, settle

pytestmark = pytest.mark.browser


def _open(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server + "/", timeout=TIMEOUT_MS)
    page.wait_for_selector(".js-plotly-plot", timeout=TIMEOUT_MS)
    settle(page)
    return page


def _pick(page, main, box: str, option: str) -> None:
    """Choose `option` in the selectbox labelled `box` (its label may be hidden).

    A click that lands while the page still scrolls may leave the list closed: click again.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    combo = main.get_by_role("combobox", name=box, exact=True)
    combo.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    for attempt in range(3):
        combo.click()
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=5000)
            break
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
            if attempt == 2:
                raise
    settle(page)


def _shot(page, main, text: str, name: str) -> None:
    main.get_by_text(text, exact=False).first.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / name))


def test_upload_with_bad_cells_each_choice_then_load(server, browser, tmp_path):
    from playwright.sync_api import expect

    from kn026.ingest import synth

    ARTIFACTS.mkdir(exist_ok=True)
    df = synth.generate(60, 8, sites=4).astype({"age_years": object, "sex": object,
                                                 "days_since_radiotherapy": object})
    for r in (3, 5, 8, 11, 12, 20, 30):
        df.loc[r, "age_years"] = "forty"
    df.loc[7, "sex"] = "X"
    df.loc[9, "days_since_radiotherapy"] = "recent"
    df["hemoglobin_g_l"] = (df["hemoglobin_g_l"] / 10).round(1)
    (tmp_path / "site_bad.csv").write_text(df.to_csv(index=False))

    page = _open(browser, server)
    sidebar = page.locator('[data-testid="stSidebar"]')
    main = page.locator('[data-testid="stMain"]')
    sidebar.get_by_text("Upload a file", exact=True).click()
    settle(page)
    sidebar.locator('input[type="file"]').set_input_files(str(tmp_path / "site_bad.csv"))
    expect(main.get_by_text("site_bad.csv could not be loaded").first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "bad upload")
    assert "Choose what to do with each problem" in main_text(page)
    page.screenshot(path=str(ARTIFACTS / "bad_cells_upload_problems.png"))
    _shot(page, main, "hemoglobin_g_l", "bad_cells_upload_unit.png")

    _pick(page, main, "Row 4 of age_years", "Fix the value")
    box = main.get_by_label("Corrected value of row 4 of age_years")
    box.fill("44")
    box.press("Enter")
    settle(page)
    _pick(page, main, "Every bad value of age_years", "Blank all 7 (unknown)")
    _pick(page, main, "Row 8 of sex", "Blank it (unknown)")
    _pick(page, main, "Row 10 of days_since_radiotherapy", "Drop the row")
    _pick(page, main, "Unit of the file's hemoglobin_g_l values", "in g/dL (× 10 → g/L)")
    no_exception(page, "choices made")
    body = main_text(page)
    assert "Your choices (5)" in body and "declare the unit of hemoglobin_g_l: g/dL (× 10 → g/L)" in body
    page.screenshot(path=str(ARTIFACTS / "bad_cells_upload_choices_top.png"))
    _shot(page, main, "Your choices (5)", "bad_cells_upload_choices.png")

    main.get_by_role("button", name="Load with these choices").click()
    expect(sidebar.get_by_text("site_bad.csv (59 patients; 5 change(s) chosen)").first
           ).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "loaded with choices")
    page.screenshot(path=str(ARTIFACTS / "bad_cells_upload_loaded.png"))
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Cohort").click()
    page.wait_for_selector("h1:has-text('Cohort')", timeout=TIMEOUT_MS)
    settle(page)
    page.get_by_role("tab", name="Import report").click()
    settle(page)
    no_exception(page, "import report")
    assert "was loaded with your choices about its bad cells" in main_text(page)
    page.screenshot(path=str(ARTIFACTS / "bad_cells_upload_report.png"))
    page.close()


def test_mapping_wizard_blank_in_the_preview_then_load(server, browser, tmp_path):
    import pandas as pd
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    frame = pd.DataFrame({"Subject": [f"S{i:02d}" for i in range(1, 41)],
                          "Age": [str(40 + i % 30) for i in range(40)],
                          "Hb (g/dL)": [f"{11 + i % 4}.{i % 10}" for i in range(40)],
                          "ECOG": [str(i % 3) for i in range(40)]})
    frame.loc[5, "Hb (g/dL)"] = "haemolysed"
    frame.loc[12, "ECOG"] = "?"
    (tmp_path / "mapped_bad.csv").write_text(frame.to_csv(index=False))

    page = _open(browser, server)
    main = page.locator('[data-testid="stMain"]')
    page.locator('[data-testid="stSidebar"]').get_by_text("CSV / Excel with mapping", exact=True).click()
    page.wait_for_selector("h1:has-text('Cohort')", timeout=TIMEOUT_MS)
    settle(page)
    main.locator('[data-testid="stFileUploader"]').filter(has_text="The file").locator(
        'input[type="file"]').set_input_files(str(tmp_path / "mapped_bad.csv"))
    expect(main.get_by_text("problem(s) in the mapped file").first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    expect(main.get_by_role("button", name="Load this cohort")).to_be_disabled()
    _shot(page, main, "5 · Preview and validation", "bad_cells_mapping_problems.png")
    _pick(page, main, "Row 6 of hemoglobin_g_l", "Blank it (unknown)")
    _pick(page, main, "Row 13 of ecog", "Drop the row")
    expect(main.get_by_text("All 39 rows left after your choices (1 dropped) pass").first).to_be_visible(
        timeout=TIMEOUT_MS)
    no_exception(page, "mapping choices")
    expect(main.get_by_role("button", name="Load this cohort")).to_be_enabled()
    _shot(page, main, "5 · Preview and validation", "bad_cells_mapping_choices.png")
    main.get_by_role("button", name="Load this cohort").click()
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("mapped_bad.csv via mapping (39 patients)")
           .first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "mapped load")
    assert "Your choices about bad cells" in main_text(page)
    page.screenshot(path=str(ARTIFACTS / "bad_cells_mapping_report.png"))
    page.close()


def test_two_column_csv_badge_says_little_can_be_assessed(server, browser, tmp_path):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    (tmp_path / "tiny.csv").write_text("patient_id,age_years\nP1,61\n")
    page = _open(browser, server)
    sidebar = page.locator('[data-testid="stSidebar"]')
    assert "Can assess all" in sidebar.inner_text()
    sidebar.get_by_text("Upload a file", exact=True).click()
    settle(page)
    sidebar.locator('input[type="file"]').set_input_files(str(tmp_path / "tiny.csv"))
    expect(sidebar.get_by_text("tiny.csv (1 patients)").first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "tiny upload")
    side = sidebar.inner_text()
    assert "Little can be assessed" in side and "Can assess all" not in side
    assert "little of the protocol can be assessed" in main_text(page)
    page.screenshot(path=str(ARTIFACTS / "badge_little.png"))
    page.close()
