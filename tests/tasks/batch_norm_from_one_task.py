"""Regression with two outputs by a model with batch norm, its batch_size searched from 1: batch norm cannot train
on a batch of one example (torch raises)."""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import lograndint

kind = "regression"
space = {"lr": 0.01, "batch_size": lograndint(1, 64), "optimizer": "adam"}
settings = {"trials": 6, "epochs": 1, "stages": 1}


def load_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype("float32")
    y = np.stack([x.sum(1), x[:, 0] * x[:, 1]], 1).astype("float32")
    return (x[:120], y[:120]), (x[120:160], y[120:160]), (x[160:], y[160:])


def build_model(config):
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
