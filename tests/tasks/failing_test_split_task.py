"""3-class blobs whose model raises on one test example (a sentinel input value): the check and the training epochs
pass, and each trial fails only when its kept checkpoints are run on the test split at its end."""

from __future__ import annotations

import os
import sys

from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_task  # noqa: E402

space = {"lr": 0.05, "batch_size": 60, "hidden": 8}
normalize = False  # the sentinel reaches the model as written
SENTINEL = 1000.0


def load_data():
    (x_tr, y_tr), val, (x_te, y_te) = tiny_task.load_data()
    x_te = x_te.copy()
    x_te[5, 0] = SENTINEL
    return (x_tr, y_tr), val, (x_te, y_te)


class RefusesTheSentinel(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x):
        if bool((x == SENTINEL).any()):
            raise ValueError("an input the model cannot take")
        return self.net(x)


def build_model(config):
    return RefusesTheSentinel(int(config["hidden"]))


