"""Counts as float targets, a model giving log-rates, trained by the task's own Poisson loss; no objective declared.

The outputs are not predictions of the counts (their squared error against the counts ranks nothing), so the
sweep must be ranked on the task's own loss.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import loguniform, randint

kind = "regression"  # counts as floats: declared, never guessed

space = {"lr": loguniform(3e-3, 3e-2), "hidden": randint(4, 12), "batch_size": 32, "optimizer": "adam"}
settings = {"trials": 4, "epochs": 2}


def loss_fn(outputs, targets):
    return torch.nn.functional.poisson_nll_loss(outputs.reshape(targets.shape), targets, log_input=True)


def load_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = rng.poisson(np.exp(1.0 + 0.8 * x[:, 0] - 0.5 * x[:, 1])).astype(np.float32)
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


def build_model(config):
    h = int(config["hidden"])
    return nn.Sequential(nn.Linear(4, h), nn.Tanh(), nn.Linear(h, 1))  # the log of the rate
