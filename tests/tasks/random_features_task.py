"""Random Fourier features drawn from np.random in build_model and kept in a non-persistent buffer: the trained
model's features are its trial's (seeded) draw, and no checkpoint holds them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import loguniform

space = {"lr": loguniform(1e-2, 3e-2), "batch_size": 32, "optimizer": "adam"}


class RandomFeatures(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        w = (np.random.randn(d_in, d_out) / np.sqrt(d_in)).astype(np.float32)
        self.register_buffer("w", torch.from_numpy(w), persistent=False)

    def forward(self, x):
        return torch.cos(x @ self.w)


def load_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = (rng.normal(size=(300, 6)) + 2 * np.eye(6)[y]).astype(np.float32)
    return {"train": (x[:180], y[:180]), "val": (x[180:240], y[180:240]), "test": (x[240:], y[240:])}


def build_model(config):
    return nn.Sequential(RandomFeatures(6, 64), nn.Linear(64, 3))
