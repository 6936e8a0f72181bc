"""A benchmark task whose epoch length is set by CAVIAR_BENCH_SAMPLES (synthetic 10-class data)."""

from __future__ import annotations

import os

import numpy as np
from torch import nn

space = {"lr": 0.01, "optimizer": "adam", "batch_size": 256}
SAMPLES = int(os.environ.get("CAVIAR_BENCH_SAMPLES", "512"))


def load_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES + 512, 32)).astype(np.float32)
    y = (x[:, :10].argmax(axis=1)).astype(np.int64)
    return (x[:SAMPLES], y[:SAMPLES]), (x[SAMPLES:SAMPLES + 256], y[SAMPLES:SAMPLES + 256]), (x[-256:], y[-256:])


def build_model(config):
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
