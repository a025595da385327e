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

`--cold` measures the cold start alone (issue 13): for each of `--runs` fresh servers,
the first session, then `--sessions` new sessions (new browser contexts: no shared
cookies or cache) on the same server. Each figure is the page's own clock
(`performance.now()`, milliseconds since navigation start) at the first animation frame
in which the Funnel page's plotly chart has drawn a funnel bar
(`FUNNEL_DRAWN`: a `path` inside a `g.funnellayer` of a `.js-plotly-plot` in the main
area); medians over runs go to bench-results/bench_cold.json. `--floor` times a page
holding only one plotly funnel the same way: what Streamlit's frontend and plotly.js
cost in this browser on this machine, whatever the app does.
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
# The first funnel is drawn: plotly has put a bar of the Funnel page's funnel trace in the DOM.
FUNNEL_DRAWN = '[data-testid="stMain"] [data-testid="stPlotlyChart"] .js-plotly-plot g.funnellayer path'


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


def start_server(port: int, script: Path | None = None) -> subprocess.Popen:
    """`streamlit run` of app.py (or `script`) on `port`, once its health check answers."""
    exe = Path(sys.executable).with_name("streamlit")
    script = script or ROOT / "app.py"
    proc = subprocess.Popen(
        [str(exe), "run", str(script), "--server.headless", "true", "--server.port", str(port),
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=script.parent, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
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


def _drawn_ms(context, url: str) -> tuple[float, float | None]:
    """Open `url` in a new page of `context`: (ms from navigation start until the first funnel is
    drawn, the page script's server time in ms as the sidebar shows it with ?timing=1)."""
    page = context.new_page()
    page.goto(url, timeout=TIMEOUT_MS, wait_until="commit")
    handle = page.wait_for_function(
        f"() => document.querySelector({json.dumps(FUNNEL_DRAWN)}) ? performance.now() : null",
        polling="raf", timeout=TIMEOUT_MS)
    ms = float(handle.json_value())
    _settle(page)
    server = _server_ms(page) if page.locator('[data-testid="stSidebar"]').count() else None  # the floor has none
    page.close()
    return ms, (server * 1000 if server is not None else None)


# The floor: a Streamlit page holding nothing but one plotly funnel, timed the same way.
FLOOR_SCRIPT = """import plotly.graph_objects as go
import streamlit as st

st.plotly_chart(go.Figure(go.Funnel(y=["Screened", "A", "B"], x=[100, 60, 30])), theme=None)
"""


def cold_start(runs: int = 3, sessions: int = 3, floor: bool = False) -> dict:
    """First funnel on the built-in cohort, in a browser: a fresh server's first session and new
    sessions; with `floor`, the same for a page holding only one plotly funnel (FLOOR_SCRIPT)."""
    import tempfile

    from playwright.sync_api import sync_playwright

    out = {}
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as tmp:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        floor_script = Path(tmp) / "floor.py"
        floor_script.write_text(FLOOR_SCRIPT)
        apps = [("built-in", None)] + ([("one-chart page (floor)", floor_script)] if floor else [])
        for label, script in apps:
            out.update(_cold_runs(browser, label, script, runs, sessions))
        browser.close()
    out["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return out


def _cold_runs(browser, label: str, script: Path | None, runs: int, sessions: int) -> dict:
    """`runs` fresh servers of `script` (app.py): the first session of each, then `sessions` new ones."""
    fresh, new, fresh_server, new_server = [], [], [], []
    for _ in range(runs):
        port = _free_port()
        url = f"http://127.0.0.1:{port}/?timing=1"
        proc = start_server(port, script)
        try:
            for i in range(sessions + 1):
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                drawn, server = _drawn_ms(context, url)
                (fresh if i == 0 else new).append(drawn)
                if server is not None:
                    (fresh_server if i == 0 else new_server).append(server)
                context.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    def stats(drawn, server):
        return {"median_ms": round(statistics.median(drawn)), "runs_ms": [round(v) for v in drawn],
                "server_median_ms": round(statistics.median(server)) if server else None}

    return {f"first funnel, {label}, fresh server": stats(fresh, fresh_server),
            f"first funnel, {label}, new session": stats(new, new_server)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kn026.bench.app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="patients in the generated cohort")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per interaction")
    parser.add_argument("--cold", action="store_true", help="measure the cold start only (see the module doc)")
    parser.add_argument("--runs", type=int, default=3, help="--cold: fresh servers")
    parser.add_argument("--sessions", type=int, default=3, help="--cold: new sessions per server")
    parser.add_argument("--floor", action="store_true",
                        help="--cold: also time a page holding only one plotly funnel (the browser's share)")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"bench_app: {CHROMIUM} is not installed", file=sys.stderr)
        return 2
    if args.cold:
        return _report_cold(cold_start(args.runs, args.sessions, args.floor))
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


def _report_cold(summary: dict) -> int:
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "bench_cold.json").write_text(json.dumps(summary, indent=2))
    print("| step | median, navigation start to funnel drawn | runs | page script (server), median |")
    print("|---|---|---|---|")
    for name, s in summary.items():
        if name != "load_average":
            server = f"{s['server_median_ms']:,} ms" if s["server_median_ms"] is not None else "—"
            print(f"| {name} | {s['median_ms']:,} ms | {', '.join(f'{v:,}' for v in s['runs_ms'])} ms | {server} |")
    print(f"load average (1, 5, 15 min) at the end: {summary['load_average']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
