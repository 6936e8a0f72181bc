"""Soft labels for tests: each example's target is a probability vector over 3 classes (label smoothing)."""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import loguniform

kind = "classification"  # float targets of shape (N, C): class probabilities

space = {"lr": loguniform(1e-2, 1e-1), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 3, "epochs": 2}


def load_data():
    rng = np.random.default_rng(2)
    centers = np.array([[0, 0, 0], [2.5, 2.5, 0], [0, 2.5, 2.5]], dtype=np.float32)
    labels = rng.integers(0, 3, size=300)
    x = (centers[labels] + rng.normal(size=(300, 3))).astype(np.float32)
    y = np.full((300, 3), 0.1, dtype=np.float32)
    y[np.arange(300), labels] = 0.8
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


def build_model(config):
    return nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 3))
