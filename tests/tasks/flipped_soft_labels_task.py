"""Soft labels (0.9 on a class, 0.05 on each other) with a share of the classes flipped, and an MLP whose logits are
scaled up: confidently wrong where a class was flipped (probabilities far below float16's and float32's smallest)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import loguniform

kind = "classification"  # float targets of shape (N, C): class probabilities
space = {"lr": loguniform(1e-3, 3e-3), "batch_size": 30, "optimizer": "adam"}
settings = {"trials": 2, "epochs": 3}


class Scaled(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 200.0


def load_data():
    rng = np.random.default_rng(5)
    n = 300
    labels = rng.integers(0, 3, size=n)
    centers = np.array([[0, 0], [6, 0], [0, 6]], dtype=np.float32)
    x = (centers[labels] + rng.normal(size=(n, 2))).astype(np.float32)
    flipped = np.where(rng.random(n) < 0.15, (labels + rng.integers(1, 3, size=n)) % 3, labels)
    y = np.full((n, 3), 0.05, dtype=np.float32)
    y[np.arange(n), flipped] = 0.9
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


def build_model(config):
    return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3), Scaled())
