"""A plateau schedule whose factor is searched linearly below 1, ``decay_rate = uniform(0.1, 0.9)``.

After one epoch the highest learning rate wins on this linear data; with seed 312 that trial draws decay_rate = 0.898,
at the high edge of its range, so the next stage extends the range upward.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import loguniform, uniform

kind = "regression"
space = {"optimizer": "adam", "lr": loguniform(1e-3, 3e-2), "schedule": "plateau", "decay_rate": uniform(0.1, 0.9),
         "batch_size": 32}


def load_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0])).astype(np.float32)
    return (x[:300], y[:300]), (x[300:350], y[300:350]), (x[350:], y[350:])


def build_model(config):
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
