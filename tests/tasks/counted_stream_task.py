"""Streamed map-style Datasets that write each read to a file (``CAVIAR_TEST_READS``), so a test counts the reads
of every process: the master's and each worker's."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from orchestrator.search.space import loguniform

space = {"lr": loguniform(1e-2, 5e-2), "batch_size": 50, "optimizer": "adam"}
settings = {"trials": 2, "epochs": 1, "stages": 1}
SIZES = {"train": 1000, "val": 100, "test": 100}
OFFSETS = {"train": 0, "val": 10**6, "test": 2 * 10**6}  # a test changes val's to stand for a split drawn again
CENTERS = np.array([[0, 0, 0, 0], [2, 2, 0, 1], [0, 2, 2, 0]], dtype=np.float32)


class Blobs(Dataset):
    def __init__(self, split: str):
        self.split = split

    def __len__(self) -> int:
        return SIZES[self.split]

    def __getitem__(self, i: int):
        if os.environ.get("CAVIAR_TEST_READS"):
            with open(os.environ["CAVIAR_TEST_READS"], "a") as f:
                f.write(f"{os.getpid()} {self.split}\n")
        rng = np.random.default_rng(OFFSETS[self.split] + i)
        label = int(rng.integers(0, 3))
        return torch.from_numpy(CENTERS[label] + rng.normal(size=4).astype(np.float32)), label


def load_data():
    return Blobs("train"), Blobs("val"), Blobs("test")


def build_model(config):
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
