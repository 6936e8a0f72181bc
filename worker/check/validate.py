"""Check a task end to end on the master, before Ray starts: a bad task fails in seconds with one line.

``validate_task`` loads the data once, resolves the targets' kind (refusing targets that do not
fit it), builds one model on a sampled config, and runs one forward pass and the loss on one
training batch, then the objective on the validation split. Every failure is a
:class:`~orchestrator.errors.TaskError` whose message is one line naming the piece at fault.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from orchestrator.errors import TaskError
from orchestrator.search.space import Distribution
from orchestrator.spec.task import Task
from worker.check.absent_classes import warn_if_classes_absent
from worker.check.overlap import warn_if_splits_share_examples
from worker.data.kinds import (
    IGNORE_INDEX,
    class_dim,
    class_labels,
    has_label,
    loss_function,
    match_targets,
    objective_and_mode,
    same_layout,
    score_of,
)
from worker.data.splits import Splits, has_batch_norm, prepare_task_data, skips_single_batch
from worker.data.streams import check_first_batches_repeat
from worker.train.optim import setting
from worker.train.trainer import evaluate_split

log = logging.getLogger("caviar")


def sampled_config(task: Task, seed: int = 0) -> dict[str, Any]:
    """One seeded sample of the task's space, inactive conditional parameters as a trial sees them."""
    rng = np.random.default_rng(seed)
    config = {name: (value.from_unit(rng.random()) if isinstance(value, Distribution) else value)
              for name, value in task.space.items()}
    return task.space.deactivate(config)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def validate_task(task: Task, config: Mapping[str, Any] | None = None, settings: Any = None) -> Splits:
    """Raise :class:`TaskError` (one line) unless the task can train and report its objective; return its splits.

    ``config``: the hyperparameters to build the model with (default: one seeded sample of the space).
    ``settings`` (a ``RunSettings``, optional): also log one warning line when the predictions stored
    for ensembles would be large (see :func:`prediction_bytes`).
    """
    splits = prepare_task_data(task)
    check_first_batches_repeat(splits.streams)
    warn_if_splits_share_examples(splits)
    warn_if_classes_missing_from_train(splits)
    warn_if_classes_absent(splits)
    warn_if_train_comes_grouped_by_class(splits)
    config = dict(config) if config is not None else sampled_config(task)
    model = check_config(task, splits, config)
    if settings is not None:
        warn_if_large(splits, settings, ema=bool(config.get("ema_decay")))
    warn_if_single_batches(model, splits, [config])
    return splits


def check_config(task: Task, splits: Splits, config: Mapping[str, Any]) -> torch.nn.Module:
    """One model built from ``config``; one forward pass, the loss and its backward pass on a training batch; the
    objective on val.

    Returns the model it built."""
    kind = splits.target_kind
    torch.manual_seed(0)
    try:
        model = task.get("build_model")(dict(config))
    except Exception as exc:
        raise TaskError(f"build_model raised {type(exc).__name__}: {_one_line(exc)}") from exc
    if not isinstance(model, torch.nn.Module):
        raise TaskError(f"build_model must return a torch.nn.Module, got {type(model).__name__}")
    loss_fn = loss_function(task, kind)
    batch = int(setting(config, "batch_size", 64))
    xb, yb = splits.sample(batch)
    yb = kind.to_training(yb).clone()  # a view of the training split: a loss_fn that edits its targets keeps off it
    if task.get("train_epoch") is not None:
        # The task's loop owns the training forward pass (an auxiliary head's (logits, aux) tuple, as torchvision's
        # Inception gives); caviar runs this model only to evaluate it, in eval mode, so that is the pass checked.
        model.eval()
    try:
        outputs = model(xb)
    except Exception as exc:
        mismatch = _dtype_mismatch(model, xb)
        if mismatch:
            raise TaskError(mismatch) from None  # the one line says it all; the torch error would hide it
        if xb.ndim == 1 and xb.is_floating_point():  # one feature as a flat array: torch's words name no shape
            raise TaskError(f"load_data: the inputs hold one number per example, shape (N,), and the model's forward "
                            f"pass raised {type(exc).__name__} on a batch of them ({_one_line(exc)}); for one "
                            "feature give X.reshape(-1, 1): a model takes a batch of rows") from None
        raise TaskError(f"the model's forward pass raised {type(exc).__name__} on a training batch of shape "
                        f"{tuple(xb.shape)} ({str(xb.dtype).removeprefix('torch.')}): {_one_line(exc)}") from exc
    if not isinstance(outputs, torch.Tensor):
        raise TaskError(f"the model must return a tensor, got {type(outputs).__name__}{_several_outputs(outputs)}")
    check_outputs(kind, outputs, yb, task, lowest=lowest_class(splits), present=present_classes(splits))
    refuse_probability_outputs(kind, outputs)
    check_class_index_dtype(kind, yb, task)
    for split, targets in (("val", splits.y_val), ("test", splits.y_test)):  # test: measured only as trials end
        check_class_index_dtype(kind, targets, task, split)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = loss_fn(outputs, yb)
    except TaskError:
        raise
    except Exception as exc:
        raise TaskError(f"loss_fn raised {type(exc).__name__} on one batch (outputs {tuple(outputs.shape)}, targets "
                        f"{tuple(yb.shape)}): {_one_line(exc)}") from exc
    _refuse_broadcast(caught, outputs, yb)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TaskError("loss_fn must return a scalar tensor (the batch's mean loss)")
    if not math.isfinite(float(loss.detach())):
        # Name what gave it: a task without a loss_fn has none to blame, and non-finite outputs are the model's.
        which = "loss_fn" if task.get("loss_fn") is not None else "the default loss"
        why = "" if bool(torch.isfinite(outputs.detach()).all()) else "; the model's outputs already hold it"
        why = why or _overflow_hint(kind, yb, loss)
        raise TaskError(f"{which} gives {float(loss.detach())} on the first batch of an untrained model{why}")
    _check_backward(model, loss, outputs, yb)
    _refuse_shape_dependent(task, outputs.detach(), yb)
    x_val = splits.streams["val"] if splits.streams else splits.x_val
    assert x_val is not None
    values, _ = evaluate_split(task, kind, loss_fn, model, x_val, splits.y_val, "val", splits)
    if task.get("metrics") is not None:
        # Test is scored as each trial ends: a metric that cannot take its targets (scikit-learn's ROC AUC raises on
        # a test split of one class) would fail every trial after all its training, and lose its checkpoints
        x_test = splits.streams["test"] if splits.streams else splits.x_test
        evaluate_split(task, kind, loss_fn, model, x_test, splits.y_test, "test", splits)
    objective, mode = objective_and_mode(task, kind)
    row: dict[str, Any] = {"val_loss": values["val_loss"], "val_accuracy": values.get("val_accuracy"),
                           "metrics": {k: v for k, v in values.items() if k not in ("val_loss", "val_accuracy")}}
    score_of({k: v for k, v in row.items() if v is not None}, objective, mode)  # names the reported columns if absent
    return model


def check_class_index_dtype(kind: Any, targets: torch.Tensor, task: Task, split: str | None = None) -> None:
    """torch's cross-entropy takes class indices as int64 (or uint8) only; int32 labels (numpy's default on Windows,
    pandas category codes) would fail in every trial with torch's own words. caviar never casts a target.

    ``split``: val or test, whose log loss torch's NLL computes whatever the task's loss (None: a training batch)."""
    hard = kind.kind == "classification" and not kind.soft and (task.get("loss_fn") is None or split is not None)
    if hard and not targets.is_floating_point() and targets.dtype not in (torch.int64, torch.uint8):
        dtype = str(targets.dtype).removeprefix("torch.")
        what = "multi-label 0/1 labels" if kind.multilabel else "class indices"  # both go to torch's cross-entropy
        if split is not None:
            raise TaskError(f"load_data: the {split} targets are {dtype} {what}, and their log loss (torch's "
                            f"cross-entropy) takes int64: give y.astype('int64') (caviar never casts a target)")
        raise TaskError(f"load_data: the targets are {dtype} {what}, and the default loss (torch's "
                        f"cross-entropy) takes int64: give y.astype('int64') (caviar never casts a target)")


def _check_backward(model: torch.nn.Module, loss: torch.Tensor, outputs: torch.Tensor | None = None,
                    targets: torch.Tensor | None = None) -> None:
    """The batch's backward pass, as every training step runs it: a loss with no gradient, or a backward that
    raises (an in-place change to a tensor autograd needs), would fail every trial once the workers run."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise TaskError("the model has no trainable parameters (requires_grad is False on every one)")
    if not loss.requires_grad:
        raise TaskError("loss_fn returns a loss without a gradient (detached by .item(), numpy, torch.tensor(...) "
                        "or torch.no_grad), so no parameter can learn: compute it with torch operations on the outputs")
    try:
        loss.backward()
    except Exception as exc:
        # from None: the message names the piece; the user's line would be torch's autograd engine anyway
        raise TaskError(f"the backward pass (loss.backward()) raised {type(exc).__name__} on a training batch: "
                        f"{_one_line(exc)}{_dtype_hint(outputs, targets)}") from None
    reached = any(p.grad is not None for p in trainable)
    model.zero_grad(set_to_none=True)
    if not reached:
        raise TaskError("the loss reaches no trainable parameter of the model (every gradient is None)")


def _overflow_hint(kind: Any, targets: torch.Tensor, loss: torch.Tensor) -> str:
    """Regression targets trained as they are whose squares the loss's dtype cannot hold (1e20 in float32): what to
    set instead of a bare inf."""
    if kind.kind != "regression" or kind.standardised or not targets.is_floating_point() or not len(targets):
        return ""
    top = float(targets.double().abs().max())
    dtype = loss.dtype if loss.is_floating_point() else targets.dtype
    if top * top < torch.finfo(dtype).max:
        return ""
    return (f"; the targets reach {top:.3g}, whose squared errors {str(dtype).removeprefix('torch.')} cannot hold: "
            "set standardize_targets = True")


def _dtype_hint(outputs: torch.Tensor | None, targets: torch.Tensor | None) -> str:
    """What to do when float outputs and targets differ in dtype: torch's huber_loss takes float32 outputs with
    float64 targets (numpy's default) forward, and its backward raises; caviar never casts a target."""
    if not isinstance(outputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        return ""
    if not (outputs.is_floating_point() and targets.is_floating_point()) or outputs.dtype == targets.dtype:
        return ""
    out, tgt = (str(t.dtype).removeprefix("torch.") for t in (outputs, targets))
    return (f"; the model's outputs are {out} and the targets {tgt}: give the targets as {out} "
            f"(y.astype('{out}')), or cast them in loss_fn (y.to(outputs.dtype))")


def _refuse_broadcast(caught: Sequence[warnings.WarningMessage], outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """torch's losses warn, and go on, when outputs and targets broadcast (``(N, 1)`` against ``(N,)``
    gives ``(N, N)``): every trial would train on a wrong loss and report it. Other warnings pass on as they were."""
    for w in caught:
        if "broadcasting" in str(w.message) and "size" in str(w.message):
            try:
                into = f" to {tuple(torch.broadcast_shapes(outputs.shape, targets.shape))}"
            except RuntimeError:
                into = ""
            raise TaskError(f"loss_fn: outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} broadcast"
                            f"{into}, so the loss compares every output with every target (torch warns and goes on); "
                            "give them one shape in loss_fn, e.g. outputs.squeeze(1) or targets.reshape(-1, 1)")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _refuse_shape_dependent(task: Task, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """A hand-written ``loss_fn`` or metric computing ``outputs - targets`` on ``(N, 1)`` against ``(N,)`` broadcasts
    to ``(N, N)`` with no warning, and every trial would be trained or ranked on it. So each is computed again with
    the outputs given the targets' shape: a value that changes is refused. One that raises then is shape-aware
    (``outputs.squeeze(1)``) and passes.

    The untrained model's outputs alone miss it for targets far from zero (prices, ages): with every output below
    every target, ``|o_i - t_j|`` averages to the same number over all pairs as over matching ones. So float targets
    are also given as the outputs, in the outputs' layout: a perfect prediction, whose error only a broadcast sees."""
    if outputs.shape == targets.shape or outputs.numel() != targets.numel() or outputs.ndim < 1 \
            or not same_layout(tuple(outputs.shape), tuple(targets.shape)):
        return  # a permuted layout is the task's own business (a custom kind's loss may permute it back)
    probes = [outputs]
    if targets.is_floating_point():
        probes.append(targets.to(outputs.dtype).reshape(outputs.shape))
    pieces = [(name, task.get(name)) for name in ("loss_fn", "metrics") if task.get(name) is not None]
    with torch.no_grad():
        for probe in probes:
            shaped = probe.reshape(targets.shape)
            for piece, fn in pieces:
                given, reshaped = (_value_of(fn, o, targets) for o in (probe, shaped))
                if piece == "loss_fn":
                    pairs = [("loss_fn", given, reshaped)]
                elif isinstance(given, Mapping) and isinstance(reshaped, Mapping):
                    pairs = [(f"metrics: {name!r}", given[name], reshaped.get(name)) for name in given]
                else:
                    pairs = []
                for name, value, value_shaped in pairs:
                    if _differ(value, value_shaped):
                        raise TaskError(
                            f"{name}: its value on a training batch changes when the outputs {tuple(outputs.shape)} "
                            f"are given the targets' shape {tuple(targets.shape)} ({float(value):.4g} against "
                            f"{float(value_shaped):.4g}): it broadcasts them, comparing every output with every "
                            "target; give them one shape in it, e.g. outputs.squeeze(1) or targets.reshape(-1, 1)")


def _value_of(fn: Any, outputs: torch.Tensor, targets: torch.Tensor) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the first call's warnings were shown (or refused) already
            return fn(outputs.clone(), targets.clone())  # each call on the same numbers, whatever the last edited
    except Exception:
        return None


def _differ(a: Any, b: Any) -> bool:
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return False  # one of them raised or is not a number: nothing to compare
    return math.isfinite(a) and math.isfinite(b) and not math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-7)


def _dtype_mismatch(model: torch.nn.Module, x: torch.Tensor) -> str | None:
    """Floating inputs of another precision than the model's weights: one line saying what to do.

    caviar never casts inputs (a silent float64 -> float32 would change the user's numbers), so
    numpy's default float64 next to a float32 model is the user's choice to make.
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) != 1 or x.dtype in dtypes:
        return None
    given, wanted = str(x.dtype).removeprefix("torch."), str(next(iter(dtypes))).removeprefix("torch.")
    if not x.is_floating_point():  # integer inputs are meant for an embedding (token ids): without one, pixels?
        if any(isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) for m in model.modules()):
            return None
        return (f"load_data: the inputs are {given} and the model, with no embedding, has {wanted} parameters; "
                f"caviar never casts inputs: give X.astype('{wanted}')")
    return (f"load_data: the inputs are {given} but the model's parameters are {wanted}; caviar never casts "
            f"inputs: give X.astype('{wanted}') or build a {given} model")


PREDICTIONS_WARN_BYTES = 2 * 1024**3


def prediction_bytes(splits: Splits, trials: int, checkpoints_per_trial: int, dtype: str = "float16") -> int:
    """The predictions a sweep stores for ensembles: every kept checkpoint's val + test outputs."""
    kind = splits.target_kind
    classification = kind.kind == "classification"
    if dtype == "none" or not (classification or kind.kind == "regression"):
        return 0
    width = splits.num_classes if classification else max(1, int(np.prod(splits.y_val.shape[1:])))
    per_value = 4 if dtype == "float32" or kind.kind == "regression" else 2
    rows = sum(_stored_rows(y, kind) for y in (splits.y_val, splits.y_test))
    return int(trials * checkpoints_per_trial * rows * (int(width or 1) * per_value + 20))  # + ids per row


def _stored_rows(y: torch.Tensor, kind: Any) -> int:
    """Prediction rows of one split: its examples, or every (example, label) and labelled (example, position) pair."""
    if not kind.rows_per_example:
        return len(y)
    labels = class_labels(y, kind)
    return int(has_label(labels).sum())


def warn_if_large(splits: Splits, settings: Any, *, ema: bool) -> int:
    """One warning line before the sweep when stored predictions would pass ``PREDICTIONS_WARN_BYTES``."""
    dtype, kind = getattr(settings, "prediction_dtype", "float16"), splits.target_kind
    kept = (int(getattr(settings, "keep_best", 1)) + 1) * (2 if ema else 1)  # best + last, raw (+ EMA)
    size = prediction_bytes(splits, int(getattr(settings, "trials", 1)), kept, dtype)
    if size > PREDICTIONS_WARN_BYTES:
        log.warning("predictions for ensembles will take about %.1f GiB (%d val + %d test rows per checkpoint); "
                    "set prediction_dtype = \"none\" to store none", size / 1024**3,
                    _stored_rows(splits.y_val, kind), _stored_rows(splits.y_test, kind))
    return size


def warn_if_single_batches(model: torch.nn.Module, splits: Splits, configs: Sequence[Mapping[str, Any]]) -> list[int]:
    """One warning line when a batch-norm model's epochs would end on a batch of one example, which it skips.

    The batch sizes named are those of ``configs`` (the first stage's); a later stage's other sizes follow the same
    rule. A task's own loader functions own their last batch: nothing is skipped there, so nothing is said.
    """
    n = splits.n_train
    sizes = sorted({b for b in (int(setting(c, "batch_size", 64)) for c in configs)
                    if skips_single_batch(model, splits, b)})
    if sizes:
        log.warning("load_data: the train split has %d examples, so at batch_size %s an epoch's last batch holds one "
                    "example, which batch norm cannot train on: trials leave it out of each epoch (a different "
                    "example each time, as DataLoader's drop_last)", n, ", ".join(map(str, sizes)))
        return sizes
    return []


def warn_if_classes_missing_from_train(splits: Splits) -> list[str]:
    """One warning line when val or test hold class indices that train never shows; returns its clauses (for tests).

    No trial can learn such a class: its examples are errors in every number, which a stratified split avoids.
    Single-label classes only (class indices, per example or per position; not multi-label or soft rows).
    """
    kind = splits.target_kind
    if kind.kind != "classification" or kind.multilabel or kind.soft:
        return []
    seen = set(torch.unique(splits.y_train).tolist()) | {IGNORE_INDEX}
    said, unseen = [], set()
    for split, y in (("val", splits.y_val), ("test", splits.y_test)):
        classes, counts = torch.unique(y, return_counts=True)
        missing = [(int(c), int(n)) for c, n in zip(classes, counts) if int(c) not in seen]
        unseen |= {c for c, _ in missing}
        if missing:
            shown = ", ".join(f"{c} ({n} target{'s' if n > 1 else ''})" for c, n in missing[:8])
            said.append(f"{split} holds class{'es' if len(missing) > 1 else ''} {shown}"
                        + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    if said:
        log.warning("load_data: %s that train never shows: no trial can learn %s, so those targets are errors in "
                    "every number; a stratified split keeps each class in train", "; ".join(said),
                    "it" if len(unseen) == 1 else "them")
    return said


def warn_if_train_comes_grouped_by_class(splits: Splits) -> str | None:
    """One warning line when a training split caviar cannot shuffle gives its examples grouped by class; returns it.

    caviar shuffles arrays and map-style Datasets with each trial's generator, but reads an IterableDataset, or the
    task's own training loader, in the order given. Data stored sorted by class (one file per class) then trains
    class after class in every epoch, and each epoch ends fitted to its last class. Judged on the load-time pass:
    far fewer label changes than a random order of the same labels would have.
    """
    stream = (splits.streams or {}).get("train")
    kind, y = splits.target_kind, splits.y_train
    if stream is None or not (stream.iterable or stream.make_loader is not None):
        return None
    if not kind.hard_classes or kind.rows_per_example or y.ndim != 1 or len(y) < 2:
        return None
    shares = torch.bincount(y.long().clamp_min(0)).double() / len(y)
    expected = (len(y) - 1) * float(1 - (shares * shares).sum())  # label changes in a random order
    changes = int((y[1:] != y[:-1]).sum())
    if expected < 20 or changes >= 0.1 * expected:
        return None
    what, fix = (("an IterableDataset in the order it yields", "shuffle in __iter__ (a torch.randperm per pass "
                  "follows each trial's seed)") if stream.iterable else
                 ("the task's train loader as it gives them", "give its DataLoader shuffle=True"))
    message = (f"load_data: the train split gives its examples grouped by class ({changes} class changes in "
               f"{len(y)} examples, about {expected:.0f} in a random order), and caviar reads {what}: every epoch "
               f"trains class after class and ends fitted to the last; {fix}")
    log.warning(message)
    return message


def warn_if_loader_workers_unused(splits: Splits) -> str | None:
    """One warning line when the task's ``num_workers`` cannot apply to its IterableDataset splits; returns it.

    A DataLoader gives each of its workers a copy of an IterableDataset, so every worker yields the whole stream
    (each example ``num_workers`` times) unless the Dataset splits itself by ``get_worker_info()``, which caviar
    cannot see: it reads such splits in one process, which the user who set ``num_workers`` should hear.
    """
    streams = splits.streams or {}
    named = [name for name, s in streams.items() if s.iterable and s.make_loader is None and s.num_workers > 0]
    if not named:
        return None
    workers = streams[named[0]].num_workers
    which = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    plural = len(named) > 1
    message = (f"num_workers = {workers} is not used for the {which} split{'s' if plural else ''} (IterableDataset): "
               "each DataLoader worker would yield every example unless the Dataset splits its stream by "
               f"torch.utils.data.get_worker_info(), so caviar reads {'them' if plural else 'it'} in one process; to "
               "read in parallel, give a split as a function making your own DataLoader for a batch size, over a "
               "Dataset that splits its stream so")
    log.warning(message)
    return message


def check_batches_fit_dropping_split(splits: Splits, space: Mapping[str, Any] | None,
                                     configs: Sequence[Mapping[str, Any]]) -> str | None:
    """Refuse a ``batch_size`` that can only exceed a training split whose own DataLoader drops its last partial
    batch (``drop_last=True``: such an epoch gets no batch, and each trial fails after it started); one warning line
    when only some of the searched values do. Returns the warning (for tests).

    Judged on the declared range (or options) of the space, else the configs' values, and the load-time count.
    """
    stream = (splits.streams or {}).get("train")
    if stream is None or stream.make_loader is None:
        return None
    value = space.get("batch_size") if space is not None else None
    if isinstance(value, Distribution):
        options = getattr(value, "options", None)
        values = [v for v in options if isinstance(v, (int, float))] if options else [value.low, value.high]
    else:
        values = [value] if isinstance(value, (int, float)) else [c.get("batch_size") for c in configs]
    sizes = [int(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    n = splits.n_train
    if not sizes or max(sizes) <= n:
        return None
    loader = stream._made(max(sizes))
    if not (isinstance(loader, DataLoader) and loader.drop_last):
        return None
    said = (f"the train loader's DataLoader has drop_last=True and the training split holds {n} examples, so an "
            f"epoch at a larger batch_size gets no batch")
    if min(sizes) > n:
        raise TaskError(f"space: batch_size {_sizes(value, sizes)} is above {n}: {said} and every trial would fail; "
                        f"keep batch_size at most {n}, or give the train DataLoader drop_last=False")
    keep = ("drop the options above it" if isinstance(value, Distribution) and getattr(value, "options", None)
            else f"set the range's high to at most {n} (limits=(low, {n}) keeps later stages under it too)")
    message = (f"space: batch_size {_sizes(value, sizes)} goes above {n}: {said}, and the trials that draw such a "
               f"value will fail (the others train); {keep}, or give the train DataLoader drop_last=False")
    log.warning(message)
    return message


def warn_if_batch_of_one_is_searched(model: torch.nn.Module, space: Mapping[str, Any] | None) -> str | None:
    """One warning line when a batch-norm model's searched ``batch_size`` can be 1: batch norm cannot train on one
    example (torch raises), so each trial drawing it fails after the sweep started. Returns the line (for tests)."""
    value = space.get("batch_size") if space is not None else None
    if not isinstance(value, Distribution) or not has_batch_norm(model):
        return None
    options = getattr(value, "options", None)
    sizes = [int(v) for v in options if isinstance(v, (int, float)) and not isinstance(v, bool)] if options else None
    if (1 not in sizes) if sizes is not None else value.low > 1:
        return None
    keep = ("drop the option 1" if sizes is not None else
            "set the range's low to 2 (limits=(2, high) keeps later stages above it too)")
    message = (f"space: batch_size {_sizes(value, sizes or [int(value.low), int(value.high)])} includes 1, and the "
               "model has batch norm, which cannot train on a batch of one example (torch raises): the trials that "
               f"draw 1 will fail (the others train); {keep}")
    log.warning(message)
    return message


def _sizes(value: Any, sizes: list[int]) -> str:
    if isinstance(value, Distribution) and getattr(value, "options", None):
        return "options " + ", ".join(map(str, sizes))
    return f"range [{min(sizes)}, {max(sizes)}]" if len(sizes) > 1 else str(sizes[0])


def warn_if_own_loss_changes_with_units(task: Task, splits: Splits, model: torch.nn.Module) -> str | None:
    """One warning line when a task's own ``loss_fn`` trains on standardised targets (``standardize_targets``) but
    ranks differently in the targets' units, where caviar evaluates it (val_loss, the objective, the ensembles).

    A loss on predictions in the targets' units (MSE or a quantile loss on one target) only scales with the units,
    so both rank alike; a Poisson model's log-rates or a distribution's parameters are no predictions to map back.
    Judged on two sets of outputs for a training batch: the ratio of the two losses must not change between them.
    Returns the line (for tests)."""
    kind, loss_fn = splits.target_kind, task.get("loss_fn")
    if loss_fn is None or not kind.standardised:
        return None
    xb, yb = splits.sample(64)
    generator = torch.Generator().manual_seed(0)
    ratios: list[float] = []
    was_training = model.training
    try:
        with torch.no_grad():
            outputs = model.eval()(xb)  # what caviar evaluates the loss on (a task's own loop may train on a tuple)
            shifted = outputs + torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype)
            for o in (outputs, shifted):
                trained = float(loss_fn(o, kind.to_training(yb)))
                ratios.append(float(loss_fn(kind.to_original(o), yb)) / trained)
        agree = all(math.isfinite(r) for r in ratios) and math.isclose(ratios[0], ratios[1], rel_tol=1e-3)
        seen = f"its value over the standardised one is {ratios[0]:.4g} for one set of outputs, {ratios[1]:.4g} " \
               "for another"
    except Exception as exc:  # a loss that cannot take values in the targets' units says the same
        agree, seen = False, f"in the targets' units it raised {type(exc).__name__}: {_one_line(exc)}"
    finally:
        model.train(was_training)
    if agree:
        return None
    line = ("standardize_targets: loss_fn trains on standardised targets, but caviar evaluates it in the targets' "
            f"units (outputs * std + mean) for val_loss, the ranking and the ensembles, and {seen}: the two rank "
            "trials differently. Right for a loss on predictions of one target (MSE, L1, a quantile loss); wrong "
            "for outputs that are no predictions of the target (Poisson log-rates, a distribution's parameters): "
            "remove standardize_targets, or rank by a metric of your own")
    log.warning("%s", line)
    return line


def refuse_multilabel_shape(kind: Any, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """One logit per label, exactly the targets' shape: the loss flattens both, so (batch, L, 1) would train too."""
    if tuple(outputs.shape) != tuple(targets.shape):
        # Scores per class at each label, (batch, C, L) or (batch, L, C): a 0/1 class per token, which the targets
        # alone cannot tell from multi-label (inferred from 0/1 rows without padding)
        labels, shape = tuple(targets.shape[1:]), tuple(outputs.shape)
        tagging = len(shape) == len(labels) + 2 and labels in (shape[2:], shape[1:-1])
        hint = '; for a class per position (a 0/1 tag per token), declare kind = "classification"' if tagging else ""
        raise TaskError(f"the model outputs shape {tuple(outputs.shape)} but the multi-label targets "
                        f"{tuple(targets.shape)}: give the model one logit per label, shape (batch, {kind.labels})"
                        f"{hint}")


# The autograd nodes of a model whose last step makes probabilities (nn.Sigmoid, nn.Softmax, torch.sigmoid, ...).
_PROBABILITY_NODES = {"SigmoidBackward0": ("sigmoid", "Sigmoid", "binary_cross_entropy_with_logits (the default loss)"),
                      "SoftmaxBackward0": ("softmax", "Softmax", "cross-entropy on logits (the default loss), or end "
                                           "in LogSoftmax")}


def refuse_probability_outputs(kind: Any, outputs: torch.Tensor) -> None:
    """A classifier whose outputs are a sigmoid's or softmax's (a head ending in nn.Sigmoid, trained with BCELoss):
    caviar reads outputs as logits, so every accuracy, log loss, ensemble and loaded prediction would come from
    sigmoid(sigmoid(z)) (P(class 1) between 0.5 and 0.73: always class 1), silently, however well the task's own loss
    trained it. LogSoftmax is a logit (its softmax is the same probabilities) and passes."""
    if kind.kind not in ("classification", "multilabel"):
        return
    node = type(outputs.grad_fn).__name__ if outputs.grad_fn is not None else ""
    if node not in _PROBABILITY_NODES:
        return
    made, layer, instead = _PROBABILITY_NODES[node]
    raise TaskError(f"the model's outputs come out of a {made} (probabilities), but caviar reads a classifier's "
                    f"outputs as logits and applies the {made} itself, so its accuracy, log loss and ensembles would "
                    f"be computed on {made}({made}(z)); drop the final {layer} and train with {instead}")


def lowest_class(splits: Splits) -> int | None:
    """The smallest class index in any split of hard labels, one per example; None for other targets."""
    kind = splits.target_kind
    if kind.kind != "classification" or kind.soft or kind.multilabel or kind.per_position:
        return None
    found = [int(y.min()) for y in (splits.y_train, splits.y_val, splits.y_test) if y is not None and len(y)]
    return min(found) if found else None


def present_classes(splits: Splits) -> list[int] | None:
    """The class indices the splits hold, sorted; None for targets other than a hard label per example."""
    kind = splits.target_kind
    if kind.kind != "classification" or kind.soft or kind.multilabel or kind.per_position:
        return None
    held = [y for y in (splits.y_train, splits.y_val, splits.y_test) if y is not None and len(y)]
    return torch.unique(torch.cat([y.reshape(-1) for y in held])).tolist() if held else None


def check_outputs(kind: Any, outputs: torch.Tensor, targets: torch.Tensor, task: Task,
                  lowest: int | None = None, present: Sequence[int] | None = None) -> None:
    """``lowest``: the data's smallest class (:func:`lowest_class`), to name labels counted from 1; ``present``: the
    classes the data holds (:func:`present_classes`), to name labels with gaps (0, 3, 7)."""
    if kind.kind == "classification":
        if kind.multilabel:
            refuse_multilabel_shape(kind, outputs, targets)
            return
        if (kind.num_classes or 0) < 2:  # nothing to learn, and a one-logit head would be read as binary
            raise TaskError("load_data: the targets hold one class only; a classifier needs examples of two classes "
                            "or more (or declare num_classes when this data lacks some)")
        if kind.per_position:  # one score per class at every position, the class dimension where the shapes say
            width, per = outputs.shape[class_dim(tuple(outputs.shape), kind)], "position"
        elif outputs.ndim != 2:
            flat_logit = outputs.ndim == 1 and kind.num_classes == 2
            logit = (": for one logit per example give shape (batch, 1), without the squeeze" if flat_logit else "")
            raise TaskError(f"the model outputs shape {tuple(outputs.shape)}; classification needs one score per "
                            f"class, shape (batch, {kind.num_classes}){logit}")
        else:
            width, per = outputs.shape[1], "example"
        binary_head = width == 1 and kind.num_classes == 2  # one logit: kinds.class_scores
        if width < (kind.num_classes or 0) and not binary_head:
            c = kind.num_classes
            if kind.per_position and c == 256:  # masks in the Pascal VOC / Cityscapes way: 255 is "void", no class
                raise TaskError(f"the model outputs {width} scores per position but the targets hold class 255, as "
                                f"masks that mark void pixels 255 do: caviar's mark is {IGNORE_INDEX} (torch's "
                                f"ignore_index): give y.astype('int64') with y[y == 255] = {IGNORE_INDEX}")
            if lowest is not None and lowest > 0 and width == c - lowest:  # labels 1..K (R, UCI files), K outputs
                raise TaskError(f"the model outputs {width} scores per {per} but the targets hold classes {lowest} to "
                                f"{c - 1}, none of them 0: class indices start at 0, so give y - {lowest} (classes 0 "
                                f"to {width - 1}, one per output)")
            if present is not None and len(present) == width and width > 1:  # 0, 3, 7 with three outputs
                shown = ", ".join(str(v) for v in present[:8]) + (", ..." if width > 8 else "")
                raise TaskError(f"the model outputs {width} scores per {per} but the targets' {width} classes are "
                                f"labelled {shown}, not 0 to {width - 1}: class indices count from 0 without gaps, so "
                                f"give y as np.searchsorted(classes, y) in every split, with classes = "
                                f"np.unique(y_train), or give the model {c} outputs, one per index up to {c - 1}")
            # one output per example for integer targets: most likely a count or a score given as integers
            numbers = ('; if the targets are numbers (counts), give them as floats (y.astype("float32")) with '
                       'kind = "regression"') if width == 1 else ""
            raise TaskError(f"the model outputs {width} score{'s' if width != 1 else ''} per {per} but the targets "
                            f"have {c} classes: give the model {c} outputs, one per class, or declare kind = "
                            f"\"custom\" with your own loss_fn and metrics{numbers}")
        wide = width > (kind.num_classes or 0) and not kind.soft and task.get("loss_fn") is None
        if wide:  # predictions and ensembles need one width (a task's own loss_fn may use extra outputs)
            c, w = kind.num_classes or 0, width
            raise TaskError(f"the model outputs {w} scores per {per} but the targets hold {c} classes (0-{c - 1}); "
                            f"give the model {c} outputs, or declare num_classes = {w} in the task if classes "
                            f"{c}-{w - 1} exist but this data lacks them")
        if kind.soft and width != kind.num_classes and not binary_head:
            raise TaskError(f"the model outputs {width} scores per example but the probability targets "
                            f"have {kind.num_classes} columns")
    elif kind.kind == "regression" and task.get("loss_fn") is None:
        match_targets(outputs, targets)


def _several_outputs(outputs: Any) -> str:
    """What to do with a model that returns several tensors ((mean, log_var), {"logit": ..., "value": ...}): caviar
    concatenates a split's outputs batch by batch, stores them and hands them to loss_fn and metrics as one tensor."""
    if isinstance(outputs, Mapping):
        parts = "keys " + ", ".join(str(k) for k in list(outputs)[:4])
    elif isinstance(outputs, (tuple, list)):
        parts = f"{len(outputs)} tensors"
    else:
        return ""
    return (f" ({parts}): caviar evaluates, stores and loads one tensor per batch; return them as one, "
            "torch.cat([mean, log_var], dim=1), and split it in loss_fn and metrics (a head only training needs may "
            "come in training mode from the task's own train_epoch: caviar evaluates in eval mode)")
