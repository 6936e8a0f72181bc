"""Token ids for tests: a bag-of-words classifier (``nn.EmbeddingBag``) on generated integer sequences.

Inputs are int64 token ids, so they must reach the model as integers and never be standardised.
Each class draws its tokens mostly from its own third of the vocabulary.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import loguniform

space = {"lr": loguniform(2e-2, 1e-1), "batch_size": 32, "optimizer": "adam", "dim": 8}
settings = {"trials": 2, "epochs": 2}

VOCAB, LENGTH, CLASSES = 30, 10, 3


def load_data():
    rng = np.random.default_rng(5)
    n = 300
    labels = rng.integers(0, CLASSES, size=n)
    own = labels[:, None] * (VOCAB // CLASSES) + rng.integers(0, VOCAB // CLASSES, size=(n, LENGTH))
    noise = rng.integers(0, VOCAB, size=(n, LENGTH))
    tokens = np.where(rng.random((n, LENGTH)) < 0.7, own, noise).astype(np.int64)
    return (tokens[:180], labels[:180]), (tokens[180:240], labels[180:240]), (tokens[240:], labels[240:])


class BagOfWords(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.embed = nn.EmbeddingBag(VOCAB, dim, mode="mean")
        self.out = nn.Linear(dim, CLASSES)

    def forward(self, tokens):
        return self.out(self.embed(tokens))  # EmbeddingBag refuses anything but integer ids


def build_model(config):
    return BagOfWords(int(config["dim"]))
