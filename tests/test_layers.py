"""Layering: kn026 never imports Streamlit; its layers only import downwards; pages only lay out widgets.

* No file under kn026/ imports streamlit (at any depth, in any form).
* kn026/ is a stack of layer folders (LAYERS, bottom first, as the README states): a
  module imports only its own layer and the layers below, counting imports inside
  functions, and no set of modules imports itself round in a cycle.
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


LAYERS = ("base", "rules", "core", "ingest", "report", "forecast", "feasibility", "scale", "cli", "bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE}


def kn026_imports(path: Path) -> set[str]:
    """The kn026 modules a file imports, `from kn026.core import engine` resolved to kn026.core.engine."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = {m for m in imported_modules(path) if m.split(".")[0] == "kn026"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("kn026"):
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)
    return {m for m in found if m in MODULES}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


GRAPH = {m: kn026_imports(p) - {m} for m, p in MODULES.items()}


def test_every_module_lives_in_a_layer_folder():
    loose = [m for m in MODULES if layer_of(m) is None and m not in ("kn026", "kn026.__main__")]
    assert not loose, f"modules outside the layer folders {LAYERS}: {loose}"
    assert set(LAYERS) == {m.split(".")[1] for m in MODULES if layer_of(m) is not None}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m) is not None))
def test_a_module_imports_only_its_layer_and_below(module):
    own = layer_of(module)
    upward = sorted(m for m in GRAPH[module] if layer_of(m) is not None and layer_of(m) > own)
    assert not upward, f"{module} ({LAYERS[own]}) imports the higher layer(s): {upward}"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a cycle of imports."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_readme_states_the_layer_order():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = next((ln for ln in readme.splitlines() if ln.startswith("Layers, bottom first:")), "")
    assert [w.strip("`., ") for w in line.split(":", 1)[-1].split("<")] == list(LAYERS), line


MAX_LINES = 800  # issue 14: no module longer than about 800 lines


@pytest.mark.parametrize("path", PACKAGE + PAGES + sorted((ROOT / "ui").glob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_longer_than_800_lines(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines; split it by what it does"
