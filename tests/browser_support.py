"""Shared pieces of the browser tests (tests/test_browser*.py).

`serve()` starts `streamlit run app.py` on a free port and waits for its health check;
tests/conftest.py turns it into the `server`, `fresh_server` and `browser` fixtures
(Debian chromium through Playwright). The page helpers wait for a script run to end and
read the main area, metric cards and exception boxes. Every browser test is skipped,
with a message, when /usr/bin/chromium or Playwright is absent.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # screenshots for a human (gitignored)
CHROMIUM = "/usr/bin/chromium"
STREAMLIT = Path(sys.executable).with_name("streamlit")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 120_000  # generous: CI machines are small and may be busy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def skip_without_browser() -> None:
    """Skip (with the reason) when Debian chromium or Playwright is absent."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    pytest.importorskip("playwright.sync_api")


def serve():
    """Start `streamlit run app.py` on a free port; yield its URL; stop it."""
    skip_without_browser()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [str(STREAMLIT), "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.3)
        if proc.poll() is not None:
            raise RuntimeError("streamlit exited:\n" + proc.stdout.read().decode(errors="replace"))
    else:
        proc.kill()
        raise RuntimeError("streamlit did not become healthy within 90 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def launch():
    """Headless Debian chromium through Playwright; yields the browser, closes it afterwards."""
    skip_without_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def settle(page) -> None:
    """Wait until the script run is over (no running indicator) and the page is quiet."""
    page.wait_for_timeout(400)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=TIMEOUT_MS)
    page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
    page.wait_for_timeout(600)


def no_exception(page, where: str) -> None:
    boxes = page.locator('[data-testid="stException"]')
    assert boxes.count() == 0, f"{where}: exception shown: {boxes.first.inner_text()[:2000]}"


def main_text(page) -> str:
    return page.locator('[data-testid="stMain"]').inner_text()


def metric(page, label: str) -> int:
    """The value of the first metric card whose text contains `label`, as an integer."""
    card = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    value = card.locator('[data-testid="stMetricValue"]').inner_text()
    return int(value.replace(",", ""))


def cut_labels(page) -> list[str]:
    """Y tick labels of the visible charts that start left of their chart (cut off on screen)."""
    return page.evaluate("""() => {
      const out = [];
      for (const plot of document.querySelectorAll('.js-plotly-plot')) {
        if (!plot.offsetParent) continue;
        const left = plot.getBoundingClientRect().left;
        for (const t of plot.querySelectorAll('.ytick text, .y2tick text')) {
          const r = t.getBoundingClientRect();
          if (r.width && r.left < left - 0.5) out.push(t.textContent);
        }
      }
      return out; }""")


def choose(page, scope, label: str, option: str) -> None:
    """Pick `option` in the selectbox labelled `label` inside `scope`; opens the list again when a
    rerun closed it first (the list belongs to the widget the rerun redraws)."""
    box = scope.get_by_role("combobox", name=label)
    wanted = page.get_by_role("option", name=option)
    box.wait_for(state="visible", timeout=TIMEOUT_MS)
    for _ in range(4):
        box.click()
        try:
            wanted.first.wait_for(state="visible", timeout=15_000)
            break
        except Exception:  # noqa: BLE001 - Playwright's timeout: settle and open the list again
            settle(page)
    wanted.first.click()
