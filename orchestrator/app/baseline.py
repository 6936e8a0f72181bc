"""Did anything learn? The best trial against the do-nothing answer on validation.

CS231n's sanity checks start from the loss of a model that has learned nothing; at a sweep's end the
same question is asked of its best trial. Classification: always predicting the most frequent class
of the validation split; multi-label: each label's more frequent value (a label's own base rate, not
the pooled share of ones); regression: predicting the training mean (the val MSE the pruners call
chance, stored in the dataset table). A sweep whose best trial does no better ends with a warning
and a ``no_trial_learned`` event, instead of narrowing quietly around noise.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.decide.pruning import chance_loss
from orchestrator.spec.task import far_from_unit_scale
from orchestrator.store import schema

MARGIN = 0.02  # as the pruners' not-learning rule: accuracy points, or a share of the baseline loss


def nothing_learned(trials: Iterable[Any], dataset: Mapping[str, Any],
                    val_loss_is_log_loss: bool = False) -> str | None:
    """One line when no trial beat the do-nothing answer by ``MARGIN``; ``None`` when one did or nothing can say.

    ``trials``: objects with ``best_val_accuracy`` and ``best_val_loss`` (None or NaN when unknown);
    ``dataset``: the dataset table's row; ``val_loss_is_log_loss``: the task trains on caviar's cross-entropy, so a
    trial's val loss is its log loss. On imbalanced classes a model can learn (a lower log loss than the class
    frequencies give) while its accuracy stays at the majority share: then the line says to rank by log loss.
    """
    trials = list(trials)
    labels = dataset.get("y_val")
    unit = "val examples"
    if labels and dataset.get("per_position"):  # a class per position: the labelled (example, position) pairs
        labels, unit = [v for v in labels if v != schema.IGNORE_INDEX], "labelled val positions"
    elif labels and dataset.get("target_shape"):  # multi-label: (example, label) pairs, row-major
        return _multilabel_nothing_learned(trials, dataset, labels, val_loss_is_log_loss)
    if labels and _finite(dataset.get("baseline_objective")):  # ranked by a metric of the task's own
        return _own_metric_nothing_learned(trials, dataset)
    if labels:  # class indices: soft labels and regression have none here
        accuracies = [t.best_val_accuracy for t in trials if _finite(t.best_val_accuracy)]
        if not accuracies:
            return None
        label, count = Counter(labels).most_common(1)[0]
        share, best = count / len(labels), max(accuracies)
        # Two standard errors of an accuracy measured on this many examples: the best of several trials at chance
        # easily lands a few examples above it.
        noise = 2.0 * math.sqrt(share * (1.0 - share) / len(labels))
        margin = max(MARGIN, noise)
        if best > share + margin:
            return None
        if share + noise >= 1.0:  # not even a perfect score would stand out: the split is too small
            return (f"{len(labels)} {unit} cannot tell a trial that learned from always predicting class {label} "
                    f"({share:.3f} of them): give the validation split more examples")
        learned = _log_loss_learned(trials, labels) if val_loss_is_log_loss else None
        ranked_otherwise = dataset.get("objective") not in (None, "val_accuracy")
        if ranked_otherwise and (learned or not val_loss_is_log_loss):
            # ranked by another column: the log loss shows learning, or (a task's own loss_fn, an F1 of its own)
            # nothing here can compare that column with a do-nothing answer; accuracy alone would be a false alarm
            return None
        if share + margin >= 1.0 and not learned:  # so imbalanced that even a perfect model gains under the margin
            said = (f"accuracy cannot show learning on this split: class {label} is {share:.3f} of {len(labels)} "
                    f"{unit}, so a perfect model gains {1.0 - share:.3f} over always predicting it (best val accuracy "
                    f"{best:.3f})")
            losses = [t.best_val_loss for t in trials if _finite(t.best_val_loss)]
            if val_loss_is_log_loss and losses:  # the log loss can show it, and did not
                prior = _prior_log_loss(labels)
                return (f"{said}, and no trial's val log loss beat the class frequencies' ({prior:.3f}; best "
                        f"{min(losses):.3f}): check the ranges (the learning rate first) and the data")
            rank_by = ('objective = "val_loss" (mode = "min": your loss_fn)' if dataset.get("own_loss") else
                       'objective = "val_log_loss" (mode = "min")')
            return f"{said}; rank by {rank_by} or a metric of your own, such as average precision or balanced accuracy"
        if learned:
            return (f"no trial's val accuracy did clearly better than always predicting class {label} (the most "
                    f"frequent: {share:.3f} of {len(labels)} {unit}; best {best:.3f}), but their val log loss "
                    f"learned ({learned}): with most examples in one class accuracy hardly separates trials; rank them "
                    'by objective = "val_log_loss" (mode = "min") or a metric of your own, such as balanced accuracy')
        if dataset.get("own_loss"):
            # The task's loss_fn may not aim at accuracy: a class-weighted loss gives some up for the rarer classes,
            # and its own do-nothing value is unknown here, so the line cannot say that nothing learned.
            return (f"no trial's val accuracy did clearly better than always predicting class {label} (the most "
                    f"frequent: {share:.3f} of {len(labels)} {unit}; best {best:.3f}), which the task's own loss_fn "
                    "may not aim at (a class-weighted loss gives accuracy up for the rarer classes): to rank trials "
                    'by that loss, set objective = "val_loss" (mode = "min") or a metric of your own, such as '
                    "balanced accuracy; else check the ranges (the learning rate first) and the data")
        return (f"no trial did clearly better than always predicting class {label} (the most frequent: {share:.3f} of "
                f"{len(labels)} {unit}): the best val accuracy is {best:.3f}; check the ranges (the learning "
                "rate first) and the data")
    baseline = dataset.get("baseline_val_loss")
    if not _finite(baseline) or baseline <= 0 or chance_loss(baseline, dataset.get("objective")) is None:
        return None  # ranked by a metric of the task's own (a correlation): an MSE says nothing of it
    losses = [t.best_val_loss for t in trials if _finite(t.best_val_loss)]
    if not losses or min(losses) < (1.0 - MARGIN) * baseline:
        return None
    return (f"no trial beat predicting the training mean (val loss {baseline:.4g}): the best val loss is "
            f"{min(losses):.4g}; check the ranges (the learning rate first) and the data{_scale_hint(dataset)}")


def _multilabel_nothing_learned(trials: list[Any], dataset: Mapping[str, Any], labels: list[Any],
                                val_loss_is_log_loss: bool) -> str | None:
    """:func:`nothing_learned` for multi-label rows: a constant answer per label gets each label's majority share
    right and each label's entropy as log loss, both better than the pooled share of ones says."""
    accuracies = [t.best_val_accuracy for t in trials if _finite(t.best_val_accuracy)]
    width = int(math.prod(dataset["target_shape"]))
    if not accuracies or width < 1 or len(labels) % width:
        return None
    rates = [sum(labels[j::width]) / (len(labels) // width) for j in range(width)]
    share, best = sum(max(p, 1.0 - p) for p in rates) / width, max(accuracies)
    noise = 2.0 * math.sqrt(share * (1.0 - share) / len(labels))
    margin = max(MARGIN, noise)
    answer = "always predicting each label's more frequent value"
    if best > share + margin:
        return None
    if share + noise >= 1.0:  # the split is too small; rare labels (share + MARGIN above 1) are judged by log loss
        return (f"{len(labels)} val example-label pairs cannot tell a trial that learned from {answer} ({share:.3f} "
                "of them): give the validation split more examples")
    prior = sum(-p * math.log(p) - (1.0 - p) * math.log(1.0 - p) for p in rates if 0.0 < p < 1.0) / width
    losses = [t.best_val_loss for t in trials if _finite(t.best_val_loss)]
    learned = val_loss_is_log_loss and losses and prior > 0 and min(losses) < (1.0 - MARGIN) * prior
    if dataset.get("objective") not in (None, "val_accuracy") and (learned or not val_loss_is_log_loss):
        return None  # ranked by another column: the log loss learned, or nothing here can judge that column
    if learned:
        return (f"no trial's val accuracy did clearly better than {answer} ({share:.3f} of {len(labels)} val "
                f"example-label pairs; best {best:.3f}), but their val log loss learned (best {min(losses):.3f}, "
                f"{prior:.3f} for each label's frequency): rank them by objective = \"val_loss\" (mode = \"min\") "
                "or a metric of your own, such as F1")
    if dataset.get("own_loss"):  # as for classes: a weighted loss_fn (pos_weight) may not aim at accuracy
        return (f"no trial's val accuracy did clearly better than {answer} ({share:.3f} of {len(labels)} val "
                f"example-label pairs; best {best:.3f}), which the task's own loss_fn may not aim at (a weighted loss "
                'gives accuracy up for the rarer labels): to rank trials by that loss, set objective = "val_loss" '
                '(mode = "min") or a metric of your own, such as F1; else check the ranges (the learning rate first) '
                "and the data")
    return (f"no trial did clearly better than {answer} ({share:.3f} of {len(labels)} val example-label pairs right; "
            f"log loss {prior:.3f}): the best val accuracy is {best:.3f}; check the ranges (the learning rate first) "
            "and the data")


def _own_metric_nothing_learned(trials: list[Any], dataset: Mapping[str, Any]) -> str | None:
    """:func:`nothing_learned` for a classification ranked by a metric of the task's own: the best trial against the
    best answer that ignores the inputs, as that metric scored it on validation (worker/train/do_nothing.py). A
    recall or a calibration error can be won by such an answer, and the sweep then keeps and ensembles a model that
    learned nothing; a metric it cannot score (a correlation: NaN) stores none and is not judged."""
    objective, mode = dataset.get("objective"), dataset.get("mode")
    scores = [t.best_score for t in trials if _finite(t.best_score)]
    if not scores or mode not in ("min", "max"):
        return None
    value = float(dataset["baseline_objective"])
    labels = set(dataset.get("y_val") or [])
    if len(labels) == 1:  # no metric tells a model from a constant answer on one class: the split is at fault
        return (f"val holds only class {labels.pop()}: {objective} cannot tell a trial that learned from "
                f"{dataset.get('baseline_answer')}, an answer that ignores the inputs ({objective} {value:.4g} on "
                "validation); give the validation split examples of every class (a stratified split)")
    best = max(scores)  # scores are higher-is-better: the objective, negated when minimised
    if best > (value if mode == "max" else -value):
        return None
    shown = best if mode == "max" else -best
    return (f"no trial did better on {objective} than {dataset.get('baseline_answer')}, an answer that ignores the "
            f"inputs ({objective} {value:.4g} on validation; the best trial {shown:.4g}): {objective} does not "
            "require learning (a recall or a calibration error alone can be won so); rank by a metric that does, or "
            "check the ranges (the learning rate first) and the data")


def _log_loss_learned(trials: list[Any], labels: list[Any]) -> str | None:
    """``"best 0.223, 0.260 for the class frequencies"`` when a trial's val log loss beat the best constant answer
    (the val split's own class frequencies, the lowest log loss any constant prediction gets) by ``MARGIN``."""
    prior = _prior_log_loss(labels)
    losses = [t.best_val_loss for t in trials if _finite(t.best_val_loss)]
    if not losses or prior <= 0 or min(losses) >= (1.0 - MARGIN) * prior:
        return None
    return f"best {min(losses):.3f}, {prior:.3f} for the class frequencies"


def _prior_log_loss(labels: list[Any]) -> float:
    """The val log loss of predicting the val split's own class frequencies: the lowest any constant answer gets."""
    return -sum(c / len(labels) * math.log(c / len(labels)) for c in Counter(labels).values())


def _scale_hint(dataset: Mapping[str, Any]) -> str:
    """Targets far from unit scale that were not standardised: the usual reason a regressor learns nothing."""
    if dataset.get("target_std") is not None:
        return ""
    width = math.prod(dataset.get("target_shape") or [])  # values are stored flat, example after example
    stored = list(dataset.get("y_val_values") or [])
    columns = [stored[i::width] for i in range(width)] if width > 1 and len(stored) % width == 0 else [stored]
    shown = []
    for column in columns:  # each output on its own: +5000 and -4000 pooled read as "mean 500, sd 4.5e3"
        values = [v for v in column if _finite(v)]
        if len(values) < 2:
            return ""
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        shown.append((mean, sd))
    if not far_from_unit_scale(max(max(abs(mean), sd) for mean, sd in shown)):
        return ""
    if len(shown) == 1:
        described = f"val mean {shown[0][0]:.3g}, sd {shown[0][1]:.3g}"
    else:
        described = "val means " + ", ".join(f"{m:.3g}" for m, _ in shown[:4]) + (", ..." if len(shown) > 4 else "") \
            + "; sds " + ", ".join(f"{sd:.3g}" for _, sd in shown[:4]) + (", ..." if len(shown) > 4 else "")
    return f"; the targets ({described}) are trained on as they are: set standardize_targets = True"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
