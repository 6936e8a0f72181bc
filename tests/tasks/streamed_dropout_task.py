"""streamed_task's blobs (train items with noise from np.random) into a model with dropout, read by two loader
workers: its masks draw from torch's global generator in the process that trains."""

from __future__ import annotations

from streamed_task import load_data  # noqa: F401 (the same Datasets)
from torch import nn

space = {"lr": 0.02, "batch_size": 50, "optimizer": "adam", "dropout": 0.3}
num_workers = 2


def build_model(config):
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(config["dropout"]), nn.Linear(32, 3))
