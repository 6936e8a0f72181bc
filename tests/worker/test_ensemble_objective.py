"""The sweep's objective as a scorer of averaged outputs: the task's own functions, fed what a model would give."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from orchestrator.ensemble.ensemble_run import Dataset
from orchestrator.errors import TaskError
from orchestrator.spec.task import load_task
from tests.conftest import ROOT
from worker.load.objective import ensemble_objective

TASKS = os.path.join(ROOT, "tests", "tasks")
Y_VAL, Y_TEST = np.arange(12) % 4, (np.arange(8) + 1) % 4


def probs(y: np.ndarray, classes: int, seed: int) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(len(y), classes))
    logits[np.arange(len(y)), y] += 1.5
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def dataset(objective: str | None, mode: str | None = None, **fields) -> Dataset:
    values = {"num_classes": 4, "y_val": Y_VAL, "y_test": Y_TEST, "input_shape": (4,), "mean": None, "std": None,
              "objective": objective, "mode": mode, **fields}
    return Dataset(**values)


def test_a_task_metric_scores_the_average_it_would_see_from_a_model_giving_log_probabilities():
    task = load_task(os.path.join(TASKS, "custom_metric_task.py"))
    objective = ensemble_objective(task, dataset("val_brier", "min"))
    assert (objective.name, objective.mode) == ("val_brier", "min")
    average = (probs(Y_VAL, 4, 0) + probs(Y_VAL, 4, 1)) / 2
    brier = float(((average - np.eye(4)[Y_VAL]) ** 2).sum(axis=1).mean())
    assert objective.score(average, "val") == pytest.approx(brier, rel=1e-6)  # softmax(log p) is p
    test = probs(Y_TEST, 4, 2)
    assert objective.score(test, "test") == pytest.approx(float(((test - np.eye(4)[Y_TEST]) ** 2).sum(1).mean()),
                                                         rel=1e-6)
    zeros = np.eye(4)[Y_VAL]  # probabilities that are exactly 0 (float16 rounds to them): finite, never NaN
    assert objective.score(zeros, "val") == pytest.approx(0.0, abs=1e-6)


def test_a_custom_loss_fn_is_the_val_loss_objective_and_the_built_ins_need_no_task_code():
    task = load_task(os.path.join(TASKS, "custom_loss_task.py"))
    objective = ensemble_objective(task, dataset("val_loss", "min", num_classes=3, y_val=Y_VAL % 3,
                                                 y_test=Y_TEST % 3))
    p = probs(Y_VAL % 3, 3, 3)
    expected = float(torch.nn.functional.cross_entropy(torch.log(torch.from_numpy(p)).float(),
                                                       torch.from_numpy(Y_VAL % 3), label_smoothing=0.2))
    assert objective.score(p, "val") == pytest.approx(expected, rel=1e-6)
    plain = load_task(os.path.join(TASKS, "tiny_task.py"))
    for column in ("val_accuracy", "val_log_loss", "val_loss"):  # stored-prediction metrics stand for these
        assert ensemble_objective(plain, dataset(column)) is None


def test_a_regression_metric_sees_original_units_and_a_raising_metric_is_one_line():
    y_val = np.linspace(100.0, 200.0, 10).reshape(-1, 1)
    regression = dataset("val_mae", "min", kind="regression", num_classes=0, y_val=y_val, y_test=y_val + 1,
                         target_shape=())
    task = load_task(os.path.join(TASKS, "regression_task.py"))
    objective = ensemble_objective(task, regression)
    assert objective.score(y_val + 3.0, "val") == pytest.approx(3.0)
    assert ensemble_objective(task, dataset("val_mse", kind="regression", num_classes=0, y_val=y_val,
                                            y_test=y_val, target_shape=())) is None

    class Raising:
        objective, mode = "val_brier", "min"

        @staticmethod
        def get(name):
            return {"metrics": lambda outputs, targets: 1 / 0}.get(name)

    objective = ensemble_objective(Raising(), dataset("val_brier", "min"))
    with pytest.raises(TaskError, match=r"^objective val_brier of the greedy ensemble: metrics raised "
                                        r"ZeroDivisionError on the val split: division by zero$"):
        objective.value(probs(Y_VAL, 4, 0), "val", "the greedy ensemble")


def test_without_task_code_caviars_own_metrics_still_choose_and_a_task_metric_does_not():
    # 8 examples x 3 labels, stored as (example, label) pairs; a multi-label sweep ranked on its exact match.
    y = (np.arange(24) % 3 == 0).astype(np.int64)
    multilabel = {"num_classes": 2, "y_val": y, "y_test": y, "target_shape": (3,)}
    objective = ensemble_objective(None, dataset("val_exact_match", "max", **multilabel))
    p1 = np.where(y == 1, 0.8, 0.3)
    p1[[4, 10]] = 0.6  # examples 1 and 3 get one label wrong each: 6 of 8 rows wholly right
    assert (objective.name, objective.mode) == ("val_exact_match", "max")
    assert objective.score(np.stack([1 - p1, p1], axis=1), "val") == pytest.approx(0.75)
    assert ensemble_objective(None, dataset("val_label_f1", "max", **multilabel)) is None  # the task's own
    assert ensemble_objective(None, dataset("val_loss", "min", **multilabel)) is None
    y_val = np.linspace(100.0, 200.0, 10).reshape(-1, 1)
    mae = ensemble_objective(None, dataset("val_mae", "min", kind="regression", num_classes=0, y_val=y_val,
                                           y_test=y_val, target_shape=()))
    assert mae.score(y_val + 3.0, "val") == pytest.approx(3.0)
