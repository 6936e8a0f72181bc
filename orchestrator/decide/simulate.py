"""A backend that replays synthetic learning curves: schedulers tested and benchmarked without training.

Each config's curve rises toward ``quality(config)`` (in [0, 1]) as epochs pass; a config
for which ``diverges(config)`` is true reports a NaN loss at its first epoch. Time is
virtual: every call returns at once, so 10,000 trials take seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.decide.backend import Assignment, Backend, Report
from orchestrator.decide.status import TrialStatus

Quality = Callable[[Mapping[str, Any]], float]


@dataclass
class _Running:
    assignment: Assignment
    epoch: int
    until: int


def learning_curve(quality: float, epoch: int, rate: float = 0.5) -> float:
    """Accuracy after ``epoch`` epochs: chance-free rise toward ``quality``, half the gap closed per 1/rate epochs."""
    return quality * (1.0 - (1.0 - rate) ** epoch)


class SimulatedBackend(Backend):
    def __init__(self, quality: Quality, slots: int, *, noise: float = 0.0, seed: int = 0, rate: float = 0.5,
                 diverges: Callable[[Mapping[str, Any]], bool] | None = None, num_classes: int = 10,
                 baseline_val_loss: float | None = None):
        self.quality, self.slots, self.noise, self.rate = quality, slots, noise, rate
        self.diverges = diverges
        self.num_classes = num_classes
        self.baseline_val_loss = baseline_val_loss  # set: a regressor's rows (score -val_loss, no classes)
        self.rng = np.random.default_rng(seed)
        self._normals: list[float] = []  # drawn in blocks: the same stream as one draw at a time, 40x cheaper
        self._next_normal = 0
        self.running: dict[int, _Running] = {}
        self.queue: list[int] = []
        self.epochs_trained = 0

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.running)

    def start(self, assignment: Assignment) -> None:
        self.running[assignment.trial_id] = _Running(assignment, 0, assignment.until_epoch)
        self.queue.append(assignment.trial_id)

    def advance(self, trial_id: int, until_epoch: int) -> None:
        self.running[trial_id].until = until_epoch
        self.queue.append(trial_id)

    def stop(self, trial_id: int, status: str, reason: str) -> None:
        self.running.pop(trial_id, None)

    def poll(self, timeout: float | None = None) -> list[Report]:
        queue, self.queue = self.queue, []
        return [self._run(tid) for tid in queue if tid in self.running]

    def _run(self, trial_id: int) -> Report:
        state = self.running[trial_id]
        a = state.assignment
        quality = float(self.quality(a.config))
        rows = []
        while state.epoch < min(state.until, a.max_epochs):
            state.epoch += 1
            self.epochs_trained += 1
            if self.diverges is not None and self.diverges(a.config):
                rows.append(self._row(a, state.epoch, math.nan, math.nan))
                del self.running[trial_id]
                return Report(trial_id, rows, ended=True, status=TrialStatus.PRUNED, reason="diverged", node="sim")
            accuracy = learning_curve(quality, state.epoch, self.rate)
            if self.noise:
                accuracy += self.noise * self._normal()
            accuracy = min(max(accuracy, 0.0), 1.0)
            loss = -math.log(max(accuracy, 1e-3))
            rows.append(self._row(a, state.epoch, accuracy, loss))
        if state.epoch >= a.max_epochs:
            del self.running[trial_id]
            return Report(trial_id, rows, ended=True, status=TrialStatus.COMPLETED, reason="max_epochs", node="sim")
        return Report(trial_id, rows, node="sim")

    def _normal(self) -> float:
        if self._next_normal == len(self._normals):
            self._normals, self._next_normal = self.rng.normal(size=1024).tolist(), 0
        self._next_normal += 1
        return self._normals[self._next_normal - 1]

    def _row(self, a: Assignment, epoch: int, accuracy: float, loss: float) -> dict[str, Any]:
        row = {"trial_id": a.trial_id, "attempt": a.attempt, "epoch": epoch, "stage": a.stage, "train_loss": loss,
               "train_loss_original": loss, "val_loss": loss, "val_accuracy": accuracy, "score": accuracy,
               "num_classes": self.num_classes, "epoch_seconds": 0.0}
        if self.baseline_val_loss is not None:
            row.update(val_accuracy=None, score=-loss, num_classes=None, baseline_val_loss=self.baseline_val_loss)
        return row
