"""The task contract: what a user writes, and how caviar loads it by reference.

A task is a Python file (``examples/digits_mlp.py``) or a module attribute
(``mypkg.tasks:digits``) providing:

- ``space``: a dict or :class:`~orchestrator.search.space.SearchSpace` of hyperparameters;
- ``load_data()``: returns the train / validation / test splits, each ``(X, y)`` as numpy
  arrays or tensors (or a torch ``Dataset``, or a function ``batch_size -> DataLoader``), as a
  tuple of three or a dict with keys ``train``, ``val``, ``test``; inputs and targets keep their dtype;
- ``build_model(config)``: returns a ``torch.nn.Module``.

Optional: ``loss_fn(logits, y)`` (default cross-entropy), ``metric`` ("accuracy" or
"loss"), ``train_epoch(model, optimizer, batches, config)`` for a custom loop,
``build_optimizer(config, params)``, ``normalize`` (default True: standardise floating inputs
with training-split statistics; False: leave them; ``(mean, std)``: the task's own statistics,
used as given), ``settings`` (default run options, e.g. ``{"trials": 32}``).

What the targets are (``kind``) and what the sweep optimises: ``kind`` ("classification":
integer class indices or class probabilities of shape (N, C); "multilabel": integer 0/1 labels
of shape (N, L), one logit per label; "regression": float targets of any trailing shape;
"custom": ``loss_fn`` and ``metrics`` only), inferred from integer targets and declared
otherwise; ``metrics(outputs, targets) -> dict[str, float]`` over a whole split;
``objective`` (a reported column such as ``"val_mse"``) and ``mode`` ("min" or "max");
``standardize_targets`` (regression: train on standardised targets, report original units);
``num_classes`` (classification: the class count when the data lacks some classes; else the highest label + 1).

The reference string is all that travels to workers: each actor loads the task once.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import numbers
import os
import sys
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from orchestrator.decide.fusing import PER_MEMBER, TASK_HOOKS_THAT_BLOCK, fuse_blocker
from orchestrator.errors import SpaceError, TaskError, did_you_mean
from orchestrator.search.space import SearchSpace

REQUIRED = ("space", "load_data", "build_model")
OPTIONAL_CALLABLES = ("loss_fn", "train_epoch", "build_optimizer")
TASK_METRICS = ("accuracy", "loss")
KINDS = ("classification", "multilabel", "regression", "custom")
MODES = ("min", "max")
DIAGNOSTICS_OPTIONS = ("probe_size", "hist_every", "bins")  # worker/train/diagnostics.py's DiagnosticsOptions


@dataclass
class Task:
    ref: str  # what workers load: an absolute file path, or "module:attr"
    namespace: Any  # the module or object holding the pieces
    space: SearchSpace
    metric: str = "accuracy"
    normalize: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None  # declared kind; None: inferred from the targets (worker.data.kinds)
    objective: str | None = None  # a reported column ("val_mse"); None: the kind's default
    mode: str | None = None  # "min" or "max"; None: the objective's natural direction
    standardize_targets: bool = False

    def get(self, name: str) -> Any:
        return getattr(self.namespace, name, None)

    @property
    def name(self) -> str:
        base = self.ref.split(":")[-1] if ":" in self.ref else os.path.basename(self.ref)
        return os.path.splitext(base)[0]


# Two sweeps of one task started at once from threads of one process: the second found the first's module in
# sys.modules half-imported (no __caviar_sources__ yet, its functions maybe not yet defined).
_loading = threading.RLock()


def _load_file(path: str) -> ModuleType:
    with _loading:
        return _load_file_once(path)


def _load_file_once(path: str) -> ModuleType:
    if not os.path.isfile(path):
        raise TaskError(f"task {path!r}: no such file")
    module_name = "caviar_task_" + hashlib.sha1(path.encode()).hexdigest()[:10]
    cached = sys.modules.get(module_name)
    if cached is not None:
        if _sources_unchanged(cached):
            return cached
        # Edited since this process imported it (a notebook's next sweep): the sweep would run the old code
        # while its stored task copy holds the new; the helpers it imported from its folder go with it.
        for name, module in list(sys.modules.items()):
            if os.path.abspath(getattr(module, "__file__", None) or "") in cached.__caviar_sources__:
                del sys.modules[name]
        sys.modules.pop(module_name, None)
        _drop_stale_bytecode(cached.__caviar_sources__)
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
    from orchestrator.spec.local_modules import local_modules

    try:
        helpers = [os.path.join(folder, rel) for rel in local_modules(module, folder)]
    except Exception:  # a module whose attributes raise on access: only the task file is watched
        helpers = []
    module.__caviar_sources__ = {os.path.abspath(p): _digest(p) for p in [path, *helpers]}
    return module


def _digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _drop_stale_bytecode(sources: dict[str, str | None]) -> None:
    """Delete the cached .pyc of every edited source before it is imported again.

    Python takes a .pyc as current while the source's size and mtime in whole seconds match: an edit to the same
    size within the second (``LR = 0.01`` to ``LR = 0.02``) was imported from the old bytecode. Deleted, the .pyc is
    written again from the new source, so a worker process that imports the task later reads the new code too.
    """
    for path, digest in sources.items():
        if _digest(path) == digest:
            continue
        try:
            os.remove(importlib.util.cache_from_source(path))
        except (OSError, NotImplementedError, ValueError):  # none cached, or a folder caviar may not write
            pass
    importlib.invalidate_caches()  # a helper created since: the finders' folder listings are cached too


def _sources_unchanged(module: ModuleType) -> bool:
    """Whether the task file and the modules of its folder it imported still hold the bytes imported."""
    sources = getattr(module, "__caviar_sources__", None)
    return sources is not None and all(_digest(p) == digest for p, digest in sources.items())


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


def task_ref_of(task: object) -> str:
    """A task file (a path, ``pathlib.Path`` too), ``module:attr``, or an imported module: the reference workers
    load it by; anything else is refused in one line naming the argument."""
    if isinstance(task, os.PathLike):
        return os.fspath(task)  # type: ignore[return-value]
    if isinstance(task, ModuleType):
        path = getattr(task, "__file__", None)
        if not path or not path.endswith(".py"):  # a notebook's __main__, or a module built in memory
            raise TaskError(f"task: module {task.__name__!r} has no .py file that workers could import; write the "
                            "task (space, load_data, build_model) to a .py file and pass its path")
        return path
    if not isinstance(task, str):
        raise TaskError(f"task: expected a task file's path, 'module:attr', a module or a loaded Task, got "
                        f"{type(task).__name__}")
    return task


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
    if metric not in TASK_METRICS:
        raise TaskError(f"task {ref!r}: metric must be one of {TASK_METRICS}, got {metric!r}")
    settings = dict(getattr(ns, "settings", {}) or {})
    normalize = getattr(ns, "normalize", True)
    if not (_is_bool(normalize) or (isinstance(normalize, (tuple, list)) and len(normalize) == 2)):
        raise TaskError(f"task {ref!r}: normalize must be True, False or (mean, std) of the inputs, "
                        f"got {type(normalize).__name__}")
    kind, objective, mode = _contract_fields(ref, ns)
    _check_diagnostics(ref, getattr(ns, "diagnostics", None))
    _check_worker_options(ref, ns)
    return Task(canonical, ns, space, metric, bool(getattr(ns, "normalize", True)), settings, kind, objective, mode,
                bool(getattr(ns, "standardize_targets", False)))


def _check_diagnostics(ref: str, value: Any) -> None:
    """``diagnostics``: None, True, False or a dict of positive integers by option name. Only workers read it: a
    misspelt option was ignored there, and a bad number (``bins = 0``) failed every trial."""
    if value is None or _is_bool(value):
        return
    if not isinstance(value, dict):
        raise TaskError(f"task {ref!r}: diagnostics must be True, False or a dict of "
                        f"{', '.join(DIAGNOSTICS_OPTIONS)}, got {type(value).__name__}")
    for key, number in value.items():
        if key not in DIAGNOSTICS_OPTIONS:
            near = did_you_mean(str(key), DIAGNOSTICS_OPTIONS)
            raise TaskError(f"task {ref!r}: diagnostics has no option {key!r}{near} "
                            f"(options: {', '.join(DIAGNOSTICS_OPTIONS)})")
        if isinstance(number, bool) or not isinstance(number, numbers.Integral) or number < 1:
            raise TaskError(f"task {ref!r}: diagnostics {key!r} must be a positive integer, got {number!r}")


def _is_bool(value: Any) -> bool:
    """Python's bool or numpy's (a task may compute its flags), without importing numpy."""
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def _check_worker_options(ref: str, ns: Any) -> None:
    """The plain options workers read, refused here rather than cast there: ``standardize_targets = "no"`` trained on
    standardised targets, ``num_workers = 1.5`` ran one loader worker, ``fuse_per_member = "hidden"`` named letters."""
    standardize = getattr(ns, "standardize_targets", None)
    if standardize is not None and not _is_bool(standardize):
        raise TaskError(f"task {ref!r}: standardize_targets must be True or False, got {standardize!r}")
    workers = getattr(ns, "num_workers", None)
    if workers is not None and (_is_bool(workers) or not isinstance(workers, numbers.Integral) or workers < 0):
        raise TaskError(f"task {ref!r}: num_workers must be an integer >= 0 (DataLoader worker processes per trial), "
                        f"got {workers!r}")
    names = getattr(ns, "fuse_per_member", None)
    if names is not None and (not isinstance(names, (list, tuple, set, frozenset))
                              or not all(isinstance(name, str) for name in names)):
        raise TaskError(f"task {ref!r}: fuse_per_member must be a set of parameter names, such as "
                        f"{{\"label_smoothing\"}}, got {names!r}")


# The reported columns whose better direction caviar knows; any other objective declares its mode.
BUILTIN_OBJECTIVES = ("val_accuracy", "val_log_loss", "val_loss", "val_mse", "val_mae", "val_r2", "val_exact_match")
BETTER_HIGHER = ("val_accuracy", "val_r2", "val_exact_match")  # the others are losses and errors: lower is better


def _contract_fields(ref: str, ns: Any) -> tuple[str | None, str | None, str | None]:
    """``kind``, ``objective`` and ``mode`` as declared, checked for what can be known without data."""
    kind = getattr(ns, "kind", None)
    if kind is not None and kind not in KINDS:
        raise TaskError(f"task {ref!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    metrics = getattr(ns, "metrics", None)
    if metrics is not None and not callable(metrics):
        raise TaskError(f"task {ref!r}: metrics must be callable (outputs, targets) -> dict, "
                        f"got {type(metrics).__name__}")
    if kind == "custom":
        lacking = [name for name in ("loss_fn", "metrics") if getattr(ns, name, None) is None]
        if lacking:
            raise TaskError(f"task {ref!r}: kind = \"custom\" needs {' and '.join(lacking)}")
    objective = getattr(ns, "objective", None)
    if objective is not None and (not isinstance(objective, str) or not objective.startswith("val_")):
        raise TaskError(f"task {ref!r}: objective must name a validation column such as \"val_mse\", got {objective!r}")
    mode = getattr(ns, "mode", None)
    if mode is not None and mode not in MODES:
        raise TaskError(f"task {ref!r}: mode must be \"min\" or \"max\", got {mode!r}")
    if objective in BUILTIN_OBJECTIVES and mode is not None:
        better = "max" if objective in BETTER_HIGHER else "min"
        if mode != better:  # a one-word slip that would rank the worst trials (and ensembles) first, silently
            raise TaskError(f"task {ref!r}: mode = {mode!r} for {objective}, which is better when "
                            f"{'higher' if better == 'max' else 'lower'}: the sweep would keep its worst trials; "
                            f"set mode = {better!r} or leave mode out")
    if objective is not None and mode is None and objective not in BUILTIN_OBJECTIVES:
        # val_auroc, val_map, val_iou, val_kappa...: a name says nothing sure about which way is better
        raise TaskError(f"task {ref!r}: objective {objective!r} is not one of caviar's own columns "
                        f"({', '.join(BUILTIN_OBJECTIVES)}): declare mode = \"max\" or mode = \"min\"")
    classes = getattr(ns, "num_classes", None)
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 2):
        raise TaskError(f"task {ref!r}: num_classes must be an integer of 2 or more, got {classes!r}")
    return kind, objective, mode


def fusing_limits(task: Task, precision: str) -> tuple[str | None, frozenset[str]]:
    """Why this task's trials cannot share arrays (``None``: they may), and the parameters a member keeps its own."""
    blocker = fuse_blocker([h for h in TASK_HOOKS_THAT_BLOCK if task.get(h)], precision) or unfusable_reason(task)
    return blocker, PER_MEMBER | frozenset(task.get("fuse_per_member") or ())


def unfusable_reason(task: Task) -> str | None:
    """Why fused arrays cannot train this task's contract, known from the task alone; ``None`` when they may.

    Fused arrays (worker/arrays/fused.py) score class-index classification on accuracy or loss; other
    kinds, a task's own metrics and objectives train on the plain path, so no number is wrong.
    """
    if task.kind not in (None, "classification"):  # multilabel too: its rows are (example, label) pairs
        return f"kind {task.kind!r}: fused arrays train class-index classification only"
    for name in ("metrics", "objective", "mode", "standardize_targets"):
        if getattr(task, name, None) or task.get(name):
            return f"the task defines {name}: fused arrays score on accuracy or loss only"
    return None


# Regression targets trained as they are learn slowly when their scale is far from the unit one an untrained model's
# outputs have: prices near 1e4, and as much rates or displacements near 1e-3 (every MSE near 1e-7).
UNIT_SCALE_BAND = (0.1, 10.0)


def far_from_unit_scale(spread: float) -> bool:
    """Whether targets whose largest ``max(|mean|, sd)`` over the outputs is ``spread`` sit far from unit scale
    (targets that are all 0 have no scale to change)."""
    low, high = UNIT_SCALE_BAND
    return 0 < spread and not low <= spread < high
