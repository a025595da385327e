"""Benchmark the running app in a real browser: `python -m kn026.bench.app [--n 1000000]`.

Starts `streamlit run app.py` on a free port, drives Debian chromium through
Playwright (a development dependency, imported here only) and reports, per step, the
wall time from the interaction to the settled page and the page script's own server
time, which the app prints in the sidebar when opened with `?timing=1`:

* first funnel on the built-in cohort: a cold server (first session) and a warm one;
* generating an N-patient synthetic cohort from the sidebar (with its progress bar);
* on that cohort: a threshold change (Criteria page, creatinine clearance), switching
  a criterion off and on, and reordering the funnel (protocol / most restrictive).

Results go to stdout as a Markdown table and to bench-results/bench_app.json. This
module never imports Streamlit (the package rule); it talks to the app over HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 600_000


def _edited_criterion() -> str:
    """The criterion whose threshold the walk edits: the one holding the protocol file's
    rewrite example (KN026-001: the clearance rule), so no criterion ID is spelled here."""
    from kn026.core.criteria import load_protocol

    protocol = load_protocol()
    return protocol.rule(protocol.examples.replace[0]).criterion


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("streamlit")
    proc = subprocess.Popen(
        [str(exe), "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("streamlit did not start")


def _settle(page) -> None:
    page.wait_for_timeout(150)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=TIMEOUT_MS)
    page.wait_for_timeout(150)


def _server_ms(page) -> float | None:
    text = page.locator('[data-testid="stSidebar"]').inner_text()
    match = re.search(r"Server time: ([\d,]+) ms", text)
    return float(match.group(1).replace(",", "")) / 1000 if match else None


def _measure(page, action) -> tuple[float, float | None]:
    t0 = time.perf_counter()
    action()
    _settle(page)
    return time.perf_counter() - t0, _server_ms(page)


def run(n: int, repeats: int = 3) -> dict:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    url = f"http://127.0.0.1:{port}/?timing=1"
    proc = start_server(port)
    results: dict[str, list[tuple[float, float | None]]] = {}

    def record(name, value):
        results.setdefault(name, []).append(value)

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            for session in ("first funnel, built-in, cold server", "first funnel, built-in, warm server"):
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                t0 = time.perf_counter()
                page.goto(url, timeout=TIMEOUT_MS)
                page.wait_for_selector(".js-plotly-plot", timeout=TIMEOUT_MS)
                wall = time.perf_counter() - t0
                _settle(page)
                record(session, (wall, _server_ms(page)))
                if session.endswith("cold server"):
                    page.close()
            sidebar = page.locator('[data-testid="stSidebar"]')
            nav = page.locator('[data-testid="stSidebarNav"]')
            sidebar.get_by_text("Generate a synthetic cohort", exact=True).click()
            _settle(page)
            field = sidebar.get_by_label("Patients")
            field.fill(str(n))
            t0 = time.perf_counter()
            sidebar.get_by_role("button", name="Generate").click()
            sidebar.get_by_text(f"Synthetic cohort ({n:,} patients").wait_for(timeout=TIMEOUT_MS)
            _settle(page)
            record(f"generate {n:,} patients (progress bar)", (time.perf_counter() - t0, _server_ms(page)))

            nav.get_by_role("link", name="Criteria").click()
            page.wait_for_selector("h1:has-text('Criteria')", timeout=TIMEOUT_MS)
            _settle(page)
            page.get_by_text(f"{_edited_criterion()} · ", exact=False).first.click()
            _settle(page)
            crcl = page.get_by_label(re.compile(r"^Minimum \(mL/min\)"))
            for value in (50, 45, 40, 35)[: max(repeats, 1) + 1]:
                def change(v=value):
                    crcl.fill(str(v))
                    crcl.press("Enter")
                record("threshold change (CrCl, Criteria page)", _measure(page, change))
            toggle = page.get_by_text("Apply this criterion", exact=True)
            for _ in range(repeats):
                record("toggle a criterion off/on (Criteria page)", _measure(page, lambda: toggle.click()))
            nav.get_by_role("link", name="Funnel").click()
            page.wait_for_selector("h1:has-text('Eligibility funnel')", timeout=TIMEOUT_MS)
            _settle(page)
            for _ in range(repeats):
                for label in ("Most restrictive first", "Protocol order"):
                    record("reorder (Funnel page)", _measure(page, lambda lab=label: page.locator(
                        '[data-testid="stMain"] [data-testid="stButtonGroup"]').get_by_text(lab, exact=True).click()))
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    summary = {}
    for name, values in results.items():
        walls = [w for w, _ in values]
        servers = [s for _, s in values if s is not None]
        summary[name] = {"wall_median_s": round(statistics.median(walls), 3),
                         "server_median_s": round(statistics.median(servers), 3) if servers else None,
                         "runs": len(values)}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kn026.bench.app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="patients in the generated cohort")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per interaction")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"bench_app: {CHROMIUM} is not installed", file=sys.stderr)
        return 2
    summary = run(args.n, args.repeats)
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "bench_app.json").write_text(json.dumps(summary, indent=2))
    print("| step | wall (browser) | server (page script) | runs |")
    print("|---|---|---|---|")
    for name, s in summary.items():
        server = f"{s['server_median_s'] * 1000:.0f} ms" if s["server_median_s"] is not None else "—"
        print(f"| {name} | {s['wall_median_s'] * 1000:.0f} ms | {server} | {s['runs']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
