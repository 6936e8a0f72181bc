"""A tiny regression task for the in-process API tests: y = a smooth function of 3 inputs."""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import loguniform, randint

kind = "regression"

space = {"lr": loguniform(3e-3, 3e-2), "hidden": randint(4, 12), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 3, "epochs": 2}


def load_data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (2.0 * x[:, 0] - x[:, 1] * x[:, 2] + rng.normal(0, 0.1, 200)).astype(np.float32)
    return (x[:120], y[:120]), (x[120:160], y[120:160]), (x[160:], y[160:])


def build_model(config):
    h = int(config["hidden"])
    return nn.Sequential(nn.Linear(3, h), nn.Tanh(), nn.Linear(h, 1))
