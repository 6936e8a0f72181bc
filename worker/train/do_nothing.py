"""The sweep's own objective for answers that ignore the inputs, so that the sweep's end can say nothing learned.

caviar knows the do-nothing answer of its own columns (accuracy and log loss: the class frequencies). A metric of
the task's own (a macro-F1, a recall, an expected calibration error) has no chance level caviar knows, and some are
won by an answer that ignores the inputs: always predicting the class a recall is about, or the validation class
frequencies for a calibration error (perfectly calibrated). The task's own function scores those answers on
validation here, once; the sweep's end (orchestrator/app/baseline.py) compares the best trial with the best of them.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from orchestrator.decide.pruning import FIT_OBJECTIVES
from worker.data.kinds import user_metrics
from worker.data.splits import Splits

MAX_CONSTANT_CLASSES = 20  # "always class c" is scored for each class up to this many; the frequencies always
_SURE = 1.0 - 1e-3  # an "always class c" answer's probability of c (the rest spread over the other classes)


def do_nothing_objective(task: Any, splits: Splits, objective: str | None, mode: str | None,
                         output_shape: tuple[int, ...] | None) -> tuple[float, str] | None:
    """``(value, answer)``: the best value of ``objective`` among the constant answers, and which answer it is;
    None where caviar knows the chance level itself or the task's metric cannot score such answers (it raises, or
    gives NaN, as a correlation does)."""
    kind = splits.target_kind
    if (kind.kind != "classification" or kind.soft or kind.rows_per_example or task.get("metrics") is None
            or objective in (None, *FIT_OBJECTIVES) or mode not in ("min", "max") or splits.num_classes is None):
        return None
    name = objective.removeprefix("val_")
    classes = splits.num_classes
    # The validation split's own frequencies, as the log loss's do-nothing answer (orchestrator/app/baseline.py)
    counts = torch.bincount(splits.y_val.reshape(-1).long(), minlength=classes).double()
    answers = [("always predicting the validation class frequencies", counts / counts.sum())]
    if classes <= MAX_CONSTANT_CLASSES:
        for c in range(classes):
            probs = torch.full((classes,), (1.0 - _SURE) / (classes - 1), dtype=torch.float64)
            probs[c] = _SURE
            answers.append((f"always predicting class {c}", probs))
    best: tuple[float, str] | None = None
    for answer, probs in answers:
        value = _score(task, splits, name, probs.clamp_min(1e-12).log(), output_shape)
        if value is None:
            continue
        if best is None or (value > best[0] if mode == "max" else value < best[0]):
            best = (value, answer)
    return best


def _score(task: Any, splits: Splits, name: str, log_probs: torch.Tensor,
           output_shape: tuple[int, ...] | None) -> float | None:
    """The task's metric ``name`` on validation for one constant answer, given as the model would give it."""
    n = len(splits.y_val)
    if output_shape == (1,):  # a binary head's one logit: log p1 - log p0
        outputs = (log_probs[1:] - log_probs[:1]).reshape(1, 1).expand(n, 1)
    else:
        outputs = log_probs.reshape(1, -1).expand(n, -1)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn's UndefinedMetricWarning for a class never predicted
            value = user_metrics(task, outputs.float().contiguous(), splits.y_val, "val").get(name)
    except Exception:  # a metric that cannot take a constant answer (one predicted class): no baseline from it
        return None
    return value if value is not None and math.isfinite(value) else None
