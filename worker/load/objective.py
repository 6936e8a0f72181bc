"""The sweep's objective as a scorer of ensembles' averaged outputs, so that it, not log loss, chooses them.

Ensembles are chosen on stored predictions (``orchestrator.ensemble``); the built-in columns
(``val_accuracy``, ``val_log_loss``, ``val_mse``, and ``val_loss`` of the default loss) are scored
there without task code. A task's own ``metrics`` (e.g. ``val_brier``), a built-in regression
metric other than MSE, or ``val_loss`` of a custom ``loss_fn`` needs the task's functions: this
module wraps them in an :class:`Objective` that gets what they get from a model in the worker.

- Classification: the stored outputs are averaged class probabilities; the functions get
  ``log(probabilities)`` as the model's logits. ``softmax(log p) = p`` for rows summing to one,
  so a metric that applies softmax (or a shift-invariant loss such as cross-entropy) sees exactly
  the ensemble's average. A binary head's one logit is ``log p1 - log p0``, shaped ``(n, 1)`` as
  the model gives it: its sigmoid is the averaged ``p1``.
- Regression: averaged outputs in the targets' original units, as the worker passes them
  (it maps standardised outputs back before calling the task's functions).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from orchestrator.ensemble.ensemble_run import STORED_OBJECTIVES, Dataset
from orchestrator.ensemble.ensembles import Objective
from orchestrator.errors import TaskError
from orchestrator.store import schema
from worker.data.kinds import TargetKind, builtin_metric_names, builtin_metrics, class_dim, natural_mode, user_metrics

# Floor for probabilities before the log: a float16 zero becomes a very negative logit, never -inf (whose
# products with zero targets are NaN); softmax maps it back to ~1e-38.
_TINY = float(np.finfo(np.float32).tiny)


def ensemble_objective(task: Any, dataset: Dataset) -> Objective | None:
    """The objective that chooses this sweep's ensembles, or None where the built-in metrics already are it.

    ``task`` None (no task code may run): only an objective caviar's own metrics give (``val_mae``, a
    multi-label ``val_exact_match``); None for one that needs the task's functions.
    """
    objective = dataset.objective or getattr(task, "objective", None)
    if not objective or not objective.startswith("val_") or dataset.kind not in STORED_OBJECTIVES:
        return None
    loss_fn = task.get("loss_fn") if task is not None else None
    if objective in STORED_OBJECTIVES[dataset.kind] or (objective == "val_loss" and loss_fn is None):
        return None
    mode = dataset.mode or getattr(task, "mode", None) or natural_mode(objective)
    kind = _target_kind(dataset)
    targets = {"val": _targets(dataset, dataset.y_val, "val"), "test": _targets(dataset, dataset.y_test, "test")}
    name = objective.removeprefix("val_")
    if task is None and name not in builtin_metric_names(kind):
        return None
    name_is_builtin: bool | None = None  # found on the first call; greedy then computes only the source that has it

    def score(outputs: np.ndarray, split: str) -> float:
        nonlocal name_is_builtin
        model_outputs = _model_outputs(dataset, outputs, split)
        if objective == "val_loss":
            try:
                with torch.no_grad():
                    return float(loss_fn(model_outputs, targets[split].clone()))  # the same targets every call
            except Exception as exc:
                raise TaskError(f"loss_fn raised {type(exc).__name__} on the {split} split: {exc}") from exc
        values = builtin_metrics(kind, model_outputs, targets[split]) if name_is_builtin is not False else {}
        if name_is_builtin is None:
            name_is_builtin = name in values
        if name not in values:
            with torch.no_grad():
                values = user_metrics(task, model_outputs, targets[split], split)
        if name not in values:
            raise TaskError(f"metrics returned no {name!r} on the {split} split (returned: "
                            f"{', '.join(sorted(values)) or 'nothing'})")
        return values[name]

    return Objective(objective, mode, score)


def _target_kind(dataset: Dataset) -> TargetKind:
    if dataset.kind == "regression":  # stored outputs and targets are in original units already
        return TargetKind("regression")
    labels = dataset.target_shape[0] if dataset.multilabel else None
    positions = dataset.target_shape if dataset.per_position else None
    return TargetKind("classification", num_classes=dataset.num_classes, soft=dataset.soft, labels=labels,
                      positions=positions)


def _targets(dataset: Dataset, values: np.ndarray, split: str) -> torch.Tensor:
    """The split's targets as the task's functions get them: class indices, float32 probabilities, or values."""
    if dataset.per_position:  # every position, -100 where none, as load_data gave them (values: the labelled ones)
        return torch.from_numpy(_every_label(dataset, split).reshape(-1, *dataset.target_shape))
    if dataset.kind == "regression":
        return torch.from_numpy(np.ascontiguousarray(values).reshape(len(values), *dataset.target_shape))
    if dataset.soft:
        return torch.from_numpy(values.astype(np.float32))
    if dataset.multilabel:  # (example, label) pairs back to (n, L), as load_data gave them
        return torch.from_numpy(values.astype(np.int64).reshape(-1, *dataset.target_shape))
    return torch.from_numpy(values.astype(np.int64))


def _model_outputs(dataset: Dataset, outputs: np.ndarray, split: str) -> torch.Tensor:
    """Averaged outputs in the form a model gives them: logits for classification, (n, d) values for regression."""
    if dataset.kind == "regression":
        # float64 as the targets, shaped as the members gave them ((n,) from a squeezed head, (n, T, 1) for targets
        # (n, T)): a loss_fn written for those would broadcast against the targets in another shape, silently.
        # A sweep from before output shapes were stored: (n, 1) for one value per row, else the targets' shape.
        shape = dataset.target_shape or (1,)
        given = dataset.output_shape
        if given is not None and math.prod(given) == math.prod(dataset.target_shape):
            shape = given
        return torch.from_numpy(np.asarray(outputs, dtype=np.float64).reshape(len(outputs), *shape))
    log_probs = np.log(np.maximum(np.asarray(outputs, dtype=np.float64), _TINY))
    if dataset.per_position:
        return _position_scores(dataset, log_probs, split)
    if dataset.binary_head or dataset.multilabel:  # a logit: softmax((0, z)) = (p0, p1) for z = log p1 - log p0
        logit = (log_probs[:, 1:] - log_probs[:, :1]).astype(np.float32)
        return torch.from_numpy(logit.reshape(-1, *dataset.target_shape) if dataset.multilabel else logit)
    return torch.from_numpy(log_probs.astype(np.float32))


def _every_label(dataset: Dataset, split: str) -> np.ndarray:
    every = dataset.y_val_all if split == "val" else dataset.y_test_all
    assert every is not None
    return every


def _position_scores(dataset: Dataset, log_probs: np.ndarray, split: str) -> torch.Tensor:
    """A per-position sweep's averaged rows (one per labelled position) as the model's (n, C, *S) or (n, *S, C)
    scores. A position without a label gets equal scores: a task's function ignores it as its loss does."""
    every = _every_label(dataset, split)
    assert dataset.output_shape is not None
    classes = log_probs.shape[1]
    rows = np.zeros((len(every), classes), dtype=np.float64)
    rows[every != schema.IGNORE_INDEX] = log_probs
    scores = rows.reshape(-1, *dataset.target_shape, classes)
    first = stored_class_dim(dataset) == 1  # classes first, torch's layout
    if dataset.output_shape[0 if first else -1] == 1:  # one logit per position, either layout: log p1 - log p0
        scores = scores[..., 1:] - scores[..., :1]
    if first:
        scores = np.moveaxis(scores, -1, 1)
    return torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))


def stored_class_dim(dataset: Dataset) -> int | None:
    """A per-position sweep's class dimension (1 or -1), from one example's outputs in training (None: not such a
    sweep, or one from before output shapes were stored)."""
    if not dataset.per_position or dataset.output_shape is None:
        return None
    return class_dim((1, *dataset.output_shape), _target_kind(dataset))
