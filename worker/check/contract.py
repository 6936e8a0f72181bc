"""The task contract, checked on the master before Ray starts: seconds, one line on failure.

A task that cannot load its data, build a model or compute a loss fails every trial the
same way; found in the actors, that costs a Ray start, a pool of actors dying one after
another and a screen of tracebacks. Here the master (which has already imported the task)
runs the pieces once:

1. ``load_data()``: the three splits, their targets checked against the task's kind;
2. ``build_model`` (with the optimizer and schedule a trial builds) on the first configs the
   sweep will train, until one builds: a factory that raises only for some configs fails
   those trials later (their errors are summarised), one that raises for all is refused;
3. one forward pass, the loss and its backward pass on one training batch, and the objective on
   the validation split (worker/check/validate.py, shared with `caviar check`); a task's own ``train_epoch``
   on two training batches, in a forked child (worker/check/own_loop.py);
4. each searched parameter's ends and options with that config's other values (worker/check/edges.py):
   a value the model cannot take (a high end that pools 8x8 inputs down to nothing) is named in a
   warning line, as the trials that draw it will fail.

Every failure is a :class:`~orchestrator.errors.TaskError` naming the piece, the exception
and the line of the task file that raised it.
"""

from __future__ import annotations

import logging
import os
import re
import time
import traceback
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch

from orchestrator.errors import ConfigError, TaskError
from orchestrator.search.probes import Probe
from orchestrator.search.space import SearchSpace
from orchestrator.spec.task import Task
from worker.check.absent_classes import warn_if_classes_absent
from worker.check.edges import SLOW_CHECK_SECONDS, failing_values
from worker.check.ema_reach import warn_if_ema_decay_unreached
from worker.check.embedded_ids import standardised_ids_note
from worker.check.extreme_ids import refuse_ids_the_model_cannot_take
from worker.check.half_params import refuse_precision_autocast_skips, warn_if_eps_vanishes_in_float16
from worker.check.left_out import warn_if_optimizer_leaves_out
from worker.check.overlap import warn_if_splits_share_examples
from worker.check.own_loop import check_own_loop
from worker.check.padded_steps import padded_steps_note
from worker.check.sparse_grads import refuse_optimizers_without_sparse_gradients
from worker.check.unread import unread_entries
from worker.check.validate import (
    check_batches_fit_dropping_split,
    check_config,
    warn_if_batch_of_one_is_searched,
    warn_if_classes_missing_from_train,
    warn_if_large,
    warn_if_loader_workers_unused,
    warn_if_own_loss_changes_with_units,
    warn_if_single_batches,
    warn_if_train_comes_grouped_by_class,
)
from worker.data.kinds import objective_and_mode
from worker.data.seeds import preserved_randomness
from worker.data.splits import Splits, prepare_task_data
from worker.data.streams import check_first_batches_repeat
from worker.train.trainer import TrialRun, TrialSpec

log = logging.getLogger("caviar")
CONFIGS_TRIED = 4  # build_model on at most this many configs before the task is refused
_OWN_DIRS = tuple(
    os.path.dirname(os.path.abspath(__import__(name).__file__)) + os.sep
    for name in ("worker", "orchestrator", "torch", "numpy")
) + (os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "cluster")
     + os.sep,)  # not imported


def where_raised(exc: BaseException) -> str:
    """``file.py:LINE`` of the innermost frame of the user's code (not caviar's, torch's or numpy's)."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if not os.path.abspath(frame.filename).startswith(_OWN_DIRS) and "site-packages" not in frame.filename:
            return f"{os.path.basename(frame.filename)}:{frame.lineno}"
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else "?"


def describe(exc: BaseException) -> str:
    """``ValueError: message (task.py:12)``: the exception in one line, with where it was raised.

    caviar's own ``TaskError`` already names the piece and the user's exception it wraps: its words are
    kept, and the line is where the wrapped exception was raised.
    """
    message = " ".join(str(exc).split()) or "(no message)"
    if isinstance(exc, TaskError):
        return f"{message} ({where_raised(exc.__cause__ or exc)})"
    return f"{type(exc).__name__}: {message} ({where_raised(exc)})"


def _refuse(task: Task, piece: str, exc: BaseException) -> TaskError:
    if isinstance(exc, TaskError):
        if exc.__cause__ is not None:  # caviar wrapped the user's exception: name that one, where it was raised
            if str(exc).startswith("metrics raised"):  # its words name the function and the split
                return TaskError(f"task {task.ref!r}: {describe(exc)}")
            return TaskError(f"task {task.ref!r}: {piece} raised {describe(exc.__cause__)}")
        text = str(exc)  # caviar's own check: its message names what is wrong
        # e.g. inputs of another dtype than the model: the data; outputs that broadcast against targets: the loss
        named = text.startswith((piece, "load_data:", "loss_fn", "metrics", "the backward pass", "build_optimizer",
                                 "mode = ", "objective ", "optimizer '", "schedule '"))
        return TaskError(f"task {task.ref!r}: {text if named else f'{piece}: {text}'}")
    return TaskError(f"task {task.ref!r}: {piece} raised {describe(exc)}")


def load_splits(task: Task) -> Splits:
    """``load_data()`` once, its targets checked against the task's kind (worker/data/kinds.py)."""
    try:
        splits = prepare_task_data(task)
        objective_and_mode(task, splits.target_kind)  # the kind decides the default objective a bare mode is about
        return splits
    except Exception as exc:
        raise _refuse(task, "load_data", exc) from exc


def _try_config(task: Task, splits: Splits, config: Mapping[str, Any]) -> TrialRun:
    """Build a trial's model, optimizer and schedule; one forward pass, loss, backward and the objective."""
    # First: its refusals name the piece (a frozen model, before its optimizer).
    first = check_config(task, splits, config)
    run = TrialRun(task, splits, TrialSpec(0, 0, dict(config), 0, 1), torch.device("cpu"))
    refuse_shared_weights(first, run.model)
    refuse_shared_running_statistics(first, run.model, lambda: splits.sample(8)[0])
    return run


def refuse_shared_running_statistics(first: torch.nn.Module, second: torch.nn.Module, inputs: Any) -> None:
    """A frozen backbone may be shared (its weights never change), but not its BatchNorm running statistics while
    training updates them: every trial in a worker would move the next one's statistics, and its scores would depend
    on which trials shared the worker. Checked by a training-mode forward pass of ``second`` on ``inputs()``; the
    buffers are put back after it."""
    owned = {id(b) for b in first.buffers()}
    shared = [(name, b) for name, b in second.named_buffers() if id(b) in owned and b.is_floating_point()]
    if not shared:
        return
    before = [b.detach().clone() for _, b in shared]
    counters = [(b, b.detach().clone()) for name, b in second.named_buffers() if id(b) in owned
                and not b.is_floating_point()]  # num_batches_tracked
    was_training = second.training
    try:
        with torch.no_grad():
            second.train()(inputs())
    except Exception:  # the contract check's own pass names what fails; this check only looks for drift
        return
    finally:
        changed = [name for (name, b), old in zip(shared, before) if not torch.equal(b, old)]
        for (_, b), old in zip(shared, before):
            b.copy_(old)
        for b, old in counters:
            b.copy_(old)
        second.train(was_training)
    if changed:
        raise _shared(f"the running statistics {_named(changed)}", "a frozen backbone made once, outside build_model?",
                      "training mode updates them, so each trial would move the next one's; copy.deepcopy the "
                      "backbone in build_model, or keep its BatchNorm layers in eval mode (override the model's "
                      "train())")


def _named(names: list[str]) -> str:
    return names[0] + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")


def _shared(what: str, guess: str, why: str) -> TaskError:
    return TaskError(f"build_model returns models that share {what} with the models it built before ({guess}): {why}")


def refuse_shared_weights(first: torch.nn.Module, second: torch.nn.Module) -> None:
    """Two models from ``build_model`` that hold the same trainable tensor (a module built once, at import, and put
    in every model) are one model: each trial in a worker would start from the weights the trial before it left,
    and the sweep's results would depend on which trials shared a worker."""
    owned = {id(p): name for name, p in first.named_parameters() if p.requires_grad}
    shared = [name for name, p in second.named_parameters() if id(p) in owned]
    if shared:
        raise _shared(f"the trainable parameter {_named(shared)}", "a module made once, outside build_model?",
                      "each trial would start from the weights the one before it trained; build it inside "
                      "build_model, or copy.deepcopy it there (a frozen one, requires_grad False, may be shared)")


def validate_contract(task: Task, configs: Sequence[Mapping[str, Any]], settings: Any = None,
                      space: SearchSpace | None = None, notes: list[dict[str, Any]] | None = None) -> Splits:
    """Refuse, with one line, a task whose data, model or loss cannot train; returns the prepared splits.

    ``space``: also build each searched parameter's ends and options (worker/check/edges.py) and name, in a
    warning line per parameter, the values the model cannot take; ``notes`` receives them (message, param,
    values) for the sweep's events.
    """
    splits = load_splits(task)  # the task's load_data draws from the caller's generators, as in any worker
    with preserved_randomness():  # the builds below seed them as trials do: the caller's state is put back after
        return _check_loaded(task, splits, configs, settings, space, notes)


def _check_loaded(task: Task, splits: Splits, configs: Sequence[Mapping[str, Any]], settings: Any,
                  space: SearchSpace | None, notes: list[dict[str, Any]] | None) -> Splits:
    try:
        check_first_batches_repeat(splits.streams)
    except Exception as exc:
        for stream in (splits.streams or {}).values():
            stream.release_workers()
        raise _refuse(task, "load_data", exc) from exc
    warn_if_splits_share_examples(splits)
    warn_if_classes_missing_from_train(splits)
    warn_if_classes_absent(splits)
    warn_if_train_comes_grouped_by_class(splits)
    warn_if_loader_workers_unused(splits)
    try:
        check_batches_fit_dropping_split(splits, space, configs)
    except Exception as exc:
        raise _refuse(task, "space", exc) from exc
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one batch: threads would only spin-wait on each other
    first: BaseException | None = None
    try:
        for config in list(configs)[:CONFIGS_TRIED]:
            try:
                began = time.perf_counter()
                run = _try_config(task, splits, config)
                if settings is not None:  # one line when the predictions stored for ensembles would be large
                    warn_if_large(splits, settings, ema=bool(config.get("ema_decay")))
                warn_if_single_batches(run.model, splits, configs)
                warn_if_optimizer_leaves_out(bool(task.get("build_optimizer")), run.model, run.optimizer)
                if (ids := standardised_ids_note(run.model, splits)) is not None:
                    log.warning(ids)
                if (padding := padded_steps_note(run.model, splits)) is not None:
                    log.warning(padding)
                warn_if_ema_decay_unreached(task, splits, space, settings)
                warn_if_batch_of_one_is_searched(run.model, space)
                warn_if_eps_vanishes_in_float16(run.optimizer)
                warn_if_own_loss_changes_with_units(task, splits, run.model)
            except Exception as exc:  # user code: try the next config, report the first failure
                first = first or exc
                continue
            if space is not None:
                found = warn_about_failing_values(task, splits, space, config, checked_in=time.perf_counter() - began)
                if notes is not None:
                    notes.extend(found)
                warn_about_unread_entries(task, splits, space, configs)
            check_own_loop(task, run, partial(_refuse, task, "train_epoch"))
            _refuse_ids_beyond(task, run.model, splits)
            refuse_precision_autocast_skips(run.model, getattr(settings, "precision", "fp32"))
            if not task.get("build_optimizer") and not task.get("train_epoch"):
                _refuse_sparse_gradients(task, run.model, configs)
            return splits
    finally:
        torch.set_num_threads(threads)
        for stream in (splits.streams or {}).values():  # the check's loader workers would idle through the sweep
            stream.release_workers()
    if first is None:
        return splits
    piece = "build_model" if _raised_in_build(first) else "build_optimizer" if _raised_in_optimizer(first) \
        else "the model's forward pass or loss_fn"
    tried = min(len(configs), CONFIGS_TRIED)
    error = _refuse(task, piece, first)
    about_data = isinstance(first, TaskError) and str(first).startswith("load_data:")  # holds for every config
    line = f"{error} (on each of the sweep's first {tried} configs)" if tried > 1 and not about_data else str(error)
    if piece == "the model's forward pass or loss_fn":
        _refuse_ids_beyond_the_model(task, splits, configs[0])
    ids = _standardised_ids(task, splits, configs[0]) if piece == "the model's forward pass or loss_fn" else None
    ids = ids or channels_last_note(first, splits.input_shape)
    raise TaskError(line if ids is None else f"{line}; {ids}") from first


def channels_last_note(exc: BaseException, input_shape: tuple[int, ...]) -> str | None:
    """Images given channels last, (N, H, W, C) as PIL and numpy hold them, to a convolution that takes (N, C, H, W):
    torch's words ('expected input[32, 32, 32, 3] to have 3 channels, but got 32') name neither the layout nor a fix."""
    found = re.search(r"to have (\d+) channels, but got (\d+) channels", str(exc))
    if found is None or len(input_shape) < 2 or input_shape[-1] != int(found[1]) or input_shape[0] == input_shape[-1]:
        return None
    order = ", ".join(map(str, (0, len(input_shape), *range(1, len(input_shape)))))
    one = ", ".join(map(str, (len(input_shape) - 1, *range(len(input_shape) - 1))))
    shape = ", ".join(map(str, input_shape))
    return (f"the inputs are (N, {shape}), channels last as PIL and numpy give images, but convolutions take them "
            f"channels first: give np.ascontiguousarray(x.transpose({order})) in load_data, or image.permute({one}) "
            "in a Dataset's __getitem__")


def _refuse_ids_beyond_the_model(task: Task, splits: Splits, config: Mapping[str, Any]) -> None:
    """A forward pass that failed on validation's ids beyond the embeddings (torch's range error names neither):
    refused naming the split, when the model takes training's first rows."""
    try:
        with preserved_randomness():
            model = task.get("build_model")(dict(config)).eval()
            with torch.no_grad():
                model(splits.sample(8)[0])
    except Exception:  # the model fails on ordinary training rows too: the refusal stands as it is
        return
    _refuse_ids_beyond(task, model, splits)


def _refuse_ids_beyond(task: Task, model: torch.nn.Module, splits: Splits) -> None:
    try:
        refuse_ids_the_model_cannot_take(model, splits, describe)
    except TaskError as exc:  # its words name the split and the ids; the line names the task as every refusal does
        raise TaskError(f"task {task.ref!r}: {exc}") from exc.__cause__


def _refuse_sparse_gradients(task: Task, model: torch.nn.Module, configs: Sequence[Mapping[str, Any]]) -> None:
    try:
        refuse_optimizers_without_sparse_gradients(model, configs)
    except ConfigError as exc:  # its words name the optimizers and the embeddings; the line names the task too
        raise TaskError(f"task {task.ref!r}: {exc}") from None


def _standardised_ids(task: Task, splits: Splits, config: Mapping[str, Any]) -> str | None:
    """:func:`standardised_ids_note` for a config whose forward pass raised (torch's range error of an embedding fed
    standardised ids names no cause); None when the model does not build again."""
    try:
        with preserved_randomness():
            model = task.get("build_model")(dict(config))
    except Exception:  # the refusal stands as it is
        return None
    return standardised_ids_note(model, splits) if isinstance(model, torch.nn.Module) else None


def warn_about_failing_values(task: Task, splits: Splits, space: SearchSpace, config: Mapping[str, Any], *,
                              checked_in: float) -> list[dict[str, Any]]:
    """One warning line per searched parameter with an end or option the model cannot take; each as
    ``{"message", "param", "values"}``.

    ``config`` passed the contract check in ``checked_in`` seconds: a task that slow is not probed.
    """
    if checked_in > SLOW_CHECK_SECONDS:
        log.debug("space: the ends of its ranges were not built (one config took %.1f s to check)", checked_in)
        return []
    try:
        failed = failing_values(task, splits, space, config)
    except Exception as exc:  # caviar's own probing must never stop a sweep the contract check passed
        log.debug("space: probing its ends failed: %s", describe(exc))
        return []
    notes = value_failure_notes(failed)
    for note in notes:
        log.warning(note["message"])
    return notes


def warn_about_unread_entries(task: Task, splits: Splits, space: SearchSpace,
                              configs: Sequence[Mapping[str, Any]]) -> None:
    """One warning line per space entry no build reads (worker/check/unread.py): a typo that trains on a default."""
    try:
        lines = unread_entries(task, splits, space, configs)
    except Exception as exc:  # caviar's own following of reads must never stop a sweep the contract check passed
        log.debug("space: which entries build_model reads was not followed: %s", describe(exc))
        return
    for line in lines:
        log.warning(line)


def value_failure_notes(failed: Sequence[tuple[Probe, str, BaseException]],
                        base: str = "a config that passed the check") -> list[dict[str, Any]]:
    """One ``{"message", "param", "values"}`` per parameter among ``failed`` (worker/check/edges.py), the message
    one line naming the values, where they sit, the error and what to do; ``base`` names the config probed around."""
    by_param: dict[str, list[tuple[Probe, str, BaseException]]] = {}
    for probe, piece, exc in failed:
        by_param.setdefault(probe.param, []).append((probe, piece, exc))
    notes = []
    for param, fails in by_param.items():
        probe, piece, exc = fails[0]
        values = [p.value for p, _, _ in fails]
        remedy = "drop the option" if probe.where.startswith("an option") else "narrow the range"
        own = isinstance(exc, TaskError) and exc.__cause__ is None  # caviar's refusal: its words say what is wrong
        why = " ".join(str(exc).split()) if own else f"{piece} raised {describe(exc)}"
        message = (f"space: {param} = {', '.join(map(repr, values))} fails with the other values of {base} "
                   f"({probe.where}): {why}; the trials that draw it will fail: {remedy}, or make build_model take it")
        notes.append({"message": message, "param": param, "values": values})
    return notes


def refuse_as_run_would(task: Task, splits: Splits, config: Mapping[str, Any]) -> BaseException | None:
    """``caviar check``'s config through the contract ``caviar run`` checks, refused in run's line: outputs that
    broadcast against the targets, a head the built-in metrics cannot score. The user's own code raising is
    returned, for the checks to report as a failed row (their own batches may not meet it: a batch norm model at
    ``batch_size`` 1)."""
    try:
        check_config(task, splits, config)
    except TaskError as exc:
        if exc.__cause__ is None:  # caviar's own refusal, which every trial of the sweep would meet
            raise _refuse(task, "the model's forward pass or loss_fn", exc) from None
        return exc
    except Exception as exc:  # the user's code: the checks that follow report it as a failed row
        return exc
    return None


def _raised_in_optimizer(exc: BaseException) -> bool:
    return isinstance(exc, TaskError) and str(exc).startswith(("build_optimizer raised", "build_optimizer must"))


def _raised_in_build(exc: BaseException) -> bool:
    return isinstance(exc, TaskError) and str(exc).startswith(("build_model raised", "build_model must return",
                                                                "build_model returns models that share"))
