"""Browser test of the rule editor (issue 6): `streamlit run app.py` + Debian chromium.

Encodes the CrCl >= 50 mL/min variant and a new criterion through the real Criteria
page, checks that a hostile expression is refused with the token underlined, downloads
the scenario YAML and the screening log and checks both carry the new rules, and that
the Funnel page shows them. Screenshots go to tests/artifacts/rules_*.png for a human to
look at. Skipped when /usr/bin/chromium or Playwright is absent.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from kn026.base.table import connect
from kn026.core import analysis, custom
from kn026.core.criteria import load_protocol
from kn026.core.engine import Engine
from kn026.core.scenario import Scenario, parse_scenario
from kn026.ingest.cohort import load_cohort
from tests.browser_support import ARTIFACTS, ROOT, TIMEOUT_MS, main_text, metric, no_exception, settle

pytestmark = pytest.mark.browser


def _button(page, name: str):
    return page.get_by_role("button", name=re.compile(re.escape(name)))


def _click(page, name: str) -> None:
    _button(page, name).click()
    settle(page)
    no_exception(page, name)


def _shot(page, anchor: str, name: str, block: str = "start") -> None:
    """Scroll `anchor` text to the top (or `block`) of the view and save a screenshot."""
    page.get_by_text(anchor, exact=True).first.evaluate(f"el => el.scrollIntoView({{block: '{block}'}})")
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"rules_{name}.png"))


def test_rule_editor_end_to_end(server, browser, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    protocol = load_protocol()
    engine = Engine(load_cohort(str(ROOT / "data" / "builtin_cohort.parquet"), connect()), protocol, 1)
    page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page.goto(server + "/criteria", timeout=TIMEOUT_MS)
    page.wait_for_selector("h1:has-text('Criteria')", timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "criteria")
    _shot(page, "Custom criteria and rewritten rules", "editor_empty")

    # a hostile expression: refused, the token underlined, nothing changes
    before = metric(page, "Eligible · strict")
    add_sql = page.locator("textarea[aria-label='SQL condition to pass']").first
    page.locator("input[aria-label='ID']").fill("BAD01")
    add_sql.fill("age_years > 18 AND read_csv('/etc/passwd') IS NOT NULL")
    _click(page, "Add criterion")
    error = page.locator('[data-testid="stAlertContentError"]').first
    assert "read_csv is not an allowed function" in error.inner_text()
    code = page.locator('[data-testid="stCode"]').filter(has_text="^^^^^^^^").first.inner_text()
    line, marks = code.splitlines()[-2:]  # the text (cut to a window around the token), carets under it
    assert line[marks.index("^"):marks.index("^") + 8] == "read_csv" and "/etc/passwd" in line
    assert metric(page, "Eligible · strict") == before
    assert "Protocol as written" in page.locator('[data-testid="stMain"]').inner_text()
    _shot(page, "Not added; nothing changed.", "hostile_refused", block="center")

    # the other registry version: CrCl >= 50 mL/min as an expression (example button)
    _click(page, "Example: CrCl ≥ 50")
    _shot(page, "Custom criteria and rewritten rules", "crcl50_filled")
    _click(page, "Rewrite rule")
    by_param = analysis.run(engine, Scenario("p", overrides={"INCL07.CRCL": {"min": 50}})).totals
    assert metric(page, "Eligible · strict") == by_param["strict"]

    # a brand-new criterion (example button), then applied
    _click(page, "Example: age ≤ 75")
    _click(page, "Add criterion")
    main = page.locator('[data-testid="stMain"]').inner_text()
    assert "CUST01" in main and "INCL07.CRCL" in main and "Not added" not in main
    want = analysis.run(engine, Scenario("check", custom=(custom.EXAMPLE_CUSTOM,),
                                         replace=dict([protocol.examples.replace])))
    assert metric(page, "Eligible · strict") == want.totals["strict"]
    assert metric(page, "Eligible · optimistic") == want.totals["optimistic"]
    _shot(page, "Custom criteria and rewritten rules", "rules_added")
    page.locator("h1").first.evaluate("el => el.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "rules_criteria_top.png"))

    # the new criterion's and the rewritten rule's expanders: its threshold box, the rewrite
    for item in ("CUST01 ·", "INCL07 ·"):
        page.locator('[data-testid="stExpander"] summary').filter(has_text=item).first.click()
        settle(page)
    no_exception(page, "expanders")
    box = page.locator('[data-testid="stExpander"]').filter(has_text="CUST01 ·").first
    assert re.search(r"CUST01 · age_years (<=|≤) 75", box.inner_text()) and "Max age (years)" in box.inner_text()
    assert "not used by the rewritten expression" in main_text(page)
    box.evaluate("el => el.scrollIntoView({block: 'center'})")
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "rules_expander_custom.png"))
    _shot(page, "not used by the rewritten expression", "expander_rewritten", block="center")

    # the help: columns with types, allowed functions
    page.get_by_text("Help: columns, parameters, operators and functions").click()
    settle(page)
    help_text = page.locator('[data-testid="stExpander"]').filter(has_text="Help: columns").inner_text()
    assert "coalesce" in help_text and "Columns of the loaded cohort" in help_text
    _shot(page, "Help: columns, parameters, operators and functions", "help")

    # the scenario YAML download carries both rules
    with page.expect_download(timeout=TIMEOUT_MS) as info:
        _button(page, "Download YAML").click()
    text = Path(info.value.path()).read_text(encoding="utf-8")
    got = parse_scenario(text, protocol)
    assert [c.id for c in got.custom] == ["CUST01"] and set(got.replace) == {"INCL07.CRCL"}

    # the Funnel page shows the new criterion
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Funnel").click()
    page.wait_for_selector(".js-plotly-plot", timeout=TIMEOUT_MS)
    settle(page)
    no_exception(page, "funnel")
    assert metric(page, "Eligible · strict") == want.totals["strict"]
    assert "CUST01" in page.locator(".js-plotly-plot").first.inner_text()
    page.locator(".js-plotly-plot").first.evaluate("el => el.scrollIntoView({block: 'end'})")
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "rules_funnel.png"))  # the end of the funnel: the new criterion

    # the screening log (Patients page, Downloads) has a column for it, with the engine's verdicts
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Patients").click()
    page.wait_for_selector("h1:has-text('Patients')", timeout=TIMEOUT_MS)
    settle(page)
    page.get_by_role("tab", name="Downloads").click()
    settle(page)
    with page.expect_download(timeout=TIMEOUT_MS) as info:
        _button(page, "Screening log (CSV)").click()
    rows = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text(encoding="utf-8-sig"))))
    assert len(rows) == 20_000 and "CUST01" in rows[0]
    over75 = engine.con.execute("SELECT count(*) FROM cohort WHERE age_years > 75").fetchone()[0]
    assert sum(r["CUST01"] == "fail" for r in rows) == over75
    assert sum(r["eligible"] == "yes" for r in rows) == want.totals["strict"]
    page.close()

