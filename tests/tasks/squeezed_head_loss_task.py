"""A regression head squeezed to (N,) and a Huber loss_fn written for (N,) outputs: no objective declared, so the
sweep and its ensembles are ranked on that loss (heavy-tailed noise: Huber, not MSE, is the point)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import loguniform, randint

kind = "regression"

space = {"lr": loguniform(3e-3, 3e-2), "hidden": randint(4, 12), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 4, "epochs": 2}


def loss_fn(outputs, targets):
    return torch.nn.functional.huber_loss(outputs, targets)  # (N,) against (N,): no reshape needed, or made


def load_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (2 * x[:, 0] - x[:, 1] + rng.standard_t(2, size=300)).astype(np.float32)
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


class Squeezed(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def build_model(config):
    return Squeezed(int(config["hidden"]))
