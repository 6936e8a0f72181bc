"""Two overlapping classes and a one-logit head (``nn.Linear(h, 1)``), as binary classifiers are usually written."""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import choice, loguniform, randint

space = {"lr": loguniform(1e-2, 3e-1), "optimizer": choice(["adam", "momentum"]), "hidden": randint(4, 16),
         "batch_size": 32, "ema_decay": 0.9}
settings = {"trials": 4, "epochs": 2}


def load_data():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, size=300)
    x = (y[:, None] * np.array([2.0, 1.5, 0.0, -0.5]) + rng.normal(size=(300, 4))).astype(np.float32)
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


def build_model(config):
    h = int(config["hidden"])
    return nn.Sequential(nn.Linear(4, h), nn.ReLU(), nn.Linear(h, 1))
