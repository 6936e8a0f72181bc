"""Streamed data for tests: map-style Datasets that generate examples on the fly and count their reads.

Nothing holds the inputs: each ``__getitem__`` makes its example from its index. Train items get
random noise (a train-only augmentation); validation and test items never do.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from orchestrator.search.space import loguniform

space = {"lr": loguniform(1e-2, 5e-2), "batch_size": 50, "optimizer": "adam"}
settings = {"trials": 2, "epochs": 2}
READS = {"train": 0, "val": 0, "test": 0}  # item reads per split in this process
SIZES = {"train": 2000, "val": 400, "test": 400}
CENTERS = np.array([[0, 0, 0, 0, 0, 0], [2, 2, 0, 0, 1, 0], [0, 2, 2, 0, 0, 1]], dtype=np.float32) * 1.5


class Blobs(Dataset):
    def __init__(self, split: str, augment: bool):
        self.split, self.augment, self.offset = split, augment, {"train": 0, "val": 10**6, "test": 2 * 10**6}[split]

    def __len__(self) -> int:
        return SIZES[self.split]

    def __getitem__(self, i: int):
        READS[self.split] += 1
        rng = np.random.default_rng(self.offset + i)
        label = int(rng.integers(0, 3))
        x = CENTERS[label] + rng.normal(size=6).astype(np.float32)
        if self.augment:  # a random shift, different at every read: train only
            x = x + np.random.normal(0, 0.1, size=6).astype(np.float32)
        return torch.from_numpy(x), label


def load_data():
    return Blobs("train", True), Blobs("val", False), Blobs("test", False)


def build_model(config):
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
