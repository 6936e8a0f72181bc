"""One-head causal self-attention written by hand over int64 token ids: scores plus a float mask buffer of 0 and -inf
(as many codebases register a causal mask), mean-pooled to a class per sequence. EMA on. ``persistent_mask = False``
in the config registers the mask with ``persistent=False`` (in no state dict), as others do."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import loguniform

space = {"lr": loguniform(5e-3, 2e-2), "batch_size": 32, "optimizer": "adam", "ema_decay": 0.9}
settings = {"trials": 2, "epochs": 2}
VOCAB, LENGTH, CLASSES, DIM = 16, 8, 3, 16


def load_data():
    rng = np.random.default_rng(9)
    n = 400
    tokens = rng.integers(1, VOCAB, size=(n, LENGTH)).astype(np.int64)
    labels = (tokens[:, 0] % CLASSES).astype(np.int64)
    return (tokens[:260], labels[:260]), (tokens[260:330], labels[260:330]), (tokens[330:], labels[330:])


class CausalAttention(nn.Module):
    def __init__(self, persistent: bool = True):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.register_buffer("mask", torch.triu(torch.full((LENGTH, LENGTH), float("-inf")), 1), persistent=persistent)
        self.out = nn.Linear(DIM, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.embed(x)).chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(DIM) + self.mask, dim=-1)
        return self.out((attention @ v).mean(1))


def build_model(config):
    return CausalAttention(bool(config.get("persistent_mask", True)))
