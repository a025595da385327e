"""Browser test of the data-loading wizards: `streamlit run app.py` driven by Debian chromium.

Real file-uploader widgets fed by Playwright's `set_input_files`: the OMOP CDM zip (the
planted persons of tests/fixtures/omop, zipped at test time) with its import report, the
CSV / Excel mapping wizard on a foreign CSV (haemoglobin in g/dL), and a renamed binary
refused with a message. Screenshots go to tests/artifacts/ (gitignored) for a human to
look at. Skipped when /usr/bin/chromium or Playwright is absent.
"""

from __future__ import annotations

import zipfile

import pandas as pd
import pytest

from tests.browser_support import ARTIFACTS, ROOT, TIMEOUT_MS, main_text, no_exception, settle

FIXTURES = ROOT / "tests" / "fixtures" / "omop"

pytestmark = pytest.mark.browser


def _open(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server + "/", timeout=TIMEOUT_MS)
    page.wait_for_selector(".js-plotly-plot", timeout=TIMEOUT_MS)
    settle(page)
    return page


def _choose(page, label: str) -> None:
    """Pick a source in the sidebar: the app opens the Cohort page's Load data tab."""
    page.locator('[data-testid="stSidebar"]').get_by_text(label, exact=True).click()
    page.wait_for_selector("h1:has-text('Cohort')", timeout=TIMEOUT_MS)
    settle(page)


def _uploader(page, label: str):
    """The file input of the uploader whose label contains `label`."""
    return page.locator('[data-testid="stFileUploader"]').filter(has_text=label).locator('input[type="file"]')


def test_omop_zip_upload_and_import_report(server, browser, tmp_path):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    zpath = tmp_path / "planted_cdm.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(FIXTURES.glob("*.csv")):
            if path.name != "CONCEPT_ANCESTOR.csv":
                zf.write(path, f"cdm/{path.name}")

    page = _open(browser, server)
    main = page.locator('[data-testid="stMain"]')
    _choose(page, "OMOP CDM (zip upload)")
    assert "Import an OMOP CDM (zip)" in main_text(page)
    _uploader(page, "OMOP CDM zip").set_input_files(str(zpath))
    settle(page)
    page.screenshot(path=str(ARTIFACTS / "import_omop_wizard.png"))
    main.get_by_role("button", name="Import the OMOP CDM").click()
    expect(main.get_by_text("Persons imported").first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    page.screenshot(path=str(ARTIFACTS / "import_omop_report.png"))
    no_exception(page, "OMOP import")
    body = main_text(page)  # the report table itself is a canvas grid: checked in test_app_import.py
    assert "6 of 6" in body and "Index date" in body and "Download the import report (CSV)" in body
    sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
    assert "OMOP planted_cdm.zip (6 patients" in sidebar
    main.get_by_text("Source: planted_cdm.zip").evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / "import_omop_report_table.png"))
    page.close()


def test_mapping_wizard_and_refused_binary(server, browser, tmp_path):
    from playwright.sync_api import expect

    from kn026.ingest import synth

    ARTIFACTS.mkdir(exist_ok=True)
    base = synth.generate(80, 4, sites=3)
    frame = pd.DataFrame({
        "Subject No.": base["patient_id"], "Site": base["site_id"],
        "Date of screening": base["screening_date"].astype(str), "AGE": base["age_years"],
        "Gender": base["sex"].map({"F": "Female", "M": "male"}),
        "HER2 IHC score": base["her2_ihc"].map(lambda v: "" if pd.isna(v) else f"IHC {int(v)}+"),
        "Hb (g/dL)": (base["hemoglobin_g_l"] / 10).round(2), "ECOG PS": base["ecog"], "Comments": "none",
        "QTc (ms)": 430})  # a machine QTc: offered for qtcf_ms, never mapped without the analyst
    (tmp_path / "site_export.csv").write_text(frame.to_csv(index=False))
    (tmp_path / "renamed.csv").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)

    page = _open(browser, server)
    main = page.locator('[data-testid="stMain"]')
    _choose(page, "CSV / Excel with mapping")
    inp = _uploader(page, "The file")
    inp.set_input_files(str(tmp_path / "renamed.csv"))
    expect(main.get_by_text("renamed.csv is a PNG image, not a CSV file").first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "renamed binary")
    page.screenshot(path=str(ARTIFACTS / "import_mapping_refused.png"))

    inp.set_input_files(str(tmp_path / "site_export.csv"))
    expect(main.get_by_text("All 80 rows pass").first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "mapping wizard")
    assert "site_export.csv" in main_text(page) and "not used: Comments" in main_text(page)
    # the wizard, section by section (the page scrolls inside Streamlit's main container)
    for i, heading in enumerate(("2 · Columns and units", "4 · Values", "5 · Preview and validation")):
        main.get_by_text(heading, exact=True).evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(400)
        page.screenshot(path=str(ARTIFACTS / f"import_mapping_wizard_{i + 2}.png"))
    # the QTc is shown for qtcf_ms, not selected, with the reason (dictionary section 4)
    expect(main.get_by_text("looks like qtcf_ms but is not mapped without your choice", exact=False).first
           ).to_be_visible(timeout=TIMEOUT_MS)
    assert "Fridericia" in main_text(page)
    # the haemoglobin unit was suggested from the header, with its conversion
    expect(main.get_by_role("combobox", name="Unit of Hb (g/dL)")).to_have_value("in g/dL (× 10 → g/L)")
    main.get_by_role("button", name="Load this cohort").click()
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("site_export.csv via mapping (80 patients)")
           .first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    page.screenshot(path=str(ARTIFACTS / "import_mapping_report.png"))
    no_exception(page, "mapped load")
    assert "site_export.csv: 80 rows mapped onto 8 dictionary column(s)" in main_text(page)
    page.close()


def test_mapping_wizard_date_format_selector(server, browser, tmp_path):
    """A dd/mm/yyyy export whose dates all read both ways: the analyst picks the format in the
    selector, sees the first values as read and the earliest / latest dates, then loads."""
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    visits = ["05/09/2022", "01/10/2022", "12/11/2022", "03/04/2022", "08/02/2023", "11/06/2022"]
    frame = pd.DataFrame({"Subject No.": [f"P{i:03d}" for i in range(1, 61)],
                          "Date of screening": [visits[i % len(visits)] for i in range(60)],
                          "AGE": [str(50 + i % 20) for i in range(60)], "Gender": ["Female", "male"] * 30})
    (tmp_path / "dates_export.csv").write_text(frame.to_csv(index=False))

    page = _open(browser, server)
    main = page.locator('[data-testid="stMain"]')
    _choose(page, "CSV / Excel with mapping")
    _uploader(page, "The file").set_input_files(str(tmp_path / "dates_export.csv"))
    expect(main.get_by_text("3 · Dates", exact=True)).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "dates section")
    select = main.get_by_role("combobox", name="Date format of Date of screening")
    expect(select).to_have_value("— choose the date format —")
    assert "5 Sep 2022 or 9 May 2022" in main_text(page)
    expect(main.get_by_role("button", name="Load this cohort")).to_be_disabled()
    main.get_by_text("3 · Dates", exact=True).evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / "import_dates_asked.png"))

    select.click()
    page.get_by_role("option", name="dd/mm/yyyy (day first) · reads all 60").click()
    expect(main.get_by_text("All 60 rows pass").first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "date format chosen")
    expect(select).to_have_value("dd/mm/yyyy (day first) · reads all 60")
    body = main_text(page)
    assert "05/09/2022 → 5 Sep 2022" in body
    assert "earliest 3 Apr 2022, latest 8 Feb 2023 (60 dates)" in body
    expect(main.get_by_role("button", name="Load this cohort")).to_be_enabled()
    main.get_by_text("3 · Dates", exact=True).evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / "import_dates_chosen.png"))
    main.get_by_text("Dates as read").evaluate("e => e.scrollIntoView({block: 'center'})")
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / "import_dates_preview.png"))
    main.get_by_role("button", name="Load this cohort").click()
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("dates_export.csv via mapping (60 patients)")
           .first).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "loaded with a date format")
    page.close()
