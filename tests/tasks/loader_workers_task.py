"""Streamed data read by DataLoader worker processes (``num_workers = 2``), its Dataset class defined in this file.

A worker process that was spawned cannot import this file by name: its DataLoader workers must be forked, not
spawned, or they die unpickling the Dataset.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from orchestrator.search.space import loguniform

num_workers = 2
space = {"lr": loguniform(1e-2, 5e-2), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 2, "epochs": 1}
CENTERS = np.array([[0, 0, 0, 0], [2, 2, 0, 1], [0, 2, 2, 0]], dtype=np.float32)


class Blobs(Dataset):
    def __init__(self, size: int, offset: int, augment: bool):
        self.size, self.offset, self.augment = size, offset, augment
        self.padding = np.zeros(100_000, dtype=np.float32)  # a Dataset larger than a pipe's buffer, as real ones are

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        rng = np.random.default_rng(self.offset + i)
        label = int(rng.integers(0, 3))
        x = CENTERS[label] + rng.normal(size=4).astype(np.float32)
        if self.augment:
            x = x + 0.1 * torch.randn(4).numpy()
        return torch.from_numpy(x), label


def load_data():
    return Blobs(240, 0, True), Blobs(80, 10**6, False), Blobs(80, 2 * 10**6, False)


def build_model(config):
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
