"""The modules of a task's own folder that the task reaches through its imports, with their sha256.

Apart from ``task_source`` so that ``task`` (which watches those files for edits) can use it: ``task_source`` imports
``task``.
"""

from __future__ import annotations

import os
import sys
import types

from orchestrator.store.storage import sha256

MAX_MODULES = 256  # local modules hashed into the manifest, at most
_NOT_LOCAL = ("site-packages", "dist-packages")


def local_modules(namespace: object, folder: str) -> dict[str, str]:
    """sha256 of each module file under ``folder`` that ``namespace`` reaches through imports (``import helpers``,
    ``from models.cnn import Net``, and what those import in turn), by path relative to ``folder``.

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
        for value in list(vars(holder).values()) if hasattr(holder, "__dict__") else []:
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


def read_if_there(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None
