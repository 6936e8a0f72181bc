"""Multi-label targets: three 0/1 labels per example (several may be on), one logit per label."""

from __future__ import annotations

import numpy as np
from torch import nn

from orchestrator.search.space import loguniform, randint

space = {"lr": loguniform(1e-2, 1e-1), "hidden": randint(8, 24), "batch_size": 32, "optimizer": "adam",
         "ema_decay": 0.9}
settings = {"trials": 4, "epochs": 2}


def load_data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(360, 5)).astype(np.float32)
    # label j is on when feature j (plus noise) is high; label 2 needs two features: not separable alone
    noise = rng.normal(scale=0.5, size=(360, 3))
    y = np.stack([x[:, 0] + noise[:, 0] > 0.3, x[:, 1] + noise[:, 1] > 0, x[:, 2] * x[:, 3] + noise[:, 2] > 0],
                 axis=1).astype(np.int64)
    return (x[:200], y[:200]), (x[200:280], y[200:280]), (x[280:], y[280:])


def build_model(config):
    h = int(config["hidden"])
    return nn.Sequential(nn.Linear(5, h), nn.ReLU(), nn.Linear(h, 3))
