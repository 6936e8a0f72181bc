"""Batch norm on a training split of 301 examples: at batch_size 75 (or 100) an epoch's last batch holds one example,
which batch norm cannot train on (torch raises); at 64 it holds 45."""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import choice, loguniform

space = {"lr": loguniform(3e-3, 3e-2), "batch_size": choice([75, 64, 100]), "optimizer": "adam"}
settings = {"trials": 4, "epochs": 2}


def load_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(501, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return (x[:301], y[:301]), (x[301:401], y[301:401]), (x[401:], y[401:])


def build_model(config):
    norm = nn.BatchNorm1d(32) if config.get("batch_norm", True) else nn.Identity()
    return nn.Sequential(nn.Linear(8, 32), norm, nn.ReLU(), nn.Linear(32, 2))
