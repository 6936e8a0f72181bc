"""Loader functions over 100 training examples, the training DataLoader dropping its last partial batch (as batch
norm wants), and a searched batch_size of which 128 and 256 are larger than the split."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from orchestrator.search.space import choice

space = {"lr": 0.02, "batch_size": choice([32, 64, 128, 256]), "optimizer": "adam"}
settings = {"trials": 8, "epochs": 1, "stages": 1}

def _blobs(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    x = (rng.normal(size=(n, 4)) + y[:, None]).astype(np.float32)
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))

TRAIN, VAL, TEST = _blobs(100, 0), _blobs(60, 1), _blobs(60, 2)

def load_data():
    return {"train": lambda b: DataLoader(TRAIN, batch_size=b, shuffle=True, drop_last=True),
            "val": lambda b: DataLoader(VAL, batch_size=b), "test": lambda b: DataLoader(TEST, batch_size=b)}

def build_model(config):
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
