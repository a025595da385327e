"""Browser test of the Network page: `streamlit run app.py` driven by Debian chromium.

Opens the page by its deep link on the built-in cohort, downloads this cohort's
histogram and reads it back with the CLI's reader, uploads two site files (two halves
of a synthetic cohort) through the real file input, checks the network totals against
the pooled cohort, visits the result tabs, then adds a file of another stage and checks
the refusal. Screenshots go to tests/artifacts/ (gitignored) for a human to look at.
Skipped when /usr/bin/chromium or Playwright is absent.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest

from kn026.base.table import connect
from kn026.core import analysis
from kn026.core.criteria import load_protocol
from kn026.core.engine import Engine
from kn026.ingest import synth
from kn026.ingest.cohort import load_cohort
from kn026.scale import federated
from tests.browser_support import ARTIFACTS, TIMEOUT_MS, main_text, metric, no_exception, settle

pytestmark = pytest.mark.browser
PROTOCOL = load_protocol()


def _site_file(path, part: pd.DataFrame, name: str, stage: int = 1):
    engine = Engine(load_cohort(part, connect()), PROTOCOL, stage)
    federated.write_histogram(path, federated.export_histogram(engine.histogram(), engine, None, name,
                                                               suppress_below=3))
    return path


def test_network_page_in_the_browser(server, browser, tmp_path):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server + "/network", timeout=TIMEOUT_MS)
    page.wait_for_selector("h1:has-text('Network feasibility')", timeout=TIMEOUT_MS)
    settle(page)
    assert "Network" in page.locator('[data-testid="stSidebarNav"]').inner_text()
    body = main_text(page)
    for text in ("Share this cohort's histogram", "Merge site histograms", "No patient rows", "Criteria fingerprint"):
        assert text in body, text
    no_exception(page, "share")
    page.screenshot(path=str(ARTIFACTS / "network_share.png"))

    # this cohort's histogram, as the browser downloads it
    main = page.locator('[data-testid="stMain"]')
    with page.expect_download(timeout=TIMEOUT_MS) as info:
        main.get_by_role("button", name=re.compile("Download the histogram")).click()
    saved = tmp_path / "mine.json"
    info.value.save_as(saved)
    doc = federated.read_histogram(saved)
    assert doc["total"] == 20_000 and doc["site"] == "My site" and doc["stage"] == 1
    assert doc["criteria_fingerprint"][:23] in main_text(page)

    # two sites' files through the real file input
    cohort = synth.generate(1000, seed=43, sites=4)
    sites = sorted(cohort["site_id"].unique())
    north = cohort[cohort["site_id"].isin(sites[:2])].reset_index(drop=True)
    south = cohort[~cohort["site_id"].isin(sites[:2])].reset_index(drop=True)
    files = [_site_file(tmp_path / "north.json", north, "Hospital North"),
             _site_file(tmp_path / "south.json", south, "Hospital South")]
    page.get_by_role("tab", name="Merge site histograms").click()
    page.wait_for_selector("text=Site histogram files", timeout=TIMEOUT_MS)
    settle(page)
    page.screenshot(path=str(ARTIFACTS / "network_merge_empty.png"))
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files([str(f) for f in files])
    expect(main.get_by_text("Network funnel · 2 sites")).to_be_visible(timeout=TIMEOUT_MS)
    page.wait_for_selector(".js-plotly-plot", timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "merge")
    want = analysis.run(Engine(load_cohort(cohort, connect()), PROTOCOL, 1)).totals
    assert metric(page, "Screened") == want["screened"] == 1000
    # both sites dropped rows below 3: the strict bound can only be lower, the optimistic one higher
    assert metric(page, "Eligible · strict") <= want["strict"]
    assert metric(page, "Eligible · optimistic") >= want["optimistic"]
    assert "dropped small cells before sharing" in main_text(page)
    page.screenshot(path=str(ARTIFACTS / "network_merged.png"))
    main.get_by_text("Network funnel · 2 sites").scroll_into_view_if_needed()
    page.mouse.wheel(0, 500)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "network_funnel.png"))
    for tab in ("Per site", "Per criterion"):
        page.get_by_role("tab", name=tab).click()
        settle(page)
        no_exception(page, tab)
        page.screenshot(path=str(ARTIFACTS / f"network_{tab.split()[1]}.png"))
        main.get_by_role("button", name=re.compile("Download the network histogram")).scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / f"network_{tab.split()[1]}_table.png"))
    text = main_text(page)
    assert "Hospital North" in text and "Hospital South" in text

    with page.expect_download(timeout=TIMEOUT_MS) as info:
        main.get_by_role("button", name=re.compile("Download the network histogram")).click()
    info.value.save_as(tmp_path / "net.json")
    net = federated.read_histogram(tmp_path / "net.json")
    assert net["total"] == 1000 and len(net["network"]["sites"]) == 2

    # this session's cohort (the built-in 20,000) joins as a third site
    main.get_by_text("Add this session's cohort as a site").click()
    expect(main.get_by_text("Network funnel · 3 sites")).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    assert metric(page, "Screened") == 21_000
    no_exception(page, "session cohort added")
    page.get_by_role("tab", name="Per site").click()
    settle(page)
    page.get_by_role("tab", name="Per site").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "network_with_session.png"))
    main.get_by_text("Add this session's cohort as a site").click()
    expect(main.get_by_text("Network funnel · 2 sites")).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)

    # a site that screened stage 2 is refused, naming the site and the fix
    other = _site_file(tmp_path / "east.json", south.head(200), "Hospital East", stage=2)
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files([str(other)])
    expect(main.get_by_text("The files cannot be merged")).to_be_visible(timeout=TIMEOUT_MS)
    settle(page)
    text = main_text(page)
    assert "stage differs" in text and "Hospital East" in text and "Merge histograms of one stage only" in text
    no_exception(page, "refused")
    main.get_by_text("The files cannot be merged").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "network_refused.png"))
    page.close()
