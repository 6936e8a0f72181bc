"""Package boundaries: orchestrator imports neither torch nor ray; worker never imports ray."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def imported_modules(package: str, top_level_only: bool) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        names = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_worker_never_imports_ray_or_cluster():
    for path, names in imported_modules("worker", top_level_only=False).items():
        assert not names & {"ray", "cluster"}, f"{path} imports {names & {'ray', 'cluster'}}"


def test_orchestrator_has_no_top_level_torch_or_ray_import():
    for path, names in imported_modules("orchestrator", top_level_only=True).items():
        assert not names & {"torch", "ray", "cluster", "worker"}, f"{path} imports {names & {'torch', 'ray'}}"


def test_importing_every_orchestrator_module_loads_neither_torch_nor_ray():
    modules = sorted(p.stem for p in (ROOT / "orchestrator").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module('orchestrator.' + m)\n"
        "bad = sorted(m for m in ('torch', 'ray') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"orchestrator import pulled in: {out.stdout.strip()}"
