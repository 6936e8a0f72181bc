"""Sequence labelling: a tag per token of padded int64 sentences, -100 on the padding, outputs (N, T, C)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import loguniform, randint

space = {"lr": loguniform(1e-2, 1e-1), "hidden": randint(8, 24), "batch_size": 32, "optimizer": "adam",
         "ema_decay": 0.9}
settings = {"trials": 4, "epochs": 2}
VOCAB, LENGTH, TAGS = 30, 10, 3


def load_data():
    rng = np.random.default_rng(5)
    n = 420
    tokens = rng.integers(1, VOCAB, size=(n, LENGTH))
    previous = np.concatenate([np.zeros((n, 1), dtype=tokens.dtype), tokens[:, :-1]], axis=1)
    tags = ((tokens + previous) % TAGS).astype(np.int64)  # needs the token before: a context window
    lengths = rng.integers(3, LENGTH + 1, size=n)
    for i, k in enumerate(lengths):
        tokens[i, k:], tags[i, k:] = 0, -100
    x = tokens.astype(np.int64)
    return (x[:240], tags[:240]), (x[240:330], tags[240:330]), (x[330:], tags[330:])


class Tagger(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, hidden, padding_idx=0)
        self.context = nn.Conv1d(hidden, hidden, 3, padding=1)
        self.out = nn.Linear(hidden, TAGS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.context(self.embed(x).transpose(1, 2))).transpose(1, 2)
        return self.out(h)  # (N, T, C), as token classifiers give it


def build_model(config):
    return Tagger(int(config["hidden"]))
