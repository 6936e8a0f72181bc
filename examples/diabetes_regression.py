"""Regression: scikit-learn's bundled diabetes data (442 patients, 10 features, no download).

The target is a disease-progression score (25 to 346). ``kind = "regression"`` keeps it a float;
the default loss is the mean squared error, and every reported number (``val_mse``, ``val_mae``,
``val_r2``, the ensembles' test MSE, ``train_loss_original``) is in the target's own units, although the
models train on standardised targets (``standardize_targets``; ``train_loss`` is the loss they minimise,
on those). Run it with
``caviar run examples/diabetes_regression.py``.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import choice, dropout, lograndint, loguniform

kind = "regression"
standardize_targets = True
objective = "val_mse"  # the default for regression, written out: any reported column will do
mode = "min"

space = {
    "lr": loguniform(1e-4, 1e-1),
    "optimizer": choice(["adam", "adamw", "momentum"]),
    "weight_decay": loguniform(1e-6, 1e-2),
    "layers": choice([1, 2]),
    "hidden": lograndint(8, 128),
    "dropout": dropout(0.0, 0.3),
    "batch_size": lograndint(16, 64),
}

settings = {"trials": 24, "epochs": 30}


def load_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """442 patients split 60/20/20 with a fixed permutation: the same splits in every worker."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order].astype(np.float32)  # float targets: a regression
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return {"train": (x[:a], y[:a]), "val": (x[a:b], y[a:b]), "test": (x[b:], y[b:])}


def build_model(config: dict) -> nn.Module:
    width, layers, fan_in = int(config["hidden"]), [], 10
    for _ in range(int(config["layers"])):
        layers += [nn.Linear(fan_in, width), nn.ReLU(), nn.Dropout(float(config["dropout"]))]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(fan_in, 1))  # one output per target: (batch, 1) for targets (batch,)
