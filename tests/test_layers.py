"""Layering: kn026 never imports Streamlit; pages only lay out widgets and call kn026.

* No file under kn026/ imports streamlit (at any depth, in any form).
* Pages and app.py import only kn026, ui (the app's state package), streamlit, the
  standard library, pandas and plotly.
* Only ui/ touches Streamlit session state and caches; pages run no SQL, spell no widget
  key and build no memo key (ui/<page>.py names them).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = sorted((ROOT / "kn026").rglob("*.py"))
PAGES = sorted((ROOT / "pages").glob("*.py")) + [ROOT / "app.py"]
ALLOWED_IN_PAGES = {"kn026", "ui", "streamlit", "pandas", "plotly"}
UI = sorted((ROOT / "ui").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports: import statements, __import__ and importlib calls."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.add(node.module)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant):
                found.add(str(node.args[0].value))
    return found


def test_the_package_and_pages_exist():
    assert PACKAGE and len(PAGES) >= 6


@pytest.mark.parametrize("path", PACKAGE, ids=lambda p: str(p.relative_to(ROOT)))
def test_kn026_never_imports_streamlit(path):
    bad = {m for m in imported_modules(path) if m.split(".")[0] == "streamlit"}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_import_only_kn026_ui_streamlit_stdlib_pandas_plotly(path):
    stdlib = set(sys.stdlib_module_names)
    bad = {m for m in imported_modules(path) if m.split(".")[0] not in ALLOWED_IN_PAGES | stdlib}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_ui_owns_session_state_and_caches(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not used & {"session_state", "cache_data", "cache_resource"}, path.name


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_run_no_sql_and_spell_no_keys(path):
    """SQL, widget-key prefixes and memo keys live in ui/ and kn026/, not in page scripts."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not used & {"execute", "W", "K", "wkey", "memo", "engine_key", "scenario_key", "ckey"}, \
        (path.name, sorted(used & {"execute", "W", "K", "wkey", "memo", "engine_key", "scenario_key", "ckey"}))


def test_the_app_state_is_a_package_of_small_modules():
    assert not (ROOT / "ui_state.py").exists()
    assert UI and all(len(p.read_text(encoding="utf-8").splitlines()) < 500 for p in UI), \
        {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in UI}


@pytest.mark.parametrize("path", PACKAGE, ids=lambda p: str(p.relative_to(ROOT)))
def test_kn026_never_imports_the_app_state(path):
    assert not {m for m in imported_modules(path) if m.split(".")[0] in ("ui", "ui_state")}


def test_the_detector_finds_streamlit_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom streamlit import x\nimportlib.import_module('streamlit.foo')\n")
    assert {"streamlit", "streamlit.foo", "os"} <= imported_modules(probe)
