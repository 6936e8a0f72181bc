"""A CNN with batch norm and dropout on 1x8x8 images, 3 classes: for checks of a loaded ensemble's modes."""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import choice, loguniform

space = {"lr": loguniform(3e-3, 3e-2), "channels": choice([4, 8]), "batch_size": 32, "optimizer": "adam",
         "ema_decay": 0.9}
settings = {"trials": 4, "epochs": 2}


def load_data():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, size=300)
    x = rng.normal(size=(300, 1, 8, 8)).astype(np.float32)
    for c in range(3):
        x[labels == c, 0, c * 2 : c * 2 + 3, :] += 1.5
    return (x[:180], labels[:180]), (x[180:240], labels[180:240]), (x[240:], labels[240:])


def build_model(config):
    c = int(config["channels"])
    return nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.3), nn.Linear(c * 64, 3))
