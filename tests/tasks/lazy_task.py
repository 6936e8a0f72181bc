"""A model whose classifier is nn.LazyLinear (its input width found on the first forward pass), with EMA."""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import loguniform

space = {"lr": loguniform(1e-2, 5e-2), "batch_size": 32, "ema_decay": 0.9}


def load_data():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0, 0, 0], [3, 3, 0, 0], [0, 3, 3, 0]], dtype=np.float32)
    y = rng.integers(0, 3, size=300)
    x = centers[y] + rng.normal(size=(300, 4)).astype(np.float32)
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


def build_model(config):
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.LazyLinear(3))
