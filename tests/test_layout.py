"""The package layout: no import circle inside ``pvrw``, and every import follows the data path.

Data path (DESIGN.md): env -> frames -> backbone -> (cache) -> wrapper -> replay -> DrM, with runs/ and cli/ on top.
A module imports only from its own folder and the folders to its left in :data:`DATA_PATH`; the package root and the
small shared helpers beside it (``pvrw/_gl.py``, ``pvrw/_lazy.py``, ``pvrw/_diskspace.py``, ``pvrw/_malloc.py``) may
be imported from anywhere. The graph is read with ``ast`` (nothing is imported), so the test is fast and sees imports
inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "pvrw"
DATA_PATH = ("envs", "backbones", "feature_cache", "pvr_wrappers", "drm", "runs", "cli")
SHARED = {"pvrw", "pvrw._gl", "pvrw._lazy", "pvrw._diskspace", "pvrw._malloc"}  # root, GL, full disks, malloc


def module_name(path: Path, root: Path) -> str:
    parts = ("pvrw", *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.Module) -> list[tuple[ast.AST, bool, bool]]:
    """``(import node, inside a function, under TYPE_CHECKING)`` for every import statement of a module."""
    found: list[tuple[ast.AST, bool, bool]] = []

    def visit(node: ast.AST, in_function: bool, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, in_function, typing_only))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)),
                  typing_only or _is_type_checking(child))

    visit(tree, False, False)
    return found


def _lazy_exports(tree: ast.Module) -> list[str]:
    """Modules named in a module-level ``_LAZY_EXPORTS = {name: module}`` table (imported on attribute access)."""
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if isinstance(getattr(node, "value", None), ast.Dict) and "_LAZY_EXPORTS" in [getattr(t, "id", None)
                                                                                     for t in targets]:
            return [v.value for v in node.value.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return []


def import_graph(root: Path = PACKAGE_ROOT, function_level: bool = True) -> dict[str, set[str]]:
    """Module -> the ``pvrw`` modules it imports (at module level; with ``function_level`` also inside functions).

    ``from a.b import c`` counts as an import of ``a.b.c`` when that is a module, else of ``a.b``; parent packages
    that Python initialises on the way are not edges. Imports under ``if TYPE_CHECKING:`` never run and are left
    out; names in a ``_LAZY_EXPORTS`` table are imported on first use and count as function-level imports.
    """
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node, in_function, typing_only in _imports(tree):
            if typing_only or (in_function and not function_level):
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            edges.update(t for t in targets if t in files and t != name)
        if function_level:
            edges.update(t for t in _lazy_exports(tree) if t in files and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in DATA_PATH else None


def data_path_violations(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for every import of a module in a folder to the right of the importer's folder."""
    bad = []
    for module, targets in sorted(graph.items()):
        if module == "pvrw":  # the package root re-exports the public API of every folder
            continue
        for target in sorted(targets):
            if target in SHARED:
                continue
            mine, theirs = folder(module), folder(target)
            if mine is None or theirs is None or DATA_PATH.index(theirs) > DATA_PATH.index(mine):
                bad.append(f"{module} -> {target}")
    return bad


def test_every_data_path_folder_is_a_package():
    for name in DATA_PATH:
        assert (PACKAGE_ROOT / name / "__init__.py").is_file(), f"pvrw/{name}/ is missing"


@pytest.mark.parametrize("function_level", [False, True], ids=["module-level", "with-function-level"])
def test_no_import_circle(function_level):
    graph = import_graph(function_level=function_level)
    assert len(graph) > 40 and graph["pvrw.drm.drm"], "the graph reader found too little"
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_imports_follow_the_data_path():
    assert data_path_violations(import_graph()) == []


def test_graph_reader_sees_function_level_circles_and_wrong_way_imports(tmp_path):
    """The checks above fail on a tree with the old registry <-> built-ins circle (imported inside a function)."""
    pkg = tmp_path / "pvrw"
    for rel, text in {
        "__init__.py": "",
        "_lazy.py": "",
        "backbones/__init__.py": "",
        "backbones/registry.py": "def _ensure_builtins():\n    import pvrw.backbones.builtin  # noqa\n",
        "backbones/builtin.py": "from pvrw.backbones.registry import register_backbone\n",
        "envs/__init__.py": "from pvrw._lazy import x\nfrom .. import backbones\n",
        "drm/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pvrw.runs\n",
        "runs/__init__.py": "import pvrw.drm\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    assert find_cycle(import_graph(pkg, function_level=False)) is None
    cycle = find_cycle(import_graph(pkg))
    assert cycle is not None and set(cycle) == {"pvrw.backbones.registry", "pvrw.backbones.builtin"}
    assert data_path_violations(import_graph(pkg)) == ["pvrw.envs -> pvrw.backbones"]


# every name pvrw.pvr_wrappers exported before the environment factory and the registry moved out of it
PVR_WRAPPERS_NAMES = [
    "BackboneCfg", "FrozenBackbone", "PVRObservation", "VecPVRObservation", "VectorPVRObservation",
    "WeightsNotFoundError", "create_backbone", "get_backbone_cfg", "list_backbones", "make_env", "make_vec_env",
    "register_backbone", "scripted_expert",
]


def test_public_names_resolve_and_pvr_wrappers_keeps_its_names():
    import importlib

    import pvrw.pvr_wrappers

    assert set(PVR_WRAPPERS_NAMES) <= set(pvrw.pvr_wrappers.__all__)
    for package in ("pvrw", "pvrw.envs", "pvrw.backbones", "pvrw.pvr_wrappers", "pvrw.feature_cache", "pvrw.drm"):
        module = importlib.import_module(package)
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{package}.{name}"
    assert pvrw.pvr_wrappers.make_env is pvrw.make_env and pvrw.pvr_wrappers.FrozenBackbone.__module__.startswith(
        "pvrw.backbones.")


def test_light_imports_stay_light():
    """``import pvrw`` (and so ``pvrw --help``) and ``import pvrw.envs`` import neither torch nor MuJoCo."""
    import subprocess
    import sys

    code = ("import sys, pvrw, pvrw.envs, pvrw.pvr_wrappers, pvrw.feature_cache, pvrw.cli; "
            "print(sorted(m for m in ('torch', 'mujoco', 'metaworld', 'stable_baselines3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
