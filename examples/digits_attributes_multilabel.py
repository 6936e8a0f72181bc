"""Multi-label classification: three yes/no attributes of each 8x8 digit (scikit-learn's bundled digits).

Each image gets three labels at once, "the digit is even", "the digit is above 4" and "the digit
has a closed loop" (0, 6, 8, 9), as integer 0/1 columns of shape (N, 3). caviar infers multi-label
from 0/1 rows that are not one-hot: one logit per label, binary cross-entropy with logits, accuracy
over every image-label pair, log loss and exact match (all three right); trials are ranked on the
validation loss. Run it with ``caviar run examples/digits_attributes_multilabel.py``; the loaded
ensemble returns each label's probability, shape (N, 3), and ``predict`` the 0/1 labels.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import choice, dropout, lograndint, loguniform

space = {
    "lr": loguniform(1e-4, 1e-1),
    "optimizer": choice(["adam", "adamw", "momentum"]),
    "weight_decay": loguniform(1e-6, 1e-2),
    "hidden": lograndint(16, 256),
    "dropout": dropout(0.0, 0.5),
    "batch_size": lograndint(16, 128),
}

settings = {"trials": 24, "epochs": 10}


def load_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """1797 images split 60/20/20 with a fixed permutation, with three 0/1 attribute labels each."""
    from sklearn.datasets import load_digits

    x, digit = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, digit = x[order].astype(np.float32), digit[order]
    y = np.stack([digit % 2 == 0, digit > 4, np.isin(digit, [0, 6, 8, 9])], axis=1).astype(np.int64)
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return {"train": (x[:a], y[:a]), "val": (x[a:b], y[a:b]), "test": (x[b:], y[b:])}


def build_model(config: dict) -> nn.Module:
    width = int(config["hidden"])
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Dropout(float(config["dropout"])), nn.Linear(width, 3))
