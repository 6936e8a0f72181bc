"""Regression with dropout, EMA, two targets far from zero: for checks of what a loaded ensemble predicts."""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import dropout, loguniform, one_minus_loguniform

kind = "regression"
standardize_targets = True

space = {"lr": loguniform(3e-3, 3e-2), "dropout": dropout(0.1, 0.4), "ema_decay": one_minus_loguniform(0.8, 0.95),
         "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 4, "epochs": 2}


def load_data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    y = np.stack([200.0 + 30.0 * np.sin(x[:, 0]) + 10 * x[:, 1], -5.0 + x[:, 2] * x[:, 3]], axis=1)
    y = (y + rng.normal(0, 1, y.shape)).astype(np.float32)
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


def build_model(config):
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(config["dropout"]), nn.Linear(16, 2))
