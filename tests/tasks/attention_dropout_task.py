"""``nn.MultiheadAttention(dropout=p)`` over int64 token ids: the dropout rate, a per-member hyperparameter in fused
arrays, is held as a number on the module, not as an ``nn.Dropout`` layer."""

from __future__ import annotations

import torch
from causal_mask_task import CLASSES, DIM, VOCAB, load_data  # noqa: F401 (the same token data)
from torch import nn

from orchestrator.search.space import dropout, loguniform

space = {"lr": loguniform(5e-3, 2e-2), "dropout": dropout(0.05, 0.5), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 2, "epochs": 2}


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
