"""Adversarial check of the report: every suppressed cell, in every format, against arithmetic.

The report is written to Excel, HTML and PowerPoint, read back as a reader would
(openpyxl, an HTML parser, python-pptx including the charts' data), and
tests/adversary.py (identities written from the tables' meaning, not from
kn026.report.published) solves the smallest and largest value of each suppressed cell with
linprog. Every interval must be at least k wide, at k = 5 and 11, on the built-in
cohort (50 sites, 5 countries) and on a small multi-site cohort with small sites. A
control run with primary suppression only must be caught, so the check can fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kn026.base.table import connect
from kn026.core.criteria import load_protocol
from kn026.core.engine import Engine
from kn026.core.scenario import load_scenario
from kn026.feasibility import report
from kn026.ingest import synth
from kn026.ingest.cohort import load_cohort
from kn026.report import protection
from tests import adversary as A

ROOT = Path(__file__).resolve().parents[1]

COUNT_HEADERS = {"Remaining (strict)", "Remaining (optimistic)", "Unknown so far", "Lost at step (strict)",
                 "Lost at step (optimistic)", "Fail (marginal)", "Fail only this (unique)", "Unknown on criterion",
                 "Patients", "Protocol", "Scenario", "Screened", "Eligible · strict", "Eligible · optimistic",
                 "Unknown", "Not eligible", "Fail · protocol", "Fail · scenario", "Unknown · protocol",
                 "Unknown · scenario", "Only this · protocol", "Only this · scenario"}
READERS = {"xlsx": A.read_xlsx, "html": A.read_html, "pptx": A.read_pptx}


@pytest.fixture(scope="module")
def builtin(builtin_engine):
    return builtin_engine, load_scenario(ROOT / "data" / "scenario_crcl50.yaml", builtin_engine.protocol), \
        "builtin_cohort.parquet"


@pytest.fixture(scope="module")
def small():
    """600 patients over 15 sites: several sites and countries with a handful of patients."""
    protocol = load_protocol()
    engine = Engine(load_cohort(synth.generate(600, 11, sites=15), connect()), protocol, 1)
    return engine, load_scenario(ROOT / "data" / "scenario_crcl50.yaml", protocol), "small.parquet"


def _files(case, k: int):
    engine, scenario, name = case
    rep = report.build(engine, scenario, report.Settings(k=k), name)
    return rep, {fmt: report.render(rep, fmt) for fmt in READERS}


def _check(rep, files, k: int) -> None:
    assert rep.published.protection is None or not rep.published.protection.unprotected
    for fmt, data in files.items():
        tables, charts, n = READERS[fmt](data)
        assert n == int(rep.published["Attrition"].frame["strict"].iloc[0])
        # no small count is shown anywhere
        for key, frame in tables.items():
            for col in frame.columns:
                if col in COUNT_HEADERS:
                    for v in frame[col]:
                        assert isinstance(v, str) or v is None or not 0 < v < k, (fmt, key, col, v)
        hidden = A.attack(tables, charts, n)
        assert hidden, f"{fmt}: nothing suppressed at k={k}; the check would prove nothing"
        narrow = {cell: iv for cell, iv in hidden.items() if iv[1] - iv[0] < k}
        assert not narrow, f"{fmt}, k={k}: {len(narrow)} suppressed cells recoverable to < {k}: " \
                           f"{list(narrow.items())[:5]}"


@pytest.mark.parametrize("k", [5, 11])
def test_builtin_report_withstands_arithmetic(builtin, k):
    rep, files = _files(builtin, k)
    assert {s.key for s in rep.sections} >= {"attrition", "combinations", "totals", "deltas", "sites", "countries"}
    _check(rep, files, k)


@pytest.mark.parametrize("k", [5, 11])
def test_small_sites_report_withstands_arithmetic(small, k):
    rep, files = _files(small, k)
    sites = rep.published["Sites"]
    assert (sites.frame["screened"] < k).any()  # the case this cohort is for: tiny sites
    _check(rep, files, k)


def test_primary_suppression_alone_is_caught(builtin, monkeypatch):
    """Control: hiding only the small cells (no complements) must be found out by the adversary."""
    def primary_only(cells, k, protect=None, force=None, small=None, keep=None):
        return protection.Protection(np.asarray(small, bool) & ~np.asarray(protect, bool))

    monkeypatch.setattr(protection, "protect_cells", primary_only)
    rep, files = _files(builtin, 5)
    tables, charts, n = A.read_xlsx(files["xlsx"])
    hidden = A.attack(tables, charts, n)
    assert any(hi - lo < 5 for lo, hi in hidden.values())


def test_suppression_off_shows_every_count(builtin):
    rep, files = _files(builtin, 0)
    assert rep.published.n_hidden == 0
    tables, _, _ = A.read_xlsx(files["xlsx"])
    assert all(not (f == A.LABEL).any().any() for f in tables.values())
