"""Multi-label targets with a share of the labels flipped, and an MLP whose logits are scaled up: confidently wrong
where a label was flipped (probabilities far below float16's and float32's smallest)."""

from __future__ import annotations

import os
import sys

import numpy as np
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flipped_labels_task import Scaled, settings, space  # noqa: E402, F401


def load_data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    y = (x > 0).astype(np.int64)
    flip = rng.random(y.shape) < 0.15
    y = np.where(flip, 1 - y, y)
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


def build_model(config):
    return nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Linear(32, 3), Scaled())
