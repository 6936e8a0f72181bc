"""tiny_task searching keys its optimizer and schedule never read: Adam takes no 'momentum' (its momentum is beta1)
and no 'rho', and a cosine schedule no 'decay_rate'. Every trial would draw and record them and train without them."""

from __future__ import annotations

import os
import sys

from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_task import load_data  # noqa: E402, F401

from orchestrator.search.space import loguniform, one_minus_loguniform, uniform  # noqa: E402

space = {
    "lr": loguniform(1e-2, 3e-1),
    "optimizer": "adam",
    "momentum": one_minus_loguniform(0.8, 0.99),
    "rho": one_minus_loguniform(0.9, 0.99),
    "beta2": one_minus_loguniform(0.99, 0.999),
    "schedule": "cosine",
    "decay_rate": uniform(0.3, 0.9),
}


def build_model(config):
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
