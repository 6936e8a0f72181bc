"""A tiny CNN on 8x8 images with a random-flip augmentation drawn from torch's global generator."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import loguniform

space = {"lr": loguniform(1e-3, 1e-1), "batch_size": 32, "optimizer": "adam", "channels": 4}
settings = {"trials": 3, "epochs": 2}


def load_data():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 240)
    x = rng.normal(0, 1, (240, 1, 8, 8)).astype(np.float32)
    x[y == 1, :, 2:6, 2:6] += 1.5  # class 1 carries a bright square
    y = y.astype(np.int64)
    return (x[:160], y[:160]), (x[160:200], y[160:200]), (x[200:], y[200:])


class FlipCNN(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                  nn.Flatten(), nn.Linear(4 * channels, 2))

    def forward(self, x):
        if self.training and torch.rand(()) < 0.5:
            x = torch.flip(x, dims=[3])
        return self.body(x)


def build_model(config):
    return FlipCNN(int(config["channels"]))
