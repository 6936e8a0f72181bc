"""The default example: an MLP on scikit-learn's bundled 8x8 digits (no download).

Every choice the CS231n notes call a hyperparameter is one here: depth, width, activation,
batch norm, dropout, initialisation, optimizer with its betas, learning-rate schedule,
L2 weight decay and batch size. Run it with ``caviar run examples/digits_mlp.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import choice, dropout, lograndint, loguniform, one_minus_loguniform, randint

space = {
    "lr": loguniform(1e-4, 1.0),
    "optimizer": choice(["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"]),
    # Each optimizer's own hyperparameters: None (inactive) in trials of the other optimizers.
    "momentum": one_minus_loguniform(0.8, 0.999, when={"optimizer": ["momentum", "nesterov"]}),  # SGD momentum beta
    "beta1": one_minus_loguniform(0.8, 0.99, when={"optimizer": ["adam", "adamw"]}),
    "beta2": one_minus_loguniform(0.99, 0.9999, when={"optimizer": ["adam", "adamw"]}),
    "eps": loguniform(1e-8, 1e-5, when={"optimizer": ["adagrad", "rmsprop", "adam", "adamw"]}),
    "rho": one_minus_loguniform(0.9, 0.999, when={"optimizer": ["rmsprop"]}),  # RMSprop averaging
    "weight_decay": loguniform(1e-6, 1e-2),
    "schedule": choice(["constant", "step", "exponential", "inverse_time", "plateau"]),
    # a factor in (0, 1), so narrowing never stretches it to 1; a constant schedule has none
    "decay_rate": one_minus_loguniform(
        0.1, 0.95, when={"schedule": ["step", "exponential", "inverse_time", "plateau"]}
    ),
    "layers": randint(1, 3),
    "hidden": lograndint(16, 256),
    "activation": choice(["relu", "tanh", "leaky_relu"]),
    "batch_norm": choice([False, True]),
    "dropout": dropout(0.0, 0.5),
    "init": choice(["he", "xavier"]),
    "batch_size": lograndint(16, 256),
    "ema_decay": one_minus_loguniform(0.9, 0.98),  # within what the EMA's warm-up reaches in 10 short epochs
}

settings = {"trials": 24, "epochs": 10}

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}


def load_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """1797 digits split 60/20/20 with a fixed permutation: the same splits in every worker."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order].astype(np.int64)
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return {"train": (x[:a], y[:a]), "val": (x[a:b], y[a:b]), "test": (x[b:], y[b:])}


def build_model(config: dict) -> nn.Module:
    width, act = int(config["hidden"]), _ACTIVATIONS[config["activation"]]
    layers: list[nn.Module] = []
    fan_in = 64
    for _ in range(int(config["layers"])):
        layers.append(nn.Linear(fan_in, width))
        if config["batch_norm"]:
            layers.append(nn.BatchNorm1d(width))
        layers.append(act())
        if config["dropout"] > 0:
            layers.append(nn.Dropout(float(config["dropout"])))
        fan_in = width
    layers.append(nn.Linear(fan_in, 10))
    model = nn.Sequential(*layers)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if config["init"] == "he":
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            else:
                nn.init.xavier_normal_(module.weight)
            nn.init.zeros_(module.bias)
    return model


__all__ = ["space", "settings", "load_data", "build_model", "torch"]
