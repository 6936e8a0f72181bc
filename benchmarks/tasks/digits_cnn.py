"""A small CNN on scikit-learn's 8x8 digits (no download): the quality benchmark's convolutional task.

Inputs arrive as 64 standardised pixels and are reshaped to 1x8x8 inside the model, so the data path
is the same as the MLP's; width, depth of the head, optimizer, schedule, regularisation and batch
size are searched.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import choice, dropout, lograndint, loguniform, one_minus_loguniform

space = {
    "lr": loguniform(1e-4, 1.0),
    "optimizer": choice(["sgd", "momentum", "adam"]),
    "momentum": one_minus_loguniform(0.8, 0.999, when={"optimizer": ["momentum"]}),
    "weight_decay": loguniform(1e-6, 1e-2),
    "schedule": choice(["constant", "exponential"]),
    "decay_rate": one_minus_loguniform(0.1, 0.95, when={"schedule": ["exponential"]}),
    "channels": lograndint(4, 24),
    "hidden": lograndint(16, 128),
    "dropout": dropout(0.0, 0.5),
    "batch_size": lograndint(32, 256),
}

settings = {"trials": 24, "epochs": 10}


def load_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """1797 digits split 60/20/20 with a fixed permutation (the same splits as examples/digits_mlp.py)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order].astype(np.int64)
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return {"train": (x[:a], y[:a]), "val": (x[a:b], y[a:b]), "test": (x[b:], y[b:])}


def build_model(config: dict) -> nn.Module:
    c, hidden = int(config["channels"]), int(config["hidden"])
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, c, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * c * 16, hidden), nn.ReLU(),
        nn.Dropout(float(config["dropout"])),
        nn.Linear(hidden, 10),
    )
