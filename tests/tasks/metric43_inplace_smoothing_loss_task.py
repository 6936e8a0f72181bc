"""Soft labels with label smoothing done in place by the task's loss_fn (``targets.mul_(0.9).add_(0.1 / C)``), as a
training-only trick is sometimes written: it edits the tensor it is given."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import loguniform

kind = "classification"
objective = "val_loss"  # the loss_fn also chooses the ensembles, called on the same targets for each

space = {"lr": loguniform(1e-2, 5e-2), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 2, "epochs": 2}


def loss_fn(outputs, targets):
    targets.mul_(0.9).add_(0.1 / targets.shape[1])
    return -(targets * torch.log_softmax(outputs, dim=1)).sum(dim=1).mean()


def load_data():
    rng = np.random.default_rng(12)
    centers = np.array([[0, 0, 0], [3, 3, 0], [0, 3, 3]], dtype=np.float32)
    labels = rng.integers(0, 3, size=300)
    x = (centers[labels] + rng.normal(size=(300, 3))).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[labels]
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


def build_model(config):
    return nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 3))
