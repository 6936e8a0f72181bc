"""Padded int64 token ids through ``nn.Embedding(padding_idx=0)``, summed over every position (the padding row, zero
and never trained, adds nothing): a class per sequence, so fused arrays take it (the vmap engine)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import loguniform

space = {"lr": loguniform(3e-2, 1e-1), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 2, "epochs": 2}
VOCAB, LENGTH, CLASSES = 20, 12, 3


def load_data():
    rng = np.random.default_rng(1)
    n = 600
    labels = rng.integers(0, CLASSES, size=n)
    tokens = rng.integers(1, VOCAB, size=(n, LENGTH))
    tokens[:, :2] = 1 + labels[:, None]
    for i, k in enumerate(rng.integers(3, LENGTH + 1, size=n)):
        tokens[i, k:] = 0
    x = tokens.astype(np.int64)
    return (x[:400], labels[:400]), (x[400:500], labels[400:500]), (x[500:], labels[500:])


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8, padding_idx=0)
        self.out = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embed(x)).sum(1))


def build_model(config):
    return Bag()
