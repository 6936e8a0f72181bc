"""A float64 regression whose targets sit near 1e7 with detail below float32's spacing there (1.0): a model
trained in float64 keeps that detail, and so must its stored predictions (ensembles are scored from them)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import loguniform

kind = "regression"
standardize_targets = True  # outputs in standard units; the stored ones are mapped back to the targets
space = {"lr": loguniform(3e-3, 3e-2), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 2, "epochs": 2}


def load_data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 3))
    y = 1e7 + 0.3 * x[:, :1] + 0.05 * rng.normal(size=(300, 1))
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


def build_model(config):
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).to(torch.float64)
