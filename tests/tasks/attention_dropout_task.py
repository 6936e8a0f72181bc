"""``nn.MultiheadAttention(dropout=p)`` over int64 token ids: the dropout rate, a per-member hyperparameter in fused
arrays, is held as a number on the module, not as an ``nn.Dropout`` layer."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import dropout, loguniform

space = {"lr": loguniform(5e-3, 2e-2), "dropout": dropout(0.05, 0.5), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 2, "epochs": 2}
VOCAB, LENGTH, CLASSES, DIM = 16, 8, 3, 16


def load_data():
    rng = np.random.default_rng(9)
    n = 400
    tokens = rng.integers(1, VOCAB, size=(n, LENGTH)).astype(np.int64)
    labels = (tokens[:, 0] % CLASSES).astype(np.int64)
    return (tokens[:260], labels[:260]), (tokens[260:330], labels[260:330]), (tokens[330:], labels[330:])


class Attention(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.attn = nn.MultiheadAttention(DIM, 2, dropout=p, batch_first=True)
        self.out = nn.Linear(DIM, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.out(self.attn(h, h, h, need_weights=False)[0].mean(1))


def build_model(config):
    return Attention(float(config["dropout"]))
