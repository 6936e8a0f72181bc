"""The tiny task's data with a model that build_model returns through torch.compile."""

from __future__ import annotations

import torch
from tiny_task import load_data  # noqa: F401
from torch import nn

from orchestrator.search.space import loguniform

space = {"lr": loguniform(1e-2, 5e-2), "batch_size": 60}


def build_model(config):
    return torch.compile(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
