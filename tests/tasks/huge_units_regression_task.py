"""Targets near 1e20 in float32 (energies in erg, say), trained standardised: their errors' squares summed over a
split pass float32's largest number (3.4e38) while the standardised training is healthy."""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import loguniform

kind = "regression"
standardize_targets = True
space = {"lr": loguniform(1e-2, 3e-2), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 2, "epochs": 2}


def load_data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (1e20 * (1 + 0.1 * x[:, 0] + 0.01 * rng.normal(size=300))).astype(np.float32)
    return (x[:200], y[:200]), (x[200:250], y[200:250]), (x[250:], y[250:])


def build_model(config):
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
