"""Standardised regression: ``train_loss`` is what the optimizer minimised, ``train_loss_original`` the same epoch's
loss in the targets' original units, the units of ``val_loss``; a train/validation gap compares those two."""

from __future__ import annotations

import dataclasses
import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from orchestrator.spec.task import load_task
from tests.conftest import ROOT, TINY_TASK
from worker.data.splits import prepare_task_data
from worker.train.trainer import TrialRun, TrialSpec

TASKS = os.path.join(ROOT, "tests", "tasks")
ONE_TARGET = os.path.join(TASKS, "regression_task.py")  # y about 150 +- 40, shape (N,)
THREE_TARGETS = os.path.join(TASKS, "multi_target_regression_task.py")  # scales 0.01, 1 and 100, shape (N, 3)
CONFIGS = {ONE_TARGET: {"hidden": 16}, THREE_TARGETS: {}}
CPU = torch.device("cpu")


def make_run(path: str, epochs: int, **config) -> TrialRun:
    task = load_task(path)
    config = {"lr": 0.01, "optimizer": "adam", "batch_size": 32, **CONFIGS[path], **config}
    return TrialRun(task, prepare_task_data(task), TrialSpec(0, 0, config, 1, epochs), CPU)


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float(F.mse_loss(outputs.double().reshape(targets.shape), targets.double()))


@pytest.mark.parametrize("path", [ONE_TARGET, THREE_TARGETS], ids=["one_target", "three_targets"])
def test_the_training_loss_is_recomputed_in_the_original_units_not_rescaled(path):
    """At lr 0 the weights never move, so an epoch's losses are the whole training split's, recomputed here."""
    run = make_run(path, 1, lr=0.0, optimizer="sgd")
    kind, s = run.kind, run.splits
    with torch.no_grad():
        outputs = run.model(s.x_train)
    row = run.train_epoch()
    assert row["train_loss"] == pytest.approx(mse(outputs, kind.to_training(s.y_train)), rel=1e-5)
    assert row["train_loss_original"] == pytest.approx(mse(kind.to_original(outputs), s.y_train), rel=1e-5)
    if path == THREE_TARGETS:  # each target has its own std: no one factor turns one loss into the other
        mean_variance = float((kind.target_std.double() ** 2).mean())
        assert row["train_loss_original"] != pytest.approx(row["train_loss"] * mean_variance, rel=0.05)


@pytest.mark.parametrize("path", [ONE_TARGET, THREE_TARGETS], ids=["one_target", "three_targets"])
def test_train_and_validation_from_one_distribution_have_losses_of_one_size(path):
    """The bug this guards: train_loss (standardised) against val_loss (original units) read as a huge gap."""
    run = make_run(path, 8)
    row = [run.train_epoch() for _ in range(8)][-1]
    assert row["val_loss"] / row["train_loss"] > 100  # two units: never to be compared
    assert 0.5 < row["val_loss"] / row["train_loss_original"] < 2  # one unit: a gap of the same size as either


def test_a_task_loop_on_standardised_targets_leaves_the_original_loss_unknown():
    """A task's own train_epoch sees standardised targets: its loss is not rescaled into the original units."""
    def own_loop(model, optimizer, batches, config):
        total, n = 0.0, 0
        for x, y in batches:
            optimizer.zero_grad()
            loss = F.mse_loss(model(x).squeeze(1), y)
            loss.backward()
            optimizer.step()
            total, n = total + loss.item() * len(y), n + len(y)
        return {"train_loss": total / n}

    base = load_task(ONE_TARGET)
    task = dataclasses.replace(base, namespace=SimpleNamespace(**{**vars(base.namespace), "train_epoch": own_loop}))
    row = TrialRun(task, prepare_task_data(task), TrialSpec(0, 0, {"lr": 0.01, "hidden": 8}, 1, 1), CPU).train_epoch()
    assert math.isfinite(row["train_loss"]) and row["train_loss"] < 5  # standardised units: the targets are ~150
    assert row["train_loss_original"] is None


def test_without_standardised_targets_the_two_training_losses_are_one():
    task = load_task(TINY_TASK)
    run = TrialRun(task, prepare_task_data(task), TrialSpec(0, 0, {"lr": 0.03, "hidden": 8}, 1, 1), CPU)
    row = run.train_epoch()
    assert row["train_loss_original"] == row["train_loss"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_a_target_constant_in_training_is_standardised_to_zero_in_every_dtype(dtype):
    """float16 targets with a constant column were divided by a std of 1e-12, which float16 holds as 0: NaN."""
    from worker.data.kinds import resolve_kind

    y = torch.tensor([[5.0, 1.0], [5.0, 2.0], [5.0, 4.0]], dtype=dtype)
    kind = resolve_kind("regression", {"train": y, "val": y, "test": y}, standardize=True)
    assert kind.target_std.dtype == dtype and 0 < kind.target_std[0, 0] < 1e-4 and kind.target_std[0, 1] > 1
    standardised = kind.to_training(y)
    assert bool(torch.isfinite(standardised).all()) and bool((standardised[:, 0] == 0).all())
    assert torch.equal(kind.to_original(standardised).to(dtype), y)


def test_outputs_with_a_trailing_one_are_mapped_back_with_each_targets_own_statistics():
    """(N, T, 1) outputs for standardised targets (N, T) broadcast against the (1, T) statistics to (N, T, T): the
    task was refused with a shape its model never gave, though unstandardised it trains."""
    from worker.data.kinds import builtin_metrics, resolve_kind

    y = torch.arange(24, dtype=torch.float32).reshape(6, 4) ** 1.5
    kind = resolve_kind("regression", {"train": y, "val": y, "test": y}, standardize=True)
    outputs = torch.randn(6, 4, 1)
    mapped = kind.to_original(outputs)
    assert mapped.shape == (6, 4, 1)
    assert torch.allclose(mapped.squeeze(-1), kind.to_original(outputs.squeeze(-1)))
    assert builtin_metrics(kind, mapped, y) == builtin_metrics(kind, kind.to_original(outputs.squeeze(-1)), y)
