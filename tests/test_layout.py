"""The package reads in one sitting: small units, presets written with keywords, no import
cycle. These are the limits the README's layout section promises."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "minildm"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES = 400, 200, 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


NAMES = {module_name(path): path for path in MODULES}


def lengths(tree: ast.AST, kinds: tuple[type, ...]) -> dict[str, int]:
    return {f"{node.name} (line {node.lineno})": node.end_lineno - node.lineno + 1
            for node in ast.walk(tree) if isinstance(node, kinds)}


@pytest.mark.parametrize("path", MODULES, ids=[module_name(path) for path in MODULES])
def test_modules_classes_and_functions_stay_short(path):
    text = path.read_text()
    tree = ast.parse(text)
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    too_long = {name: n for name, n in lengths(tree, (ast.ClassDef,)).items() if n > MAX_CLASS_LINES}
    too_long |= {name: n for name, n in lengths(tree, (ast.FunctionDef, ast.AsyncFunctionDef)).items()
                 if n > MAX_FUNCTION_LINES}
    assert not too_long


def imported_modules(path: Path) -> set[str]:
    """The package modules that ``path`` imports at its top level (``from minildm.data import
    images`` imports the module ``minildm.data.images``)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in NAMES}
        elif isinstance(node, ast.ImportFrom) and node.module in NAMES:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(NAMES)
            found |= submodules or {node.module}
            if len(submodules) < len(node.names):
                found.add(node.module)
    return found - {module_name(path)}


def test_the_import_graph_has_no_cycle():
    graph = {name: imported_modules(path) for name, path in NAMES.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name]):
            assert state.get(other) != "open", f"import cycle: {' -> '.join([*trail, name, other])}"
            if other not in state:
                visit(other, [*trail, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert graph["minildm.ldm"] >= {"minildm.unet", "minildm.diffusion"}  # the graph is read, not empty
    assert "minildm.trainer" not in graph["minildm.ldm"]  # the model does not import its training


def test_presets_are_written_with_keywords():
    tree = ast.parse((PACKAGE / "config.py").read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
             and node.func.id in ("Profile", "AutoencoderPreset", "LDMPreset")]
    assert len(calls) == 15  # five profiles, each with two presets
    assert all(not call.args for call in calls)
