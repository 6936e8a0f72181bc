"""A model whose classifier is nn.LazyLinear (its input width found on the first forward pass), with EMA."""

from __future__ import annotations

import os
import sys

from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_task import load_data  # noqa: E402, F401

from orchestrator.search.space import loguniform  # noqa: E402

space = {"lr": loguniform(1e-2, 5e-2), "batch_size": 32, "ema_decay": 0.9}


def build_model(config):
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.LazyLinear(3))
