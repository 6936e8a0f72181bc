"""A small regression task for tests: a smooth function of 4 inputs, targets far from zero mean and unit scale."""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import loguniform, randint

kind = "regression"
standardize_targets = True  # trained on standardised targets; every reported number is in original units

space = {"lr": loguniform(3e-3, 3e-2), "hidden": randint(8, 24), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 4, "epochs": 2}


def load_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    y = 150.0 + 40.0 * (np.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] - 0.7 * x[:, 3]) + rng.normal(0, 5, 400)
    y = y.astype(np.float32)
    return (x[:240], y[:240]), (x[240:320], y[240:320]), (x[320:], y[320:])


def build_model(config):
    h = int(config["hidden"])
    return nn.Sequential(nn.Linear(4, h), nn.Tanh(), nn.Linear(h, 1))
