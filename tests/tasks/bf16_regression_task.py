"""A regression model whose parameters are bfloat16, fed bfloat16 inputs (torch tensors: numpy has no bfloat16)."""

import numpy as np
import torch
from torch import nn

space = {"lr": 0.003, "batch_size": 32}
kind = "regression"


def load_data():
    rng = np.random.default_rng(0)
    w = rng.normal(size=8)

    def draw(n):
        x = rng.normal(size=(n, 8))
        y = x @ w + 0.1 * rng.normal(size=n)
        return torch.tensor(x, dtype=torch.bfloat16), torch.tensor(y[:, None], dtype=torch.float32)

    return {"train": draw(200), "val": draw(100), "test": draw(100)}


def build_model(config):
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)).to(torch.bfloat16)
