"""Soft labels (probability rows) ranked by the task's own KL divergence to the targets, lower is better.

The metric returns a numpy float64; the space has EMA weights and two stages so pruning, promotion and ensembles
all rank by it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import loguniform, randint

kind = "classification"
objective = "val_kl"
mode = "min"

space = {"lr": loguniform(1e-3, 1e-1), "hidden": randint(2, 16), "batch_size": 32, "optimizer": "adam",
         "ema_decay": 0.8}
settings = {"trials": 8, "epochs": 4}


def metrics(outputs, targets):
    log_p = torch.log_softmax(outputs.double(), dim=1).numpy()
    t = targets.double().numpy()
    return {"kl": np.sum(t * (np.log(t) - log_p), axis=1).mean()}


def load_data():
    rng = np.random.default_rng(7)
    centers = np.array([[0, 0, 0], [2.5, 2.5, 0], [0, 2.5, 2.5]], dtype=np.float32)
    labels = rng.integers(0, 3, size=360)
    x = (centers[labels] + rng.normal(size=(360, 3))).astype(np.float32)
    y = np.full((360, 3), 0.1, dtype=np.float32)
    y[np.arange(360), labels] = 0.8
    return (x[:200], y[:200]), (x[200:280], y[200:280]), (x[280:], y[280:])


def build_model(config):
    h = int(config["hidden"])
    return nn.Sequential(nn.Linear(3, h), nn.ReLU(), nn.Linear(h, 3))
