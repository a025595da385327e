"""The read-only shared data the tests use: `../shared` beside the repository, or $KN026_SHARED.

CI keeps a copy of shared/ beside the repository; a git worktree elsewhere points at it
with KN026_SHARED (for example KN026_SHARED=/work/shared).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KN026_SHARED") or ROOT.parent / "shared")
OMOP_SAMPLE = SHARED / "data" / "omop" / "Synthea27Nj_5.4.zip"
