"""A loss that is not a mean over examples (a Cox partial likelihood): its value on the validation split whole is
not the mean of its batches', so the report draws no train/validation loss gap and says why. Before, the Cox
sweep's report drew a gap of about 1.2 nats at every epoch (validation 4.2 against training 3.0 on batches of 64),
captioned "a gap that keeps growing is overfitting". Child processes, no Ray."""

from __future__ import annotations

import os

import torch
from torch import nn

from orchestrator.app.api import load, run_sweep
from orchestrator.app.report import build_report
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.conftest import ROOT
from worker.data.kinds import TargetKind

COX = os.path.join(ROOT, "tests", "tasks", "cox_survival_task.py")
HUBER = os.path.join(ROOT, "tests", "tasks", "custom_kind_task.py")


def test_the_rule_tells_a_mean_over_examples_from_a_sum_and_a_risk_set_loss():
    from orchestrator.spec.task import load_task
    from worker.train.trainer import loss_per_example

    task, kind = load_task(HUBER), TargetKind("custom")
    outputs, targets = torch.randn(60, 2), torch.randn(60, 2)

    def judged(loss):
        return loss_per_example(task, kind, loss, outputs, targets, float(loss(outputs, targets)))

    assert judged(nn.functional.mse_loss) and judged(nn.functional.smooth_l1_loss)
    assert not judged(lambda o, t: ((o - t) ** 2).sum())
    cox = load_task(COX).namespace.loss_fn
    times = torch.stack([torch.rand(60), (torch.rand(60) > 0.3).float()], 1)
    assert not loss_per_example(task, kind, cox, outputs[:, :1], times, float(cox(outputs[:, :1], times)))


def sweep(path, task, name):
    return run_sweep(task, trials=2, epochs=2, stages=1, pruner="none", seed=3, slots=2, ensemble=False,
                     storage=str(path), name=name, executor="processes")


def test_a_cox_sweeps_report_draws_no_loss_gap_and_says_why(tmp_path):
    result = sweep(tmp_path, COX, "cox")
    assert schema.read_dataset_row(Storage.from_uri(result.path))["loss_per_example"] is False
    metrics = load(result.path).metrics
    assert metrics["train_loss_original"].null_count == metrics.num_rows  # no training loss in val_loss's units
    assert metrics["train_loss"].null_count == 0
    report = build_report(result.path, workers=1)
    assert "fig-gap" not in {f.id for f in report.figures}
    assert "not a mean over examples" in report.skipped["fig-gap"]


def test_a_mean_loss_of_the_tasks_own_keeps_its_gap(tmp_path):
    result = sweep(tmp_path, HUBER, "huber")
    assert schema.read_dataset_row(Storage.from_uri(result.path)).get("loss_per_example") is None
    report = build_report(result.path, workers=1)
    assert "fig-gap" in {f.id for f in report.figures}
