"""3-class blobs whose model raises in its second training epoch when the trial's hidden width is 8 or more: a sweep
with some trials failed after one scored epoch, beside trials that completed."""

from __future__ import annotations

import os
import sys

from torch import nn

from orchestrator.search.space import randint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_task import load_data  # noqa: E402, F401  (tiny_task's blobs: 180 training examples)

space = {"hidden": randint(4, 12), "lr": 0.05, "batch_size": 60}


class FailsInEpochTwo(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))
        self.fails, self.training_batches = hidden >= 8, 0

    def forward(self, x):
        if self.training and self.fails:
            self.training_batches += 1
            if self.training_batches > 3:  # 180 examples, batches of 60: the second epoch's first batch
                raise RuntimeError("wide model gave up in epoch 2")
        return self.net(x)


def build_model(config):
    return FailsInEpochTwo(int(config["hidden"]))
