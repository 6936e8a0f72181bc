"""Regression with three targets of very different scales (about 0.01, 1 and 100), standardised for training.

Train, val and test are one shuffled draw, so a model's training and validation losses in the same
units should be close: any large train/validation gap is a unit mismatch, not overfitting.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import loguniform

kind = "regression"
standardize_targets = True

space = {"lr": loguniform(5e-3, 2e-2), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 4, "epochs": 6}

SCALES = np.array([0.01, 1.0, 100.0], dtype=np.float32)
OFFSETS = np.array([5.0, -3.0, 1000.0], dtype=np.float32)


def load_data():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(480, 4)).astype(np.float32)
    signal = np.stack([x[:, 0] + 0.5 * x[:, 1], np.tanh(x[:, 2]) - x[:, 3], x[:, 1] - 0.3 * x[:, 0]], axis=1)
    y = (OFFSETS + SCALES * (signal + rng.normal(0, 0.2, size=signal.shape))).astype(np.float32)
    return (x[:320], y[:320]), (x[320:400], y[320:400]), (x[400:], y[400:])


def build_model(config):
    return nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 3))
