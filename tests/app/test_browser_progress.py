"""Progress you can see (issue 13 item 2): an upload draws a progress bar with the step and
rows read / total as it loads, and ends on what was loaded."""

from __future__ import annotations

import re
import time

import pytest

from tests.browser_support import ARTIFACTS, TIMEOUT_MS, no_exception, settle

pytestmark = pytest.mark.browser

N = 120_000  # enough rows that the load takes a few seconds here, so its steps can be seen

PROGRESS_TEXT = """() => Array.from(document.querySelectorAll('[data-testid="stMain"] [data-testid="stProgress"]'))
    .map(e => e.innerText.trim()).filter(t => t)"""


def test_an_upload_shows_its_steps_then_what_was_loaded(server, browser, tmp_path):
    from kn026.ingest import synth

    path = tmp_path / "progress_cohort.csv"
    path.write_text(synth.generate(N, 5, sites=20).to_csv(index=False))
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server + "/", timeout=TIMEOUT_MS)
    page.wait_for_selector(".js-plotly-plot", timeout=TIMEOUT_MS)
    settle(page)
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Upload a file", exact=True).click()
    settle(page)
    sidebar.locator('input[type="file"]').set_input_files(str(path))
    loaded = sidebar.get_by_text(f"progress_cohort.csv ({N:,} patients)")
    seen: list[str] = []
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline and not loaded.count():
        for text in page.evaluate(PROGRESS_TEXT):
            if not seen or seen[-1] != text:
                seen.append(text)
                if len(seen) == 3:
                    page.screenshot(path=str(ARTIFACTS / "upload_progress.png"))
        page.wait_for_timeout(40)
    assert loaded.count(), f"the upload did not load; steps seen: {seen}"
    # every step names what it does, with a capital: reading (rows read / total), normalising,
    # checking, screening
    unnamed = [s for s in seen if not re.match(r"(Read|Reading|Normalising|Checking|Loaded|Screening|Ready:) ", s)]
    assert seen and not unnamed, unnamed
    assert any(re.search(r"~?[\d,]+ of ~?[\d,]+ rows", s) for s in seen), f"no step showed rows read / total: {seen}"
    assert [w for w in ("Normalising", "Checking", "Screening") if not any(s.startswith(w) for s in seen)] == [], seen
    settle(page)
    no_exception(page, "upload with progress")
    page.close()
