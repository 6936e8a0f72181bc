"""An MLP on scikit-learn's bundled breast cancer data (569 tumours, 30 features, 2 classes; no download).

The quality benchmark's tabular task: a different data set, input size and class count from digits.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import choice, dropout, lograndint, loguniform, one_minus_loguniform, randint

space = {
    "lr": loguniform(1e-4, 1.0),
    "optimizer": choice(["sgd", "momentum", "adam"]),
    "momentum": one_minus_loguniform(0.8, 0.999, when={"optimizer": ["momentum"]}),
    "weight_decay": loguniform(1e-6, 1e-1),
    "layers": randint(1, 3),
    "hidden": lograndint(8, 256),
    "activation": choice(["relu", "tanh"]),
    "dropout": dropout(0.0, 0.5),
    "batch_size": lograndint(8, 128),
}

settings = {"trials": 24, "epochs": 10}

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def load_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """569 tumours split 60/20/20 with a fixed permutation: the same splits in every worker."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order].astype(np.int64)
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return {"train": (x[:a], y[:a]), "val": (x[a:b], y[a:b]), "test": (x[b:], y[b:])}


def build_model(config: dict) -> nn.Module:
    width, act = int(config["hidden"]), _ACTIVATIONS[config["activation"]]
    layers: list[nn.Module] = []
    fan_in = 30
    for _ in range(int(config["layers"])):
        layers += [nn.Linear(fan_in, width), act()]
        if config["dropout"] > 0:
            layers.append(nn.Dropout(float(config["dropout"])))
        fan_in = width
    layers.append(nn.Linear(fan_in, 2))
    return nn.Sequential(*layers)
