"""Two-output regression with targets near 5000, ranked by the task's own worst-case error (lower is better).

The metric returns a torch tensor (not a float); the search space has EMA weights so EMA checkpoints and
ensembles are scored on the same metric.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import loguniform

kind = "regression"
standardize_targets = True
objective = "val_max_error"
mode = "min"

space = {"lr": loguniform(3e-3, 3e-2), "batch_size": 32, "optimizer": "adam", "ema_decay": 0.9}
settings = {"trials": 4, "epochs": 4}


def metrics(outputs, targets):
    return {"max_error": (outputs - targets).abs().max()}


def load_data():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    y = np.stack([5000 + 20 * x[:, 0] - 10 * x[:, 1], -4000 + 5 * x[:, 2]], axis=1)
    y = (y + rng.normal(0, 1.0, size=y.shape)).astype(np.float32)
    return (x[:240], y[:240]), (x[240:320], y[240:320]), (x[320:], y[320:])


def build_model(config):
    return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))
