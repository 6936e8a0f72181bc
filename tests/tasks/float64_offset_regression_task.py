"""A float64 regression near 1e7 trained as it is (no standardize_targets): the model's bias starts at the offset, and
the detail that matters (0.3 per unit of x) is a few parts in 1e8 of the outputs, which averaging must keep."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import loguniform

kind = "regression"
space = {"lr": loguniform(3e-3, 3e-2), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 3, "epochs": 2}
OFFSET = 1e7


def load_data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 3))
    y = OFFSET + 0.3 * x[:, :1] + 0.05 * rng.normal(size=(300, 1))
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


def build_model(config):
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).to(torch.float64)
    nn.init.constant_(model[2].bias, OFFSET)
    return model
