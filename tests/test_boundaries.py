"""Layers: every import of caviar's own code, at the top of a module or inside a function, follows an
allowed edge, and no chain of imports leads back to where it started. Torch and Ray stay where they
belong: orchestrator imports neither at import time, worker never imports Ray, only cluster does.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "worker", "cluster")

# Layer -> the layers it may import (besides itself). Lower layers never import the application layer;
# only the application layer (and the package's own facade, orchestrator/__init__.py) reaches into
# worker and cluster. cluster's actors host worker sessions, so cluster imports worker.
ALLOWED = {
    "orchestrator.errors": set(),
    "orchestrator.store": {"orchestrator.errors"},
    "orchestrator.search": {"orchestrator.errors"},
    "orchestrator.spec": {"orchestrator.errors", "orchestrator.store", "orchestrator.search", "orchestrator.decide"},
    "orchestrator.decide": {"orchestrator.errors", "orchestrator.store", "orchestrator.search"},
    "orchestrator.ensemble": {"orchestrator.errors", "orchestrator.store"},
    "worker": {"orchestrator.errors", "orchestrator.store", "orchestrator.search", "orchestrator.spec",
               "orchestrator.decide", "orchestrator.ensemble"},
    # worker's own layers: data below training; arrays, checks and loading above both
    "worker.data": {"orchestrator.errors", "orchestrator.store", "orchestrator.spec"},
    "worker.train": {"orchestrator.errors", "orchestrator.store", "orchestrator.search", "orchestrator.spec",
                     "orchestrator.decide", "worker.data"},
    "worker.arrays": {"orchestrator.errors", "orchestrator.store", "orchestrator.spec", "orchestrator.decide",
                      "worker.data", "worker.train"},
    "worker.check": {"orchestrator.errors", "orchestrator.search", "orchestrator.spec", "worker.data",
                     "worker.train"},
    "worker.load": {"orchestrator.errors", "orchestrator.store", "orchestrator.spec", "orchestrator.ensemble",
                    "worker.data", "worker.train"},
    # the process pool hosts worker sessions in child processes, as cluster's actors do on Ray
    "worker.pool": {"orchestrator.errors", "orchestrator.decide", "worker.train", "worker.arrays", "worker.check"},
    "cluster": {"orchestrator.errors", "orchestrator.store", "orchestrator.search", "orchestrator.spec",
                "orchestrator.decide", "worker.train", "worker.arrays", "worker.check"},
    "orchestrator.app": {"orchestrator.errors", "orchestrator.store", "orchestrator.search", "orchestrator.spec",
                         "orchestrator.decide", "orchestrator.ensemble", "worker.data", "worker.train",
                         "worker.check", "worker.load", "worker.pool", "cluster"},
    "orchestrator": {"orchestrator.search", "orchestrator.app", "worker.load"},  # the facade: lazy API names
}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The longest ALLOWED key that is the module or a package above it."""
    keys = [k for k in ALLOWED if module == k or module.startswith(k + ".")]
    assert keys, f"{module}: in no layer; add its package to ALLOWED in tests/test_boundaries.py"
    return max(keys, key=len)


def imports_of(path: pathlib.Path, top_level_only: bool = False) -> set[str]:
    """Modules named by import statements (``from pkg import mod`` names ``pkg.mod`` when that is a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                names.add(candidate if candidate in MODULES else node.module)
    return names


MODULES = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def own_imports(module: str) -> set[str]:
    return {name for name in imports_of(MODULES[module]) if name.split(".")[0] in PACKAGES and name in MODULES}


def test_every_module_sits_in_a_layer_and_imports_only_along_allowed_edges():
    wrong = []
    for module in sorted(MODULES):
        layer = layer_of(module)
        for target in sorted(own_imports(module)):
            target_layer = layer_of(target)
            if target_layer != layer and target_layer not in ALLOWED[layer]:
                wrong.append(f"{module} -> {target} ({layer} may not import {target_layer})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {m: own_imports(m) - {m} for m in MODULES}
    # A package's __init__ is imported on the way to its modules; edges from a module to its own package's
    # __init__ are not a cycle of code.
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_worker_never_imports_ray_or_cluster():
    for module, path in MODULES.items():
        if module.startswith("worker"):
            bad = {n.split(".")[0] for n in imports_of(path)} & {"ray", "cluster"}
            assert not bad, f"{module} imports {bad}"


def test_only_cluster_imports_ray():
    for module, path in MODULES.items():
        if not module.startswith("cluster"):
            assert "ray" not in {n.split(".")[0] for n in imports_of(path)}, f"{module} imports ray"


def test_orchestrator_has_no_top_level_torch_or_ray_import():
    for module, path in MODULES.items():
        if module.startswith("orchestrator"):
            top_level = {n.split(".")[0] for n in imports_of(path, top_level_only=True)}
            bad = top_level & {"torch", "ray", "cluster", "worker"}
            assert not bad, f"{module} imports {bad} at import time"


def test_importing_every_orchestrator_module_loads_neither_torch_nor_ray():
    modules = sorted(m for m in MODULES if m.startswith("orchestrator"))
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in ('torch', 'ray') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"orchestrator import pulled in: {out.stdout.strip()}"
