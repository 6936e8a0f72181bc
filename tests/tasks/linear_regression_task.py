"""A tiny regression task: a noisy linear target, mean squared error, the validation loss as the metric."""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import choice, loguniform, randint

space = {
    "lr": loguniform(1e-3, 1e-1),
    "optimizer": choice(["adam", "sgd"]),
    "hidden": randint(4, 16),
    "batch_size": 32,
}

kind = "regression"  # float targets: declared, never guessed
metric = "loss"


def loss_fn(output, y):
    return nn.functional.mse_loss(output.squeeze(-1), y)


def load_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(240, 3)).astype(np.float32)
    y = (x @ np.array([1.5, -2.0, 0.5], dtype=np.float32) + 0.1 * rng.normal(size=240)).astype(np.float32)
    return (x[:160], y[:160]), (x[160:200], y[160:200]), (x[200:], y[200:])


def build_model(config):
    h = int(config["hidden"])
    return nn.Sequential(nn.Linear(3, h), nn.Tanh(), nn.Linear(h, 1))
