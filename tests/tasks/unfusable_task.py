"""A task whose model cannot train as a fused array: one layer reads a tensor's value (``.item()``) in forward."""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import loguniform

space = {"lr": loguniform(1e-2, 3e-1), "optimizer": "adam", "hidden": 8, "batch_size": 32}
settings = {"trials": 2, "epochs": 1}


def load_data():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0, 0, 0], [3, 3, 0, 0], [0, 3, 3, 0]], dtype=np.float32)
    y = rng.integers(0, 3, size=120)
    x = centers[y] + rng.normal(size=(120, 4)).astype(np.float32)
    return (x[:60], y[:60]), (x[60:90], y[60:90]), (x[90:], y[90:])


class ClipGate(nn.Module):
    """Data-dependent control flow: fine in one model, impossible to batch over members with vmap."""

    def forward(self, x):
        return x.clamp(-1e6, 1e6) if x.abs().max().item() > 1e6 else x


def build_model(config):
    h = int(config["hidden"])
    return nn.Sequential(nn.Linear(4, h), ClipGate(), nn.ReLU(), nn.Linear(h, 3))
