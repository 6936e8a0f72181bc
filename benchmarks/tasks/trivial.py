"""The overhead benchmark's task: 64 samples, one linear layer, one batch per epoch (an epoch is a report)."""

from __future__ import annotations

import numpy as np
from torch import nn

space = {"lr": 0.01, "optimizer": "sgd", "batch_size": 64}


def load_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return (x[:64], y[:64]), (x[64:96], y[64:96]), (x[96:], y[96:])


def build_model(config):
    return nn.Linear(8, 2)
