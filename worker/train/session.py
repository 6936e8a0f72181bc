"""A worker's life: load the task and data once, then train trial after trial on request.

Everything here is plain Python and torch; ``cluster.actor`` wraps it in a Ray actor, and
tests drive it directly. Errors in user code end the trial as ``failed`` with its
traceback; the worker itself lives on.
"""

from __future__ import annotations

import math
import socket
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import safetensors.torch
import torch

from orchestrator.decide.backend import Assignment, Report
from orchestrator.decide.pruning import (
    EARLY_STOPPED,
    chance_classes,
    chance_loss,
    divergence_reason,
    plateau_reason,
)
from orchestrator.decide.status import TrialStatus
from orchestrator.errors import StorageError
from orchestrator.spec.task import Task, load_task
from orchestrator.store.schema import INPUT_STATISTICS_PATH, read_dataset_row
from orchestrator.store.storage import Storage
from worker.data import task_globals
from worker.data.kinds import baseline_val_loss, objective_and_mode
from worker.data.splits import Splits, measured_data, prepare_task_data
from worker.train.predictions import check_stored_labels, forget_dataset_written
from worker.train.recorder import TrialRecorder, load_resume_state, load_safetensors
from worker.train.trainer import TrialRun, TrialSpec, pick_device


@dataclass(frozen=True)
class WorkerOptions:
    device: str = "auto"
    keep_best: int = 1
    keep_last: bool = True
    checkpoint_seconds: float = 30.0
    max_loss_ratio: float = 4.0
    early_stopping: int = 0  # epochs without a better score before a trial ends (0: off)
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    prediction_dtype: str = "float16"  # stored val/test probabilities for ensembles: float16 or float32
    precision: str = "fp32"  # fp32, bf16 or fp16
    # The master's input (mean, std) (statistics_of), for a worker that loads the data itself
    input_statistics: Any = None
    # The master's load-time pass over streamed splits (worker.data.splits.measured_data): no pass of the worker's own
    measured_data: bytes | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerOptions:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def warm_up_torch() -> None:
    """Pay torch's lazy first-use imports (about 3 s for the first optimizer step) once per worker, not per trial."""
    param = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.Adam([param])
    param.sum().backward()
    optimizer.step()
    torch.manual_seed(0)


def statistics_of(splits: Splits | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The input ``(mean, std)`` ``splits`` were standardised with, one example's shape, as ``prepare`` takes them
    (float64 holds every float dtype's values exactly); None where the inputs are not standardised."""
    mean, std = getattr(splits, "mean", None), getattr(splits, "std", None)
    if mean is None or std is None:
        return None
    return mean[0].detach().cpu().double().numpy(), std[0].detach().cpu().double().numpy()


def what_workers_are_sent(splits: Splits | None) -> dict[str, Any]:
    """For workers that load the data themselves: the master's input statistics and its load-time pass over streamed
    splits, so they standardise alike and read no split in full before their first trial."""
    return {"input_statistics": statistics_of(splits), "measured_data": measured_data(splits)}


def write_input_statistics(storage: Storage, splits: Splits) -> None:
    """The master's input statistics, for workers that load the data themselves after a resume."""
    stats = statistics_of(splits)
    tensors = {} if stats is None else {"mean": torch.from_numpy(stats[0]), "std": torch.from_numpy(stats[1])}
    storage.write_bytes(INPUT_STATISTICS_PATH, safetensors.torch.save(tensors))


def stored_statistics(storage: Storage) -> tuple[np.ndarray, np.ndarray] | None:
    """The input (mean, std) a sweep's trials train with (a resume: the master loaded no data); a sweep from before
    the statistics file was written: the stored dataset row's."""
    if storage.exists(INPUT_STATISTICS_PATH):
        stored = load_safetensors(storage.read_bytes(INPUT_STATISTICS_PATH), storage.path(INPUT_STATISTICS_PATH))
        return (stored["mean"].numpy(), stored["std"].numpy()) if "mean" in stored else None
    row = read_dataset_row(storage)
    if row.get("mean") is None or row.get("std") is None:
        return None
    shape = tuple(row["input_shape"])
    return (np.asarray(row["mean"], dtype=np.float64).reshape(shape),
            np.asarray(row["std"], dtype=np.float64).reshape(shape))


class WorkerSession:
    """One worker's task, data and running trials; :meth:`bind` points it at another sweep of the same task.

    ``splits`` are the data the master already loaded and checked (shared through Ray's object
    store); without them the worker calls the task's ``load_data`` itself.
    """

    def __init__(self, task_ref: str, storage_uri: str, sweep: str, options: Mapping[str, Any] | None = None,
                 splits: Splits | None = None):
        began = time.perf_counter()
        self.task: Task = load_task(task_ref)
        self.node = socket.gethostname()
        loaded = time.perf_counter()
        self.bind(storage_uri, sweep, options, splits)
        bound = time.perf_counter()
        warm_up_torch()
        # Where this worker's start went (benchmarks/startup.py reads it): the task's import, its data, torch's warm-up.
        self.start_seconds = {"task_import": loaded - began, "data": bound - loaded,
                              "warm_up": time.perf_counter() - bound}

    def bind(self, storage_uri: str, sweep: str, options: Mapping[str, Any] | None = None,
             splits: Splits | None = None) -> None:
        """Serve ``sweep`` from now on: its options, storage and freshly loaded data (never the last sweep's)."""
        self.options = WorkerOptions.from_dict(options or {})
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        self.device = pick_device(self.options.device)
        if splits is not None:  # the master's load_data ran, not ours: take the globals it set in the task
            task_globals.apply(self.task.namespace, splits.task_globals)
        self.storage = Storage.from_uri(storage_uri).child(sweep)
        forget_dataset_written(self.storage)
        if splits is None:  # every worker standardises as the master did (and as loading will): one set of numbers
            splits = prepare_task_data(self.task, self.options.input_statistics or stored_statistics(self.storage),
                                       self.options.measured_data)
            check_stored_labels(self.storage, splits)  # a resume's workers load the data again: the same labels?
        self.splits: Splits = splits.to(self.device)
        s = self.splits
        self.baseline_val_loss = baseline_val_loss(self.task, s.target_kind, s.y_train, s.y_val)
        # What the pruner's not-learning rule judges each epoch's report by (sent with it, never stored): the class
        # count or the regression baseline, for this sweep's objective and loss.
        objective = objective_and_mode(self.task, s.target_kind)[0]
        self.not_learning_facts = {
            "num_classes": chance_classes(s.num_classes, objective, self.task.get("loss_fn") is not None),
            "baseline_val_loss": chance_loss(self.baseline_val_loss, objective)}
        self._check_storage()
        self.runs: dict[int, tuple[TrialRun, TrialRecorder]] = {}

    def _check_storage(self) -> None:
        """Before any trial trains here: the master's own write check says nothing of this worker's machine (a
        cluster's nodes without the credentials or the mount the master has), and a trial writes only at its end."""
        try:
            self.storage.check_writable()
        except StorageError as exc:
            raise StorageError(f"worker on {self.node}: {exc}; the master could write there, so this worker's "
                               "machine lacks the storage's credentials or mount: give them to every node (where "
                               "the cluster starts), or put them in the storage URI") from None

    def start(self, assignment: Assignment) -> Report:
        a = assignment
        try:
            spec = TrialSpec(a.trial_id, a.stage, dict(a.config), a.seed, a.max_epochs, a.attempt)
            run = TrialRun(self.task, self.splits, spec, self.device, self.options.precision)
            if a.resume:
                state = load_resume_state(self.storage, a.trial_id)
                if state is not None:
                    run.load_resume_state(state)
            o = self.options
            recorder = TrialRecorder(
                self.storage,
                a.trial_id,
                a.attempt,
                keep_best=o.keep_best,
                keep_last=o.keep_last,
                checkpoint_seconds=o.checkpoint_seconds,
                prediction_dtype=o.prediction_dtype,
            )
            if a.resume:  # the checkpoints earlier attempts kept stay in the index
                recorder.adopt(run.epoch)
                if state is not None:
                    recorder.take_curve(state)
        except Exception:
            return Report(
                a.trial_id, ended=True, status=TrialStatus.FAILED, reason="error", error=traceback.format_exc(),
                node=self.node,
            )
        self.runs[a.trial_id] = (run, recorder)
        return self.advance(a.trial_id, a.until_epoch)

    def advance(self, trial_id: int, until_epoch: int) -> Report:
        run, recorder = self.runs[trial_id]
        rows: list[dict[str, Any]] = []
        try:
            while run.epoch < min(until_epoch, run.spec.max_epochs):
                row = run.train_epoch()
                row.update(self.not_learning_facts)
                recorder.record(run, {k: v for k, v in row.items() if k not in ("num_classes", "baseline_val_loss")})
                rows.append(row)
                reason = divergence_reason(recorder.curve("train_loss"), max_ratio=self.options.max_loss_ratio)
                if reason or not math.isfinite(row["val_loss"]):
                    return self._end(trial_id, rows, TrialStatus.PRUNED, reason or "diverged")
                patience = self.options.early_stopping  # 0 (the default): no list of scores to build each epoch
                if patience and run.epoch < run.spec.max_epochs and plateau_reason(
                        recorder.curve("score"), patience):
                    return self._end(trial_id, rows, TrialStatus.COMPLETED, EARLY_STOPPED)
        except Exception:
            return self._end(trial_id, rows, TrialStatus.FAILED, "error", traceback.format_exc())
        if run.epoch >= run.spec.max_epochs:
            return self._end(trial_id, rows, TrialStatus.COMPLETED, "max_epochs")
        return Report(trial_id, rows, node=self.node)

    def stop(self, trial_id: int, status: str, reason: str) -> Report:
        if trial_id not in self.runs:
            return Report(trial_id, ended=True, status=status, reason=reason, node=self.node)
        return self._end(trial_id, [], status, reason)

    def _end(
        self, trial_id: int, rows: list[dict[str, Any]], status: str, reason: str, error: str | None = None
    ) -> Report:
        run, recorder = self.runs.pop(trial_id)
        stage = "storage"
        try:
            ending = recorder.begin_finish(run)
            stage = "error"  # the kept checkpoints run on val and test: the model's own exception, not the disk's
            results = {key: run.checkpoint_results(state, key[1], key[0]) for key, state in ending.states.items()}
            stage = "storage"
            recorder.end_finish(run, ending, results)
        except Exception:
            if error is None:
                status, reason, error = TrialStatus.FAILED, stage, traceback.format_exc()
        return Report(trial_id, rows, ended=True, status=status, reason=reason, error=error, node=self.node)
