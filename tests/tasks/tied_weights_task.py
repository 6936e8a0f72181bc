"""Weight tying: two Linear layers share one weight tensor (``b.weight = a.weight``), a class per example."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import loguniform

space = {"lr": loguniform(1e-2, 5e-2), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 2, "epochs": 2}


def load_data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight  # one tensor under two names
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.b(torch.tanh(self.a(x)))))


def build_model(config):
    return Tied()
