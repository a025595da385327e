"""The app's first page keeps heavy modules out of its import path (issue 13, cold start).

A fresh interpreter runs app.py once through AppTest (the Funnel page on the built-in
cohort) and lists what it imported; modules only other pages, exports or importers
need must not be among them. Structural, not timed: the timing is `python -m
kn026.bench.app --cold` (README, benchmarks).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.app_support import APP, ROOT

# Imported where they are used, never by the first page.
HEAVY = ("scipy", "openpyxl", "pptx", "docx", "xlsxwriter", "kn026.feasibility", "kn026.forecast",
         "kn026.ingest.omop", "kn026.ingest.sdtm", "kn026.ingest.mapping", "kn026.ingest.synth", "kn026.scale")

SCRIPT = f"""
import json, sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({APP!r}, default_timeout=300)
at.run()
assert not at.exception, [e.value for e in at.exception]
assert at.title[0].value == "Eligibility funnel", at.title
assert at.get("plotly_chart"), "no funnel chart"
print(json.dumps(sorted(sys.modules)))
"""


def test_first_page_imports_no_heavy_module():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert not heavy, f"the first page imports {heavy}: import them where they are used"
