"""The modules of a task's own folder that the task reaches through its imports, with their sha256.

Apart from ``task_source`` so that ``task`` (which watches those files for edits) can use it: ``task_source`` imports
``task``.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
import types

from orchestrator.store.storage import sha256

MAX_MODULES = 256  # local modules hashed into the manifest, at most
_NOT_LOCAL = ("site-packages", "dist-packages")


def local_modules(namespace: object, folder: str) -> dict[str, str]:
    """sha256 of each module file under ``folder`` that ``namespace`` reaches through imports (``import helpers``,
    ``from models.cnn import Net``, ``from helpers import WIDTH``, and what those import in turn), by path relative to
    ``folder``. A module is found through the values it gave (a function, a class, the module itself) and through the
    import statements of the importing file, since a plain value (``WIDTH = 8``) does not say where it came from.

    Installed packages (a virtualenv inside the project), caviar's own packages and the task file are left out.
    """
    own = tuple(os.path.dirname(os.path.abspath(sys.modules[name].__file__ or "")) + os.sep
                for name in ("orchestrator", "worker") if name in sys.modules)
    root = os.path.abspath(folder) + os.sep
    seen: set[str] = set()
    found: dict[str, str] = {}
    pending = [namespace]
    while pending and len(found) < MAX_MODULES:
        holder = pending.pop()
        values = list(vars(holder).values()) if hasattr(holder, "__dict__") else []
        for value in values + _modules_it_imports(holder):
            module = value if isinstance(value, types.ModuleType) else sys.modules.get(getattr(value, "__module__", ""))
            path = os.path.abspath(getattr(module, "__file__", None) or "") if module is not None else ""
            if not path.endswith(".py") or path in seen or not path.startswith(root) or path.startswith(own) or any(
                    part in path for part in _NOT_LOCAL):
                continue
            seen.add(path)
            data = read_if_there(path)
            if data is not None and module is not namespace:
                found[os.path.relpath(path, folder).replace(os.sep, "/")] = sha256(data)
            pending.append(module)
    task_file = getattr(namespace, "__file__", None)
    if task_file:
        found.pop(os.path.relpath(os.path.abspath(task_file), folder).replace(os.sep, "/"), None)
    return dict(sorted(found.items()))


def _modules_it_imports(module: object) -> list[types.ModuleType]:
    """The loaded modules named by the import statements of ``module``'s source file (relative ones resolved against
    its package); those not loaded are left out: they were not imported."""
    path = getattr(module, "__file__", None)
    source = read_if_there(path) if isinstance(path, str) and path.endswith(".py") else None
    if source is None:
        return []
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            try:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), getattr(
                    module, "__package__", None) or "") if node.level else node.module or ""
            except (ImportError, ValueError):
                continue
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]  # `from pkg import submodule` too
    return [sys.modules[name] for name in dict.fromkeys(names) if name in sys.modules]


def read_if_there(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None
