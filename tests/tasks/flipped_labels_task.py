"""Labels with a share flipped, and an MLP whose logits are scaled up (as a long-overtrained model's grow): on
validation and test it is confidently wrong where a label was flipped, with true-class probabilities far below
float16's smallest (~6e-8) and float32's (~1e-45)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import loguniform

space = {"lr": loguniform(1e-3, 3e-3), "batch_size": 30, "optimizer": "adam"}
settings = {"trials": 2, "epochs": 3}


class Scaled(nn.Module):
    def __init__(self, scale: float = 200.0):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def points_and_flipped_labels(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Three 2-d blobs and their labels, 15% of them changed to another class."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, size=n)
    centers = np.array([[0, 0], [6, 0], [0, 6]], dtype=np.float32)
    x = (centers[labels] + rng.normal(size=(n, 2))).astype(np.float32)
    flip = rng.random(n) < 0.15
    return x, np.where(flip, (labels + rng.integers(1, 3, size=n)) % 3, labels).astype(np.int64)


def load_data():
    x, y = points_and_flipped_labels()
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


def build_model(config):
    return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3), Scaled(200.0))
