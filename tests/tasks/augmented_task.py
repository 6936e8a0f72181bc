"""Augmented training data for soup tests: every train read adds fresh random noise, val and test never do.

The inputs sit far from zero (around 40), so standardisation matters: statistics from another pass
over the noisy training split would move every prediction a little. The model has batch norm, so a
soup recomputes its statistics over the (random) training split.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from orchestrator.search.space import loguniform

space = {"lr": loguniform(1e-2, 5e-2), "batch_size": 64, "optimizer": "adam"}
settings = {"trials": 2, "epochs": 2}
SIZES = {"train": 600, "val": 200, "test": 200}
OFFSETS = {"train": 0, "val": 10**6, "test": 2 * 10**6}
CENTERS = np.array([[0, 0, 0, 0], [2, 2, 0, 1], [0, 2, 2, 0]], dtype=np.float32) + 40.0


class Noisy(Dataset):
    def __init__(self, split: str, augment: bool):
        self.split, self.augment = split, augment

    def __len__(self) -> int:
        return SIZES[self.split]

    def __getitem__(self, i: int):
        rng = np.random.default_rng(OFFSETS[self.split] + i)
        label = int(rng.integers(0, 3))
        x = CENTERS[label] + rng.normal(size=4).astype(np.float32)
        if self.augment:  # different at every read: train only
            x = x + np.random.normal(0, 0.5, size=4).astype(np.float32)
        return torch.from_numpy(x), label


def load_data():
    return Noisy("train", True), Noisy("val", False), Noisy("test", False)


def build_model(config):
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
