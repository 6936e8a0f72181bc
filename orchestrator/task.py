"""The task contract: what a user writes, and how caviar loads it by reference.

A task is a Python file (``examples/digits_mlp.py``) or a module attribute
(``mypkg.tasks:digits``) providing:

- ``space``: a dict or :class:`~orchestrator.space.SearchSpace` of hyperparameters;
- ``load_data()``: returns the train / validation / test splits, each ``(X, y)`` as numpy
  arrays or tensors (or a torch ``Dataset``), as a tuple of three or a dict with keys
  ``train``, ``val``, ``test``;
- ``build_model(config)``: returns a ``torch.nn.Module``.

Optional: ``loss_fn(logits, y)`` (default cross-entropy), ``metric`` ("accuracy" or
"loss"), ``train_epoch(model, optimizer, batches, config)`` for a custom loop,
``build_optimizer(config, params)``, ``normalize`` (default True: standardise inputs with
training-split statistics), ``settings`` (default run options, e.g. ``{"trials": 32}``).

The reference string is all that travels to workers: each actor loads the task once.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from orchestrator.errors import SpaceError, TaskError
from orchestrator.space import SearchSpace

REQUIRED = ("space", "load_data", "build_model")
OPTIONAL_CALLABLES = ("loss_fn", "train_epoch", "build_optimizer")
METRICS = ("accuracy", "loss")


@dataclass
class Task:
    ref: str  # what workers load: an absolute file path, or "module:attr"
    namespace: Any  # the module or object holding the pieces
    space: SearchSpace
    metric: str = "accuracy"
    normalize: bool = True
    settings: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        return getattr(self.namespace, name, None)

    @property
    def name(self) -> str:
        base = self.ref.split(":")[-1] if ":" in self.ref else os.path.basename(self.ref)
        return os.path.splitext(base)[0]


def _load_file(path: str) -> ModuleType:
    if not os.path.isfile(path):
        raise TaskError(f"task {path!r}: no such file")
    module_name = "caviar_task_" + hashlib.sha1(path.encode()).hexdigest()[:10]
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TaskError(f"task {path!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # The task's folder is importable, as it would be for `python task.py`.
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise TaskError(f"task {path!r}: importing it raised {type(exc).__name__}: {exc}") from exc
    return module


def resolve_ref(ref: str) -> tuple[str, Any]:
    """Turn ``path.py``, ``path.py:attr`` or ``module:attr`` into (canonical ref, namespace)."""
    target, _, attr = ref.partition(":")
    if target.endswith(".py") or os.sep in target:
        path = os.path.abspath(target)
        namespace: Any = _load_file(path)
        canonical = path
    else:
        if os.getcwd() not in sys.path:  # as for `python -m`, and as workers see it (their PYTHONPATH has it)
            sys.path.append(os.getcwd())
        try:
            namespace = importlib.import_module(target)
        except ImportError as exc:
            raise TaskError(f"task {ref!r}: cannot import module {target!r} ({exc})") from None
        canonical = target
    if attr:
        if not hasattr(namespace, attr):
            raise TaskError(f"task {ref!r}: {target!r} has no attribute {attr!r}")
        namespace = getattr(namespace, attr)
        canonical = f"{canonical}:{attr}"
    return canonical, namespace


def load_task(ref: str) -> Task:
    """Load and check a task; errors name the missing or bad piece."""
    canonical, ns = resolve_ref(ref)
    missing = [name for name in REQUIRED if getattr(ns, name, None) is None]
    if missing:
        raise TaskError(f"task {ref!r}: missing required {', '.join(missing)} (a task needs {', '.join(REQUIRED)})")
    for name in ("load_data", "build_model", *OPTIONAL_CALLABLES):
        value = getattr(ns, name, None)
        if value is not None and not callable(value):
            raise TaskError(f"task {ref!r}: {name} must be callable, got {type(value).__name__}")
    raw_space = ns.space
    if not isinstance(raw_space, (dict, SearchSpace)):
        raise TaskError(f"task {ref!r}: space must be a dict or SearchSpace, got {type(raw_space).__name__}")
    try:
        space = raw_space if isinstance(raw_space, SearchSpace) else SearchSpace(raw_space)
    except SpaceError as exc:
        raise SpaceError(f"task {ref!r}: {exc}") from None
    metric = getattr(ns, "metric", "accuracy")
    if metric not in METRICS:
        raise TaskError(f"task {ref!r}: metric must be one of {METRICS}, got {metric!r}")
    settings = dict(getattr(ns, "settings", {}) or {})
    return Task(canonical, ns, space, metric, bool(getattr(ns, "normalize", True)), settings)
