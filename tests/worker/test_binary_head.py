"""A one-logit binary head (``nn.Linear(h, 1)``): trained, scored and ensembled as binary cross-entropy says.

``kinds.class_scores`` reads the logit ``z`` as the class scores ``(0, z)``; these tests hold that to
torch's own ``binary_cross_entropy_with_logits`` and ``sigmoid``, on plain tensors, in a trial, in a
fused array, and in the ensemble objective that feeds a task's metric the logit it was written for.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from orchestrator.ensemble.ensemble_run import Dataset
from orchestrator.errors import TaskError
from orchestrator.spec.task import load_task
from tests.conftest import ROOT
from worker.arrays.fused import FusedArray
from worker.check.validate import validate_task
from worker.data.kinds import TargetKind, builtin_metrics, class_cross_entropy, class_scores
from worker.data.splits import prepare
from worker.load.objective import _model_outputs
from worker.train.trainer import TrialRun, TrialSpec, natural_outputs

BINARY_TASK = os.path.join(ROOT, "tests", "tasks", "binary_head_task.py")
CPU = torch.device("cpu")


def test_one_logit_is_binary_cross_entropy_and_sigmoid_exactly():
    z = torch.tensor([[-30.0], [-2.0], [0.0], [0.7], [25.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    bce = F.binary_cross_entropy_with_logits(z.squeeze(1), y.double())
    assert float(class_cross_entropy(z, y)) == pytest.approx(float(bce), rel=1e-12)
    probs = natural_outputs(TargetKind("classification", num_classes=2), z).exp()  # stored as log-probabilities
    assert torch.allclose(probs[:, 1].double(), torch.sigmoid(z.squeeze(1)).float().double(), atol=1e-7)
    metrics = builtin_metrics(TargetKind("classification", num_classes=2), z, y)
    assert metrics["accuracy"] == pytest.approx(2 / 5)  # z > 0 is class 1: rows 2 (z = 0: class 0) and 3 are wrong
    assert metrics["log_loss"] == pytest.approx(float(bce), rel=1e-6)
    soft = torch.tensor([[0.2, 0.8]] * 5, dtype=torch.float64)  # two-column probabilities with one logit: BCE too
    assert float(class_cross_entropy(z, soft)) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(z.squeeze(1), soft[:, 1])), rel=1e-12)
    wide = torch.randn(4, 3)
    assert class_scores(wide) is wide  # one score per class: as given


def test_a_single_class_is_refused_since_a_one_logit_head_would_learn_nothing(tmp_path):
    task_file = tmp_path / "one_class_task.py"
    task_file.write_text(open(BINARY_TASK).read().replace("return (x[:180], y[:180])", "y = 0 * y\n    return "
                                                          "(x[:180], y[:180])"))
    task = load_task(str(task_file))
    with pytest.raises(TaskError, match="^load_data: the targets hold one class only; a classifier needs"):
        validate_task(task)


@pytest.fixture(scope="module")
def binary():
    task = load_task(BINARY_TASK)
    return task, prepare(task.get("load_data")(), normalize=task.normalize)


def specs(epochs: int = 2) -> list[TrialSpec]:
    configs = [{"lr": 0.05, "optimizer": "adam", "hidden": 8, "batch_size": 32, "ema_decay": 0.9},
               {"lr": 0.03, "optimizer": "adam", "hidden": 8, "batch_size": 32}]
    return [TrialSpec(i, 0, c, 100 + i, epochs) for i, c in enumerate(configs)]


def test_a_trial_reports_binary_cross_entropy_and_a_fused_array_the_same(binary):
    task, splits = binary
    fused = FusedArray(task, splits, specs(), CPU)
    fused_rows = [fused.train_epoch(), fused.train_epoch()]
    for i, spec in enumerate(specs()):
        run = TrialRun(task, splits, spec, CPU)
        rows = [run.train_epoch(), run.train_epoch()]
        run.model.eval()
        with torch.no_grad():
            z = run.model(splits.x_val)
        assert z.shape == (len(splits.x_val), 1) and run.output_shape == (1,)
        bce = float(F.binary_cross_entropy_with_logits(z.squeeze(1), splits.y_val.float()))
        assert rows[-1]["val_loss"] == pytest.approx(bce, rel=1e-5)
        assert rows[-1]["val_accuracy"] == pytest.approx(float(((z.squeeze(1) > 0).long() == splits.y_val)
                                                                .float().mean()))
        assert rows[-1]["val_accuracy"] > 0.6  # it learned: the two blobs are apart
        for epoch in range(2):
            for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
                assert math.isclose(fused_rows[epoch][i][key], rows[epoch][key], rel_tol=1e-4, abs_tol=1e-6), key
        probs = run.predictions(run.weights_state())["val"].exp()  # log-probabilities, as stored
        assert probs.shape == (len(splits.x_val), 2)
        assert torch.allclose(probs[:, 1], torch.sigmoid(z.squeeze(1)), atol=1e-6)
    assert fused.output_shape == (1,)


def test_an_ensembles_probabilities_reach_a_metric_as_the_logit_the_model_gives():
    probs = np.array([[0.9, 0.1], [0.25, 0.75], [0.5, 0.5]])
    dataset = Dataset(2, np.array([0, 1, 1]), np.array([0, 1, 1]), (4,), None, None, output_shape=(1,))
    logit = _model_outputs(dataset, probs, "val")
    assert logit.shape == (3, 1)
    assert torch.allclose(torch.sigmoid(logit.squeeze(1)).double(), torch.from_numpy(probs[:, 1]), atol=1e-6)
    two = Dataset(2, np.array([0, 1, 1]), np.array([0, 1, 1]), (4,), None, None, output_shape=(2,))
    assert _model_outputs(two, probs, "val").shape == (3, 2)  # a two-output model's metric gets two scores
