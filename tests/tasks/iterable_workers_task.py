"""A stream read by __iter__ (an IterableDataset that does not split itself among DataLoader workers) next to a
task's ``num_workers = 2``: val and test are map-style."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import IterableDataset, TensorDataset

from orchestrator.search.space import loguniform

num_workers = 2
space = {"lr": loguniform(1e-2, 5e-2), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 2, "epochs": 1, "stages": 1}
CENTERS = np.array([[0, 0, 0, 0], [2, 2, 0, 1], [0, 2, 2, 0]], dtype=np.float32)


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    return torch.from_numpy(CENTERS[y] + rng.normal(size=(n, 4)).astype(np.float32)), torch.from_numpy(y)


class Lines(IterableDataset):  # as a reader of one large file would: every example, in every worker
    def __iter__(self):
        x, y = blobs(300, 0)
        order = torch.randperm(len(y))
        return ((x[i], int(y[i])) for i in order.tolist())


def load_data():
    return Lines(), TensorDataset(*blobs(100, 1)), TensorDataset(*blobs(100, 2))


def build_model(config):
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
