"""What a task's targets are, and what follows from that: the default loss, the built-in metrics, the score.

The kinds (``orchestrator.spec.task.KINDS``):

- ``classification``: integer class indices of shape (N,), or class probabilities (soft labels)
  of shape (N, C) whose rows sum to 1. Loss: cross-entropy (against the probabilities for soft
  labels); metrics: accuracy and log loss. The model gives one score per class, or, for two
  classes, one logit per example (``nn.Linear(d, 1)``, the usual binary head): see :func:`class_scores`.
- multi-label classification (``kind = "multilabel"``, or inferred from integer 0/1 rows of shape
  (N, L) that are not one-hot): each of the L labels is a binary class of its own, and the model
  gives one logit per label, shape (N, L). Loss: binary cross-entropy with logits, averaged over
  labels; metrics: accuracy over every (example, label) pair, log loss, and exact match (every
  label of an example right). Predictions and ensembles treat each (example, label) pair as one
  binary example, so their accuracy and log loss are these same numbers.
- classification per position (tagging, segmentation): integer class indices of shape (N, *S), a class
  per token or pixel, where ``-100`` (torch's ``ignore_index``) marks positions without a label (padding).
  The model gives one score per class at every position, shape (N, C, *S) as torch's cross-entropy
  takes it, or (N, *S, C) as token classifiers give it (the shapes say which; a shape that fits both
  is refused). Each labelled (example, position) pair is one classification row: loss, accuracy and
  log loss are over those rows, and predictions and ensembles hold one row per labelled position.
- ``regression``: float targets of any trailing shape. Loss: mean squared error; metrics: MSE,
  MAE and R² in the targets' original units (when ``standardize_targets`` trains on
  standardised targets, every validation and test number is mapped back first; ``train_loss``
  stays what the optimizer minimises, and ``train_loss_original`` is the training loss in the
  original units, the one to compare with ``val_loss``).
- ``custom``: the task's ``loss_fn`` and ``metrics`` only; targets pass through untouched.

Targets keep their dtype and shape: nothing is cast or truncated. Integer targets mean
classification; float targets must be declared, because integer-valued floats are as often a
regression target (a count, a price) as a class index. A split whose targets do not fit its
kind is refused with one line naming the split and the offending value.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from orchestrator.errors import TaskError
from orchestrator.store import schema

SOFT_LABEL_TOLERANCE = 1e-3  # |row sum - 1| allowed for probability targets (float16 data rounds; bfloat16: its eps)
IGNORE_INDEX = schema.IGNORE_INDEX  # -100, torch's cross-entropy default: a position without a label (padding)


@dataclass(frozen=True)
class TargetKind:
    """The resolved kind of a task's targets, with what the loss and metrics need to know."""

    kind: str  # classification / regression / custom
    num_classes: int | None = None  # classification only
    soft: bool = False  # classification with probability targets (N, C)
    labels: int | None = None  # multi-label classification: the label count L (num_classes is then 2, per label)
    positions: tuple[int, ...] | None = None  # a class per position: one example's target shape S (tokens, pixels)
    # Regression with standardize_targets: train-split statistics, shape (1, *target_shape); None otherwise.
    target_mean: torch.Tensor | None = None
    target_std: torch.Tensor | None = None

    @property
    def standardised(self) -> bool:
        """Regression trained on standardised targets (``standardize_targets``)."""
        return self.target_mean is not None and self.target_std is not None

    @property
    def hard_classes(self) -> bool:
        return self.kind == "classification" and not self.soft

    @property
    def multilabel(self) -> bool:
        return self.labels is not None

    @property
    def per_position(self) -> bool:
        return self.positions is not None

    @property
    def rows_per_example(self) -> bool:
        """Whether an example is several classification rows (labels, or positions), flattened by class_labels."""
        return self.multilabel or self.per_position

    def default_objective(self, metric: str = "accuracy", own_loss: bool = False) -> tuple[str, str]:
        """(objective column, mode) when the task declares none; ``metric`` is the older task field.

        ``own_loss``: the task gives its own ``loss_fn``. A regressor trained on it (Poisson NLL on log-rates, a
        quantile's pinball loss, a Huber loss) is ranked on that loss: its outputs need not be predictions whose
        squared error means anything (log-rates against counts), and MSE would rank a 90% quantile by the mean."""
        if self.rows_per_example:  # accuracy over sparse labels or mostly-background pixels favours the majority
            return "val_loss", "min"
        if self.kind == "classification":
            return ("val_accuracy", "max") if metric == "accuracy" else ("val_loss", "min")
        if self.kind == "regression":
            return ("val_loss", "min") if own_loss else ("val_mse", "min")
        return "val_loss", "min"

    def to_original(self, outputs: torch.Tensor) -> torch.Tensor:
        """Regression outputs in the targets' original units (undoes target standardisation)."""
        if self.target_mean is None or self.target_std is None:
            return outputs
        mean, std = self.target_mean.to(outputs.device), self.target_std.to(outputs.device)
        per_example = mean.shape[1:]
        if tuple(outputs.shape[1:]) != tuple(per_example) and outputs[0].numel() == mean.numel():
            # (N, T, 1) for targets (N, T): each value against its own target's statistics, in the model's shape
            # (broadcasting (N, T, 1) against (1, T) gave (N, T, T)); a layout that does not fit: match_targets says so
            return (outputs.reshape(len(outputs), *per_example) * std + mean).reshape(outputs.shape)
        return outputs * std + mean

    def to_training(self, targets: torch.Tensor) -> torch.Tensor:
        """Regression targets in the units the model trains on."""
        if self.target_mean is None or self.target_std is None:
            return targets
        return (targets - self.target_mean.to(targets.device)) / self.target_std.to(targets.device)


def _value(t: torch.Tensor) -> str:
    return f"{float(t):g}"


def _first_non_integer(y: torch.Tensor) -> torch.Tensor | None:
    bad = y[y != torch.round(y)]
    return bad[0] if len(bad) else None


def _check_finite(y: torch.Tensor, split: str) -> None:
    if y.is_floating_point() and not bool(torch.isfinite(y).all()):
        where = tuple((~torch.isfinite(y)).nonzero()[0].tolist())  # as the inputs' line names it: which row to fix
        bad = _value(y[where])
        raise TaskError(f"load_data: {split} targets contain {bad} (at index {where}); every target must be finite "
                        "(for labels that are "
                        'missing, declare kind = "custom" with a loss_fn and metrics that skip them)')


def _float_refusal(y: torch.Tensor, split: str) -> TaskError:
    sample = _first_non_integer(y)
    value = _value(sample if sample is not None else y.reshape(-1)[0])
    soft = ' (or kind = "classification" for class probabilities of shape (N, C))' if y.ndim == 2 else ""
    if y.ndim == 1 and bool(((y == 0) | (y == 1)).all()):  # binary labels kept as floats for a BCE loss
        return TaskError(f"load_data: {split} targets are float 0/1 labels ({value}); give integer class indices "
                         "(y.astype('int64')) for binary classification (a one-logit head trains with binary "
                         'cross-entropy), or declare kind = "regression" if they are numbers')
    return TaskError(f'load_data: {split} targets are floats ({value}); declare kind = "regression"{soft} '
                     "or give integer class indices")


def _indicator_refusal(y: torch.Tensor, split: str) -> TaskError | None:
    """Targets of shape (N, C) holding only 0 and 1: one-hot rows say "class indices", others "multi-label"."""
    if y.ndim != 2 or y.shape[1] < 2 or not bool(((y == 0) | (y == 1)).all()):
        return None
    ones = y.sum(dim=1)
    if bool((ones == 1).all()):
        if y.is_floating_point():
            return None  # one-hot probabilities: soft labels that happen to be hard, taken as they are
        return TaskError(f"load_data: {split} targets are one-hot rows of shape {tuple(y.shape)}; give class indices "
                         "(y.argmax(1)), or float probabilities with kind = \"classification\"")
    if not y.is_floating_point():
        return None  # multi-label: resolve_kind takes them as such
    row = int((ones != 1).nonzero()[0])
    return TaskError(f"load_data: {split} targets are float 0/1 rows with {int(ones[row])} ones in row {row}, as "
                     "multi-label targets are; give integer labels (y.astype('int64')) and caviar trains each label "
                     "as a binary class (kind = \"multilabel\")")


def _is_multilabel(y: torch.Tensor) -> bool:
    """Integer 0/1 rows (N, L), L >= 2, some row not one-hot: several labels per example."""
    return (not y.is_floating_point() and y.ndim == 2 and y.shape[1] >= 2 and bool(((y == 0) | (y == 1)).all())
            and not bool((y.sum(dim=1) == 1).all()))


def _multilabel(targets: Mapping[str, torch.Tensor]) -> TargetKind:
    widths = {}
    for split, y in targets.items():
        if y.is_floating_point() or y.ndim != 2:
            what = "floats" if y.is_floating_point() else f"of shape {tuple(y.shape)}"
            raise TaskError(f"load_data: {split} targets are {what}; kind = \"multilabel\" takes integer 0/1 labels "
                            "of shape (N, L), one column per label")
        bad = y[(y != 0) & (y != 1)]
        if len(bad):
            raise TaskError(f"load_data: {split} targets include {int(bad[0])}; multi-label targets are 0 or 1")
        widths[split] = y.shape[1]
    if len(set(widths.values())) > 1:
        raise TaskError(f"load_data: multi-label targets differ in width across splits ({widths})")
    return TargetKind("classification", num_classes=2, labels=int(next(iter(widths.values()))))


def resolve_kind(declared: str | None, targets: Mapping[str, torch.Tensor], *, standardize: bool = False,
                 classes: int | None = None) -> TargetKind:
    """The kind of ``targets`` (split -> tensor), declared or inferred; refuses targets that do not fit it.

    ``classes``: the task's ``num_classes``, for classes the data may lack (else the highest label + 1).
    """
    for split, y in targets.items():
        if not isinstance(y, torch.Tensor):
            raise TaskError(f"load_data: {split} targets must be a numpy array or tensor, got {type(y).__name__}")
        if declared == "custom":  # the task's own loss and metrics read them: NaN for a missing label, booleans, ...
            continue
        if y.dtype == torch.bool:
            raise TaskError(f"load_data: {split} targets are booleans; give integer class indices (0/1) or floats "
                            f'with kind = "regression"')
        if y.is_complex():
            raise TaskError(f'load_data: {split} targets are complex numbers; declare kind = "custom" and a loss_fn')
        _check_finite(y, split)
    if classes is not None and declared in ("custom", "regression", "multilabel"):
        raise TaskError(f"num_classes: the task declares {classes} classes but kind = {declared!r}")
    if declared == "custom":
        return _not_standardised(TargetKind("custom"), standardize)
    if declared == "regression":
        return _regression(targets, standardize)
    padded = any(bool((~has_label(y)).any()) for y in targets.values() if not y.is_floating_point())
    if declared == "multilabel" or (declared is None and classes is None and not padded
                                    and any(_is_multilabel(y) for y in targets.values())):
        return _not_standardised(_multilabel(targets), standardize)
    for split, y in targets.items():  # 0/1 matrices: say what they are before any rule about shapes or floats
        indicator = _indicator_refusal(y, split)
        if indicator is not None:
            raise indicator
    if declared is None:
        for split, y in targets.items():
            if y.is_floating_point():
                raise _float_refusal(y, split)
    kind = _not_standardised(_classification(targets), standardize)
    if classes is None:
        return kind
    if kind.soft and classes != kind.num_classes:
        raise TaskError(f"num_classes: the task declares {classes} classes but the probability targets have "
                        f"{kind.num_classes} columns")
    if (kind.num_classes or 0) > classes:
        raise TaskError(f"num_classes: the task declares {classes} classes but the targets include class "
                        f"{(kind.num_classes or 0) - 1}")
    return TargetKind("classification", num_classes=classes, soft=kind.soft, positions=kind.positions)


def _not_standardised(kind: TargetKind, standardize: bool) -> TargetKind:
    """``standardize_targets`` is a regression setting: asked of class indices or a custom kind it would do nothing,
    so it is refused rather than ignored."""
    if standardize:
        what = "multi-label" if kind.multilabel else kind.kind
        raise TaskError(f"standardize_targets: standardises regression targets, but these are {what} targets; "
                        'remove it, or declare kind = "regression" if they are numbers')
    return kind


def _classification(targets: Mapping[str, torch.Tensor]) -> TargetKind:
    soft_splits = [s for s, y in targets.items() if y.is_floating_point() and y.ndim == 2]
    if soft_splits and len(soft_splits) != len(targets):
        hard = next(s for s in targets if s not in soft_splits)
        fix = "give every split the same form"
        y = targets[hard]
        if not y.is_floating_point() and y.ndim == 1:  # mixup or cutmix in training, class indices to score on
            classes = targets[soft_splits[0]].shape[1]
            fix = (f"give {hard}'s class indices as one-hot probability rows (np.eye({classes}, dtype='float32')[y]): "
                   "their cross-entropy is the log loss and their argmax the class")
        raise TaskError(f"load_data: {soft_splits[0]} targets are class probabilities but {hard} targets are not; "
                        f"{fix}")
    if soft_splits:
        widths = {s: y.shape[1] for s, y in targets.items()}
        if len(set(widths.values())) > 1:
            raise TaskError(f"load_data: probability targets differ in width across splits ({widths})")
        for split, y in targets.items():
            if bool((y < 0).any()) or bool((y > 1).any()):
                bad = y[(y < 0) | (y > 1)][0]
                raise TaskError(f"load_data: {split} targets are not probabilities ({_value(bad)}); "
                                'declare kind = "regression" for other float targets')
            # Summed in float64: each probability may be off by half its dtype's eps relative (bfloat16: 2^-8), so
            # a row of them by as much, beyond SOFT_LABEL_TOLERANCE for bfloat16 (a teacher's softmax saved in it).
            sums = y.double().sum(dim=1)
            off = (sums - 1).abs() > max(SOFT_LABEL_TOLERANCE, torch.finfo(y.dtype).eps)
            if bool(off.any()):
                raise TaskError(f"load_data: {split} probability targets must sum to 1 per row "
                                f"(row {int(off.nonzero()[0])} sums to {_value(sums[off][0])})")
        return TargetKind("classification", num_classes=int(next(iter(widths.values()))), soft=True)
    if any(_is_per_position(y) for y in targets.values()):
        return _per_position(targets)
    top = -1
    for split, y in targets.items():
        if y.ndim != 1:
            column = y.ndim == 2 and y.shape[1] == 1 and not y.is_floating_point()
            advice = ('give y.reshape(-1) for class indices, or y.astype("float32") with kind = "regression" if they '
                      "are numbers (counts)" if column  # a column of labels or counts, as pandas or a CSV reader gives
                      else 'for other targets declare kind = "regression"')
            raise TaskError(f"load_data: {split} targets have shape {tuple(y.shape)}; classification needs class "
                            f"indices of shape (N,) or probabilities of shape (N, C): {advice}")
        if y.is_floating_point():
            sample = _first_non_integer(y)
            if sample is not None:
                raise _float_refusal(y, split)
            raise TaskError(f"load_data: {split} targets are integer-valued floats ({_value(y[0])}); "
                            "give integer class indices (an integer dtype) for classification")
        if len(y) and int(y.min()) < 0:
            raise TaskError(f"load_data: {split} targets include class {int(y.min())}; class indices start at 0")
        if len(y):
            top = max(top, int(y.max()))
    return TargetKind("classification", num_classes=top + 1)


def _is_per_position(y: torch.Tensor) -> bool:
    """Integer targets (N, T) or (N, H, W): a class per position (tagging, segmentation); (N, 1) is a column."""
    return not y.is_floating_point() and y.ndim >= 2 and not (y.ndim == 2 and y.shape[1] == 1)


def _per_position(targets: Mapping[str, torch.Tensor]) -> TargetKind:
    """A class per position: every split (N, *S) of one S, class indices or IGNORE_INDEX, some position labelled."""
    shapes = {s: tuple(y.shape[1:]) for s, y in targets.items()}
    for split, y in targets.items():
        if not _is_per_position(y):
            raise TaskError(f"load_data: {split} targets have shape {tuple(y.shape)} but others a class per position "
                            f"({shapes}); give every split the same form")
    if len(set(shapes.values())) > 1:
        raise TaskError(f"load_data: per-position targets differ in shape across splits ({shapes}); pad them to one "
                        f"shape, with {IGNORE_INDEX} where a position has no label")
    top = -1
    for split, y in targets.items():
        labelled = y[has_label(y)]
        if len(y) and not len(labelled):
            raise TaskError(f"load_data: {split} targets are all {IGNORE_INDEX} (no position has a label)")
        if len(labelled) and int(labelled.min()) < 0:
            raise TaskError(f"load_data: {split} targets include class {int(labelled.min())}; class indices start at "
                            f"0, and {IGNORE_INDEX} marks a position without a label")
        if len(labelled):
            top = max(top, int(labelled.max()))
    return TargetKind("classification", num_classes=top + 1, positions=next(iter(shapes.values())))


def class_dim(outputs_shape: tuple[int, ...], kind: TargetKind) -> int:
    """Where a per-position model's class scores are: 1 for (N, C, *S) (torch's layout), -1 for (N, *S, C).

    The shapes decide; outputs that fit both (C equal to the positions' sizes) or neither are refused.
    """
    positions = kind.positions or ()
    first = tuple(outputs_shape[2:]) == positions
    last = tuple(outputs_shape[1:-1]) == positions
    if first and last:
        raise TaskError(f"the model outputs shape {tuple(outputs_shape)} for targets (batch, {_dims(positions)}): "
                        f"the class scores could be dimension 1 or the last one; pad the targets' positions to another "
                        f"size (with {IGNORE_INDEX}, no label, where padded) or declare num_classes one higher with as "
                        f"many outputs, so that the shapes tell")
    if not (first or last):
        c = kind.num_classes
        flat = tuple(outputs_shape[1:]) == positions
        hint = ""
        if flat and c == 2:  # a squeezed one-logit head, or 0/1 labels of their own (multi-label: no -100, 2-D only)
            hint = (f"; for one logit per position, give shape (batch, 1, {_dims(positions)}) or (batch, "
                    f"{_dims(positions)}, 1), without the squeeze")
            if len(positions) == 1:
                hint += ', or for 0/1 labels of their own (no -100), declare kind = "multilabel"'
        elif flat:  # one value per position: counts or other numbers, given as integers
            hint = '; if the targets are numbers (counts), give them as floats with kind = "regression"'
        raise TaskError(f"the model outputs shape {tuple(outputs_shape)} but the targets have a class per position, "
                        f"(batch, {_dims(positions)}): give one score per class at every position, shape "
                        f"(batch, {c}, {_dims(positions)}) (torch's layout) or (batch, {_dims(positions)}, {c}){hint}")
    return 1 if first else -1


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(map(str, shape))


def _regression(targets: Mapping[str, torch.Tensor], standardize: bool) -> TargetKind:
    shapes = {s: tuple(y.shape[1:]) for s, y in targets.items()}
    if len(set(shapes.values())) > 1:
        raise TaskError(f"load_data: regression targets differ in shape across splits ({shapes})")
    for split, y in targets.items():
        if not y.is_floating_point():
            raise TaskError(f"load_data: {split} targets are integers ({y.dtype}) but kind = \"regression\"; "
                            "give float targets (e.g. y.astype('float32')) or leave kind to be inferred")
    if not standardize:
        return TargetKind("regression")
    y = targets["train"].double()
    mean = y.mean(dim=0, keepdim=True)
    dtype = targets["train"].dtype
    # A target constant in training gets a tiny std (its outputs then barely move the prediction off the mean), one
    # its dtype holds: 1e-12 is 0 in float16, and dividing by it gave NaN.
    floor = max(1e-12, torch.finfo(dtype).tiny)
    std = y.std(dim=0, keepdim=True).clamp_min(floor) if len(y) > 1 else torch.ones_like(mean)
    return TargetKind("regression", target_mean=mean.to(dtype), target_std=std.to(dtype))


# -- losses and metrics ------------------------------------------------------------------------


def match_targets(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Regression outputs shaped as the targets: (N, 1) for targets (N,) is the usual case.

    Broadcasting (N, 1) against (N,) would silently compare every output with every target;
    a model whose outputs cannot be the targets' shape is refused instead.
    """
    if outputs.shape == targets.shape:
        return outputs
    if outputs.shape[0] == targets.shape[0] and outputs.numel() == targets.numel():
        if same_layout(tuple(outputs.shape[1:]), tuple(targets.shape[1:])):
            return outputs.reshape(targets.shape)
        raise TaskError(f"model outputs have shape {tuple(outputs.shape)} but the targets {tuple(targets.shape)}: "
                        "as many values in another layout, and caviar never guesses which output is which target; "
                        "give the model outputs of the targets' shape (e.g. with permute) or targets of its shape")
    raise TaskError(f"model outputs have shape {tuple(outputs.shape)} but the targets {tuple(targets.shape)}; "
                    "a regression model predicts one value per target")


def same_layout(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether one example's outputs ``a`` reshape to targets ``b`` value for value: they differ only in dimensions
    of size 1, or one side is flat (a row-major view). (3, 8, 8) against (8, 8, 3) is a guess, not a view."""
    a, b = tuple(d for d in a if d != 1), tuple(d for d in b if d != 1)
    return a == b or len(a) <= 1 or len(b) <= 1


def class_scores(outputs: torch.Tensor, kind: TargetKind | None = None) -> torch.Tensor:
    """A classifier's outputs as one score per class, along the last dimension.

    A binary head's one logit ``z`` (outputs ``(..., 1)``) becomes the scores ``(0, z)``: their softmax
    is ``(1 - sigmoid(z), sigmoid(z))`` and their cross-entropy is binary cross-entropy with logits,
    exactly, so a one-output model trains, is scored and is ensembled as its two-output form would be.
    The contract check allows the one-output form for two classes only. A multi-label ``kind``'s
    logits (N, L) become N * L such binary rows, and a per-position kind's scores (N, C, *S) or (N, *S, C)
    become N * prod(S) rows of C, both in the order of :func:`class_labels`.
    """
    if kind is not None and kind.multilabel:
        outputs = outputs.reshape(-1, 1)
    elif kind is not None and kind.per_position:
        scores = outputs.movedim(1, -1) if class_dim(tuple(outputs.shape), kind) == 1 else outputs
        outputs = scores.reshape(-1, scores.shape[-1])
    if outputs.shape[-1] == 1:
        return torch.cat([torch.zeros_like(outputs), outputs], dim=-1)
    return outputs


def class_labels(targets: torch.Tensor, kind: TargetKind | None = None) -> torch.Tensor:
    """Targets as the rows of :func:`class_scores` see them: (N, L) or (N, *S) flattened, row-major."""
    return targets.reshape(-1) if kind is not None and kind.rows_per_example else targets


def has_label(labels: torch.Tensor) -> torch.Tensor:
    """Where ``labels`` hold a class rather than IGNORE_INDEX. A uint8 tensor cannot hold -100, and torch compares it
    with -100 as with 156 (the wrapped value): class 156 of a uint8 mask would read as unlabelled."""
    if labels.dtype == torch.uint8:
        return torch.ones_like(labels, dtype=torch.bool)
    return labels != IGNORE_INDEX


def labelled(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of :func:`class_scores` and :func:`class_labels` that have a label (IGNORE_INDEX marks the rest)."""
    keep = has_label(labels)
    return scores[keep], labels[keep]


def predicted_classes(outputs: torch.Tensor, kind: TargetKind | None = None) -> torch.Tensor:
    """The most probable class of each row of :func:`class_scores` (a logit: class 1 where it is positive)."""
    return class_scores(outputs, kind).argmax(dim=-1)


def right_rows(outputs: torch.Tensor, labels: torch.Tensor, kind: TargetKind | None = None) -> torch.Tensor:
    """Whether each row of :func:`class_scores` is predicted right, ``labels`` as :func:`class_labels` gives them;
    per position the labelled rows only."""
    right = predicted_classes(outputs, kind) == labels
    return right[has_label(labels)] if kind is not None and kind.per_position else right


def class_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor, kind: TargetKind | None = None) -> torch.Tensor:
    """torch's cross-entropy on :func:`class_scores`: class indices, or class probabilities (soft labels).

    Per position, the mean over labelled positions; a batch of padding alone gives 0 (torch's mean would be NaN).
    """
    scores, labels = class_scores(outputs, kind), class_labels(targets, kind)
    if kind is not None and kind.per_position:
        total = F.cross_entropy(scores, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / has_label(labels).sum().clamp_min(1)
    return F.cross_entropy(scores, labels)


def default_loss(kind: TargetKind) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if kind.kind == "regression":

        def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            out = match_targets(outputs, targets)
            out = out if out.is_floating_point() else out.float()
            return F.mse_loss(out, targets.to(out.dtype))  # in the model's precision (float64 in the gradient check)

        return mse
    if kind.rows_per_example:
        return functools.partial(class_cross_entropy, kind=kind)
    return class_cross_entropy


def loss_function(task: Any, kind: TargetKind) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The task's ``loss_fn`` or the kind's default."""
    return task.get("loss_fn") or default_loss(kind)


def builtin_metric_names(kind: TargetKind) -> tuple[str, ...]:
    """The names :func:`builtin_metrics` reports for ``kind``, known without data."""
    if kind.kind == "classification":
        return ("accuracy", "log_loss", "exact_match") if kind.multilabel else ("accuracy", "log_loss")
    return ("mse", "mae", "r2") if kind.kind == "regression" else ()


def builtin_metrics(kind: TargetKind, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """The kind's metrics over a whole split; ``outputs`` and ``targets`` in the targets' original units."""
    if kind.kind == "classification":
        logits = class_scores(outputs.float(), kind)
        if kind.per_position:
            rows, labels = labelled(logits, class_labels(targets, kind))
            return {"accuracy": float((rows.argmax(dim=1) == labels).float().mean()),
                    "log_loss": float(F.nll_loss(torch.log_softmax(rows, dim=1), labels))}
        log_probs = torch.log_softmax(logits, dim=1)
        if kind.multilabel:
            labels = class_labels(targets, kind)
            right = (logits.argmax(dim=1) == labels).view(len(targets), -1)
            return {"accuracy": float(right.float().mean()), "log_loss": float(F.nll_loss(log_probs, labels)),
                    "exact_match": float(right.all(dim=1).float().mean())}
        if kind.soft:
            log_loss = float(-(targets.float() * log_probs).sum(dim=1).mean())
            accuracy = float((logits.argmax(dim=1) == targets.argmax(dim=1)).float().mean())
        else:
            log_loss = float(F.nll_loss(log_probs, targets))
            accuracy = float((logits.argmax(dim=1) == targets).float().mean())
        return {"accuracy": accuracy, "log_loss": log_loss}
    if kind.kind == "regression":
        out = match_targets(outputs, targets).double()
        y = targets.double()
        err = out - y
        mse = float((err**2).mean())
        variance = float(((y - y.mean(dim=0, keepdim=True)) ** 2).mean())
        return {"mse": mse, "mae": float(err.abs().mean()), "r2": 1.0 - mse / variance if variance > 0 else math.nan}
    return {}


def user_metrics(task: Any, outputs: torch.Tensor, targets: torch.Tensor, split: str) -> dict[str, float]:
    """The task's ``metrics(outputs, targets)``, checked: a dict of names to finite-or-NaN floats."""
    fn = task.get("metrics")
    if fn is None:
        return {}
    try:
        # Copies: a metric that edits what it gets (``y = targets.numpy(); y[y > 0] = 1`` shares memory) would
        # otherwise rewrite the split's own labels, and every later loss, accuracy and stored prediction with them.
        result = fn(outputs.clone(), targets.clone())
    except Exception as exc:
        raise TaskError(f"metrics raised {type(exc).__name__} on the {split} split: {exc}") from exc
    if not isinstance(result, Mapping):
        raise TaskError(f"metrics must return a dict of name -> float, got {type(result).__name__}")
    out = {}
    for name, value in result.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise TaskError(f"metrics: name {name!r} must be an identifier such as 'f1'")
        if isinstance(value, (str, bytes)):  # f"{f1:.3f}", written for a log line: rounded, ranking ties; never parsed
            raise TaskError(f"metrics: {name!r} must be a number, got {type(value).__name__} ({value!r}): return the "
                            "number itself, not its text")
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            raise TaskError(f"metrics: {name!r} must be a number, got {type(value).__name__}") from None
    return out


def split_metrics(task: Any, kind: TargetKind, outputs: torch.Tensor, targets: torch.Tensor,
                  split: str) -> dict[str, float]:
    """Every metric of one split, named ``<split>_<metric>`` (``val_mse``, ``val_f1``); outputs in original units."""
    try:
        values = builtin_metrics(kind, outputs, targets)
    except TaskError as exc:
        if kind.kind != "regression" or task.get("loss_fn") is None:
            raise
        # The task's loss took these outputs (a mean and a log-variance per target): MSE, MAE and R² cannot.
        raise TaskError(f"{exc}; the task's loss_fn takes such outputs, but a regression's MSE, MAE and R² need one "
                        'prediction per target: for outputs that are more than that, declare kind = "custom" with '
                        "metrics") from None  # caviar's own refusal: contract._refuse keeps its text
    own = user_metrics(task, outputs, targets, split)
    taken = [name for name in own if name in values or name == "loss"]
    if taken:  # it would replace caviar's column in the tables while the ensembles still chose by caviar's
        raise TaskError(f"metrics: {taken[0]!r} is a name caviar reports itself ({split}_{taken[0]}); "
                        f"give yours another name, e.g. '{taken[0]}_mine'")
    values.update(own)
    return {f"{split}_{name}": value for name, value in values.items()}


def score_of(row: Mapping[str, Any], objective: str, mode: str) -> float:
    """The row's higher-is-better score: the objective's value, negated when it is minimised."""
    value = row.get(objective)
    if value is None:
        value = (row.get("metrics") or {}).get(objective)
    if value is None:
        raise TaskError(missing_objective(row, objective))
    value = float(value)
    return value if mode == "max" else -value


def missing_objective(row: Mapping[str, Any], objective: str) -> str:
    """Why ``objective`` is not in the row, in one line: a name the task's metrics gave with the prefix caviar adds
    itself, or a metric not returned at this evaluation (it may have been at others: a key left out where the metric
    is undefined)."""
    reported = sorted(reported_columns(row))
    name = objective.removeprefix("val_")
    if f"val_{objective}" in reported:  # {"val_f1": ...}: caviar names it val_val_f1
        return (f"objective {objective!r}: metrics returns {objective!r}, which caviar reports as 'val_{objective}' "
                f"(it adds the split's prefix itself); return {name!r}")
    return (f"objective {objective!r} is not a reported column (reported: {', '.join(reported)}): metrics must "
            f"return {name!r} at every evaluation (NaN where it is undefined)")


def reported_columns(row: Mapping[str, Any]) -> list[str]:
    names = [k for k, v in row.items() if k.startswith("val_") and isinstance(v, (int, float)) and v is not None]
    return names + list((row.get("metrics") or {}).keys())


def objective_and_mode(task: Any, kind: TargetKind) -> tuple[str, str]:
    """The task's ``objective`` and ``mode``, each defaulting to the kind's."""
    default_objective, default_mode = kind.default_objective(getattr(task, "metric", "accuracy"),
                                                             own_loss=task.get("loss_fn") is not None)
    objective = getattr(task, "objective", None) or default_objective
    mode = getattr(task, "mode", None)
    if mode is None:
        mode = default_mode if objective == default_objective else natural_mode(objective)
    elif getattr(task, "objective", None) is None and mode != default_mode:
        # mode = "min" written for a metric of the task's own (a Brier score) but no objective naming it: the default
        # column would be ranked the wrong way round, keeping the worst trials and ensembles, silently
        better = "higher" if default_mode == "max" else "lower"
        raise TaskError(f"mode = {mode!r} without an objective: the sweep ranks by {default_objective}, which is "
                        f"better when {better}, so it would keep its worst trials; name the column mode is about "
                        f"(objective = \"val_<name>\" for a metric your metrics returns) or leave mode out")
    return objective, mode


def natural_mode(objective: str) -> str:
    """Accuracy-like columns are maximised; losses and errors minimised (a custom metric should declare mode)."""
    name = objective.removeprefix("val_")
    maximised = name in ("accuracy", "r2", "exact_match") or name.endswith(("accuracy", "auc", "f1", "precision",
                                                                             "recall"))
    return "max" if maximised else "min"


def baseline_val_loss(task: Any, kind: TargetKind, y_train: torch.Tensor, y_val: torch.Tensor) -> float | None:
    """Regression's "chance": the validation MSE of always predicting the training mean (default loss only)."""
    if kind.kind != "regression" or task.get("loss_fn") is not None:
        return None
    guess = y_train.double().mean(dim=0, keepdim=True).expand_as(y_val)
    return float(F.mse_loss(guess, y_val.double()))
