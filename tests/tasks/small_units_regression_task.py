"""Displacements in metres: targets of about 1e-3, so every MSE is about 1e-8."""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import loguniform, randint

kind = "regression"
standardize_targets = True

space = {"lr": loguniform(3e-3, 3e-2), "hidden": randint(4, 16), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 4, "epochs": 2}


def load_data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(240, 4)).astype(np.float32)
    y = (1e-3 * (np.sin(x[:, 0]) + 0.5 * x[:, 1] + rng.normal(0, 0.1, 240))).astype(np.float32)
    return (x[:160], y[:160]), (x[160:200], y[160:200]), (x[200:], y[200:])


def build_model(config):
    h = int(config["hidden"])
    return nn.Sequential(nn.Linear(4, h), nn.Tanh(), nn.Linear(h, 1))
