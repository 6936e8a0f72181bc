"""The task contract, checked on the master before Ray starts: seconds, one line on failure.

A task that cannot load its data, build a model or compute a loss fails every trial the
same way; found in the actors, that costs a Ray start, a pool of actors dying one after
another and a screen of tracebacks. Here the master (which has already imported the task)
runs the pieces once:

1. ``load_data()``: the three splits, as :func:`worker.data.prepare` accepts them;
2. ``build_model`` (with the optimizer and schedule a trial builds) on the first configs the
   sweep will train, until one builds: a factory that raises only for some configs fails
   those trials later (their errors are summarised), one that raises for all is refused;
3. one forward pass and the loss on one training batch, and one forward pass on validation
   inputs: the output must have a row per example and a column per class.

Every failure is a :class:`~orchestrator.errors.TaskError` naming the piece, the exception
and the line of the task file that raised it.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from orchestrator.errors import TaskError
from orchestrator.task import Task
from worker.data import SPLITS, Splits, prepare
from worker.trainer import TrialRun, TrialSpec

CONFIGS_TRIED = 4  # build_model on at most this many configs before the task is refused
_OWN_DIRS = tuple(
    os.path.dirname(os.path.abspath(__import__(name).__file__)) + os.sep
    for name in ("worker", "orchestrator", "torch", "numpy")
)


def where_raised(exc: BaseException) -> str:
    """``file.py:LINE`` of the innermost frame of the user's code (not caviar's, torch's or numpy's)."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if not os.path.abspath(frame.filename).startswith(_OWN_DIRS) and "site-packages" not in frame.filename:
            return f"{os.path.basename(frame.filename)}:{frame.lineno}"
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else "?"


def describe(exc: BaseException) -> str:
    """``ValueError: message (task.py:12)``: the exception in one line, with where it was raised."""
    message = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {message} ({where_raised(exc)})"


def _refuse(task: Task, piece: str, exc: BaseException) -> TaskError:
    if isinstance(exc, TaskError):
        if exc.__cause__ is not None:  # caviar wrapped the user's exception: name that one, where it was raised
            return TaskError(f"task {task.ref!r}: {piece} raised {describe(exc.__cause__)}")
        text = str(exc)  # caviar's own check: its message names what is wrong
        return TaskError(f"task {task.ref!r}: {text if text.startswith(piece) else f'{piece}: {text}'}")
    return TaskError(f"task {task.ref!r}: {piece} raised {describe(exc)}")


def load_splits(task: Task) -> Splits:
    try:
        raw = task.get("load_data")()
    except Exception as exc:
        raise _refuse(task, "load_data", exc) from exc
    try:
        _check_labels(raw)
        return prepare(raw, normalize=task.normalize)
    except Exception as exc:
        raise _refuse(task, "load_data", exc) from exc


def _check_labels(raw: Any) -> None:
    """Class labels must be whole numbers from 0: casting 0.5 or -1 to a class index would train on nonsense."""
    if isinstance(raw, Mapping):
        parts = [(name, raw.get(name)) for name in SPLITS]
    elif isinstance(raw, (tuple, list)) and len(raw) == 3:
        parts = list(zip(SPLITS, raw))
    else:
        return  # prepare() names the shape problem
    for name, split in parts:
        if not (isinstance(split, (tuple, list)) and len(split) == 2):
            continue  # a Dataset, or a shape prepare() refuses
        y = split[1]
        if isinstance(y, np.ndarray) and y.dtype.kind in "biuf":
            values = torch.from_numpy(np.ascontiguousarray(y))
        elif isinstance(y, torch.Tensor):
            values = y
        else:
            continue  # prepare() names a type it cannot use
        if values.dim() != 1:
            raise TaskError(f"load_data: {name} labels must be one class index per example, got shape "
                            f"{tuple(values.shape)}")
        if values.numel() == 0:
            continue
        if values.is_floating_point() and not bool(torch.all(values == values.round())):
            raise TaskError(f"load_data: {name} labels must be class indices 0..C-1, got fractional values "
                            f"(e.g. {float(values[values != values.round()][0])})")
        if values.dtype == torch.bool:
            continue
        if float(values.min()) < 0:
            raise TaskError(f"load_data: {name} labels must be class indices 0..C-1, got {float(values.min()):g}")


def _try_config(task: Task, splits: Splits, config: Mapping[str, Any]) -> None:
    """Build a trial's model, optimizer and schedule; one forward pass, loss and backward; raise on failure."""
    spec = TrialSpec(0, 0, dict(config), 0, 1)
    run = TrialRun(task, splits, spec, torch.device("cpu"))
    batch = max(1, min(run.batch_size, len(splits.x_train)))
    x, y = splits.x_train[:batch], splits.y_train[:batch]
    logits = run.model(x)
    _check_output("training", logits, len(x), splits.num_classes)
    loss = run.loss_fn(logits, y)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TaskError(f"loss_fn must return one number (a scalar tensor), got {_shape_of(loss)}")
    loss.backward()
    run.model.eval()
    with torch.no_grad():
        _check_output("validation", run.model(splits.x_val[:batch]), min(batch, len(splits.x_val)), splits.num_classes)


def _shape_of(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def _check_output(split: str, logits: Any, rows: int, num_classes: int) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != rows:
        raise TaskError(
            f"the model's output on a {split} batch of {rows} examples must be ({rows}, classes), "
            f"got {_shape_of(logits)}"
        )
    if logits.shape[1] < num_classes:
        raise TaskError(
            f"the model outputs {logits.shape[1]} columns but the labels hold {num_classes} classes "
            f"(0..{num_classes - 1})"
        )


def validate_contract(task: Task, configs: Sequence[Mapping[str, Any]]) -> Splits:
    """Refuse, with one line, a task whose data, model or loss cannot train; returns the prepared splits."""
    splits = load_splits(task)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one batch: threads would only spin-wait on each other
    first: BaseException | None = None
    try:
        for config in list(configs)[:CONFIGS_TRIED]:
            try:
                _try_config(task, splits, config)
                return splits
            except Exception as exc:  # user code: try the next config, report the first failure
                first = first or exc
    finally:
        torch.set_num_threads(threads)
    if first is None:
        return splits
    piece = "build_model" if _raised_in_build(first) else "the model's forward pass or loss_fn"
    tried = min(len(configs), CONFIGS_TRIED)
    error = _refuse(task, piece, first)
    raise TaskError(f"{error} (on each of the sweep's first {tried} configs)" if tried > 1 else str(error)) from first


def _raised_in_build(exc: BaseException) -> bool:
    return isinstance(exc, TaskError) and str(exc).startswith("build_model raised")
