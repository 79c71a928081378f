"""The package's layout: no import cycle between its modules, and the hot path's modules import without Prometheus."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "globaldns"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path) -> set[str]:
    """Every globaldns module a module imports, anywhere in it: at the top, under TYPE_CHECKING, in a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found |= {name for name in names if name in MODULES and name != "globaldns"}
    return found - {module_name(path)}


GRAPH = {name: imported(path) for name, path in MODULES.items()}


def cycle() -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = "open"
        path.append(name)
        for other in sorted(GRAPH[name]):
            if state.get(other) == "open":
                return [*path[path.index(other) :], other]
            if other not in state and (found := visit(other)):
                return found
        state[name] = "done"
        path.pop()
        return None

    for name in sorted(GRAPH):
        if name not in state and (found := visit(name)):
            return found
    return None


def test_no_module_imports_itself_through_others():
    assert cycle() is None, " -> ".join(cycle() or [])


def test_the_cycle_check_sees_a_cycle(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(GRAPH, "globaldns.wire", GRAPH["globaldns.wire"] | {"globaldns.resolver"})
    assert cycle() is not None


def test_imports_under_type_checking_and_in_functions_count():
    assert "globaldns.sources.kubernetes" in GRAPH["globaldns.server"]  # imported inside build_source()


@pytest.mark.parametrize("module", ["globaldns.wire", "globaldns.cache", "globaldns.forward", "globaldns.resolver"])
def test_the_query_path_imports_without_prometheus(module: str):
    blocked = "import sys; sys.modules['prometheus_client'] = None; import " + module
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "prometheus" not in result.stderr


def test_prometheus_is_blocked_for_real():
    blocked = "import sys; sys.modules['prometheus_client'] = None; import globaldns.metrics"
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "prometheus_client" in result.stderr


def readme_map() -> dict[str, int]:
    """Module -> its line in the README's Development map (a package's __init__ counts as its folder's line)."""
    text = (PACKAGE.parent / "README.md").read_text()
    block = text[text.index("## Development") :].split("```")[1]
    lines = block[block.index("globaldns/") : block.index("\ndeploy/")].splitlines()[1:]
    where = {}
    for number, line in enumerate(lines):
        first = line.split()[0]
        folder = first[:-1] + "." if first.endswith("/") else ""
        if folder:
            where[f"globaldns.{folder[:-1]}"] = number
        for file in re.findall(r"\b([a-z_]+)\.py\b", line):
            where[f"globaldns.{folder}{file}"] = number
    return where


def test_the_readme_map_names_every_module_and_no_other():
    unlisted = {"globaldns", "globaldns.__main__", "globaldns.protocols"}
    assert set(readme_map()) | unlisted == set(MODULES) | {"globaldns.protocols"}


def test_every_module_imports_only_modules_listed_below_it_in_the_readme_map():
    where = readme_map()
    upward = [
        f"{name} -> {other}"
        for name, others in GRAPH.items()
        for other in others
        if name in where and other in where and where[other] < where[name]
    ]
    assert upward == []
