"""Classification trained and scored by the task's own loss (label-smoothed cross-entropy) for tests."""

from __future__ import annotations

import numpy as np
import torch
from tiny_task import build_model  # noqa: F401  (the task's model: tiny_task's MLP; this folder is on the path)

from orchestrator.search.space import loguniform, randint

space = {"lr": loguniform(1e-3, 3e-1), "hidden": randint(2, 16), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 4, "epochs": 2}
objective = "val_loss"
mode = "min"


def loss_fn(outputs, targets):
    return torch.nn.functional.cross_entropy(outputs, targets, label_smoothing=0.2)


def load_data():
    rng = np.random.default_rng(5)
    centers = np.array([[0, 0, 0, 0], [2, 2, 0, 0], [0, 2, 2, 0]], dtype=np.float32)
    y = rng.integers(0, 3, size=300)
    x = centers[y] + rng.normal(size=(300, 4)).astype(np.float32)
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])

